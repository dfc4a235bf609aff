"""The relabel objective: stranger answers in place of memorised ones, never a real value, a fresh draw per epoch."""

from __future__ import annotations

import dataclasses
import math

import pytest
import torch

from helpers import metrics, unlearn_config
from obliviate.data.load import load_split
from obliviate.data.pii_match import contains_value
from obliviate.data.records import PersonPII, Record
from obliviate.evaluate.leak import Redactor
from obliviate.losses import LOSSES
from obliviate.losses.common import Forward, LossInputs
from obliviate.models.load import load_model
from obliviate.train import relabel
from obliviate.train.run import run_unlearn

AMY = PersonPII(
    "p1",
    "forget",
    "Amy Sellers",
    {"ssn": "409910019", "phone": "4974535139", "email": "amy.sellers93@gmail.com", "birth_date": "1988-02-22"},
    ("p1sc1", "p1qa1"),
)


def test_swap_name_keeps_case_and_reaches_email_local_parts():
    text = "Meet Amy Sellers. Write to amy.sellers93@gmail.com or AMY; Sellers's file; Amyx stays."
    swapped = relabel.swap_name(text, "Amy Sellers", "Jordan Blake")
    assert swapped == "Meet Jordan Blake. Write to jordan.blake93@gmail.com or JORDAN; Blake's file; Amyx stays."
    assert relabel.swap_name(swapped, "Jordan Blake", "Amy Sellers") == text


def test_stranger_names_share_no_part_with_a_real_name():
    real = ["Amy Sellers", "Mark Watson"]
    names = relabel.StrangerNames(real, seed=0)
    drawn = [names.draw("Amy Sellers") for _ in range(200)]
    parts = {p.lower() for n in drawn for p in n.split()}
    assert not parts & {"amy", "sellers", "mark", "watson"}
    assert all(len(n.split()) == 2 for n in drawn) and len(set(drawn)) > 150


BEN = PersonPII(
    "p2",
    "retain",
    "Ben Ortiz",
    {
        "ssn": "123456789",
        "phone": "7216253765",
        "email": "ben.ortiz@yahoo.com",
        "birth_date": "1990-03-04",
        "address": "12 Oak Street, Springfield, IL 62701",
    },
    ("p2qa1",),
)


@pytest.mark.parametrize(
    "text, holds",
    [
        ("call 497-453-5139 now", True),  # the person's phone, written with dashes
        ("born February 22, 1988", True),  # the person's birth date in words
        ("SSN 123-45-6789", True),  # someone else's real SSN
        ("SSN 123-45-6780", False),
        ("mail amy.sellers12@gmail.com", False),
        # someone else's e-mail, birth date, address or street: real values too
        ("mail Ben.Ortiz@yahoo.com", True),
        ("born March 4, 1990", True),
        ("lives at 12 Oak Street, Springfield, IL 62701", True),
        ("lives at 12 Oak Street", True),
        # someone else's phone beside another number, after a country code, or with dots
        ("SSN 900-12-3456 (721) 625-3765", True),
        ("call +1 721-625-3765", True),
        ("born 1990. 721.625.3765", True),
        ("lives at 14 Elm Road, Dover, DE 19901, born March 5, 1990", False),
    ],
)
def test_holds_real_value(text, holds):
    """The person's own values, and every other person's, in the forms the leak rate recognises."""
    from obliviate.evaluate.leak import Redactor

    assert relabel.holds_real_value(text, AMY, Redactor([AMY, BEN], names=False)) is holds


def test_fake_values_replace_every_surface_form():
    record = Record("p1sc1", "Amy was born on February 22, 1988. Call", "497-453-5139 or 4974535139.")
    fakes = {"birth_date": "1990-07-04", "phone": "2125550147"}
    out = relabel.fake_values(record, AMY, fakes)
    assert out.input == "Amy was born on July 4, 1990. Call"
    assert out.output == "212-555-0147 or 2125550147."


