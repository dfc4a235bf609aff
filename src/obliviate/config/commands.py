"""The configs of every other subcommand: ``evaluate``, ``synth``, ``init-model``, ``demo``, ``run``, ``inspect``,
``audit``."""

from __future__ import annotations

from dataclasses import dataclass

from obliviate.config.base import (
    ATTACKS,
    PIPELINE_ATTACKS,
    QUANTIZE_BITS,
    RELEARN_SOURCES,
    TINY_ARCHS,
    TINY_SIZES,
    TRACKERS,
    comma_list,
    option,
    pipeline_attack_names,
    validate,
)
from obliviate.errors import ConfigError


@dataclass
class EvaluateConfig:
    """``obliviate evaluate``: every metric for a model, or for every epoch of an unlearning run."""

    output_dir: str = option("", "where results.json, per_example.jsonl and report.md go", required=True)
    forget_dir: str = option("", "the forget set", required=True)
    model: str | None = option(None, "a full model directory, a hub id or a PEFT adapter directory")
    checkpoints: str | None = option(
        None, "an unlearning run directory: evaluate epoch 0 (its model_dir) and every checkpoints/epoch-N"
    )
    base_model: str | None = option(None, "base model of an adapter whose adapter_config.json names none")
    retain_dir: str | None = option(None, "the retain set")
    holdout_dir: str | None = option(None, "people never trained on: the leak floor and MIA non-members")
    oracle: str | None = option(None, "a model retrained on retain only: enables forget quality and PrivLeak")
    mia_dir: str | None = option(None, "SemEval MIA sets: member.jsonl and nonmember.jsonl ('document' field)")
    mmlu_metrics: str | None = option(None, 'a JSON file {"average_acc": x}: enables the SemEval final score')
    pii: str | None = option(None, "a pii.json side file (default: next to the forget set; else Task2 QA answers)")
    max_examples: int | None = option(None, "evaluate a seeded sample of N rows per split", ge=1)
    batch_size: int = option(32, "rows per batch", ge=1, le=65_536)
    max_new_tokens: int = option(256, "generation length (256 as in the official script)", ge=1, le=65_536)
    leak_samples: int = option(0, "sampled generations per leak probe", ge=0, le=1000)
    exposure_k: int = option(100, "fakes each PII value is ranked among for exposure (Carlini et al.: >= 100)", ge=1)
    no_exposure: bool = option(False, "skip exposure (it costs K + 1 continuations per PII value)")
    no_probes: bool = option(
        False, "skip the PII-leak probes (leak and partial-leak rates): generate only the rows, as the official script"
    )
    official: bool = option(
        False,
        "score as the SemEval-2025 Task 4 organisers' script: weights in bfloat16, prompt and answer glued into one "
        "string for the NLL, 256 new tokens (docs/METRICS.md, Official mode)",
    )
    chat_template: bool = option(False, "wrap prompts in the tokenizer's chat template")
    show_pii: bool = option(False, "keep PII values in generations and reports")
    select: str = option(
        "task_aggregate",
        "best-checkpoint rule with --checkpoints: last (where the run's stop rule ended it), task_aggregate or "
        "holdout_gap",
        choices=("last", "task_aggregate", "holdout_gap"),
    )
    seed: int = option(0, "sample and sampling seed", ge=0, lt=2**32)
    attacks: str = option(
        "",
        "comma list of attacks run on in-memory copies of the model (with --checkpoints: of the chosen epoch), each "
        "copy evaluated like the model itself: relearn (fine-tune k steps, then probe), quantize (round-to-nearest "
        "weights); empty: none",
    )
    relearn_steps: str = option("10,50", "relearn: comma list of step counts k after which the copy is probed")
    relearn_sources: str = option(
        "forget_half,retain,forget_nonpii",
        "relearn: comma list of training sources: forget_half (half of each forget person's records; the other half "
        "probed), retain (retain rows only), forget_nonpii (the forget people's sentences without PII values)",
    )
    relearn_lr: float | None = option(
        None,
        "relearn: AdamW learning rate (constant, no weight decay, clip 1); unset: the unlearning run's own --lr from "
        "its config.yaml when --model is an obliviate run or checkpoint, else 1e-5",
        gt=0,
        le=1,
    )
    relearn_batch_size: int = option(8, "relearn: rows per optimizer step", ge=1, le=65_536)
    quantize_bits: str = option("8,4", "quantize: comma list of bit widths (8, 4); symmetric, per row, groups of 128")
    evidence: bool = option(
        False, "also write evidence.md and evidence.json: hashes, method, attacks and probes, per-person verdicts"
    )
    overwrite: bool = option(False, "replace a non-empty --output_dir that obliviate wrote")

    def __post_init__(self) -> None:
        validate(self)
        if bool(self.model) == bool(self.checkpoints):
            raise ConfigError("pass exactly one of --model and --checkpoints")
        if self.official and (self.max_new_tokens != 256 or self.chat_template):
            raise ConfigError(
                "--official generates 256 new tokens from the raw prompt, as the organisers' script does: drop "
                "--max_new_tokens and --chat_template"
            )
        comma_list("attacks", self.attacks, ATTACKS)
        comma_list("relearn_sources", self.relearn_sources, RELEARN_SOURCES)
        comma_list("quantize_bits", self.quantize_bits, QUANTIZE_BITS, int)
        steps = [s.strip() for s in str(self.relearn_steps).split(",") if s.strip()]
        if not steps or not all(s.isdigit() and 0 < int(s) <= 1_000_000 for s in steps):
            raise ConfigError(f"--relearn_steps {self.relearn_steps!r}: expected a comma list of positive integers")


