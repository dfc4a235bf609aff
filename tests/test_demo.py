"""The demo at minimal size, so that `make demo` cannot rot: report, plots and results exist and hold numbers."""

from __future__ import annotations

import json
import re

from obliviate.cli.main import main
from obliviate.data.synth import load_pii


def test_demo_writes_report_plots_and_results(tmp_path):
    out, cache = tmp_path / "demo", tmp_path / "cache"
    args = [
        "demo",
        "--output_dir",
        str(out),
        "--cache_dir",
        str(cache),
        "--people",
        "10",
        "--finetune_epochs",
        "3",
        "--unlearn_epochs",
        "1",
        "--eval_max_examples",
        "12",
        "--methods",
        "ga_gd",
        "npo",
    ]
    assert main(args) == 0
    results = json.loads((out / "results.json").read_text())
    models = [row["model"] for row in results["summary"]]
    assert models == ["target", "oracle (retrain)", "ga_gd", "npo"]
    for row in results["summary"]:
        for key in ("forget/rougeL_recall", "retain/rougeL_recall", "forget/leak_rate", "forget/mia_auc_loss"):
            assert isinstance(row[key], float) and 0.0 <= row[key] <= 1.0, (row["model"], key)
        assert row["tokens_vs_oracle"] > 0
    assert {g["goal"].split(":")[0] for g in results["goals"]} == {"ga_gd", "npo"}
    report = (out / "report.md").read_text()
    images = re.findall(r"!\[[^\]]*\]\(([^)]+\.png)\)", report)
    assert {"rougeL_per_epoch.png", "tradeoff.png", "loss_per_epoch.png"} <= set(images)
    for image in images:
        assert (out / image).read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    people = load_pii(next(cache.glob("data-*")) / "pii.json")
    assert not any(p.fields["ssn"] in report or p.fields["email"] in report for p in people)

    # A re-run reuses the cached target and oracle: their directories are not rewritten.
    target = next(cache.glob("target-*"))
    stamp = (target / "model.safetensors").stat().st_mtime_ns
    assert main(args) == 0
    assert (target / "model.safetensors").stat().st_mtime_ns == stamp


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