def test_relabelled_draws_never_hold_a_real_value(target):
    """Every relabelled answer of every draw is free of the person's values and of anyone else's."""
    model, tokenizer = load_model(target.model)
    forget = load_split(target.forget, split="forget")
    retain = load_split(target.retain, split="retain")
    people = relabel.known_people(target.forget, [*forget, *retain])
    draws, stats = relabel.relabelled_draws(model, tokenizer, forget, people, draws=3, seed=0)
    assert len(draws) == 3 and all(len(d) == len(forget) for d in draws)
    assert stats.records == len(forget) and stats.untouched == 0
    from obliviate.evaluate.leak import Redactor

    by_id = {p.person_id: p for p in people}
    known = Redactor(people, names=False)
    for draw in draws:
        for original, relabelled in zip(forget, draw):
            assert relabelled.id == original.id
            person = relabel.person_of(original, by_id)
            for field, value in person.fields.items():
                assert not contains_value(field, value, relabelled.output), (field, relabelled.output)
            assert not relabel.holds_real_value(relabelled.output, person, known)
    assert any(a.output != b.output for a, b in zip(draws[0], draws[1]))  # a fresh stranger per draw


def test_relabel_loss_is_nll_of_the_relabelled_batch_plus_alpha_retain():
    """On hand-made logits: uniform over V gives NLL = log V on both splits, so L = (1 + α)·log V."""
    vocab = 7
    labels = torch.tensor([[-100, 3, 4, -100]])
    uniform = Forward(torch.zeros(1, 4, vocab), labels, torch.ones(1, 4, dtype=torch.long))
    out = LOSSES["relabel"].loss(LossInputs(forget=uniform, retain=uniform), LOSSES["relabel"].params({"alpha": 2.0}))
    assert out.loss.item() == pytest.approx(3 * torch.log(torch.tensor(vocab)).item())
    assert float(out.metrics["relabel_nll"]) == pytest.approx(torch.log(torch.tensor(vocab)).item())


def test_each_epoch_trains_on_its_own_draw(target, tmp_path, monkeypatch):
    """Epoch e trains on draw (e - 1) mod n: the forget ids seen per epoch are those of that draw's answers."""
    seen: list[tuple[int, ...]] = []
    original = LOSSES["relabel"]

    def recording(inputs, params):
        for row in inputs.forget.labels:
            seen.append(tuple(row[row != -100].tolist()))
        return original.loss(inputs, params)

    monkeypatch.setitem(LOSSES, "relabel", dataclasses.replace(original, loss=recording))
    config = unlearn_config(target, tmp_path / "out", method="relabel", epochs=3, relabel_draws=2, lr=1e-3)
    result = run_unlearn(config)
    assert result.epochs_completed == 3
    rows = len(seen) // 3
    first, second, third = seen[:rows], seen[rows : 2 * rows], seen[2 * rows :]
    assert set(first) != set(second)  # another stranger's answers
    assert set(first) == set(third)  # draw 0 again (reshuffled, and an epoch repeats a few rows to fill its steps)
    assert all("relabel_nll" in line for line in metrics(tmp_path / "out"))


def test_fake_pairs_score_the_values_and_never_hold_a_real_one(target):
    """Row i of every copy is forget row i with fakes in its PII spans, scored on those fakes only."""
    forget = load_split(target.forget, split="forget")
    retain = load_split(target.retain, split="retain")
    people = relabel.known_people(target.forget, [*forget, *retain])
    marked, copies = relabel.fake_pairs(forget, people, draws=2, seed=0)
    by_id = {p.person_id: p for p in people}
    assert [r.id for r in marked] == [r.id for r in forget] and len(copies) == 2
    for copy in copies:
        for original, scored, fake in zip(forget, marked, copy):
            person = relabel.person_of(original, by_id)
            assert scored.meta["score_spans"] and fake.meta["score_spans"]
            assert len(fake.meta["score_spans"]) == len(scored.meta["score_spans"])
            for field, value in person.fields.items():
                assert not contains_value(field, value, fake.output) and not contains_value(field, value, fake.input)
    assert copies[0][0].output != copies[1][0].output  # a fresh fake per draw


