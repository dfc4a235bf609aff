"""Shared pieces of every objective: the inputs a loss receives, the result it returns, answer-token log-probs."""

from __future__ import annotations

import math
from dataclasses import dataclass, field

import torch

from obliviate.config import BOUNDS
from obliviate.errors import ConfigError

IGNORE_INDEX = -100


@dataclass
class Forward:
    """What one forward pass of a model on one :class:`~obliviate.data.batching.TokenBatch` produced.

    Attributes:
        logits: ``[batch, seq_len, vocab]``, or None when only hidden states were asked for.
        labels: ``[batch, seq_len]``, the batch's labels (``-100`` on prompt and padding), unshifted.
        hidden: ``[batch, seq_len, hidden]`` at the method's chosen layer, or None.
        attention_mask: ``[batch, seq_len]``, 1 on real tokens.
        spans: ``[batch, seq_len]``, the field code of each PII value token, 0 elsewhere (``TokenBatch.spans``), or
            None.
        input_ids: ``[batch, seq_len]``, the batch's tokens (the end token of each row, which ``labels`` may leave
            unscored), or None.
    """

    logits: torch.Tensor | None
    labels: torch.Tensor
    attention_mask: torch.Tensor
    hidden: torch.Tensor | None = None
    spans: torch.Tensor | None = None
    input_ids: torch.Tensor | None = None


@dataclass
class LossInputs:
    """Everything an objective may look at; the loop fills only what the method's :class:`Needs` asks for.

    ``*_ref`` come from the frozen reference (a frozen copy, or the same model with its LoRA adapters disabled)
    and carry no gradient.

    ``shares`` is set when the loop runs a micro-batch as length pieces: for each ``(split, unit)`` the method
    declares in :attr:`obliviate.losses.Method.means`, this piece's share of the micro-batch's units (e.g. its
    scored forget tokens over those of the whole micro-batch). A loss multiplies each mean, in its loss and in its
    metrics, by :meth:`share`, so that the pieces' losses, gradients and metrics add up to the whole batch's.
    """

    forget: Forward
    retain: Forward | None = None
    forget_ref: Forward | None = None
    retain_ref: Forward | None = None
    control: torch.Tensor | None = None  # RMU: the fixed vector c·u, shape [hidden]
    paired: Forward | None = None  # row i: forget row i with its PII values replaced by fresh fakes
    paired_ref: Forward | None = None  # the paired copies under the frozen reference (the starting model)
    forget_ref_logprob: torch.Tensor | None = None  # [batch]: log π_ref(y|x) per forget row, computed before training
    field_margins: torch.Tensor | None = None  # [field codes]: never-seen values' NLL gap to their fakes (contrast)
    shares: dict[tuple[str, str], float] = field(default_factory=dict)  # (split, unit) -> this piece's share

    def share(self, split: str, unit: str) -> float:
        """The weight of a mean over ``split``'s ``unit`` in this call: 1.0 for a whole batch, the piece's share of
        the micro-batch's units for a length piece.

        Raises:
            ConfigError: the batch runs as pieces and the method's ``means`` does not declare ``(split, unit)``.
        """
        if not self.shares:
            return 1.0
        if (split, unit) not in self.shares:
            raise ConfigError(
                f"the loss weights a mean over {split} {unit}, which its Method.means does not declare; "
                f"declared: {sorted(self.shares)}"
            )
        return self.shares[(split, unit)]


@dataclass
class LossOutput:
    """The scalar to minimise and the figures to log.

    Attributes:
        loss: 0-d tensor with gradient.
        metrics: figures to log (e.g. ``forget_nll``, ``retain_nll``), each a detached 0-d tensor on the loss's
            device, never a Python float: reading a GPU value on the host waits for the GPU, so the loop stacks every
            metric of an optimizer step and copies them to the host once.
    """

    loss: torch.Tensor
    metrics: dict[str, torch.Tensor] = field(default_factory=dict)


