"""The demo at minimal size, so that `make demo` cannot rot: report, plots and results exist and hold numbers that
tell the target, the oracle and the methods apart; a slow run long enough to memorise checks leaks and redaction."""

from __future__ import annotations

import json
import re
from pathlib import Path

import pytest

from obliviate.cli.main import main
from obliviate.data.synth import biography_form, load_pii


def _demo_args(out: Path, cache: Path, people: int, finetune_epochs: int) -> list[str]:
    return [
        "demo",
        "--output_dir",
        str(out),
        "--cache_dir",
        str(cache),
        "--people",
        str(people),
        "--finetune_epochs",
        str(finetune_epochs),
        "--unlearn_epochs",
        "1",
        "--eval_max_examples",
        "12",
        "--methods",
        "ga_gd",
        "npo",
    ]


def _written_forms(people: list) -> set[str]:
    """Every SSN, phone and email as the data writes it: QA answers ``123456789``, biographies ``123-45-6789``."""
    fields = ("ssn", "phone", "email")
    return {form for p in people for f in fields for form in (p.fields[f], biography_form(f, p.fields[f]))}


def _outputs(out: Path) -> dict[str, str]:
    """What the demo writes for people to read: the report, results and every epoch's (redacted) generations."""
    files = [out / "report.md", out / "results.json", *sorted(out.glob("methods/*/eval/epoch-*/*.json*"))]
    return {str(f.relative_to(out)): f.read_text() for f in files}


def _generations(out: Path) -> str:
    lines = [line for f in out.glob("methods/*/eval/epoch-*/per_example.jsonl") for line in f.open()]
    return "\n".join(json.loads(line).get("generation", "") for line in lines)


def _check_demo_output(out: Path, cache: Path) -> dict:
    """The report, plots and results exist and hold numbers; no PII in any form; returns results.json."""
    results = json.loads((out / "results.json").read_text())
    models = [row["model"] for row in results["summary"]]
    assert models == ["target", "oracle (retrain)", "ga_gd", "npo"]
    for row in results["summary"]:
        for key in ("forget/rougeL_recall", "retain/rougeL_recall", "forget/leak_rate", "forget/mia_auc_loss"):
            assert isinstance(row[key], float) and 0.0 <= row[key] <= 1.0, (row["model"], key)
        assert row["tokens_vs_oracle"] > 0
    assert {g["goal"].split(":")[0] for g in results["goals"]} == {"ga_gd", "npo"}
    # the cost counts every token each run trained on: its steps and its range test's trials (the rate is unset)
    oracle_state = json.loads(next(cache.glob("oracle-*/trainer_state.json")).read_text())
    oracle_tokens = oracle_state["tokens_seen"]
    oracle_compute = oracle_tokens + oracle_state["forward_tokens"] / 3  # its memorisation checks' passes
    for run, row in zip(results["runs"], results["summary"][2:]):
        state = json.loads((out / "methods" / run["method"] / "trainer_state.json").read_text())
        lines = [json.loads(line) for line in (out / "methods" / run["method"] / "metrics.jsonl").open()]
        # a kept trial's steps are the run's own (tokens_seen); the others' are the range test's cost
        trials = [line["lr_probe"] for line in lines if "lr_probe" in line]
        put_back = [t["tokens"] for t in trials if not t.get("continued")]
        assert run["lr_probe_tokens"] == state["lr_probe_tokens"] == sum(put_back)
        assert trials and not any(t.get("continued") for t in trials[:-1])  # only the chosen (last) one goes on
        assert run["tokens"] == state["tokens_seen"] + run["lr_probe_tokens"]
        assert row["tokens_vs_oracle"] == pytest.approx(run["tokens"] / oracle_tokens)
        # compute adds a third of every token read without training: npo's reference pass, the stop rule's checks
        assert run["forward_tokens"] == state["forward_tokens"] > 0
        assert row["compute_vs_oracle"] == pytest.approx((run["tokens"] + run["forward_tokens"] / 3) / oracle_compute)
    report = (out / "report.md").read_text()
    images = re.findall(r"!\[[^\]]*\]\(([^)]+\.png)\)", report)
    assert {"rougeL_per_epoch.png", "tradeoff.png", "loss_per_epoch.png", "attack_leak_rate.png"} <= set(images)
    # the demo's default attacks: relearn k=10 and 4-bit quantisation of every model, as references for each other
    attacked = [(e["model"], e["name"]) for e in results["attacks"] if e["ran"]]
    assert attacked == [
        (model, name) for model in models for name in ("relearn forget_half k=10", "quantize int4 g128")
    ]
    for image in images:
        assert (out / image).read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    people = load_pii(next(cache.glob("data-*")) / "pii.json")
    outputs = _outputs(out)
    assert len(outputs) >= 2 + 2 * 2 * 2  # report, results, and epochs 0-1 of two methods (results + generations)
    leaks = [(name, form) for name, text in outputs.items() for form in _written_forms(people) if form in text]
    assert not leaks
    return results


