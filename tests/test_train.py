"""The loop on a micro model: every method unlearns, exactly the chosen parameters move, guards stop bad runs."""

from __future__ import annotations

import dataclasses
import math

import pytest
import torch

from helpers import (
    FORGET_RECORDS,
    answer_nll,
    hash_dir,
    listing,
    metrics,
    rmu_distance,
    unlearn_argv,
    unlearn_config,
    weights,
)
from obliviate.cli.main import main
from obliviate.errors import TrainingError
from obliviate.losses import LOSSES
from obliviate.losses.common import LossOutput
from obliviate.losses.rmu import make_control_vector
from obliviate.train import checkpoint as ckpt
from obliviate.train.run import run_unlearn

pytest_plugins = ["helpers"]  # the micro model and data fixtures


SELECTIONS = {
    "all": ("all", "all", lambda name: True),
    "0": ("0", "all", lambda name: name.startswith("model.layers.0.")),
    "last:1": ("last:1", "all", lambda name: name.startswith("model.layers.1.")),
    "mlp": ("all", "mlp", lambda name: ".mlp." in name),
}
RMU_LAYER = 1  # the last block of the micro model: every selected layer lies upstream of it


def method_overrides(method: str) -> dict:
    """Weights for a barely trained 32-wide model, where some published defaults leave nothing to see in 5 steps.

    RMU's alpha = 100 lets the retain term swamp the forget term. SimNPO's beta = 4.5 at the micro target's
    per-token NLL of ~3.4 puts its term at softplus(-15) ~ 3e-7 (real targets sit well below NLL 1), and its
    retain term pulls the look-alike forget biographies back as hard as the forget term pushes. Relabel only
    descends, towards other answers, so the true answers' NLL rises more slowly than under ascent.
    """
    overrides = {
        "ga_gd": {"alpha": 1.0},  # the published weight; the preset's 4 keeps a 5-step LoRA run too close to start
        "rmu": {"alpha": 1.0, "rmu_layer": RMU_LAYER},
        "simnpo": {"beta": 0.5, "alpha": 0.2},
        "relabel": {"lr": 5e-2, "relabel_draws": 1},  # descends to stranger answers: slower to move the true NLL
        # the micro target barely prefers its true values to fakes, so the hinge needs a margin to push at all
        "contrast": {"lr": 5e-2, "delta": 1.0, "relabel_draws": 1},
    }
    return overrides.get(method, {})


def assert_unlearned(method: str, before_dir, after_dir, target_assets) -> None:
    """Forget NLL rose; for RMU, forget hidden states at its layer moved towards c·u."""
    if method == "rmu":
        control = make_control_vector(32, 6.5, 42)
        before = rmu_distance(before_dir, target_assets.forget, RMU_LAYER, control)
        after = rmu_distance(after_dir, target_assets.forget, RMU_LAYER, control)
        assert after < 0.9 * before
    else:
        assert answer_nll(after_dir, target_assets.forget) > answer_nll(before_dir, target_assets.forget) + 0.03


@pytest.mark.parametrize("selection", list(SELECTIONS))
@pytest.mark.parametrize("method", list(LOSSES))
def test_method_unlearns_and_moves_exactly_the_selected_parameters(method, selection, target, tmp_path):
    layers, modules, selected = SELECTIONS[selection]
    out = tmp_path / "out"
    config = unlearn_config(
        target, out, method=method, trainable_layers=layers, trainable_modules=modules, **method_overrides(method)
    )
    result = run_unlearn(config)

    assert result.global_step == math.ceil(FORGET_RECORDS / 4) and result.stopped is None
    assert all(math.isfinite(v) for line in metrics(out) for v in line.values() if isinstance(v, float))
    assert_unlearned(method, target.model, out, target)
    before, after = weights(target.model), weights(out)
    assert before.keys() == after.keys()
    changed = {name for name in before if not torch.equal(before[name], after[name])}
    assert changed == {name for name in before if selected(name)}