@dataclass(frozen=True)
class Needs:
    """What a method needs the loop to compute, so that nothing else is built or run.

    Attributes:
        retain: a retain batch paired with each forget batch.
        reference_on: the splits on which the frozen reference is run: ``()``, ``("forget",)``, ``("retain",)``,
            ``("paired",)`` (the paired copies).
        hidden: hidden states at one layer instead of logits (RMU).
        paired: each forget row paired with a copy whose PII values are fresh fakes (``LossInputs.paired``), both
            scored on the PII value tokens only.
        reference_logprob: the reference is read only as each forget row's summed answer log-probability
            (``LossInputs.forget_ref_logprob``). Under full fine-tuning the loop computes that number once, with the
            starting model, before the first step, and keeps no frozen copy (docs/METHODS.md, NPO).
    """

    retain: bool = False
    reference_on: tuple[str, ...] = ()
    hidden: bool = False
    paired: bool = False
    reference_logprob: bool = False

    @property
    def reference(self) -> bool:
        return bool(self.reference_on)


@dataclass(frozen=True)
class Weight:
    """One loss weight as a method's file declares it: its default, what it means, and its valid range.

    The declaration is the only place a weight is defined: ``obliviate unlearn`` makes a flag of it (``--alpha``,
    its help listing every method's default), :meth:`obliviate.losses.Method.params` checks a given value against
    it, and the loss reads it as ``params.<name>``.

    Attributes:
        default: the value a run uses when the user sets none; None: resolved per run (RMU's adaptive ``c``).
        help: what the weight does, one line.
        ge, gt, le, lt: bounds a given value must satisfy (None: no bound).
        retain: the weight of a retain-set term, set to 0 on the forget-only steps of ``--schedule interleaved``.
        switch: an on/off setting kept among the weights (``--word_runs``): 0 or 1 only, since the loss reads any
            other value as on, and ``--word_runs 0.5`` would run as 1 without a word.
    """

    default: float | None
    help: str
    ge: float | None = None
    gt: float | None = None
    le: float | None = None
    lt: float | None = None
    retain: bool = False
    switch: bool = False

    def check(self, name: str, value: float) -> float:
        """``value`` as a float, or a ConfigError worded like every other option's (``--name must be …``)."""
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            raise ConfigError(f"--{name} must be a number, found {value!r}")
        if not math.isfinite(value):
            raise ConfigError(f"--{name} must be a finite number, found {value}")
        rules = [(key, getattr(self, key)) for key in ("ge", "gt", "le", "lt") if getattr(self, key) is not None]
        if not all(BOUNDS[key][1](value, bound) for key, bound in rules):
            wanted = " and ".join(f"{BOUNDS[key][0]} {bound}" for key, bound in rules)
            raise ConfigError(f"--{name} must be {wanted}, found {value}")
        if self.switch and value not in (0, 1):
            raise ConfigError(f"--{name} is a switch: 0 (off) or 1 (on), found {value}")
        return float(value)


class LossParams:
    """The weights one run's objective reads, by name (``params.alpha``): the method's :class:`Weight` defaults
    with the user's values on top, built by :meth:`obliviate.losses.Method.params`.

    Reading a weight the method did not declare is an error, so a loss cannot silently use a value nobody set.
    """

    __slots__ = ("_values",)

    def __init__(self, **values: float | None) -> None:
        object.__setattr__(self, "_values", dict(values))

    def __getattr__(self, name: str) -> float:
        if name.startswith("__") or name == "_values":  # copy and pickle probe dunders before __init__ has run
            raise AttributeError(name)
        try:
            return self._values[name]
        except KeyError:
            raise AttributeError(
                f"loss weight {name!r} is not declared; this run has {sorted(self._values)}"
            ) from None

    def __setattr__(self, name: str, value: object) -> None:
        raise AttributeError("LossParams is immutable; use replace()")

    def __reduce__(self):
        """Pickled and copied by its values (``__setattr__`` refuses the slot-by-slot default)."""
        return (_loss_params, (self._values,))

    def __contains__(self, name: str) -> bool:
        return name in self._values

    def __eq__(self, other: object) -> bool:
        return isinstance(other, LossParams) and self._values == other._values

    def __hash__(self) -> int:
        return hash(tuple(sorted(self._values.items())))

    def __repr__(self) -> str:
        return f"LossParams({', '.join(f'{k}={v!r}' for k, v in self._values.items())})"

    def replace(self, **changes: float | None) -> LossParams:
        """A copy with ``changes``; every name must already be a weight of this run."""
        unknown = sorted(set(changes) - set(self._values))
        if unknown:
            raise AttributeError(f"loss weight(s) {unknown} are not declared; this run has {sorted(self._values)}")
        return LossParams(**{**self._values, **changes})

    def as_dict(self) -> dict[str, float | None]:
        return dict(self._values)


