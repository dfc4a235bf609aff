"""Flat run configs with help text: YAML in, command-line flags on top (:mod:`obliviate.cli.options`), resolved
YAML out.

Every subcommand's options are one dataclass here. A field's metadata carries its help text and its valid range
(``ge``/``gt``/``le``/``lt``, ``choices``); :func:`validate` checks every field of every config the same way, before
anything is read or written, whether the value came from a flag or from ``--config`` YAML. Floats must be finite.
"""

from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass, field
from typing import Any

import yaml

from obliviate.errors import ConfigError

SCHEDULERS = ("constant", "linear", "cosine")
TINY_ARCHS = (
    "olmo", "olmo2", "olmo3", "llama", "qwen2", "qwen3", "mistral", "mixtral", "phi", "phi3", "gemma", "gemma2",
    "gemma3_text", "gpt2", "gpt_bigcode", "gpt_neox", "gptj", "codegen", "falcon", "bloom", "opt", "stablelm",
    "starcoder2", "granite", "cohere", "smollm3", "mpt",
)  # fmt: skip
"""The Hugging Face model types ``--model tiny|small --arch`` builds from a config (``models.tiny.ARCHS``, kept equal
by a test; config sits below models, so it names them instead of importing them)."""
ATTACKS = ("relearn", "quantize")
"""``evaluate --attacks``: the attacks on copies of the model (:mod:`obliviate.evaluate.attacks`)."""
RELEARN_SOURCES = ("forget_half", "retain", "forget_nonpii")
"""``evaluate --relearn_sources``: what the relearning attack trains on (:mod:`obliviate.evaluate.relearn`)."""
QUANTIZE_BITS = (8, 4)
"""``evaluate --quantize_bits``: bit widths of round-to-nearest quantisation (:mod:`obliviate.evaluate.quantize`)."""
PIPELINE_ATTACKS = "relearn,quantize"
"""``demo --attacks``' default: both attacks, at the pipeline's cheap settings (:mod:`obliviate.pipeline_attacks`)."""


def comma_list(flag: str, value: str, valid: tuple, kind: type = str) -> tuple:
    """``"a,b"`` → ``("a", "b")`` (as ``kind``), each checked against ``valid``; an empty string is no items.

    Raises:
        ConfigError: an item that is not one of ``valid``, in one line that lists the valid ones.
    """
    items = [item.strip() for item in str(value).split(",") if item.strip()]
    try:
        parsed = tuple(kind(item) for item in items)
    except ValueError:
        parsed = ()
    if len(parsed) != len(items) or any(item not in valid for item in parsed):
        wanted = ", ".join(map(str, valid))
        raise ConfigError(f"--{flag} {value!r}: expected a comma list of {wanted}")
    return tuple(dict.fromkeys(parsed))


def pipeline_attack_names(value: str) -> tuple[str, ...]:
    """``demo --attacks``: ``none`` (or empty) turns the attacks off, else a comma list of :data:`ATTACKS`."""
    if str(value).strip().lower() in ("", "none"):
        return ()
    return comma_list("attacks", value, ATTACKS)


def option(default: Any, help: str, **kwargs: Any) -> Any:
    """A dataclass field with the help text its command-line flag shows.

    Keyword metadata: ``required``, ``nargs``, ``positional``, ``choices``, the bounds ``ge``, ``gt``, ``le``,
    ``lt`` that :func:`validate` enforces, and ``flag=False`` for a field the CLI fills from flags of its own (the
    loss weights).
    """
    if isinstance(default, (list, dict)):
        return field(default_factory=lambda: type(default)(default), metadata={"help": help, **kwargs})
    return field(default=default, metadata={"help": help, **kwargs})


BOUNDS = {"ge": (">=", lambda v, b: v >= b), "gt": (">", lambda v, b: v > b), "le": ("<=", lambda v, b: v <= b)}
BOUNDS["lt"] = ("<", lambda v, b: v < b)
"""Each bound's symbol and test, for :func:`validate` and the flags' help text."""


def validate(config: Any) -> None:
    """Check every field of a config dataclass against its metadata: finite numbers, bounds and choices.

    Raises:
        ConfigError: the first field out of range, as ``--name must be <rule>, found <value>``.
    """
    for f in dataclasses.fields(config):
        value = getattr(config, f.name)
        values = value if isinstance(value, (list, tuple)) else [value]
        for item in values:
            _check_value(f, item)


