"""benchmarks/probe_cost_levers.py: the saliency mask and the rows ``--focus`` draws from."""

from __future__ import annotations

import sys
from pathlib import Path
from types import SimpleNamespace

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "benchmarks"))
import probe_cost_levers  # noqa: E402


def test_the_mask_keeps_each_tensors_top_share_by_forget_over_retain_importance_and_puts_the_gradients_back(assets):
    import torch

    from obliviate.data.batching import encode_record
    from obliviate.data.load import load_split
    from obliviate.models.load import load_model

    model, tokenizer = load_model(str(assets.model), dtype=torch.float32)
    for name, p in model.named_parameters():
        p.requires_grad_("mlp" in name)  # as contrast's preset trains them
    forget = [encode_record(tokenizer, r, 64) for r in load_split(str(assets.forget))]
    retain = [encode_record(tokenizer, r, 64) for r in load_split(str(assets.retain))]
    run = SimpleNamespace(model=model, tokenizer=tokenizer, forget=forget, retain=retain)
    pending = {id(p): torch.full_like(p, 0.5) for p in model.parameters() if p.requires_grad}
    for p in model.parameters():
        p.grad = pending.get(id(p))
    masks = probe_cost_levers._mask(run, 0.25)
    trained = [p for p in model.parameters() if p.requires_grad]
    assert [id(p) for p, _ in masks] == [id(p) for p in trained] and trained
    for p in model.parameters():  # the step's own gradients are untouched by the scoring passes
        assert (p.grad is None) if id(p) not in pending else torch.equal(p.grad, pending[id(p)])
    _, forget_scores = probe_cost_levers._importance(run, forget, len(forget))
    _, retain_scores = probe_cost_levers._importance(run, retain, 4 * len(forget))
    for (p, mask), f, r in zip(masks, forget_scores, retain_scores):
        assert set(mask.unique().tolist()) <= {0.0, 1.0}
        assert int(mask.sum()) >= max(1, int(0.25 * p.numel()))
        ratio = f / (r + 1e-30)
        if 0 < int(mask.sum()) < p.numel():
            assert ratio[mask.bool()].min() >= ratio[~mask.bool()].max()


def test_focus_draws_from_rows_with_a_value_outside_its_band_and_rows_without_values():
    from obliviate.data.batching import Encoded, field_code
    from obliviate.data.records import TEMPLATE_CODE

    ssn, phone = field_code("ssn"), field_code("phone")
    rows = [
        Encoded([5, 6, 7, 8], 1, False, (0, ssn, ssn, 0)),  # an SSN alone: done once SSNs are inside
        Encoded([5, 6, 7, 8], 1, False, (0, ssn, phone, TEMPLATE_CODE)),  # a phone still outside
        Encoded([5, 6, 7, 8], 1, False, (0, TEMPLATE_CODE, TEMPLATE_CODE, 0)),  # words only: never had a value
        Encoded([5, 6, 7, 8], 1, False, (0, ssn, TEMPLATE_CODE, 0)),  # its words go with its only value
    ]
    run = SimpleNamespace(
        forget=rows, tokenizer=SimpleNamespace(pad_token_id=0), fields_done=frozenset(), fields_waived=frozenset()
    )
    assert probe_cost_levers._active_rows(run) == [0, 1, 2, 3]
    run.fields_done = frozenset({"ssn"})
    assert probe_cost_levers._active_rows(run) == [1, 2]
    run.fields_done = frozenset({"ssn", "phone"})
    assert probe_cost_levers._active_rows(run) == [2]


def test_scaled_repairs_take_the_share_of_retain_steps_of_the_fields_still_outside():
    fields = {1, 2, 3, 4, 5}
    assert probe_cost_levers.repairs_wanted(15, fields, set()) == 15
    assert probe_cost_levers.repairs_wanted(15, fields, {1}) == 12
    assert probe_cost_levers.repairs_wanted(15, fields, {1, 2, 3, 4}) == 3
    assert probe_cost_levers.repairs_wanted(15, fields, fields) == 0
    assert probe_cost_levers.repairs_wanted(15, fields, {9}) == 15  # a done field no row holds changes nothing


def test_pooled_goes_on_while_the_pooled_mean_is_above_its_band_and_pushes_the_fields_above_their_mean(monkeypatch):
    import obliviate.train.epoch as epoch_module
    import obliviate.train.step as step_module
    from obliviate.evaluate.stop_rule import ExposureStopRule

    rebound = ("accumulate", "retain_step", "optimizer_step", "epoch_batches", "repaired", "_count_continued")
    for module, names in ((epoch_module, rebound), (step_module, ("repaired",))):
        for name in names:  # patch() rebinds these: monkeypatch puts them back after the test
            monkeypatch.setattr(module, name, getattr(module, name))
    reason = "forget exposure of every PII field (phone, ssn) is inside its never-seen band at step 96"
    monkeypatch.setattr(ExposureStopRule, "__call__", lambda self, model, tokenizer, step, due=None: reason)
    probe_cost_levers.patch(0.0, 1.0, False, pooled=True)
    rule = SimpleNamespace(
        history=[{"forget_exposure": 2.1, "threshold": 1.9, "ssn/forget_exposure": 1.0, "phone/forget_exposure": 2.0}],
        inside=frozenset({"ssn", "phone"}),
        _reference={"ssn": SimpleNamespace(mean=1.1), "phone": SimpleNamespace(mean=1.5)},
        saturated_fields=frozenset(),
    )
    assert ExposureStopRule.__call__(rule, None, None, 96) is None
    assert rule.inside == {"ssn"}  # the phones, inside their band but above the never-seen mean, are pushed again
    rule.inside = frozenset({"ssn", "phone"})
    rule.history[-1]["threshold"] = 2.5
    assert ExposureStopRule.__call__(rule, None, None, 192) == reason
    assert rule.inside == {"ssn", "phone"}


def test_live_reference_measures_the_band_again_at_each_check_and_keeps_the_retain_start(monkeypatch):
    import obliviate.train.epoch as epoch_module
    import obliviate.train.step as step_module
    from obliviate.evaluate.stop_rule import ExposureStopRule

    rebound = ("accumulate", "retain_step", "optimizer_step", "epoch_batches", "repaired", "_count_continued")
    for module, names in ((epoch_module, rebound), (step_module, ("repaired",))):
        for name in names:
            monkeypatch.setattr(module, name, getattr(module, name))
    seen = []
    monkeypatch.setattr(ExposureStopRule, "__call__", lambda self, model, tokenizer, step, due=None: seen.append(step))
    probe_cost_levers.patch(0.0, 1.0, False, live_reference=True)

    def start(model, tokenizer):  # what ExposureStopRule.start does to the state the wrapper must keep
        rule.started += 1
        rule._reference, rule._retain_start, rule._words = {"ssn": rule.started}, "remeasured", None

    rule = SimpleNamespace(_reference={"ssn": 0}, every=96, _retain_start="at the start", _words="rows", started=0)
    rule.start = start
    ExposureStopRule.__call__(rule, None, None, 97)
    assert rule.started == 0 and seen == [97]  # no check due: nothing measured
    ExposureStopRule.__call__(rule, None, None, 192)
    assert rule.started == 1 and rule._reference == {"ssn": 1} and seen == [97, 192]
    assert rule._retain_start == "at the start" and rule._words == "rows"
    ExposureStopRule.__call__(rule, None, None, 5, due=True)  # the loop's cadence, where cycles differ in length
    assert rule.started == 2
