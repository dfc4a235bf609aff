"""Records → token tensors: prompt masking, padding, and pairing forget with retain batches."""

from __future__ import annotations

from dataclasses import dataclass

import torch

from obliviate.data.records import PII_FIELDS, TEMPLATE_CODE, Record, answer_prefix
from obliviate.losses.common import IGNORE_INDEX


@dataclass
class TokenBatch:
    """A padded batch of tokenised records.

    Attributes:
        input_ids: ``[batch, seq_len]``.
        attention_mask: ``[batch, seq_len]``, 1 on real tokens, 0 on padding.
        labels: ``[batch, seq_len]``, the token id on answer tokens and ``-100`` on prompt and padding
            (on every real token for ``document`` records).
        spans: ``[batch, seq_len]``, on each token of a PII value the value's field code (:func:`field_code`), 0
            elsewhere; None unless some record is scored on its PII values only.
    """

    input_ids: torch.Tensor
    attention_mask: torch.Tensor
    labels: torch.Tensor
    spans: torch.Tensor | None = None

    def to(self, device: torch.device | str) -> TokenBatch:
        spans = self.spans.to(device) if self.spans is not None else None
        return TokenBatch(self.input_ids.to(device), self.attention_mask.to(device), self.labels.to(device), spans)

    @property
    def num_tokens(self) -> int:
        return int(self.attention_mask.sum())

    def __len__(self) -> int:
        return self.input_ids.shape[0]


@dataclass(frozen=True)
class Encoded:
    """One tokenised record: ``prompt_len`` leading ids are the prompt, the rest the answer (ending in eos).

    ``scored``, when set, says which ids are scored (``--forget_tokens pii``: only the tokens of PII values), each
    with its value's field code (:func:`field_code`; 0: not scored); otherwise every answer id is.
    """

    ids: list[int]
    prompt_len: int
    is_document: bool
    scored: tuple[int, ...] | None = None


def field_code(field: str | None) -> int:
    """A PII field as a small positive integer: its place in :data:`PII_FIELDS` plus one, and one more for any other
    field (an ID of unknown format)."""
    return PII_FIELDS.index(field) + 1 if field in PII_FIELDS else len(PII_FIELDS) + 1


def field_margins(gaps: dict[str, float]) -> list[float]:
    """Per field code (column ``code - 1``, as the objectives' per-field tensors have them), the never-seen people's
    mean gap ``NLL(true) - NLL(fake)`` of ``gaps``, clipped at 0 (never an aim past the fakes' own level); the
    fields outside :data:`PII_FIELDS` share one code and the mean of their gaps; 0 for a field with none."""
    columns: dict[int, list[float]] = {}
    for name, gap in gaps.items():
        columns.setdefault(field_code(name), []).append(gap)
    return [
        min(0.0, sum(columns[c]) / len(columns[c])) if c in columns else 0.0 for c in range(1, len(PII_FIELDS) + 2)
    ]


def fields_left_alone(inside: frozenset[str], tracked: frozenset[str]) -> frozenset[str]:
    """The fields whose values ``--field_stop`` may leave alone, of those ``inside`` their band: the fields outside
    :data:`PII_FIELDS` share one :func:`field_code`, so they are left alone only all together (every one of them
    among ``tracked`` inside), else none of them is."""
    others = tracked - frozenset(PII_FIELDS)
    return inside if others <= inside else inside - others


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
    separator = answer_prefix(record)
    spans = record.meta.get("score_spans")
    encoded = tokenizer(separator + record.output, add_special_tokens=False, return_offsets_mapping=spans is not None)
    answer = encoded["input_ids"] + eos
    answer = answer[: max(1, max_length - 1)]
    prompt = prompt[max(0, len(prompt) - (max_length - len(answer))) :]
    scored = None
    if spans is not None:  # character spans of ``record.output`` → the answer tokens that overlap one
        shift = len(separator)
        codes = [field_code(f) for f in record.meta.get("score_fields") or [None] * len(spans)]
        flags = [
            next((c for (start, end), c in zip(spans, codes) if a < end + shift and b > start + shift), 0)
            for a, b in encoded["offset_mapping"]
        ]
        if record.meta.get("score_template"):
            flags = [flag or TEMPLATE_CODE for flag in flags]
        flags = (flags + [0] * len(eos))[: len(answer)]  # eos is not part of any value
        scored = (0,) * len(prompt) + tuple(flags)
    return Encoded(prompt + answer, len(prompt), False, scored)


