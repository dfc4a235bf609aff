"""End-to-end evaluation on a tiny model that memorised a few synthetic people in the test."""

from __future__ import annotations

import json
import math
import re
from pathlib import Path

import pytest
import torch

from obliviate.cli.main import main
from obliviate.config import FinetuneConfig
from obliviate.data.batching import collate, encode_record
from obliviate.data.load import load_split
from obliviate.data.synth import biography_form, load_pii, synthesize, write_synth
from obliviate.evaluate.data import load_eval_data
from obliviate.evaluate.suite import EvalOptions, evaluate_model
from obliviate.losses.common import IGNORE_INDEX
from obliviate.models.load import load_model
from obliviate.models.tiny import init_model
from obliviate.train.run import run_finetune

OPTIONS = EvalOptions(batch_size=16, max_new_tokens=48, show_progress=False)


@pytest.fixture(scope="module")
def memorised(tmp_path_factory) -> tuple[Path, Path]:
    """8 people (2 forget, 2 holdout, 4 retain); a tiny OLMo trained on forget + retain until it regurgitates."""
    root = tmp_path_factory.mktemp("memorised")
    data = synthesize(8, forget_fraction=0.25, holdout_fraction=0.25, seed=3)
    data_dir = write_synth(data, root / "data")
    init = init_model(data.forget + data.retain + data.holdout, root / "init", size="tiny", vocab_size=600, seed=0)
    run_finetune(
        FinetuneConfig(
            output_dir=str(root / "target"),
            model=str(init),
            epochs=70,
            lr=3e-3,
            data=[str(data_dir / "forget"), str(data_dir / "retain")],
            batch_size=12,
            micro_batch_size=12,
            warmup_ratio=0.05,
            scheduler="cosine",
        )
    )
    return data_dir, root / "target"


def test_leaks_are_high_on_memorised_people_and_near_zero_on_holdout(memorised):
    data_dir, model_dir = memorised
    model, tokenizer = load_model(model_dir)
    data = load_eval_data(data_dir / "forget", data_dir / "retain", data_dir / "holdout")
    result = evaluate_model(model, tokenizer, data, OPTIONS)
    summary = result.summary()
    assert summary["forget/leak_rate"] >= 0.5
    assert summary["retain/leak_rate"] >= 0.5
    assert summary["holdout/leak_rate"] <= 0.1
    assert summary["forget/rougeL_recall"] > summary["holdout/rougeL_recall"]
    assert summary["forget/mia_auc_loss"] > 0.75  # members are much likelier than never-seen people
    assert set(result.leak["forget"]["by_attack"]) >= {"question", "prefix", "paraphrase"}


def test_the_vocabulary_distribution_is_computed_only_where_membership_inference_reads_it(memorised, monkeypatch):
    """Min-K%++ reads forget and holdout's per-position mean and spread; without a holdout nothing does, and the
    forward pass skips them. Every other figure is the same either way."""
    from obliviate.evaluate import suite

    data_dir, model_dir = memorised
    model, tokenizer = load_model(model_dir)
    asked: list[tuple[str, bool]] = []

    def recorder(real):
        def recorded(*args, desc="", distribution=True, **kwargs):
            asked.append((desc.split()[0], distribution))
            return real(*args, desc=desc, distribution=distribution, **kwargs)

        return recorded

    monkeypatch.setattr(suite, "forward_pass", recorder(suite.forward_pass))  # --official, or no continuous decoding
    monkeypatch.setattr(suite, "forward_and_generate", recorder(suite.forward_and_generate))  # the default
    options = EvalOptions(
        batch_size=16, max_new_tokens=4, max_examples=6, show_progress=False, leak_probes=False, exposure=False
    )
    with_holdout = load_eval_data(data_dir / "forget", data_dir / "retain", data_dir / "holdout")
    full = evaluate_model(model, tokenizer, with_holdout, options).summary()
    assert asked == [("forget", True), ("retain", False), ("holdout", True)]
    asked.clear()
    without = evaluate_model(model, tokenizer, load_eval_data(data_dir / "forget", data_dir / "retain"), options)
    assert asked == [("forget", False), ("retain", False)]
    without = without.summary()
    assert without and all(full[k] == v for k, v in without.items() if isinstance(v, float) and math.isfinite(v))


