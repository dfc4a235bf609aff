"""Model cards: the ``README.md`` every model directory obliviate writes carries, in the Hugging Face format.

A card is YAML front matter between ``---`` lines, then markdown. The front matter holds the Hub's own keys
(``base_model``, ``library_name``, ``pipeline_tag``, ``tags``; an adapter gets ``library_name: peft`` and the
``base_model:adapter:`` tag as peft writes them) and an ``obliviate`` block with how the model was made: the
command and method, the fully resolved config, the sha256 of the forget set (of the training data for
``finetune``), the epoch the weights are from, and, where the run evaluated that epoch, its metrics.

A card never holds a data set's contents: data appear only as hashes (:func:`obliviate.io.sha256_tree`), and the
metrics are aggregates. Cards are written atomically (:func:`obliviate.io.write_text_atomic`). This module sits at the
``io`` level: any layer may call it, and it imports none above it.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import yaml

from obliviate.io import write_text_atomic

CARD = "README.md"

HEADLINE = (
    "forget/rougeL_recall",
    "retain/rougeL_recall",
    "forget/exact_match",
    "retain/exact_match",
    "forget/leak_rate",
    "holdout/leak_rate",
    "forget/exposure",
    "holdout/exposure",
    "forget/digits_in_place",
    "forget/mia_auc_loss",
    "forget/forget_quality",
    "all/task_aggregate",
)
"""The metrics a card's table shows: the one-screen (``brief``) columns of ``docs/METRICS.md``
(``tests/test_model_card.py`` keeps the two in step). The front matter keeps every aggregate of the evaluation."""


def card_metadata(facts: dict[str, Any]) -> dict[str, Any]:
    """The front matter of a card from a run's facts (keys: ``command``, ``method``, ``base_model``, ``adapter``,
    ``config``, ``forget_sha256``, ``retain_sha256``, ``data_sha256``, ``epoch``, ``global_step``, ``stopped``,
    ``lr``, ``metrics``; any may be missing)."""
    from obliviate import __version__

    base, method = facts.get("base_model"), facts.get("method")
    tags = ["obliviate", "machine-unlearning" if facts.get("command") == "unlearn" else "fine-tuned"]
    tags += [f"unlearning-method:{method}"] if facts.get("command") == "unlearn" and method else []
    if facts.get("adapter"):
        tags += [f"base_model:adapter:{base}", "lora"] if base else ["lora"]
    meta: dict[str, Any] = {}
    if base:
        meta["base_model"] = str(base)
    meta["library_name"] = "peft" if facts.get("adapter") else "transformers"
    meta["pipeline_tag"] = "text-generation"
    meta["tags"] = tags
    block = {"version": __version__}
    for key in ("command", "method", "forget_sha256", "retain_sha256", "data_sha256", "epoch", "global_step"):
        if facts.get(key) is not None:
            block[key] = facts[key]
    for key in ("lr", "stopped", "merged"):
        if facts.get(key) is not None:
            block[key] = facts[key]
    if facts.get("metrics"):
        block["metrics"] = {k: v for k, v in facts["metrics"].items() if isinstance(v, (int, float))}
    if facts.get("config") is not None:
        block["config"] = facts["config"]
    meta["obliviate"] = block
    return meta


def render_card(facts: dict[str, Any], name: str = "model") -> str:
    """The whole ``README.md``: front matter, then what the model is, its evaluation and how to load it."""
    meta = card_metadata(facts)
    front = yaml.safe_dump(meta, sort_keys=False, allow_unicode=True)
    return f"---\n{front}---\n\n" + _body(meta, name)


def _body(meta: dict[str, Any], name: str) -> str:
    block, base = meta["obliviate"], meta.get("base_model")
    command, method = block.get("command"), block.get("method")
    if command == "unlearn":
        what = f"`{base}` after unlearning a forget set with `{method}`"
    else:
        what = f"`{base}` fine-tuned" if base else "a model trained from scratch"
    kind = "A LoRA adapter on " if meta["library_name"] == "peft" else ""
    lines = [f"# {name}", "", f"{kind}{what}, written by obliviate {block['version']}.", ""]
    facts = [("epoch", block.get("epoch")), ("optimizer steps", block.get("global_step"))]
    facts += [("learning rate", block.get("lr")), ("stopped", block.get("stopped"))]
    facts += [("forget set sha256", block.get("forget_sha256")), ("retain set sha256", block.get("retain_sha256"))]
    facts += [("training data sha256", block.get("data_sha256"))]
    lines += ["| | |", "|---|---|", *[f"| {k} | {_cell(v)} |" for k, v in facts if v is not None], ""]
    lines += _metrics_table(block.get("metrics") or {}, block.get("epoch"))
    lines += _how_to_load(meta)
    lines += [
        "The data appear here only as sha256 hashes (`obliviate.io.sha256_tree` of the file or directory), never "
        "their contents. The fully resolved configuration is in the `obliviate.config` block of the metadata above "
        "and in the run's `config.yaml`.",
        "",
    ]
    return "\n".join(lines)


def _metrics_table(metrics: dict[str, float], epoch: Any) -> list[str]:
    shown = [(k, metrics[k]) for k in HEADLINE if metrics.get(k) is not None]
    if not shown:
        return ["No evaluation of these weights is recorded (`unlearn --eval_every_epoch`, `obliviate evaluate`).", ""]
    head = [f"## Evaluation (epoch {epoch})", "", "| metric | value |", "|---|---|"]
    return [*head, *[f"| {k} | {v:.4g} |" for k, v in shown], ""]


def _how_to_load(meta: dict[str, Any]) -> list[str]:
    peft = meta["library_name"] == "peft"
    package, name = ("peft", "AutoPeftModelForCausalLM") if peft else ("transformers", "AutoModelForCausalLM")
    code = [f"from {package} import {name}", "", f'model = {name}.from_pretrained("path/to/this/directory")']
    return ["## How to load", "", "```python", *code, "```", ""]


def _cell(value: Any) -> str:
    text = f"{value:.4g}" if isinstance(value, float) else str(value)
    return text.replace("|", "\\|").replace("\n", " ")


def write_model_card(directory: str | Path, facts: dict[str, Any]) -> Path:
    """Write ``directory/README.md`` atomically (replacing one a library wrote there, such as peft's stub)."""
    path = Path(directory) / CARD
    write_text_atomic(path, render_card(facts, name=Path(directory).resolve().name))
    return path


def read_card(path: str | Path) -> tuple[dict[str, Any], str]:
    """A card's front matter and body; a card without front matter reads as ``({}, text)``."""
    text = Path(path).read_text(encoding="utf-8")
    if not text.startswith("---\n"):
        return {}, text
    end = text.find("\n---\n", 4)
    if end < 0:
        return {}, text
    return yaml.safe_load(text[4 : end + 1]) or {}, text[end + 5 :]


def update_model_card(directory: str | Path, **changes: Any) -> Path:
    """Rewrite a card obliviate wrote with some facts changed (e.g. the epoch a selection rule chose and its
    metrics, once an evaluation has run)."""
    meta, _ = read_card(Path(directory) / CARD)
    block = dict(meta.get("obliviate") or {})
    facts = {**block, "base_model": meta.get("base_model"), "adapter": meta.get("library_name") == "peft"}
    facts.update(changes)
    return write_model_card(directory, facts)