def _check_value(f: dataclasses.Field, value: Any) -> None:
    meta = f.metadata
    if value is None or isinstance(value, bool):
        return
    if "choices" in meta and value not in meta["choices"]:
        raise ConfigError(f"--{f.name} {value!r}: expected one of {', '.join(map(str, meta['choices']))}")
    if not isinstance(value, (int, float)):
        return
    if isinstance(value, float) and not math.isfinite(value):
        raise ConfigError(f"--{f.name} must be a finite number, found {value}")
    rules = [(key, meta[key]) for key in ("ge", "gt", "le", "lt") if key in meta]
    for key, bound in rules:
        symbol, holds = BOUNDS[key]
        if not holds(value, bound):
            wanted = " and ".join(f"{BOUNDS[k][0]} {b}" for k, b in rules)
            raise ConfigError(f"--{f.name} must be {wanted}, found {value}")


@dataclass
class TrainConfig:
    """Options shared by fine-tuning and unlearning: the optimiser, the schedule and the run directory."""

    output_dir: str = option("", "where the model, checkpoints, metrics.jsonl and config.yaml go", required=True)
    epochs: int = option(5, "passes over the forget set (finetune: over the training data)", ge=1, le=100_000)
    lr: float = option(1e-5, "peak learning rate of AdamW", gt=0, le=1)
    batch_size: int = option(32, "effective batch size: micro_batch_size x accumulation x processes", ge=1)
    micro_batch_size: int = option(8, "examples per forward pass on each process", ge=1)
    weight_decay: float = option(0.0, "AdamW weight decay", ge=0, le=10)
    scheduler: str = option(
        "constant", "learning-rate schedule after warm-up: constant, linear or cosine", choices=SCHEDULERS
    )
    warmup_ratio: float = option(0.0, "share of optimizer steps spent warming up linearly from 0", ge=0, lt=1)
    max_grad_norm: float = option(1.0, "gradient clipping norm (0 turns clipping off)", ge=0)
    max_length: int = option(
        512, "longest tokenised example; longer prompts are cut from the left", ge=8, le=1_048_576
    )
    length_pieces: bool = option(
        True,
        "run a batch of mixed lengths as length-sorted pieces, each weighted by its share of every mean the loss "
        "takes (every method; one process or DDP): the same update with less padding",
    )
    group_by_length: bool = option(
        False, "batch examples of similar length together (same examples per epoch, much less padding)"
    )
    seed: int = option(42, "fixes data order, retain pairing, initialisation and dropout", ge=0, lt=2**32)
    mixed_precision: str = option(
        "auto", "auto (bf16 where the hardware supports it), bf16, fp16 or no", choices=("auto", "bf16", "fp16", "no")
    )
    gradient_checkpointing: bool = option(False, "recompute activations in backward to save memory")
    trainable_layers: str = option("auto", "all, 0,1,5, 0-3 or last:N (auto: all; rmu: the MLPs around its layer)")
    trainable_modules: str = option(
        "all", "within the chosen layers: all, mlp or attn", choices=("all", "mlp", "attn")
    )
    lora_r: int = option(0, "LoRA rank; 0 trains the weights themselves", ge=0, le=65_536)
    lora_alpha: float = option(16.0, "LoRA scaling numerator", gt=0)
    lora_dropout: float = option(0.05, "dropout on the LoRA branch", ge=0, lt=1)
    lora_target: str = option("all-linear", "LoRA target modules: all-linear, attn, mlp or a comma list")
    merge: bool = option(False, "under LoRA, also write the merged full model to OUTPUT_DIR/merged")
    max_steps: int = option(
        0, "optimizer steps in all, however many epochs that takes (the last may be partial); 0: --epochs", ge=0
    )
    save_checkpoints: bool = option(True, "write checkpoints/epoch-N at epoch ends (see --max_checkpoints)")
    max_checkpoints: int = option(
        20, "at most this many epoch checkpoints: with more epochs, every k-th epoch's and the last", ge=1
    )
    resume: bool = option(False, "continue from the last complete checkpoint in OUTPUT_DIR")
    overwrite: bool = option(False, "allow a non-empty OUTPUT_DIR (its contents are replaced)")
    trust_remote_code: bool = option(False, "run model code shipped with a hub model (off: safer)")
    allow_overlap: bool = option(False, "accept records that are in both the forget and the retain set")
    report_to: str = option(
        "none",
        "experiment tracker for step losses, learning rate, stop-rule checks and epoch evaluations: tensorboard "
        "(OUTPUT_DIR/tensorboard), wandb (offline unless WANDB_MODE says otherwise) or none",
        choices=("none", "tensorboard", "wandb"),
    )

    def __post_init__(self) -> None:
        validate(self)


