"""Records → token tensors: prompt masking, padding, and pairing forget with retain batches."""

from __future__ import annotations

from dataclasses import dataclass

import torch

from obliviate.data.records import Record, answer_prefix
from obliviate.losses.common import IGNORE_INDEX


@dataclass
class TokenBatch:
    """A padded batch of tokenised records.

    Attributes:
        input_ids: ``[batch, seq_len]``.
        attention_mask: ``[batch, seq_len]``, 1 on real tokens, 0 on padding.
        labels: ``[batch, seq_len]``, the token id on answer tokens and ``-100`` on prompt and padding
            (on every real token for ``document`` records).
    """

    input_ids: torch.Tensor
    attention_mask: torch.Tensor
    labels: torch.Tensor

    def to(self, device: torch.device | str) -> TokenBatch:
        return TokenBatch(self.input_ids.to(device), self.attention_mask.to(device), self.labels.to(device))

    @property
    def num_tokens(self) -> int:
        return int(self.attention_mask.sum())

    def __len__(self) -> int:
        return self.input_ids.shape[0]


@dataclass
class UnlearnBatch:
    """A forget batch and, for methods that need one, an equal-size retain batch drawn at random."""

    forget: TokenBatch
    retain: TokenBatch | None = None


@dataclass(frozen=True)
class Encoded:
    """One tokenised record: ``prompt_len`` leading ids are the prompt, the rest the answer (ending in eos)."""

    ids: list[int]
    prompt_len: int
    is_document: bool


def encode_prompt(tokenizer, prompt: str) -> list[int]:
    """Prompt ids exactly as generation sees them: the tokenizer's own special tokens (e.g. BOS), no eos."""
    ids = tokenizer(prompt, add_special_tokens=True)["input_ids"]
    if ids and tokenizer.eos_token_id is not None and ids[-1] == tokenizer.eos_token_id and len(ids) > 1:
        ids = ids[:-1]
    return ids


def encode_record(tokenizer, record: Record, max_length: int) -> Encoded:
    """Tokenise prompt and answer separately so the prompt ids equal those used for generation.

    The answer is the separator, the output and eos. Documents are one text scored on every token. Over-long
    examples lose prompt tokens from the left first, then answer tokens from the right.
    """
    eos = [tokenizer.eos_token_id] if tokenizer.eos_token_id is not None else []
    if record.kind == "document" or not record.output:
        ids = encode_prompt(tokenizer, record.input) + eos
        return Encoded(ids[:max_length], 0, True)
    prompt = encode_prompt(tokenizer, record.input)
    answer = tokenizer(answer_prefix(record) + record.output, add_special_tokens=False)["input_ids"] + eos
    answer = answer[: max(1, max_length - 1)]
    prompt = prompt[max(0, len(prompt) - (max_length - len(answer))) :]
    return Encoded(prompt + answer, len(prompt), False)


def collate(encoded: list[Encoded], pad_id: int, padding_side: str = "right") -> TokenBatch:
    """Pad a list of encoded records into a :class:`TokenBatch`.

    The attention mask marks real tokens by position, never by ``input_ids != pad_id``: when pad is eos, that
    would mask the real eos tokens.
    """
    width = max(len(e.ids) for e in encoded)
    input_ids = torch.full((len(encoded), width), pad_id, dtype=torch.long)
    attention_mask = torch.zeros((len(encoded), width), dtype=torch.long)
    labels = torch.full((len(encoded), width), IGNORE_INDEX, dtype=torch.long)
    for row, enc in enumerate(encoded):
        n = len(enc.ids)
        start = 0 if padding_side == "right" else width - n
        ids = torch.tensor(enc.ids, dtype=torch.long)
        input_ids[row, start : start + n] = ids
        attention_mask[row, start : start + n] = 1
        first_scored = 0 if enc.is_document else enc.prompt_len
        labels[row, start + first_scored : start + n] = ids[first_scored:]
    return TokenBatch(input_ids, attention_mask, labels)


def _epoch_generator(seed: int, epoch: int, rank: int | None = None) -> torch.Generator:
    # A distinct, reproducible stream per (seed, epoch[, rank]); large odd multipliers keep streams apart.
    value = seed * 1_000_003 + epoch * 10_007 + (0 if rank is None else (rank + 1) * 7_919_111)
    return torch.Generator().manual_seed(value % (2**63))


def forget_order(num_examples: int, steps: int, step_size: int, seed: int, epoch: int) -> list[int]:
    """The epoch's forget order, the same on every rank: a seeded permutation, wrapped to fill ``steps`` steps."""
    perm = torch.randperm(num_examples, generator=_epoch_generator(seed, epoch)).tolist()
    slots = steps * step_size
    return (perm * (slots // num_examples + 1))[:slots]


def micro_batches_for_rank(order: list[int], world_size: int, rank: int, micro_batch_size: int) -> list[list[int]]:
    """This rank's share of the epoch order (every ``world_size``-th slot), cut into micro-batches."""
    mine = order[rank::world_size]
    return [mine[i : i + micro_batch_size] for i in range(0, len(mine), micro_batch_size)]


def retain_draws(num_retain: int, sizes: list[int], seed: int, epoch: int, rank: int) -> list[list[int]]:
    """Random retain indices paired with each forget micro-batch, one equal-size draw per batch.

    The stream depends on the rank, so that data-parallel ranks draw different retain samples (pairing every rank
    with the same retain rows is a known bug elsewhere).
    """
    generator = _epoch_generator(seed, epoch, rank)
    return [torch.randint(num_retain, (size,), generator=generator).tolist() for size in sizes]