@pytest.mark.parametrize("method", list(LOSSES))
def test_lora_trains_only_adapters_and_never_writes_the_base(method, target, tmp_path):
    out = tmp_path / "out"
    base_files = hash_dir(target.model)
    config = unlearn_config(
        target,
        out,
        method=method,
        lora_r=4,
        lora_alpha=8.0,
        trainable_layers="last:1",
        epochs=2,
        merge=True,
        **method_overrides(method),
    )
    run_unlearn(config)

    assert hash_dir(target.model) == base_files
    assert (out / "adapter_config.json").is_file() and not (out / "model.safetensors").exists()
    adapter, first_epoch = (
        weights(out, "adapter_model.safetensors"),
        weights(out / "checkpoints" / "epoch-1", "adapter_model.safetensors"),
    )
    assert adapter and all("lora_" in name and ".layers.1." in name for name in adapter)
    assert all(not torch.equal(adapter[name], first_epoch[name]) for name in adapter)
    # merged = base everywhere except the adapted linears of layer 1, which are W + (alpha / r)·B·A
    base, merged = weights(target.model), weights(out / "merged")
    assert base.keys() == merged.keys()
    for name, tensor in merged.items():
        a_name = "base_model.model." + name.removesuffix(".weight") + ".lora_A.weight"
        if a_name in adapter:
            delta = 2.0 * adapter[a_name.replace("lora_A", "lora_B")] @ adapter[a_name]
            torch.testing.assert_close(tensor, base[name] + delta, rtol=1e-5, atol=1e-6)
        else:
            assert torch.equal(tensor, base[name]), name
    assert_unlearned(method, target.model, out, target)


@pytest.mark.parametrize("method", ["ga_kl", "npo"])
def test_lora_reference_is_the_model_with_adapters_disabled(method, target, tmp_path, monkeypatch):
    """No deepcopy under LoRA; the first step compares the model with itself (B = 0), so KL = 0 / log ratio = 0."""
    import copy

    real_deepcopy, copied = copy.deepcopy, []

    def watched(value, *args, **kwargs):
        if isinstance(value, torch.nn.Module):
            copied.append(type(value).__name__)
        return real_deepcopy(value, *args, **kwargs)

    monkeypatch.setattr(copy, "deepcopy", watched)
    run_unlearn(unlearn_config(target, tmp_path / "full", method=method))
    if method == "ga_kl":
        assert copied, "the watch must see the full fine-tuning reference copy"
    else:  # npo reads the reference only as one log-probability per forget row, cached before the first step
        assert copied == []
    copied.clear()
    run_unlearn(unlearn_config(target, tmp_path / "out", method=method, lora_r=4))
    assert copied == []
    first = metrics(tmp_path / "out")[0]
    if method == "ga_kl":
        assert first["kl"] == 0.0
    else:
        assert first["log_ratio"] == 0.0 and first["npo_term"] == pytest.approx(20 * math.log(2), rel=1e-5)


@pytest.mark.parametrize("lora_r", [0, 4])
def test_setup_builds_a_reference_only_when_needed(lora_r, target, tmp_path):
    from obliviate.data.load import load_split
    from obliviate.models.load import load_model
    from obliviate.train.loop import setup
    from obliviate.train.run import _select

    forget, retain = load_split(target.forget, split="forget"), load_split(target.retain, split="retain")
    for name in LOSSES:
        config = unlearn_config(target, tmp_path / name, method=name, lora_r=lora_r, rmu_layer=RMU_LAYER)
        model, tokenizer = load_model(target.model)
        model = _select(model, config, RMU_LAYER if LOSSES[name].needs.hidden else None)
        run = setup(
            model,
            tokenizer,
            LOSSES[name],
            LOSSES[name].params({"rmu_c": 6.5} if name == "rmu" else {}),
            forget,
            retain,
            config,
        )
        needs = LOSSES[name].needs
        cached = needs.reference_logprob and not lora_r
        if needs.reference and not lora_r and not cached:
            assert run.reference is not None and run.reference is not run.model
            assert not any(p.requires_grad for p in run.reference.parameters())
        else:
            assert run.reference is None
        assert (run.control is not None) == needs.hidden
        if cached:
            assert run.forget_ref_logprob.shape == (len(forget),) and (run.forget_ref_logprob < 0).all()
        else:
            assert run.forget_ref_logprob is None


