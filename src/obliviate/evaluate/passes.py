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
        answer = batch.labels[:, 1:].ne(IGNORE_INDEX)
        for row, index in enumerate(rows):
            token_logp, mu, sigma = _row_scores(logits[row], batch.input_ids[row], distribution)
            n = len(encoded[index].ids) - 1
            ends_with_eos = encoded[index].ids[-1] == tokenizer.eos_token_id
            results[index] = TokenScores(
                token_logp=token_logp[:n].cpu().numpy(),
                mu=mu[:n].cpu().numpy(),
                sigma=sigma[:n].cpu().numpy(),
                answer_mask=answer[row, :n].cpu().numpy(),
                text_positions=n - 1 if ends_with_eos and n > 1 else n,
            )
    return _gather(results)  # type: ignore[return-value]


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

    ``expected_lengths`` (tokens each answer is expected to take, e.g. its reference answer's) buckets the batches;
    it changes only the speed. ``official=True`` encodes each prompt as ``tokenizer(prompt)`` untouched, as the
    organisers' loop does.

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
