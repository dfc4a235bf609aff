"""benchmarks/probe_dampen.py (selective synaptic dampening) and probe_cost_levers.py ``--ewc``."""

from __future__ import annotations

import sys
from pathlib import Path
from types import SimpleNamespace

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "benchmarks"))
import probe_cost_levers  # noqa: E402
import probe_dampen  # noqa: E402


def test_dampening_scales_only_entries_whose_forget_importance_exceeds_alpha_times_retain():
    import torch

    p = torch.nn.Parameter(torch.ones(4))
    forget = [torch.tensor([10.0, 10.0, 1.0, 0.0])]
    retain = [torch.tensor([1.0, 4.0, 1.0, 0.0])]
    changed = probe_dampen.dampen([p], forget, retain, alpha=3.0, lam=1.0)
    # entry 0: 10 > 3 * 1, scaled by 1 / 10; entry 1: 10 < 3 * 4, kept; entries 2 and 3 are not above alpha * retain
    assert changed == 1
    assert torch.allclose(p.detach(), torch.tensor([0.1, 1.0, 1.0, 1.0]))
    q = torch.nn.Parameter(torch.ones(2))
    probe_dampen.dampen([q], [torch.tensor([10.0, 10.0])], [torch.tensor([1.0, 1.0])], alpha=3.0, lam=20.0)
    assert torch.equal(q.detach(), torch.ones(2))  # the scale never exceeds 1


def test_importance_is_the_mean_squared_gradient_over_micro_batches_and_counts_tokens(assets):
    import random

    import torch

    from obliviate.data.batching import collate, encode_record
    from obliviate.data.load import load_split
    from obliviate.losses.common import mean_nll
    from obliviate.models.load import load_model
    from obliviate.train.step import run_forward

    model, tokenizer = load_model(str(assets.model), dtype=torch.float32)
    records = load_split(str(assets.retain))[:10]  # two micro-batches of 8 and 2 rows
    assert len(records) == 10
    params, scores, tokens = probe_dampen.importance(model, tokenizer, records)
    order = list(range(10))
    random.Random(0).shuffle(order)
    expected, read = [torch.zeros_like(p) for p in params], 0
    for chunk in (order[:8], order[8:]):
        batch = collate([encode_record(tokenizer, records[i], 512) for i in chunk], tokenizer.pad_token_id)
        read += int(batch.attention_mask.sum())
        model.zero_grad(set_to_none=True)
        out = run_forward(model, batch)
        mean_nll(out.logits, out.labels).backward()
        for total, p in zip(expected, params):
            total += p.grad.float() ** 2 / 2
    assert tokens == read
    for s, e in zip(scores, expected):
        assert torch.allclose(s, e, rtol=1e-5, atol=1e-12)


def test_ewc_pulls_each_entry_toward_its_start_by_its_retain_fisher(assets, monkeypatch):
    """The forget step's gradient gets ``lambda * F / mean(F) * (theta - theta_0)``; the retain steps read nothing."""
    import torch

    import obliviate.train.epoch as epoch_module
    from obliviate.data.batching import encode_record
    from obliviate.data.load import load_split
    from obliviate.models.load import load_model

    model, tokenizer = load_model(str(assets.model), dtype=torch.float32)
    forget = [encode_record(tokenizer, r, 64) for r in load_split(str(assets.forget))]
    retain = [encode_record(tokenizer, r, 64) for r in load_split(str(assets.retain))]
    optimizer = torch.optim.SGD(model.parameters(), lr=0.0)
    run = SimpleNamespace(model=model, tokenizer=tokenizer, forget=forget, retain=retain, optimizer=optimizer)
    run.state = {"tokens_seen": 0}
    seen = []
    monkeypatch.setattr(epoch_module, "retain_step", epoch_module.retain_step)  # put back after the test
    monkeypatch.setattr(
        epoch_module,
        "optimizer_step",
        lambda run, config, schedule=True: seen.append(
            [None if p.grad is None else p.grad.clone() for p in run.model.parameters()]
        ),
    )
    monkeypatch.setattr(epoch_module, "accumulate", lambda *a, **k: ({}, 0, None))
    state = probe_cost_levers.patch(0.0, 1.0, False, ewc=2.0)
    assert epoch_module.retain_step(run, None, 0, []) == ({"retain_nll": 0.0}, 0, None)  # reads no rows
    epoch_module.accumulate(run)  # a forget step begins: its own gradient is 1 everywhere
    for p in model.parameters():
        p.grad = torch.ones_like(p)
    epoch_module.optimizer_step(run, None)
    assert run.state["tokens_seen"] > 0  # the Fisher's rows count as the run's tokens
    assert all(torch.equal(g, torch.ones_like(g)) for g in seen[-1])  # at the start the pull is zero
    with torch.no_grad():
        for p in model.parameters():
            p.add_(1.0)
    for p in model.parameters():
        p.grad = torch.ones_like(p)
    epoch_module.optimizer_step(run, None)
    fisher = {id(p): f for p, f, _ in state["ewc"]}
    for p, g in zip(model.parameters(), seen[-1]):
        assert torch.allclose(g, 1 + 2.0 * fisher[id(p)], atol=1e-5)


