"""Load any Hugging Face causal LM (local directory or hub id) safely, and save one atomically."""

from __future__ import annotations

import json
import os
import shutil
import tempfile
from pathlib import Path

import torch
from transformers import AutoModelForCausalLM, AutoTokenizer

from obliviate.errors import ModelError

_WEIGHT_FILES = ("model.safetensors", "model.safetensors.index.json")


def default_dtype(device: torch.device | str | None = None) -> torch.dtype:
    """bf16 on CUDA devices that support it, fp32 otherwise (CPU bf16 matmuls are slow and lossy)."""
    device = torch.device(device) if device is not None else None
    if torch.cuda.is_available() and (device is None or device.type == "cuda") and torch.cuda.is_bf16_supported():
        return torch.bfloat16
    return torch.float32


def process_device() -> torch.device:
    """This process's device (see :func:`obliviate.distributed.process_device`).

    Evaluation loads onto it (and :func:`default_dtype` then picks bf16 only there); training loads onto the CPU and
    lets accelerate place or shard the model.
    """
    from obliviate import distributed

    return distributed.process_device()


def is_adapter_dir(path: str | Path) -> bool:
    return (Path(path) / "adapter_config.json").is_file()


def check_model_dir(path: Path) -> None:
    """A local model directory must hold a config and safetensors weights; pickled weights are refused."""
    if not path.is_dir():
        raise ModelError(f"model directory {path} does not exist")
    if not (path / "config.json").is_file():
        raise ModelError(f"{path} is not a model directory: expected config.json, found {_listing(path)}")
    if not any((path / name).is_file() for name in _WEIGHT_FILES) and not list(path.glob("*.safetensors")):
        pickled = [p.name for p in path.glob("*.bin")] + [p.name for p in path.glob("*.pt")]
        found = f"only pickled weights ({', '.join(pickled)})" if pickled else _listing(path)
        raise ModelError(f"{path} holds no safetensors weights: expected model.safetensors, found {found}")


def _listing(path: Path) -> str:
    names = sorted(p.name for p in path.iterdir())[:8]
    return ", ".join(names) if names else "an empty directory"


def _looks_local(name_or_path: str) -> bool:
    return name_or_path.startswith((".", "/", "~")) or os.path.exists(name_or_path) or name_or_path.count("/") > 1


def load_tokenizer(name_or_path: str | Path, trust_remote_code: bool = False):
    """Load a tokenizer; when it has no pad token, eos is used for padding.

    Callers must take attention masks from the tokenizer or the collator, never from ``input_ids != pad_id``:
    with pad = eos that would hide real eos tokens.
    """
    try:
        tokenizer = AutoTokenizer.from_pretrained(str(name_or_path), trust_remote_code=trust_remote_code)
    except (OSError, ValueError) as exc:
        raise ModelError(f"cannot load a tokenizer from {name_or_path}: {str(exc).splitlines()[0]}") from None
    if tokenizer.pad_token is None:
        if tokenizer.eos_token is None:
            raise ModelError(f"tokenizer of {name_or_path} has neither a pad nor an eos token")
        tokenizer.pad_token = tokenizer.eos_token
    return tokenizer


def load_model(
    name_or_path: str | Path,
    *,
    base_model: str | Path | None = None,
    dtype: torch.dtype | None = None,
    device: torch.device | str | None = None,
    trust_remote_code: bool = False,
):
    """Load ``(model, tokenizer)`` from a local directory, a hub id, or a PEFT adapter directory.

    Args:
        name_or_path: a local HF directory, a hub id, or a directory with ``adapter_config.json``.
        base_model: the base for an adapter whose ``adapter_config.json`` names none (or to override it).
        dtype: defaults to :func:`default_dtype` of ``device``, or, with no device given, of the training device
            (bf16 for a frozen LoRA base that accelerate will move to the GPU).
        device: where to put the model; defaults to CPU (accelerate moves it when training). Evaluation passes
            :func:`process_device`.
        trust_remote_code: run code shipped with the model; off unless explicitly asked for.

    Raises:
        ModelError: missing directory, no config, no safetensors weights, an adapter without a base, or a tokenizer
            whose vocabulary does not fit the model's embeddings.
    """
    path = Path(str(name_or_path)).expanduser()
    dtype = dtype or default_dtype(device)
    if is_adapter_dir(path):
        return _load_adapter(path, base_model, dtype, device, trust_remote_code)
    local = _looks_local(str(name_or_path))
    if local:
        check_model_dir(path)
    # absolute, so that an adapter trained on it records a base path that loads from any working directory
    source = str(path.resolve()) if local else str(name_or_path)
    try:
        model = AutoModelForCausalLM.from_pretrained(
            source, dtype=dtype, use_safetensors=True, trust_remote_code=trust_remote_code
        )
    except (OSError, ValueError) as exc:
        raise ModelError(f"cannot load a causal LM from {name_or_path}: {str(exc).splitlines()[0]}") from None
    tokenizer = load_tokenizer(source, trust_remote_code=trust_remote_code)
    check_vocab(model, tokenizer, source)
    if local:
        check_tokenizer_fingerprint(path, tokenizer)
    return model.to(device or "cpu"), tokenizer


