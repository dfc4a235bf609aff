"""The quantisation attack: round-to-nearest (RTN) weight quantisation of a copy of the model.

Zhang et al. (ICLR 2025, "Catastrophic failure of LLM unlearning via quantization") found that quantising an
unlearned model to 4 bits brought back much of what unlearning removed: unlearning with a small learning rate moves
the weights by less than one quantisation step, so rounding snaps them back towards the original model's grid.

The scheme is the plain one their RTN baseline and most int8/int4 kernels use: symmetric, per output channel and
group-wise along the input dimension (groups of :data:`GROUP_SIZE` input weights share one scale, ``max |w| / qmax``
with ``qmax = 2^(bits-1) - 1``; a row shorter than a group is one group, and a row that does not divide evenly ends
in one shorter group). Each weight becomes ``round(w / scale) · scale``, back in the weight's own dtype, so the rest
of the evaluation runs unchanged on the attacked copy. Every ``nn.Linear`` inside the model is quantised except the
output head (``get_output_embeddings``), which stays in full precision as in GPTQ, AWQ and bitsandbytes' defaults
(and which shares its weight with the input embeddings in tied models).

A 4-bit NF4 load through ``bitsandbytes`` is not implemented: it needs CUDA, which no test here can run.
"""

from __future__ import annotations

import copy

import torch
from torch import nn

from obliviate.config import QUANTIZE_BITS

GROUP_SIZE = 128
BITS = QUANTIZE_BITS


def quantize_tensor(weight: torch.Tensor, bits: int, group_size: int = GROUP_SIZE) -> torch.Tensor:
    """``weight`` ([out, in]) rounded to ``bits``-bit symmetric integers per output row and group of ``group_size``
    input columns, and dequantised back to its dtype.

    Every element moves by at most half its group's scale (``max |w| of the group / (2^(bits-1) - 1) / 2``); an
    all-zero group stays zero.
    """
    if weight.dim() != 2:
        raise ValueError(f"expected a 2-d weight, found shape {tuple(weight.shape)}")
    if bits < 2:
        raise ValueError(f"expected at least 2 bits, found {bits}")
    rows, cols = weight.shape
    size = min(group_size, cols)
    groups = -(-cols // size)
    w = weight.detach().to(torch.float32)
    padded = torch.zeros(rows, groups * size, dtype=torch.float32, device=w.device)
    padded[:, :cols] = w  # zero padding neither raises a group's max nor survives the cut below
    grouped = padded.view(rows, groups, size)
    qmax = 2 ** (bits - 1) - 1
    scale = grouped.abs().amax(dim=-1, keepdim=True) / qmax
    safe = torch.where(scale > 0, scale, torch.ones_like(scale))
    codes = torch.clamp(torch.round(grouped / safe), -qmax, qmax)
    restored = (codes * safe).view(rows, groups * size)[:, :cols]
    return restored.to(weight.dtype)


def quantized_modules(model: nn.Module) -> list[tuple[str, nn.Linear]]:
    """The ``nn.Linear`` layers the attack quantises: all but the output head (kept in full precision)."""
    head = model.get_output_embeddings() if hasattr(model, "get_output_embeddings") else None
    return [(name, m) for name, m in model.named_modules() if isinstance(m, nn.Linear) and m is not head]


@torch.no_grad()
def quantize_model(model: nn.Module, bits: int, group_size: int = GROUP_SIZE) -> tuple[nn.Module, dict[str, float]]:
    """A deep copy of ``model`` with every quantised layer's weight rounded (:func:`quantize_tensor`).

    ``model`` itself is not touched. Returns the copy and how far the weights moved: ``layers`` quantised,
    ``relative_change`` (``‖W' − W‖ / ‖W‖`` over all quantised weights) and ``max_abs_change``.
    """
    attacked = copy.deepcopy(model)
    change = norm = 0.0
    largest = 0.0
    layers = quantized_modules(attacked)
    for _, module in layers:
        before = module.weight.detach()
        after = quantize_tensor(before, bits, group_size)
        diff = (after.float() - before.float()).flatten()
        change += float(diff.pow(2).sum())
        norm += float(before.float().pow(2).sum())
        largest = max(largest, float(diff.abs().max())) if diff.numel() else largest
        module.weight.copy_(after)
    relative = (change**0.5) / (norm**0.5) if norm > 0 else 0.0
    return attacked, {"layers": len(layers), "relative_change": relative, "max_abs_change": largest}
