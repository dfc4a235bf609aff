"""``obliviate run`` on a micro target end to end (report, results and plots agree), its three oracle modes and the
missing holdout said out loud, ``finetune --until_memorised`` (stops when memorised, says so when the budget ends
first), and bad input refused in one line with nothing written."""

from __future__ import annotations

import json
import re
import shutil
from pathlib import Path

import pytest

from obliviate.cli.main import main
from obliviate.data.load import write_jsonl
from obliviate.data.records import Record
from obliviate.report.columns import metric_columns

QUICK = ["--methods", "ga_gd", "--unlearn_max_steps", "2", "--eval_max_examples", "6", "--max_new_tokens", "8"]
QUICK += ["--memorised_sample", "8", "--workers", "1"]


def _run(target, out: Path, cache: Path, *extra: str, holdout: bool = True) -> list[str]:
    data = target.data
    args = ["run", "--model", str(target.model), "--forget_dir", str(data / "forget"), "--retain_dir"]
    args += [str(data / "retain"), "--output_dir", str(out), "--cache_dir", str(cache), *QUICK, *extra]
    return args + (["--holdout_dir", str(data / "holdout")] if holdout else [])


def _shown(key: str, value: float) -> str:
    """A value as the report's table shows it (the column's format from the METRICS table)."""
    column = next(c for c in metric_columns("columns", [{key: value}]) if c.key == key)
    return column.cell(value)


def _results(out: Path) -> tuple[dict, str]:
    return json.loads((out / "results.json").read_text()), (out / "report.md").read_text()


def test_run_with_a_trained_oracle_writes_report_results_and_plots_that_agree(target, tmp_path):
    out = tmp_path / "out"
    assert main(_run(target, out, tmp_path / "cache", "--train_oracle")) == 0
    results, report = _results(out)
    assert [r["model"] for r in results["summary"]] == ["target", "oracle (retrain)", "ga_gd"]
    for row in results["summary"]:
        for key in ("forget/rougeL_recall", "retain/exact_match", "forget/mia_auc_loss"):
            assert isinstance(row[key], float) and 0.0 <= row[key] <= 1.0, (row["model"], key)
            assert _shown(key, row[key]) in report
    assert results["references"]["oracle"] == "trained"
    assert "oracle (fine-tuned by this run on retain alone)" in report
    # the oracle follows the target's recipe: the target's config.yaml (8 epochs), on the retain set alone
    oracle_config = (Path(results["references"]["oracle_dir"]) / "config.yaml").read_text()
    assert "epochs: 8" in oracle_config and str(target.data / "forget") not in oracle_config
    memo = results["memorisation"]["target"]
    assert memo["source"] == "measured" and memo["rows"] >= 8 and memo["threshold"] == 0.95
    assert f"exact match {memo['exact_match']:.3f}" in report
    assert ("NOT memorised" in report) == (not memo["memorised"])
    assert any("oracle" in g["goal"] for g in results["goals"])  # goals against the oracle are computed
    images = re.findall(r"!\[[^\]]*\]\(([^)]+\.png)\)", report)
    assert {"rougeL_per_epoch.png", "tradeoff.png"} <= set(images)
    for image in images:
        assert (out / image).read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_run_with_a_given_oracle_and_no_holdout_says_what_stands_in(target, tmp_path):
    out = tmp_path / "out"
    oracle = target.model.parent / "init"  # any model retrained without the forget set: here the untrained one
    assert main(_run(target, out, tmp_path / "cache", "--oracle", str(oracle), holdout=False)) == 0
    results, report = _results(out)
    assert results["references"]["oracle"] == "given" and results["references"]["oracle_dir"] == str(oracle)
    assert "oracle (given)" in report
    assert results["summary"][1]["model"] == "oracle (retrain)"
    assert "no holdout set: membership inference is not computed" in report
    assert "chance level of a uniform rank among K + 1" in report
    assert not any("MIA" in g["goal"] for g in results["goals"])
    assert "forget/mia_auc_loss" not in results["summary"][0]


def test_run_without_an_oracle_reports_no_oracle_goals(target, tmp_path):
    out = tmp_path / "out"
    assert main([*_run(target, out, tmp_path / "cache"), "--report_to", "tensorboard"]) == 0
    assert list((out / "methods" / "ga_gd" / "tensorboard").rglob("events.out.tfevents.*"))  # each method's run
    results, report = _results(out)
    assert [r["model"] for r in results["summary"]] == ["target", "ga_gd"]
    assert results["references"]["oracle"] == "none"
    assert "oracle: none" in report and "not computed" in report
    goals = [g["goal"] for g in results["goals"]]
    assert goals and all("of target" in g for g in goals), goals  # only the goals against the target
    assert not list((tmp_path / "cache").glob("oracle-*"))


