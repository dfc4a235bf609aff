"""benchmarks/exposure_band.py: the z test of the forget exposure against the holdout's, read from a report."""

from __future__ import annotations

import json
import math
import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "benchmarks"))
import exposure_band  # noqa: E402
import paired_diff  # noqa: E402, F401


def test_band_is_the_difference_of_means_over_its_standard_error():
    b = exposure_band.band([1.0, 3.0], [0.0, 2.0])  # means 2 and 1, each standard error 1
    assert b["forget"] == 2.0 and b["holdout"] == 1.0
    assert b["z"] == pytest.approx(1 / math.sqrt(2))
    assert math.isnan(exposure_band.band([1.0], [1.0, 2.0])["z"])


def test_a_report_is_read_at_its_chosen_epoch_and_saturated_fields_are_also_left_out(tmp_path):
    def pair(field, exposure, rank, person):
        return {"field": field, "exposure": exposure, "rank": rank, "person_id": person}

    report = tmp_path / "report"
    (report / "results.json").parent.mkdir(parents=True)
    (report / "results.json").write_text(json.dumps({"runs": [{"method": "contrast", "best": {"epoch": 2}}]}))
    forget = [
        pair("ssn", 3.0, 3, "f1"),
        pair("ssn", 5.0, 1, "f2"),
        pair("email", 4.4, 1, "f1"),
        pair("email", 4.4, 1, "f2"),
    ]
    holdout = [
        pair("ssn", 1.0, 9, "h1"),
        pair("ssn", 3.0, 4, "h2"),
        pair("email", 4.4, 1, "h1"),
        pair("email", 4.4, 2, "h2"),
    ]
    for epoch, values in ((1, holdout), (2, forget)):  # epoch 1 would read as forgotten: it must not be the one read
        path = report / "methods" / "contrast" / "eval" / f"epoch-{epoch}" / "results.json"
        path.parent.mkdir(parents=True)
        path.write_text(json.dumps({"exposure": {"forget": {"pairs": values}, "holdout": {"pairs": holdout}}}))
    bands = exposure_band.report_bands(report)["contrast (epoch 2)"]
    assert set(bands) == {"all fields", "without email"}  # half the never-seen e-mails rank first
    assert bands["without email"]["forget"] == 4.0 and bands["without email"]["holdout"] == 2.0
    assert bands["without email"]["z"] == pytest.approx(2 / math.sqrt(2))
    assert bands["all fields"]["n_forget"] == 4
    from obliviate.evaluate.uncertainty import clustered_se

    assert bands["all fields"]["forget_se"] == pytest.approx(
        clustered_se([3.0, 5.0, 4.4, 4.4], ["f1", "f2", "f1", "f2"])
    )


def test_a_persons_values_count_as_one_draw():
    """Five values of one person are not five draws: the band is wider than with each value its own."""
    forget = [v for v in (2.0, 3.0, 1.5, 2.5) for _ in range(5)]
    holdout = [v for v in (1.0, 2.0, 1.5, 0.5) for _ in range(5)]
    people_f = [f"f{i // 5}" for i in range(20)]
    people_h = [f"h{i // 5}" for i in range(20)]
    by_person = exposure_band.band(forget, holdout, people_f, people_h)
    assert by_person["z"] == pytest.approx(exposure_band.band([2.0, 3.0, 1.5, 2.5], [1.0, 2.0, 1.5, 0.5])["z"])
    assert exposure_band.band(forget, holdout)["z"] > 2 * by_person["z"]


def test_without_results_json_each_method_is_read_at_its_last_evaluated_epoch(tmp_path):
    """A ``probe_objectives.py`` output directory has no ``results.json``: its runs keep their last checkpoint."""
    report = tmp_path / "probe"
    for epoch, value in ((0, 5.0), (9, 1.0), (12, 2.0)):  # 12 > 9: compared as numbers, not as names
        path = report / "methods" / "contrast" / "eval" / f"epoch-{epoch}" / "results.json"
        path.parent.mkdir(parents=True)
        pairs = [{"field": "ssn", "exposure": value + d, "rank": 5, "person_id": f"p{d}"} for d in (0.0, 1.0)]
        path.write_text(json.dumps({"exposure": {"forget": {"pairs": pairs}, "holdout": {"pairs": pairs}}}))
    (report / "methods" / "contrast" / "eval" / "epoch-20").mkdir()  # an epoch whose evaluation did not finish
    assert exposure_band.chosen_epochs(report) == {"contrast": 12}
    assert exposure_band.report_bands(report)["contrast (epoch 12)"]["all fields"]["forget"] == 2.5


def test_paired_diff_reads_an_evaluation_and_a_report_row_and_pairs_their_units(tmp_path, capsys):

    from obliviate.evaluate.uncertainty import mean_units

    ids, owners = ["a", "b", "c", "d"], ["p", "p", "q", "r"]
    report = tmp_path / "report.json"
    row = {
        "model": "contrast",
        "forget/rougeL_recall": 0.5,
        "units": {"forget/rougeL_recall": mean_units(ids, owners, [1, 0, 0.5, 0.5])},
    }
    report.write_text(json.dumps({"summary": [{"model": "target"}, row]}))
    evaluation = tmp_path / "eval.json"
    units = {
        "forget/rougeL_recall": mean_units(ids, owners, [1, 0.5, 0.5, 1]),
        "forget/exact_match": mean_units(ids, owners, [1, 1, 1, 1]),
    }
    evaluation.write_text(
        json.dumps({"summary": {"forget/rougeL_recall": 0.75, "forget/exact_match": 1.0}, "units": units})
    )
    paired_diff.main([f"{report}#contrast", str(evaluation)])
    out = capsys.readouterr().out
    from obliviate.evaluate.uncertainty import clustered_se

    se = clustered_se([0, 0.5, 0, 0.5], owners)
    assert f"| forget/rougeL_recall | 0.500 | 0.750 | +0.250 | {se:.3f} | {0.25 / se:.2f} |" in out
    assert "exact_match" not in out  # measured on one side only
    with pytest.raises(SystemExit, match="no row 'ga'"):
        paired_diff.main([f"{report}#ga", str(evaluation)])
    with pytest.raises(SystemExit, match="cannot read .*missing.json"):
        paired_diff.main([str(tmp_path / "missing.json"), str(evaluation)])
