"""``evaluate --official`` against the faithful copy of the organisers' loop, and the generation speed-ups
(dropping finished rows, bucketing by answer length, one generation per distinct probe) against plain ``generate``."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import pytest
import torch

from obliviate.cli.main import main as cli_main
from obliviate.errors import ConfigError, ModelError
from obliviate.evaluate import generation, official, passes
from obliviate.evaluate.data import EvalData, load_eval_data
from obliviate.evaluate.decode import greedy_compacting, plain_greedy
from obliviate.evaluate.suite import EvalOptions, evaluate_model
from obliviate.models.load import load_model

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "benchmarks"))
import official_loop  # noqa: E402
from helpers import build_assets  # noqa: E402

pytestmark = pytest.mark.filterwarnings("ignore")
NEW_TOKENS = 24


def _prompts(assets, tokenizer) -> list[list[int]]:
    data = load_eval_data(assets.forget, assets.retain)
    rows = [r for split in data.splits.values() for r in split if r.kind in ("qa", "completion")]
    return [tokenizer(r.input)["input_ids"] for r in rows[:20]]


@pytest.fixture(scope="module")
def trained(tmp_path_factory: pytest.TempPathFactory):
    """A micro model trained until it answers and stops: rows end at eos after different numbers of steps."""
    return build_assets(tmp_path_factory.mktemp("trained"), finetune_epochs=40)


def test_dropping_finished_rows_gives_the_tokens_of_generate(trained) -> None:
    model, tokenizer = load_model(trained.model)
    assert plain_greedy(model)
    prompts = _prompts(trained, tokenizer)
    eos = tokenizer.eos_token_id
    ids, mask = passes._left_pad(prompts, tokenizer.pad_token_id, "cpu")
    out = model.generate(input_ids=ids, attention_mask=mask, max_new_tokens=NEW_TOKENS, do_sample=False,
                         pad_token_id=tokenizer.pad_token_id, eos_token_id=eos)[:, ids.shape[1] :]  # fmt: skip
    reference = []
    for row in out.tolist():
        reference.append(row[: row.index(eos) + 1] if eos in row else row)
    lengths = {len(r) for r in reference}
    assert len(lengths) >= 3 and min(lengths) < NEW_TOKENS, "rows must end at eos early and unevenly"
    assert greedy_compacting(model, ids, mask, max_new_tokens=NEW_TOKENS, eos_token_id=eos) == reference


@pytest.mark.parametrize("slack", [100.0, 0.0])
def test_refilling_the_batch_gives_each_row_the_tokens_of_generate(trained, slack, monkeypatch) -> None:
    """20 prompts through a batch of 4: rows finish at different steps, the batch is compacted and refilled with the
    next prompts (slack 100: always merged) or its long rows set aside and decoded together at the end (slack 0:
    never merged); every row gets the tokens ``generate`` gives it."""
    from obliviate.evaluate import decode

    model, tokenizer = load_model(trained.model)
    assert decode.continuous_supported(model)
    prompts = _prompts(trained, tokenizer)
    eos = tokenizer.eos_token_id
    ids, mask = passes._left_pad(prompts, tokenizer.pad_token_id, "cpu")
    out = model.generate(input_ids=ids, attention_mask=mask, max_new_tokens=NEW_TOKENS, do_sample=False,
                         pad_token_id=tokenizer.pad_token_id, eos_token_id=eos)[:, ids.shape[1] :]  # fmt: skip
    reference = [row[: row.index(eos) + 1] if eos in row else row for row in out.tolist()]
    absorbed, caches = [], []
    merge, new_cache = decode._Stream.absorb, decode._new_cache
    monkeypatch.setattr(
        decode._Stream, "absorb", lambda self, other: absorbed.append(len(other.rows)) or merge(self, other)
    )
    monkeypatch.setattr(decode, "_new_cache", lambda model: caches.append(1) or new_cache(model))
    got = decode.greedy_continuous(model, prompts, batch_size=4, max_new_tokens=NEW_TOKENS, eos_token_id=eos,
                                   pad_token_id=tokenizer.pad_token_id, slack=slack)  # fmt: skip
    assert got == reference
    assert len({len(r) for r in reference}) >= 3
    if slack:  # refilled: more prefills than the 5 fresh batches of 4, each merged into the running batch
        assert len(caches) > 5 and len(absorbed) == len(caches) - 1, (caches, absorbed)
    else:  # never refilled: 5 fresh batches; rows set aside are merged only with each other, at the end
        assert len(caches) == 5 and len(absorbed) >= 1, (caches, absorbed)


def test_the_growing_cache_gives_the_tokens_of_the_library_cache_through_growth_and_dropped_rows(
    trained, monkeypatch
) -> None:
    """The cache buffer doubles at 64 and 128 positions and loses rows at eos; the tokens stay the library's."""
    from transformers import DynamicCache

    from obliviate.evaluate import decode

    model, tokenizer = load_model(trained.model)
    cache = decode._new_cache(model)
    assert all(type(layer).__name__ == "GrowingLayer" for layer in cache.layers)
    ids, mask = passes._left_pad(_prompts(trained, tokenizer), tokenizer.pad_token_id, "cpu")
    eos = tokenizer.eos_token_id
    growing = greedy_compacting(model, ids, mask, max_new_tokens=150, eos_token_id=eos)
    monkeypatch.setattr(decode, "_new_cache", lambda model: DynamicCache(config=model.config))
    library = greedy_compacting(model, ids, mask, max_new_tokens=150, eos_token_id=eos)
    assert growing == library
    assert ids.shape[1] + max(map(len, library)) > 128 and min(map(len, library)) < 150  # grew twice, dropped rows