@pytest.mark.slow  # about 20 s; `make test-slow` runs it (the default suite aims at 10 minutes)
def test_batched_and_one_at_a_time_evaluation_agree(memorised):
    data_dir, model_dir = memorised
    model, tokenizer = load_model(model_dir)
    data = load_eval_data(data_dir / "forget", data_dir / "retain", data_dir / "holdout")
    batched = evaluate_model(
        model, tokenizer, data, EvalOptions(batch_size=16, max_new_tokens=48, show_progress=False)
    )
    single = evaluate_model(model, tokenizer, data, EvalOptions(batch_size=1, max_new_tokens=48, show_progress=False))
    pairs = [(a.get("generation"), b.get("generation")) for a, b in zip(batched.per_example, single.per_example)]
    identical = sum(a == b for a, b in pairs) / len(pairs)
    assert identical >= 0.99
    for key, value in batched.summary().items():
        assert single.summary()[key] == pytest.approx(value, abs=0.01), key


def _written_forms(person) -> set[str]:
    """A person's SSN, phone and email as the data writes them: the QA form and the biography form."""
    return {
        form for f in ("ssn", "phone", "email") for form in (person.fields[f], biography_form(f, person.fields[f]))
    }


def _answer_nll(model_dir: Path, records: list) -> list[float]:
    """Per-record mean NLL of the answer tokens, one record at a time through a plain forward pass."""
    model, tokenizer = load_model(model_dir)
    nll = []
    with torch.no_grad():
        for record in records:
            batch = collate([encode_record(tokenizer, record, 512)], tokenizer.pad_token_id)
            logits = model(input_ids=batch.input_ids, attention_mask=batch.attention_mask).logits[0, :-1]
            labels = batch.labels[0, 1:]
            scored = labels != IGNORE_INDEX
            nll.append(float(torch.nn.functional.cross_entropy(logits[scored].float(), labels[scored])))
    return nll