@dataclass
class SynthConfig:
    """``obliviate synth``: synthetic people with PII in LUME Task2 format."""

    output_dir: str = option("", "directory to create (new, or obliviate's own with --overwrite)", required=True)
    people: int = option(200, "number of people, 6 records each", ge=3, le=1_000_000)
    forget_fraction: float = option(0.1, "share of people in the forget set", gt=0, lt=1)
    holdout_fraction: float = option(0.1, "share of people never trained on, for membership inference", ge=0, lt=1)
    seed: int = option(0, "seed for people, templates and splits", ge=0, lt=2**32)
    overwrite: bool = option(False, "replace a non-empty --output_dir that obliviate wrote")

    def __post_init__(self) -> None:
        validate(self)


@dataclass
class InitModelConfig:
    """``obliviate init-model``: a tokenizer trained on the data and an untrained tiny, small or medium OLMo."""

    output_dir: str = option("", "where the model directory is written", required=True)
    data: list[str] = option([], "data paths to train the tokenizer on", nargs="+", required=True)
    size: str = option("tiny", "tiny: ~1.6 M parameters; small: ~7 M; medium: ~20 M", choices=TINY_SIZES)
    arch: str = option("olmo", "the model type built from a config", choices=TINY_ARCHS)
    vocab_size: int = option(4096, "tokenizer vocabulary (at least the 256 bytes and the special tokens)", ge=300)
    seed: int = option(0, "initialisation seed", ge=0, lt=2**32)
    overwrite: bool = option(False, "replace a non-empty --output_dir that obliviate wrote")

    def __post_init__(self) -> None:
        validate(self)


