"""The architecture matrix: tiny random-weight models of every family in ``models.tiny.ARCHS``, saved as standard
Hugging Face directories (safetensors, a tokenizer trained on the data), go through ``finetune``, ``unlearn`` and
``evaluate`` as a user runs them (the CLI's ``main``, in-process).

The fast test takes the families the README names as tested through the minimum (1 fine-tuning step, 1 LoRA step of
NPO with its frozen reference, evaluation of a few rows); ``@pytest.mark.slow`` runs every family through full,
``--trainable_layers`` and LoRA unlearning, a reference method on full weights (ga_kl), RMU's layer hook, and
``evaluate --checkpoints``.
"""

from __future__ import annotations

import json
import math
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file
from transformers import AutoModelForCausalLM

from obliviate.cli.main import main
from obliviate.data.synth import synthesize, write_synth
from obliviate.models.tiny import ARCHS, init_model
from obliviate.models.trainable import decoder_layers

README_FAMILIES = ("olmo", "olmo2", "llama", "qwen2", "mistral", "phi3", "gemma", "gpt2")
"""The families the issue asks for by name: each runs in the default suite."""
OTHER_FAMILIES = tuple(a for a in ARCHS if a not in README_FAMILIES)
STEP = ["--max_length", "64", "--batch_size", "4", "--micro_batch_size", "4", "--max_steps", "1"]
QUIET = ["--stop_check_steps", "0", "--stop_forget_nll", "0", "--lr", "1e-3"]
MOE_LORA = {"mixtral": ["--lora_dropout", "0"]}  # peft adapts fused expert weights only without dropout


@pytest.fixture(scope="module")
def people(tmp_path_factory):
    data = synthesize(12, forget_fraction=0.25, holdout_fraction=0.25, seed=0)
    return data, write_synth(data, tmp_path_factory.mktemp("arch") / "data")


def _family(people, root: Path, arch: str) -> tuple[Path, Path, Path]:
    """Data, the untrained model of ``arch`` and the target fine-tuned from it for one step."""
    data, data_dir = people
    init = init_model(data.forget + data.retain, root / "init", size="micro", arch=arch, vocab_size=300)
    target = root / "target"
    splits = [str(data_dir / "forget"), str(data_dir / "retain")]
    assert main(["finetune", "--model", str(init), "--data", *splits, "--output_dir", str(target), *STEP]) == 0
    return data_dir, init, target


def _unlearn(data_dir: Path, model: Path, out: Path, *flags: str) -> Path:
    argv = ["unlearn", "--model_dir", str(model), "--output_dir", str(out), *STEP, *QUIET, *flags]
    argv += ["--forget_dir", str(data_dir / "forget"), "--retain_dir", str(data_dir / "retain")]
    assert main(argv) == 0
    return out


def _evaluate(data_dir: Path, out: Path, *what: str) -> dict:
    argv = ["evaluate", *what, "--forget_dir", str(data_dir / "forget"), "--retain_dir", str(data_dir / "retain")]
    argv += ["--holdout_dir", str(data_dir / "holdout"), "--max_examples", "3", "--max_new_tokens", "6"]
    assert main([*argv, "--no_exposure", "--batch_size", "4", "--output_dir", str(out)]) == 0
    return json.loads((out / "results.json").read_text())


def _changed(before: Path, after: Path) -> set[str]:
    a, b = load_file(before / "model.safetensors"), load_file(after / "model.safetensors")
    assert set(a) == set(b)
    return {name for name in a if not torch.equal(a[name], b[name])}


def _in_blocks(model_dir: Path, names: set[str], indices: set[int]) -> bool:
    """Whether every saved tensor name lies in one of decoder blocks ``indices`` (found as the loop finds blocks).

    By path prefix: a mixture of experts saves its fused experts under per-expert names (``experts.0.w1.weight``).
    """
    model = AutoModelForCausalLM.from_pretrained(model_dir)
    blocks = {id(block) for index, block in enumerate(decoder_layers(model)) if index in indices}
    prefixes = tuple(f"{name}." for name, module in model.named_modules() if id(module) in blocks)
    assert len(prefixes) == len(indices)
    return all(name.startswith(prefixes) for name in names)


