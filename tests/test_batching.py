"""Batch building: length-sorted pieces, optional length grouping of the epoch order and of the retain draws."""

from __future__ import annotations

import random
from collections import Counter

import pytest
import torch

from obliviate.data.batching import forget_order, length_pieces, retain_draws

LENGTHS = [12, 80, 14, 11, 75, 13, 90, 12, 15, 13, 70, 12, 16, 14, 11, 85]  # QA-like rows and a few biographies


def padded(pieces: list[list[int]], lengths: list[int]) -> int:
    return sum(len(p) * max(lengths[i] for i in p) for p in pieces)


def test_length_pieces_hold_every_row_once_and_cut_padding():
    pieces = length_pieces(LENGTHS)
    assert sorted(i for p in pieces for i in p) == list(range(len(LENGTHS)))
    assert 1 < len(pieces) < len(LENGTHS)
    # less than half the padded tokens of one batch (16 x 90)
    assert padded(pieces, LENGTHS) <= padded([list(range(16))], LENGTHS) / 2
    assert all(max(LENGTHS[i] for i in a) <= min(LENGTHS[i] for i in b) for a, b in zip(pieces, pieces[1:]))


def test_length_pieces_keep_an_even_batch_whole():
    assert length_pieces([20] * 8) == [list(range(8))]
    assert length_pieces([20, 21, 22, 20]) == [[0, 3, 1, 2]]


def test_grouped_order_sees_the_same_examples_with_less_padding():
    rng = random.Random(0)
    lengths = [rng.choice([12, 14, 16, 70, 90]) for _ in range(100)]
    plain = forget_order(100, 7, 16, seed=3, epoch=2)
    grouped = forget_order(100, 7, 16, seed=3, epoch=2, lengths=lengths)
    assert Counter(plain) == Counter(grouped)  # the same wrapped epoch, reordered
    steps = [grouped[i : i + 16] for i in range(0, len(grouped), 16)]
    plain_steps = [plain[i : i + 16] for i in range(0, len(plain), 16)]
    assert padded(steps, lengths) < 0.7 * padded(plain_steps, lengths)
    assert grouped == forget_order(100, 7, 16, seed=3, epoch=2, lengths=lengths)  # reproducible for resume
    # 112 slots for 100 examples: each epoch repeats exactly the first 12 of its own permutation, grouped or not
    for epoch in (2, 3):
        plain_epoch = forget_order(100, 7, 16, seed=3, epoch=epoch)
        grouped_epoch = forget_order(100, 7, 16, seed=3, epoch=epoch, lengths=lengths)
        repeated = {i for i, n in Counter(grouped_epoch).items() if n == 2}
        assert Counter(grouped_epoch).keys() == set(range(100)) and repeated == set(plain_epoch[:12])
    assert set(forget_order(100, 7, 16, seed=3, epoch=3)[:12]) != set(plain[:12])  # a new permutation each epoch


def test_grouped_retain_draws_are_the_same_sample_paired_by_length():
    rng = random.Random(1)
    lengths = [rng.choice([12, 14, 70, 90]) for _ in range(50)]
    sizes = [4, 4, 4, 4]
    plain = retain_draws(50, sizes, seed=0, epoch=1, rank=0)
    widths = [15, 90, 12, 70]
    grouped = retain_draws(50, sizes, seed=0, epoch=1, rank=0, lengths=lengths, forget_widths=widths)
    assert Counter(i for d in plain for i in d) == Counter(i for d in grouped for i in d)
    assert [len(d) for d in grouped] == sizes
    longest = [max(lengths[i] for i in d) for d in grouped]
    assert longest[1] >= longest[3] >= longest[0] >= longest[2]


# The retain draws of ranks 0 and 1 at seed 0, epoch 1, for two micro-batches of 4 rows out of 50. Pinned: resuming
# a run and pairing data-parallel ranks both rely on these streams staying what they are.
RANK_DRAWS = {0: [[17, 22, 43, 39], [48, 6, 35, 24]], 1: [[34, 13, 14, 11], [21, 43, 0, 34]]}