@dataclass
class FinetuneConfig(TrainConfig):
    """``obliviate finetune``: train a causal LM on records (answers only; documents on every token)."""

    model: str = option("tiny", "tiny, small, a local model directory or a hub id", required=True)
    data: list[str] = option([], "one or more data paths to train on", nargs="+", required=True)
    arch: str = option("olmo", "for --model tiny/small: the model type built from a config", choices=TINY_ARCHS)
    epochs: int = option(30, "passes over the training data", ge=1, le=100_000)
    lr: float = option(3e-3, "peak learning rate of AdamW", gt=0, le=1)
    batch_size: int = option(16, "effective batch size", ge=1)
    micro_batch_size: int = option(16, "examples per forward pass on each process", ge=1)
    scheduler: str = option(
        "cosine", "learning-rate schedule after warm-up: constant, linear or cosine", choices=SCHEDULERS
    )
    warmup_ratio: float = option(0.05, "share of optimizer steps spent warming up", ge=0, lt=1)
    save_checkpoints: bool = option(False, "write checkpoints/epoch-N at every epoch end")
    until_memorised: float | None = option(
        None,
        "stop once greedy answers on a seeded sample of the training rows reach this exact match (QA rows) and "
        "ROUGE-L recall (completion rows), checked at every epoch end; --epochs is then the budget (the schedule "
        "is planned over it); unset: train --epochs",
        gt=0,
        le=1,
    )
    memorised_sample: int = option(
        64, "with --until_memorised: training rows checked (a seeded sample that keeps people whole)", ge=1
    )


@dataclass
class UnlearnConfig(TrainConfig):
    """``obliviate unlearn``: remove the forget set from a fine-tuned model while keeping the retain set."""

    model_dir: str = option("", "the fine-tuned model: local directory or hub id (never written to)", required=True)
    forget_dir: str = option("", "the forget set (file or directory)", required=True)
    retain_dir: str | None = option(None, "the retain set; needed by every method but ga")
    holdout_dir: str | None = option(None, "held-out people for --eval_every_epoch (leak floor, MIA non-members)")
    method: str = option(
        "auto",
        "auto, or a method of the registry (obliviate.losses.LOSSES); the CLI lists them with their summaries",
    )
    lr: float | None = option(
        None, "peak learning rate of AdamW; unset: the method's preset, else a short range test picks it", gt=0, le=1
    )
    epochs: int | None = option(
        None, "passes over the forget set; unset with --max_steps unset: a budget of DEFAULT_STEPS steps", ge=1
    )
    max_steps: int | None = option(
        None, "optimizer steps in all; with --epochs too, whichever ends first; unset: see --epochs", ge=1
    )
    loss_params: dict[str, float] = option(
        {},
        "loss weights by name, each declared once in its method's file (obliviate.losses, WEIGHTS); the CLI gives "
        "each its own flag (--alpha, --beta, ...) and YAML may name them at the top level; unset: the method's "
        "default",
        flag=False,
    )
    rmu_scale: float = option(
        5.0, "adaptive RMU (arXiv:2408.06223): c = rmu_scale x mean forget activation norm at --rmu_layer", gt=0
    )
    rmu_layer: int | None = option(None, "RMU hidden layer (default: a quarter of the depth)", ge=0)
    forget_tokens: str = option(
        "answer",
        "what the forget term scores: answer (every answer token) or pii (only the tokens of the person's PII values)",
        choices=("answer", "pii"),
    )
    relabel_draws: int = option(
        4, "relabel / contrast: stranger answers or fake-value copies per forget record, one per epoch", ge=1, le=64
    )
    schedule: str = option(
        "joint",
        "joint: every step optimises the method's whole loss; interleaved: one forget-only step (retain weight 0), "
        "then --retain_steps steps of plain NLL on retain rows, the learning-rate schedule restarted every "
        "--chunk_size forget examples (AILS-NTUA, SemEval-2025 Task 4)",
        choices=("joint", "interleaved"),
    )
    chunk_size: int = option(32, "interleaved: forget examples per chunk (each chunk restarts the schedule)", ge=1)
    retain_steps: int = option(7, "interleaved: retain-only optimizer steps after each forget step", ge=0, le=1000)
    lr_probe_steps: int = option(5, "steps per candidate rate in the learning-rate range test (unset --lr)", ge=1)
    stop_forget_nll: float | None = option(
        None, "stop when the forget NLL rises above this bound (0: no bound; method preset: 8 for the GA family)", ge=0
    )
    stop_check_steps: int | None = option(
        None,
        "every N optimizer steps, stop once forget PII exposure is inside the never-seen band (holdout people, else "
        "chance) or retain NLL rose past --stop_retain_bound; unset: about 20 checks per run where PII values are "
        "known; 0: off",
        ge=0,
    )
    stop_band: float = option(2.0, "standard errors above the never-seen exposure that still count as forgotten", ge=0)
    stop_retain_bound: float = option(
        0.5, "nats the retain NLL may rise above its start before the stop rule ends the run", gt=0
    )
    eval_every_epoch: bool = option(False, "evaluate each checkpoint inside the run (needs the evaluation suite)")
    eval_max_examples: int | None = option(
        None, "with --eval_every_epoch: evaluate a seeded sample of this size", ge=1
    )

    @classmethod
    def build(cls, **options: Any) -> UnlearnConfig:
        """A config from options by name, as a user writes them: every field by its name, and every other name a
        loss weight (``alpha=4`` → ``loss_params["alpha"]``), checked against the method's weights when the run
        resolves them (:meth:`obliviate.losses.Method.params`)."""
        return cls(**_split_weights(cls, options, {}))

    def with_options(self, **options: Any) -> UnlearnConfig:
        """This config with ``options`` changed, loss weights by name as in :meth:`build`."""
        return dataclasses.replace(self, **_split_weights(type(self), options, self.loss_params))


