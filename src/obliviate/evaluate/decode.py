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
    from transformers import DynamicCache

    try:
        return DynamicCache(config=model.config)
    except TypeError:  # older signatures take no config
        return DynamicCache()


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
