"""Where this process sits in a launch (torchrun, accelerate launch), asked the same way by every layer."""

from __future__ import annotations

import os

import torch
from accelerate import Accelerator, PartialState
from accelerate.state import AcceleratorState
from accelerate.utils import DistributedType


def cpu_launch() -> bool:
    """A multi-process launch without GPUs: accelerate joins the process group (gloo) only when told ``cpu=True``.

    Under a plain ``torchrun`` every process would otherwise train alone on the whole data and write the same files.
    """
    return not torch.cuda.is_available() and int(os.environ.get("WORLD_SIZE", "1")) > 1


def fsdp_requested() -> bool:
    """Launched with an FSDP config: ``accelerate launch`` exports ``ACCELERATE_USE_FSDP`` to every process."""
    return os.environ.get("ACCELERATE_USE_FSDP", "false").lower() in ("1", "true")


def process_state() -> PartialState:
    """This process's place in the launch: rank, device, main or not; the same answer wherever it is asked."""
    state = PartialState(cpu=cpu_launch())
    if cpu_launch() and fsdp_requested():
        _admit_fsdp_on_cpu(state)
    return state


def _admit_fsdp_on_cpu(state: PartialState) -> None:
    """Let the accelerator that is built next shard with FSDP on the CPU processes of this gloo group.

    accelerate attaches the FSDP plugin only where the process group is on an accelerator device (its
    ``AcceleratorState`` takes the FSDP branch for ``MULTI_GPU``-like types, never for ``MULTI_CPU``): a CPU launch
    with an FSDP config would otherwise train as plain DDP, silently, with every rank holding the whole model. So,
    before the accelerator exists, the group (already joined over gloo) is described as a multi-device one; the
    accelerator then switches it to ``FSDP`` itself. The device is the bare ``cpu``: torch's FSDP compares its
    ``device_id`` with the parameters' device, and ``cpu:0`` (what accelerate names a CPU rank) is not ``cpu``.
    While an accelerator exists nothing is changed; after it is reset (the state still says ``FSDP``) the next one
    is admitted the same way.
    """
    if AcceleratorState._shared_state or state.distributed_type not in (
        DistributedType.MULTI_CPU,
        DistributedType.FSDP,
    ):
        return
    PartialState._shared_state["distributed_type"] = DistributedType.MULTI_GPU
    PartialState._shared_state["device"] = torch.device("cpu")


def gathered_state_dict(accelerator: Accelerator, model: torch.nn.Module) -> dict[str, torch.Tensor]:
    """The whole model's weights on the main process, as ``accelerator.get_state_dict`` gives them, also under FSDP
    on CPU processes.

    accelerate gathers FSDP weights with ``offload_to_cpu=True``. Where the compute device is the CPU itself, torch's
    FSDP (2.13) then clones views of unsharded parameters whose memory it has already freed: a segmentation fault
    at the first checkpoint. On the CPU there is nothing to offload, so the gather is asked without it.
    """
    cpu_fsdp = accelerator.distributed_type == DistributedType.FSDP and accelerator.device.type == "cpu"
    if not cpu_fsdp or getattr(accelerator, "is_fsdp2", False):
        return accelerator.get_state_dict(model)
    from torch.distributed.fsdp import FullStateDictConfig, StateDictType
    from torch.distributed.fsdp import FullyShardedDataParallel as FSDP

    gather = FullStateDictConfig(offload_to_cpu=False, rank0_only=True)
    with FSDP.state_dict_type(model, StateDictType.FULL_STATE_DICT, gather):
        return model.state_dict()


def process_device() -> torch.device:
    """This process's accelerator device: ``cuda:LOCAL_RANK`` under a launch, the one GPU alone, else the CPU."""
    return torch.device(process_state().device)