def _split_weights(cls: type, options: dict[str, Any], weights: dict[str, float]) -> dict[str, Any]:
    names = {f.name for f in dataclasses.fields(cls)}
    fields = {k: v for k, v in options.items() if k in names}
    extra = {k: v for k, v in options.items() if k not in names}
    if extra or "loss_params" not in fields:
        fields["loss_params"] = {**weights, **fields.get("loss_params", {}), **extra}
    return fields


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
    """``obliviate init-model``: a tokenizer trained on the data and an untrained tiny/small OLMo."""

    output_dir: str = option("", "where the model directory is written", required=True)
    data: list[str] = option([], "data paths to train the tokenizer on", nargs="+", required=True)
    size: str = option("tiny", "tiny: ~1.6 M parameters; small: ~7 M", choices=("tiny", "small"))
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
        None, "rows evaluated per split at every epoch (default: 60; --fast: 50)", ge=1
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
        "", "the fine-tuned target (a model directory); or tiny / small with --finetune_target", required=True
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
        False, "build the target: fine-tune a fresh --model tiny / small on forget + retain"
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
    eval_max_examples: int = option(60, "rows evaluated per split at every epoch (a seeded sample)", ge=1)
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

    def __post_init__(self) -> None:
        validate(self)
        pipeline_attack_names(self.attacks)
        if self.oracle and self.train_oracle:
            raise ConfigError("pass at most one of --oracle (a given model) and --train_oracle (fine-tune one)")
        sizes = ("tiny", "small")
        if self.finetune_target and self.model not in sizes:
            raise ConfigError(
                f"--finetune_target builds the target from --model tiny or small, found --model {self.model}: "
                "drop --finetune_target to use that model as the fine-tuned target"
            )
        if self.model in sizes and not self.finetune_target:
            raise ConfigError(f"--model {self.model} is a fresh model, not a fine-tuned target: add --finetune_target")


@dataclass
class InspectConfig:
    """``obliviate inspect``: validate data sets; counts, lengths, PII-looking counts (never values)."""

    paths: list[str] = option([], "data files or directories to inspect", nargs="+", positional=True, required=True)
    tokenizer: str | None = option(None, "local tokenizer directory: lengths in its tokens instead of characters")
    allow_overlap: bool = option(False, "report forget / retain overlap instead of failing")


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
        if not (len(self.region) == 2 and self.region.isalpha()):
            raise ConfigError(f"--region {self.region!r}: expected a two-letter ISO 3166 code such as US or GB")


def to_yaml(config: Any) -> str:
    return yaml.safe_dump(dataclasses.asdict(config), sort_keys=False)
