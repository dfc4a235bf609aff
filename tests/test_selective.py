"""``--forget_tokens pii``: the forget term scores only the tokens of the person's PII values."""

from __future__ import annotations

import torch

from helpers import unlearn_argv
from obliviate.cli.main import main
from obliviate.data.batching import collate, encode_record
from obliviate.data.load import load_split
from obliviate.data.pii import mark_pii_spans
from obliviate.data.records import PersonPII, Record
from obliviate.losses.common import token_logprobs
from obliviate.models.load import load_tokenizer

AMY = PersonPII("p1", "forget", "Amy Sellers", {"ssn": "409910019", "phone": "4974535139"}, ("p1sc1",))


def test_spans_cover_every_surface_form_of_every_value():
    record = Record("p1sc1", "Reach her at", "497-453-5139, SSN 409-91-0019, again 4974535139.")
    [marked], count = mark_pii_spans([record], [AMY])
    spans = marked.meta["score_spans"]
    assert count == 1
    assert [record.output[a:b] for a, b in spans] == ["497-453-5139", "409-91-0019", "4974535139"]
    assert marked.meta["score_fields"] == ["phone", "ssn", "phone"]


def test_each_scored_token_carries_its_values_field(assets):
    """The batch's ``spans`` give each value token its field's code (0 elsewhere): contrast hinges per value."""
    from obliviate.data.batching import field_code

    tokenizer = load_tokenizer(assets.model)
    record = Record("p1sc1", "Reach her at", "497-453-5139, SSN 409-91-0019.", meta={"person_id": "p1"})
    [marked], _ = mark_pii_spans([record], [AMY])
    batch = collate([encode_record(tokenizer, marked, 128)], tokenizer.pad_token_id)
    assert torch.equal(batch.spans > 0, batch.labels != -100)
    for field, value in (("phone", "497-453-5139"), ("ssn", "409-91-0019")):
        ids = batch.input_ids[0][batch.spans[0] == field_code(field)].tolist()
        assert tokenizer.decode(ids).strip() == value


def test_only_pii_tokens_are_scored(assets):
    tokenizer = load_tokenizer(assets.model)
    record = Record("p1sc1", "Reach her at", "497-453-5139 or by mail.", meta={"person_id": "p1"})
    [marked], _ = mark_pii_spans([record], [AMY])
    whole, selective = (collate([encode_record(tokenizer, r, 128)], tokenizer.pad_token_id) for r in (record, marked))
    scored = selective.labels[0][selective.labels[0] != -100].tolist()
    assert tokenizer.decode(scored).strip() == "497-453-5139"
    assert (whole.labels != -100).sum() > (selective.labels != -100).sum() > 0
    assert selective.input_ids.tolist() == whole.input_ids.tolist()  # the same text goes in


def test_values_in_the_prompt_move_into_the_answer_and_the_text_stays():
    """A biography whose prompt holds the phone (as LUME's holds the birth date, phone and e-mail) is re-cut at the
    whitespace before it: every value is then scored, and the text the model reads is the same."""
    from obliviate.data.pii import values_in_answers

    bio = Record("p1sc1", "Amy Sellers can be reached at 497-453-5139. Her", "SSN is 409-91-0019.")
    qa = Record("p1qa1", "What is Amy Sellers's phone 4974535139?", "409910019", kind="qa")
    plain = Record("p1sc2", "Amy Sellers likes", "tea and 497-453-5139.")
    stranger = Record("p9sc1", "Call 497-453-5139 now.", "Bye.")
    doc = Record("d1", "Amy Sellers:\n497-453-5139 is her phone.", "", kind="document", meta={"person_id": "p1"})
    recut, same_qa, same_plain, same_stranger, recut_doc = values_in_answers([bio, qa, plain, stranger, doc], [AMY])
    assert (recut.input, recut.output) == ("Amy Sellers can be reached at", "497-453-5139. Her SSN is 409-91-0019.")
    assert recut.text == bio.text and recut.id == bio.id
    assert (same_qa, same_plain, same_stranger) == (qa, plain, stranger)  # a question, no value, nobody known
    assert (recut_doc.kind, recut_doc.input, recut_doc.text) == ("completion", "Amy Sellers:", doc.text)
    [marked], _ = mark_pii_spans([recut], [AMY])
    assert marked.meta["score_fields"] == ["phone", "ssn"]
    [before], _ = mark_pii_spans([bio], [AMY])
    assert before.meta["score_fields"] == ["ssn"]


def test_contrast_pairs_score_the_biographys_prompt_values_on_both_sides():
    """A paired method's forget row and each fake copy are cut alike, so the phone in the prompt is hinged against
    the copy's fake phone in the same place."""
    from obliviate.train.relabel import fake_pairs

    bio = Record("p1sc1", "Amy Sellers can be reached at 497-453-5139. Her", "SSN is 409-91-0019.")
    marked, [copy] = fake_pairs([bio], [AMY], draws=1, seed=0)
    assert marked[0].meta["score_fields"] == copy[0].meta["score_fields"] == ["phone", "ssn"]
    assert copy[0].input == marked[0].input == "Amy Sellers can be reached at"
    assert "497-453-5139" not in copy[0].output


@torch.no_grad()
def split_nll(model_dir, assets) -> tuple[float, float]:
    """Mean NLL of the forget answers' PII tokens and of their other answer tokens."""
    from obliviate.models.load import load_model
    from obliviate.train.relabel import known_people

    model, tokenizer = load_model(model_dir)
    forget = load_split(assets.forget, split="forget")
    marked, _ = mark_pii_spans(forget, known_people(assets.forget, forget))
    whole = collate([encode_record(tokenizer, r, 128) for r in forget], tokenizer.pad_token_id)
    only = collate([encode_record(tokenizer, r, 128) for r in marked], tokenizer.pad_token_id)
    logits = model.eval()(input_ids=whole.input_ids, attention_mask=whole.attention_mask).logits
    logp, answer = token_logprobs(logits, whole.labels)
    pii = (only.labels[:, 1:] != -100).float()  # the same ids as ``whole``: only the scored positions differ
    other = answer * (1 - pii)
    return float(-(logp * pii).sum() / pii.sum()), float(-(logp * other).sum() / other.sum())


def test_unlearn_with_pii_tokens_only_moves_the_values_more_than_the_template(target, tmp_path):
    """GA on PII tokens raises their NLL more than the other answer tokens', and moves those less than GA on every
    answer token does.

    At lr 1e-3: at 1e-2 GA collapses this micro model in either mode, and with numbers cut into groups of three
    digits (a value's tokens are digit groups every number shares) no mode is selective there; at 1e-3 the rises
    measured 0.55 (values) and 0.38 (other tokens) under ``pii`` against 0.51 for the other tokens under ``answer``.
    """
    rises = {}
    for mode in ("pii", "answer"):
        out = tmp_path / mode
        argv = unlearn_argv(target, out, "--method", "ga", "--forget_tokens", mode, "--epochs", "2", "--lr", "1e-3")
        assert main(argv) == 0
        (pii_before, other_before), (pii_after, other_after) = split_nll(target.model, target), split_nll(out, target)
        rises[mode] = (pii_after - pii_before, other_after - other_before)
    assert rises["pii"][0] > rises["pii"][1] > 0, rises
    assert rises["pii"][1] < 0.8 * rises["answer"][1], rises
