"""The two model passes every metric shares: one batched forward pass and batched generation.

The forward pass returns, per example, the log-prob of every token, plus the mean and standard deviation of the
model's own next-token log-prob distribution at each position (Min-K%++ needs them). Answer NLL, perplexity,
forget quality and every membership-inference score are pure functions of these values; nothing is recomputed.
Generation is greedy (optionally k samples at temperature 1), batched with left padding and the KV cache; rows are
grouped by their expected answer length, and each greedy row leaves its batch at its own eos
(:mod:`~obliviate.evaluate.decode`), so a short answer never waits for a long one.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch
from accelerate.utils import gather_object
from tqdm.auto import tqdm

from obliviate.data.batching import collate, encode_prompt, encode_record
from obliviate.data.records import Record
from obliviate.evaluate import official as official_recipe
from obliviate.evaluate.decode import continuous_supported, greedy_compacting, greedy_continuous, plain_greedy
from obliviate.losses.common import IGNORE_INDEX
from obliviate.models.load import check_positions


@dataclass
class TokenScores:
    """One example's forward pass.

    Attributes:
        token_logp: ``[n_tokens - 1]`` log p of each next token of the full text (prompt and answer).
        mu: ``[n_tokens - 1]`` Σ_v p_v log p_v at each position.
        sigma: ``[n_tokens - 1]`` the standard deviation of log p_v under p at each position.
        answer_mask: ``[n_tokens - 1]`` True where the predicted token is an answer token (eos included).
        text_positions: how many leading positions belong to the text itself (the final appended eos excluded);
            membership inference scores these, as the official scorer scores the tokenised document.
    """

    token_logp: np.ndarray
    mu: np.ndarray
    sigma: np.ndarray
    answer_mask: np.ndarray
    text_positions: int

    @property
    def answer_nll_sum(self) -> float:
        return float(-self.token_logp[self.answer_mask].sum())

    @property
    def answer_tokens(self) -> int:
        return int(self.answer_mask.sum())

    @property
    def answer_nll(self) -> float:
        return self.answer_nll_sum / max(self.answer_tokens, 1)

    @property
    def text_logp(self) -> np.ndarray:
        return self.token_logp[: self.text_positions]


BUCKET_BATCHES = 8
"""Rows bucketed by expected answer length are cut into windows of this many batches, and each window is ordered by
prompt length: a batch then pads its prompts little and still holds answers of similar length (``_length_order``)."""


def _length_order(lengths: list[int], expected: list[int] | None = None, batch_size: int = 1) -> list[int]:
    """Longest first (little padding), and under several processes only this rank's share of the rows.

    With ``expected`` (answer lengths), rows are first ordered by it, and then every window of ``BUCKET_BATCHES``
    batches by prompt length: a batch holds answers that end at about the same step (rows leave at eos, so the
    rest stay busy), and prompts of about one length (the prefill and every step's attention pad little). On
    500 LUME forget prompts of a 1,004-row sample, ordering by answer length alone padded the prefill to twice the
    prompt tokens (66,200 for 33,680); these windows pad it to 39,860.
    """
    if expected is None:
        order = sorted(range(len(lengths)), key=lambda i: -lengths[i])
    else:
        by_answer = sorted(range(len(lengths)), key=lambda i: (-expected[i], -lengths[i]))
        window = BUCKET_BATCHES * max(1, batch_size)
        order = []
        for start in range(0, len(by_answer), window):
            order += sorted(by_answer[start : start + window], key=lambda i: -lengths[i])
    state = _state()
    return order[state.process_index :: state.num_processes] if state.num_processes > 1 else order


def _batches(order: list[int], lengths: list[int], batch_size: int, same_length: bool) -> list[list[int]]:
    """``order`` cut into batches of ``batch_size``; with ``same_length``, a batch never mixes two lengths.

    Official mode batches only rows of one length: padding changes bfloat16 logits enough to flip greedy choices
    (with left padding, about 1 generation in 20 on a micro model differed from batch-1 ones; with equal lengths,
    none), and the organisers' loop pads nothing.
    """
    if not same_length:
        return [order[start : start + batch_size] for start in range(0, len(order), batch_size)]
    by_length: dict[int, list[int]] = {}
    for index in order:
        by_length.setdefault(lengths[index], []).append(index)
    return [rows[i : i + batch_size] for rows in by_length.values() for i in range(0, len(rows), batch_size)]


def _state():
    """The launch's process state as the training loop sees it (gloo joined under a CPU ``torchrun`` too)."""
    from obliviate.distributed import process_state

    return process_state()


def _gather(results: list) -> list:
    """Under ``accelerate launch`` every rank computed its share; gather all rows, in input order, on every rank."""
    state = _state()
    if state.num_processes == 1:
        return results
    mine = [(i, value) for i, value in enumerate(results) if value is not None]
    merged = list(results)
    for index, value in gather_object(mine):
        merged[index] = value
    return merged


@torch.no_grad()
def forward_pass(
    model,
    tokenizer,
    records: list[Record],
    *,
    batch_size: int = 32,
    max_length: int = 512,
    desc: str = "forward",
    show_progress: bool = True,
    distribution: bool = True,
    official: bool = False,
) -> list[TokenScores]:
    """One batched forward pass over ``records`` (longest first, to pad little); results in input order.

    ``distribution=False`` skips the per-position mean and spread of log p over the vocabulary (Min-K%++ only),
    leaving ``mu`` and ``sigma`` zero, for splits that no membership attack reads. ``official=True`` scores the
    organisers' tokens instead (:func:`obliviate.evaluate.official.encode`: prompt and answer glued, no eos).
    """
    model.eval()
    device = next(model.parameters()).device
    if official:
        encoded = [official_recipe.encode(tokenizer, r) for r in records]
    else:
        encoded = [encode_record(tokenizer, r, max_length) for r in records]
    lengths = [len(e.ids) for e in encoded]
    if lengths:
        check_positions(model, max(lengths), "scored rows (prompt and answer, at most --max_length tokens)")
    batches = _batches(_length_order(lengths), lengths, batch_size, same_length=official)
    results: list[TokenScores | None] = [None] * len(records)
    for rows in tqdm(batches, desc=desc, disable=not show_progress, leave=False):
        batch = collate([encoded[i] for i in rows], tokenizer.pad_token_id).to(device)
        logits = model(input_ids=batch.input_ids, attention_mask=batch.attention_mask, use_cache=False).logits
        for row, index in enumerate(rows):
            n = len(encoded[index].ids)
            results[index] = _token_scores(
                logits[row, :n], batch.input_ids[row, :n], encoded[index], tokenizer, distribution
            )
    return _gather(results)  # type: ignore[return-value]


@torch.no_grad()
def forward_and_generate(
    model,
    tokenizer,
    records: list[Record],
    *,
    batch_size: int = 32,
    max_length: int = 512,
    max_new_tokens: int = 256,
    distribution: bool = True,
    desc: str = "forward and generate",
    show_progress: bool = True,
) -> tuple[list[TokenScores], dict[str, str]]:
    """:func:`forward_pass` of ``records`` and the greedy continuation of each distinct completion or QA input
    (:func:`generate`), the generation's prefill taken from the forward pass.

    The forward pass over a row's prompt and reference answer computes, on the prompt's positions, exactly the keys
    and values that generation's prefill computes again. Here rows go through :func:`greedy_continuous` in
    generation's order; each refill runs the forward pass over the new rows, laid out with their prompts left-padded
    to one boundary and their answers right-padded after it (position ids from the attention mask), scores them as
    :func:`forward_pass` does, and hands the prompt part of the cache, and the logits at each prompt's last position,
    to the generation. A row whose scored prompt is not the generation prompt (cut by ``max_length``) or a repeated
    input is scored by :func:`forward_pass` and not generated here. Needs :func:`continuous_supported`.

    Returns:
        ``(token_scores, greedy)``: the scores in input order, and each generated input's decoded continuation.
    """
    from obliviate.evaluate import decode

    model.eval()
    device = next(model.parameters()).device
    encoded = [encode_record(tokenizer, r, max_length) for r in records]
    owner: dict[str, int | None] = {}
    for index, (record, enc) in enumerate(zip(records, encoded)):
        if record.kind in ("completion", "qa") and record.input not in owner:
            prompt = encode_prompt(tokenizer, record.input)[-max_length:] or [tokenizer.eos_token_id]
            owner[record.input] = index if not enc.is_document and enc.ids[: enc.prompt_len] == prompt else None
    fused = [index for index in owner.values() if index is not None]
    if fused:
        longest = max(
            max(len(encoded[i].ids) for i in fused), max(encoded[i].prompt_len for i in fused) + max_new_tokens
        )
        check_positions(model, longest, "scored rows, or prompts plus --max_new_tokens")
    chosen = set(fused)
    results: list[TokenScores | None] = [None] * len(records)
    rest = [i for i in range(len(records)) if i not in chosen]
    if rest:
        scored = forward_pass(model, tokenizer, [records[i] for i in rest], batch_size=batch_size,
                              max_length=max_length, desc=desc, show_progress=show_progress,
                              distribution=distribution)  # fmt: skip
        for index, scores in zip(rest, scored):
            results[index] = scores
    answers = [len(encoded[i].ids) - encoded[i].prompt_len for i in fused]
    order = [fused[k] for k in _length_order([encoded[i].prompt_len for i in fused], answers, batch_size)]

    def start(taken: list[int]):
        rows = [order[t] for t in taken]
        boundary = max(encoded[i].prompt_len for i in rows)
        width = boundary + max(len(encoded[i].ids) - encoded[i].prompt_len for i in rows)
        input_ids = torch.full((len(rows), width), tokenizer.pad_token_id, dtype=torch.long)
        attention_mask = torch.zeros((len(rows), width), dtype=torch.long)
        for row, index in enumerate(rows):
            enc = encoded[index]
            first = boundary - enc.prompt_len
            input_ids[row, first : first + len(enc.ids)] = torch.tensor(enc.ids, dtype=torch.long)
            attention_mask[row, first : first + len(enc.ids)] = 1
        input_ids, attention_mask = input_ids.to(device), attention_mask.to(device)
        cache = decode._new_cache(model)
        logits = decode.forward_with_cache(model, cache, input_ids, attention_mask)
        for row, index in enumerate(rows):
            enc = encoded[index]
            first = boundary - enc.prompt_len
            span = slice(first, first + len(enc.ids))
            results[index] = _token_scores(logits[row, span], input_ids[row, span], enc, tokenizer, distribution)
        decode.keep_first(cache, boundary)
        return cache, attention_mask[:, :boundary], logits[:, boundary - 1].to(dtype=torch.float32)

    with tqdm(total=len(order), desc=desc, disable=not show_progress, leave=False) as bar:
        outputs = greedy_continuous(model, [encoded[i].ids[: encoded[i].prompt_len] for i in order],
                                    batch_size=batch_size, max_new_tokens=max_new_tokens,
                                    eos_token_id=tokenizer.eos_token_id, pad_token_id=tokenizer.pad_token_id,
                                    progress=bar, start=start)  # fmt: skip
    texts: list[str | None] = [None] * len(records)
    for index, continuation in zip(order, outputs):
        texts[index] = tokenizer.decode(continuation, skip_special_tokens=True)
    results, texts = _gather(results), _gather(texts)
    greedy = {records[i].input: texts[i] for i in range(len(records)) if texts[i] is not None}
    return results, greedy  # type: ignore[return-value]


def _token_scores(logits: torch.Tensor, input_ids: torch.Tensor, enc, tokenizer, distribution: bool) -> TokenScores:
    """One row's :class:`TokenScores` from its logits and ids (its own positions only, no padding)."""
    token_logp, mu, sigma = _row_scores(logits, input_ids, distribution)
    n = len(enc.ids) - 1
    answer = collate([enc], tokenizer.pad_token_id).labels[0, 1:].ne(IGNORE_INDEX)
    ends_with_eos = enc.ids[-1] == tokenizer.eos_token_id
    return TokenScores(
        token_logp=token_logp[:n].cpu().numpy(),
        mu=mu[:n].cpu().numpy(),
        sigma=sigma[:n].cpu().numpy(),
        answer_mask=answer[:n].numpy(),
        text_positions=n - 1 if ends_with_eos and n > 1 else n,
    )


def _row_scores(logits: torch.Tensor, input_ids: torch.Tensor, distribution: bool):
    """One row's next-token log p, and (``distribution``) the mean and spread of log p under p, per position.

    A row at a time: ``[seq_len, vocab]`` stays in the CPU's cache through the five passes over it, where the
    whole batch's ``[batch, seq_len, vocab]`` does not; on a 32 × 400-token batch of a 4,096-token vocabulary this
    took 0.15 s against 0.84 s for the same arithmetic on the whole batch, with identical results.
    """
    logp_all = torch.log_softmax(logits[:-1].float(), dim=-1)
    if distribution:
        probs = logp_all.exp()
        mu = (probs * logp_all).sum(-1)
        sigma = ((probs * logp_all.square()).sum(-1) - mu.square()).clamp_min(0).sqrt()
    else:
        mu = sigma = logp_all.new_zeros(logp_all.shape[0])
    return logp_all.gather(-1, input_ids[1:, None]).squeeze(-1), mu, sigma


@torch.no_grad()
def generate(
    model,
    tokenizer,
    prompts: list[str],
    *,
    max_new_tokens: int = 256,
    batch_size: int = 32,
    num_samples: int = 0,
    seed: int = 0,
    max_length: int = 512,
    desc: str = "generate",
    show_progress: bool = True,
    expected_lengths: list[int] | None = None,
    official: bool = False,
) -> tuple[list[str], list[list[str]]]:
    """Greedy continuations of raw prompts and, with ``num_samples`` > 0, that many samples at temperature 1.

    ``expected_lengths`` (tokens each answer is expected to take, e.g. its reference answer's) orders the prompts;
    it changes only the speed. Greedy rows go through :func:`greedy_continuous` (rows leave the batch at eos and
    the next prompts join it) where the model allows it, else one batch at a time. ``official=True`` encodes each
    prompt as ``tokenizer(prompt)`` untouched, as the organisers' loop does.

    Returns:
        ``(greedy, samples)``: ``greedy[i]`` is the decoded continuation of ``prompts[i]`` (special tokens removed);
        ``samples[i]`` the list of sampled continuations (empty lists without sampling).
    """
    model.eval()
    device = next(model.parameters()).device
    if official:
        encoded = [official_recipe.prompt_ids(tokenizer, p) or [tokenizer.eos_token_id] for p in prompts]
    else:
        encoded = [encode_prompt(tokenizer, p)[-max_length:] or [tokenizer.eos_token_id] for p in prompts]
    lengths = [len(e) for e in encoded]
    if lengths:
        check_positions(
            model, max(lengths) + max_new_tokens, f"prompts of up to {max(lengths)} tokens plus --max_new_tokens"
        )
    order = _length_order(lengths, expected_lengths, batch_size)
    batches = _batches(order, lengths, batch_size, same_length=official)
    compact = plain_greedy(model)
    cleanup = {"clean_up_tokenization_spaces": True} if official else {}  # as their batch_decode is called
    greedy: list[str | None] = [None] * len(prompts)
    samples: list[list[str] | None] = [None] * len(prompts)
    continuous = compact and not official and continuous_supported(model)
    if continuous:  # one stream of rows, the batch refilled as rows finish
        with tqdm(total=len(order), desc=desc, disable=not show_progress, leave=False) as bar:
            outputs = greedy_continuous(model, [encoded[i] for i in order], batch_size=batch_size,
                                        max_new_tokens=max_new_tokens, eos_token_id=tokenizer.eos_token_id,
                                        pad_token_id=tokenizer.pad_token_id, progress=bar)  # fmt: skip
        for index, continuation in zip(order, outputs):
            greedy[index] = tokenizer.decode(continuation, skip_special_tokens=True)
    generator_seed = seed
    for rows in tqdm(batches if num_samples > 0 or not continuous else [], desc=desc, disable=not show_progress,
                     leave=False):  # fmt: skip
        input_ids, attention_mask = _left_pad([encoded[i] for i in rows], tokenizer.pad_token_id, device)
        common = dict(
            input_ids=input_ids,
            attention_mask=attention_mask,
            max_new_tokens=max_new_tokens,
            pad_token_id=tokenizer.pad_token_id,
            eos_token_id=tokenizer.eos_token_id,
        )
        if not continuous:
            for index, continuation in zip(rows, _greedy_batch(model, common, compact)):
                greedy[index] = tokenizer.decode(continuation, skip_special_tokens=True, **cleanup)
        if num_samples > 0:
            torch.manual_seed(generator_seed)
            generator_seed += 1
            for index, chunk in zip(rows, _sample_batch(model, common, num_samples)):
                samples[index] = tokenizer.batch_decode(chunk, skip_special_tokens=True)
    greedy, samples = _gather(greedy), _gather(samples)
    return greedy, [s if s is not None else [] for s in samples]


def _greedy_batch(model, common: dict, compact: bool) -> list[torch.Tensor]:
    """Each row's greedy continuation (new tokens only): finished rows dropped as they end (``compact``), else
    ``model.generate`` with every sampling knob off."""
    input_ids = common["input_ids"]
    if compact:
        return greedy_compacting(
            model,
            input_ids,
            common["attention_mask"],
            max_new_tokens=common["max_new_tokens"],
            eos_token_id=common["eos_token_id"],
        )
    out = model.generate(**common, do_sample=False, num_beams=1, temperature=None, top_p=None, top_k=None)
    return [out[row, input_ids.shape[1] :] for row in range(input_ids.shape[0])]


def _sample_batch(model, common: dict, num_samples: int) -> list[torch.Tensor]:
    """Each row's ``num_samples`` continuations at temperature 1 (new tokens only), from the seeded global RNG."""
    rows, width = common["input_ids"].shape
    out = model.generate(
        **common, do_sample=True, temperature=1.0, top_k=0, top_p=1.0, num_return_sequences=num_samples
    )
    return [out[row * num_samples : (row + 1) * num_samples, width:] for row in range(rows)]


def _left_pad(sequences: list[list[int]], pad_id: int, device) -> tuple[torch.Tensor, torch.Tensor]:
    """Left padding, so that every row's next token is generated at the same position."""
    width = max(len(s) for s in sequences)
    input_ids = torch.full((len(sequences), width), pad_id, dtype=torch.long)
    attention_mask = torch.zeros((len(sequences), width), dtype=torch.long)
    for row, seq in enumerate(sequences):
        input_ids[row, width - len(seq) :] = torch.tensor(seq, dtype=torch.long)
        attention_mask[row, width - len(seq) :] = 1
    return input_ids.to(device), attention_mask.to(device)