def collate(encoded: list[Encoded], pad_id: int, padding_side: str = "right") -> TokenBatch:
    """Pad a list of encoded records into a :class:`TokenBatch`.

    The attention mask marks real tokens by position, never by ``input_ids != pad_id``: when pad is eos, that
    would mask the real eos tokens.
    """
    width = max(len(e.ids) for e in encoded)
    input_ids = torch.full((len(encoded), width), pad_id, dtype=torch.long)
    attention_mask = torch.zeros((len(encoded), width), dtype=torch.long)
    labels = torch.full((len(encoded), width), IGNORE_INDEX, dtype=torch.long)
    coded = any(e.scored is not None for e in encoded)
    spans = torch.zeros((len(encoded), width), dtype=torch.long) if coded else None
    for row, enc in enumerate(encoded):
        n = len(enc.ids)
        start = 0 if padding_side == "right" else width - n
        ids = torch.tensor(enc.ids, dtype=torch.long)
        input_ids[row, start : start + n] = ids
        attention_mask[row, start : start + n] = 1
        first_scored = 0 if enc.is_document else enc.prompt_len
        labels[row, start + first_scored : start + n] = ids[first_scored:]
        if enc.scored is not None:
            codes = torch.tensor(enc.scored, dtype=torch.long)
            labels[row, start : start + n] = torch.where(codes > 0, ids, IGNORE_INDEX)
            spans[row, start : start + n] = codes
    return TokenBatch(input_ids, attention_mask, labels, spans)


def length_pieces(lengths: list[int], overhead: int = 64) -> list[list[int]]:
    """Cut one batch into pieces of similar length that cost the fewest padded tokens.

    Positions are sorted by length and cut where it pays: a piece costs ``size x longest + overhead`` (the overhead,
    in tokens, stands for the fixed cost of one more forward pass). Exact dynamic programming over the cut points.

    Returns:
        Lists of positions into ``lengths``; together they hold every position once.
    """
    order = sorted(range(len(lengths)), key=lambda i: lengths[i])
    sizes = [lengths[i] for i in order]
    cost = [0.0] + [float("inf")] * len(sizes)
    cut = [0] * (len(sizes) + 1)
    for end in range(1, len(sizes) + 1):
        for start in range(end):
            value = cost[start] + (end - start) * sizes[end - 1] + overhead
            if value < cost[end]:
                cost[end], cut[end] = value, start
    pieces, end = [], len(sizes)
    while end > 0:
        pieces.append(order[cut[end] : end])
        end = cut[end]
    return pieces[::-1]


def _sorted_cuts(lengths: list[int], most: int) -> list[tuple[float, list[list[int]]]]:
    """For ``k = 1 .. most``: the fewest padded tokens (``Σ size x longest``) of ``lengths`` cut into exactly ``k``
    length-sorted pieces, and those pieces (positions into ``lengths``). Exact dynamic programming."""
    order = sorted(range(len(lengths)), key=lambda i: lengths[i])
    sizes = [lengths[i] for i in order]
    n, inf = len(sizes), float("inf")
    cost = [[0.0] + [inf] * n]
    cuts: list[list[int]] = [[0] * (n + 1)]
    for k in range(1, most + 1):
        row, cut = [inf] * (n + 1), [0] * (n + 1)
        for end in range(k, n + 1):
            for start in range(k - 1, end):
                value = cost[k - 1][start] + (end - start) * sizes[end - 1]
                if value < row[end]:
                    row[end], cut[end] = value, start
        cost.append(row)
        cuts.append(cut)
    out = []
    for k in range(1, most + 1):
        pieces, end = [], n
        for level in range(k, 0, -1):
            start = cuts[level][end]
            pieces.append(order[start:end])
            end = start
        out.append((cost[k][n], pieces[::-1]))
    return out