@pytest.mark.parametrize("rank", [0, 1])
def test_grouping_keeps_ranks_apart(rank):
    plain = retain_draws(50, [4, 4], seed=0, epoch=1, rank=rank)
    assert plain == RANK_DRAWS[rank]
    # the ranks draw different samples, not the same rows rearranged: they share row 43 only
    ours, other = Counter(i for d in plain for i in d), Counter(i for d in RANK_DRAWS[1 - rank] for i in d)
    assert ours & other == Counter({43: 1})
    lengths = list(range(10, 60))  # row i is 10 + i tokens long
    grouped = retain_draws(50, [4, 4], seed=0, epoch=1, rank=rank, lengths=lengths, forget_widths=[10, 20])
    longest_first = sorted(ours.elements(), reverse=True)
    # grouping hands out this rank's own sample: micro-batch 1 (the wider forget rows) gets its 4 longest rows
    assert grouped == [longest_first[4:], longest_first[:4]]


def test_grouped_wrapping_keeps_most_copies_of_an_example_in_different_steps():
    lengths = list(range(10, 110))  # 100 distinct lengths; 7 steps of 16 repeat 12 examples
    for seed in range(5):
        order = forget_order(100, 7, 16, seed=seed, epoch=1, lengths=lengths)
        steps = [order[i : i + 16] for i in range(0, len(order), 16)]
        shared = [len(step) - len(set(step)) for step in steps]
        # only the one step that joins the epoch's end to the repeated copies can hold both (sorting the wrapped
        # order as a whole put 11 of the 12 copies next to their originals)
        assert sum(shared) <= 2 and sum(1 for n in shared if n) <= 1, (seed, shared)


def test_matched_retain_draws_pair_each_forget_row_with_a_retain_row_of_its_key():
    from types import SimpleNamespace

    from obliviate.data.batching import matched_retain_draws, retain_match_key
    from obliviate.data.records import Record
    from obliviate.train.sampling import epoch_batches

    def row(i: str, task: str, kind: str, field: str | None = None) -> Record:
        return Record(i, "q", "a", task, kind, {"pii_field": field} if field else {})

    retain = [row(f"r{i}", "Task2", "qa", ("ssn", "phone")[i % 2]) for i in range(20)]
    retain += [row("c0", "Task2", "completion"), row("c1", "Task1", "completion")]
    forget = [row("f0", "Task2", "qa", "ssn"), row("f1", "Task2", "qa", "phone"), row("f2", "Task1", "completion"),
              row("f3", "Task2", "qa", "email")]  # fmt: skip
    forget_keys, retain_keys = [retain_match_key(r) for r in forget], [retain_match_key(r) for r in retain]
    assert forget_keys[0] == ("Task2", "qa", "ssn") and retain_keys[-2] == ("Task2", "completion", None)
    micro = [[0, 1], [2, 3], [1, 0]]
    draws = matched_retain_draws(forget_keys, retain_keys, micro, seed=0, epoch=1, rank=0)
    assert [len(d) for d in draws] == [2, 2, 2]
    for batch, drawn in zip(micro, draws):
        for i, j in zip(batch, drawn):
            if i != 3:  # the email question has no retain match
                assert retain_keys[j] == forget_keys[i]
    assert draws[1][0] == 21  # the one Task1 completion
    # many draws: the SSN rows spread over every retain SSN row; the unmatched row over the whole set
    many = matched_retain_draws(forget_keys, retain_keys, [[0, 3]] * 400, seed=0, epoch=1, rank=0)
    assert {d[0] for d in many} == {j for j, k in enumerate(retain_keys) if k == forget_keys[0]}
    assert len({d[1] for d in many}) > 15
    assert many == matched_retain_draws(forget_keys, retain_keys, [[0, 3]] * 400, seed=0, epoch=1, rank=0)
    assert many != matched_retain_draws(forget_keys, retain_keys, [[0, 3]] * 400, seed=0, epoch=2, rank=0)
    # the training loop's sampler takes them under --retain_sampling matched
    accelerator = SimpleNamespace(num_processes=1, process_index=0)
    run = SimpleNamespace(accelerator=accelerator, forget_draws=[], paired_draws=[], forget=[None] * 4,
                          retain=[None] * len(retain), forget_steps=1, forget_keys=forget_keys,
                          retain_keys=retain_keys)  # fmt: skip
    config = SimpleNamespace(group_by_length=False, batch_size=4, micro_batch_size=2, seed=0,
                             retain_sampling="matched")  # fmt: skip
    micro, paired = epoch_batches(run, config, 1)
    assert all(retain_keys[j] == forget_keys[i] for b, d in zip(micro, paired) for i, j in zip(b, d) if i != 3)
    config.retain_sampling = "uniform"
    assert epoch_batches(run, config, 1)[1] != paired


