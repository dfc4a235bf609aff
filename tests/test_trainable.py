"""--trainable_layers, --trainable_modules and LoRA: which parameters may move."""

from __future__ import annotations

import pytest

from obliviate.errors import ConfigError
from obliviate.models.load import load_model
from obliviate.models.trainable import apply_lora, decoder_layers, parse_layer_spec, select_trainable

pytest_plugins = ["helpers"]  # the micro model and data fixtures

ATTN, MLP = {"q_proj", "k_proj", "v_proj", "o_proj"}, {"gate_proj", "up_proj", "down_proj"}


@pytest.mark.parametrize(
    ("spec", "expected"),
    [
        ("all", [0, 1, 2, 3, 4, 5]),
        ("0,1,5", [0, 1, 5]),
        ("0-3", [0, 1, 2, 3]),
        ("last:2", [4, 5]),
        ("0-1,last:2", [0, 1, 4, 5]),
        (" 3 , 3 ", [3]),
        ("last:6", [0, 1, 2, 3, 4, 5]),
    ],
)
def test_layer_specs(spec, expected):
    assert parse_layer_spec(spec, 6) == expected


@pytest.mark.parametrize(
    ("spec", "message"),
    [
        ("6", "6 is out of range, the model has 6 layers"),
        ("2-9", "out of range, the model has 6 layers"),
        ("3-1", "out of range"),
        ("last:0", "last:0 is out of range, the model has 6 layers"),
        ("last:7", "the model has 6 layers"),
        ("", "selects no layer; the model has 6 layers"),
        (",", "selects no layer"),
        ("first:2", "expected all, 0,1,5, 0-3 or last:N; found 'first:2'"),
        ("-1", "found"),
    ],
)
def test_bad_layer_specs_give_the_layer_count(spec, message):
    with pytest.raises(ConfigError, match=message):
        parse_layer_spec(spec, 6)


def trainable(model) -> set[str]:
    return {name for name, p in model.named_parameters() if p.requires_grad}


def test_select_trainable(assets):
    model, _ = load_model(assets.model)
    every = {name for name, _ in model.named_parameters()}
    assert set(select_trainable(model, "all", "all")) == trainable(model) == every

    select_trainable(model, "last:1", "all")
    assert trainable(model) == {n for n in every if n.startswith("model.layers.1.")}
    select_trainable(model, "all", "mlp")
    assert trainable(model) == {n for n in every if ".mlp." in n}
    names = select_trainable(model, "0", "attn")
    assert trainable(model) == {n for n in every if n.startswith("model.layers.0.self_attn.")}
    assert len(names) == 4
    assert "model.embed_tokens.weight" not in trainable(model)
    with pytest.raises(ConfigError, match="expected one of all, mlp, attn"):
        select_trainable(model, "all", "ffn")


@pytest.mark.parametrize(
    ("layers", "modules", "adapted"),
    [
        ("all", "all", {"0.self_attn", "0.mlp", "1.self_attn", "1.mlp"}),
        ("last:1", "all", {"1.self_attn", "1.mlp"}),
        ("0", "mlp", {"0.mlp"}),
        ("all", "attn", {"0.self_attn", "1.self_attn"}),
    ],
)
def test_lora_adapts_the_selected_layers_only(assets, layers, modules, adapted):
    model, _ = load_model(assets.model)
    peft_model = apply_lora(model, r=4, alpha=8.0, dropout=0.0, layers=layers, modules=modules)
    names = trainable(peft_model)
    assert names and all("lora_" in name for name in names)
    found = {".".join(name.split("model.layers.")[1].split(".")[:2]) for name in names}
    assert found == adapted
    projections = {name.split(".")[-4] for name in names}  # ...q_proj.lora_A.default.weight
    assert projections == {"mlp": MLP, "attn": ATTN, "all": ATTN | MLP}[modules]
    assert len(decoder_layers(peft_model)) == 2


def test_lora_errors_are_config_errors(assets):
    model, _ = load_model(assets.model)
    with pytest.raises(ConfigError, match="--lora_r must be positive"):
        apply_lora(model, r=0, alpha=8.0, dropout=0.0)
    with pytest.raises(ConfigError, match="the model has 2 layers"):
        apply_lora(model, r=4, alpha=8.0, dropout=0.0, layers="5")
    with pytest.raises(ConfigError, match="--lora_target 'no_such_proj'"):
        apply_lora(model, r=4, alpha=8.0, dropout=0.0, target="no_such_proj")


@pytest.mark.parametrize("layers, modules", [("all", "all"), ("0", "all"), ("1", "mlp")])
def test_lora_on_gpt2_conv1d_projections_for_chosen_layers(layers, modules):
    """GPT-2's projections are transformers' Conv1D: chosen layers must find them (peft adapts them)."""
    from transformers import GPT2Config, GPT2LMHeadModel

    model = GPT2LMHeadModel(GPT2Config(n_layer=2, n_embd=32, n_head=2, vocab_size=300, n_positions=64))
    adapted = apply_lora(model, r=4, alpha=8, dropout=0.0, layers=layers, modules=modules)
    trained = [name for name, p in adapted.named_parameters() if p.requires_grad]
    assert trained and all("lora_" in name for name in trained)
    if layers != "all":
        assert all(f".h.{layers}." in name for name in trained), trained
    if modules == "mlp":
        assert all(".mlp." in name for name in trained), trained