def _qa_set(root: Path) -> Path:
    """Three short QA rows: a micro model memorises them in about a dozen epochs."""
    rows = [
        ("What is the colour of the sky?", "blue"),
        ("Which city is the capital of France?", "Paris"),
        ("How many legs does a spider have?", "eight"),
    ]
    records = [Record(id=f"p{i}qa0", input=q, output=a, task="Task2", kind="qa") for i, (q, a) in enumerate(rows)]
    write_jsonl(records, root / "qa" / "train.jsonl")
    return root / "qa"


def _finetune(assets, data: Path, out: Path, epochs: int) -> list[str]:
    args = ["finetune", "--model", str(assets.model), "--data", str(data), "--output_dir", str(out)]
    args += ["--epochs", str(epochs), "--until_memorised", "0.95", "--lr", "1e-2", "--batch_size", "4"]
    return args + ["--micro_batch_size", "4", "--scheduler", "constant", "--warmup_ratio", "0", "--max_length", "64"]


def _checks(out: Path) -> list[dict]:
    lines = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    return [line["memorised_check"] for line in lines if "memorised_check" in line]


def test_finetune_until_memorised_stops_at_the_first_memorised_epoch(assets, tmp_path, capsys):
    out = tmp_path / "m"
    assert main(_finetune(assets, _qa_set(tmp_path), out, epochs=60)) == 0
    checks = _checks(out)
    state = json.loads((out / "trainer_state.json").read_text())
    assert checks[-1]["memorised"] and checks[-1]["exact_match"] >= 0.95
    assert not any(c["memorised"] for c in checks[:-1])
    assert [c["epoch"] for c in checks] == list(range(1, state["epoch"] + 1))
    assert state["epoch"] < 60 and state["stopped"].startswith(f"memorised at epoch {state['epoch']}")
    assert state["epoch_check"] == checks[-1]
    assert "memorised at epoch" in capsys.readouterr().out


def test_finetune_until_memorised_stops_at_the_budget_and_says_so(assets, tmp_path, capsys):
    out = tmp_path / "m"
    assert main(_finetune(assets, _qa_set(tmp_path), out, epochs=2)) == 0
    checks = _checks(out)
    state = json.loads((out / "trainer_state.json").read_text())
    assert len(checks) == 2 and state["epoch"] == 2 and state["stopped"] is None
    assert not checks[-1]["memorised"]
    assert "not memorised within the budget of 2 epochs" in capsys.readouterr().out


def test_the_finetune_cache_key_holds_the_memorisation_stop(tmp_path):
    from obliviate.pipeline import PipelineConfig
    from obliviate.pipeline_cache import finetune_entry

    data = tmp_path / "d"
    data.mkdir()
    (data / "x.jsonl").write_text("{}\n")

    def entry(**kw) -> Path:
        return finetune_entry("target", [data], PipelineConfig(cache_dir=str(tmp_path), **kw), [data])

    assert entry() == entry()
    assert entry() != entry(finetune_until_memorised=0.9)
    assert entry() != entry(finetune_until_memorised=None)
    assert entry() != entry(memorised_sample=8)


def test_the_model_cache_keys_hold_the_versions_of_the_packages_that_make_the_model(tmp_path, monkeypatch):
    """A cache made under another torch, transformers or tokenizers release is not reused: those decide the
    tokenizer's and the weights' bytes, and a table read from a stale entry is not what a fresh install makes."""
    from obliviate import pipeline_cache
    from obliviate.pipeline import PipelineConfig

    data = tmp_path / "d"
    data.mkdir()
    (data / "x.jsonl").write_text("{}\n")
    config = PipelineConfig(cache_dir=str(tmp_path))
    before = pipeline_cache.finetune_entry("target", [data], config, [data])
    real = pipeline_cache.package_versions()
    assert set(real) == {"torch", "transformers", "tokenizers"} and all(real.values())
    monkeypatch.setattr(pipeline_cache, "package_versions", lambda: {**real, "transformers": "0.0.1"})
    assert pipeline_cache.finetune_entry("target", [data], config, [data]) != before


