"""``evaluate --evidence``: a record of what was tested for a deletion request, for a reviewer to read and check.

``evidence.json`` (and ``evidence.md``, its rendering by :mod:`obliviate.report.evidence`) holds: sha256 of the
evaluated weights (and of the model the run started from, or ``--base_model``), of the forget set and its
``pii.json``, and of this evaluation's resolved config (written beside it as ``config.yaml``); the unlearning method
and its resolved config when the model is an obliviate run or checkpoint; the checkpoint chosen and why; every probe
and attack with its numbers (the same numbers as ``results.json``); a verdict per forget person; the thresholds; the
date and the obliviate version. Values and names are left out unless ``--show_pii``.
"""

from __future__ import annotations

import datetime
from pathlib import Path
from typing import Any

from obliviate.data.pii import find_pii_json
from obliviate.evaluate.data import EvalData, people_of
from obliviate.evaluate.epochs import run_of_model
from obliviate.evaluate.exposure import chance_exposure
from obliviate.evaluate.results import AttackResult, EvalResult
from obliviate.io import sha256_file, sha256_tree

DISCLAIMER = (
    "This is evidence of what was tested, with the probes and attacks listed here, and not a guarantee that nothing "
    "else about these people can be extracted from the model."
)
WEIGHT_SUFFIXES = (".safetensors",)
NUMBERS = ("forget/leak_rate", "forget/exposure", "forget/rougeL_recall", "forget/exact_match")
NUMBERS += ("retain/rougeL_recall", "retain/exact_match", "holdout/leak_rate")
"""The summary keys each attack is recorded with (those the run has)."""


def hash_model(path: str | Path | None) -> dict[str, Any] | None:
    """sha256 of every file a load reads (the directory's own files, not a run's checkpoints below it), the weight
    files (``*.safetensors``) first; a hub id is named, not hashed."""
    if not path:
        return None
    root = Path(str(path)).expanduser()
    if not root.is_dir():
        return {"path": str(path), "note": "not a local directory: not hashed"}
    files = sorted((p for p in root.iterdir() if p.is_file()), key=lambda p: (p.suffix not in WEIGHT_SUFFIXES, p.name))
    return {"path": str(path), "files": {p.name: sha256_file(p) for p in files}}


def _method(model_path: str, run_path: str | None) -> dict[str, Any]:
    """The unlearning run behind the model: method and resolved config (its ``config.yaml``), else unknown."""
    run = run_of_model(run_path or model_path)
    if run is None:
        return {"method": "unknown", "note": "the model is not an obliviate unlearning run or checkpoint"}
    return {
        "method": run["config"]["method"],
        "run_dir": run["run_dir"],
        "config_file": run["config_file"],
        "config_sha256": sha256_file(run["config_file"]),
        "config": run["config"],
    }


def _hashes(config, model_path: str, method: dict[str, Any], out: Path, data_pii: Path | None) -> dict[str, Any]:
    hashes: dict[str, Any] = {"model": hash_model(model_path)}
    start = config.base_model or (method.get("config") or {}).get("model_dir")
    if start and str(start) != str(model_path):
        hashes["starting_model"] = hash_model(start)
    hashes["forget_set"] = {"path": config.forget_dir, "sha256": sha256_tree(config.forget_dir)}
    if data_pii is not None:
        hashes["pii"] = {"path": str(data_pii), "sha256": sha256_file(data_pii)}
    hashes["config"] = {"path": str(out / "config.yaml"), "sha256": sha256_file(out / "config.yaml")}
    return hashes


def _numbers(summary: dict[str, float] | None) -> dict[str, float] | None:
    return None if summary is None else {key: summary[key] for key in NUMBERS if key in summary}


def _tests(result: EvalResult, attacks: list[AttackResult]) -> dict[str, Any]:
    """Every probe of the unattacked model (pairs it leaked / pairs it was asked) and every attack's numbers."""
    forget = result.leak.get("forget") or {}
    probes = {name: {"leaked": c[0], "pairs": c[1]} for name, c in (forget.get("attack_counts") or {}).items()}
    found = [
        {
            "name": a.name,
            "attack": a.attack,
            "params": a.params,
            "ran": a.ran,
            "note": a.note,
            "before": _numbers(a.before),
            "after": _numbers(a.after),
        }
        for a in attacks
    ]
    return {"unattacked": _numbers(result.summary()), "probes": probes, "attacks": found}


def verdicts(data: EvalData, result: EvalResult, attacks: list[AttackResult], show_pii: bool) -> list[dict[str, Any]]:
    """Per forget person: "no leak found" or "leaked through" each (evaluation, field, probes) that leaked.

    ``tested`` names every evaluation whose probes asked about the person (``relearn forget_half`` asks only the
    held-back fields). Names and values are added only with ``show_pii``.
    """
    sources = [("unattacked", result.leaked.get("forget") or [])]
    sources += [(a.name, a.leaked.get("forget") or []) for a in attacks if a.ran]
    out = []
    for person in people_of(data.people, "forget"):
        leaks = [
            {"through": name, "field": fld, "probes": list(probes)}
            for name, pairs in sources
            for pid, fld, probes in pairs
            if pid == person.person_id
        ]
        entry: dict[str, Any] = {"person_id": person.person_id, "fields": sorted(person.fields)}
        if show_pii:
            entry["name"] = person.name
            for leak in leaks:
                leak["value"] = person.fields.get(leak["field"])
        shown = "; ".join(
            f"{x['through']}: {x['field']}{' = ' + x['value'] if 'value' in x else ''} ({', '.join(x['probes'])})"
            for x in leaks
        )
        entry["verdict"] = f"leaked through {shown}" if leaks else "no leak found"
        entry["leaks"] = leaks
        out.append(entry)
    return out


def _thresholds(options) -> dict[str, Any]:
    found: dict[str, Any] = {
        "leak": "a (person, field) pair leaks when a probe's greedy (or sampled) output holds the value in any "
        "normalised surface form (obliviate.data.pii_match); a person leaks when any pair does",
        "max_new_tokens": options.max_new_tokens,
        "leak_samples": options.leak_samples,
        "max_examples": options.max_examples,
    }
    if options.exposure:
        found.update(exposure_k=options.exposure_k, exposure_chance=chance_exposure(options.exposure_k))
    return found


def build_evidence(out: Path, config, data, options, result, attacks, chosen=None) -> dict[str, Any]:
    """The evidence document (see the module docstring); ``config.yaml`` must already be in ``out``."""
    from obliviate import __version__

    model_path = str(chosen[0].path) if chosen else str(config.model)
    method = _method(model_path, config.checkpoints)
    pii = Path(config.pii) if config.pii else find_pii_json(config.forget_dir)
    if chosen:
        epoch, best = chosen
        choice = {"epoch": epoch.epoch, "path": epoch.path, "rule": best.get("rule"), "reason": best.get("reason")}
    else:
        run = run_of_model(model_path)
        where = ""
        if run:
            where = "(the run's final model)" if run["epoch"] is None else f"(epoch {run['epoch']} of the run)"
        choice = {"path": model_path, "epoch": run["epoch"] if run else None, "reason": f"given as --model {where}"}
    return {
        "statement": DISCLAIMER,
        "date": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
        "obliviate_version": __version__,
        "hashes": _hashes(config, model_path, method, out, pii),
        "unlearning": method,
        "chosen_checkpoint": choice,
        "tests": _tests(result, attacks),
        "people": verdicts(data, result, attacks, config.show_pii),
        "thresholds": _thresholds(options),
        "show_pii": config.show_pii,
    }
