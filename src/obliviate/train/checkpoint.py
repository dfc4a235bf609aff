"""Atomic epoch checkpoints with everything a bit-exact resume needs.

``O/checkpoints/epoch-N/`` holds the model in HF format (or the PEFT adapter), the tokenizer, ``optimizer.pt`` and
``scheduler.pt`` (tensors and numbers only, read back with ``weights_only=True``), ``rng_state_<rank>.safetensors``
plus ``rng_state_<rank>.json`` (no pickle anywhere: a tampered file cannot run code) and ``trainer_state.json``.
The data order needs no state of its own: the
forget permutation and the retain draws of epoch ``e`` are functions of ``(seed, e, rank)``, so the epoch number
restores them. Everything is written into a temporary sibling and renamed, so a half-written checkpoint is never
visible.
"""

from __future__ import annotations

import json
import os
import pickle
import random
import re
import shutil
from pathlib import Path
from typing import Any

import numpy as np
import torch
from safetensors import SafetensorError
from safetensors.torch import load_file, save_file

from obliviate.distributed import gathered_state_dict
from obliviate.errors import TrainingError
from obliviate.io import kill_point
from obliviate.model_card import write_model_card
from obliviate.models.load import write_tokenizer_fingerprint

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


def rng_state() -> tuple[dict[str, torch.Tensor], dict[str, Any]]:
    """This process's RNG states as ``(tensors, json_values)``: torch / CUDA states as uint8 tensors, Python's and
    NumPy's Mersenne Twister states as plain numbers."""
    version, internal, gauss = random.getstate()
    kind, keys, pos, has_gauss, cached = np.random.get_state()
    tensors = {"torch": torch.get_rng_state()}
    if torch.cuda.is_available():
        tensors.update({f"cuda_{i}": s for i, s in enumerate(torch.cuda.get_rng_state_all())})
    values = {
        "python": {"version": version, "internal": list(internal), "gauss_next": gauss},
        "numpy": {"kind": kind, "keys": keys.tolist(), "pos": pos, "has_gauss": has_gauss, "cached_gaussian": cached},
    }
    return tensors, values


def set_rng_state(tensors: dict[str, torch.Tensor], values: dict[str, Any]) -> None:
    """Restore what :func:`rng_state` returned; raises ``ValueError``/``KeyError``/``TypeError`` on a damaged state."""
    python, numpy_state = values["python"], values["numpy"]
    internal = tuple(int(v) for v in python["internal"])
    gauss = python["gauss_next"]
    if len(internal) != 625 or not (gauss is None or isinstance(gauss, float)):
        raise ValueError("Python RNG state has the wrong shape")
    keys = np.asarray(numpy_state["keys"], dtype=np.uint32)
    if numpy_state["kind"] != "MT19937" or keys.shape != (624,):
        raise ValueError("NumPy RNG state has the wrong shape")
    torch_state = tensors["torch"]
    if torch_state.dtype != torch.uint8 or torch_state.dim() != 1:
        raise ValueError("torch RNG state is not a uint8 vector")
    torch.set_rng_state(torch_state)
    random.setstate((int(python["version"]), internal, gauss))
    np.random.set_state(
        (
            "MT19937",
            keys,
            int(numpy_state["pos"]),
            int(numpy_state["has_gauss"]),
            float(numpy_state["cached_gaussian"]),
        )
    )
    cuda = [tensors[k] for k in sorted((k for k in tensors if k.startswith("cuda_")), key=lambda k: int(k[5:]))]
    if cuda and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(cuda)


def save_rng_state(directory: Path, process_index: int) -> None:
    tensors, values = rng_state()
    save_file(tensors, str(directory / f"rng_state_{process_index}.safetensors"))
    (directory / f"rng_state_{process_index}.json").write_text(json.dumps(values))


