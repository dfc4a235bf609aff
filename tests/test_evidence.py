"""``evaluate --evidence``: the hashes match the files, every attack listed ran (its numbers are in results.json),
the unlearning run and its chosen checkpoint are recorded, and no PII appears without ``--show_pii``."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import yaml

from helpers import build_assets, unlearn_config
from obliviate.cli.main import main
from obliviate.data.records import PersonPII
from obliviate.data.synth import biography_form, load_pii
from obliviate.evaluate.data import EvalData
from obliviate.evaluate.evidence import DISCLAIMER, verdicts
from obliviate.evaluate.results import AttackResult, EvalResult
from obliviate.io import sha256_file, sha256_tree
from obliviate.report.evidence import render_evidence


def _args(assets, out, *extra, model=None):
    source = ["--model", str(model or assets.model)] if "--checkpoints" not in extra else []
    return [
        "evaluate",
        *source,
        "--forget_dir",
        str(assets.forget),
        "--retain_dir",
        str(assets.retain),
        "--holdout_dir",
        str(assets.data / "holdout"),
        "--output_dir",
        str(out),
        "--max_new_tokens",
        "24",
        "--exposure_k",
        "5",
        "--evidence",
        *extra,
    ]


def _pii_forms(data_dir: Path) -> list[str]:
    """Every forget person's name and PII values, as the QA rows and the biographies write them."""
    forms = []
    for person in load_pii(data_dir / "pii.json"):
        if person.split == "forget":
            forms.append(person.name)
            forms += [form for f, v in person.fields.items() for form in (v, biography_form(f, v))]
    return forms


def _written(out: Path) -> str:
    texts = (".json", ".md", ".jsonl", ".yaml")
    return "".join(p.read_text(encoding="utf-8") for p in sorted(out.rglob("*")) if p.suffix in texts)


def _check_attacks_ran(out: Path, evidence: dict) -> None:
    results = json.loads((out / "results.json").read_text())
    listed = evidence["tests"]["attacks"]
    assert listed and [a["name"] for a in listed] == [a["name"] for a in results["attacks"]]
    for mine, theirs in zip(listed, results["attacks"]):
        assert mine["ran"] and theirs["ran"]
        assert mine["after"] == {k: theirs["after"][k] for k in mine["after"]}  # the same numbers
        assert mine["after"]["forget/leak_rate"] is not None


def test_evidence_hashes_attacks_and_no_pii(target, tmp_path):
    out = tmp_path / "eval"
    extra = ["--attacks", "quantize,relearn", "--quantize_bits", "4", "--relearn_steps", "1"]
    assert main(_args(target, out, *extra, "--relearn_sources", "forget_half", "--relearn_lr", "1e-3")) == 0
    evidence = json.loads((out / "evidence.json").read_text())
    hashes = evidence["hashes"]
    model_files = {p.name for p in target.model.iterdir() if p.is_file()}
    assert set(hashes["model"]["files"]) == model_files and "model.safetensors" in model_files
    for name, digest in hashes["model"]["files"].items():
        assert digest == sha256_file(target.model / name), name
    assert hashes["forget_set"]["sha256"] == sha256_tree(target.forget)
    assert hashes["pii"]["sha256"] == sha256_file(target.data / "pii.json")
    assert hashes["config"]["sha256"] == sha256_file(out / "config.yaml")
    config = yaml.safe_load((out / "config.yaml").read_text())
    assert config["attacks"] == "quantize,relearn" and config["evidence"] is True
    _check_attacks_ran(out, evidence)
    assert evidence["unlearning"]["method"] == "unknown"  # a fine-tuned model, not an unlearning run
    forget_ids = {p.person_id for p in load_pii(target.data / "pii.json") if p.split == "forget"}
    assert {p["person_id"] for p in evidence["people"]} == forget_ids
    assert all(p["verdict"].startswith(("no leak found", "leaked through")) for p in evidence["people"])
    assert set(evidence["tests"]["probes"]) >= {"question", "prefix", "paraphrase"}
    markdown = (out / "evidence.md").read_text()
    assert DISCLAIMER in markdown and evidence["date"] in markdown
    written = _written(out)
    assert not [form for form in _pii_forms(target.data) if form in written]