def test_npo_cached_reference_trains_as_the_frozen_copy_does(target, tmp_path, monkeypatch):
    """Full fine-tuning NPO: one log π_ref(y|x) per forget row computed before training gives the losses, metrics and
    weights of the frozen-copy path (the same numbers up to batching round-off), with no copy kept."""
    config = unlearn_config(target, tmp_path / "cached", method="npo", epochs=2, scheduler="constant")
    run_unlearn(config)
    npo = LOSSES["npo"]
    monkeypatch.setitem(
        LOSSES, "npo", dataclasses.replace(npo, needs=dataclasses.replace(npo.needs, reference_logprob=False))
    )
    run_unlearn(dataclasses.replace(config, output_dir=str(tmp_path / "copy")))
    cached, copied = metrics(tmp_path / "cached"), metrics(tmp_path / "copy")
    assert len(cached) == len(copied) == 10
    for a, b in zip(cached, copied):
        for key in ("loss", "npo_term", "log_ratio", "forget_nll", "retain_nll"):
            assert a[key] == pytest.approx(b[key], rel=1e-4, abs=1e-5), (a["step"], key)
    assert abs(cached[-1]["log_ratio"]) > 1e-2  # the model moved away from the reference, so the check has teeth
    after, reference_path = weights(tmp_path / "cached"), weights(tmp_path / "copy")
    for name, tensor in after.items():
        torch.testing.assert_close(tensor, reference_path[name], rtol=1e-4, atol=1e-5)


def test_same_seed_same_weights_also_under_lora(assets, tmp_path):
    for lora_r, name in ((0, "model.safetensors"), (4, "adapter_model.safetensors")):
        first, second = tmp_path / f"a{lora_r}", tmp_path / f"b{lora_r}"
        run_unlearn(unlearn_config(assets, first, method="ga_gd", lora_r=lora_r))
        torch.manual_seed(1234)  # whatever the global RNG held before, the seed decides
        run_unlearn(unlearn_config(assets, second, method="ga_gd", lora_r=lora_r))
        a, b = weights(first, name), weights(second, name)
        assert all(torch.equal(a[k], b[k]) for k in a)


def test_metrics_log_one_line_per_optimizer_step(assets, tmp_path):
    out = tmp_path / "out"
    result = run_unlearn(
        unlearn_config(
            assets,
            out,
            method="ga_gd",
            epochs=2,
            batch_size=8,
            micro_batch_size=4,
            scheduler="linear",
            warmup_ratio=0.2,
        )
    )
    lines = metrics(out)
    steps = math.ceil(FORGET_RECORDS / 8)
    assert [line["step"] for line in lines] == list(range(1, 2 * steps + 1)) == list(range(1, result.global_step + 1))
    assert [line["epoch"] for line in lines] == [1] * steps + [2] * steps
    for key in ("lr", "loss", "forget_nll", "retain_nll", "tokens_seen"):
        assert all(key in line for line in lines)
    assert all(len(line["retain_draw_checksums"]) == 1 for line in lines)
    tokens = [line["tokens_seen"] for line in lines]
    assert tokens == sorted(tokens) and tokens[-1] == result.tokens_seen
    # the lr each step used: linear warm-up over 1 of 6 steps (0 at the first), then linear decay to 1/5 of the peak
    total, warmup = 2 * steps, int(0.2 * 2 * steps)
    expected = [s / warmup if s < warmup else (total - s) / (total - warmup) for s in range(total)]
    assert [line["lr"] for line in lines] == pytest.approx([1e-2 * e for e in expected])


def test_gradient_accumulation_and_checkpointing_keep_the_step_count(assets, tmp_path):
    plain = run_unlearn(unlearn_config(assets, tmp_path / "plain", method="ga"))
    accumulated = run_unlearn(
        unlearn_config(assets, tmp_path / "acc", method="ga", micro_batch_size=2, gradient_checkpointing=True)
    )
    assert plain.global_step == accumulated.global_step == math.ceil(FORGET_RECORDS / 4)
    assert not torch.equal(
        weights(tmp_path / "plain")["model.embed_tokens.weight"], weights(assets.model)["model.embed_tokens.weight"]
    )