def test_the_model_cache_keys_hold_the_source_of_the_fine_tuning_code(tmp_path, monkeypatch):
    """An entry fine-tuned by older code is not reused: the key holds a hash of the source fine-tuning runs through,
    and that hash reads every file it names (an edit to the loop changes it; one to the report does not)."""
    from obliviate import pipeline_cache
    from obliviate.pipeline import PipelineConfig

    data = tmp_path / "d"
    data.mkdir()
    (data / "x.jsonl").write_text("{}\n")
    config = PipelineConfig(cache_dir=str(tmp_path))
    before = pipeline_cache.finetune_entry("target", [data], config, [data])
    package = tmp_path / "obliviate"
    shutil.copytree(Path(pipeline_cache.__file__).parent, package)
    monkeypatch.setattr(pipeline_cache, "__file__", str(package / "pipeline_cache.py"))
    assert pipeline_cache.finetune_entry("target", [data], config, [data]) == before  # the same source, copied
    with open(package / "report" / "render.py", "a") as out:
        out.write("# not fine-tuning\n")
    assert pipeline_cache.finetune_entry("target", [data], config, [data]) == before
    with open(package / "train" / "lr_probe.py", "a") as out:  # the range test: a fine-tune never runs it
        out.write("# not fine-tuning either\n")
    assert pipeline_cache.finetune_entry("target", [data], config, [data]) == before
    for edited in ("train/loop.py", "losses/finetune.py", "models/tiny.py", "evaluate/memorised.py"):
        with open(package / edited, "a") as out:
            out.write("# changed\n")
        after = pipeline_cache.finetune_entry("target", [data], config, [data])
        assert after != before, edited
        before = after


def test_fine_tuning_never_runs_the_range_test_the_cache_key_leaves_out(assets, tmp_path, monkeypatch):
    """``train/lr_probe.py`` is out of the model cache key (``FINETUNE_UNREACHED``) because a fine-tune's rate is
    always given: fine-tuning with the range test made to fail still trains."""
    from obliviate.config import FinetuneConfig
    from obliviate.pipeline_cache import FINETUNE_UNREACHED
    from obliviate.train import lr_probe
    from obliviate.train.run import run_finetune

    def refuse(*args, **kwargs):
        raise AssertionError("fine-tuning ran the range test")

    monkeypatch.setattr(lr_probe, "probe_lr", refuse)
    config = FinetuneConfig(
        output_dir=str(tmp_path / "ft"), model=str(assets.model), data=[str(assets.retain)], epochs=1, overwrite=True
    )
    result = run_finetune(config)
    assert result.global_step > 0 and FINETUNE_UNREACHED == ("train/lr_probe.py",)
    assert FinetuneConfig.__dataclass_fields__["lr"].type == "float"  # a number, never unset (UnlearnConfig's: None)


@pytest.mark.parametrize(
    ("change", "message"),
    [
        ({"--forget_dir": "missing"}, "--forget_dir"),
        ({"--retain_dir": "missing"}, "--retain_dir"),
        ({"--train_oracle": None, "--oracle": "ORACLE"}, "at most one of --oracle"),
        ({"--finetune_target": None}, "--finetune_target builds the target from --model tiny, small or medium"),
        ({"--model": "tiny"}, "add --finetune_target"),
        ({"--oracle": "missing"}, "--oracle"),
    ],
)
def test_bad_input_is_one_line_and_writes_nothing(assets, tmp_path, capsys, change, message):
    values = {
        "--model": str(assets.model),
        "--forget_dir": str(assets.forget),
        "--retain_dir": str(assets.retain),
        "--output_dir": str(tmp_path / "out"),
        "--cache_dir": str(tmp_path / "cache"),
    }
    for flag, value in change.items():
        values[flag] = value.replace("ORACLE", str(assets.model)) if value else None
        values[flag] = str(tmp_path / value) if value == "missing" else values[flag]
    args = ["run", *[x for flag, value in values.items() for x in ([flag] if value is None else [flag, value])]]
    assert main(args) == 2
    err = capsys.readouterr().err
    assert err.startswith("obliviate: error:") and err.count("\n") == 1 and message in err, err
    assert not (tmp_path / "out").exists() and not (tmp_path / "cache").exists()


def test_the_cache_key_reads_a_data_file_and_where_each_file_lies(tmp_path):
    """A data file is hashed by its rows (it hashed as an empty folder: every file had one key), a folder by each
    file's relative path and bytes; a flat folder keeps the key it had (name + bytes), so cached models stay found."""
    import hashlib

    from obliviate.pipeline_cache import _dir_hash

    one, two = tmp_path / "one.jsonl", tmp_path / "two.jsonl"
    one.write_text('{"id": "1", "input": "a", "output": "b"}\n')
    two.write_text('{"id": "1", "input": "a", "output": "c"}\n')
    assert _dir_hash(one) != _dir_hash(two)
    flat = tmp_path / "flat"
    flat.mkdir()
    (flat / "forget.jsonl").write_bytes(one.read_bytes())
    old = hashlib.sha256(b"forget.jsonl" + one.read_bytes()).hexdigest()[:12]
    assert _dir_hash(flat) == old
    nested = tmp_path / "nested"
    (nested / "retain").mkdir(parents=True)
    (nested / "retain" / "rows.jsonl").write_bytes(one.read_bytes())
    before = _dir_hash(nested)
    (nested / "retain").rename(nested / "forget")
    assert _dir_hash(nested) != before
