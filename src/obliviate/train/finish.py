"""The ends of a run: the final model (or adapter) written atomically, and what a resumed run restores from its last
checkpoint (weights, optimizer, schedule, RNG; log lines past it are dropped)."""

from __future__ import annotations

import json
import math
import os
import shutil
import tempfile
import time
from pathlib import Path
from typing import TYPE_CHECKING

from obliviate.config import TrainConfig
from obliviate.distributed import gathered_state_dict
from obliviate.errors import TrainingError
from obliviate.io import kill_point, write_text_atomic
from obliviate.model_card import write_model_card
from obliviate.models.load import write_tokenizer_fingerprint
from obliviate.train import checkpoint as ckpt

if TYPE_CHECKING:
    from obliviate.train.state import Run


def restore(run: Run, config: TrainConfig, tokenizer) -> None:
    found = ckpt.list_checkpoints(config.output_dir)
    if not found:
        return
    epoch, path = found[-1]
    unwrapped = run.accelerator.unwrap_model(run.model)
    ckpt.load_weights(unwrapped, path, run.is_peft)
    run.state = ckpt.load_training_state(path, run.optimizer, run.scheduler, run.accelerator.process_index)
    if run.state.get("stopped"):
        raise TrainingError(f"{config.output_dir} already finished ({run.state['stopped']}): nothing to resume")
    run.accelerator.print(f"resuming from {path} (epoch {epoch}, step {run.state['global_step']})")


def truncate_log(path: Path, last_step: int) -> None:
    """On resume, drop log lines written after the checkpoint, so that the log matches the weights."""
    if not path.exists():
        return
    kept = [line for line in path.read_text().splitlines() if logged_step(line) <= last_step]
    write_text_atomic(path, "".join(line + "\n" for line in kept))


def restart_log(path: Path, keep_trials: bool) -> int:
    """On a resume with no checkpoint (the run starts again from its first step), drop every line but the range
    test's, and those too unless ``keep_trials`` (the rate it chose is the one the run restarts with). A kept trial
    is kept no longer (its steps are taken again): ``continued`` goes, and every trial's tokens are spent. Returns
    them."""
    if not path.exists():
        return 0
    trials = []
    for line in path.read_text().splitlines():
        try:
            record = json.loads(line)
        except ValueError:
            continue  # a write cut off by the kill
        if keep_trials and isinstance(record, dict) and isinstance(record.get("lr_probe"), dict):
            record["lr_probe"].pop("continued", None)
            trials.append(record)
    write_text_atomic(path, "".join(json.dumps(record) + "\n" for record in trials))
    return sum(int(record["lr_probe"].get("tokens", 0)) for record in trials)


def logged_step(line: str) -> float:
    """The step of one ``metrics.jsonl`` line; a damaged line (a write cut off by a kill) counts as after any."""
    try:
        return int(json.loads(line)["step"])
    except (ValueError, KeyError, TypeError):
        return math.inf


def save_final(run: Run, tokenizer, output_dir: Path, config: TrainConfig, started: float | None = None) -> None:
    """The final model (or adapter) and its card into ``output_dir``; under LoRA with ``--merge`` also
    ``output_dir/merged``. ``trainer_state.json`` last, with the run's seconds per phase (``started``: the
    ``perf_counter`` the run began at)."""
    acc, clock = run.accelerator, time.perf_counter()
    acc.wait_for_everyone()
    unwrapped = acc.unwrap_model(run.model)
    weights = gathered_state_dict(acc, run.model)
    if acc.is_main_process:
        save_model_files(unwrapped, weights, tokenizer, output_dir, card=run.card)
        kill_point("final")  # tests: killed with the model written and trainer_state.json not yet
        if run.is_peft and config.merge:
            from obliviate.models.load import load_model, save_pretrained_atomic

            # from the saved adapter onto a fresh base on CPU: no second copy on the accelerator, and it works
            # when the trained weights are sharded (ZeRO-3 / FSDP)
            adapted, _ = load_model(output_dir, dtype=getattr(unwrapped, "dtype", None), device="cpu")
            save_pretrained_atomic(adapted.merge_and_unload(), tokenizer, output_dir / "merged")
            write_model_card(output_dir / "merged", {**run.card, "adapter": False, "merged": True})
        # trainer_state.json last: its presence says the final model is complete
        if run.timing:
            run.timing["save_seconds"] = time.perf_counter() - clock
            total = time.perf_counter() - started if started is not None else None
            timing = {**{k: round(v, 3) for k, v in run.timing.items()}, "total_seconds": round(total or 0.0, 3)}
        state = {**run.state, "timing": timing} if run.timing else run.state
        write_text_atomic(output_dir / "trainer_state.json", json.dumps(state, indent=1, sort_keys=True))
    acc.wait_for_everyone()


def save_model_files(model, weights, tokenizer, output_dir: Path, card: dict | None = None) -> None:
    """Save into a temporary sibling, then rename file by file: a failed write leaves no half-written weights.

    With ``card``, the model card (``README.md``, :mod:`obliviate.model_card`) goes in with the weights, replacing
    the stub peft writes beside an adapter."""
    tmp = Path(tempfile.mkdtemp(prefix=".final.tmp-", dir=output_dir))
    try:
        model.save_pretrained(tmp, state_dict=weights, safe_serialization=True)
        tokenizer.save_pretrained(tmp)
        write_tokenizer_fingerprint(tmp, tokenizer)
        if card is not None:
            write_model_card(tmp, card)
        for file in sorted(tmp.iterdir()):
            os.replace(file, output_dir / file.name)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