def load_rng_state(checkpoint: Path, process_index: int) -> None:
    """Restore this rank's RNG from safetensors + JSON; anything else (an old pickled ``.pt``) is refused unread."""
    tensors_file = checkpoint / f"rng_state_{process_index}.safetensors"
    values_file = checkpoint / f"rng_state_{process_index}.json"
    if not tensors_file.is_file() or not values_file.is_file():
        old = checkpoint / f"rng_state_{process_index}.pt"
        found = "a pickled rng_state .pt file, which is never loaded" if old.exists() else "no RNG state"
        expected = f"{tensors_file.name} and {values_file.name}"
        raise TrainingError(f"checkpoint {checkpoint} has {found}: expected {expected}")
    try:
        set_rng_state(load_file(str(tensors_file)), json.loads(values_file.read_text()))
    except (SafetensorError, ValueError, KeyError, TypeError, AttributeError, RuntimeError) as exc:
        raise TrainingError(
            f"checkpoint {checkpoint} holds a damaged RNG state ({type(exc).__name__}): refusing it"
        ) from None


def save_checkpoint(
    accelerator,
    model,
    tokenizer,
    optimizer,
    scheduler,
    run_dir: Path,
    epoch: int,
    state: dict[str, Any],
    card: dict[str, Any] | None = None,
) -> Path:
    """Write ``checkpoints/epoch-<epoch>`` atomically; every rank must call it (it holds collective calls).

    With ``card``, the checkpoint holds its model card (``README.md``, :mod:`obliviate.model_card`)."""
    root = Path(run_dir) / "checkpoints"
    final = root / f"epoch-{epoch}"
    tmp = root / f".epoch-{epoch}.tmp"
    if accelerator.is_main_process:
        root.mkdir(parents=True, exist_ok=True)
        shutil.rmtree(tmp, ignore_errors=True)
        tmp.mkdir()
    accelerator.wait_for_everyone()
    try:
        _write_checkpoint(accelerator, model, tokenizer, optimizer, scheduler, tmp, epoch)
    except BaseException:
        if accelerator.is_main_process:  # a failed write (disk full) leaves nothing a later run could pick up
            shutil.rmtree(tmp, ignore_errors=True)
        raise
    if accelerator.is_main_process:
        if card is not None:
            write_model_card(tmp, card)
        (tmp / STATE_FILE).write_text(json.dumps(state, indent=1, sort_keys=True))
        if final.exists():
            shutil.rmtree(final)
        os.replace(tmp, final)
    accelerator.wait_for_everyone()
    return final


def _write_checkpoint(accelerator, model, tokenizer, optimizer, scheduler, tmp: Path, epoch: int) -> None:
    unwrapped = accelerator.unwrap_model(model)
    weights = gathered_state_dict(accelerator, model)
    if accelerator.is_main_process:
        unwrapped.save_pretrained(tmp, state_dict=weights, safe_serialization=True)
        tokenizer.save_pretrained(tmp)
        write_tokenizer_fingerprint(tmp, tokenizer)
        if not _sharded(accelerator):  # a shard of DeepSpeed / FSDP state is no use to a resume (refused there)
            torch.save(optimizer.state_dict(), tmp / "optimizer.pt")
            torch.save(scheduler.state_dict(), tmp / "scheduler.pt")
    kill_point(f"checkpoint-{epoch}")  # tests: killed with the checkpoint half written
    save_rng_state(tmp, accelerator.process_index)
    accelerator.wait_for_everyone()


def _sharded(accelerator) -> bool:
    from obliviate.train.parallel import SHARDED

    return accelerator.distributed_type in SHARDED


def load_weights(model, checkpoint: Path, is_peft: bool) -> None:
    """Load checkpoint weights into an already built (and, under LoRA, already wrapped) model, exactly."""
    if is_peft:
        from peft import set_peft_model_state_dict

        set_peft_model_state_dict(model, load_file(checkpoint / "adapter_model.safetensors"))
        return
    state = {}
    for shard in sorted(checkpoint.glob("model*.safetensors")):  # model.safetensors or its shards, not the RNG
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
    for name, target in (("optimizer.pt", optimizer), ("scheduler.pt", scheduler)):
        try:  # weights_only: tensors, numbers and containers; any other object in the file is refused unbuilt
            target.load_state_dict(torch.load(checkpoint / name, weights_only=True))
        except (pickle.UnpicklingError, RuntimeError, ValueError, KeyError, EOFError) as exc:
            reason = str(exc).splitlines()[0][:120] if str(exc) else type(exc).__name__
            raise TrainingError(f"checkpoint {checkpoint}: {name} cannot be restored safely ({reason})") from None
    load_rng_state(checkpoint, process_index)
    return json.loads((checkpoint / STATE_FILE).read_text())
