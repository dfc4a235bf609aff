"""``evaluate --attacks``: quantisation bounds, relearning sources and steps, the model on disk untouched, and the
numbers in results.json, the report and the plot."""

from __future__ import annotations

import json
import struct

import pytest
import torch

from helpers import hash_dir
from obliviate.cli.main import main
from obliviate.config import EvaluateConfig
from obliviate.data.pii_match import find_value
from obliviate.errors import ConfigError
from obliviate.evaluate import attacks as attacks_module
from obliviate.evaluate import relearn
from obliviate.evaluate.attacks import AttackOptions, run_attacks, weight_change
from obliviate.evaluate.data import load_eval_data, people_of
from obliviate.evaluate.quantize import quantize_model, quantize_tensor, quantized_modules
from obliviate.evaluate.suite import EvalOptions, evaluate_model
from obliviate.models.load import load_model
from obliviate.report.attacks import draw_attack_leaks

OPTIONS = EvalOptions(batch_size=32, max_new_tokens=12, max_length=64, show_progress=False, exposure_k=5)


def _data(assets):
    return load_eval_data(assets.forget, assets.retain, assets.data / "holdout")


@pytest.mark.parametrize("cols", [300, 128, 32])
def test_quantisation_error_is_within_half_a_step_and_4_bit_moves_more(cols):
    torch.manual_seed(0)
    weight = torch.randn(6, cols)
    weight[2] = 0.0  # an all-zero row stays zero
    errors = {}
    for bits in (8, 4):
        restored = quantize_tensor(weight, bits)
        qmax = 2 ** (bits - 1) - 1
        size = min(128, cols)
        for start in range(0, cols, size):  # groups of 128 along the row; a shorter row is one group
            group, back = weight[:, start : start + size], restored[:, start : start + size]
            scale = group.abs().amax(dim=1, keepdim=True) / qmax
            assert ((back - group).abs() <= scale / 2 + 1e-6).all()
            levels = torch.where(scale > 0, back / scale.clamp_min(1e-12), torch.zeros_like(back))
            assert torch.allclose(levels, levels.round(), atol=1e-4)  # every weight sits on its group's grid
            assert levels.abs().max() <= qmax + 1e-4
        assert (restored[2] == 0).all()
        errors[bits] = (restored - weight).norm() / weight.norm()
    assert errors[4] > 4 * errors[8] > 0


def test_quantised_copy_leaves_the_model_and_its_head_alone(target):
    model, _ = load_model(target.model)
    before = {name: p.detach().clone() for name, p in model.named_parameters()}
    copies = {bits: quantize_model(model, bits) for bits in (8, 4)}
    for name, param in model.named_parameters():
        assert torch.equal(param, before[name]), name
    for copy, change in copies.values():
        layers = dict(quantized_modules(copy))
        assert change["layers"] == len(layers) > 0
        for name, param in copy.named_parameters():
            module = name.rsplit(".", 1)[0]
            moved = not torch.equal(param, before[name])
            assert moved == (module in layers and name.endswith("weight")), name  # embeddings / head untouched
    assert copies[4][1]["relative_change"] > copies[8][1]["relative_change"] > 0


def test_forget_half_trains_on_half_and_probes_only_the_other_half(target):
    data = _data(target)
    source = relearn.forget_half(data, seed=0)
    trained = {r.id for r in source.records}
    held = {r.id for r in source.probe.splits["forget"]}
    assert trained and held and not trained & held
    assert trained | held == {r.id for r in data.splits["forget"]}
    assert source.probe.splits["retain"] == data.splits["retain"]
    originals = {p.person_id: p for p in people_of(data.people, "forget")}
    probed = people_of(source.probe.people, "forget")
    assert probed and {p.person_id for p in probed} == set(originals)
    for person in probed:
        own = [r for r in source.records if r.id in originals[person.person_id].records]
        assert 0 < len(own) < len(originals[person.person_id].records)
        assert set(person.records) <= held
        for name, value in person.fields.items():  # no probed value appears in anything trained on
            assert not any(find_value(name, value, r.text) for r in source.records)
        assert set(person.fields) < set(originals[person.person_id].fields)