def _load_adapter(path: Path, base_model, dtype, device, trust_remote_code):
    from peft import PeftModel

    config = json.loads((path / "adapter_config.json").read_text())
    base = base_model or config.get("base_model_name_or_path")
    if not base:
        raise ModelError(f"adapter {path} names no base model in adapter_config.json: pass --base_model")
    if _looks_local(str(base)) and not Path(str(base)).expanduser().exists():
        raise ModelError(f"adapter {path} needs base model {base}, which does not exist: pass --base_model")
    model, tokenizer = load_model(base, dtype=dtype, device=device, trust_remote_code=trust_remote_code)
    if (path / "tokenizer_config.json").is_file():
        tokenizer = load_tokenizer(path, trust_remote_code=trust_remote_code)
        check_vocab(model, tokenizer, path)
        check_tokenizer_fingerprint(path, tokenizer)
    model = PeftModel.from_pretrained(model, str(path), is_trainable=False)
    return model, tokenizer


POSITION_TABLES = ("wpe", "embed_positions", "position_embeddings")
"""Names of the learned position tables (GPT-2's ``wpe``, OPT's ``embed_positions``) and fixed sine tables (GPT-J's
``embed_positions`` buffer): a model with one cannot take a position past it, where rotary and ALiBi models merely
extrapolate."""


def position_limit(model) -> int | None:
    """How many positions ``model`` can take: its config's ``n_positions`` / ``max_position_embeddings`` when it has a
    learned or fixed position table (:data:`POSITION_TABLES`), else ``None`` (no hard limit)."""
    names = [name for name, _ in model.named_modules()] + [name for name, _ in model.named_buffers()]
    if not any(name.rsplit(".", 1)[-1] in POSITION_TABLES for name in names):
        return None
    config = getattr(model, "config", None)
    for key in ("n_positions", "max_position_embeddings", "n_ctx"):
        value = getattr(config, key, None)
        if isinstance(value, int) and value > 0:
            return value
    return None


def check_positions(model, longest: int, what: str) -> None:
    """A clear error, instead of an ``IndexError`` deep in the model, when ``longest`` positions overflow the model's
    position table; ``what`` says which sequences and which flags set their length."""
    limit = position_limit(model)
    if limit is not None and longest > limit:
        kind = getattr(getattr(model, "config", None), "model_type", "this model")
        raise ModelError(
            f"{what} need {longest} positions, but {kind} has a position table of {limit} and cannot go past it: "
            "lower them (rotary models such as OLMo and Llama have no such limit)"
        )


def check_vocab(model, tokenizer, source) -> None:
    """The tokenizer must not produce ids the embedding matrix does not have."""
    rows = model.get_input_embeddings().num_embeddings
    if len(tokenizer) > rows:
        raise ModelError(
            f"tokenizer of {source} has {len(tokenizer)} tokens but the model's embeddings have {rows} rows:"
            " the tokenizer does not belong to this model"
        )


def save_pretrained_atomic(model, tokenizer, output_dir: str | Path, **save_kwargs) -> Path:
    """Save model (safetensors) and tokenizer into a temporary sibling directory, then rename it into place."""
    output_dir = Path(output_dir)
    output_dir.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{output_dir.name}.tmp-", dir=output_dir.parent))
    try:
        model.save_pretrained(tmp, safe_serialization=True, **save_kwargs)
        if tokenizer is not None:
            tokenizer.save_pretrained(tmp)
            write_tokenizer_fingerprint(tmp, tokenizer)
        if output_dir.exists():
            shutil.rmtree(output_dir)
        os.replace(tmp, output_dir)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return output_dir


TOKENIZER_FINGERPRINT = "obliviate_tokenizer.json"
"""Written beside every model obliviate saves: the hash of the tokenizer it was trained with."""


def tokenizer_fingerprint(tokenizer) -> str:
    """sha256 of the tokenizer's vocabulary (token → id, sorted): the same for one tokenizer however it is saved."""
    import hashlib

    vocab = sorted(tokenizer.get_vocab().items())
    return hashlib.sha256(json.dumps(vocab, ensure_ascii=False).encode()).hexdigest()


def write_tokenizer_fingerprint(directory: str | Path, tokenizer) -> None:
    payload = {"tokenizer_sha256": tokenizer_fingerprint(tokenizer), "vocab_size": len(tokenizer)}
    (Path(directory) / TOKENIZER_FINGERPRINT).write_text(json.dumps(payload) + "\n")


def check_tokenizer_fingerprint(directory: str | Path, tokenizer) -> None:
    """A model directory obliviate wrote names the tokenizer it was trained with; a swapped tokenizer is refused.

    Without the record (a model from elsewhere) only :func:`check_vocab`'s size check applies.
    """
    record = Path(directory) / TOKENIZER_FINGERPRINT
    if not record.is_file():
        return
    try:
        expected = json.loads(record.read_text())["tokenizer_sha256"]
    except (ValueError, KeyError, TypeError):
        raise ModelError(f"{record} is damaged: expected a JSON object with tokenizer_sha256") from None
    if tokenizer_fingerprint(tokenizer) != expected:
        raise ModelError(
            f"the tokenizer in {directory} is not the one its model was trained with (vocabulary hash differs from "
            f"{record.name}): restore the original tokenizer files"
        )


def model_paths(name_or_path: str | Path) -> list[str]:
    """Every local path loading ``name_or_path`` reads: the directory and, for an adapter, its base model."""
    path = Path(str(name_or_path)).expanduser()
    if not path.exists():
        return []
    paths = [str(path)]
    if is_adapter_dir(path):
        try:
            base = json.loads((path / "adapter_config.json").read_text()).get("base_model_name_or_path")
        except (ValueError, AttributeError, UnicodeDecodeError):
            base = None
        if base and Path(str(base)).expanduser().exists():
            paths.append(str(base))
    return paths