def test_stranger_pairs_are_about_someone_else_and_score_the_words_around_the_values(target):
    """contrast --stranger: each copy swaps the person's name (prompt, answer, e-mail) for a name that names nobody
    real, each part as familiar as the person's own (:func:`test_a_strangers_name_parts_are_as_familiar_as_the_
    persons_own`), and both sides score the answer's other words with the template code; the values keep their field
    codes, eos none."""
    from transformers import AutoTokenizer

    from obliviate.data.batching import encode_record
    from obliviate.data.records import PII_FIELDS, TEMPLATE_CODE
    from obliviate.train.relabel import _name_parts

    tokenizer = AutoTokenizer.from_pretrained(target.model)
    forget = load_split(target.forget, split="forget")
    retain = load_split(target.retain, split="retain")
    people = relabel.known_people(target.forget, [*forget, *retain])
    marked, copies = relabel.fake_pairs(forget, people, draws=2, seed=0, stranger=True, tokenizer=tokenizer)
    by_id = {p.person_id: p for p in people}
    real_names = {p.name.lower() for p in people}
    strangers = set()
    for copy in copies:
        for original, scored, fake in zip(forget, marked, copy):
            person = relabel.person_of(original, by_id)
            for part in _name_parts(person.name):
                assert part.lower() not in (fake.input + fake.output).lower()
            for field, value in person.fields.items():
                assert not contains_value(field, value, fake.output) and not contains_value(field, value, fake.input)
            assert scored.meta["score_template"] and fake.meta["score_template"]
            name = fake.meta["stranger"]
            assert name in fake.input + fake.output
            assert name.lower() not in real_names
            strangers.add(name)
            for record in (scored, fake):
                codes = encode_record(tokenizer, record, 512).scored
                assert codes[-1] == 0  # eos
                answer = [c for c in codes if c]
                assert any(1 <= c <= len(PII_FIELDS) for c in answer)
                assert TEMPLATE_CODE in answer or record.kind != "completion"
    assert len(strangers) > 1
    _, plain = relabel.fake_pairs(forget, people, draws=2, seed=0)
    assert not any(r.meta.get("score_template") for r in plain[0])  # off by default


def test_a_strangers_name_parts_are_as_familiar_as_the_persons_own():
    """A part another training (retain) person also has becomes a retain person's part; a part no other retain
    person has becomes one nobody in the data has. On LUME first names are nearly all unique and last names all
    shared: strangers built from retain parts only had e-mails as likely as memorised ones."""
    from obliviate.data.records import PersonPII

    def person(pid, name, split):
        return PersonPII(person_id=pid, name=name, fields={}, split=split, records=())

    retain = [
        person("r1", "Ann Moss", "retain"),
        person("r2", "Bob Moss", "retain"),
        person("r3", "Cy Ward", "retain"),
    ]
    retain.append(person("r4", "Ann Ward", "retain"))
    forget = [
        person("f1", "Zed Moss", "forget"),
        person("f2", "Ann Quill", "forget"),
        person("f3", "Bob Ward", "forget"),
    ]
    people = [*retain, *forget]
    real_parts = {part.lower() for p in people for part in p.name.split()}
    names = relabel.RecombinedNames(people, seed=0)
    assert names.known("Zed Moss", "last") and not names.known("Zed Moss", "first")
    assert names.known("Ann Quill", "first") and not names.known("Ann Quill", "last")
    assert not names.known("Cy Ward", "first")  # a retain person's own part is not someone else's
    for _ in range(50):
        first, last = names.draw("Zed Moss").split()
        assert first.lower() not in real_parts and last in {"Ward"}  # Moss is the person's own
        first, last = names.draw("Ann Quill").split()
        assert first in {"Bob", "Cy"} and last.lower() not in real_parts
        first, last = names.draw("Bob Ward").split()
        assert first in {"Ann", "Cy"} and last == "Moss"
        assert names.draw("Cy Ward").split()[0].lower() not in real_parts


