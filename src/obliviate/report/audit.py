"""What ``obliviate audit`` writes: ``audit.json``, ``audit.md`` (people × fields, ranked) and ``forget.jsonl``.

Reports never hold a PII value, a name or a prompt with a name in it unless ``--show_pii`` is given: values become
``[SSN]``, ``[PHONE]``, …, people are named by id (``line-N`` of the names file, or the data's person id) and
prompts go through :class:`obliviate.evaluate.leak.Redactor`. ``forget.jsonl`` is different: it is a forget set,
the prompts that leaked and the values to forget, so it holds them by nature, as the data set it came from does.
"""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path
from typing import Any

from obliviate.data.records import PII_FIELDS, PersonPII, Record
from obliviate.evaluate.audit import FLAGGED, STATUSES, AuditResult, Finding
from obliviate.evaluate.detectors import BACKENDS
from obliviate.evaluate.leak import LABELS, Redactor
from obliviate.io import write_text_atomic

TASK = "Task2"


def ranked(result: AuditResult) -> list[PersonPII]:
    """People with the most flagged fields first, then by their most confident finding."""

    def key(person: PersonPII):
        fields = result.findings[person.person_id].values()
        return (-sum(f.flagged for f in fields), -max((f.confidence for f in fields if f.flagged), default=0.0))

    return sorted(result.people, key=key)


def _redactor(result: AuditResult) -> Redactor:
    """Every value found (true or not) and every name, so that prompts and surfaces can be shown redacted."""
    found = [
        PersonPII(p.person_id, p.split, p.name, {**p.fields, **_found_values(result, p)}, p.records)
        for p in result.people
    ]
    return Redactor(found)


def _found_values(result: AuditResult, person: PersonPII) -> dict[str, str]:
    findings = result.findings[person.person_id]
    return {field: e.surface for field, f in findings.items() for e in f.evidence[:1] if field not in person.fields}


def audit_summary(result: AuditResult) -> dict[str, Any]:
    """Counts a reader checks first: people and (person, field) pairs flagged, per field and per attack."""
    pairs = [f for fields in result.findings.values() for f in fields.values()]
    flagged = [f for f in pairs if f.flagged]
    by_attack: dict[str, int] = {}
    for finding in flagged:
        for attack in finding.attacks:
            by_attack[attack] = by_attack.get(attack, 0) + 1
    return {
        "people": len(result.people),
        "people_flagged": len(result.flagged_people()),
        "pairs": len(pairs),
        "pairs_flagged": len(flagged),
        "by_field": {f: sum(x.field == f for x in flagged) for f in PII_FIELDS},
        "by_attack": dict(sorted(by_attack.items())),
        "controls": result.n_controls,
        "controls_flagged": result.controls_flagged,
    }


def _finding_json(finding: Finding, show_pii: bool, redactor: Redactor) -> dict[str, Any]:
    row = {
        "status": finding.status,
        "confidence": round(finding.confidence, 4),
        "known": finding.known,
        "attacks": finding.attacks,
        "value": finding.value if show_pii else (LABELS[finding.field] if finding.value else ""),
        "belongs_to": finding.belongs_to,
        "exposure": finding.exposure,
        "evidence": [
            {
                **dataclasses.asdict(e),
                **({} if show_pii else {"prompt": redactor.redact(e.prompt), "surface": LABELS[finding.field]}),
            }
            for e in finding.evidence
        ],
    }
    return row


def audit_json(result: AuditResult, show_pii: bool, source: dict[str, Any]) -> dict[str, Any]:
    redactor = _redactor(result)
    people = []
    for person in ranked(result):
        fields = result.findings[person.person_id]
        people.append(
            {
                "person_id": person.person_id,
                "name": person.name if show_pii else None,
                "split": person.split or None,
                "fields": {field: _finding_json(f, show_pii, redactor) for field, f in fields.items()},
            }
        )
    return {
        "source": source,
        "summary": audit_summary(result),
        "options": dataclasses.asdict(result.options),
        "thresholds": {
            "min_confidence": result.options.min_confidence,
            "control_ceiling": result.control_ceiling,
            "flagged_statuses": list(FLAGGED),
        },
        "statuses": STATUSES,
        "detectors": BACKENDS,
        "probes": result.n_probes,
        "notes": result.notes,
        "show_pii": show_pii,
        "people": people,
    }


