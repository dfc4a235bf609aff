"""Shared builders for the engine tests: a micro OLMo and synthetic people, made in the test's temporary directory.

The micro model (hidden 32, 2 layers, vocabulary ~300) trains a step in milliseconds on one CPU core, so a test
can afford a few full runs through the real loop.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
from pathlib import Path
from typing import Any

import pytest
import torch
from safetensors.torch import load_file

from obliviate.config import FinetuneConfig, UnlearnConfig
from obliviate.data.synth import synthesize, write_synth
from obliviate.models.tiny import init_model
from obliviate.train.epoch import TIMING_KEYS

PEOPLE = 12
FORGET_RECORDS = 18  # 3 of 12 people, 6 records each
FAST = {
    "epochs": 1,
    "batch_size": 4,
    "micro_batch_size": 4,
    "max_length": 64,
    "lr": 1e-2,
    "stop_check_steps": 0,
    "stop_forget_nll": 0,
    "schedule": "joint",  # one step per forget batch (contrast's preset interleaves 15 retain steps after each)
}


@dataclasses.dataclass(frozen=True)
class Assets:
    """A data directory (``forget/``, ``retain/``, ``holdout/``) and a model directory built from it."""

    data: Path
    model: Path

    @property
    def forget(self) -> Path:
        return self.data / "forget"

    @property
    def retain(self) -> Path:
        return self.data / "retain"


def build_assets(root: Path, *, finetune_epochs: int = 0) -> Assets:
    """Synthetic data for 12 people and a micro model on its 300-token tokenizer.

    With ``finetune_epochs`` the model is first fine-tuned on forget + retain (the *target* model that
    unlearning starts from), so that forget NLL starts low and has room to rise.
    """
    data = synthesize(PEOPLE, forget_fraction=0.25, holdout_fraction=0.25, seed=0)
    data_dir = write_synth(data, root / "data")
    init_dir = init_model(data.forget + data.retain, root / "init", size="micro", vocab_size=300, seed=0)
    if not finetune_epochs:
        return Assets(data_dir, init_dir)
    from obliviate.train.run import run_finetune

    config = FinetuneConfig(
        output_dir=str(root / "target"),
        model=str(init_dir),
        epochs=finetune_epochs,
        data=[str(data_dir / "forget"), str(data_dir / "retain")],
        lr=1e-2,
        batch_size=16,
        micro_batch_size=16,
        max_length=64,
        warmup_ratio=0.0,
    )
    run_finetune(config)
    return Assets(data_dir, root / "target")


@pytest.fixture(scope="session")
def assets(tmp_path_factory: pytest.TempPathFactory) -> Assets:
    """An untrained micro model and its data, shared read-only by every test of a session."""
    return build_assets(tmp_path_factory.mktemp("micro"))


@pytest.fixture(scope="session")
def target(tmp_path_factory: pytest.TempPathFactory) -> Assets:
    """A micro model fine-tuned on forget + retain: what unlearning starts from."""
    return build_assets(tmp_path_factory.mktemp("target"), finetune_epochs=8)


def unlearn_config(assets: Assets, output_dir: Path, **overrides: Any) -> UnlearnConfig:
    """A fast :class:`UnlearnConfig` on the micro assets (1 epoch of 5 steps, lr 1e-2), with ``overrides``."""
    values: dict[str, Any] = {
        "model_dir": str(assets.model),
        "forget_dir": str(assets.forget),
        "retain_dir": str(assets.retain),
        "output_dir": str(output_dir),
        **FAST,
    }
    values.update(overrides)
    return UnlearnConfig.build(**values)


def unlearn_argv(assets: Assets, output_dir: Path, *extra: str) -> list[str]:
    """``obliviate unlearn`` arguments for a fast run on the micro assets."""
    args = [
        "unlearn",
        "--model_dir",
        str(assets.model),
        "--forget_dir",
        str(assets.forget),
        "--retain_dir",
        str(assets.retain),
        "--output_dir",
        str(output_dir),
    ]
    for key, value in FAST.items():
        args += [f"--{key}", str(value)]
    return args + list(extra)


def weights(directory: Path, name: str = "model.safetensors") -> dict[str, torch.Tensor]:
    return load_file(Path(directory) / name)


def hash_dir(directory: Path) -> dict[str, str]:
    """sha256 of every file below ``directory``, by relative path."""
    root = Path(directory)
    return {
        str(p.relative_to(root)): hashlib.sha256(p.read_bytes()).hexdigest()
        for p in sorted(root.rglob("*"))
        if p.is_file()
    }


def metrics(output_dir: Path, clock: bool = False) -> list[dict[str, Any]]:
    """The lines of a run's ``metrics.jsonl``; without ``clock``, less the keys that measure the wall clock
    (``TIMING_KEYS``), so that two runs that trained alike compare equal."""
    lines = [json.loads(line) for line in (Path(output_dir) / "metrics.jsonl").read_text().splitlines()]
    return lines if clock else [{k: v for k, v in line.items() if k not in TIMING_KEYS} for line in lines]


def listing(directory: Path) -> list[str]:
    root = Path(directory)
    return sorted(str(p.relative_to(root)) for p in root.rglob("*")) if root.exists() else []


@torch.no_grad()
def answer_nll(model_dir: Path, records_dir: Path, split: str = "forget") -> float:
    """Mean answer-token NLL of a saved model (or adapter) on a split, in one padded batch."""
    from obliviate.data.batching import collate, encode_record
    from obliviate.data.load import load_split
    from obliviate.losses.common import mean_nll
    from obliviate.models.load import load_model

    model, tokenizer = load_model(model_dir)
    batch = collate(
        [encode_record(tokenizer, r, 64) for r in load_split(records_dir, split=split)], tokenizer.pad_token_id
    )
    logits = model.eval()(input_ids=batch.input_ids, attention_mask=batch.attention_mask).logits
    return mean_nll(logits, batch.labels).item()


@torch.no_grad()
def rmu_distance(model_dir: Path, records_dir: Path, layer: int, control: torch.Tensor) -> float:
    """Mean over real forget tokens of ``mean_hidden (h^layer - c·u)²``: what RMU's forget term drives down."""
    from obliviate.data.batching import collate, encode_record
    from obliviate.data.load import load_split
    from obliviate.losses.rmu import masked_mse
    from obliviate.models.load import load_model
    from obliviate.models.trainable import decoder_layers

    model, tokenizer = load_model(model_dir)
    batch = collate(
        [encode_record(tokenizer, r, 64) for r in load_split(records_dir, split="forget")], tokenizer.pad_token_id
    )
    captured = []
    handle = decoder_layers(model)[layer].register_forward_hook(
        lambda _m, _a, out: captured.append(out[0] if isinstance(out, tuple) else out)
    )
    model.eval()(input_ids=batch.input_ids, attention_mask=batch.attention_mask)
    handle.remove()
    return masked_mse(captured[0], control, batch.attention_mask).item()


def written_set(generator, tmp_path: Path, count: int, seed: int):
    """A benchmark PII set (``uk_people``, ``de_people``) written twice with ``seed``: the rows per split, its people
    (``pii.json``) and its forget rows by id, after checking that the same seed wrote the same ``pii.json`` and that
    the people are ``count``, in all three splits."""
    from obliviate.data.load import load_split
    from obliviate.data.synth import load_pii

    counts = generator.write_set(tmp_path / "a", count=count, seed=seed)
    generator.write_set(tmp_path / "b", count=count, seed=seed)
    assert (tmp_path / "a" / "pii.json").read_bytes() == (tmp_path / "b" / "pii.json").read_bytes()  # seeded
    people = load_pii(tmp_path / "a" / "pii.json")
    assert {p.split for p in people} == {"forget", "retain", "holdout"} and len(people) == count
    forget = load_split(tmp_path / "a" / "forget", split="forget")
    return counts, people, {r.id: r for r in forget}