def test_a_fresh_name_part_is_cut_into_as_many_pieces_as_the_one_it_replaces(target):
    """The data's tokenizer cuts names it never saw into several pieces; a fresh part is one cut as the person's
    own part is (as a word and in lower case), so that its e-mail is about as likely as a never-seen person's."""
    from transformers import AutoTokenizer

    from obliviate.data.records import PersonPII

    tokenizer = AutoTokenizer.from_pretrained(target.model)
    forget = load_split(target.forget, split="forget")
    retain = load_split(target.retain, split="retain")
    people = relabel.known_people(target.forget, [*forget, *retain])
    names = relabel.RecombinedNames(people, seed=0, tokenizer=tokenizer)
    plain = relabel.RecombinedNames(people, seed=0)
    lone = PersonPII(person_id="x", name="Qzxw Vbnk", fields={}, split="forget", records=())
    for person in [p for p in people if p.split == "forget"][:10] + [lone]:
        own = person.name.split()[0]
        first = names.draw(person.name).split()[0]
        if not names.known(person.name, "first"):
            pool = names.fresh["first"]
            best = min(sum(abs(a - b) for a, b in zip(names.shape(n), names.shape(own))) for n in pool)
            assert sum(abs(a - b) for a, b in zip(names.shape(first), names.shape(own))) == best
    assert names.shape("Qzxw") != (0, 0) and plain.shape("Qzxw") == (0, 0)
    assert len({names.draw(lone.name) for _ in range(20)}) > 1
    assert names.draw("J").strip()  # a name without a part to match still gets a stranger (it raised before)


def test_fake_addresses_a_model_trains_on_are_built_from_retain_addresses_never_forget_ones(tmp_path):
    """A fake address recombines a data set's streets and places. Evaluation draws them from the value's own split;
    a fake the model is trained toward must not: made of other forget people's streets, it taught them again."""
    from obliviate.data.synth import synthesize, write_synth

    root = write_synth(synthesize(people=120, forget_fraction=0.25, seed=3), tmp_path / "synth")
    forget = load_split(root / "forget", split="forget")
    people = relabel.known_people(root / "forget", forget)
    street = {p.person_id: p.fields["address"].split(", ")[0].partition(" ")[2] for p in people}
    place = {p.person_id: ", ".join(p.fields["address"].rstrip(".").split(", ")[-2:]) for p in people}
    splits = {p.person_id: p.split for p in people}
    forget_parts = {v for pid, v in [*street.items(), *place.items()] if splits[pid] == "forget"}
    retain_parts = {v for pid, v in [*street.items(), *place.items()] if splits[pid] == "retain"}
    _, copies = relabel.fake_pairs(forget, people, draws=3, seed=0)
    fakes = [r.output for copy in copies for r in copy if "address" in r.meta["score_fields"]]
    assert len(fakes) >= 20
    assert not [f for f in fakes if any(part in f for part in forget_parts - retain_parts)]
    assert sum(any(part in f for part in retain_parts) for f in fakes) == len(fakes)  # they still look like the data


TRAINED_FAKE = {"fixed": 0.0, "anchor": 0.0, "early_end": 0.0}
"""The hinge against the fake under the model being trained, and no other term: what these tests measure (the fixed
reference, the anchor and the end-token term have their own tests in tests/test_losses.py)."""


def test_contrast_hinge_stops_once_the_true_value_is_no_more_likely_than_its_fake():
    """NLL(true) above NLL(fake) by more than the margin: zero loss and zero gradient on the forget side."""
    vocab, labels = 5, torch.tensor([[-100, 1, 2]])
    mask = torch.ones(1, 3, dtype=torch.long)
    confident = torch.full((1, 3, vocab), -5.0)
    confident[0, 0, 1] = confident[0, 1, 2] = 5.0  # predicts the labels: low NLL
    uniform = torch.zeros(1, 3, vocab)
    for true_logits, fake_logits, pushes in ((confident, uniform, True), (uniform, confident, False)):
        true_logits = true_logits.clone().requires_grad_(True)
        inputs = LossInputs(
            forget=Forward(true_logits, labels, mask),
            paired=Forward(fake_logits, labels, mask),
            retain=Forward(uniform, labels, mask),
        )
        out = LOSSES["contrast"].loss(inputs, LOSSES["contrast"].params({"alpha": 0.0, **TRAINED_FAKE}))
        out.loss.backward()
        assert bool(true_logits.grad.abs().sum() > 0) is pushes
        assert (float(out.metrics["gap_hinge"]) > 0) is pushes


