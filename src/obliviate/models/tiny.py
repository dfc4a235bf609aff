"""A tokenizer trained on the data itself and a tiny OLMo-architecture model: the offline default."""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path

import torch
from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
from transformers import Olmo2Config, Olmo2ForCausalLM, OlmoConfig, OlmoForCausalLM, PreTrainedTokenizerFast

from obliviate.data.records import Record
from obliviate.errors import ConfigError

EOS, PAD, BOS = "<|endoftext|>", "<|padding|>", "<|bos|>"


@dataclass(frozen=True)
class ModelSize:
    """A named architecture size. ``tiny`` is about 1.6 M parameters with a 4k vocabulary."""

    hidden_size: int
    num_layers: int
    num_heads: int
    intermediate_size: int
    max_positions: int = 512


SIZES: dict[str, ModelSize] = {
    "tiny": ModelSize(hidden_size=128, num_layers=4, num_heads=4, intermediate_size=512),
    "small": ModelSize(hidden_size=256, num_layers=6, num_heads=8, intermediate_size=1024),
    # for the test suite only: fast enough to train dozens of runs on two CPU cores
    "micro": ModelSize(hidden_size=32, num_layers=2, num_heads=2, intermediate_size=64, max_positions=128),
}
ARCHS = ("olmo", "olmo2")


def train_tokenizer(texts: Iterable[str], vocab_size: int = 4096) -> PreTrainedTokenizerFast:
    """Train a byte-level BPE tokenizer (GPT-NeoX / OLMo style, no prefix space) on ``texts``.

    No special token is added around a text, as with OLMo's own tokenizer: the data pipeline appends eos to answers.
    """
    tokenizer = Tokenizer(models.BPE())
    tokenizer.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tokenizer.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size,
        special_tokens=[EOS, PAD, BOS],
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    tokenizer.train_from_iterator(texts, trainer=trainer)
    return PreTrainedTokenizerFast(tokenizer_object=tokenizer, eos_token=EOS, pad_token=PAD, bos_token=BOS)


def build_model(size: str, vocab_size: int, tokenizer=None, arch: str = "olmo", seed: int = 0) -> torch.nn.Module:
    """An untrained OLMo (or OLMo-2) causal LM of a named size, with tied embeddings, on CPU in fp32."""
    if size not in SIZES:
        raise ConfigError(f"unknown model size {size!r}: expected one of {', '.join(SIZES)}")
    if arch not in ARCHS:
        raise ConfigError(f"unknown architecture {arch!r}: expected one of {', '.join(ARCHS)}")
    spec = SIZES[size]
    config_cls, model_cls = (OlmoConfig, OlmoForCausalLM) if arch == "olmo" else (Olmo2Config, Olmo2ForCausalLM)
    config = config_cls(
        vocab_size=vocab_size,
        hidden_size=spec.hidden_size,
        intermediate_size=spec.intermediate_size,
        num_hidden_layers=spec.num_layers,
        num_attention_heads=spec.num_heads,
        num_key_value_heads=spec.num_heads,
        max_position_embeddings=spec.max_positions,
        tie_word_embeddings=True,
        pad_token_id=tokenizer.pad_token_id if tokenizer is not None else None,
        eos_token_id=tokenizer.eos_token_id if tokenizer is not None else None,
        bos_token_id=tokenizer.bos_token_id if tokenizer is not None else None,
    )
    torch.manual_seed(seed)
    return model_cls(config)


def init_model(
    records: list[Record],
    output_dir: str | Path,
    size: str = "tiny",
    arch: str = "olmo",
    vocab_size: int = 4096,
    seed: int = 0,
) -> Path:
    """Train a tokenizer on ``records`` and save an untrained model of ``size`` as a standard HF directory.

    The directory loads with ``AutoModelForCausalLM`` / ``AutoTokenizer`` without importing obliviate.
    """
    from obliviate.models.load import save_pretrained_atomic

    tokenizer = train_tokenizer((r.text for r in records), vocab_size=vocab_size)
    model = build_model(size, len(tokenizer), tokenizer=tokenizer, arch=arch, seed=seed)
    return save_pretrained_atomic(model, tokenizer, output_dir)


def count_parameters(model: torch.nn.Module) -> int:
    """Unique parameters (tied embeddings counted once)."""
    return sum(p.numel() for p in {id(p): p for p in model.parameters()}.values())
