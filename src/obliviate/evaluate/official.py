"""``evaluate --official``: the SemEval-2025 Task 4 organisers' recipe (``docs/METRICS.md``, "Official mode").

The organisers' ``evaluate_generations.py`` differs from obliviate's default evaluation in two places that move
scores on uncertain models:

* **dtype.** It loads the weights in bfloat16 (``torch_dtype=torch.bfloat16``) whatever the device; obliviate's
  default is fp32 on a CPU. bf16 logits round differently, so near-tie greedy choices can flip.
* **NLL tokens.** It tokenises ``input + output`` glued into one string, with the tokenizer's own special tokens
  and no eos appended, and masks the first ``len(tokenizer(input))`` positions; obliviate tokenises prompt and
  answer apart, with the separating space the model was trained on, and scores the eos.

Generation starts from ``tokenizer(input)`` exactly as their loop does (special tokens included, nothing removed),
greedy, 256 new tokens, eos as padding. Scoring (ROUGE-L recall by id suffix ``sc``, exact match for ``qa``, per
task means, forget terms inverted, harmonic mean) is already the official one (:mod:`obliviate.evaluate.semeval`).
Nothing is truncated: their script truncates nothing either.
"""

from __future__ import annotations

import torch

from obliviate.data.batching import Encoded
from obliviate.data.records import Record

DTYPE = torch.bfloat16
"""The dtype their script loads the weights in."""
MAX_NEW_TOKENS = 256
"""Their generation length."""


def prompt_ids(tokenizer, prompt: str) -> list[int]:
    """``tokenizer(prompt).input_ids``, as their loop encodes the prompt it generates from."""
    return list(tokenizer(prompt)["input_ids"])


def encode(tokenizer, record: Record) -> Encoded:
    """One row as their NLL pass sees it: ``tokenizer(input + output)`` with ``len(tokenizer(input))`` positions
    masked; a document (MIA sets) is ``tokenizer(document)`` with every position scored."""
    if record.kind == "document" or not record.output:
        return Encoded(prompt_ids(tokenizer, record.input), 0, True)
    combined = list(tokenizer(record.input + record.output)["input_ids"])
    return Encoded(combined, min(len(prompt_ids(tokenizer, record.input)), len(combined)), False)


def check_model(model) -> None:
    """Official mode scores a bfloat16 model; anything else would be the default mode under another name."""
    from obliviate.errors import ModelError

    dtype = next(model.parameters()).dtype
    if dtype != DTYPE:
        raise ModelError(
            f"--official evaluates the model in bfloat16 as the organisers' script loads it; this one is {dtype} "
            "(load it with dtype=torch.bfloat16)"
        )