def test_decoder_layers_found_by_count_when_the_path_is_unusual():
    """BioGPT keeps its blocks at ``biogpt.layers``: no known path, but the only list of num_hidden_layers blocks."""
    from transformers import BioGptConfig, BioGptForCausalLM

    model = BioGptForCausalLM(
        BioGptConfig(vocab_size=100, hidden_size=32, num_hidden_layers=3, num_attention_heads=2, intermediate_size=64)
    )
    assert decoder_layers(model) is model.biogpt.layers
    names = select_trainable(model, "last:1", "attn")
    assert names and all(n.startswith("layers.2.self_attn") for n in names)  # its layer norm included


def test_a_model_without_decoder_layers_says_what_was_looked_for():
    import torch

    class Flat(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.proj = torch.nn.Linear(4, 4)

    with pytest.raises(ConfigError, match=r"cannot find the decoder layers of Flat: no model.layers / transformer.h"):
        decoder_layers(Flat())


def test_mlp_group_covers_families_without_an_mlp_module():
    """OPT's fc1 / fc2 sit in the block itself: --trainable_modules mlp must still find them, and LoRA too."""
    from transformers import OPTConfig, OPTForCausalLM

    config = OPTConfig(vocab_size=100, hidden_size=32, num_hidden_layers=2, ffn_dim=64, num_attention_heads=2)
    model = OPTForCausalLM(config.__class__(**{**config.to_dict(), "word_embed_proj_dim": 32}))
    names = select_trainable(model, "0", "mlp")
    assert sorted({n.split(".")[2] for n in names}) == ["fc1", "fc2"]
    adapted = apply_lora(model, r=2, alpha=4.0, dropout=0.0, layers="1", modules="mlp")
    lora = {n for n, p in adapted.named_parameters() if p.requires_grad}
    assert lora and all(".layers.1.fc" in n for n in lora), sorted(lora)


def test_contrast_trains_the_mlps_on_matched_retain_rows_by_default_and_an_explicit_choice_wins(tmp_path):
    """``--trainable_modules auto`` and ``--retain_sampling auto`` take the method's preset (contrast: mlp and
    matched); every other method, or a value the user gave, is left as it is."""
    from obliviate.config import UnlearnConfig
    from obliviate.train.resolve import with_preset

    def config(method: str, **options) -> UnlearnConfig:
        return UnlearnConfig.build(model_dir=str(tmp_path), forget_dir="-", retain_dir="-", method=method,
                                   output_dir=str(tmp_path / method), **options)  # fmt: skip

    assert with_preset(config("contrast")).trainable_modules == "mlp"
    assert with_preset(config("ga_gd")).trainable_modules == "auto"
    assert with_preset(config("contrast", trainable_modules="all")).trainable_modules == "all"
    # the retain pairing likewise: contrast pairs each forget row with a retain row of its field, others draw uniformly
    assert with_preset(config("contrast")).retain_sampling == "matched"
    assert with_preset(config("ga_gd")).retain_sampling == "auto"
    assert with_preset(config("contrast", retain_sampling="uniform")).retain_sampling == "uniform"


def test_contrast_interleaves_fifteen_retain_steps_by_default_and_budgets_and_checks_whole_cycles(tmp_path):
    """``--schedule auto`` and an unset ``--retain_steps`` take the method's preset (contrast: interleaved, 15); any
    other method trains jointly, and an interleaved run without a preset takes AILS-NTUA's 7. The step budget counts
    whole cycles (a forget step and its retain steps), and so does the stop-check interval: a check never falls
    between a forget step and its repair."""
    from obliviate.config import UnlearnConfig
    from obliviate.losses import DEFAULT_CHECKS, DEFAULT_STEPS
    from obliviate.train.resolve import resolve_budget, resolve_stop_check, with_preset
    from obliviate.train.sampling import DEFAULT_RETAIN_STEPS, retain_steps_per_forget

    def config(method: str, **options) -> UnlearnConfig:
        return UnlearnConfig.build(model_dir=str(tmp_path), forget_dir="-", retain_dir="-", method=method,
                                   output_dir=str(tmp_path / method), **options)  # fmt: skip

    contrast = with_preset(config("contrast"))
    assert (contrast.schedule, contrast.retain_steps, retain_steps_per_forget(contrast)) == ("interleaved", 15, 15)
    joint = with_preset(config("ga_gd"))
    assert joint.schedule == "auto" and retain_steps_per_forget(joint) == 0
    plain = with_preset(config("ga_gd", schedule="interleaved"))
    assert retain_steps_per_forget(plain) == DEFAULT_RETAIN_STEPS == 7
    assert retain_steps_per_forget(with_preset(config("contrast", schedule="joint"))) == 0
    assert retain_steps_per_forget(with_preset(config("contrast", retain_steps=3))) == 3
    # contrast's budget is twice the default, and so is its number of checks: a check every 6 cycles, as at the
    # default budget (docs/METHODS.md, "Length")
    budget = resolve_budget(contrast, forget_rows=100)
    assert budget.max_steps == 2 * DEFAULT_STEPS * 16 == 3840
    every = resolve_stop_check(budget, has_pii=True, planned_steps=budget.max_steps).stop_check_steps
    assert every == 6 * 16 and every * 2 * DEFAULT_CHECKS == budget.max_steps
    # another method keeps the default budget and the default 20 checks
    gd = resolve_budget(joint, forget_rows=100)
    assert gd.max_steps == DEFAULT_STEPS
    assert resolve_stop_check(gd, has_pii=True, planned_steps=gd.max_steps).stop_check_steps == DEFAULT_STEPS // 20
    odd = resolve_stop_check(resolve_budget(contrast.with_options(max_steps=100), 100), True, 100).stop_check_steps
    assert odd == 16  # ceil(100 / 40) = 3 steps, rounded up to one whole cycle
    ruled = resolve_stop_check(resolve_budget(contrast.with_options(retain_steps=7), 100), True, 240 * 8)
    assert ruled.max_steps == 240 * 8 and ruled.stop_check_steps == 6 * 8  # another --retain_steps: whole cycles


def test_the_help_of_epochs_and_stop_check_steps_states_the_registrys_budgets_and_checks():
    """``--help`` gives the budgets as numbers; they must be the registry's (each method's ``steps`` and
    ``checks``), so a preset change that forgets the help fails here."""
    import dataclasses

    from obliviate.config import UnlearnConfig
    from obliviate.losses import DEFAULT_CHECKS, DEFAULT_STEPS, LOSSES

    fields = {f.name: f for f in dataclasses.fields(UnlearnConfig)}
    epochs, checks = (fields[n].metadata["help"] for n in ("epochs", "stop_check_steps"))
    assert f"({DEFAULT_STEPS}; " in epochs and f"about {DEFAULT_CHECKS} checks" in checks
    for method in LOSSES.values():
        if method.steps != DEFAULT_STEPS:
            assert f"{method.name} {method.steps}" in epochs
        if method.passes:
            assert f"{method.steps}, or {method.passes} passes over the forget set" in epochs
        if method.checks != DEFAULT_CHECKS:
            assert f"{method.name}: {method.checks}" in checks
    import subprocess
    import sys

    # the command's description too, read through ``python -m obliviate`` (the module entry point)
    described = subprocess.run(
        [sys.executable, "-m", "obliviate", "unlearn", "--help"], capture_output=True, text=True, check=True
    ).stdout
    described = " ".join(described.split())
    contrast = LOSSES["contrast"]
    retain_steps = contrast.preset["retain_steps"]
    assert f"({DEFAULT_STEPS} forget steps; contrast: {contrast.steps} forget steps or {contrast.passes} passes" in (
        described
    )
    assert f"each followed by {retain_steps} retain steps" in described


def test_contrasts_budget_is_ten_passes_over_a_large_forget_set_with_its_checks_where_240_steps_put_them(
    tmp_path, monkeypatch
):
    """A forget set of 1,500 rows (LUME Task2's) is 47 forget steps a pass: ten passes (470) are more than 240, so
    the budget is 470 cycles, and the checks fall every 6 cycles as at 240, so the longer budget only lets the same
    run go on. The demo's 128 rows keep 240 steps; a method without passes keeps its 120 whatever the set; a given
    --max_steps keeps its own interval."""
    from obliviate.config import UnlearnConfig
    from obliviate.data.records import Record
    from obliviate.train import resolve

    monkeypatch.setattr(resolve, "has_pii", lambda config, forget, retain: True)

    def resolved(method: str, rows: int, **options) -> UnlearnConfig:
        config = UnlearnConfig.build(model_dir=str(tmp_path), forget_dir="-", retain_dir="-", method=method,
                                     output_dir=str(tmp_path / method), **options)  # fmt: skip
        forget = [Record(f"f{i}", "q", "a") for i in range(rows)]
        return resolve.resolve_steps(resolve.with_preset(config), forget, [])

    large = resolved("contrast", 1500)
    assert (large.max_steps, large.epochs, large.stop_check_steps) == (470 * 16, 10, 6 * 16)
    small = resolved("contrast", 128)
    assert (small.max_steps, small.stop_check_steps) == (240 * 16, 6 * 16)
    assert resolved("ga_gd", 1500).max_steps == 120
    given = resolved("contrast", 1500, max_steps=5760)
    assert (given.max_steps, given.stop_check_steps) == (5760, 9 * 16)  # 5,760 / 40 checks = 144 = 9 cycles
    epochs = resolved("contrast", 1500, epochs=12)  # 12 passes of 47 cycles, 40 checks: every 15 cycles
    assert (epochs.epochs, epochs.max_steps, epochs.stop_check_steps) == (12, None, 15 * 16)  # 9,024 steps / 40