def test_epoch_hook_sees_each_complete_checkpoint(assets, tmp_path):
    seen = []

    def hook(epoch, path):
        seen.append((epoch, path.name, (path / "trainer_state.json").is_file()))
        return {"epoch_seen": epoch}

    result = run_unlearn(unlearn_config(assets, tmp_path / "out", method="ga", epochs=2), epoch_hook=hook)
    assert seen == [(1, "epoch-1", True), (2, "epoch-2", True)]
    assert result.epoch_results == [{"epoch_seen": 1}, {"epoch_seen": 2}]


def test_non_finite_loss_stops_with_an_error_and_keeps_the_last_checkpoint(target, tmp_path, monkeypatch, capsys):
    calls = {"n": 0}
    ga = LOSSES["ga"]

    def poisoned(inputs, params):
        calls["n"] += 1
        out = ga.loss(inputs, params)
        return LossOutput(out.loss * float("nan"), out.metrics) if calls["n"] > 5 else out

    # one loss call per step (no length pieces), so that the 6th call is step 6
    monkeypatch.setitem(LOSSES, "ga", dataclasses.replace(ga, loss=poisoned, token_mean=False))
    out = tmp_path / "out"
    assert main(unlearn_argv(target, out, "--method", "ga", "--epochs", "2")) == 2
    err = [line for line in capsys.readouterr().err.splitlines() if line.startswith("obliviate:")]
    assert len(err) == 1 and err[0].startswith("obliviate: error: non-finite loss at epoch 2 step 6")
    assert [epoch for epoch, _ in ckpt.list_checkpoints(out)] == [1]
    assert not (out / "model.safetensors").exists() and not (out / "checkpoints" / ".epoch-2.tmp").exists()
    assert all(torch.isfinite(t).all() for t in weights(out / "checkpoints" / "epoch-1").values())
    assert len(metrics(out)) == 5

    calls["n"] = 0  # and with length pieces (several loss calls per step): the run still stops with the error
    monkeypatch.setitem(LOSSES, "ga", dataclasses.replace(ga, loss=poisoned, token_mean=True))
    with pytest.raises(TrainingError, match="non-finite loss"):
        run_unlearn(unlearn_config(target, tmp_path / "lib", method="ga", epochs=2))


def test_stop_forget_nll_stops_after_the_first_step(target, tmp_path):
    out = tmp_path / "out"
    result = run_unlearn(unlearn_config(target, out, method="ga", epochs=2, stop_forget_nll=0.5))
    assert result.stopped and "stop_forget_nll" in result.stopped
    assert (result.global_step, result.epochs_completed) == (1, 1)
    assert len(metrics(out)) == 1 and (out / "model.safetensors").is_file()
    assert [epoch for epoch, _ in ckpt.list_checkpoints(out)] == [1]


def test_finetune_builds_a_target_that_knows_its_data(target):
    init = target.model.parent / "init"
    assert answer_nll(target.model, target.forget) < answer_nll(init, target.forget) - 1.0


def test_finetune_cli_builds_a_named_size_first(assets, tmp_path):
    out = tmp_path / "ft"
    argv = [
        "finetune",
        "--model",
        "micro",
        "--data",
        str(assets.forget),
        str(assets.retain),
        "--output_dir",
        str(out),
        "--epochs",
        "1",
        "--batch_size",
        "16",
        "--micro_batch_size",
        "8",
        "--max_length",
        "64",
    ]
    assert main(argv) == 0
    assert {".init/config.json", "model.safetensors", "config.yaml", "metrics.jsonl"} <= set(listing(out))
    assert len(metrics(out)) == math.ceil(54 / 16)


def test_rmu_hidden_state_is_the_block_output_at_every_depth(assets):
    """``h^ℓ`` is block ℓ's output; ``output_hidden_states[-1]`` would be the last block's after the final norm."""
    from obliviate.data.batching import collate, encode_record
    from obliviate.data.load import load_split
    from obliviate.models.load import load_model
    from obliviate.models.trainable import decoder_layers
    from obliviate.train.step import run_forward as _forward

    model, tokenizer = load_model(assets.model)
    records = load_split(assets.forget, split="forget")[:3]
    batch = collate([encode_record(tokenizer, r, 64) for r in records], tokenizer.pad_token_id)
    reference = model(input_ids=batch.input_ids, attention_mask=batch.attention_mask, output_hidden_states=True)
    blocks = decoder_layers(model)
    first, last = _forward(model, batch, blocks[0]), _forward(model, batch, blocks[1])
    assert torch.equal(first.hidden, reference.hidden_states[1])
    assert not torch.allclose(last.hidden, reference.hidden_states[2])
    torch.testing.assert_close(model.model.norm(last.hidden), reference.hidden_states[2])
    assert torch.equal(last.logits, reference.logits) and _forward(model, batch).hidden is None


