"""What is trained: ``--trainable_layers``, ``--trainable_modules`` and LoRA adapters through peft."""

from __future__ import annotations

import re

import torch

from obliviate.errors import ConfigError

MODULE_GROUPS = ("all", "mlp", "attn")
_ATTN_PROJ = ("q_proj", "k_proj", "v_proj", "o_proj")
_MLP_PROJ = ("gate_proj", "up_proj", "down_proj")


_LAYER_PATHS = ("model.layers", "transformer.h", "gpt_neox.layers", "model.decoder.layers", "transformer.blocks")


def decoder_layers(model: torch.nn.Module) -> torch.nn.ModuleList:
    """The list of decoder blocks of a HF causal LM (``model.model.layers`` for OLMo / Llama families).

    The usual attribute paths are tried first; otherwise the first ``ModuleList`` as long as the config's layer count
    (``num_hidden_layers``, GPT-2's ``n_layer`` mapped to it) is taken, so that a family with its own naming works.
    """
    base = model.get_base_model() if hasattr(model, "get_base_model") else model
    for path in _LAYER_PATHS:
        module = base
        for part in path.split("."):
            module = getattr(module, part, None)
            if module is None:
                break
        if isinstance(module, torch.nn.ModuleList):
            return module
    count = getattr(getattr(base, "config", None), "num_hidden_layers", None)
    for _name, module in base.named_modules():
        if isinstance(module, torch.nn.ModuleList) and count and len(module) == count:
            return module
    raise ConfigError(
        f"cannot find the decoder layers of {type(base).__name__}: no {' / '.join(_LAYER_PATHS)} and no list of "
        f"{count} blocks, so --trainable_layers, LoRA and RMU cannot choose layers in it"
    )


def parse_layer_spec(spec: str, num_layers: int) -> list[int]:
    """``all``, ``0,1,5``, ``0-3``, ``last:8`` or a mix (``0-1,last:2``) → sorted layer indices.

    Raises:
        ConfigError: an index out of range, a malformed spec, or an empty selection; the message gives the model's
            layer count.
    """
    spec = spec.strip()
    if spec == "all":
        return list(range(num_layers))
    chosen: set[int] = set()
    for part in filter(None, (p.strip() for p in spec.split(","))):
        if match := re.fullmatch(r"last:(\d+)", part):
            count = int(match.group(1))
            if not 0 < count <= num_layers:
                raise ConfigError(
                    f"--trainable_layers {spec!r}: last:{count} is out of range, the model has {num_layers} layers"
                )
            chosen.update(range(num_layers - count, num_layers))
        elif match := re.fullmatch(r"(\d+)(?:-(\d+))?", part):
            low, high = int(match.group(1)), int(match.group(2) or match.group(1))
            if low > high or high >= num_layers:
                raise ConfigError(
                    f"--trainable_layers {spec!r}: {part} is out of range, the model has {num_layers}"
                    f" layers (0-{num_layers - 1})"
                )
            chosen.update(range(low, high + 1))
        else:
            raise ConfigError(f"--trainable_layers {spec!r}: expected all, 0,1,5, 0-3 or last:N; found {part!r}")
    if not chosen:
        raise ConfigError(f"--trainable_layers {spec!r} selects no layer; the model has {num_layers} layers")
    return sorted(chosen)


_MLP_NAMES = ("mlp", "feed_forward", "ffn", "fc1", "fc2", "block_sparse_moe", "experts")
"""Name parts of a block's MLP across families: Llama's ``mlp``, LFM2's ``feed_forward``, OPT's ``fc1`` / ``fc2``
(which sit in the block itself), Mixtral's ``block_sparse_moe``."""


def _in_group(name: str, modules: str) -> bool:
    if modules == "all":
        return True
    parts = name.split(".")
    if modules == "mlp":
        return any(part in _MLP_NAMES for part in parts)
    return any("attn" in part or "attention" in part for part in parts)


def select_trainable(model: torch.nn.Module, layers: str = "all", modules: str = "all") -> list[str]:
    """Set ``requires_grad`` so that only the chosen layers (and modules within them) train.

    ``all`` layers with ``all`` modules trains the full model, embeddings and ``lm_head`` included; any narrower
    choice freezes embeddings, final norm and ``lm_head``.

    Returns:
        The names of the trainable parameters.
    """
    if modules not in MODULE_GROUPS:
        raise ConfigError(f"--trainable_modules {modules!r}: expected one of {', '.join(MODULE_GROUPS)}")
    blocks = decoder_layers(model)
    indices = parse_layer_spec(layers, len(blocks))
    if layers.strip() == "all" and modules == "all":
        for param in model.parameters():
            param.requires_grad_(True)
        return [n for n, _ in model.named_parameters()]
    for param in model.parameters():
        param.requires_grad_(False)
    names = []
    for index in indices:
        for name, param in blocks[index].named_parameters():
            if _in_group(name, modules):
                param.requires_grad_(True)
                names.append(f"layers.{index}.{name}")
    if not names:
        raise ConfigError(f"--trainable_layers {layers!r} with --trainable_modules {modules!r} selects no parameter")
    return names