def _last_epochs(results: dict) -> dict[str, dict]:
    return {run["method"]: run["epochs"][-1]["summary"] for run in results["runs"]}


def test_demo_writes_report_plots_and_results(tmp_path):
    out, cache = tmp_path / "demo", tmp_path / "cache"
    args = _demo_args(out, cache, people=10, finetune_epochs=3)
    assert main(args) == 0
    results = _check_demo_output(out, cache)
    # At this size nothing is regurgitated yet, but the numbers are not degenerate: the target has seen the forget
    # people (lower forget perplexity than the oracle, which never did), and each method moved the model its own way.
    target, oracle = results["summary"][0], results["summary"][1]
    assert target["forget/perplexity"] < 0.9 * oracle["forget/perplexity"]
    last = _last_epochs(results)
    perplexities = [target["forget/perplexity"], last["ga_gd"]["forget/perplexity"], last["npo"]["forget/perplexity"]]
    assert len({round(p, 6) for p in perplexities}) == 3, perplexities

    # A re-run reuses the cached target and oracle: their directories are not rewritten (one method, no attacks:
    # the cache is what is tested).
    target_dir = next(cache.glob("target-*"))
    stamp = (target_dir / "model.safetensors").stat().st_mtime_ns
    rerun = _demo_args(tmp_path / "again", cache, people=10, finetune_epochs=3)
    rerun = [*rerun[: rerun.index("--methods")], "--methods", "ga_gd", "--attacks", "none"]
    assert main(rerun) == 0
    assert (target_dir / "model.safetensors").stat().st_mtime_ns == stamp
    assert json.loads((tmp_path / "again" / "results.json").read_text())["cached"]["target"] is True


@pytest.mark.slow
def test_demo_target_leaks_what_the_oracle_does_not_and_the_report_redacts_it(tmp_path):
    """A demo long enough to memorise: the target regurgitates forget PII, the oracle cannot; nothing is shown."""
    out, cache = tmp_path / "demo", tmp_path / "cache"
    assert main(_demo_args(out, cache, people=10, finetune_epochs=80)) == 0
    results = _check_demo_output(out, cache)
    target, oracle = results["summary"][0], results["summary"][1]
    assert target["forget/leak_rate"] >= oracle["forget/leak_rate"] + 0.25, (target, oracle)
    # ten relearning steps on half of the records do not teach the oracle the held-back values the target knows
    relearned = {e["model"]: e["after"] for e in results["attacks"] if e["name"] == "relearn forget_half k=10"}
    assert relearned["target"]["forget/leak_rate"] >= relearned["oracle (retrain)"]["forget/leak_rate"] + 0.25
    assert target["forget/rougeL_recall"] >= oracle["forget/rougeL_recall"] + 0.2, (target, oracle)
    assert target["retain/rougeL_recall"] >= 0.5  # it memorised the retain people too
    last = _last_epochs(results)
    assert last["ga_gd"]["forget/perplexity"] != last["npo"]["forget/perplexity"]
    # the leaked values were generated and replaced by their labels
    labels = set(re.findall(r"\[[A-Z_]+\]", _generations(out)))
    assert {"[SSN]", "[PHONE]", "[EMAIL]"} <= labels


def test_demo_refuses_an_output_dir_that_is_not_an_earlier_demo(tmp_path, capsys):
    precious = tmp_path / "precious"
    precious.mkdir()
    (precious / "thesis.tex").write_text("do not delete")
    assert main(["demo", "--output_dir", str(precious), "--cache_dir", str(tmp_path / "cache"), "--people", "10"]) == 2
    assert "not replacing it" in capsys.readouterr().err
    assert (precious / "thesis.tex").read_text() == "do not delete"


def test_demo_refuses_a_negative_worker_count(tmp_path, capsys):
    assert (
        main(["demo", "--output_dir", str(tmp_path / "d"), "--cache_dir", str(tmp_path / "c"), "--workers", "-1"]) == 2
    )
    assert "--workers must be >= 0" in capsys.readouterr().err
    assert not (tmp_path / "c").exists()