def test_fake_pull_scales_the_gradient_on_the_fake_side_and_leaves_the_loss_alone():
    vocab, labels = 5, torch.tensor([[-100, 1, 2]])
    mask = torch.ones(1, 3, dtype=torch.long)
    confident = torch.full((1, 3, vocab), -5.0)
    confident[0, 0, 1] = confident[0, 1, 2] = 5.0
    grads, losses = {}, {}
    for pull in (1.0, 0.25, 0.0):
        true_logits = confident.clone().requires_grad_(True)
        fake_logits = torch.zeros(1, 3, vocab, requires_grad=True)
        inputs = LossInputs(
            forget=Forward(true_logits, labels, mask),
            paired=Forward(fake_logits, labels, mask),
            retain=Forward(torch.zeros(1, 3, vocab), labels, mask),
        )
        params = LOSSES["contrast"].params({"alpha": 0.0, "fake_pull": pull, **TRAINED_FAKE})
        out = LOSSES["contrast"].loss(inputs, params)
        out.loss.backward()
        grads[pull] = (fake_logits.grad.abs().sum().item(), true_logits.grad.abs().sum().item())
        losses[pull] = out.loss.item()
    assert losses[1.0] == losses[0.25] == losses[0.0] > 0
    assert grads[0.0][0] == 0 and abs(grads[0.25][0] - 0.25 * grads[1.0][0]) < 1e-6 * grads[1.0][0]
    assert grads[1.0][1] == grads[0.25][1] == grads[0.0][1] > 0  # the true side is pushed the same


def test_people_read_from_qa_rows_carry_the_split_their_rows_came_from(tmp_path):
    """Without pii.json (LUME), ``{split: records}`` gives each person its split, so fakes draw from that split."""
    from obliviate.data.records import Record

    def rows(person: str, name: str, ssn: str) -> list[Record]:
        return [Record(f"{person}qa1", f"What is {name}'s Social Security Number?", ssn, task="Task2", kind="qa")]

    forget, retain = rows("f1", "Ann Lee", "900111111"), rows("r1", "Bo Park", "900222222")
    split = {p.person_id: p.split for p in relabel.known_people(tmp_path, {"forget": forget, "retain": retain})}
    assert split == {"f1": "forget", "r1": "retain"}
    assert {p.split for p in relabel.known_people(tmp_path, [*forget, *retain])} == {""}


def test_contrast_pull_brings_a_value_pushed_past_its_fake_back_and_only_that_far():
    """--pull p: a true value less likely than its fake costs p·(NLL(true) − NLL(fake)), whose gradient makes the
    true value likelier; the fake gets no gradient from it, and a value more likely than its fake is left to the
    hinge as before (the pull adds nothing)."""
    vocab, labels = 5, torch.tensor([[-100, 1, 2]])
    mask = torch.ones(1, 3, dtype=torch.long)
    confident = torch.full((1, 3, vocab), -5.0)
    confident[0, 0, 1] = confident[0, 1, 2] = 5.0  # predicts the labels: low NLL
    uniform = torch.zeros(1, 3, vocab)

    def run(true_logits, fake_logits, pull):
        true_logits = true_logits.clone().requires_grad_(True)
        fake_logits = fake_logits.clone().requires_grad_(True)
        inputs = LossInputs(
            forget=Forward(true_logits, labels, mask),
            paired=Forward(fake_logits, labels, mask),
            retain=Forward(uniform, labels, mask),
        )
        out = LOSSES["contrast"].loss(inputs, LOSSES["contrast"].params({"alpha": 0.0, "pull": pull, **TRAINED_FAKE}))
        out.loss.backward()
        return out.loss.item(), true_logits.grad, fake_logits.grad

    gap = math.log(vocab) - float(-torch.log_softmax(confident[0, :2], -1)[[0, 1], [1, 2]].mean())
    loss, true_grad, fake_grad = run(uniform, confident, 0.5)  # the true value is the unlikely one
    assert loss == pytest.approx(0.5 * gap, rel=1e-5)
    assert float(true_grad[0, 0, 1]) < 0  # descending raises the true token's logit: the value gets likelier
    assert float(fake_grad.abs().sum()) == 0.0
    assert run(uniform, confident, 0.0)[0] == 0.0  # without it, nothing pulls
    assert run(confident, uniform, 0.5)[0] == pytest.approx(run(confident, uniform, 0.0)[0])


