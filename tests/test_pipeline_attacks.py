"""The demo pipeline's attacks (issue 11): relearn and 4-bit quantisation on the target, the oracle and each method's
chosen checkpoint, in results.json, the report, one plot and the goals; ``attacks=none`` turns them off."""

from __future__ import annotations

import dataclasses
import json
import re
from pathlib import Path

import pytest

from obliviate.cli.main import main
from obliviate.errors import ConfigError
from obliviate.pipeline import PipelineConfig, run_pipeline
from obliviate.pipeline_attacks import ORACLE, TARGET, attack_options, run_pipeline_attacks
from obliviate.report.demo import write_demo_report
from obliviate.report.demo_attacks import attack_goals, default_verdict, draw_pipeline_attacks

RELEARN, QUANTIZE = "relearn forget_half k=10", "quantize int4 g128"


def _micro(out: Path, cache: Path, **changes) -> PipelineConfig:
    """The fastest pipeline that still has a forget person with records to split: micro model, 1 unlearning epoch."""
    values = dict(
        output_dir=str(out),
        cache_dir=str(cache),
        methods=("ga_gd",),
        people=10,
        size="micro",
        finetune_epochs=3,
        unlearn_epochs=1,
        eval_max_examples=12,
        max_new_tokens=12,
        exposure_k=4,
        workers=1,
    )
    return PipelineConfig(**{**values, **changes})


@pytest.fixture(scope="module")
def attacked(tmp_path_factory):
    root = tmp_path_factory.mktemp("pipeline_attacks")
    config = _micro(root / "demo", root / "cache")
    outcome = run_pipeline(config, log=lambda _: None)
    write_demo_report(outcome, root / "demo")
    return root, outcome, json.loads((root / "demo" / "results.json").read_text())


def test_results_carry_each_attack_for_target_oracle_and_every_method(attacked):
    root, outcome, results = attacked
    entries = results["attacks"]
    assert [(e["model"], e["name"]) for e in entries] == [
        (model, name) for model in (TARGET, ORACLE, "ga_gd") for name in (RELEARN, QUANTIZE)
    ]
    for entry in entries:
        assert entry["ran"], entry
        assert 0.0 <= entry["after"]["forget/leak_rate"] <= 1.0
        # every model relearned at one rate, a tenth of the pipeline's fine-tuning rate
        assert entry["params"].get("lr", 3e-4) == pytest.approx(3e-4)
    # quantize's "before" is the model's own unattacked evaluation: the summary row (the method's chosen epoch)
    rows = {row["model"]: row for row in results["summary"]}
    for entry in (e for e in entries if e["name"] == QUANTIZE):
        assert entry["before"]["forget/leak_rate"] == rows[entry["model"]]["forget/leak_rate"]
        assert entry["before"]["retain/rougeL_recall"] == rows[entry["model"]]["retain/rougeL_recall"]
    # the method's attacked model is its chosen checkpoint, whose weights differ from the target's
    chosen = outcome.attacks.checkpoints["ga_gd"]
    assert chosen.endswith(f"checkpoints/epoch-{results['runs'][0]['best']['epoch']}")
    assert results["default_method"] == "contrast"  # --method auto where the forget people's PII is known
    assert results["attack_seconds"] > 0


def test_attack_goals_are_computed_from_the_attacked_models(attacked):
    root, _, results = attacked
    entries = {(e["model"], e["name"]): e for e in results["attacks"]}
    mine = [g for g in results["goals"] if g.get("attack")]
    assert [g["attack"] for g in mine] == [RELEARN, QUANTIZE]
    for goal in mine:
        value = entries[("ga_gd", goal["attack"])]["after"]["forget/leak_rate"]
        reference = entries[(ORACLE, goal["attack"])]["after"]["forget/leak_rate"]
        assert goal["goal"].startswith("ga_gd: ")
        assert (goal["value"], goal["target"]) == (value, reference)
        assert goal["holds"] == (value <= reference + 0.05 + 1e-9)
    report = (root / "demo" / "report.md").read_text()
    section = report.split("## Attacks", 1)[1].split("\n## ", 1)[0]
    for model in (TARGET, ORACLE, "ga_gd"):
        for name in (RELEARN, QUANTIZE):
            assert re.search(rf"\| {re.escape(model)} \| {re.escape(name)} \| \d\.\d{{3}} → \d\.\d{{3}} \|", section)
    assert "default method (`--method auto` on this data: contrast) was not run" in section
    for goal in mine:
        assert goal["goal"] in report.split("## Goals", 1)[1]
    image = re.search(r"!\[[^\]]*attack[^\]]*\]\(([^)]+)\)", report).group(1)
    assert (root / "demo" / image).read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_attacks_none_turns_them_off(attacked, tmp_path):
    _, outcome, _ = attacked
    config = _micro(tmp_path / "demo", tmp_path / "cache", attacks="none")
    assert attack_options(config) is None

    class NoJobs:
        def run(self, jobs):
            raise AssertionError("attacks=none ran a job")

    assert run_pipeline_attacks(NoJobs(), config, {}, (None, None, None), [], []) is None
    # the report of a run without attacks: no attacks in results.json, no section, goal or plot
    write_demo_report(dataclasses.replace(outcome, attacks=None), tmp_path / "report")
    results = json.loads((tmp_path / "report" / "results.json").read_text())
    assert "attacks" not in results and not [g for g in results["goals"] if "attack" in g]
    assert results["goals"] and "## Attacks" not in (tmp_path / "report" / "report.md").read_text()
    assert not (tmp_path / "report" / "attack_leak_rate.png").exists()


