"""Greedy decoding that drops finished rows: the same tokens as ``model.generate(do_sample=False)``, less work.

``generate`` keeps every row of a batch in every step until the longest row ends: a QA row that emitted eos after
8 tokens is carried, as padding, through the 250 steps of a completion row beside it. This loop runs the same
computation as the library's greedy search (left-padded prefill with position ids from the attention mask, then
one token per step on the KV cache, argmax of the last position's fp32 logits, stop at eos) but removes a row from
the batch, and its keys and values from the cache, as soon as it has emitted eos. Each remaining row attends to
exactly the keys it attended to before, so its tokens are those ``generate`` would give; only the batch shape of
the later steps changes (``docs/METRICS.md``, "Generation").

Models whose generation config asks for more than plain greedy search (a repetition penalty, banned n-grams, a
minimum length, ...) or whose cache cannot drop rows go through ``model.generate`` instead, unchanged.
"""

from __future__ import annotations

import functools
import inspect

import torch

_GREEDY_DEFAULTS = {
    "repetition_penalty": (None, 1.0),
    "no_repeat_ngram_size": (None, 0),
    "min_length": (None, 0),
    "min_new_tokens": (None, 0),
    "bad_words_ids": (None,),
    "suppress_tokens": (None,),
    "begin_suppress_tokens": (None,),
    "forced_bos_token_id": (None,),
    "forced_eos_token_id": (None,),
    "sequence_bias": (None,),
    "encoder_repetition_penalty": (None, 1.0),
    "exponential_decay_length_penalty": (None,),
}
"""Generation-config fields that change greedy search, and the values at which they do not."""


def plain_greedy(model) -> bool:
    """Whether ``model.generate(do_sample=False)`` is plain argmax decoding that this loop reproduces."""
    config = getattr(model, "generation_config", None)
    if config is not None:
        for name, neutral in _GREEDY_DEFAULTS.items():
            if getattr(config, name, None) not in neutral:
                return False
    if getattr(model.config, "is_encoder_decoder", False):
        return False
    return _cache_argument(model) is not None and "position_ids" in inspect.signature(model.forward).parameters


def _cache_argument(model) -> str | None:
    """The forward argument that takes the KV cache: ``cache`` in recent transformers, ``past_key_values`` before."""
    parameters = inspect.signature(model.forward).parameters
    return next((name for name in ("cache", "past_key_values") if name in parameters), None)


def _new_cache(model):
    """A dynamic cache whose full-attention layers grow in place (:func:`_growing_layer`), where this transformers
    has per-layer caches; sliding-window and other layers are the library's own."""
    from transformers import DynamicCache

    try:
        cache = DynamicCache(config=model.config)
    except TypeError:  # older signatures take no config
        return DynamicCache()
    growing = _growing_layer()
    if growing is not None and isinstance(getattr(cache, "layers", None), list):
        cache.layers = [growing() if type(layer) is growing.__base__ else layer for layer in cache.layers]
    return cache