def _check_adapter(run: Path, target: Path, layers: set[int] | None = None) -> None:
    """An adapter directory whose trained B matrices moved (they start at zero) and whose base was not written."""
    config = json.loads((run / "adapter_config.json").read_text())
    assert Path(config["base_model_name_or_path"]).resolve() == target.resolve()
    adapter = load_file(run / "adapter_model.safetensors")
    lora_b = {name: t for name, t in adapter.items() if "lora_B" in name}
    assert lora_b and any(t.abs().sum() > 0 for t in lora_b.values()), sorted(adapter)
    assert not (run / "model.safetensors").exists()
    if layers is not None:
        found = {int(part) for name in lora_b for part in name.split(".") if part.isdigit()}
        assert found == layers, sorted(lora_b)


def _check_scores(results: dict) -> None:
    summary = results["summary"]
    for key in ("forget/rougeL_recall", "retain/rougeL_recall"):
        assert isinstance(summary.get(key), float) and 0.0 <= summary[key] <= 1.0, (key, summary.get(key))
    assert all(math.isfinite(v) for v in summary.values() if isinstance(v, float)), summary


@pytest.mark.parametrize("arch", README_FAMILIES)
def test_each_named_family_finetunes_unlearns_with_lora_and_evaluates(people, tmp_path, arch):
    data_dir, init, target = _family(people, tmp_path, arch)
    assert _changed(init, target), "one fine-tuning step moved no weight"
    assert json.loads((target / "config.json").read_text())["model_type"] == arch
    run = _unlearn(data_dir, target, tmp_path / "lora", "--method", "npo", "--lora_r", "4")
    _check_adapter(run, target)
    _check_scores(_evaluate(data_dir, tmp_path / "eval", "--model", str(run)))


@pytest.mark.slow  # about 6 s per family, 27 families
@pytest.mark.parametrize("arch", list(ARCHS))
def test_every_family_through_the_whole_matrix(people, tmp_path, arch):
    data_dir, init, target = _family(people, tmp_path, arch)
    assert _changed(init, target)

    full = _unlearn(data_dir, target, tmp_path / "full", "--method", "ga_gd")
    assert _changed(target, full)

    last = _unlearn(data_dir, target, tmp_path / "last", "--method", "ga_gd", "--trainable_layers", "last:1")
    moved = _changed(target, last)
    assert moved and _in_blocks(target, moved, {1}), sorted(moved)

    lora = ["--lora_r", "4", "--trainable_layers", "0", *MOE_LORA.get(arch, [])]
    _check_adapter(_unlearn(data_dir, target, tmp_path / "lora", "--method", "npo", *lora), target, layers={0})

    kl = _unlearn(data_dir, target, tmp_path / "ga_kl", "--method", "ga_kl")
    assert _changed(target, kl)
    rmu = _unlearn(data_dir, target, tmp_path / "rmu", "--method", "rmu", "--rmu_layer", "1")
    rmu_moved = _changed(target, rmu)  # RMU trains the MLPs up to its layer, nothing of attention
    assert rmu_moved and _in_blocks(target, rmu_moved, {0, 1}), sorted(rmu_moved)
    assert not any("attn" in name or "attention" in name for name in rmu_moved), sorted(rmu_moved)

    epochs = _evaluate(data_dir, tmp_path / "eval", "--checkpoints", str(kl))["epochs"]
    assert [e["epoch"] for e in epochs] == [0, 1]  # the run's starting model, then its one checkpoint
    for epoch in epochs:
        _check_scores(epoch)


def test_a_mixture_of_experts_says_why_lora_cannot_take_its_experts(people, tmp_path, capsys):
    """Mixtral keeps its experts as fused 3-D weights: LoRA on them needs no dropout, and its MLP has no linear."""
    data_dir, _init, target = _family(people, tmp_path, "mixtral")
    argv = ["unlearn", "--model_dir", str(target), "--forget_dir", str(data_dir / "forget"), *STEP, *QUIET]
    argv += ["--retain_dir", str(data_dir / "retain"), "--method", "ga_gd", "--lora_r", "4"]
    assert main([*argv, "--output_dir", str(tmp_path / "a")]) == 2
    assert "fused 3-D weights, which peft adapts only without dropout" in capsys.readouterr().err
    assert main([*argv, "--trainable_layers", "0", "--trainable_modules", "mlp", "--output_dir", str(tmp_path / "b")])
    err = capsys.readouterr().err
    assert "finds no linear layer in MixtralDecoderLayer" in err and "fused 3-D (mixture-of-experts) weights" in err
    assert not (tmp_path / "a").exists() and not (tmp_path / "b").exists()