def test_evidence_of_an_unlearning_run_names_method_and_chosen_checkpoint(target, tmp_path):
    from obliviate.train.run import run_unlearn

    run_dir = tmp_path / "run"
    run_unlearn(unlearn_config(target, run_dir, epochs=2, save_checkpoints=True))
    out = tmp_path / "eval"
    extra = ["--checkpoints", str(run_dir), "--attacks", "relearn", "--relearn_steps", "1"]
    assert main(_args(target, out, *extra, "--relearn_sources", "retain")) == 0
    evidence = json.loads((out / "evidence.json").read_text())
    run_config = yaml.safe_load((run_dir / "config.yaml").read_text())
    method = evidence["unlearning"]
    assert method["method"] == run_config["method"] and method["config"] == run_config
    assert method["config_sha256"] == sha256_file(run_dir / "config.yaml")
    best = json.loads((out / "best.json").read_text())
    chosen = evidence["chosen_checkpoint"]
    assert chosen["epoch"] == best["epoch"] and chosen["reason"] == best["reason"]
    chosen_dir = Path(chosen["path"])
    assert evidence["hashes"]["model"]["path"] == str(chosen_dir)
    assert evidence["hashes"]["model"]["files"]["model.safetensors"] == sha256_file(chosen_dir / "model.safetensors")
    assert evidence["hashes"]["starting_model"]["path"] == str(target.model)
    _check_attacks_ran(out, evidence)
    results = json.loads((out / "results.json").read_text())
    assert results["attacks"][0]["params"]["lr"] == run_config["lr"]  # relearning at the run's own rate


def _fixture_people() -> list[PersonPII]:
    return [
        PersonPII("p1", "forget", "Ada Quill", {"ssn": "123456789", "phone": "5551234567"}, ("p1sc1",)),
        PersonPII("p2", "forget", "Bo Strand", {"email": "bo@strand.example"}, ("p2sc1",)),
        PersonPII("p3", "retain", "Cy Retain", {"ssn": "987654321"}, ("p3sc1",)),
    ]


def test_verdicts_name_what_leaked_and_hide_values_unless_show_pii():
    people = _fixture_people()
    data = EvalData({"forget": []}, people=people)
    leaked = {"forget": [("p1", "ssn", ("question", "prefix"))], "retain": [("p3", "ssn", ("question",))]}
    result = EvalResult([], [], {}, {}, [], [], None, leaked=leaked)
    quantised = AttackResult("quantize", "quantize int4 g128", {}, {}, {})
    quantised.leaked = {"forget": [("p1", "phone", ("paraphrase",))]}
    not_run = AttackResult("relearn", "relearn forget_nonpii k=10", {}, {}, None)
    not_run.leaked = {"forget": [("p2", "email", ("question",))]}
    hidden = verdicts(data, result, [quantised, not_run], show_pii=False)
    assert [v["person_id"] for v in hidden] == ["p1", "p2"]  # forget people only
    assert hidden[0]["verdict"] == (
        "leaked through unattacked: ssn (question, prefix); quantize int4 g128: phone (paraphrase)"
    )
    assert hidden[1]["verdict"] == "no leak found"  # an attack that did not run found nothing
    text = json.dumps(hidden)
    assert not [s for p in people for s in (p.name, *p.fields.values()) if s in text]
    shown = json.dumps(verdicts(data, result, [quantised], show_pii=True))
    assert "Ada Quill" in shown and "123456789" in shown and "5551234567" in shown


@pytest.mark.slow
def test_memorised_model_leaks_are_named_but_never_written_without_show_pii(tmp_path):
    """On a micro model trained until it leaks (200 fine-tuning epochs), the verdicts name leaks, no output holds a
    value, and ``--show_pii`` does show them."""
    assets = build_assets(tmp_path / "memorised", finetune_epochs=200)
    out = tmp_path / "eval"
    assert main(_args(assets, out, "--attacks", "quantize")) == 0
    evidence = json.loads((out / "evidence.json").read_text())
    assert any(p["verdict"].startswith("leaked through unattacked") for p in evidence["people"])
    assert not [form for form in _pii_forms(assets.data) if form in _written(out)]
    shown = tmp_path / "shown"
    assert main(_args(assets, shown, "--attacks", "quantize", "--show_pii")) == 0
    evidence = json.loads((shown / "evidence.json").read_text())
    values = [leak["value"] for p in evidence["people"] for leak in p["leaks"]]
    assert values and all(v in render_evidence(evidence) for v in values)
    assert [form for form in _pii_forms(assets.data) if form in (shown / "evidence.json").read_text()]