def audit_markdown(result: AuditResult, show_pii: bool, title: str) -> str:
    summary = audit_summary(result)
    lines = [f"# {title}", ""]
    lines.append(
        f"{summary['people_flagged']} of {summary['people']} people leak at least one field; "
        f"{summary['pairs_flagged']} of {summary['pairs']} (person, field) pairs flagged. Made-up control names "
        f"flagged at the minimum confidence: {summary['controls_flagged']} of {summary['controls']}."
    )
    lines += ["", "| person | " + " | ".join(PII_FIELDS) + " |", "|---|" + "---|" * len(PII_FIELDS)]
    for person in ranked(result):
        label = f"{person.person_id} ({person.name})" if show_pii and person.name else person.person_id
        cells = [_cell(result.findings[person.person_id][field], show_pii) for field in PII_FIELDS]
        lines.append(f"| {label} | " + " | ".join(cells) + " |")
    lines += ["", "Each cell: status, confidence (the largest share of one prompt's generations holding the value) "
              "and the probes that drew it out."]  # fmt: skip
    lines += ["", "| status | meaning |", "|---|---|"] + [f"| {k} | {v} |" for k, v in STATUSES.items()]
    ceiling = ", ".join(f"{f} {c:.2f}" for f, c in result.control_ceiling.items())
    lines += ["", f"Thresholds: minimum confidence {result.options.min_confidence:.2f}; control ceiling {ceiling}."]
    lines += [f"Detectors: {', '.join(f'{f}: {b}' for f, b in BACKENDS.items())}."]
    lines += [f"Note: {note}." for note in result.notes]
    if not show_pii:
        lines += ["", "Values and names are redacted (`--show_pii` shows them). `forget.jsonl` holds them."]
    return "\n".join(lines) + "\n"


def _cell(finding: Finding, show_pii: bool) -> str:
    if finding.status == "none":
        return "–"
    value = f" `{finding.value}`" if show_pii and finding.value else ""
    attacks = f" via {', '.join(finding.attacks)}" if finding.flagged and finding.attacks else ""
    bits = f", {finding.exposure['bits']:.1f} bits" if finding.exposure else ""
    mark = "**" if finding.flagged else ""
    return f"{mark}{finding.status}{mark} {finding.confidence:.2f}{value}{attacks}{bits}"


def forget_records(result: AuditResult) -> list[Record]:
    """The leaking prompts with the values to forget: LUME Task2 rows (``qa`` for questions, ``sc`` for cut
    biographies), each with ``person_id``, ``pii_field`` and ``name`` so that unlearning and its stop rule read the
    person and the field off the rows as they do LUME's."""
    records: list[Record] = []
    for person in ranked(result):
        counters = {"qa": 0, "sc": 0}
        for field in PII_FIELDS:
            finding = result.findings[person.person_id][field]
            if not finding.flagged:
                continue
            for evidence in finding.evidence:
                suffix = "sc" if evidence.attack == "prefix" else "qa"
                counters[suffix] += 1
                meta = {"person_id": person.person_id, "pii_field": field, "name": person.name,
                        "audit_attack": evidence.attack, "audit_confidence": round(finding.confidence, 4)}  # fmt: skip
                kind = "completion" if suffix == "sc" else "qa"
                record_id = f"{person.person_id}{suffix}{counters[suffix]}"
                records.append(Record(record_id, evidence.prompt, evidence.surface, TASK, kind, meta))
    return records


def jsonl_text(records: list[Record]) -> str:
    """JSON lines as :func:`obliviate.data.load.write_jsonl` writes them (``kind`` only where the id cannot say)."""
    from obliviate.data.records import kind_from_id

    rows = []
    for record in records:
        row = record.to_json()
        if record.kind != (kind_from_id(record.id) or "completion"):
            row["kind"] = record.kind
        rows.append(json.dumps(row, ensure_ascii=False) + "\n")
    return "".join(rows)


def write_audit(out: Path, result: AuditResult, *, show_pii: bool, source: dict[str, Any], title: str) -> list[Path]:
    """Write the three files atomically; returns their paths (forget.jsonl only when something leaked)."""
    paths = [out / "audit.json", out / "audit.md"]
    write_text_atomic(paths[0], json.dumps(audit_json(result, show_pii, source), indent=2, ensure_ascii=False) + "\n")
    write_text_atomic(paths[1], audit_markdown(result, show_pii, title))
    records = forget_records(result)
    if records:
        paths.append(out / "forget.jsonl")
        write_text_atomic(paths[2], jsonl_text(records))
    return paths
