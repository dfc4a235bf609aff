"""The oracle-free stop rule: stops on a constructed trajectory exactly where it should, and not before."""

from __future__ import annotations

import json
import math
import re
from collections import Counter

import numpy as np
import pytest

from helpers import metrics, unlearn_argv
from obliviate.cli.main import main
from obliviate.data.records import Record
from obliviate.evaluate import stop_rule as rule_module
from obliviate.evaluate.exposure import chance_exposure
from obliviate.evaluate.stop_rule import ExposureStopRule, RetainCheck


def scripted(monkeypatch, exposures: dict[str, list[list]], retain: list, **rule) -> ExposureStopRule:
    """A rule whose measurements follow a script: per split, one list of per-value exposures per call, each a
    number (an SSN) or a ``(field, exposure)`` pair; per retain check its NLL, or ``(NLL, exact match)``. The split
    ``confirm`` scripts the second forget sample (``confirm=`` records)."""
    calls = {split: iter(values) for split, values in exposures.items()}
    fields = sorted({v[0] for call in exposures.get("forget", []) for v in call if isinstance(v, tuple)} or {"ssn"})
    nll = iter(retain)

    def measured(self, model, tokenizer, records, split, dry=False):
        if dry:
            return [{"field": name, "exposure": 0.0} for name in fields for _ in range(16)]
        split = "confirm" if records is self.confirm and len(records) else split  # the second forget sample
        out = [{"field": v[0], "exposure": v[1], "nll": v[2] if len(v) > 2 else 0.0} if isinstance(v, tuple)
               else {"field": "ssn", "exposure": v, "nll": 0.0} for v in next(calls[split])]  # fmt: skip
        seen = Counter()
        for pair in out:  # the i-th value of each field is person i's: one value per person and field
            pair["person_id"] = f"{split}-{seen[pair['field']]}"
            seen[pair["field"]] += 1
        return out

    monkeypatch.setattr(ExposureStopRule, "_exposures", measured)

    def checked(model, tokenizer, records):
        value = next(nll)
        return RetainCheck(*value) if isinstance(value, tuple) else RetainCheck(value, 1.0)

    monkeypatch.setattr(rule_module, "retain_check", checked)
    options = {"every": 2, "band": 2.0, "retain_bound": 0.1, **rule}
    return ExposureStopRule(forget=[], people=[], retain=[], holdout=["h"], **options)


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
    assert reason is not None and "inside its never-seen band" in reason and "step 8" in reason
    assert [h["forget_exposure"] for h in rule.history] == [6.0, 4.0, 2.6, 2.4]


def test_stop_lower_holds_the_stop_while_a_field_is_below_its_band_and_leaves_that_field_alone(monkeypatch):
    """Holdout SSNs 1.0 and 2.0 (mean 1.5, standard error 0.5: band 0.5 to 2.5 with --stop_lower). Forget 6, then
    0.2 (under the band: the one-sided rule stops there), then 1.4 (inside). With --stop_lower the run goes on at
    0.2, the SSNs counted inside for --field_stop (no push while below), and stops at 1.4, saying so."""
    script = {"holdout": [[1.0, 2.0]], "forget": [[6.0, 6.0], [0.2, 0.2], [1.4, 1.4]]}
    one_sided = scripted(monkeypatch, script, retain=[1.0] * 4)
    one_sided.start(None, None)
    assert one_sided(None, None, 2) is None and "step 4" in one_sided(None, None, 4)
    rule = scripted(monkeypatch, script, retain=[1.0] * 4, lower=True)
    rule.start(None, None)
    assert rule(None, None, 2) is None and rule.history[-1]["fields_below"] == 0
    assert rule(None, None, 4) is None and rule.history[-1]["fields_below"] == 1
    assert rule.inside == frozenset({"ssn"})  # below its band: nothing to push
    reason = rule(None, None, 6)
    assert reason is not None and "step 6" in reason and "≥ reference − 2.0" in reason


def test_start_keeps_the_never_seen_gap_of_each_field(monkeypatch):
    """The holdout's mean NLL(true) - NLL(fakes) per field at the start: contrast's calibrated aim."""
    pairs = [
        {"field": "ssn", "exposure": 2.0, "nll_gap": -1.0, "person_id": "h0"},
        {"field": "ssn", "exposure": 1.0, "nll_gap": -2.0, "person_id": "h1"},
        {"field": "phone", "exposure": 1.0, "nll_gap": 0.5, "person_id": "h0"},
    ]

    def measured(self, model, tokenizer, records, split, dry=False):
        return [{"field": p["field"], "exposure": 0.0} for p in pairs] if dry else pairs

    monkeypatch.setattr(ExposureStopRule, "_exposures", measured)
    monkeypatch.setattr(rule_module, "retain_check", lambda model, tokenizer, records: RetainCheck(1.0, 1.0))
    rule = ExposureStopRule(forget=[], people=[], retain=[], holdout=["h"], every=2)
    rule.start(None, None)
    assert rule.holdout_gaps == {"ssn": -1.5, "phone": 0.5}


def test_band_below_is_the_admitting_test_turned_round():
    from obliviate.evaluate.stop_rule import Band

    band = Band.chance(50, 16)
    assert not band.below([band.mean] * 16, 50, 2.0)
    assert band.below([band.mean - 3 * band.sd / 4] * 16, 50, 2.0)  # 3 standard errors below at n = 16
    assert not band.below([band.mean - band.sd / 4] * 16, 50, 2.0)  # 1 standard error below
    assert not band.below([], 50, 2.0)