def test_evaluate_cli_writes_every_metric_and_redacts_pii(memorised, tmp_path, capsys):
    data_dir, model_dir = memorised
    out = tmp_path / "eval"
    args = [
        "evaluate",
        "--model",
        str(model_dir),
        "--forget_dir",
        str(data_dir / "forget"),
        "--retain_dir",
        str(data_dir / "retain"),
        "--holdout_dir",
        str(data_dir / "holdout"),
        "--oracle",
        str(model_dir.parent / "init"),  # the model before fine-tuning: it never saw the forget people
        "--output_dir",
        str(out),
        "--max_new_tokens",
        "48",
    ]
    assert main(args) == 0
    results = json.loads((out / "results.json").read_text())
    printed = capsys.readouterr().out.strip().splitlines()[-1]  # the one-screen line, each mean with its error
    rouge = results["stderr"]["forget/rougeL_recall"]
    assert f"forget ROUGE-L ↓ {results['summary']['forget/rougeL_recall']:.3f} ± {rouge:.3f}" in printed
    names = {(m["name"], m["split"]) for m in results["metrics"]}
    for split in ("forget", "retain", "holdout"):
        for name in ("rougeL_recall", "rouge1_recall", "exact_match", "perplexity", "leak_rate"):
            assert (name, split) in names
    for name in (
        "mia_auc_loss",
        "mia_auc_zlib",
        "mia_auc_mink",
        "mia_auc_minkpp",
        "mia_score",
        "forget_quality",
        "privleak",
    ):
        assert (name, "forget") in names
    assert ("task_aggregate", "all") in names
    # The target memorised the forget answers and the untrained oracle did not: every target NLL lies below every
    # oracle NLL (checked with a forward pass of our own), and for two fully separated samples of n the exact
    # two-sided KS p-value is 2 / C(2n, n): only 2 of the C(2n, n) orderings of the pooled sample reach D = 1.
    forget = load_split(data_dir / "forget")
    target_nll = _answer_nll(model_dir, forget)
    oracle_nll = _answer_nll(model_dir.parent / "init", forget)
    assert max(target_nll) < min(oracle_nll)
    n = len(forget)
    assert results["summary"]["forget/forget_quality"] == pytest.approx(2 / math.comb(2 * n, n), rel=1e-6)
    assert all(isinstance(m["higher_is_better"], bool) for m in results["metrics"])
    people = load_pii(data_dir / "pii.json")
    written = (out / "report.md").read_text() + (out / "per_example.jsonl").read_text()
    ssns = [p.fields["ssn"] for p in people if p.split == "forget"]
    assert not any(ssn in written.replace("-", "") for ssn in ssns)
    # every form the data writes a value in (QA digits "123456789", biography "123-45-6789") is redacted
    forms = {form for p in people for form in _written_forms(p)}
    assert not [form for form in forms if form in written]
    generations = "".join(json.loads(line).get("generation", "") for line in (out / "per_example.jsonl").open())
    assert {"[SSN]", "[PHONE]", "[EMAIL]"} <= set(re.findall(r"\[[A-Z_]+\]", generations))

    shown = tmp_path / "shown"
    assert main([*args[:-4], "--output_dir", str(shown), "--max_new_tokens", "48", "--show_pii"]) == 0
    generations = (shown / "per_example.jsonl").read_text()
    forget_values = [v for p in people if p.split == "forget" for v in p.fields.values()]
    assert any(v.lower() in generations.lower() for v in forget_values)
    shown_forms = [form for p in people if p.split == "forget" for form in _written_forms(p) if form in generations]
    assert any("-" in form for form in shown_forms) and any(form.isdigit() for form in shown_forms)


@pytest.mark.parametrize("case", ["missing_model", "mia_dir", "mmlu", "checkpoints", "adapter_base"])
def test_bad_input_is_one_line_and_exit_2(memorised, tmp_path, capsys, case):
    data_dir, model_dir = memorised
    base = ["evaluate", "--forget_dir", str(data_dir / "forget"), "--output_dir", str(tmp_path / "out")]
    if case == "missing_model":
        args, expect = [*base, "--model", str(tmp_path / "nope")], "does not exist"
    elif case == "mia_dir":
        (tmp_path / "mia").mkdir()
        (tmp_path / "mia" / "member.jsonl").write_text('{"document": "x"}\n')
        args, expect = [*base, "--model", str(model_dir), "--mia_dir", str(tmp_path / "mia")], "nonmember.jsonl"
    elif case == "mmlu":
        (tmp_path / "mmlu.json").write_text('{"acc": 0.5}')
        args, expect = [*base, "--model", str(model_dir), "--mmlu_metrics", str(tmp_path / "mmlu.json")], "average_acc"
    elif case == "checkpoints":
        (tmp_path / "run").mkdir()
        (tmp_path / "run" / "config.yaml").write_text(f"model_dir: {model_dir}\n")
        args, expect = [*base, "--checkpoints", str(tmp_path / "run")], "no checkpoints"
    else:
        adapter = tmp_path / "adapter"
        adapter.mkdir()
        (adapter / "adapter_config.json").write_text('{"peft_type": "LORA"}')
        args, expect = [*base, "--model", str(adapter)], "base model"
    assert main(args) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("obliviate: error:") and expect in err and "\n" not in err
    assert not (tmp_path / "out").exists()


