"""Shared pieces of every objective: the inputs a loss receives, the result it returns, answer-token log-probs."""

from __future__ import annotations

from dataclasses import dataclass, field

import torch

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
    """

    logits: torch.Tensor | None
    labels: torch.Tensor
    attention_mask: torch.Tensor
    hidden: torch.Tensor | None = None


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
    forget_ref_logprob: torch.Tensor | None = None  # [batch]: log π_ref(y|x) per forget row, computed before training
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
        reference_on: the splits on which the frozen reference is run: ``()``, ``("forget",)``, ``("retain",)``.
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
class LossParams:
    """The weights every objective may use. Each objective reads only its own.

    Attributes:
        alpha: weight of the retain term (GA+GD, NPO, SimNPO, RMU).
        gamma: weight of the forget term (GA+GD).
        beta: inverse temperature of NPO (0.1) or SimNPO (4.5).
        delta: SimNPO reward margin.
        kl_weight: weight of the KL term of GA+KL.
        rmu_c: RMU steering coefficient c.
    """

    alpha: float = 1.0
    gamma: float = 1.0
    beta: float = 0.1
    delta: float = 0.0
    kl_weight: float = 1.0
    rmu_c: float = 6.5


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
