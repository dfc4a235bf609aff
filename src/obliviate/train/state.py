"""The state of a training run: :class:`Run` (what setup builds and what the run is), :class:`RunResult` (what a
run returns) and the epoch hook's type. Its own room so that the stages (:mod:`~obliviate.train.step`,
:mod:`~obliviate.train.sampling`, :mod:`~obliviate.train.schedule`, :mod:`~obliviate.train.finish`) name it without
importing the loop."""

from __future__ import annotations

import os
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from accelerate import Accelerator

from obliviate.config import TrainConfig
from obliviate.losses import Method
from obliviate.losses.common import LossParams
from obliviate.train.forward_count import ForwardCounter, compute_tokens

EpochHook = Callable[[int, Path], Any]
"""Called on every rank after ``checkpoints/epoch-N`` is complete, with ``(N, checkpoint_dir)``; what it returns (an
:class:`~obliviate.evaluate.results.EpochEval` in the pipeline) is kept in :attr:`RunResult.epoch_results`. Typed as
``Any`` so that training never imports evaluation."""


@dataclass
class RunResult:
    output_dir: Path
    epochs_completed: int
    global_step: int
    tokens_seen: int
    stopped: str | None = None
    wall_seconds: float = 0.0
    epoch_results: list[Any] = field(default_factory=list)  # what the epoch hook returned, per checkpoint
    lr: float | None = None  # the peak rate trained with (the range test's choice where --lr was unset)
    method: str | None = None  # the objective trained with (what --method auto chose)
    timing: dict[str, float] = field(default_factory=dict)  # seconds per phase (see Run.timing)
    step_budget: int | None = None  # --max_steps (None: the epochs alone set the length)
    lr_probe_tokens: int = 0  # what the range test's trial steps processed (not in tokens_seen; 0: --lr was given)
    forward_tokens: int = 0  # read by passes that train nothing (obliviate.train.forward_count)

    @property
    def cost_tokens(self) -> int:
        """Every token the run trained on: its own steps and its range test's trials."""
        return self.tokens_seen + self.lr_probe_tokens

    @property
    def compute_tokens(self) -> float:
        """The run's arithmetic in trained-token equivalents: :attr:`cost_tokens` plus a forward pass's share
        (:data:`~obliviate.train.forward_count.FORWARD_COST`) of every token read without training."""
        return compute_tokens(self.cost_tokens, self.forward_tokens)


@dataclass
class Run:
    """The recipe's state: what :func:`setup` builds and what the run is (method, weights, config, tokenizer), so
    that every stage (:func:`~obliviate.train.epoch.train_epoch`, :func:`~obliviate.train.step.accumulate`, the
    range test) takes the run and little else. The stages: :func:`~obliviate.train.loop.setup` →
    :func:`~obliviate.train.loop.train` → :func:`~obliviate.train.finish.save_final` → cleanup (the ``finally`` of
    ``train``)."""

    accelerator: Accelerator
    model: torch.nn.Module
    reference: torch.nn.Module | None
    optimizer: torch.optim.Optimizer
    scheduler: Any
    forget: list
    retain: list
    steps_per_epoch: int  # optimizer steps per epoch (interleaved: forget steps and their retain steps)
    forget_steps: int  # forget-batch steps per epoch
    accumulation: int
    control: torch.Tensor | None
    is_peft: bool
    state: dict[str, Any]
    forget_draws: list[list] = field(default_factory=list)  # relabelled forget sets, one per epoch in turn
    paired_draws: list[list] = field(default_factory=list)  # fake-value copies of the forget set, in turn
    forget_keys: list = field(default_factory=list)  # per forget row: what --retain_sampling matched pairs on
    retain_keys: list = field(default_factory=list)  # per retain row: the same
    paired: list[list] = field(default_factory=list)  # this epoch's fake-value draws (--fakes_per_step of them)
    step_check: Any = None  # a stop rule asked after optimizer steps (obliviate.evaluate.stop_rule)
    epoch_check: Any = None  # asked at epoch ends (finetune --until_memorised: obliviate.evaluate.memorised)
    joint_forward: bool = False  # forget and retain in one pass (sharded weights: one all-gather instead of two)
    retain_start: torch.Tensor | None = None  # [retain rows]: whether the starting model reproduced each exactly
    forget_ref_logprob: torch.Tensor | None = None  # [forget rows]: log π_ref(y|x) cached in place of a frozen copy
    field_margins: torch.Tensor | None = None  # [field codes]: never-seen values' NLL gap to their fakes (calibrate)
    epochs: int = 0  # epochs the run plans: --epochs, or as many as --max_steps takes
    total_steps: int = 0  # optimizer steps the run plans (the schedule's length)
    method: Method | None = None
    params: LossParams | None = None
    base_params: LossParams | None = None  # the weights as resolved; ``params`` is them with the retain guard's scale
    retain_scale: float = 1.0
    config: TrainConfig | None = None
    tokenizer: Any = None
    layer: int | None = None  # the decoder block whose output a hidden-states method reads (RMU), else None
    log: Callable[[dict[str, Any]], None] = lambda record: None  # one metrics.jsonl line per call
    stop_forget_nll: float | None = None  # the GA family's bound on the logged forget NLL
    timing: dict[str, float] = field(default_factory=dict)  # seconds per phase, written to trainer_state.json
    card: dict[str, Any] = field(default_factory=dict)  # what the model cards say (obliviate.model_card)
    fields_done: frozenset[str] = frozenset()  # --field_stop: PII fields inside their band at the last check
    fields_waived: frozenset[str] = frozenset()  # --field_stop_words checked: fields that do not hold a row's words
    continued: list = field(default_factory=list)  # the range test's kept trial steps: the first epoch logs them
    forward_counter: ForwardCounter | None = None  # tokens of passes that train nothing


def bars_off(acc: Accelerator) -> bool:
    """Progress bars only on the main process, and not where ``TQDM_DISABLE`` is set (e.g. pipeline workers): an
    explicit ``disable=False`` would override tqdm's own reading of that variable."""
    return not acc.is_main_process or os.environ.get("TQDM_DISABLE", "").lower() in ("1", "true", "yes")
