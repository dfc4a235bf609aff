"""A tokenizer trained on the data itself and a tiny random-weight causal LM: the offline default.

The default architecture is OLMo; :data:`ARCHS` lists every family obliviate builds from a config alone (no hub
download) and tests end to end (``tests/test_arch_matrix.py``): the same named size in each family's config terms.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from dataclasses import dataclass
from pathlib import Path

import torch
from tokenizers import Regex, Tokenizer, decoders, models, pre_tokenizers, trainers
from transformers import AutoConfig, AutoModelForCausalLM, PreTrainedTokenizerFast

from obliviate.data.records import Record
from obliviate.errors import ConfigError

EOS, PAD, BOS = "<|endoftext|>", "<|padding|>", "<|bos|>"
DIGIT_GROUPS = r"\p{N}{1,3}"
"""How the offline tokenizer cuts numbers before BPE (:func:`train_tokenizer`)."""
TOKENIZER_VERSION = "bpe-digits3"
"""Names the offline tokenizer recipe in cache keys: models cached with another recipe are not reused."""


@dataclass(frozen=True)
class ModelSize:
    """A named architecture size. ``tiny`` is about 1.6 M parameters with a 4k vocabulary. ``finetune_lr`` is the
    peak rate the pipeline memorises with at this size: at 3e-3, ``small`` reached exact match 0.15 on the demo's
    training rows after 30 epochs where ``tiny`` memorised them (0.96) in 25. At 1e-3, ``medium`` left the demo's
    target one row short of the 0.95 threshold after 30 epochs (exact match 0.945 on the 66-row sample)."""

    hidden_size: int
    num_layers: int
    num_heads: int
    intermediate_size: int
    max_positions: int = 512
    finetune_lr: float = 3e-3


SIZES: dict[str, ModelSize] = {
    "tiny": ModelSize(hidden_size=128, num_layers=4, num_heads=4, intermediate_size=512),
    "small": ModelSize(hidden_size=256, num_layers=6, num_heads=8, intermediate_size=1024, finetune_lr=1e-3),
    "medium": ModelSize(hidden_size=384, num_layers=8, num_heads=6, intermediate_size=1536, finetune_lr=1e-3),
    # for the test suite only: fast enough to train dozens of runs on two CPU cores
    "micro": ModelSize(hidden_size=32, num_layers=2, num_heads=2, intermediate_size=64, max_positions=128),
}


LEARNED_POSITIONS = 1024
"""The position table of the families with learned absolute positions or a fixed sine table (GPT-2's own size).
Evaluation reads prompts of up to 512 tokens and generates up to 256 more; a table of ``max_positions`` (128 for
``micro``) would overflow, where rotary and ALiBi models merely extrapolate."""


def _learned(spec: ModelSize) -> dict:
    return {"max_position_embeddings": max(spec.max_positions, LEARNED_POSITIONS)}


def _half_head(spec: ModelSize) -> dict:
    """GPT-J and CodeGen rotate ``rotary_dim`` of each head's dimensions (the default, 64, exceeds a small head), from
    a sine table as long as the position table: neither extrapolates past it."""
    return {"rotary_dim": spec.hidden_size // spec.num_heads // 2, **_learned(spec)}


def _gpt2(spec: ModelSize) -> dict:
    return {"n_inner": spec.intermediate_size, **_learned(spec)}


def _ffn(spec: ModelSize) -> dict:
    """OPT names its MLP width ``ffn_dim`` and projects embeddings unless ``word_embed_proj_dim`` is the width."""
    return {"ffn_dim": spec.intermediate_size, "word_embed_proj_dim": spec.hidden_size, **_learned(spec)}


def _head_dim(spec: ModelSize) -> dict:
    """Gemma and Qwen3 fix ``head_dim`` (256, 128) instead of deriving it from the width: derive it here."""
    return {"head_dim": spec.hidden_size // spec.num_heads}


def _few_experts(spec: ModelSize) -> dict:
    """A mixture of experts small enough for a test: 4 experts, 2 per token."""
    return {"num_local_experts": 4, "num_experts_per_tok": 2}


# Hugging Face ``model_type`` → what its config needs beyond the shared size fields (see :func:`build_config`).
ARCHS: dict[str, Callable[[ModelSize], dict] | None] = {
    "olmo": None,
    "olmo2": None,
    "olmo3": None,
    "llama": None,
    "qwen2": None,
    "qwen3": _head_dim,
    "mistral": None,
    "mixtral": _few_experts,
    "phi": None,
    "phi3": None,
    "gemma": _head_dim,
    "gemma2": _head_dim,
    "gemma3_text": _head_dim,
    "gpt2": _gpt2,
    "gpt_bigcode": _gpt2,
    "gpt_neox": None,
    "gptj": _half_head,
    "codegen": _half_head,
    "falcon": None,
    "bloom": None,
    "opt": _ffn,
    "stablelm": None,
    "starcoder2": None,
    "granite": None,
    "cohere": None,
    "smollm3": None,
    "mpt": lambda spec: {"d_model": spec.hidden_size, "n_heads": spec.num_heads, "n_layers": spec.num_layers},
}


def train_tokenizer(texts: Iterable[str], vocab_size: int = 4096) -> PreTrainedTokenizerFast:
    """Train a byte-level BPE tokenizer (GPT-NeoX / OLMo style, no prefix space) on ``texts``.

    Digits are cut into groups of at most three before BPE sees them (``\\p{N}{1,3}``, as the OLMo 2 and Llama 3
    tokenizers do), so that no token holds more than three digits. Trained on the data itself, a plain byte-level BPE
    made whole values into tokens (a demo SSN, ``717646989``, was one): every model directory's ``tokenizer.json``
    then listed forget-set SSNs and phone numbers for anyone to read, and a value that is one token is unlearned by
    moving one logit, which no pretrained tokenizer allows.

    No special token is added around a text, as with OLMo's own tokenizer: the data pipeline appends eos to answers.
    """
    tokenizer = Tokenizer(models.BPE())
    tokenizer.pre_tokenizer = pre_tokenizers.Sequence(
        [
            pre_tokenizers.Split(Regex(DIGIT_GROUPS), behavior="isolated"),
            pre_tokenizers.ByteLevel(add_prefix_space=False),
        ]
    )
    tokenizer.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size,
        special_tokens=[EOS, PAD, BOS],
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    tokenizer.train_from_iterator(texts, trainer=trainer)
    return PreTrainedTokenizerFast(tokenizer_object=tokenizer, eos_token=EOS, pad_token=PAD, bos_token=BOS)


def build_config(size: str, vocab_size: int, tokenizer=None, arch: str = "olmo"):
    """The config of an untrained ``arch`` model of a named size, with tied embeddings.

    The shared fields (``hidden_size``, ``num_hidden_layers``, ...) reach every family through its config's own
    names (transformers maps them, e.g. GPT-2's ``n_embd``); :data:`ARCHS` adds what a family needs besides.
    """
    if size not in SIZES:
        raise ConfigError(f"unknown model size {size!r}: expected one of {', '.join(SIZES)}")
    if arch not in ARCHS:
        raise ConfigError(f"unknown architecture {arch!r}: expected one of {', '.join(ARCHS)}")
    spec = SIZES[size]
    extra = ARCHS[arch]
    fields = {
        "vocab_size": vocab_size,
        "hidden_size": spec.hidden_size,
        "intermediate_size": spec.intermediate_size,
        "num_hidden_layers": spec.num_layers,
        "num_attention_heads": spec.num_heads,
        "num_key_value_heads": spec.num_heads,
        "max_position_embeddings": spec.max_positions,
        **(extra(spec) if callable(extra) else {}),
    }
    return AutoConfig.for_model(
        arch,
        **fields,
        tie_word_embeddings=True,
        pad_token_id=tokenizer.pad_token_id if tokenizer is not None else None,
        eos_token_id=tokenizer.eos_token_id if tokenizer is not None else None,
        bos_token_id=tokenizer.bos_token_id if tokenizer is not None else None,
    )


def build_model(size: str, vocab_size: int, tokenizer=None, arch: str = "olmo", seed: int = 0) -> torch.nn.Module:
    """An untrained causal LM of family ``arch`` (default OLMo) and a named size, on CPU in fp32."""
    config = build_config(size, vocab_size, tokenizer, arch)
    torch.manual_seed(seed)
    return AutoModelForCausalLM.from_config(config)


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
