"""Shared fixtures."""

from __future__ import annotations

import os
from pathlib import Path

os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")  # see obliviate/cli/main.py: spinning threads thrash shared CPUs

import pytest  # noqa: E402 (OMP_WAIT_POLICY must be set first)

pytest_plugins = ["helpers"]  # the shared micro-model fixtures of tests/helpers.py


@pytest.fixture
def lume_dir() -> Path:
    """The public LUME release next to the project (``../shared/data/lume``), read-only; skipped when absent."""
    path = Path(__file__).resolve().parents[2] / "shared" / "data" / "lume"
    if not (path / "forget.jsonl").is_file():
        pytest.skip(f"LUME data not found at {path}")
    return path


@pytest.fixture(autouse=True)
def _fresh_accelerator_state():
    """Tests that call ``setup`` directly leave an accelerator behind (``train`` resets it in its ``finally``);
    accelerate refuses a second one with another precision in the same process, so each test starts clean."""
    yield
    from accelerate.state import AcceleratorState

    AcceleratorState._reset_state()