def matched_pieces(
    forget_lengths: list[int], retain_lengths: list[int], overhead: int = 64
) -> list[tuple[list[int], list[int]]]:
    """Cut a forget batch and its retain batch into the same number ``k`` of length-sorted pieces, paired in order
    (shortest with shortest), at the fewest padded tokens plus ``2 x overhead`` per pair (two forward passes).

    Every piece holds at least one row of each split, so that each pass runs the whole objective on its rows; ``k``
    is chosen jointly for both splits (exact: the cheapest cut of each split into ``k`` pieces, for every ``k``).

    Returns:
        ``(forget positions, retain positions)`` per piece; together they hold every position of each split once.
    """
    most = min(len(forget_lengths), len(retain_lengths))
    if most <= 1:
        return [(list(range(len(forget_lengths))), list(range(len(retain_lengths))))]
    floor = sum(forget_lengths) + sum(retain_lengths)  # no cut pads below the real tokens
    best_k = 1
    forget_cuts, retain_cuts = _sorted_cuts(forget_lengths, most), _sorted_cuts(retain_lengths, most)
    best = forget_cuts[0][0] + retain_cuts[0][0] + 2 * overhead
    for k in range(2, most + 1):
        if floor + 2 * overhead * k >= best:
            break  # more pieces only add overhead from here on
        value = forget_cuts[k - 1][0] + retain_cuts[k - 1][0] + 2 * overhead * k
        if value < best:
            best, best_k = value, k
    return list(zip(forget_cuts[best_k - 1][1], retain_cuts[best_k - 1][1]))


def scored_tokens(batch: TokenBatch) -> int:
    """Tokens a next-token loss scores: labels other than ``-100`` after the one-position shift."""
    return int((batch.labels[:, 1:] != IGNORE_INDEX).sum())


UNITS = ("tokens", "sequences", "positions", "pairs")
"""What a loss term (or metric) of one split averages over, so that a batch run as pieces weights each piece by its
share of them (:attr:`obliviate.losses.Method.means`): ``tokens``, the scored tokens (:func:`scored_tokens`);
``sequences``, the rows; ``positions``, the real tokens (attention mask); ``pairs``, the (row, PII field) pairs
scored both in the split and in the same row of the paired batch (``LossInputs.paired``; the rows, where the batches
carry no field codes)."""


def unit_count(unit: str, batch: TokenBatch, paired: TokenBatch | None = None) -> int:
    """How many ``unit`` (one of :data:`UNITS`) ``batch`` holds; ``pairs`` reads ``paired`` as well."""
    if unit == "tokens":
        return scored_tokens(batch)
    if unit == "sequences":
        return len(batch)
    if unit == "positions":
        return batch.num_tokens
    if unit == "pairs":
        if paired is None:
            raise ValueError("the unit 'pairs' counts rows scored in a batch and in its paired batch; none was given")
        if batch.spans is not None and paired.spans is not None:
            return int(field_pairs(batch.spans, paired.spans).sum())
        scored = (paired.labels[:, 1:] != IGNORE_INDEX).any(-1).view(-1, len(batch)).any(0)
        return int(((batch.labels[:, 1:] != IGNORE_INDEX).any(-1) & scored).sum())
    raise ValueError(f"unknown unit {unit!r}; expected one of {', '.join(UNITS)}")


def field_pairs(spans: torch.Tensor, paired_spans: torch.Tensor) -> torch.Tensor:
    """``[batch, fields]``: whether row ``b`` holds field ``f`` (code ``f + 1``) among its scored next tokens in both
    batches, the (row, field) pairs a paired loss compares. ``paired_spans`` may hold several copies of the batch,
    one after the other (``--fakes_per_step``): a pair counts where any copy holds the field."""
    fields = len(PII_FIELDS) + 1
    present = [torch.stack([(s[:, 1:] == c).any(-1) for c in range(1, fields + 1)], -1) for s in (spans, paired_spans)]
    return present[0] & present[1].view(-1, *present[0].shape).any(0)


def _epoch_generator(seed: int, epoch: int, rank: int | None = None) -> torch.Generator:
    # A distinct, reproducible stream per (seed, epoch[, rank]); large odd multipliers keep streams apart.
    value = seed * 1_000_003 + epoch * 10_007 + (0 if rank is None else (rank + 1) * 7_919_111)
    return torch.Generator().manual_seed(value % (2**63))