def test_runs_in_one_process_may_change_precision(assets, tmp_path):
    for name, precision in (("fp32", "no"), ("bf16", "bf16"), ("again", "no")):
        result = run_unlearn(unlearn_config(assets, tmp_path / name, method="npo", mixed_precision=precision))
        assert result.global_step == 5 and math.isfinite(metrics(tmp_path / name)[0]["loss"])
    assert metrics(tmp_path / "fp32") == metrics(tmp_path / "again")
    assert metrics(tmp_path / "bf16")[-1]["loss"] != metrics(tmp_path / "fp32")[-1]["loss"]


def test_trained_weights_load_in_fp32_and_a_frozen_lora_base_in_the_device_default(assets, tmp_path):
    """AdamW steps of 1e-5 vanish on bf16 weights (their spacing at 0.02 is 1.2e-4), so trained weights are fp32."""
    from obliviate.train.run import weights_dtype

    assert weights_dtype(unlearn_config(assets, tmp_path)) is torch.float32
    assert weights_dtype(unlearn_config(assets, tmp_path, lora_r=4)) is None
    weight = torch.tensor(0.02, dtype=torch.bfloat16)
    assert torch.equal(weight - 1e-5, weight)


def test_finetune_runs_mixed_lengths_as_pieces_with_the_same_update(assets, tmp_path, monkeypatch):
    import obliviate.train.step as step
    from obliviate.config import FinetuneConfig
    from obliviate.train.run import run_finetune

    def config(out):
        return FinetuneConfig(
            output_dir=str(out),
            model=str(assets.model),
            data=[str(assets.forget), str(assets.retain)],
            epochs=1,
            lr=1e-3,
            batch_size=16,
            micro_batch_size=16,
            max_length=64,
        )

    real, pieces_seen = step.length_pieces, []

    def spy(lengths, *args, **kwargs):
        pieces = real(lengths, *args, **kwargs)
        pieces_seen.append(len(pieces))
        return pieces

    monkeypatch.setattr(step, "length_pieces", spy)
    run_finetune(config(tmp_path / "split"))
    assert max(pieces_seen) > 1  # the micro data mixes short answers and long biographies
    monkeypatch.setattr(step, "length_pieces", lambda lengths, *a, **k: [list(range(len(lengths)))])
    run_finetune(config(tmp_path / "whole"))
    split, whole = weights(tmp_path / "split"), weights(tmp_path / "whole")
    for key in split:
        torch.testing.assert_close(split[key], whole[key], atol=1e-5, rtol=1e-4)
    logged = zip(metrics(tmp_path / "split"), metrics(tmp_path / "whole"))
    assert all(
        a["loss"] == pytest.approx(b["loss"], rel=1e-5) and a["tokens_seen"] == b["tokens_seen"] for a, b in logged
    )


def test_group_by_length_reorders_an_epoch_without_changing_what_it_sees(assets, tmp_path):
    plain = run_unlearn(unlearn_config(assets, tmp_path / "plain", method="ga_gd", epochs=2))
    grouped = run_unlearn(unlearn_config(assets, tmp_path / "grouped", method="ga_gd", epochs=2, group_by_length=True))
    assert grouped.global_step == plain.global_step

    # the same forget rows per epoch and the same retain sample, handed out in another order: equal token totals
    # at every epoch end, different tokens per step
    def per_epoch(out):
        lines = metrics(out)
        return [max(m["tokens_seen"] for m in lines if m["epoch"] == e) for e in (1, 2)]

    assert per_epoch(tmp_path / "grouped") == per_epoch(tmp_path / "plain")
    steps = [[m["tokens_seen"] for m in metrics(tmp_path / run)] for run in ("grouped", "plain")]
    assert steps[0] != steps[1]