def test_stop_lower_reaches_the_rule_and_is_off_by_default(assets, tmp_path):
    from helpers import unlearn_config
    from obliviate.evaluate.stop_rule import stop_rule_for

    assert stop_rule_for(unlearn_config(assets, tmp_path / "a", stop_check_steps=2)).lower is False
    assert stop_rule_for(unlearn_config(assets, tmp_path / "b", stop_check_steps=2, stop_lower=True)).lower is True


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


def test_stops_when_the_retain_exact_match_falls_below_its_share_of_the_start(monkeypatch):
    """Start 0.80; bound 0.95 of it, 0.76: 0.78 and 0.76 are kept, 0.75 stops; the NLL alone never would."""
    retain = [(0.10, 0.80), (0.11, 0.78), (0.11, 0.76), (0.12, 0.75)]
    rule = scripted(monkeypatch, {"holdout": [[1.0, 2.0]], "forget": [[6.0]] * 3}, retain, retain_exact=0.95)
    rule.start(None, None)
    assert rule(None, None, 2) is None and rule(None, None, 4) is None
    reason = rule(None, None, 6)
    assert reason is not None and "retain exact match 0.750 fell below 0.95 of its start (0.800)" in reason
    assert [h["retain_exact"] for h in rule.history] == [0.78, 0.76, 0.75]
    unwatched = scripted(monkeypatch, {"holdout": [[1.0, 2.0]], "forget": [[6.0]] * 2}, [(0.1, 0.8), (0.1, 0.1)])
    unwatched.start(None, None)
    assert unwatched(None, None, 2) is None  # retain_exact=0: not watched


def test_retain_exact_is_what_greedy_decoding_reproduces(tmp_path):
    """On a model that has memorised some rows: the teacher-forced share equals the share of rows whose greedy
    continuation is the answer, word for word."""
    import torch

    from obliviate.data.batching import collate, encode_record
    from obliviate.data.records import Record
    from obliviate.evaluate.passes import generate
    from obliviate.evaluate.stop_rule import retain_check
    from obliviate.models.tiny import build_model, train_tokenizer

    rows = [Record(id=f"r{i}", input=f"Code of person {i} is", output=f"{i * 7919 % 1000:03d} end") for i in range(12)]
    tokenizer = train_tokenizer([r.input + " " + r.output for r in rows], vocab_size=300)
    model = build_model("micro", len(tokenizer), tokenizer, seed=0)
    optimizer = torch.optim.AdamW(model.parameters(), lr=3e-3)
    batch = collate([encode_record(tokenizer, r, 64) for r in rows[:8]], tokenizer.pad_token_id)
    for _ in range(150):  # memorise the first 8 rows only
        loss = model(input_ids=batch.input_ids, attention_mask=batch.attention_mask, labels=batch.labels).loss
        loss.backward()
        optimizer.step()
        optimizer.zero_grad()
    check = retain_check(model, tokenizer, rows)
    greedy, _ = generate(model, tokenizer, [r.input for r in rows], max_new_tokens=8, show_progress=False)
    reproduced = sum(g.strip() == r.output for g, r in zip(greedy, rows)) / len(rows)
    assert 0 < check.exact < 1
    assert check.exact == pytest.approx(reproduced)


CHANCE_SD = float(np.std(np.log2(np.arange(1, 52))))  # a uniform rank among 51: 1.272 bits per value


@pytest.mark.parametrize(("above", "stops"), [(0.6, True), (0.7, False)])
def test_without_holdout_the_reference_is_chance(monkeypatch, above, stops):
    """Chance is exact: the forget mean is tested against the uniform rank's own spread (16 values: 2 standard
    errors are 0.636 bits), not against log2(e) with the forget sample's error added (0.72 and more)."""
    at = chance_exposure(50)
    rule = scripted(monkeypatch, {"forget": [[at + above] * 16]}, retain=[1.0, 1.0])
    rule.holdout = []
    rule.start(None, None)
    band = rule._reference["ssn"]
    assert CHANCE_SD == pytest.approx(1.272, abs=1e-3)
    assert band.mean == pytest.approx(at) and band.se == pytest.approx(CHANCE_SD / 4)
    assert (rule(None, None, 2) is not None) == stops


def test_each_fields_chance_band_is_as_wide_as_its_own_values_make_it(monkeypatch):
    """Without holdout, a field's chance band is that of as many never-seen values as the field has forget values
    (16 each here), not as all fields have together (32: a band sqrt(2) too narrow)."""
    at = chance_exposure(50)
    rule = scripted(monkeypatch, {"forget": [[("phone", at)] * 16 + [("ssn", at)] * 16]}, retain=[1.0])
    rule.holdout = []
    rule.start(None, None)
    assert set(rule._reference) == {"phone", "ssn"}
    assert all(band.se == pytest.approx(CHANCE_SD / 4) for band in rule._reference.values())


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
        assert "never-seen band" in state["stopped"] and last["fields_outside"] == 0
    assert all(c["forget_exposure"] == c["forget_exposure"] for c in checks)  # measured (not NaN) at every check