def forget_order(
    num_examples: int,
    steps: int,
    step_size: int,
    seed: int,
    epoch: int,
    lengths: list[int] | None = None,
    group_size: int = 50,
) -> list[int]:
    """The epoch's forget order, the same on every rank: a seeded permutation, wrapped to fill ``steps`` steps.

    With ``lengths`` (``--group_by_length``), the permutation is cut into groups of ``group_size`` steps, each
    group is sorted by length so that every step holds examples of similar length, and the steps are shuffled
    again: the same examples are seen as often, with far less padding (the idea of transformers'
    ``group_by_length``).
    """
    generator = _epoch_generator(seed, epoch)
    perm = torch.randperm(num_examples, generator=generator).tolist()
    slots = steps * step_size
    order = (perm * (slots // num_examples + 1))[:slots]
    if lengths is None:
        return order
    # The epoch and its wrapped copies are grouped apart, so that an example and its copy rarely share a step.
    span = group_size * step_size
    parts = [order[start : start + num_examples] for start in range(0, slots, num_examples)]
    grouped = [
        i
        for part in parts
        for start in range(0, len(part), span)
        for i in sorted(part[start : start + span], key=lambda i: -lengths[i])
    ]
    chunks = [grouped[i : i + step_size] for i in range(0, slots, step_size)]
    shuffled = torch.randperm(len(chunks), generator=generator).tolist()
    return [i for c in shuffled for i in chunks[c]]


def micro_batches_for_rank(order: list[int], world_size: int, rank: int, micro_batch_size: int) -> list[list[int]]:
    """This rank's share of the epoch order (every ``world_size``-th slot), cut into micro-batches."""
    mine = order[rank::world_size]
    return [mine[i : i + micro_batch_size] for i in range(0, len(mine), micro_batch_size)]


def matched_retain_draws(
    forget_keys: list, retain_keys: list, micro: list[list[int]], seed: int, epoch: int, rank: int
) -> list[list[int]]:
    """Retain rows paired with each forget micro-batch, one per forget row, drawn among the retain rows of its key.

    A key says what a row asks (:func:`retain_match_key`: task, kind and PII field), so a forget SSN question is
    paired with some retain person's SSN question, and the retain term defends the very answers the forget term
    pushes on (the retain rows that resemble the forget rows matter most: Hwang et al. 2025, arXiv:2502.11441). A
    forget row whose key no retain row has draws from the whole retain set. Seeded by ``(seed, epoch, rank)``.
    """
    pools: dict = {}
    for j, key in enumerate(retain_keys):
        pools.setdefault(key, []).append(j)
    generator = _epoch_generator(seed, epoch, rank)
    out = []
    for batch in micro:
        draw = []
        for i in batch:
            pool = pools.get(forget_keys[i])
            pick = int(torch.randint(len(pool) if pool else len(retain_keys), (1,), generator=generator))
            draw.append(pool[pick] if pool else pick)
        out.append(draw)
    return out


def retain_match_key(record: Record) -> tuple:
    """What :func:`matched_retain_draws` pairs on: the record's task, its kind and the PII field it asks for or
    continues into (a question's field, ``meta["pii_field"]``); None for rows with no single field, such as LUME's
    sentence completions."""
    from obliviate.data.pii import pii_field

    return record.task, record.kind, pii_field(record) or record.meta.get("pii_field")


def retain_draws(
    num_retain: int,
    sizes: list[int],
    seed: int,
    epoch: int,
    rank: int,
    lengths: list[int] | None = None,
    forget_widths: list[int] | None = None,
) -> list[list[int]]:
    """Random retain indices paired with each forget micro-batch, one equal-size draw per batch.

    The stream depends on the rank, so that data-parallel ranks draw different retain samples (pairing every rank
    with the same retain rows is a known bug elsewhere). With ``lengths`` and ``forget_widths`` (length grouping),
    the epoch's draws are the same uniform sample, handed out sorted by length: the longest draws go to the
    micro-batches with the longest forget rows, so that retain batches are padded little too.
    """
    generator = _epoch_generator(seed, epoch, rank)
    draws = [torch.randint(num_retain, (size,), generator=generator).tolist() for size in sizes]
    if lengths is None or forget_widths is None:
        return draws
    pool = sorted((i for d in draws for i in d), key=lambda i: -lengths[i])
    ranked = sorted(range(len(sizes)), key=lambda b: -forget_widths[b])
    out: list[list[int]] = [[] for _ in sizes]
    start = 0
    for b in ranked:
        out[b] = pool[start : start + sizes[b]]
        start += sizes[b]
    return out