def test_project_keeps_each_linear_change_off_the_retain_inputs_top_directions(assets, monkeypatch):
    """``--project Q``: after a forget step, each linear layer's change reads at most ``1 - Q`` of the retain rows'
    input energy, every other tensor is put back, and the retain steps read nothing."""
    import torch

    import obliviate.train.epoch as epoch_module
    from obliviate.data.batching import collate, encode_record
    from obliviate.data.load import load_split
    from obliviate.models.load import load_model
    from obliviate.train.step import run_forward

    model, tokenizer = load_model(str(assets.model), dtype=torch.float32)
    forget = [encode_record(tokenizer, r, 64) for r in load_split(str(assets.forget))]
    retain = [encode_record(tokenizer, r, 64) for r in load_split(str(assets.retain))]
    assert 4 * len(forget) >= len(retain)  # the projection reads every retain row
    run = SimpleNamespace(model=model, tokenizer=tokenizer, forget=forget, retain=retain)
    torch.manual_seed(0)

    def noisy_step(run, config, schedule=True):  # stands in for the optimizer: every entry moves
        with torch.no_grad():
            for p in run.model.parameters():
                p.add_(torch.randn_like(p))

    monkeypatch.setattr(epoch_module, "retain_step", epoch_module.retain_step)  # put back after the test
    monkeypatch.setattr(epoch_module, "optimizer_step", noisy_step)
    monkeypatch.setattr(epoch_module, "accumulate", lambda *a, **k: ({}, 0, None))
    state = probe_cost_levers.patch(0.0, 1.0, False, project=0.9)
    run.optimizer = SimpleNamespace(zero_grad=lambda set_to_none=True: None)
    assert epoch_module.retain_step(run, None, 0, []) == ({"retain_nll": 0.0}, 0, None)  # reads no rows
    inputs: dict = {}  # each linear layer's inputs on the retain rows, before the step
    linear = {m: name for name, m in model.named_modules() if isinstance(m, torch.nn.Linear)}
    handles = [
        m.register_forward_hook(lambda m, a, _o: inputs.setdefault(m, []).append(a[0][mask["now"]])) for m in linear
    ]
    mask: dict = {}
    with torch.no_grad():
        for start in range(0, len(retain), 8):
            batch = collate(retain[start : start + 8], tokenizer.pad_token_id)
            mask["now"] = batch.attention_mask.bool()
            run_forward(model, batch)
    for h in handles:
        h.remove()
    before = {name: p.detach().clone() for name, p in model.named_parameters()}
    epoch_module.accumulate(run)  # a forget step begins
    epoch_module.optimizer_step(run, None)
    projected = set(state["project"])  # ids of the projected weights
    tied = model.get_output_embeddings().weight
    assert id(tied) not in projected  # the tied output layer is put back, not projected
    assert projected == {id(m.weight) for m in linear if m.weight is not tied}
    for module in linear:  # the projector leaves at most 1 - Q of the retain inputs' energy it was measured on
        if id(module.weight) in projected:
            x = torch.cat(inputs[module]).double()
            kept = (x @ state["project"][id(module.weight)]).pow(2).sum() / x.pow(2).sum()
            assert float(kept) <= 0.1 + 1e-9, linear[module]
    for name, p in model.named_parameters():
        delta = p.detach() - before[name]
        if id(p) not in projected:
            assert torch.equal(delta, torch.zeros_like(delta)), name  # a norm, the embeddings: put back
            continue
        module = next(m for m in linear if m.weight is p)
        x = torch.cat(inputs[module])
        unprojected = torch.randn_like(delta)
        read = (x @ delta.T).pow(2).sum() / (x @ unprojected.T).pow(2).sum()
        assert float(delta.abs().sum()) > 0
        assert float(read) < 0.2, name  # a random change reads about as much of every direction