def lora_target_modules(target: str, modules: str = "all", model: torch.nn.Module | None = None) -> list[str] | str:
    """``--lora_target``: ``all-linear`` (default), ``attn``, ``mlp`` or a comma list of module names.

    ``all-linear`` narrowed by ``modules`` (or, with ``model`` given, always) is spelled out as the linear layers
    found inside the decoder blocks: peft accepts only a list of names together with ``layers_to_transform``.
    """
    if target == "all-linear":
        if model is not None:
            return _linear_names(model, modules)
        if modules == "mlp":
            return list(_MLP_PROJ)
        if modules == "attn":
            return list(_ATTN_PROJ)
        return "all-linear"
    if target == "attn":
        return list(_ATTN_PROJ)
    if target == "mlp":
        return list(_MLP_PROJ)
    names = [t.strip() for t in target.split(",") if t.strip()]
    if not names:
        raise ConfigError("--lora_target is empty: expected all-linear, attn, mlp or module names")
    return names


def _linear_names(model: torch.nn.Module, modules: str) -> list[str]:
    """Block-relative names (``self_attn.q_proj``, ``mlp.down_proj``, GPT-2's ``attn.c_attn``; peft matches them as
    suffixes) of the linear layers (``nn.Linear`` or transformers' ``Conv1D``, which peft adapts too) of the decoder
    blocks in group ``modules``.

    Raises:
        ConfigError: the group holds no linear layer; the message says what the group holds instead (a mixture of
            experts keeps its experts as fused 3-D weights, which LoRA's linear adapters cannot wrap).
    """
    from transformers.pytorch_utils import Conv1D  # GPT-2's projections: a linear layer with transposed weights

    names = set()
    blocks = decoder_layers(model)
    for block in blocks:
        for name, module in block.named_modules():
            if isinstance(module, (torch.nn.Linear, Conv1D)) and _in_group(name, modules):
                names.add(name)  # the path inside the block: GPT-2 has a c_proj in both attn and mlp
    if not names:
        raise ConfigError(_no_linear_reason(blocks[0], modules))
    return sorted(names)


def _no_linear_reason(block: torch.nn.Module, modules: str) -> str:
    """Why a block's ``modules`` group has nothing for LoRA: fused weights (experts) or no such group at all."""
    fused = [n for n, p in block.named_parameters() if p.dim() > 2 and _in_group(n, modules)]
    kind = type(block).__name__
    head = f"--lora_target all-linear with --trainable_modules {modules!r} finds no linear layer in {kind}"
    if fused:
        return (
            f"{head}: {', '.join(sorted(fused)[:3])} are fused 3-D (mixture-of-experts) weights, which LoRA's linear"
            " adapters cannot wrap; use --trainable_modules attn, or --lora_r 0 to train the weights themselves"
        )
    groups = sorted({n.split(".")[0] for n, _ in block.named_modules() if n})
    return f"{head}: its modules are {', '.join(groups)}; name them with --lora_target"


def _transposed(model: torch.nn.Module) -> bool:
    """GPT-2's blocks use transformers' ``Conv1D`` (weights stored in x out): peft is told (``fan_in_fan_out``)."""
    from transformers.pytorch_utils import Conv1D

    return any(isinstance(module, Conv1D) for module in decoder_layers(model)[0].modules())


def apply_lora(
    model: torch.nn.Module,
    *,
    r: int,
    alpha: float,
    dropout: float,
    target: str = "all-linear",
    layers: str = "all",
    modules: str = "all",
):
    """Wrap ``model`` with LoRA adapters (peft); only adapter weights train, the base stays frozen.

    ``--trainable_layers`` maps to peft's ``layers_to_transform``.
    """
    from peft import LoraConfig, get_peft_model

    if r <= 0:
        raise ConfigError(f"--lora_r must be positive, found {r}")
    if modules not in MODULE_GROUPS:
        raise ConfigError(f"--trainable_modules {modules!r}: expected one of {', '.join(MODULE_GROUPS)}")
    num_layers = len(decoder_layers(model))
    indices = parse_layer_spec(layers, num_layers)
    every_layer = len(indices) == num_layers
    # peft's "all-linear" shortcut cannot be combined with layers_to_transform
    spelled_out = model if target == "all-linear" and not (every_layer and modules == "all") else None
    try:
        config = LoraConfig(
            r=r,
            lora_alpha=alpha,
            lora_dropout=dropout,
            target_modules=lora_target_modules(target, modules, spelled_out),
            layers_to_transform=None if every_layer else indices,
            fan_in_fan_out=_transposed(model),
            task_type="CAUSAL_LM",
        )
        return get_peft_model(model, config)
    except ValueError as exc:
        reason = str(exc).splitlines()[0]
        if "ParamWrapper" in reason:  # peft's adapter of fused 3-D weights: the experts of a mixture of experts
            reason += " (the model's experts are fused 3-D weights, which peft adapts only without dropout)"
        raise ConfigError(f"cannot apply LoRA with --lora_target {target!r}: {reason}") from None