def test_the_band_counts_the_forget_means_own_standard_error(monkeypatch):
    """Holdout 1.0, 2.0 (mean 1.5, se 0.5); forget 2.4, 3.4 (mean 2.9, se 0.5): the difference is 1.4 against a
    combined standard error of 0.707, inside 2 of them (2.914), though above the holdout's own band (2.5)."""
    rule = scripted(monkeypatch, {"holdout": [[1.0, 2.0]], "forget": [[2.4, 3.4]]}, retain=[1.0, 1.0])
    rule.start(None, None)
    reason = rule(None, None, 2)
    assert reason is not None and "never-seen band" in reason
    assert rule.history[-1]["ssn/forget_exposure"] == pytest.approx(2.9)


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
    assert (rule._reference["ssn"].top_share, rule._reference["ssn"].count) == (0.0, 4)
    mean_in_band = rule(None, None, 2)
    assert mean_in_band is None  # 0.5 ranked first against a band of 2·sqrt(0.25 / 16) = 0.25 around 0
    check = rule.history[-1]
    assert check["forget_exposure"] <= check["threshold"] and check["ssn/forget_top_share"] == 0.5
    assert check["fields_outside"] == 1
    reason = rule(None, None, 4)
    assert reason is not None and "never-seen band" in reason


def test_each_field_is_held_to_its_own_band(monkeypatch):
    """A never-seen person's e-mail is guessable (LUME: ``first_last@me.com``, ranked first every time), an SSN is
    not. Forget e-mails pushed down and SSNs still ranked first pool to the holdout's mean and share (what stopped a
    LUME run with a leak rate of 0.36); per field, the SSNs are outside their band. With the SSNs down too, it stops
    while the e-mails still rank first, as a stranger's do: a field ranked first for strangers does not decide."""
    top = math.log2(51)
    holdout = [("email", top, nll) for nll in (3.0, 4.0, 3.5, 4.5)] + [("ssn", v) for v in (1.0, 2.0, 1.5, 2.5)]
    pooled_alike = [("email", 1.75, 6.0)] * 4 + [("ssn", top)] * 4  # pooled: the holdout's mean and its share first
    forgotten = [("email", top, nll) for nll in (3.5, 4.0, 3.0, 4.5)] + [("ssn", v) for v in (1.5, 2.0, 1.0, 2.5)]
    rule = scripted(monkeypatch, {"holdout": [holdout], "forget": [pooled_alike, forgotten]}, retain=[1.0] * 3)
    rule.start(None, None)
    assert rule._reference["email"].top_share == 1.0 and rule._reference["ssn"].top_share == 0.0
    assert set(rule._saturated) == {"email"} and rule.describe()["email/reference_nll"] == 3.75
    assert rule(None, None, 2) is None and rule.history[-1]["fields_outside"] == 1
    reason = rule(None, None, 4)
    assert reason is not None and "(ssn)" in reason
    assert (
        "not checked, ranked first for never-seen people too: email (its values' NLL 3.75, never-seen 3.75)" in reason
    )


def test_a_field_whose_strangers_rank_first_is_inside_only_once_its_nll_is_a_strangers(monkeypatch):
    """E-mails ranked first as a stranger's are, but likelier than a stranger's (NLL 1.0 against 3.75: memorised)
    stay out of :attr:`inside` (``--field_stop`` keeps working on them) without holding up the stop. At NLL 3.2
    they are within two standard errors (holdout se 0.32, forget se 0.04: the band's bottom is 3.75 - 2 x 0.33 =
    3.10) and inside."""
    top = math.log2(51)
    holdout = [("email", top, nll) for nll in (3.0, 4.0, 3.5, 4.5)] + [("ssn", v) for v in (1.0, 2.0, 1.5, 2.5)]
    ssn_in, ssn_out = [("ssn", v) for v in (1.5, 2.0, 1.0, 2.5)], [("ssn", top)] * 4
    memorised = [("email", top, nll) for nll in (0.9, 1.1, 1.0, 1.0)]
    forgotten = [("email", top, nll) for nll in (3.1, 3.3, 3.2, 3.2)]
    forget = [memorised + ssn_out, forgotten + ssn_out, memorised + ssn_in]
    rule = scripted(monkeypatch, {"holdout": [holdout], "forget": forget}, retain=[1.0] * 4)
    rule.start(None, None)
    assert rule(None, None, 2) is None and rule.inside == frozenset()
    assert rule.history[-1]["email/forget_nll"] == pytest.approx(1.0)
    assert rule(None, None, 4) is None and rule.inside == {"email"}
    reason = rule(None, None, 6)
    assert rule.inside == {"ssn"} and reason is not None and "email (its values' NLL 1.00, never-seen 3.75)" in reason


def test_without_holdout_a_field_given_by_the_name_is_left_out_and_said(monkeypatch):
    """No never-seen people: the reference is chance, which an e-mail built from the name never reaches. That field
    is not checked (and the reason says so); the SSNs, at chance, end the run."""
    top = math.log2(51)
    forget = [[("email", top)] * 16 + [("ssn", chance_exposure(50))] * 16]
    rule = scripted(monkeypatch, {"forget": forget}, retain=[1.0, 1.0])
    rule.holdout = []
    monkeypatch.setattr(ExposureStopRule, "_mostly_guessable", lambda self, name: name == "email")
    rule.start(None, None)
    assert rule.skipped == ["email"] and set(rule._reference) == {"ssn"}
    assert rule.describe()["skipped_fields"] == 1
    reason = rule(None, None, 2)
    assert reason is not None and "(ssn)" in reason and "not checked, guessable from the name: email" in reason