def test_generate_bucketed_and_compacted_equals_plain_generate(trained, monkeypatch) -> None:
    model, tokenizer = load_model(trained.model)
    data = load_eval_data(trained.forget, trained.retain)
    rows = [r for split in data.splits.values() for r in split if r.kind in ("qa", "completion")]
    prompts = [r.input for r in rows]
    expected = [len(tokenizer(r.output)["input_ids"]) for r in rows]
    fast, _ = passes.generate(model, tokenizer, prompts, max_new_tokens=NEW_TOKENS, batch_size=5,
                              expected_lengths=expected, show_progress=False)  # fmt: skip
    monkeypatch.setattr(passes, "plain_greedy", lambda model: False)  # model.generate, length order, as before
    before, _ = passes.generate(model, tokenizer, prompts, max_new_tokens=NEW_TOKENS, batch_size=5,
                                show_progress=False)  # fmt: skip
    assert fast == before and len(set(before)) > 3


def test_answer_length_windows_are_ordered_by_prompt_length_and_pad_less() -> None:
    import random

    rng = random.Random(0)
    lengths = [rng.randint(5, 300) for _ in range(400)]
    expected = [rng.randint(1, 256) for _ in range(400)]
    order = passes._length_order(lengths, expected, batch_size=10)
    assert sorted(order) == list(range(400))
    window = passes.BUCKET_BATCHES * 10
    by_answer = sorted(range(400), key=lambda i: (-expected[i], -lengths[i]))
    for start in range(0, 400, window):
        chunk = order[start : start + window]
        assert set(chunk) == set(by_answer[start : start + window]), "a window keeps its answer lengths"
        assert [lengths[i] for i in chunk] == sorted((lengths[i] for i in chunk), reverse=True)

    def padded(order):
        return sum(len(b) * max(lengths[i] for i in b) for b in passes._batches(order, lengths, 10, False))

    assert padded(order) < 0.8 * padded(by_answer)


