"""The tokens a run reads without training (``forward_tokens``): what the counter counts, and that a run's count is
exactly its reference's passes, its checks' and nothing of the caller's evaluation."""

from __future__ import annotations

import json

import pytest
import torch
from transformers import DynamicCache

import obliviate.train.run as run_module
from helpers import metrics, unlearn_config
from obliviate.evaluate.stop_rule import ExposureStopRule, stop_rule_for
from obliviate.models.load import load_model
from obliviate.train.forward_count import FORWARD_COST, ForwardCounter
from obliviate.train.run import run_unlearn


def _batch(model, rows: int = 3, width: int = 7, pad: int = 2):
    ids = torch.randint(3, model.config.vocab_size, (rows, width))
    mask = torch.ones_like(ids)
    mask[0, width - pad :] = 0  # one row right-padded: padding is not read
    return ids, mask


def test_the_counter_counts_gradient_free_passes_without_padding(assets):
    model, _ = load_model(assets.model)
    counter = ForwardCounter([model, model])  # the same module twice (LoRA's reference is the model): hooked once
    ids, mask = _batch(model)
    model(input_ids=ids, attention_mask=mask)  # with gradients: a training pass, counted in tokens_seen instead
    with torch.no_grad():
        model(input_ids=ids, attention_mask=mask)
        with counter.paused():
            model(input_ids=ids, attention_mask=mask)
        model(input_ids=ids)  # no mask: every position is read
        cache = DynamicCache()
        model(input_ids=ids[:1, :4], use_cache=True, past_key_values=cache)  # a prompt, then two rows after it
        cache.batch_repeat_interleave(2)
        wide = torch.tensor([[1, 1, 1, 1, 1, 1, 0], [1, 1, 1, 1, 1, 1, 1]])  # the cached 4 columns, then 3 new
        model(input_ids=ids[:2, 4:], attention_mask=wide, use_cache=True, past_key_values=cache)
    assert int(counter.take()) == int(mask.sum()) + ids.numel() + 4 + 5 == 21 - 2 + 21 + 9
    assert counter.flush(2) == 0  # a take starts the next count from zero
    with torch.no_grad():
        model(input_ids=ids, attention_mask=mask)
    assert counter.flush(2) == 2 * 19  # what every process read alike, once per process
    counter.close()
    with torch.no_grad():
        model(input_ids=ids, attention_mask=mask)
    assert counter.flush(1) == 0 and not model._forward_pre_hooks


def test_a_runs_forward_tokens_are_its_references_passes(target, tmp_path):
    """ga, ga_gd and ga_kl on the same batches: ga_kl's frozen reference reads exactly the retain rows that ga_gd
    trains on beyond ga's forget rows; the two without a reference read nothing untrained (no stop rule, the rate
    given, so no range test)."""
    runs = {
        name: run_unlearn(unlearn_config(target, tmp_path / name, method=name, epochs=2, trainable_modules="all"))
        for name in ("ga", "ga_gd", "ga_kl")
    }
    assert len({r.global_step for r in runs.values()}) == 1
    assert runs["ga"].forward_tokens == runs["ga_gd"].forward_tokens == 0
    assert runs["ga_kl"].tokens_seen == runs["ga_gd"].tokens_seen
    assert runs["ga_kl"].forward_tokens == runs["ga_gd"].tokens_seen - runs["ga"].tokens_seen > 0
    state = json.loads((tmp_path / "ga_kl" / "trainer_state.json").read_text())
    assert state["forward_tokens"] == runs["ga_kl"].forward_tokens
    assert runs["ga_kl"].compute_tokens == pytest.approx(
        runs["ga_kl"].tokens_seen + FORWARD_COST * runs["ga_kl"].forward_tokens
    )
    # the epoch-1 checkpoint holds what was counted by then, for a resumed run to go on from
    first = json.loads((tmp_path / "ga_kl" / "checkpoints" / "epoch-1" / "trainer_state.json").read_text())
    assert 0 < first["forward_tokens"] < state["forward_tokens"]


def test_the_stop_rules_checks_are_counted_and_the_callers_evaluation_is_not(target, tmp_path, monkeypatch):
    models = []
    real_train = run_module.train

    def keep_model(model, *args, **kwargs):
        models.append(model)
        return real_train(model, *args, **kwargs)

    monkeypatch.setattr(run_module, "train", keep_model)
    ids = torch.randint(3, 200, (2, 9))

    def evaluation(epoch, path):  # a caller's evaluation that runs the training model itself
        with torch.no_grad():
            models[-1](input_ids=ids)
        return {}

    read = []  # what the stop rule's start and checks read, counted apart from the run's own counter

    def counted(real):
        def measured(self, model, *args, **kwargs):
            counter = ForwardCounter([model])
            try:
                return real(self, model, *args, **kwargs)
            finally:
                read.append(int(counter.take()))
                counter.close()

        return measured

    monkeypatch.setattr(ExposureStopRule, "start", counted(ExposureStopRule.start))
    monkeypatch.setattr(ExposureStopRule, "__call__", counted(ExposureStopRule.__call__))

    quiet = run_unlearn(unlearn_config(target, tmp_path / "quiet", method="ga_gd", epochs=2), epoch_hook=evaluation)
    assert quiet.forward_tokens == 0
    assert not models[0]._forward_pre_hooks  # the run's hooks are gone with it
    checked = run_unlearn(
        unlearn_config(target, tmp_path / "checked", method="ga_gd", epochs=2, stop_check_steps=2),
        stop_rule=stop_rule_for,
        epoch_hook=evaluation,
    )
    checks = [line for line in metrics(tmp_path / "checked") if "stop_check" in line]
    # the starting measurement and every check, each counted once (a step with no check due reads nothing); the
    # evaluation between epochs not at all
    assert len(checks) >= 2 and len([tokens for tokens in read if tokens]) == len(checks) + 1
    assert checked.forward_tokens == sum(read)