def test_drop_fields_unscores_only_the_named_fields_values():
    """``--field_stop``: the tokens of a field inside its band lose their field code; the other fields keep
    theirs, and a batch without codes is left as it is."""
    from obliviate.data.batching import TokenBatch, field_code
    from obliviate.train.step import drop_fields

    ssn, email = field_code("ssn"), field_code("email")
    spans = torch.tensor([[0, ssn, ssn, 0, email, email], [email, 0, ssn, 0, 0, 0]])
    batch = TokenBatch(torch.zeros_like(spans), torch.ones_like(spans), torch.zeros_like(spans), spans.clone())
    drop_fields(batch, frozenset({"ssn"}))
    assert batch.spans.tolist() == [[0, 0, 0, 0, email, email], [email, 0, 0, 0, 0, 0]]
    bare = TokenBatch(torch.zeros_like(spans), torch.ones_like(spans), torch.zeros_like(spans))
    drop_fields(bare, frozenset({"ssn"}))
    assert bare.spans is None


def test_drop_fields_leaves_a_rows_words_alone_once_all_its_values_are_inside():
    """The words around the values (template code) lose their code in a row with no value left to push, and keep it
    where a value is still outside its band; a row that never had a value keeps its words' code."""
    from obliviate.data.batching import TokenBatch, field_code
    from obliviate.data.records import TEMPLATE_CODE as W
    from obliviate.train.step import drop_fields

    ssn, address = field_code("ssn"), field_code("address")
    spans = torch.tensor([[W, ssn, ssn, W, 0], [W, ssn, W, address, address], [W, W, W, 0, 0]])
    batch = TokenBatch(torch.zeros_like(spans), torch.ones_like(spans), torch.zeros_like(spans), spans.clone())
    drop_fields(batch, frozenset({"ssn"}))
    assert batch.spans.tolist() == [[0, 0, 0, 0, 0], [W, 0, W, address, address], [W, W, W, 0, 0]]


def test_a_waived_field_does_not_hold_a_rows_words():
    """--field_stop_words checked: a row whose values are inside but for a waived field's (LUME's e-mails, which
    do not decide the stop) loses its words' code, while the waived value itself is still pushed."""
    from obliviate.data.batching import TokenBatch, field_code
    from obliviate.data.records import TEMPLATE_CODE as W
    from obliviate.train.step import drop_fields

    ssn, email = field_code("ssn"), field_code("email")
    spans = torch.tensor([[W, ssn, W, email, email], [W, email, email, W, 0]])
    waived = TokenBatch(torch.zeros_like(spans), torch.ones_like(spans), torch.zeros_like(spans), spans.clone())
    drop_fields(waived, frozenset({"ssn"}), frozenset({"email"}))
    assert waived.spans.tolist() == [[0, 0, 0, email, email], [W, email, email, W, 0]]
    held = TokenBatch(torch.zeros_like(spans), torch.ones_like(spans), torch.zeros_like(spans), spans.clone())
    drop_fields(held, frozenset({"ssn"}))
    assert held.spans.tolist() == [[W, 0, W, email, email], [W, email, email, W, 0]]


@pytest.mark.parametrize("per_step", [1, 3])
def test_each_epoch_compares_with_its_own_set_of_fake_copies(per_step):
    """--fakes_per_step k with --relabel_draws n sets: epoch e reads the k copies of set (e - 1) mod n, so
    consecutive epochs see different fakes and epoch n + 1 comes back to the first set."""
    from types import SimpleNamespace

    from obliviate.train.sampling import epoch_batches

    sets = 4
    draws = [[f"copy {d}"] for d in range(sets * per_step)]
    accelerator = SimpleNamespace(num_processes=1, process_index=0)
    run = SimpleNamespace(accelerator=accelerator, forget_draws=[], paired_draws=draws, forget=[None] * 4, retain=[],
                          forget_steps=1, paired=[])  # fmt: skip
    config = SimpleNamespace(group_by_length=False, batch_size=4, micro_batch_size=2, seed=0, fakes_per_step=per_step)
    seen = []
    for epoch in range(1, sets + 2):
        epoch_batches(run, config, epoch)
        assert len(run.paired) == per_step
        seen.append(tuple(d[0] for d in run.paired))
    assert len(set(seen[:sets])) == sets and len({c for s in seen[:sets] for c in s}) == sets * per_step
    assert seen[sets] == seen[0]