def test_bad_attacks_are_refused_before_any_work(tmp_path, capsys):
    with pytest.raises(ConfigError, match="--attacks"):
        PipelineConfig(attacks="relearn,fgsm")
    args = ["demo", "--output_dir", str(tmp_path / "d"), "--cache_dir", str(tmp_path / "c"), "--attacks", "prune"]
    assert main(args) == 2
    assert "--attacks" in capsys.readouterr().err
    assert not (tmp_path / "c").exists()


def _entry(model: str, name: str, after: float | None) -> dict:
    return {
        "model": model,
        "name": name,
        "ran": after is not None,
        "before": {"forget/leak_rate": 0.5},
        "after": None if after is None else {"forget/leak_rate": after},
    }


def test_attack_goal_is_the_oracle_after_the_same_attack_plus_five_points():
    entries = [
        _entry(TARGET, RELEARN, 0.9),
        _entry(ORACLE, RELEARN, 0.20),
        _entry(ORACLE, QUANTIZE, 0.0),
        _entry("npo", RELEARN, 0.25),  # exactly +5 pp: holds
        _entry("npo", QUANTIZE, 0.06),  # +6 pp: misses
        _entry("ga", RELEARN, 0.0),  # less than the oracle: holds (one-sided)
        _entry("ga", QUANTIZE, None),  # did not run: misses
    ]
    goals = attack_goals(entries)
    assert [(g["goal"].split(":")[0], g["attack"], g["holds"]) for g in goals] == [
        ("npo", RELEARN, True),
        ("npo", QUANTIZE, False),
        ("ga", RELEARN, True),
        ("ga", QUANTIZE, False),
    ]
    assert goals[1]["target"] == 0.0 and goals[3]["value"] is None
    verdict = default_verdict(goals, "npo")
    assert "holds for 1 of 2 attacks" in verdict and "0.060 against the oracle's 0.000 (misses)" in verdict
    # one before/after pair of bars per model and attack that ran, in order
    heights = [bar.get_height() for bar in draw_pipeline_attacks(entries).axes[0].patches]
    assert heights == [0.5, 0.9, 0.5, 0.2, 0.5, 0.0, 0.5, 0.25, 0.5, 0.06, 0.5, 0.0]


def test_benchmark_write_ups_show_the_attacks_and_count_their_goals():
    import sys

    sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "benchmarks"))
    import bench_quality
    import demo_results

    entries = [_entry(ORACLE, RELEARN, 0.2), _entry("npo", RELEARN, 0.4)]
    for entry in entries:
        entry["before"]["forget/rougeL_recall"] = 0.3
        entry["after"]["forget/rougeL_recall"] = 0.6
    rows = [{"model": "target"}, {"model": ORACLE}, {"model": "npo"}]
    results = {
        "summary": rows,
        "goals": attack_goals(entries),
        "attacks": entries,
        "attack_seconds": 30.0,
        "default_method": "npo",
        "notes": ["wall time of the whole pipeline: 150s; ..."],
    }
    text = demo_results.attacks_text(results)
    assert "| npo | relearn forget_half k=10 | 0.500 → 0.400 | 0.300 → 0.600 |" in text
    assert "They took 30s, 25% on top of the rest of the pipeline." in text
    assert (
        "holds for 0 of 1 attacks; forget leak after relearn forget_half k=10 0.400 against the oracle's 0.200" in text
    )
    held, total, lines = demo_results.goal_lines(rows, demo_results.attack_goals(results))
    plain_held, plain_total, _ = demo_results.goal_lines(rows)
    assert (held, total) == (plain_held, plain_total + 1)
    assert (
        "forget leak after relearn forget_half k=10 ≤ the oracle's after it + 5 pp (0.400 against 0.200)" in lines[0]
    )
    args = bench_quality.build_parser().parse_args([])
    assert args.attacks == "relearn,quantize"
    written = bench_quality.write_up({**results, "summary": [{"model": "target"}]}, args, "CMD", 1.0, cores=2)
    assert "### Attacks on LUME" in written and "| npo | relearn forget_half k=10 |" in written
    assert "### Attacks" not in bench_quality.write_up(
        {"summary": [{"model": "target"}], "goals": []}, args, "C", 1, 2
    )
