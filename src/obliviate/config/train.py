"""The configs of the training subcommands: ``finetune`` and ``unlearn`` on their shared ``TrainConfig``."""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from typing import Any

from obliviate.config.base import SCHEDULERS, TINY_ARCHS, TRACKERS, option, validate


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
        "auto",
        "within the chosen layers: all, mlp or attn (auto: the method's preset, mlp for contrast; else all)",
        choices=("auto", "all", "mlp", "attn"),
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
        choices=TRACKERS,
    )

    def __post_init__(self) -> None:
        validate(self)


@dataclass
class FinetuneConfig(TrainConfig):
    """``obliviate finetune``: train a causal LM on records (answers only; documents on every token)."""

    model: str = option("tiny", "tiny, small, medium, a local model directory or a hub id", required=True)
    data: list[str] = option([], "one or more data paths to train on", nargs="+", required=True)
    arch: str = option("olmo", "for --model tiny/small/medium: the model type built from a config", choices=TINY_ARCHS)
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
    holdout_dir: str | None = option(
        None,
        "people never trained on: the stop rule's never-seen band, values no fake is drawn as, and with "
        "--eval_every_epoch the leak floor and MIA non-members",
    )
    method: str = option(
        "auto",
        "auto, or a method of the registry (obliviate.losses.LOSSES); the CLI lists them with their summaries",
    )
    lr: float | None = option(
        None, "peak learning rate of AdamW; unset: the method's preset, else a short range test picks it", gt=0, le=1
    )
    epochs: int | None = option(
        None,
        "passes over the forget set; unset with --max_steps unset: the method's budget of forget steps (120; contrast "
        "240, or 10 passes over the forget set where that is more), each with its --retain_steps under --schedule "
        "interleaved",
        ge=1,
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
        "what the forget term scores: answer (every answer token) or pii (only the tokens of the person's PII values, "
        "those in the prompt too)",
        choices=("answer", "pii"),
    )
    relabel_draws: int = option(
        4, "relabel / contrast: stranger answers or fake-value copies per forget record, one per epoch", ge=1, le=64
    )
    fakes_per_step: int | None = option(
        None,
        "contrast: fake-value copies each forget value is compared with at every forget step (a fresh set per "
        "epoch); the hinge targets their mean NLL, where a value of a person the model never saw would lie; unset: "
        "the method's preset, else 1",
        ge=1,
        le=16,
    )
    schedule: str = option(
        "auto",
        "joint: every step optimises the method's whole loss; interleaved: one forget-only step (retain weight 0), "
        "then --retain_steps steps of plain NLL on retain rows, the learning-rate schedule restarted every "
        "--chunk_size forget examples (AILS-NTUA, SemEval-2025 Task 4); auto: the method's preset (contrast: "
        "interleaved), else joint",
        choices=("auto", "joint", "interleaved"),
    )
    chunk_size: int = option(32, "interleaved: forget examples per chunk (each chunk restarts the schedule)", ge=1)
    retain_steps: int | None = option(
        None,
        "interleaved: retain-only optimizer steps after each forget step; unset: the method's preset (contrast: "
        "15), else 7 (AILS-NTUA's)",
        ge=0,
        le=1000,
    )
    retain_batch_size: int | None = option(
        None,
        "interleaved: retain rows per retain-only step, at most --batch_size and a multiple of processes x the "
        "accumulation --batch_size takes (each retain step runs as many micro-batches as a forget step); unset: "
        "the method's preset, else --batch_size",
        ge=1,
    )
    repair_exact: float | None = option(
        None,
        "interleaved: before each retain step, check its retain batch (one forward, no update); once the batch "
        "reproduces at least this share of the rows the starting model reproduced word for word (teacher-forced), "
        "the forget step's repair is done and its remaining retain steps are left out; unset: the method's preset, "
        "else off (always --retain_steps)",
        gt=0,
        le=1,
    )
    retain_sampling: str = option(
        "auto",
        "which retain rows each forget row is paired with: uniform (a random draw) or matched (a retain row of the "
        "same task, kind and PII field: an SSN question beside an SSN question); auto: the method's preset "
        "(contrast: matched), else uniform",
        choices=("auto", "uniform", "matched"),
    )
    lr_probe_steps: int = option(
        5,
        "steps per candidate rate in the learning-rate range test (unset --lr): the run's own first steps, the "
        "chosen rate's kept as the run's start where they are exactly its; a rate already outside the retain bound "
        "after one step stops there; at most the run's budget",
        ge=1,
        le=10_000,
    )
    lr_probe_rows: int = option(
        32,
        "forget rows and retain rows the range test measures each candidate rate on (the first trained on; the "
        "first of the retain set)",
        ge=1,
    )
    lr_probe_settle: int | None = option(
        None,
        "judge each candidate rate's retain rows by their mean over its last N steps (cycles) of the range test "
        "instead of after its last alone (they swing as forget steps push and retain steps repair); above 1, a rate "
        "is stopped after its first step only outside a bound 3 times as wide; unset: the method's preset, else 1",
        ge=1,
        le=10_000,
    )
    stop_forget_nll: float | None = option(
        None, "stop when the forget NLL rises above this bound (0: no bound; method preset: 8 for the GA family)", ge=0
    )
    stop_check_steps: int | None = option(
        None,
        "every N optimizer steps, stop once forget PII exposure is inside the never-seen band (holdout people, else "
        "chance) or retain NLL rose past --stop_retain_bound; unset: about 20 checks per run (contrast: 40), "
        "each at a whole cycle, where PII values are known (with the method's budget: 20 or 40 over its forget "
        "steps, the same interval through the passes a large forget set adds); 0: off",
        ge=0,
    )
    stop_band: float = option(2.0, "standard errors above the never-seen exposure that still count as forgotten", ge=0)
    stop_retain_bound: float = option(
        0.5, "nats the retain NLL may rise above its start before the stop rule ends the run", gt=0
    )
    stop_retain_exact: float = option(
        0.0,
        "share of its starting exact match the retain sample must keep (teacher-forced: every answer token the most "
        "likely, i.e. what greedy decoding reproduces word for word), else the stop rule ends the run; 0: not watched",
        ge=0,
        le=1,
    )
    retain_guard: float = option(
        0.0,
        "share of its starting exact match the retain sample is defended at: below it, each stop-rule check doubles "
        "the method's retain weights (up to --retain_guard_max times), above it halves them back (a dual step on "
        "the retain constraint); 0: off",
        ge=0,
        le=1,
    )
    stop_words: bool = option(
        False,
        "with a holdout set: the stop rule also ends the run once the forget completions' words outside PII values "
        "are as unlikely as the holdout people's (going on would make them less likely than a stranger's)",
    )
    stop_pooled: bool = option(
        False,
        "the stop rule also asks the pooled forget exposure of the fields that decide the stop to be inside the "
        "pooled never-seen band (the threshold its plot draws); while every field is inside its own band and the "
        "pooled mean is not, the run goes on and --field_stop pushes again the fields above their never-seen mean",
    )
    stop_lower: bool = option(
        False,
        "the exposure stop also asks each deciding field's forget exposure to be no more than --stop_band standard "
        "errors below its never-seen mean: a field pushed below a stranger's does not count as done (under "
        "--field_stop it is left alone while below), and the run goes on until it is back inside; with nothing "
        "pulling it back (contrast's --pull 0) that can take the whole budget",
    )
    stop_reread: bool = option(
        False,
        "where the stop rule would stop, it also reads the holdout people's exposure under the current weights and "
        "holds the forget samples to that band too (the evaluation's reference); the fields outside it go on",
    )
    retain_guard_max: float = option(16.0, "the largest factor --retain_guard puts on the retain weights", ge=1)
    field_stop: bool | None = option(
        None,
        "per-field stop: once a PII field's forget exposure is inside its never-seen band at a stop-rule check, a "
        "method that scores values per field (contrast) leaves that field's values alone until a later check finds "
        "it outside again, and the words of a row whose values are all inside with them; the run stops when every "
        "field is inside. Unset: the method's preset (contrast: on; off for the others)",
    )
    field_stop_words: str = option(
        "all",
        "--field_stop: the words of a row are left alone once all its values are inside (all), or once all its values "
        "of the fields that decide the stop are (checked: a field whose never-seen values rank first among their "
        "fakes, LUME's e-mails, does not hold them back)",
        choices=("all", "checked"),
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