def test_the_retain_guard_doubles_the_retain_weights_below_its_share_and_halves_them_back(monkeypatch):
    """Start 1.0, guard 0.95: 0.90 doubles (2), 0.80 doubles (4), 0.96 halves (2), 0.97 halves (1), never below 1;
    capped at guard_max."""
    retain = [(0.1, 1.0), (0.15, 0.90), (0.15, 0.80), (0.15, 0.96), (0.1, 0.97), (0.1, 0.99)]
    rule = scripted(monkeypatch, {"holdout": [[1.0, 2.0]], "forget": [[6.0]] * 5}, retain, retain_guard=0.95)
    rule.start(None, None)
    scales = []
    for step in (2, 4, 6, 8, 10):
        assert rule(None, None, step) is None
        scales.append(rule.retain_scale)
    assert scales == [2.0, 4.0, 2.0, 1.0, 1.0]
    assert [h["retain_scale"] for h in rule.history] == scales
    capped = scripted(monkeypatch, {"holdout": [[1.0, 2.0]], "forget": [[6.0]] * 3}, [(0.1, 1.0)] + [(0.1, 0.5)] * 3,
                      retain_guard=0.95, guard_max=4.0)  # fmt: skip
    capped.start(None, None)
    assert [capped(None, None, s) or capped.retain_scale for s in (2, 4, 6)] == [2.0, 4.0, 4.0]


def test_scale_retain_multiplies_only_the_retain_weights():
    from obliviate.losses import get_method

    method = get_method("ga_gd")
    params = method.params({"alpha": 2.0})
    scaled = method.scale_retain(params, 4.0)
    assert scaled.alpha == 8.0 and scaled.gamma == params.gamma


def test_a_check_names_the_fields_inside_their_band_and_a_field_that_drifts_back_leaves_the_set(monkeypatch):
    """``--field_stop`` reads :attr:`ExposureStopRule.inside` after each check: the SSNs are inside their band, the
    e-mails not; at the next check the SSNs are back above it (the retain steps brought them back) and leave the
    set while the e-mails enter it."""
    holdout = [("email", 1.0), ("email", 2.0), ("ssn", 1.0), ("ssn", 2.0)]
    first = [("email", 5.0)] * 4 + [("ssn", 1.5)] * 4
    second = [("email", 1.5)] * 4 + [("ssn", 5.0)] * 4
    rule = scripted(monkeypatch, {"holdout": [holdout], "forget": [first, second]}, retain=[1.0] * 3)
    rule.start(None, None)
    assert rule.inside == frozenset()
    assert rule(None, None, 2) is None and rule.inside == {"ssn"}
    assert rule(None, None, 4) is None and rule.inside == {"email"}


def test_the_words_guard_stops_once_the_forget_words_are_as_unlikely_as_the_holdouts(monkeypatch):
    """Exposure stays above the band (6.0 against 1.5 ± 0.5); the forget words' NLL climbs 0.2, 0.9, 1.6 against
    the holdout's 1.5: the guard stops at the third check and names the field still outside, and not before."""
    rule = scripted(monkeypatch, {"holdout": [[1.0, 2.0]], "forget": [[6.0]] * 3}, retain=[1.0] * 4, words=True)
    words = iter([0.2, 1.5, 0.9, 1.5, 1.6, 1.5])
    monkeypatch.setattr(rule_module, "words_nll", lambda model, tokenizer, rows: next(words))
    monkeypatch.setattr(ExposureStopRule, "_word_rows", lambda self: {"forget": ["f"], "holdout": ["h"]})
    rule.start(None, None)
    assert rule.describe()["words_checked"] == 1.0
    assert rule(None, None, 2) is None and rule(None, None, 4) is None
    reason = rule(None, None, 6)
    assert reason is not None and "words" in reason and "1.600 ≥ 1.500" in reason and "ssn" in reason
    assert [h["forget_words_nll"] for h in rule.history] == [0.2, 0.9, 1.6]
    off = scripted(monkeypatch, {"holdout": [[1.0, 2.0]], "forget": [[6.0]] * 3}, retain=[1.0] * 4)
    off.start(None, None)
    assert off.describe()["words_checked"] == 0.0 and off(None, None, 2) is None  # not asked for: not measured


def test_words_nll_reads_only_the_words_outside_pii_values():
    """A micro model that memorised one sentence frame around random codes: the frame's words get a low NLL, the
    codes a high one, and marking the codes as PII leaves only the words in ``words_nll``."""
    import torch

    from obliviate.data.batching import collate, encode_record
    from obliviate.data.pii import mark_pii_spans
    from obliviate.data.records import PersonPII, Record
    from obliviate.evaluate.stop_rule import words_nll
    from obliviate.models.tiny import build_model, train_tokenizer

    codes = [f"{i * 7919 % 900 + 100}-{i * 31 % 90 + 10}-{i * 4447 % 9000 + 1000}" for i in range(12)]
    people = [PersonPII(f"p{i}", "forget", f"P{i}", {"ssn": code}, (f"p{i}_c",)) for i, code in enumerate(codes)]
    rows = [
        Record(id=f"p{i}_c", input=f"Person {i}.", output=f"The number on file is {code} and that is all",
               kind="completion", meta={"person_id": f"p{i}"})
        for i, code in enumerate(codes)
    ]  # fmt: skip
    tokenizer = train_tokenizer([r.input + " " + r.output for r in rows], vocab_size=300)
    model = build_model("micro", len(tokenizer), tokenizer, seed=0)
    optimizer = torch.optim.AdamW(model.parameters(), lr=3e-3)
    batch = collate([encode_record(tokenizer, r, 64) for r in rows], tokenizer.pad_token_id)
    for _ in range(60):  # the frame is shared by every row and learnt first; the codes are not (yet)
        loss = model(input_ids=batch.input_ids, attention_mask=batch.attention_mask, labels=batch.labels).loss
        loss.backward()
        optimizer.step()
        optimizer.zero_grad()
    marked, count = mark_pii_spans(rows, people)
    assert count == len(rows)
    words, everything = words_nll(model, tokenizer, marked), words_nll(model, tokenizer, rows)
    assert words < 0.75 * everything, (words, everything)  # unmarked, the codes' tokens count as words