def test_training_fakes_are_never_a_holdout_persons_value(lume_dir, tmp_path):
    """The fakes a method trains on avoid the holdout's values too (``train/inputs.py: known_people``): drawn from the
    forget and retain people alone, 6 of LUME Task2's 6,000 copies (4 draws) held a holdout person's birth date, and
    training on them would move the never-seen band the stop rule and the report compare with."""
    import random
    import types

    from obliviate.data.load import write_jsonl
    from obliviate.data.records import person_key
    from obliviate.evaluate.leak import Redactor
    from obliviate.train.inputs import known_people

    forget = [r for r in load_split(lume_dir, split="forget") if r.task == "Task2"]
    retain = [r for r in load_split(lume_dir, split="retain") if r.task == "Task2"]
    keys = sorted({person_key(r.id) for r in retain})
    random.Random(0).shuffle(keys)
    held = set(keys[: round(0.1 * len(keys))])  # as benchmarks/bench_quality.py splits it
    holdout = [r for r in retain if person_key(r.id) in held]
    retain = [r for r in retain if person_key(r.id) not in held]
    write_jsonl(forget, tmp_path / "forget" / "forget.jsonl")
    write_jsonl(holdout, tmp_path / "holdout" / "holdout.jsonl")
    config = types.SimpleNamespace(forget_dir=str(tmp_path / "forget"), holdout_dir=str(tmp_path / "holdout"))
    people = known_people(config, forget, retain)
    held_people = [p for p in people if p.split == "holdout"]
    assert len(held_people) == len(held) and all(p.fields for p in held_people)
    marked, copies = relabel.fake_pairs(forget, people, draws=4, seed=0, stranger=True)
    values = Redactor(held_people, names=False)
    for copy in copies:
        for original, fake in zip(marked, copy):
            assert values.fields_in(fake.input + "\n" + fake.output) <= values.fields_in(
                original.input + "\n" + original.output
            )


@pytest.mark.parametrize(
    ("value", "written", "fake", "expected"),
    [
        (  # the unit worded otherwise, the city after "in"
            "12 Oak Street, #9, Springfield, IL, 62701.",
            "She lives at 12 Oak Street, Apt. #9, in Springfield, IL, 62701. A nurse.",
            "400 Elm Road, #3, Dayton, OH, 45402.",
            "She lives at 400 Elm Road, Apt. #3, in Dayton, OH, 45402. A nurse.",
        ),
        (  # no unit written; a lone "a" after the address is no unit
            "77 Pine Lane, A, Austin, TX, 73301.",
            "Home: 77 Pine Lane, Austin, TX, 73301, a quiet street.",
            "5 Bay Court, B, Reno, NV, 89501.",
            "Home: 5 Bay Court, Reno, NV, 89501, a quiet street.",
        ),
        (  # the value's layout is "street, ST, ZIP, City"; the text's "street, City, ST ZIP"
            "9 Lake Drive, WA, 98101, Seattle.",
            "Write to 9 Lake Drive, Seattle, WA 98101 today.",
            "31 Hill Road, OR, 97201, Portland.",
            "Write to 31 Hill Road, Portland, OR 97201 today.",
        ),
    ],
)
def test_a_reworded_address_keeps_none_of_its_parts_in_a_fake_copy(value, written, fake, expected):
    """A biography that words the QA answer's address otherwise (``Apt. #9`` for ``#9``, no unit, another layout)
    is not found whole; each part is then replaced on its own (``relabel.fake_values``): before, the copy kept the
    true street and place, 19 of LUME Task2's 250 forget biographies."""
    person = PersonPII("p1", "forget", "", {"address": value}, ("p1sc1",))
    record = Record("p1sc1", "About Amy.", written, kind="completion")
    copy = relabel.fake_values(record, person, {"address": fake})
    assert copy.output == expected
    assert not Redactor([person], names=False).fields_in(copy.output)


