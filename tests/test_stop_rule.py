"""The oracle-free stop rule: stops on a constructed trajectory exactly where it should, and not before."""

from __future__ import annotations

import json
import math
import re

import pytest

from helpers import metrics, unlearn_argv
from obliviate.cli.main import main
from obliviate.evaluate import stop_rule as rule_module
from obliviate.evaluate.exposure import chance_exposure
from obliviate.evaluate.stop_rule import ExposureStopRule


def scripted(monkeypatch, exposures: dict[str, list[list[float]]], retain: list[float]) -> ExposureStopRule:
    """A rule whose measurements follow a script: per split, one list of per-value exposures per call."""
    calls = {split: iter(values) for split, values in exposures.items()}
    nll = iter(retain)
    monkeypatch.setattr(ExposureStopRule, "_exposures", lambda self, m, t, r, split, dry=False: next(calls[split]))
    monkeypatch.setattr(rule_module, "retain_nll", lambda model, tokenizer, records: next(nll))
    return ExposureStopRule(forget=[], people=[], retain=[], holdout=["h"], every=2, band=2.0, retain_bound=0.1)


def test_stops_at_the_first_check_inside_the_holdout_band(monkeypatch):
    """Holdout exposures 1.0 and 2.0: mean 1.5, standard error 0.5, band top 2.5. Forget 6, 4, 2.6, 2.4."""
    rule = scripted(
        monkeypatch,
        {"holdout": [[1.0, 2.0]], "forget": [[6.0, 6.0], [4.0, 4.0], [2.6, 2.6], [2.4, 2.4]]},
        retain=[1.00, 1.02, 1.05, 1.08, 1.09],
    )
    rule.start(None, None)
    assert [rule(None, None, step) for step in (1, 2, 3, 4, 6)][:4] == [None, None, None, None]  # odd steps skip
    assert len(rule.history) == 3
    reason = rule(None, None, 8)
    assert reason is not None and "inside the never-seen band" in reason and "step 8" in reason
    assert [h["forget_exposure"] for h in rule.history] == [6.0, 4.0, 2.6, 2.4]


def test_stops_when_the_retain_nll_passes_its_bound(monkeypatch):
    rule = scripted(
        monkeypatch,
        {"holdout": [[1.0, 2.0]], "forget": [[6.0], [5.0], [4.0]]},
        retain=[1.00, 1.05, 1.09, 1.11],
    )
    rule.start(None, None)
    assert rule(None, None, 2) is None and rule(None, None, 4) is None  # 0.09 above the start: kept
    reason = rule(None, None, 6)
    assert reason is not None and "retain NLL 1.110 rose more than 0.1" in reason


def test_without_holdout_the_reference_is_chance(monkeypatch):
    rule = scripted(monkeypatch, {"forget": [[0.0] * 16, [chance_exposure(50) + 0.7] * 16]}, retain=[1.0, 1.0])
    rule.holdout = []
    rule.start(None, None)
    mean, se = rule._reference
    assert mean == pytest.approx(chance_exposure(50)) and se == pytest.approx(1.4427 / 4, rel=1e-3)
    assert rule(None, None, 2) is not None  # 0.7 above chance is inside 2 standard errors (0.72)


def test_unlearn_with_the_stop_rule_logs_its_checks_and_says_why_it_stopped(target, tmp_path):
    out = tmp_path / "out"
    argv = unlearn_argv(target, out, "--method", "ga_gd", "--epochs", "3", "--stop_check_steps", "2")
    argv += ["--holdout_dir", str(target.data / "holdout"), "--stop_retain_bound", "5"]
    assert main(argv) == 0
    checks = [line["stop_check"] for line in metrics(out) if "stop_check" in line]
    assert checks and all(c["step"] % 2 == 0 for c in checks)
    state = json.loads((out / "trainer_state.json").read_text())
    last = checks[-1]
    assert state["stopped"] is not None and state["global_step"] == last["step"], state  # stopped at a check
    if "retain NLL" in state["stopped"]:  # the number it names is the one logged, past the bound
        now, start = map(float, re.findall(r"retain NLL ([\d.]+) rose .* its start \(([\d.]+)\)", state["stopped"])[0])
        assert now == pytest.approx(last["retain_nll"], abs=1e-3) and now - start > 5
    else:
        assert "never-seen band" in state["stopped"]
        exposure, mean, band, se = map(
            float, re.findall(r"exposure ([\d.]+) bits .*≤ ([\d.]+) \+ ([\d.]+)·([\d.]+)", state["stopped"])[0]
        )
        assert exposure == pytest.approx(last["forget_exposure"], abs=5e-3) and exposure <= mean + band * se + 5e-3
    assert all(c["forget_exposure"] == c["forget_exposure"] for c in checks)  # measured (not NaN) at every check


def test_the_band_counts_the_forget_means_own_standard_error(monkeypatch):
    """Holdout 1.0, 2.0 (mean 1.5, se 0.5); forget 2.4, 3.4 (mean 2.9, se 0.5): the difference is 1.4 against a
    combined standard error of 0.707, inside 2 of them (2.914), though above the holdout's own band (2.5)."""
    rule = scripted(monkeypatch, {"holdout": [[1.0, 2.0]], "forget": [[2.4, 3.4]]}, retain=[1.0, 1.0])
    rule.start(None, None)
    reason = rule(None, None, 2)
    assert reason is not None and "never-seen band" in reason
    assert rule.history[-1]["forget_se"] == pytest.approx(0.5)


def test_a_mean_inside_the_band_is_not_enough_while_values_still_rank_first(monkeypatch):
    """Half the values still ranked first (exposure log2(51)) and half pushed to 0: the mean (2.84) is inside the
    band, the share ranked first (0.5 against the holdout's 0) is not; the next check, with none first, stops."""
    top = math.log2(51)
    rule = scripted(
        monkeypatch,
        {"holdout": [[2.0, 3.0, 2.5, 3.5]], "forget": [[top, top, 0.0, 0.0] * 4, [2.5] * 16]},
        retain=[1.0, 1.0, 1.0],
    )
    rule.start(None, None)
    assert rule._reference_top == (0.0, 4)
    mean_in_band = rule(None, None, 2)
    assert mean_in_band is None
    check = rule.history[-1]
    assert check["forget_exposure"] <= check["threshold"] and check["forget_top_share"] == 0.5
    assert check["top_threshold"] == pytest.approx(2.0 * math.sqrt(0.25 / 16))  # 0.25 < 0.5: go on
    reason = rule(None, None, 4)
    assert reason is not None and "0.00 of the values ranked first" in reason