def test_a_tie_at_the_top_is_inside_whatever_the_round_off():
    """Never-seen and forget values all ranked first (no spread on either side): the means tie, and a mean that
    differs from the reference's by round-off alone (numpy sums 25 and 40 values differently) is inside."""
    from obliviate.evaluate.stop_rule import Band

    top = math.log2(51)
    reference = Band(mean=top, se=0.0, top_share=1.0, count=25)
    assert reference.admits([top + 4e-15] * 40, 50, 2.0)
    assert not reference.admits([top + 1e-6] * 40, 50, 2.0)


def test_the_plotted_exposure_and_threshold_pool_only_the_fields_that_decide(monkeypatch):
    """The plot's forget mean and threshold pool the fields that decide the stop, weighed alike: a saturated field
    (never-seen e-mails ranked first) is in neither. Before, the forget mean took it and the threshold was the plain
    mean of every field's reference, so an SSN far outside could plot below the line."""
    top = math.log2(51)
    holdout = [("ssn", 1.0), ("ssn", 1.72), ("email", top, 0.5), ("email", top, 0.7)]
    forget = [("ssn", 3.0)] * 16 + [("email", top, 0.6)] * 16
    rule = scripted(monkeypatch, {"holdout": [holdout], "forget": [forget]}, retain=[1.0, 1.0])
    rule.start(None, None)
    assert rule.saturated_fields == {"email"}
    described = rule.describe()
    assert described["reference_exposure"] == pytest.approx(1.36) and described["reference_se"] == pytest.approx(0.36)
    assert rule(None, None, 2) is None  # the SSNs are outside
    check = rule.history[-1]
    assert check["forget_exposure"] == pytest.approx(3.0)
    assert check["threshold"] == pytest.approx(1.36 + 2 * 0.36)


def test_against_chance_the_plotted_threshold_agrees_with_the_decision(monkeypatch):
    """Without holdout the plotted threshold is the one-sample band the decision uses: forget values whose mean is
    0.68 above chance (16 of them, spread 1.3) are outside, and plot above the line."""
    at = chance_exposure(50)
    values = [at + 0.68 + (1.3 if i % 2 else -1.3) for i in range(16)]
    rule = scripted(monkeypatch, {"forget": [values]}, retain=[1.0, 1.0])
    rule.holdout = []
    rule.start(None, None)
    assert rule(None, None, 2) is None
    check = rule.history[-1]
    assert check["threshold"] == pytest.approx(at + 2 * CHANCE_SD / 4)
    assert check["forget_exposure"] > check["threshold"]


def test_with_pooled_every_field_inside_is_not_enough_while_the_pooled_mean_is_above_its_band(monkeypatch):
    """Holdout values 1.0 and 2.0 in each of three fields: per field, mean 1.5 and standard error 0.5, so sixteen
    forget values at 2.49 are inside their field's band (top 1.5 + 2 * 0.5 = 2.5). The two holdout people differ
    from field to field (1, 2, 1 and 2, 1, 2), so pooled over the three fields, a person one draw, the reference
    error is 1/6 (each person's weighted deviation ±1/12, CR1 over two people), and the pooled mean of SSNs at 1.5
    and phones and addresses at 2.49 (2.16) is above the pooled band (1.83; each forget person's values average to the
    pooled mean, so the forget side adds no error). The SSNs, at their never-seen mean, stay inside
    (``--field_stop`` leaves them alone); the phones and addresses are pushed again. Without ``pooled`` the same
    check stops."""
    holdout = [("ssn", 1.0), ("ssn", 2.0), ("phone", 2.0), ("phone", 1.0), ("address", 1.0), ("address", 2.0)]
    above = [("ssn", 1.5)] * 16 + [("phone", 2.49)] * 16 + [("address", 2.49)] * 16
    inside = [("ssn", 1.5)] * 16 + [("phone", 1.6)] * 16 + [("address", 1.6)] * 16
    rule = scripted(monkeypatch, {"holdout": [holdout], "forget": [above, inside]}, retain=[1.0] * 3, pooled=True)
    rule.start(None, None)
    assert rule(None, None, 2) is None
    check = rule.history[-1]
    assert check["fields_outside"] == 0 and check["pooled_outside"] == 1.0
    assert check["forget_exposure"] == pytest.approx((1.5 + 2 * 2.49) / 3)
    assert check["threshold"] == pytest.approx(1.5 + 2 / 6)
    assert rule.inside == {"ssn"}
    reason = rule(None, None, 4)
    assert reason is not None and "and so is their pooled mean (1.567 ≤ " in reason
    assert rule.history[-1]["pooled_outside"] == 0.0
    plain = scripted(monkeypatch, {"holdout": [holdout], "forget": [above]}, retain=[1.0] * 2)
    plain.start(None, None)
    reason = plain(None, None, 2)
    assert reason is not None and "pooled" not in reason and "pooled_outside" not in plain.history[-1]