@dataclass
class DemoConfig:
    """``obliviate demo``: the whole story offline on CPU. Unset numbers take the pipeline's (or --fast's) value."""

    methods: list[str] = option(
        [], "methods to run (default: ga ga_kl ga_gd npo contrast; also simnpo, rmu, relabel)", nargs="+"
    )
    fast: bool = option(False, "50 people, at most 40 unlearning steps, 50 rows evaluated per split")
    fresh: bool = option(False, "ignore cached data, target and oracle")
    people: int | None = option(None, "synthetic people (default: 200; --fast: 50)", ge=10, le=100_000)
    finetune_epochs: int | None = option(
        None, "epoch budget to build target and oracle, each stopped once memorised (default: 30)", ge=1, le=10_000
    )
    unlearn_epochs: int | None = option(
        None, "unlearning epochs for every method (default: the step budget)", ge=1, le=10_000
    )
    unlearn_max_steps: int | None = option(
        None, "unlearning step budget for every method (default: obliviate unlearn's, 120; --fast: 40)", ge=1
    )
    eval_max_examples: int | None = option(
        None, "rows evaluated per split at every epoch (default: 120; --fast: 50)", ge=1
    )
    workers: int = option(
        0,
        "processes for independent jobs; 0: one per available CPU core up to the number of jobs, one on a GPU",
        ge=0,
        le=1024,
    )
    group_by_length: bool = option(False, "batch similar lengths together (faster, memorised worse when measured)")
    attacks: str = option(
        PIPELINE_ATTACKS,
        "comma list of attacks on the target, the oracle and every method's chosen checkpoint, each on an in-memory "
        "copy: relearn (10 steps on half of each forget person's records, the other half probed), quantize (4-bit "
        "round-to-nearest); none: off",
    )
    seed: int = option(0, "data, model and training seed", ge=0, lt=2**32)
    output_dir: str = option("runs/demo", "report directory")
    cache_dir: str = option("runs/cache", "cached data and models")

    def __post_init__(self) -> None:
        validate(self)
        pipeline_attack_names(self.attacks)


@dataclass
class RunConfig:
    """``obliviate run``: the whole experiment on the user's data, as the demo runs it on synthetic people."""

    model: str = option(
        "",
        f"the fine-tuned target (a model directory); or {' / '.join(TINY_SIZES)} with --finetune_target",
        required=True,
    )
    forget_dir: str = option("", "the forget set (file or directory)", required=True)
    retain_dir: str = option("", "the retain set (file or directory)", required=True)
    output_dir: str = option("", "where report.md, results.json, the plots and every method's run go", required=True)
    holdout_dir: str | None = option(
        None, "people never trained on: the MIA non-members and the never-seen reference (else chance level)"
    )
    oracle: str | None = option(None, "a model retrained on the retain set alone: the reference a method should reach")
    train_oracle: bool = option(
        False, "fine-tune the oracle on the retain set with the target's recipe (its obliviate config.yaml)"
    )
    finetune_target: bool = option(
        False, f"build the target: fine-tune a fresh --model {' / '.join(TINY_SIZES)} on forget + retain"
    )
    methods: list[str] = option(
        [], "methods to run (default: ga ga_kl ga_gd npo contrast; also simnpo, rmu, relabel)", nargs="+"
    )
    finetune_epochs: int = option(
        100, "epoch budget of the fine-tuning this run does (target, oracle)", ge=1, le=10_000
    )
    until_memorised: float | None = option(
        0.95, "fine-tune until train exact match and ROUGE-L recall reach this (checked each epoch)", gt=0, le=1
    )
    memorised_sample: int = option(64, "training rows the memorisation check generates for", ge=1)
    unlearn_epochs: int | None = option(None, "unlearning epochs per method (default: the step budget)", ge=1)
    unlearn_max_steps: int | None = option(None, "unlearning step budget per method (default: unlearn's)", ge=1)
    eval_max_examples: int = option(120, "rows evaluated per split at every epoch (a seeded sample)", ge=1)
    max_new_tokens: int = option(40, "generation length of every evaluation", ge=1, le=65_536)
    eval_batch_size: int = option(32, "rows per evaluation batch", ge=1, le=65_536)
    select: str = option(
        "last", "which checkpoint each method's row shows", choices=("last", "task_aggregate", "holdout_gap")
    )
    workers: int = option(0, "processes for independent jobs; 0: one per CPU core up to the jobs", ge=0, le=1024)
    seed: int = option(0, "sampling, model and training seed", ge=0, lt=2**32)
    fresh: bool = option(False, "ignore cached fine-tuned models")
    cache_dir: str = option("runs/cache", "cached fine-tuned models")

    attacks: str = option(
        PIPELINE_ATTACKS,
        "comma list of attacks on the target, the oracle and every method's chosen checkpoint, each on an in-memory "
        "copy: relearn (10 steps on half of each forget person's records, the other half probed), quantize (4-bit "
        "round-to-nearest); none: off",
    )

    report_to: str = option(
        "none",
        "tracker of every method's unlearning run (step losses, learning rate, stop checks, epoch evaluations): "
        "tensorboard (OUT/methods/METHOD/tensorboard), wandb (offline unless WANDB_MODE says otherwise) or none",
        choices=TRACKERS,
    )

    def __post_init__(self) -> None:
        validate(self)
        pipeline_attack_names(self.attacks)
        if self.oracle and self.train_oracle:
            raise ConfigError("pass at most one of --oracle (a given model) and --train_oracle (fine-tune one)")
        if self.finetune_target and self.model not in TINY_SIZES:
            named = f"{', '.join(TINY_SIZES[:-1])} or {TINY_SIZES[-1]}"
            raise ConfigError(
                f"--finetune_target builds the target from --model {named}, found --model {self.model}: "
                "drop --finetune_target to use that model as the fine-tuned target"
            )
        if self.model in TINY_SIZES and not self.finetune_target:
            raise ConfigError(f"--model {self.model} is a fresh model, not a fine-tuned target: add --finetune_target")


