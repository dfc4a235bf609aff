"""Atomic epoch checkpoints with everything a bit-exact resume needs.

``O/checkpoints/epoch-N/`` holds the model in HF format (or the PEFT adapter), the tokenizer, ``optimizer.pt``,
``scheduler.pt``, ``rng_state_<rank>.pt`` and ``trainer_state.json``. The data order needs no state of its own: the
forget permutation and the retain draws of epoch ``e`` are functions of ``(seed, e, rank)``, so the epoch number
restores them. Everything is written into a temporary sibling and renamed, so a half-written checkpoint is never
visible.
"""

from __future__ import annotations

import json
import os
import random
import re
import shutil
import tempfile
from pathlib import Path
from typing import Any

import numpy as np
import torch
from safetensors.torch import load_file

from obliviate.errors import TrainingError

_EPOCH_DIR = re.compile(r"^epoch-(\d+)$")
STATE_FILE = "trainer_state.json"


def list_checkpoints(run_dir: str | Path) -> list[tuple[int, Path]]:
    """Complete checkpoints of a run, sorted by epoch (temporary directories are ignored)."""
    root = Path(run_dir) / "checkpoints"
    if not root.is_dir():
        return []
    found = []
    for path in root.iterdir():
        match = _EPOCH_DIR.match(path.name)
        if match and (path / STATE_FILE).is_file():
            found.append((int(match.group(1)), path))
    return sorted(found)


def rng_state() -> dict[str, Any]:
    np_state = np.random.get_state()
    state = {
        "torch": torch.get_rng_state(),
        "python": random.getstate(),
        "numpy": (np_state[0], np_state[1].tolist(), *np_state[2:]),
    }
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def set_rng_state(state: dict[str, Any]) -> None:
    torch.set_rng_state(state["torch"])
    random.setstate(state["python"])
    kind, keys, *rest = state["numpy"]
    np.random.set_state((kind, np.asarray(keys, dtype=np.uint32), *rest))
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])


def save_checkpoint(
    accelerator, model, tokenizer, optimizer, scheduler, run_dir: Path, epoch: int, state: dict[str, Any]
) -> Path:
    """Write ``checkpoints/epoch-<epoch>`` atomically; every rank must call it (it holds collective calls)."""
    root = Path(run_dir) / "checkpoints"
    final = root / f"epoch-{epoch}"
    tmp = root / f".epoch-{epoch}.tmp"
    if accelerator.is_main_process:
        root.mkdir(parents=True, exist_ok=True)
        shutil.rmtree(tmp, ignore_errors=True)
        tmp.mkdir()
    accelerator.wait_for_everyone()
    unwrapped = accelerator.unwrap_model(model)
    weights = accelerator.get_state_dict(model)
    if accelerator.is_main_process:
        unwrapped.save_pretrained(tmp, state_dict=weights, safe_serialization=True)
        tokenizer.save_pretrained(tmp)
        torch.save(optimizer.state_dict(), tmp / "optimizer.pt")
        torch.save(scheduler.state_dict(), tmp / "scheduler.pt")
    torch.save(rng_state(), tmp / f"rng_state_{accelerator.process_index}.pt")
    accelerator.wait_for_everyone()
    if accelerator.is_main_process:
        (tmp / STATE_FILE).write_text(json.dumps(state, indent=1, sort_keys=True))
        if final.exists():
            shutil.rmtree(final)
        os.replace(tmp, final)
    accelerator.wait_for_everyone()
    return final


def load_weights(model, checkpoint: Path, is_peft: bool) -> None:
    """Load checkpoint weights into an already built (and, under LoRA, already wrapped) model, exactly."""
    if is_peft:
        from peft import set_peft_model_state_dict

        set_peft_model_state_dict(model, load_file(checkpoint / "adapter_model.safetensors"))
        return
    state = {}
    for shard in sorted(checkpoint.glob("*.safetensors")):
        state.update(load_file(shard))
    missing, unexpected = model.load_state_dict(state, strict=False)
    tied = {name for name in missing if "lm_head" in name or "embed" in name}
    if set(missing) - tied or unexpected:
        raise TrainingError(
            f"checkpoint {checkpoint} does not fit the model: {len(set(missing) - tied)} missing and "
            f"{len(unexpected)} unexpected weights (e.g. {sorted(set(missing) - tied)[:1] + sorted(unexpected)[:1]})"
        )


def load_training_state(checkpoint: Path, optimizer, scheduler, process_index: int) -> dict[str, Any]:
    """Restore optimizer, scheduler and this rank's RNG; return the trainer state."""
    optimizer.load_state_dict(torch.load(checkpoint / "optimizer.pt", weights_only=True))
    scheduler.load_state_dict(torch.load(checkpoint / "scheduler.pt", weights_only=True))
    set_rng_state(torch.load(checkpoint / f"rng_state_{process_index}.pt", weights_only=False))
    return json.loads((checkpoint / STATE_FILE).read_text())


def write_text_atomic(path: Path, text: str) -> None:
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", dir=path.parent)
    with os.fdopen(fd, "w") as handle:
        handle.write(text)
    os.replace(tmp, path)
