"""benchmarks/probe_words.py --parts: where in the whole text a model finds the forget people less likely."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "benchmarks"))
import probe_words  # noqa: E402


def test_part_of_splits_the_text_at_the_recut_and_at_the_original_answer():
    assert probe_words.part_of(3, 5, -1, 10, False) == "head"
    assert probe_words.part_of(5, 5, 4, 10, True) == "prompt_values"
    assert probe_words.part_of(6, 5, 9, 10, False) == "prompt_words"
    assert probe_words.part_of(7, 5, 10, 10, False) == "answer_words"
    assert probe_words.part_of(8, 5, 12, 10, True) == "answer_values"


def test_field_name_reads_the_batch_field_code():
    from obliviate.data.batching import field_code

    assert probe_words.field_name(field_code("phone")) == "phone"
    assert probe_words.field_name(field_code("ni_number")) == "other"


def test_part_sums_hold_every_token_of_the_text_once(assets):
    """The five parts' token-weighted NLL is the whole text's, token for token (eos left out), and the per-field
    lines re-count only value tokens."""
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from obliviate.data.load import load_split

    tokenizer = AutoTokenizer.from_pretrained(assets.model)
    model = AutoModelForCausalLM.from_pretrained(assets.model).eval()
    sums = probe_words.part_sums(model, tokenizer, str(assets.data), rows=3)
    five = ("head", "prompt_values", "prompt_words", "answer_values", "answer_words")
    for split in ("forget", "holdout"):
        total, count = 0.0, 0
        for record in [r for r in load_split(assets.data / split, split=split) if r.kind == "completion"][:3]:
            ids = tokenizer(record.text, add_special_tokens=False)["input_ids"]
            prompt = tokenizer(record.input, add_special_tokens=False)["input_ids"]
            assert len(ids) > len(prompt)
            batch = torch.tensor([ids])
            with torch.no_grad():
                logp = torch.log_softmax(model(batch).logits[0, :-1].float(), -1)
            total += float(-logp.gather(-1, batch[0, 1:, None]).sum())
            count += len(ids) - 1
        parts = [sums[(split, p)] for p in five if (split, p) in sums]
        assert sum(n for _, n in parts) == count
        assert sum(s for s, _ in parts) == pytest.approx(total, rel=1e-4)
        fields = [v for (s, name), v in sums.items() if s == split and ":" in name]
        values = [sums[(split, p)] for p in ("prompt_values", "answer_values") if (split, p) in sums]
        assert sum(n for _, n in fields) == sum(n for _, n in values) > 0