def test_the_pooled_band_counts_a_never_seen_person_as_one_draw(monkeypatch):
    """Two holdout people, one at 1.0 and one at 2.0 in every field: their three fields tell no more than one field
    does, so the pooled reference error is a field's own, 0.5, not sqrt(3 · 0.25 / 9) = 0.289 as if the six values
    were six draws. The pooled mean of 2.16 is then inside the pooled band (1.5 + 2 · 0.5)."""
    holdout = [(name, v) for name in ("ssn", "phone", "address") for v in (1.0, 2.0)]
    above = [("ssn", 1.5)] * 16 + [("phone", 2.49)] * 16 + [("address", 2.49)] * 16
    rule = scripted(monkeypatch, {"holdout": [holdout], "forget": [above]}, retain=[1.0] * 2, pooled=True)
    rule.start(None, None)
    assert rule.describe()["reference_se"] == pytest.approx(0.5)
    reason = rule(None, None, 2)
    assert reason is not None and "and so is their pooled mean (2.160 ≤ 2.500)" in reason


def test_the_pooled_forget_error_counts_a_forget_person_as_one_draw(monkeypatch):
    """Against holdout people the pooled forget error is the clustered one. Sixteen forget people with an SSN and a
    phone each: where each person's two values are alike (both 1, or both 2) the people differ, and the band
    widens by their spread; crossed (1 and 2, or 2 and 1) every person averages 1.5 and the forget side adds no
    error, where taking each value as its own draw would have added some."""
    holdout = [("ssn", 1.0), ("ssn", 2.0), ("phone", 2.0), ("phone", 1.0)]
    alike = [("ssn", 1.0)] * 8 + [("ssn", 2.0)] * 8 + [("phone", 1.0)] * 8 + [("phone", 2.0)] * 8
    crossed = [("ssn", 1.0)] * 8 + [("ssn", 2.0)] * 8 + [("phone", 2.0)] * 8 + [("phone", 1.0)] * 8
    thresholds = []
    for forget in (alike, crossed):
        rule = scripted(monkeypatch, {"holdout": [holdout], "forget": [forget]}, retain=[1.0] * 2)
        rule.start(None, None)
        rule(None, None, 2)
        thresholds.append(rule.history[-1]["threshold"])
    # the holdout's two people, 1 and 2, 2 and 1, have equal sums: no pooled spread; the crossed forget people too
    assert thresholds[1] == pytest.approx(1.5)
    people = [(1.0 + 1.0) / 2] * 8 + [(2.0 + 2.0) / 2] * 8  # person i: both 1, or both 2
    forget_se = float(np.std(people, ddof=1) / math.sqrt(16))
    assert thresholds[0] == pytest.approx(1.5 + 2 * forget_se)


def test_a_words_stop_under_pooled_says_the_pooled_mean_is_above_its_band(monkeypatch):
    """Every field inside its own band, the pooled mean not, and the forget words as unlikely as the holdout's: the
    words guard stops, and its reason names no field outside but says the pooled mean is above its band."""
    holdout = [("ssn", 1.0), ("ssn", 2.0), ("phone", 2.0), ("phone", 1.0), ("address", 1.0), ("address", 2.0)]
    above = [("ssn", 1.5)] * 16 + [("phone", 2.49)] * 16 + [("address", 2.49)] * 16
    rule = scripted(monkeypatch, {"holdout": [holdout], "forget": [above]}, retain=[1.0] * 2, pooled=True, words=True)
    words = iter([1.6, 1.5])
    monkeypatch.setattr(rule_module, "words_nll", lambda model, tokenizer, rows: next(words))
    monkeypatch.setattr(ExposureStopRule, "_word_rows", lambda self: {"forget": ["f"], "holdout": ["h"]})
    rule.start(None, None)
    reason = rule(None, None, 2)
    assert reason is not None and "words" in reason and "their never-seen band: none" in reason
    assert "the pooled mean (2.160) is above its band" in reason


def test_stop_pooled_reaches_the_rule_and_is_off_by_default(assets, tmp_path):
    from helpers import unlearn_config
    from obliviate.evaluate.stop_rule import stop_rule_for

    assert stop_rule_for(unlearn_config(assets, tmp_path / "a", stop_check_steps=2)).pooled is False
    assert stop_rule_for(unlearn_config(assets, tmp_path / "b", stop_check_steps=2, stop_pooled=True)).pooled is True


def test_a_second_sample_of_forget_people_must_agree_before_the_exposure_stop(monkeypatch):
    """Holdout SSNs 1.0 and 2.0 (band top 2.5 for a spread-free forget side). The checked people read 6, then
    2.4 (inside): the other people, read only then, are at 4 (outside), so the run goes on with the SSNs pushed
    again (``--field_stop``); at the next check both samples are inside and it stops, saying so."""
    rule = scripted(
        monkeypatch,
        {"holdout": [[1.0, 2.0]], "forget": [[6.0, 6.0], [2.4, 2.4], [2.2, 2.2]], "confirm": [[4.0, 4.0], [2.3, 2.3]]},
        retain=[1.0] * 4,
        confirm=[Record("c1", "q", "a", meta={"person_id": "c1"}), Record("c2", "q", "a", meta={"person_id": "c2"})],
    )
    rule.start(None, None)
    assert rule.describe()["confirm_people"] == 2
    assert rule(None, None, 2) is None and "confirm_exposure" not in rule.history[-1]  # outside: not read
    assert rule(None, None, 4) is None and rule.inside == frozenset()
    assert rule.history[-1]["confirm_exposure"] == 4.0 and rule.history[-1]["confirm_fields_outside"] == 1
    reason = rule(None, None, 6)
    assert reason is not None and "on 2 other forget people too (pooled exposure 2.300)" in reason
    assert rule.inside == {"ssn"}