def test_non_pii_sentences_hold_no_value(target):
    data = _data(target)
    source = relearn.nonpii_sentences(data)
    assert source.records and all(r.kind == "document" for r in source.records)
    people = people_of(data.people, "forget")
    for record in source.records:
        for person in people:
            assert not any(find_value(n, v, record.input) for n, v in person.fields.items()), record.input
    bare = load_eval_data(target.forget, pii_path=None)
    bare.people = []
    assert relearn.nonpii_sentences(bare).note  # no known values: the source says it is unavailable


def test_relearning_moves_a_copy_step_by_step(target):
    model, tokenizer = load_model(target.model)
    before = {name: p.detach().clone() for name, p in model.named_parameters()}
    records = relearn.retain_source(_data(target)).records
    seen = []
    for k, copy in relearn.relearn(model, tokenizer, records, (3, 1), lr=1e-3, batch_size=4, max_length=64, seed=0):
        assert not copy.training
        seen.append((k, weight_change(model, copy)["relative_change"]))
    assert [k for k, _ in seen] == [1, 3] and 0 < seen[0][1] < seen[1][1]
    for name, param in model.named_parameters():
        assert torch.equal(param, before[name]), name


def test_relearn_forget_half_evaluates_only_the_held_back_half(target, monkeypatch):
    model, tokenizer = load_model(target.model)
    data = _data(target)
    calls = []

    def recording(model_, tokenizer_, data_, options, oracle=None, mmlu_acc=None):
        calls.append([r.id for r in data_.splits["forget"]])
        return evaluate_model(model_, tokenizer_, data_, options, oracle=oracle, mmlu_acc=mmlu_acc)

    monkeypatch.setattr(attacks_module, "evaluate_model", recording)
    unattacked = evaluate_model(model, tokenizer, data, OPTIONS)
    attack = AttackOptions(attacks=("relearn",), relearn_steps=(2,), relearn_sources=("forget_half",), relearn_lr=1e-3)
    (result,) = run_attacks(model, tokenizer, data, OPTIONS, attack, unattacked)
    source = relearn.forget_half(data, seed=OPTIONS.seed)
    held = [r.id for r in source.probe.splits["forget"]]
    assert calls == [held, held]  # the unattacked model on the held-back half, then the relearned copy
    assert result.ran and result.params["steps"] == 2 and result.details["relative_change"] > 0
    assert result.leak["forget"]["n_pairs"] == result.details["probed_pairs"]
    assert result.leak["forget"]["n_pairs"] < unattacked.leak["forget"]["n_pairs"]


def _evaluate_args(assets, out, *extra):
    return [
        "evaluate",
        "--model",
        str(assets.model),
        "--forget_dir",
        str(assets.forget),
        "--retain_dir",
        str(assets.retain),
        "--holdout_dir",
        str(assets.data / "holdout"),
        "--output_dir",
        str(out),
        "--max_new_tokens",
        "12",
        "--exposure_k",
        "5",
        *extra,
    ]


