"""Every unique prompt of a split generated once: the rows' inputs and the PII-leak probes together.

Greedy batches are bucketed by the answer length each prompt is expected to take and drop each row at its eos
(:func:`~obliviate.evaluate.passes.generate`), so short answers never wait for long ones; a prompt shared by a row
and probes, or by several probes, is generated once and its output scored for each.
"""

from __future__ import annotations

from obliviate.data.records import Record
from obliviate.errors import ModelError
from obliviate.evaluate import leak
from obliviate.evaluate.passes import generate


def chat_prompt(tokenizer, text: str, chat_template: bool) -> str:
    if not chat_template:
        return text
    if not getattr(tokenizer, "chat_template", None):
        raise ModelError("--chat_template was given but the tokenizer has no chat template")
    return tokenizer.apply_chat_template(
        [{"role": "user", "content": text}], tokenize=False, add_generation_prompt=True
    )


def generate_split(
    model, tokenizer, split: str, scored: list[Record], probes: list, options, generated: dict[str, str] | None = None
) -> tuple[dict, dict]:
    """Greedy (and sampled) continuations of every unique prompt of a split, each generated once.

    A probe whose prompt is a row's input, or another probe's, is not generated again (:func:`leak.unique_prompts`).
    Greedy batches are bucketed by the expected answer length (:func:`_expected_lengths`) and drop rows at their
    eos. Prompts in ``generated`` (greedy continuations already made, e.g. by
    :func:`~obliviate.evaluate.passes.forward_and_generate`) are not generated again. Sampled continuations keep
    two passes, short answers (questions, paraphrases) apart from long ones (completion prefixes), since a sampling
    batch runs until its longest row ends.
    """
    prompts = leak.unique_prompts([r.input for r in scored], probes)
    common = dict(
        max_new_tokens=options.max_new_tokens,
        batch_size=options.batch_size,
        max_length=options.max_length,
        show_progress=options.show_progress,
        official=options.official,
    )
    greedy_by_prompt = {p: generated[p] for p in prompts if generated and p in generated}
    missing = [p for p in prompts if p not in greedy_by_prompt]
    if missing:
        shown = [chat_prompt(tokenizer, p, options.chat_template) for p in missing]
        expected = _expected_lengths(tokenizer, missing, scored, probes, options.max_new_tokens)
        greedy, _ = generate(model, tokenizer, shown, desc=f"{split} generate", expected_lengths=expected, **common)
        greedy_by_prompt.update(zip(missing, greedy))
    samples_by_prompt: dict[str, list[str]] = {}
    if options.leak_samples and probes:
        long = {p.prompt for p in probes if p.attack == "prefix"}
        probe_prompts = {p.prompt for p in probes}
        sampled = [p for p in prompts if p in probe_prompts]
        for group in ([p for p in sampled if p not in long], [p for p in sampled if p in long]):
            if not group:
                continue
            _, samples = generate(
                model,
                tokenizer,
                [chat_prompt(tokenizer, p, options.chat_template) for p in group],
                num_samples=options.leak_samples,
                seed=options.seed,
                desc=f"{split} sample",
                **common,
            )
            samples_by_prompt.update(zip(group, samples))
    return greedy_by_prompt, samples_by_prompt


def _expected_lengths(tokenizer, prompts: list[str], scored: list[Record], probes: list, long: int) -> list[int]:
    """Tokens each prompt's answer should take: its reference answer's for a row, the PII value's for a question or
    paraphrase probe, and the generation budget for a completion prefix (it runs on through the biography)."""
    texts = {p.prompt: p.value for p in probes if p.attack != "prefix"}
    texts.update({r.input: r.output for r in scored})
    known = [p for p in prompts if p in texts]
    lengths = dict(zip(known, map(len, tokenizer([texts[p] for p in known], add_special_tokens=False)["input_ids"])))
    return [lengths.get(p, long) for p in prompts]