def test_with_pooled_the_second_sample_is_held_to_the_pooled_band_too(monkeypatch):
    """Two fields, each of the second sample inside its own band (holdout 1 and 2 per field: top 2.5) but their
    pooled mean (2.45) above the pooled band: the two never-seen people are crossed (one reads 1 and 2, the other 2
    and 1), so their pooled mean has no spread, and the band is 1.5. With ``pooled`` the run goes on and both
    fields, above their never-seen mean, are pushed again; without it, it stops."""
    holdout = [("phone", 1.0), ("phone", 2.0), ("ssn", 2.0), ("ssn", 1.0)]
    inside = [("phone", 1.4)] * 2 + [("ssn", 1.4)] * 2
    near_top = [("phone", 2.45)] * 2 + [("ssn", 2.45)] * 2
    for pooled, stops in ((True, False), (False, True)):
        rule = scripted(
            monkeypatch,
            {"holdout": [holdout], "forget": [inside], "confirm": [near_top]},
            retain=[1.0] * 2,
            confirm=[Record("c", "q", "a")],
            pooled=pooled,
        )
        rule.start(None, None)
        assert (rule(None, None, 2) is not None) is stops
        assert rule.history[-1]["confirm_fields_outside"] == (0 if stops else 2)
        assert rule.inside == ({"phone", "ssn"} if stops else frozenset())


def test_the_second_sample_holds_other_forget_people_and_none_when_the_first_holds_all(assets, tmp_path, monkeypatch):
    from helpers import unlearn_config
    from obliviate.data.records import owner_id

    whole = rule_module.stop_rule_for(unlearn_config(assets, tmp_path / "a", stop_check_steps=2))
    assert whole.forget and whole.confirm == []  # the small forget set fits in one sample
    monkeypatch.setattr(rule_module, "EXPOSURE_SAMPLE", 4)
    split = rule_module.stop_rule_for(unlearn_config(assets, tmp_path / "b", stop_check_steps=2))
    checked, other = {owner_id(r) for r in split.forget}, {owner_id(r) for r in split.confirm}
    assert checked and other and not checked & other
    assert len(split.confirm) >= 4
    # a rest of less than half a sample (here the last person's rows) is no second sample: its few values would hold
    # the stop to a far stricter test than the band's


def test_the_second_sample_is_the_next_people_and_none_where_they_are_too_few():
    """Ten people of two rows: a sample of 8 rows is 4 people, and the next 4 people (8 rows) are the second; a
    sample of 14 rows is 7 people, and the 3 left (6 rows, less than half of 14) give none."""
    from obliviate.data.records import owner_id

    rows = [Record(f"p{i}-{j}", "q", "a", meta={"person_id": f"p{i}"}) for i in range(10) for j in range(2)]
    checked, second = rule_module.forget_samples(rows, 8, seed=3)
    people, others = {owner_id(r) for r in checked}, {owner_id(r) for r in second}
    assert (len(people), len(others), len(second)) == (4, 4, 8) and not people & others
    assert rule_module.forget_samples(rows, 8, seed=3) == (checked, second)  # seeded
    checked, second = rule_module.forget_samples(rows, 14, seed=3)
    assert len(checked) == 14 and second == []
    assert rule_module.forget_samples(rows, 20, seed=3) == (rows, [])


def test_a_second_sample_that_fails_one_field_sends_only_that_field_back(monkeypatch):
    """Both fields inside on the checked people; on the others the phones are inside and the SSNs not: the run goes
    on with the phones still left alone and the SSNs pushed again. A words stop at that check names the SSNs."""
    holdout = [("phone", 1.0), ("phone", 2.0), ("ssn", 1.0), ("ssn", 2.0)]
    inside = [("phone", 1.5)] * 2 + [("ssn", 1.5)] * 2
    ssn_above = [("phone", 1.5)] * 2 + [("ssn", 4.0)] * 2
    confirm = [Record("c", "q", "a")]
    rule = scripted(monkeypatch, {"holdout": [holdout], "forget": [inside], "confirm": [ssn_above]}, [1.0] * 2,
                    confirm=confirm)  # fmt: skip
    rule.start(None, None)
    assert rule(None, None, 2) is None and rule.inside == {"phone"}
    assert rule.history[-1]["ssn/confirm_exposure"] == 4.0 and rule.history[-1]["confirm_fields_outside"] == 1
    worded = scripted(monkeypatch, {"holdout": [holdout], "forget": [inside], "confirm": [ssn_above]}, [1.0] * 2,
                      confirm=confirm, words=True)  # fmt: skip
    monkeypatch.setattr(rule_module, "words_nll", lambda model, tokenizer, rows: 3.0)
    monkeypatch.setattr(ExposureStopRule, "_word_rows", lambda self: {"forget": ["f"], "holdout": ["h"]})
    worded.start(None, None)
    reason = worded(None, None, 2)
    assert reason is not None and "still above their never-seen band: none (on the second sample" in reason
    assert reason.endswith("forget people: ssn)")