@dataclass
class InspectConfig:
    """``obliviate inspect``: validate data sets; counts, lengths, PII-looking counts (never values)."""

    paths: list[str] = option([], "data files or directories to inspect", nargs="+", positional=True, required=True)
    tokenizer: str | None = option(None, "local tokenizer directory: lengths in its tokens instead of characters")
    allow_overlap: bool = option(False, "report forget / retain overlap instead of failing")
    region: str = option(
        "US", "phone numbering plan for numbers without +country code, and day-first dates outside US (ISO 3166)"
    )

    def __post_init__(self) -> None:
        validate(self)
        check_region(self.region)


def check_region(region: str) -> None:
    """A ``--region`` must be a two-letter ISO 3166 code (phonenumbers reads any such code)."""
    if not (len(region) == 2 and region.isalpha()):
        raise ConfigError(f"--region {region!r}: expected a two-letter ISO 3166 code such as US or GB")


@dataclass
class AuditConfig:
    """``obliviate audit``: which people and PII fields a model leaks, as a ranked report and a forget set."""

    model: str = option(
        "", "the model to audit: a local directory, a hub id or a PEFT adapter directory", required=True
    )
    output_dir: str = option("", "where audit.json, audit.md and forget.jsonl go", required=True)
    people: str | None = option(None, "a text file of names, one per line: an audit by names alone")
    data: str | None = option(None, "a LUME-format data set (directory or file): its people, true values and texts")
    base_model: str | None = option(None, "base model of an adapter whose adapter_config.json names none")
    max_people: int | None = option(None, "audit a seeded sample of this many people", ge=1)
    wordings: int = option(4, "question wordings per field: the LUME one, then paraphrases", ge=1, le=4)
    samples: int = option(8, "generations at temperature 1 per prompt, beside the greedy one (seeded)", ge=0, le=100)
    controls: int = option(
        10, "made-up names asked the same questions: the never-seen reference a flagged value must beat", ge=0
    )
    min_confidence: float = option(
        0.7, "names only: the least share of one prompt's generations that must repeat a value to flag it", gt=0, le=1
    )
    exposure_k: int = option(100, "with --data: fakes each true value is ranked among for exposure (0: skip)", ge=0)
    max_new_tokens: int = option(64, "generation length per prompt", ge=1, le=65_536)
    batch_size: int = option(32, "prompts per generation batch", ge=1, le=65_536)
    region: str = option("US", "phone numbering plan for numbers without +country code (ISO 3166, e.g. US, GB)")
    show_pii: bool = option(False, "keep names and PII values in audit.json and audit.md")
    seed: int = option(0, "control names and sampling seed", ge=0, lt=2**32)
    overwrite: bool = option(False, "replace a non-empty --output_dir that obliviate wrote")

    def __post_init__(self) -> None:
        validate(self)
        if bool(self.people) == bool(self.data):
            raise ConfigError("pass exactly one of --people (a names file) and --data (a LUME-format data set)")
        check_region(self.region)
