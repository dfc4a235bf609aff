"""RMU, representation misdirection for unlearning: Li et al. 2024, WMDP, arXiv:2403.03218.

``L = mean ‖h_θ^ℓ(F) − c·u‖² + α·mean ‖h_θ^ℓ(R) − h_ref^ℓ(R)‖²`` at one hidden layer ``ℓ``: forget activations
are pushed onto a fixed random direction ``u`` scaled by ``c`` (which scrambles what later layers read from
them), while retain activations are held at the frozen reference's. ``‖·‖²`` here is, as in the WMDP reference
code's ``mse_loss``, the squared L2 distance averaged over hidden units (an MSE), then averaged over real tokens
(``attention_mask == 1``); unlike that code, padding positions are left out. The usual recipe updates only a few
MLP layers at or below ``ℓ``; choosing them is the loop's job.
"""

from __future__ import annotations

import torch

from obliviate.errors import ConfigError
from obliviate.losses.common import Forward, LossInputs, LossOutput, LossParams, Needs, Weight, mean_nll

NEEDS = Needs(retain=True, reference_on=("retain",), hidden=True)
WEIGHTS = {
    "alpha": Weight(100.0, "weight of the retain term (the paper's)", ge=0, retain=True),
    "rmu_c": Weight(
        None, "steering coefficient c; unset: adaptive, --rmu_scale x the layer's mean activation norm", gt=0
    ),
}


def make_control_vector(hidden_size: int, c: float, seed: int) -> torch.Tensor:
    """The fixed steering vector ``c·u``, shape ``[hidden_size]``.

    As in the paper, ``u`` is drawn uniformly from ``[0, 1)^hidden_size`` and normalised to unit length; the draw
    goes through its own ``torch.Generator`` so the same seed gives the same vector on every rank and resume.
    """
    if hidden_size <= 0:
        raise ConfigError(f"RMU needs a positive hidden size, got {hidden_size}")
    generator = torch.Generator().manual_seed(seed)
    u = torch.rand(hidden_size, generator=generator)
    return u / u.norm() * c


def masked_mse(hidden: torch.Tensor, target: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
    """Squared L2 distance averaged over hidden units, then over real tokens: a scalar.

    Args:
        hidden: ``[batch, seq_len, hidden]``.
        target: ``[batch, seq_len, hidden]`` or ``[hidden]`` (broadcast to every position).
        attention_mask: ``[batch, seq_len]``, 1 on real tokens.
    """
    per_token = (hidden.float() - target.float()).pow(2).mean(-1)
    mask = attention_mask.to(per_token.dtype)
    return (per_token * mask).sum() / mask.sum().clamp_min(1.0)


def _hidden(forward: Forward | None, split: str) -> torch.Tensor:
    if forward is None or forward.hidden is None:
        raise ConfigError(f"method 'rmu' needs hidden states of the {split} batch; none were given")
    return forward.hidden


def loss(inputs: LossInputs, params: LossParams) -> LossOutput:
    """``rmu_forget + params.alpha·rmu_retain``; logs both, and forget/retain NLL when logits came along.

    ``inputs.control`` is ``c·u`` (see :func:`make_control_vector`), ``[hidden]``.
    """
    if inputs.control is None:
        raise ConfigError("method 'rmu' needs the control vector c·u; none was given")
    forget_hidden = _hidden(inputs.forget, "forget")
    retain_hidden = _hidden(inputs.retain, "retain")
    retain_ref_hidden = _hidden(inputs.retain_ref, "reference retain")
    if inputs.control.shape != forget_hidden.shape[-1:]:
        raise ConfigError(
            f"RMU control vector has shape {tuple(inputs.control.shape)}, expected ({forget_hidden.shape[-1]},)"
        )
    forget_term = masked_mse(forget_hidden, inputs.control.to(forget_hidden.device), inputs.forget.attention_mask)
    retain_term = masked_mse(retain_hidden, retain_ref_hidden.detach(), inputs.retain.attention_mask)
    forget_term = forget_term * inputs.share("forget", "positions")  # both terms: means over real tokens
    retain_term = retain_term * inputs.share("retain", "positions")
    metrics = {"rmu_forget": forget_term.detach(), "rmu_retain": retain_term.detach()}
    with torch.no_grad():  # only for the log: RMU itself never looks at logits
        for split, forward in (("forget", inputs.forget), ("retain", inputs.retain)):
            if forward.logits is not None:
                metrics[f"{split}_nll"] = mean_nll(forward.logits, forward.labels) * inputs.share(split, "tokens")
    return LossOutput(forget_term + params.alpha * retain_term, metrics)
