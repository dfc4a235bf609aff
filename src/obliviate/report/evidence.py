"""``evidence.md`` and ``evidence.json`` (``evaluate --evidence``): what was tested for a deletion request.

The document is built by :func:`obliviate.evaluate.evidence.build_evidence`; this module writes it and renders it
for a reader. The rendering shows only what the document holds, so names and values appear only when it was built
with ``--show_pii``.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from obliviate.config import to_yaml
from obliviate.evaluate.evidence import NUMBERS, build_evidence
from obliviate.io import write_text_atomic
from obliviate.report.attacks import pair_cell
from obliviate.report.render import markdown_table


def write_evidence(out: Path, config, data, options, result, attacks, chosen=None) -> dict[str, Any]:
    """This evaluation's resolved ``config.yaml`` (so that its hash can be checked), then ``evidence.json`` and
    ``evidence.md``, in ``out``; returns the evidence."""
    write_text_atomic(out / "config.yaml", to_yaml(config))
    evidence = build_evidence(out, config, data, options, result, list(attacks), chosen)
    write_text_atomic(out / "evidence.json", json.dumps(evidence, indent=1, default=str))
    write_text_atomic(out / "evidence.md", render_evidence(evidence))
    return evidence


def _hash_rows(hashes: dict[str, Any]) -> list[list[Any]]:
    rows = []
    for what, entry in hashes.items():
        if entry is None:
            continue
        if "files" in entry:
            rows += [[what, f"{entry['path']}/{name}", digest] for name, digest in entry["files"].items()]
        else:
            rows.append([what, entry["path"], entry.get("sha256") or entry.get("note", "")])
    return rows


def _tests_section(tests: dict[str, Any]) -> str:
    keys = [k for k in NUMBERS if k in (tests.get("unattacked") or {})]
    probe_rows = [[name, c["leaked"], c["pairs"]] for name, c in tests["probes"].items()]
    parts = [
        "Probes of the unattacked model (forget people's (person, field) pairs):",
        markdown_table(["probe", "pairs leaked", "pairs asked"], probe_rows) if probe_rows else "none",
    ]
    rows = [["unattacked", "yes", *[tests["unattacked"].get(k) for k in keys]]]
    for attack in tests["attacks"]:
        ran = "yes" if attack["ran"] else f"no: {attack['note']}"
        rows.append([attack["name"], ran, *[pair_cell(attack["before"], attack["after"], k) for k in keys]])
    parts += ["Attacks on copies of the model, *before → after* (before: the unattacked model on the rows the attack "
              "probes; `relearn forget_half` probes the held-back half only):"]  # fmt: skip
    parts += [markdown_table(["evaluation", "ran", *keys], rows)]
    return "\n\n".join(parts)


def render_evidence(evidence: dict[str, Any]) -> str:
    """``evidence.md``: the statement first, then hashes, method, choice, tests, verdicts and thresholds."""
    method = evidence["unlearning"]
    choice = evidence["chosen_checkpoint"]
    people = evidence["people"]
    leaked = sum(p["verdict"] != "no leak found" for p in people)
    person_rows = [[p.get("name") or p["person_id"], ", ".join(p["fields"]), p["verdict"]] for p in people]
    config = "\n".join(f"- `{k}`: `{v}`" for k, v in (method.get("config") or {}).items())
    sections = [
        "# Evidence: unlearning of personal data",
        f"**{evidence['statement']}**",
        f"Date: {evidence['date']} · obliviate {evidence['obliviate_version']}",
        "## Hashes (sha256)\n\n" + markdown_table(["what", "path", "sha256"], _hash_rows(evidence["hashes"])),
        f"## Unlearning\n\nMethod: **{method['method']}**"
        + (f" (run `{method['run_dir']}`, config sha256 `{method['config_sha256']}`)" if "run_dir" in method else "")
        + (f"; {method['note']}" if method.get("note") else "")
        + (f"\n\nResolved config:\n\n{config}" if config else ""),
        f"## Chosen checkpoint\n\n`{choice['path']}`: {choice.get('reason')}"
        + (f" (rule: {choice['rule']})" if choice.get("rule") else ""),
        "## What was tried\n\n" + _tests_section(evidence["tests"]),
        f"## Per person\n\n{leaked} of {len(people)} forget people leaked in at least one evaluation.\n\n"
        + markdown_table(["person", "fields probed", "verdict"], person_rows),
        "## Thresholds\n\n" + "\n".join(f"- {k}: {v}" for k, v in evidence["thresholds"].items()),
    ]
    return "\n\n".join(sections) + "\n"