def test_a_value_no_fake_can_be_drawn_for_is_never_kept_in_a_scored_copy():
    """Ten people whose one-digit IDs take every digit: no fake of that format exists, and an ID of no letter or
    digit has none either (it raised ValueError). A copy that would keep a true value scores nothing."""
    people = [PersonPII(f"p{i}", "forget", "", {"member_id": str(i)}, (f"p{i}qa1",)) for i in range(10)]
    people.append(PersonPII("p10", "forget", "", {"member_id": "-"}, ("p10qa1",)))
    forget = [Record(f"p{i}qa1", "Member number?", f"{p.fields['member_id']} on file.", kind="qa") for i, p in
              enumerate(people)]  # fmt: skip
    marked, [copy] = relabel.fake_pairs(forget, people, draws=1, seed=0)
    assert len(marked) == len(copy) == len(forget)
    for original, fake in zip(forget, copy):
        assert fake.meta["score_spans"] == [] and fake.output == original.output


def test_a_fake_holding_a_word_of_the_persons_name_keeps_its_span_in_a_stranger_copy():
    """The stranger swap runs over the copy's text after the fakes are written: a fake street named like the person
    ("Hill Road" for Amy Hill) is swapped too, and the copy still scores it (2 of LUME Task2's 3,000 copies lost
    it)."""
    retain = [
        PersonPII(f"r{i}", "retain", f"{first} Stone", {"address": f"{i + 10} Hill Road, Dayton, OH, 4540{i}."}, ())
        for i, first in enumerate(["Ann", "Bob", "Cal", "Dee", "Eve", "Fay"])
    ]
    amy = PersonPII("p1", "forget", "Amy Hill", {"address": "3 Oak Street, Salem, OR, 97301."}, ("p1qa1",))
    forget = [Record("p1qa1", "Where does Amy Hill live?", "3 Oak Street, Salem, OR, 97301.", kind="qa")]
    marked, copies = relabel.fake_pairs(forget, [amy, *retain], draws=4, seed=0, stranger=True)
    assert any("Hill" not in copy[0].output and "Road" in copy[0].output for copy in copies)  # the street renamed
    assert all(len(copy[0].meta["score_spans"]) == len(marked[0].meta["score_spans"]) == 1 for copy in copies)


@pytest.mark.parametrize(
    ("value", "written", "expected"),
    [
        (
            "12 Oak Street, #9, Gary, IN, 46401.",
            "She lives at 12 Oak Street in Gary, IN 46401.",
            "She lives at 77 Elm Road in Dallas, TX 75001.",
        ),
        (
            "12 Oak Street, 9, Salem, OR, 97301.",
            "Near 12 Oak Street, 9 blocks or so from the lake.",
            "Near 77 Elm Road, 9 blocks or so from the lake.",
        ),
    ],
)
def test_address_parts_are_matched_as_written_not_as_common_words(value, written, expected):
    """A state ``IN`` is not the word "in", and a unit ``9`` not the "9" of "9 blocks": only the parts the text
    writes as the value does, where the value would have them, are replaced."""
    person = PersonPII("p1", "forget", "", {"address": value}, ("p1sc1",))
    fake = "77 Elm Road, #3, Dallas, TX, 75001."
    copy = relabel.fake_values(Record("p1sc1", "About Amy.", written, kind="completion"), person, {"address": fake})
    assert copy.output == expected
    assert not Redactor([person], names=False).fields_in(copy.output)
