"""``obliviate audit``: which people and which PII fields does a model leak? A ranked report and a forget set."""

from __future__ import annotations

import argparse
from pathlib import Path

from obliviate.cli.options import add_arguments, build_config
from obliviate.config import AuditConfig


def register(subparsers) -> None:
    parser = subparsers.add_parser(
        "audit",
        help="find which people and PII fields a model leaks; write a report and a forget set",
        description="Ask the model about each person (--people: a names file; --data: a LUME-format data set, whose "
        "true values confirm leaks) per PII field, with paraphrases, cut biographies and samples at temperature 1. "
        "Writes audit.json, audit.md (people x fields, ranked; values redacted unless --show_pii) and forget.jsonl, "
        "a forget set of the leaking prompts and values that obliviate unlearn accepts as it is.",
    )
    add_arguments(parser, AuditConfig)
    parser.set_defaults(func=run)


def load_people(config: AuditConfig):
    """``(people, records)``: the names file's people (no records), or the data set's people and all its rows."""
    from obliviate.evaluate.audit_probes import read_names, sample_people

    if config.people:
        return sample_people(read_names(config.people), config.max_people, config.seed), None
    records, people = _data_people(Path(config.data))
    return sample_people(people, config.max_people, config.seed), records


def _data_people(path: Path):
    from obliviate.data.load import list_splits, load_split, split_of
    from obliviate.data.pii import pii_from_records
    from obliviate.data.synth import load_pii
    from obliviate.errors import DataError

    if not path.exists():
        raise DataError(f"--data {path}: expected a LUME-format directory or file, found nothing at this path")
    splits = list_splits(path)
    if len(splits) > 1:
        loaded = {split: load_split(path, split=split) for split in splits}
    else:
        loaded = {(splits[0] if splits else split_of(path)) or "data": load_split(path)}
    records = [r for rows in loaded.values() for r in rows]
    pii_file = (path if path.is_dir() else path.parent) / "pii.json"
    if pii_file.is_file():
        ids = {r.id for r in records}
        people = [p for p in load_pii(pii_file) if ids.intersection(p.records)]
    else:
        people = [p for split, rows in loaded.items() for p in pii_from_records(rows, split=split)]
    if not people:
        raise DataError(f"--data {path}: expected people with PII (a pii.json, or Task2 QA rows), found none")
    return records, people


def run(args: argparse.Namespace) -> int:
    from obliviate.evaluate.audit import AuditOptions, audit_model
    from obliviate.io import check_output_dir, prepare_output_dir
    from obliviate.models.load import load_model, model_paths, process_device
    from obliviate.report.audit import audit_summary, write_audit

    config = build_config(AuditConfig, args)
    people, records = load_people(config)  # bad input fails here, before the model loads or anything is written
    inputs = [config.people, config.data, config.base_model, *model_paths(config.model)]
    inputs += [args.config] if getattr(args, "config", None) else []
    check_output_dir(config.output_dir, inputs, overwrite=config.overwrite)
    model, tokenizer = load_model(config.model, base_model=config.base_model, device=process_device())
    options = AuditOptions(
        wordings=config.wordings,
        samples=config.samples,
        controls=config.controls,
        min_confidence=config.min_confidence,
        max_new_tokens=config.max_new_tokens,
        batch_size=config.batch_size,
        exposure_k=config.exposure_k,
        region=config.region.upper(),
        seed=config.seed,
    )
    result = audit_model(model, tokenizer, people, options, records)
    out = prepare_output_dir(config.output_dir, inputs, overwrite=config.overwrite, command="audit")
    source = {"model": str(config.model), "people": config.people, "data": config.data}
    paths = write_audit(out, result, show_pii=config.show_pii, source=source, title=f"Audit of {config.model}")
    summary = audit_summary(result)
    print(
        f"{summary['people_flagged']} of {summary['people']} people and {summary['pairs_flagged']} of "
        f"{summary['pairs']} (person, field) pairs leak; controls flagged {summary['controls_flagged']} of "
        f"{summary['controls']} → {', '.join(str(p) for p in paths)}"
    )
    return 0