def _loss_params(values: dict[str, float | None]) -> LossParams:
    return LossParams(**values)


def token_logprobs(logits: torch.Tensor, labels: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Log-probability of each next token, and which positions count.

    Args:
        logits: ``[batch, seq_len, vocab]``.
        labels: ``[batch, seq_len]``, ``-100`` where a token is not scored.

    Returns:
        ``(logp, mask)``, both ``[batch, seq_len - 1]``: ``logp[b, t] = log p(labels[b, t+1] | prefix)``, and
        ``mask`` is 1.0 where ``labels[b, t+1] != -100``.
    """
    shifted_labels = labels[:, 1:]
    mask = shifted_labels.ne(IGNORE_INDEX)
    safe = shifted_labels.masked_fill(~mask, 0)
    logp = torch.log_softmax(logits[:, :-1].float(), dim=-1).gather(-1, safe.unsqueeze(-1)).squeeze(-1)
    return logp * mask, mask.float()


def sequence_logprob(logits: torch.Tensor, labels: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Summed answer log-probability per example and the number of answer tokens: both ``[batch]``."""
    logp, mask = token_logprobs(logits, labels)
    return logp.sum(-1), mask.sum(-1)


def answer_exact(logits: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    """``[batch]``: whether every scored next token of a row is the most likely one (and the row scores any), i.e.
    whether greedy decoding reproduces the row's answer word for word (teacher-forced exact match)."""
    shifted = labels[:, 1:]
    mask = shifted.ne(IGNORE_INDEX)
    wrong = logits[:, :-1].argmax(-1).ne(shifted) & mask
    return ~wrong.any(-1) & mask.any(-1)


def token_mean_nll(logp: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """Mean negative log-probability over the scored tokens of the whole batch (token-weighted), a scalar.

    Args:
        logp: ``[batch, seq_len - 1]``, as returned by :func:`token_logprobs` (0 where not scored).
        mask: ``[batch, seq_len - 1]``, 1.0 where scored; a batch with none gives 0, not a division by zero.
    """
    return -logp.sum() / mask.sum().clamp_min(1.0)


def mean_nll(logits: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    """``NLL(x)``: the mean answer-token negative log-likelihood over the whole batch (token-weighted), a scalar.

    This equals ``model(ids, labels=labels).loss`` of Hugging Face models.
    """
    return token_mean_nll(*token_logprobs(logits, labels))


def answer_nll(forward: Forward | None, method: str, split: str) -> torch.Tensor:
    """``NLL_θ`` of one split: the mean answer-token NLL (token-weighted over the batch), a scalar with gradient.

    Args:
        forward: the model's pass on the split; its ``logits`` are ``[batch, seq_len, vocab]``.
        method: the method's name, for the error message.
        split: ``"forget"`` or ``"retain"``, for the error message.

    Raises:
        ConfigError: the split or its logits are missing, i.e. the method was run without what it needs.
    """
    if forward is None:
        raise ConfigError(f"method {method!r} needs a {split} batch; none was given")
    if forward.logits is None:
        raise ConfigError(f"method {method!r} needs logits of the {split} batch; the forward pass returned none")
    return mean_nll(forward.logits, forward.labels)