def test_the_readme_lists_exactly_the_tested_families():
    """README's list (between its tested-families markers) is ARCHS, the eight of the default suite first."""
    from transformers.models.auto.modeling_auto import MODEL_FOR_CAUSAL_LM_MAPPING_NAMES

    readme = (Path(__file__).resolve().parents[1] / "README.md").read_text(encoding="utf-8")
    section = readme.split("<!-- tested-families")[1].split("<!-- /tested-families -->")[0]
    listed = next(p for p in section.split("\n\n") if p.startswith("olmo,")).replace("\n", " ").rstrip(".")
    families = [name.strip() for name in listed.split(",")]
    assert families[: len(README_FAMILIES)] == list(README_FAMILIES)
    assert sorted(families) == sorted(ARCHS) and len(families) == len(set(families))
    assert not set(ARCHS) - set(MODEL_FOR_CAUSAL_LM_MAPPING_NAMES)  # each is a transformers causal-LM model type


def test_the_cli_offers_every_family_the_library_builds(tmp_path):
    """``--arch`` of ``finetune`` and ``init-model`` takes exactly ``ARCHS`` (config, a layer below, names them)."""
    from obliviate.config import TINY_ARCHS, TINY_SIZES
    from obliviate.models.tiny import SIZES

    assert TINY_ARCHS == tuple(ARCHS)
    assert TINY_SIZES == tuple(s for s in SIZES if s != "micro")  # --size and --model tiny|... offer every named size
    argv = ["init-model", "--arch", "no_such_model", "--data", str(tmp_path), "--output_dir", str(tmp_path / "o")]
    try:
        code = main(argv)
    except SystemExit as exc:
        code = exc.code
    assert code == 2 and not (tmp_path / "o").exists()


def test_a_position_table_overflow_is_a_clear_error_not_an_index_error(people, tmp_path, capsys):
    """GPT-2 learns a table of 1,024 positions: generating past it stops before any work with the flags to lower;
    OLMo (rotary) has no such limit."""
    from obliviate.models.load import position_limit

    data, data_dir = people
    gpt2 = init_model(data.forget + data.retain, tmp_path / "gpt2", size="micro", arch="gpt2", vocab_size=300)
    olmo = init_model(data.forget + data.retain, tmp_path / "olmo", size="micro", arch="olmo", vocab_size=300)
    assert position_limit(AutoModelForCausalLM.from_pretrained(gpt2)) == 1024
    assert position_limit(AutoModelForCausalLM.from_pretrained(olmo)) is None
    argv = ["evaluate", "--model", str(gpt2), "--forget_dir", str(data_dir / "forget"), "--retain_dir"]
    argv += [str(data_dir / "retain"), "--max_examples", "2", "--no_exposure", "--no_probes", "--max_new_tokens"]
    assert main([*argv, "2000", "--output_dir", str(tmp_path / "eval")]) != 0
    err = capsys.readouterr().err.strip().splitlines()
    assert "IndexError" not in "".join(err)
    assert "--max_new_tokens need" in err[-1] and "position table of 1024" in err[-1]
    assert not (tmp_path / "eval" / "results.json").exists()


def test_training_rows_longer_than_the_position_table_are_refused_before_training(people, tmp_path, capsys):
    from transformers import AutoTokenizer, GPT2Config

    data, data_dir = people
    source = init_model(data.forget + data.retain, tmp_path / "init", size="micro", arch="gpt2", vocab_size=300)
    tokenizer = AutoTokenizer.from_pretrained(source)
    config = GPT2Config(vocab_size=len(tokenizer), n_positions=16, n_embd=32, n_layer=1, n_head=2)
    short = tmp_path / "short"
    AutoModelForCausalLM.from_config(config).save_pretrained(short)
    tokenizer.save_pretrained(short)
    splits = [str(data_dir / "forget"), str(data_dir / "retain")]
    out = tmp_path / "target"
    assert main(["finetune", "--model", str(short), "--data", *splits, "--output_dir", str(out), *STEP]) != 0
    err = capsys.readouterr().err.strip().splitlines()[-1]
    assert "training rows (at most --max_length tokens) need" in err and "position table of 16" in err
    assert not (out / "model.safetensors").exists()