@functools.cache
def _growing_layer():
    """``DynamicLayer`` with its keys and values in a buffer that doubles when full, or None where transformers has
    no such layer class.

    The library's layer appends each step's keys and values with ``torch.cat``, which copies the whole cache: on
    CPU it took 39 % of the time of 40 greedy steps, prefill included (32 rows, 400-token prompts, a 4-layer
    model). Here a step writes one
    position; ``keys`` and ``values`` are views of the filled part, so attention reads exactly the tensors it read
    before. Measured side by side on 32 rows of 300-token prompts, 120 greedy tokens: 7.3 s against 8.9 s for three
    rounds, the same tokens.
    """
    try:
        from transformers.cache_utils import DynamicLayer
    except ImportError:
        return None

    class GrowingLayer(DynamicLayer):
        def lazy_initialization(self, key_states, value_states, *args, **kwargs):
            super().lazy_initialization(key_states, value_states, *args, **kwargs)
            self._key_buffer = self._value_buffer = None
            self._filled = 0

        def _views(self) -> None:
            self.keys = self._key_buffer[..., : self._filled, :]
            self.values = self._value_buffer[..., : self._filled, :]

        def update(self, key_states, value_states, *args, **kwargs):
            if not self.is_initialized:
                self.lazy_initialization(key_states, value_states)
            needed = self._filled + key_states.shape[-2]
            if self._key_buffer is None or needed > self._key_buffer.shape[-2]:
                old = 0 if self._key_buffer is None else self._key_buffer.shape[-2]
                capacity = max(needed, 2 * old, 64)
                keys = key_states.new_empty((*key_states.shape[:-2], capacity, key_states.shape[-1]))
                values = value_states.new_empty((*value_states.shape[:-2], capacity, value_states.shape[-1]))
                if self._filled:
                    keys[..., : self._filled, :] = self.keys
                    values[..., : self._filled, :] = self.values
                self._key_buffer, self._value_buffer = keys, values
            self._key_buffer[..., self._filled : needed, :] = key_states
            self._value_buffer[..., self._filled : needed, :] = value_states
            self._filled = needed
            self._views()
            return self.keys, self.values

        def batch_select_indices(self, indices) -> None:
            if self.is_initialized and self._filled:
                self._key_buffer = self._key_buffer[indices]
                self._value_buffer = self._value_buffer[indices]
                self._views()

        def crop(self, tokens_to_remove: int) -> None:
            if tokens_to_remove > 0:
                raise ValueError(f"crop takes a negative number of tokens to remove, found {tokens_to_remove}")
            if tokens_to_remove < 0 and self.is_initialized:
                self._filled = max(0, self._filled + tokens_to_remove)
                self._views()

        def batch_repeat_interleave(self, repeats: int) -> None:
            if self.is_initialized and self._filled:
                self._key_buffer = self._key_buffer.repeat_interleave(repeats, dim=0)
                self._value_buffer = self._value_buffer.repeat_interleave(repeats, dim=0)
                self._views()

    return GrowingLayer


def _forward(model, cache, input_ids, attention_mask, keep_logits: bool, cache_argument: str):
    """One forward step; ``logits_to_keep=1`` where the model takes it, as ``generate`` asks for it."""
    position_ids = attention_mask.long().cumsum(-1) - 1
    position_ids.masked_fill_(attention_mask == 0, 1)
    position_ids = position_ids[:, -input_ids.shape[1] :]
    extra = {"logits_to_keep": 1} if keep_logits else {}
    extra[cache_argument] = cache
    out = model(input_ids=input_ids, attention_mask=attention_mask, position_ids=position_ids, use_cache=True, **extra)
    return out.logits[:, -1].to(dtype=torch.float32)


@torch.no_grad()
def greedy_compacting(
    model, input_ids: torch.Tensor, attention_mask: torch.Tensor, *, max_new_tokens: int, eos_token_id: int | None
) -> list[list[int]]:
    """Greedy continuations of a left-padded batch, each row dropped from the batch at its eos.

    Returns:
        per row, the generated ids (its eos included when it emitted one), as ``generate`` returns them before the
        padding it adds to rows that finished early.
    """
    cache = _new_cache(model)
    keep_logits = "logits_to_keep" in inspect.signature(model.forward).parameters
    forward = functools.partial(_forward, model, cache, keep_logits=keep_logits, cache_argument=_cache_argument(model))
    alive = torch.arange(input_ids.shape[0], device=input_ids.device)
    generated: list[list[int]] = [[] for _ in range(input_ids.shape[0])]
    logits = forward(input_ids, attention_mask)
    for step in range(max_new_tokens):
        next_tokens = torch.argmax(logits, dim=-1)
        for row, token in zip(alive.tolist(), next_tokens.tolist()):
            generated[row].append(token)
        if step + 1 == max_new_tokens:
            break
        running = next_tokens.ne(-1 if eos_token_id is None else eos_token_id)
        if not bool(running.any()):
            break
        if not bool(running.all()):
            index = running.nonzero().squeeze(-1)
            cache.batch_select_indices(index)
            alive, next_tokens, attention_mask = alive[index], next_tokens[index], attention_mask[index]
        attention_mask = torch.cat([attention_mask, attention_mask.new_ones((attention_mask.shape[0], 1))], dim=-1)
        logits = forward(next_tokens[:, None], attention_mask)
    return generated