def test_attack_numbers_land_in_results_report_and_plot(target, tmp_path):
    before = hash_dir(target.model)
    out = tmp_path / "eval"
    extra = ["--attacks", "relearn,quantize", "--relearn_steps", "1,2", "--relearn_sources", "forget_half,retain"]
    assert main(_evaluate_args(target, out, *extra, "--quantize_bits", "4", "--relearn_lr", "1e-3")) == 0
    assert hash_dir(target.model) == before
    results = json.loads((out / "results.json").read_text())
    names = [a["name"] for a in results["attacks"]]
    assert names == [
        "relearn forget_half k=1",
        "relearn forget_half k=2",
        "relearn retain k=1",
        "relearn retain k=2",
        "quantize int4 g128",
    ]
    for attack in results["attacks"]:
        assert attack["ran"] and attack["after"]["forget/leak_rate"] is not None
        assert attack["after"]["forget/exposure"] is not None  # exposure is measured on the attacked copy too
    quantised = results["attacks"][-1]
    assert quantised["before"] == results["summary"]  # beside the unattacked numbers of the same rows
    assert results["attacks"][0]["before"] != results["summary"]  # forget_half: the held-back half
    report = (out / "report.md").read_text()
    for attack in results["attacks"]:
        row = next(line for line in report.splitlines() if line.startswith(f"| {attack['name']} |"))
        leak = f"{attack['before']['forget/leak_rate']:.3f} → {attack['after']['forget/leak_rate']:.3f}"
        assert leak in row
    assert "attack_leak_rate.png" in report
    png = (out / "attack_leak_rate.png").read_bytes()
    assert png[:8] == b"\x89PNG\r\n\x1a\n" and struct.unpack(">II", png[16:24]) == (600, 400)


def test_plot_draws_before_and_after_of_each_attack_that_ran():
    attacks = [
        {"name": "a", "ran": True, "before": {"forget/leak_rate": 0.1}, "after": {"forget/leak_rate": 0.6}},
        {"name": "b", "ran": False, "before": {"forget/leak_rate": 0.1}, "after": None},
        {"name": "c", "ran": True, "before": {"forget/leak_rate": 0.1}, "after": {"forget/leak_rate": 0.3}},
    ]
    (ax,) = draw_attack_leaks(attacks).axes
    assert [round(p.get_height(), 3) for p in ax.patches] == [0.1, 0.6, 0.1, 0.3]
    assert [t.get_text() for t in ax.get_xticklabels()] == ["a", "c"]


@pytest.mark.parametrize(
    ("flag", "value", "message"),
    [
        ("--attacks", "relearn,prune", "expected a comma list of relearn, quantize"),
        ("--quantize_bits", "3", "expected a comma list of 8, 4"),
        ("--relearn_sources", "forget", "forget_half, retain, forget_nonpii"),
        ("--relearn_steps", "10,-1", "positive integers"),
    ],
)
def test_bad_attack_settings_are_one_line_errors(target, tmp_path, capsys, flag, value, message):
    out = tmp_path / "eval"
    assert main(_evaluate_args(target, out, "--attacks", "relearn", flag, value)) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("obliviate: error:") and message in err and "\n" not in err
    assert not out.exists()


def test_config_parses_comma_lists():
    config = EvaluateConfig(output_dir="o", forget_dir="f", model="m", attacks=" quantize , relearn")
    options = attacks_module.attack_options(config, None)
    assert options.attacks == ("quantize", "relearn") and options.quantize_bits == (8, 4)
    assert options.relearn_steps == (10, 50) and options.relearn_lr == attacks_module.RELEARN_LR
    assert attacks_module.attack_options(EvaluateConfig(output_dir="o", forget_dir="f", model="m"), None) is None
    with pytest.raises(ConfigError, match="relearn, quantize"):
        EvaluateConfig(output_dir="o", forget_dir="f", model="m", attacks="quantise")


def test_a_source_the_data_lacks_is_reported_unavailable_not_faked(target):
    model, tokenizer = load_model(target.model)
    data = load_eval_data(target.forget)  # no retain set
    unattacked = evaluate_model(model, tokenizer, data, OPTIONS)
    attack = AttackOptions(attacks=("relearn",), relearn_steps=(10, 50), relearn_sources=("retain",))
    results = run_attacks(model, tokenizer, data, OPTIONS, attack, unattacked)
    assert [r.name for r in results] == ["relearn retain k=10", "relearn retain k=50"]
    for result in results:
        entry = result.to_json()
        assert not entry["ran"] and entry["after"] is None and "unavailable" in entry["note"]
        assert entry["before"] == unattacked.summary()
