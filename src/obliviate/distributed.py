"""Where this process sits in a launch (torchrun, accelerate launch), asked the same way by every layer."""

from __future__ import annotations

import os

import torch
from accelerate import PartialState


def cpu_launch() -> bool:
    """A multi-process launch without GPUs: accelerate joins the process group (gloo) only when told ``cpu=True``.

    Under a plain ``torchrun`` every process would otherwise train alone on the whole data and write the same files.
    """
    return not torch.cuda.is_available() and int(os.environ.get("WORLD_SIZE", "1")) > 1


def process_state() -> PartialState:
    """This process's place in the launch: rank, device, main or not; the same answer wherever it is asked."""
    return PartialState(cpu=cpu_launch())


def process_device() -> torch.device:
    """This process's accelerator device: ``cuda:LOCAL_RANK`` under a launch, the one GPU alone, else the CPU."""
    return torch.device(process_state().device)