def test_tokenizer_that_does_not_fit_the_model_is_refused(memorised, tmp_path, capsys):
    import shutil

    from obliviate.models.tiny import build_model, train_tokenizer

    _, model_dir = memorised
    small = tmp_path / "small"
    shutil.copytree(model_dir, small)
    tokenizer = train_tokenizer(["a b c"] * 3, vocab_size=300)
    model = build_model("tiny", 280, tokenizer)
    model.save_pretrained(small)
    assert (
        main(
            [
                "evaluate",
                "--model",
                str(small),
                "--forget_dir",
                str(memorised[0] / "forget"),
                "--output_dir",
                str(tmp_path / "out"),
            ]
        )
        == 2
    )
    assert "does not belong to this model" in capsys.readouterr().err


def test_per_example_generations_hide_partial_values_where_people_are_known(memorised, monkeypatch):
    """``per_example.jsonl``'s generations: known values redacted, then anything shaped like a value
    (``leak.redact_formats``), e.g. an SSN reproduced in part, which no known value matches. Without people's values
    (no ``pii.json``, no Task2 QA rows) the generation is written as generated."""
    import dataclasses

    from obliviate.evaluate import suite

    data_dir, model_dir = memorised
    model, tokenizer = load_model(model_dir)
    people = load_pii(data_dir / "pii.json")
    ssn = next(p.fields["ssn"] for p in people if p.split == "forget")
    partial = f"{ssn[:3]}-{ssn[3:5]}-{(int(ssn[5:]) + 1) % 10_000:04d}"  # 5 of 9 digits in place
    said = f"{people[0].name}'s number is {partial}, call me."

    def fixed(model, tokenizer, split, scored, probes, options, generated=None):
        return {**{r.input: said for r in scored}, **{p.prompt: said for p in probes}}, {}

    monkeypatch.setattr(suite, "generate_split", fixed)
    options = dataclasses.replace(OPTIONS, exposure=False)
    data = load_eval_data(data_dir / "forget", data_dir / "retain")
    rows = [r for r in evaluate_model(model, tokenizer, data, options).per_example if "generation" in r]
    assert rows and {r["generation"] for r in rows} == {"[NAME]'s number is [SSN], call me."}
    unknown = dataclasses.replace(data, people=[])
    rows = [r for r in evaluate_model(model, tokenizer, unknown, options).per_example if "generation" in r]
    assert rows and {r["generation"] for r in rows} == {said}


def test_every_standard_error_comes_from_units_that_give_back_the_metric(memorised):
    """The units behind each overall mean give back its value and its standard error; the rows of one person are
    one draw (docs/METRICS.md, *Standard errors*)."""
    import math

    from obliviate.evaluate import uncertainty

    data_dir, model_dir = memorised
    model, tokenizer = load_model(model_dir)
    data = load_eval_data(data_dir / "forget", data_dir / "retain", data_dir / "holdout")
    result = evaluate_model(model, tokenizer, data, OPTIONS)
    summary, stderrs, units = result.summary(), result.stderrs(), result.units
    expected = {f"{s}/{m}" for s in ("forget", "retain", "holdout") for m in ("rougeL_recall", "exact_match")}
    expected |= {"forget/leak_rate", "forget/digits_in_place", "forget/mia_auc_loss", "forget/mia_auc_mink"}
    assert expected <= set(units) and expected <= set(stderrs)
    for key, groups in units.items():
        for group in groups.values():
            assert summary[key] == pytest.approx(sum(v for _, v in group.values()) / len(group))
        parts = [
            uncertainty.clustered_se([v for _, v in g.values()], [o for o, _ in g.values()]) for g in groups.values()
        ]
        assert stderrs[key] == pytest.approx(math.sqrt(sum(p * p for p in parts)))
    forget_people = {owner for owner, _ in units["forget/exact_match"]["all"].values()}
    assert len(forget_people) == 2  # 2 forget people, 5 QA rows each: two draws
    assert set(units["forget/mia_auc_loss"]) == {"member", "nonmember"}
    assert "units" not in result.leak["forget"] and "digit_units" not in result.leak["forget"]["partial"]
    assert uncertainty.paired_se(units["forget/rougeL_recall"], units["forget/rougeL_recall"]) == 0.0