def test_each_distinct_probe_prompt_is_generated_once(trained, monkeypatch) -> None:
    model, tokenizer = load_model(trained.model)
    data = load_eval_data(trained.forget, trained.retain)
    seen: list[str] = []

    def spy(model, tokenizer, prompts, **kwargs):
        seen.extend(prompts)
        return ["" for _ in prompts], [[] for _ in prompts]

    def scored_and_generated(*args, **kwargs):  # rows' inputs generated within the forward pass
        scores, greedy = fused(*args, **kwargs)
        seen.extend(greedy)
        return scores, greedy

    import obliviate.evaluate.suite as suite

    fused = suite.forward_and_generate
    monkeypatch.setattr(generation, "generate", spy)
    monkeypatch.setattr(suite, "forward_and_generate", scored_and_generated)
    result = evaluate_model(model, tokenizer, data, EvalOptions(max_new_tokens=4, exposure=False, show_progress=False))
    probes = [p for split in ("forget", "retain") for p in generation.leak.build_probes(
        data.splits[split], [q for q in data.people if q.split == split], split)]  # fmt: skip
    rows = [r.input for split in ("forget", "retain") for r in data.splits[split] if r.kind in ("qa", "completion")]
    assert len(seen) == len(set(seen)) == len(set(rows) | {p.prompt for p in probes})
    assert len(seen) < len(rows) + len(probes)  # question probes are the QA rows' own inputs: generated once
    assert result.value("leak_rate", "forget") == 0.0
    seen.clear()
    evaluate_model(model, tokenizer, data, EvalOptions(max_new_tokens=4, exposure=False, show_progress=False,
                                                       leak_probes=False))  # fmt: skip
    assert sorted(seen) == sorted(set(rows))


def _official_data(assets, root: Path) -> tuple[Path, EvalData]:
    """The forget and retain rows as the organisers' script reads them: ``forget.jsonl`` and ``retain.jsonl``."""
    data = load_eval_data(assets.forget, assets.retain)
    root.mkdir()
    for split in ("forget", "retain"):
        lines = [json.dumps({"id": r.id, "task": r.task, "input": r.input, "output": r.output})
                 for r in data.splits[split]]  # fmt: skip
        (root / f"{split}.jsonl").write_text("\n".join(lines) + "\n", encoding="utf-8")
    return root, EvalData(splits={s: data.splits[s] for s in ("forget", "retain")}, people=[])


def test_official_mode_matches_the_organisers_loop(trained, tmp_path) -> None:
    data_path, data = _official_data(trained, tmp_path / "official-data")
    theirs_model, theirs_tokenizer = official_loop.load(str(trained.model))
    official_loop.inference(theirs_model, theirs_tokenizer, str(data_path), str(tmp_path), NEW_TOKENS)
    theirs = official_loop.compute_metrics(str(tmp_path))
    model, tokenizer = load_model(trained.model, dtype=official.DTYPE)
    options = EvalOptions(official=True, max_new_tokens=NEW_TOKENS, batch_size=7, exposure=False, show_progress=False)
    ours = evaluate_model(model, tokenizer, data, options)
    rows = {r["id"]: r for r in ours.per_example}
    for split in ("forget", "retain"):
        with open(tmp_path / f"{split}_0.csv", encoding="utf-8") as handle:
            import pandas as pd

            csv = pd.read_csv(handle, keep_default_na=False)
        assert len(csv) == len(data.splits[split])
        for row_id, generated, nll in zip(csv["id"], csv["model_output"], csv["nll"]):
            assert rows[row_id]["generation"] == str(generated)
            assert rows[row_id]["answer_nll"] == pytest.approx(nll, abs=2e-2)
    assert ours.semeval["task_aggregate"] == pytest.approx(theirs["harmonic-mean-task-aggregate"], abs=1e-12)
    their_terms = theirs["aggregated-terms"]
    assert sorted(ours.semeval["terms"].values()) == pytest.approx(sorted(their_terms), abs=1e-12)
    default = evaluate_model(*load_model(trained.model), data, EvalOptions(max_new_tokens=NEW_TOKENS, exposure=False,
                                                                          show_progress=False))  # fmt: skip
    assert any(rows[r["id"]]["answer_nll"] != pytest.approx(r["answer_nll"], abs=1e-3) for r in default.per_example)


