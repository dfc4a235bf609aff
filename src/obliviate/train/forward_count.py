"""The tokens a run reads in forward passes that train nothing: the frozen reference's passes, the stop rule's checks
and its starting measurement, the range test's measurements, an epoch-end check's. ``tokens_seen`` counts what the
optimizer steps trained on; these passes are the rest of a run's arithmetic (``docs/METHODS.md``, *Cost*).

A forward pre-hook on the model (and on a separate reference copy) adds up the attention mask of every pass taken
with gradients off; the sum stays on the device. Counted over all processes, as ``tokens_seen`` is, without a
collective of its own: an optimizer step takes the count (:meth:`ForwardCounter.take`) into the one all-gather it
makes anyway, which sums the reference's passes over each process's own rows; what is left at an epoch end
(:meth:`ForwardCounter.flush`) is the stop rule's and the epoch-end check's passes since the last step, which every
process makes alike on the same weights, so it counts once per process. The evaluations a caller runs between
epochs are not the run's work and are not counted (:meth:`paused`), nor is a check whose tokens ``tokens_seen``
already holds (``--repair_exact``)."""

from __future__ import annotations

import contextlib
from collections.abc import Iterator

import torch

FORWARD_COST = 1 / 3
"""A forward pass's share of a training step's arithmetic per token: about 2N of the 6N FLOPs of forward and
backward through N parameters (Kaplan et al. 2020, "Scaling Laws for Neural Language Models")."""


def compute_tokens(trained: int, forward: int) -> float:
    """Trained tokens plus forward-only tokens at a forward pass's share of a training step's arithmetic."""
    return trained + FORWARD_COST * forward


class ForwardCounter:
    """Counts the tokens of gradient-free forward passes through the modules it is attached to."""

    def __init__(self, modules: list[torch.nn.Module]) -> None:
        self._local: torch.Tensor | int = 0
        self._paused = 0
        self._handles = []
        for module in dict.fromkeys(modules):  # a module named twice (LoRA's reference is the model) counts once
            self._handles.append(module.register_forward_pre_hook(self._count, with_kwargs=True))

    def _count(self, _module, args, kwargs) -> None:
        if self._paused or torch.is_grad_enabled():
            return
        ids = kwargs.get("input_ids", args[0] if args else None)
        inputs = ids if ids is not None else kwargs.get("inputs_embeds")
        if inputs is None:
            return
        width = inputs.shape[1]
        mask = kwargs.get("attention_mask")
        # a pass after a KV cache has a mask over the cached positions too: only its last `width` columns are read
        self._local = self._local + (mask[:, -width:].sum() if mask is not None else inputs.shape[0] * width)

    @contextlib.contextmanager
    def paused(self) -> Iterator[None]:
        """Passes inside are not counted (nestable)."""
        self._paused += 1
        try:
            yield
        finally:
            self._paused -= 1

    def take(self) -> torch.Tensor | int:
        """This process's count since the last take or flush (on the device, no sync), for a gather to sum."""
        local, self._local = self._local, 0
        return local

    def flush(self, processes: int) -> int:
        """What is left, counted once per process: call it only where every process has made the same passes since
        the last :meth:`take` (an epoch end: the stop rule's and the epoch-end check's, on the same weights)."""
        return int(self.take()) * processes

    def close(self) -> None:
        for handle in self._handles:
            handle.remove()
        self._handles = []


def uncounted(counter: ForwardCounter | None):
    """``counter.paused()``, or nothing where the run has no counter."""
    return counter.paused() if counter is not None else contextlib.nullcontext()
