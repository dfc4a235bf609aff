"""Length pieces for every method: a micro-batch of mixed lengths run as length-sorted pieces (each piece weighted
by its share of every unit its loss averages over, ``Method.means``) takes the step the whole micro-batch takes.

Two steps, so that the second starts away from the reference (at it, NPO's log ratio is 0 up to round-off and its
term the same on every row). Tolerances: losses and metrics rel 1e-5, abs 1e-6 (float32 sums taken in another
order; a log ratio at the reference is round-off of ~1e-6 around 0); weights after two AdamW steps at lr
1e-3 atol 1e-5 (1% of the step a weight takes), rtol 1e-4, as the finetune pieces test in test_train.py: AdamW's
first step is ``lr·g/(|g| + eps)``, which turns round-off in a gradient element near ``eps`` into ~1e-6 of weight.
"""

from __future__ import annotations

import pytest
import torch

import obliviate.train.step as step
from helpers import metrics, unlearn_config, weights
from obliviate.losses import LOSSES
from obliviate.train.run import run_unlearn
from test_train import method_overrides

pytest_plugins = ["helpers"]

LR = 1e-3
EXACT = ("step", "epoch", "lr", "tokens_seen", "retain_draw_checksums")


CASES = [(method, {}) for method in LOSSES] + [("contrast", {"fakes_per_step": 3})]


@pytest.mark.parametrize(
    ("method", "extra"), CASES, ids=[m + "".join(f"-{k}{v}" for k, v in e.items()) for m, e in CASES]
)
def test_one_step_as_pieces_equals_the_whole_micro_batches(method, extra, target, tmp_path, monkeypatch):
    real, cuts = step.pieces, {"pieces": [], "whole": []}
    mode = "pieces"

    def spy(run, method_, forget_rows, retain_rows):
        cut = real(run, method_, forget_rows, retain_rows)
        # every piece holds rows of each split the micro-batch has, and together they hold each row once
        assert sorted(r for f, _ in cut for r in f) == sorted(forget_rows)
        if retain_rows:
            assert all(r for _, r in cut)
            assert sorted(i for _, r in cut for i in r) == sorted(retain_rows)
        cuts[mode].append(len(cut))
        return cut

    monkeypatch.setattr(step, "pieces", spy)
    # optimizer steps of 2 micro-batches of 8 rows: the micro forget set mixes short answers and biographies
    options = {**method_overrides(method), **extra, "lr": LR, "batch_size": 16, "micro_batch_size": 8, "max_steps": 2}
    run_unlearn(unlearn_config(target, tmp_path / "pieces", method=method, **options))
    mode = "whole"
    run_unlearn(unlearn_config(target, tmp_path / "whole", method=method, length_pieces=False, **options))

    assert len(cuts["pieces"]) == 4 and max(cuts["pieces"]) > 1, cuts  # pieces did occur
    assert cuts["whole"] == [1, 1, 1, 1]
    split, whole = metrics(tmp_path / "pieces"), metrics(tmp_path / "whole")
    assert len(split) == len(whole) == 2
    for a, b in zip(split, whole):
        assert a.keys() == b.keys()
        for key, value in b.items():
            if key in EXACT:
                assert a[key] == value, (b["step"], key)
            else:
                assert a[key] == pytest.approx(value, rel=1e-5, abs=1e-6), (b["step"], key)
    before, after_split, after_whole = weights(target.model), weights(tmp_path / "pieces"), weights(tmp_path / "whole")
    moved = max((after_whole[k] - before[k]).abs().max().item() for k in before)
    assert moved > LR / 2  # the steps moved the weights, so the comparison has teeth
    for key in after_whole:
        torch.testing.assert_close(after_split[key], after_whole[key], atol=1e-5, rtol=1e-4)


def test_matched_pieces_cut_both_splits_into_as_many_sorted_pieces():
    from obliviate.data.batching import matched_pieces

    forget, retain = [12, 200, 15, 190, 14, 210, 13, 11], [180, 9, 10, 220, 8, 205, 12, 7]
    cut = matched_pieces(forget, retain)
    assert len(cut) > 1 and all(f and r for f, r in cut)
    assert sorted(i for f, _ in cut for i in f) == list(range(8)) == sorted(i for _, r in cut for i in r)
    longest = [(max(forget[i] for i in f), max(retain[i] for i in r)) for f, r in cut]
    assert longest == sorted(longest)  # shortest with shortest
    padded = sum(len(f) * a + len(r) * b for (f, r), (a, b) in zip(cut, longest))
    assert padded < 0.6 * 8 * (max(forget) + max(retain))  # far less padding than the whole batches
    assert matched_pieces([20] * 4, [30] * 4) == [([0, 1, 2, 3], [0, 1, 2, 3])]  # even batches stay whole
    assert matched_pieces([5, 300], [7]) == [([0, 1], [0])]  # one retain row: one piece