def test_official_mode_needs_bf16_weights(trained) -> None:
    model, tokenizer = load_model(trained.model)
    with pytest.raises(ModelError, match="bfloat16"):
        evaluate_model(model, tokenizer, EvalData(splits={}, people=[]), EvalOptions(official=True))
    with pytest.raises(ConfigError, match="chat template"):
        EvalOptions(official=True, chat_template=True)


def test_cli_official_loads_bf16(trained, tmp_path, monkeypatch, capsys) -> None:
    dtypes = []
    original = evaluate_model

    def spy(model, *args, **kwargs):
        dtypes.append(next(model.parameters()).dtype)
        return original(model, *args, **kwargs)

    monkeypatch.setattr("obliviate.evaluate.suite.evaluate_model", spy)
    base = ["evaluate", "--model", str(trained.model), "--forget_dir", str(trained.forget), "--retain_dir",
            str(trained.retain), "--no_exposure", "--no_probes", "--max_examples", "3"]  # fmt: skip
    assert cli_main([*base, "--official", "--output_dir", str(tmp_path / "official")]) == 0
    assert cli_main([*base, "--output_dir", str(tmp_path / "default"), "--max_new_tokens", "8"]) == 0
    assert dtypes == [torch.bfloat16, torch.float32]
    results = json.loads((tmp_path / "official" / "results.json").read_text())
    assert results["mode"] == "official"
    assert cli_main([*base, "--official", "--max_new_tokens", "8", "--output_dir", str(tmp_path / "bad")]) == 2
    assert "--official generates 256 new tokens" in capsys.readouterr().err


def test_scoring_and_generating_in_one_pass_gives_the_separate_passes_results(trained) -> None:
    """``forward_and_generate`` against ``forward_pass`` then ``generate``: the same token scores (to fp32 rounding)
    and the same continuations, with a repeated input (scored twice, generated once) and rows cut by ``max_length``
    (their scored prompt is not the generation prompt: scored apart, generated apart)."""
    import dataclasses

    import numpy as np

    from obliviate.data.batching import encode_record

    model, tokenizer = load_model(trained.model)
    data = load_eval_data(trained.forget, trained.retain)
    records = [r for split in data.splits.values() for r in split][:30]
    records.append(dataclasses.replace(records[0], id=records[0].id + "_again"))
    lengths = sorted(len(tokenizer(r.input + " " + r.output)["input_ids"]) for r in records)
    max_length = lengths[len(lengths) * 3 // 4]  # a quarter of the rows are cut
    options = dict(batch_size=4, max_length=max_length, show_progress=False)
    fused, greedy = passes.forward_and_generate(model, tokenizer, records, max_new_tokens=NEW_TOKENS, **options)
    apart = passes.forward_pass(model, tokenizer, records, **options)
    generated = [r for r in records if r.kind in ("qa", "completion")]
    prompts = list(dict.fromkeys(r.input for r in generated))
    texts, _ = passes.generate(model, tokenizer, prompts, max_new_tokens=NEW_TOKENS, **options)
    for one, other in zip(fused, apart):
        np.testing.assert_allclose(one.token_logp, other.token_logp, atol=1e-4)
        assert (one.answer_mask == other.answer_mask).all() and one.text_positions == other.text_positions
    first = {r.input: r for r in reversed(generated)}
    cut = {
        p
        for p in prompts
        if encode_record(tokenizer, first[p], max_length).prompt_len < len(tokenizer(p)["input_ids"])
    }
    assert cut and set(greedy) == set(prompts) - cut  # a cut prompt is left to generate()
    assert all(greedy[p] == t for p, t in zip(prompts, texts) if p in greedy)
    assert len({greedy[p] for p in greedy}) > 3