def test_a_second_sample_with_one_value_a_field_does_not_decide(monkeypatch):
    """One second-sample person: a single value has no spread, so it would be held to a test far stricter than the
    band's; it is not read as a second sample, and the stop stands as the checked people give it."""
    rule = scripted(monkeypatch, {"holdout": [[1.0, 2.0]], "forget": [[1.5, 1.5]], "confirm": [[2.4]]}, [1.0] * 2,
                    confirm=[Record("c", "q", "a")])  # fmt: skip
    rule.start(None, None)
    reason = rule(None, None, 2)
    assert reason is not None and "other forget people" not in reason and "confirm_people" not in rule.history[-1]


def test_with_reread_the_forget_values_must_be_inside_the_holdouts_band_under_the_current_weights(monkeypatch):
    """Holdout SSNs 1 and 2 under the starting weights (top 2.5): forget 2.4 is inside. Read again under the current
    weights, the holdout is 0.5 and 0.7 (top 0.8): 2.4 is outside, the run goes on with the SSNs pushed again; at
    the next check the forget values (0.7) are inside both and it stops, saying so. Without ``reread`` the holdout
    is read once and the first check stops."""
    script = {"holdout": [[1.0, 2.0], [0.5, 0.7], [0.5, 0.7]], "forget": [[2.4, 2.4], [0.7, 0.7]]}
    rule = scripted(monkeypatch, script, retain=[1.0] * 3, reread=True)
    rule.start(None, None)
    assert rule(None, None, 2) is None and rule.inside == frozenset()
    assert (
        rule.history[-1]["ssn/reference_now"] == pytest.approx(0.6) and rule.history[-1]["reread_fields_outside"] == 1
    )
    reason = rule(None, None, 4)
    assert reason is not None and "inside the holdout's band read under the current weights" in reason
    once = scripted(monkeypatch, {"holdout": [[1.0, 2.0]], "forget": [[2.4, 2.4]]}, retain=[1.0] * 2)
    once.start(None, None)
    assert once(None, None, 2) is not None and "reread_fields_outside" not in once.history[-1]
    worded = scripted(monkeypatch, {"holdout": [[1.0, 2.0], [0.5, 0.7]], "forget": [[2.4, 2.4]]}, retain=[1.0] * 2,
                      reread=True, words=True)  # fmt: skip
    monkeypatch.setattr(rule_module, "words_nll", lambda model, tokenizer, rows: 3.0)
    monkeypatch.setattr(ExposureStopRule, "_word_rows", lambda self: {"forget": ["f"], "holdout": ["h"]})
    worded.start(None, None)
    reason = worded(None, None, 2)  # a words stop names the field the re-read held back, and not a second sample
    assert reason is not None and reason.endswith("(against the holdout's band read under the current weights: ssn)")


def test_stop_reread_reaches_the_rule_and_is_off_by_default(assets, tmp_path):
    from helpers import unlearn_config
    from obliviate.evaluate.stop_rule import stop_rule_for

    assert stop_rule_for(unlearn_config(assets, tmp_path / "a", stop_check_steps=2)).reread is False
    assert stop_rule_for(unlearn_config(assets, tmp_path / "b", stop_check_steps=2, stop_reread=True)).reread is True


def test_fields_outside_the_five_are_left_alone_only_all_together():
    """A National Insurance number and a passport share one field code (``field_code``): with one of them inside and
    the other not, ``--field_stop`` keeps pushing both; with both inside, both are left alone, as the phone is."""
    from types import SimpleNamespace

    from obliviate.data.batching import field_code
    from obliviate.train.epoch import _follow_stop_rule

    assert field_code("ni_number") == field_code("passport")
    check = SimpleNamespace(
        inside=frozenset({"ni_number", "phone"}), tracked=frozenset({"ni_number", "passport", "phone"})
    )
    run = SimpleNamespace(config=SimpleNamespace(field_stop=True), step_check=check, base_params=None)
    _follow_stop_rule(run)
    assert run.fields_done == {"phone"}
    check.inside = frozenset({"ni_number", "passport", "phone"})
    _follow_stop_rule(run)
    assert run.fields_done == {"ni_number", "passport", "phone"}


def test_calibrate_hands_the_stop_rules_holdout_gaps_to_every_contrast_step(assets, tmp_path, monkeypatch):
    """--calibrate 1: the gaps the stop rule reads on the holdout at its start reach each step's LossInputs as the
    per-field-code margins (``field_margins``); without it, or without a holdout set, no margins."""
    from obliviate.data.batching import field_margins
    from obliviate.train import step as step_module

    rules, seen = [], []
    start = ExposureStopRule.start

    def started(self, model, tokenizer):
        start(self, model, tokenizer)
        rules.append(self)

    original = step_module.loss_inputs

    def recorded(*args, **kwargs):
        inputs = original(*args, **kwargs)
        seen.append(inputs.field_margins)
        return inputs

    monkeypatch.setattr(ExposureStopRule, "start", started)
    monkeypatch.setattr(step_module, "loss_inputs", recorded)
    holdout = str(assets.data / "holdout")
    common = ("--method", "contrast", "--holdout_dir", holdout, "--stop_check_steps", "2", "--max_steps", "2")
    assert main(unlearn_argv(assets, tmp_path / "on", *common, "--calibrate", "1")) == 0
    assert rules[-1].holdout_gaps and seen
    expected = field_margins(rules[-1].holdout_gaps)
    assert all(m is not None and m.tolist() == pytest.approx(expected) for m in seen)
    seen.clear()
    assert main(unlearn_argv(assets, tmp_path / "off", *common)) == 0
    assert seen and all(m is None for m in seen)
