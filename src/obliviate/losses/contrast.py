"""Contrast: make each true PII value no more likely than a fresh fake of its format, and stop there.

The objective is a hinge on the gap between a true value and its fake:

    L = mean_i relu(NLL_θ(ṽ_i | x̃_i) − NLL_θ(v_i | x_i) + m) + α·NLL_θ(R)

where ``i`` runs over the (row, PII field) pairs of the forget batch: ``v_i`` are the tokens of one field's value in
a forget row (its SSN, say) and ``ṽ_i`` those of the same field in the same row with every value replaced by a fresh
fake of the same format (a new draw each epoch; never a real value). Both NLLs are means over that value's tokens.
A value in a record's prompt (LUME's biographies hold the birth date, phone and e-mail there) is scored too: the
record is re-cut before its first value (:func:`~obliviate.data.pii.values_in_answers`), on both sides of the pair.
Each value gets its own hinge: pooled over a row, a long value that is still memorised (an address) hides behind
short ones already past their fakes (an SSN), and the row's hinge closes with the address untouched. Rows without
field codes fall back to one hinge per row over all their value tokens. The hinge is zero once the true value is
at least ``m`` nats less likely than its fake, so the forget term stops pushing where a model that never saw the
person would be: exposure (Carlini et al. 2019, arXiv:1802.08232) at the chance level, not below it. Gradient
difference (Maini et al. 2024, arXiv:2401.06121) pushes without such a floor; this is the margin form of it on the
PII values, against their own fakes.

The values are not all a record holds about its person: the words around them (the record's own phrasing, the
name) stay memorised when only the values are pushed. With ``stranger`` (1 by default) the fake copy is also about
a stranger, a name nobody has whose parts are as familiar as the person's own would be without them
(:class:`~obliviate.train.relabel.RecombinedNames`), and each row gets one more hinge, on the mean NLL of its
answer's other words (:data:`~obliviate.data.records.TEMPLATE_CODE`) against the same words after the stranger's
name: no likelier than for someone the model never saw, and no further. The stranger's e-mail is built from the
stranger's name, and its fake is never pulled (``name_pull``): a fake made likelier there teaches the model to spell
e-mails from the name in the prompt.

With ``fixed`` (1 by default) every fake side is read under the starting model (the frozen reference, run on the
paired copies): under the model being trained the push on true values spread to the fakes, which receded, and the
values followed them far past where a stranger's would be. The reference carries no gradient, so ``fake_pull`` and
``name_pull`` act only at ``fixed = 0``. ``early_end`` keeps the end token from taking the
probability the push frees, and ``anchor`` descends on the copies' fake values, so that people the model never saw
keep values of the right shape (``docs/METHODS.md``, *A fixed reference, ending early, strangers' values*).
"""

from __future__ import annotations

from dataclasses import replace

import torch

from obliviate.data.records import NAME_BUILT_FIELDS, PII_FIELDS, TEMPLATE_CODE
from obliviate.errors import ConfigError
from obliviate.losses.common import (
    IGNORE_INDEX,
    LossInputs,
    LossOutput,
    LossParams,
    Needs,
    Weight,
    answer_nll,
    token_logprobs,
)

NEEDS = Needs(retain=True, paired=True, reference_on=("paired",))


def needs(params: LossParams) -> Needs:
    """:data:`NEEDS`, without the reference when ``fixed`` is 0: no frozen copy is built for a hinge that reads
    the trained model's fakes."""
    return NEEDS if params.fixed else replace(NEEDS, reference_on=())


WEIGHTS = {
    "delta": Weight(0.0, "hinge margin m in nats", ge=0, le=1000),
    "alpha": Weight(4.0, "weight of the retain term", ge=0, retain=True),
    "fake_pull": Weight(
        0.25,
        "share of the hinge's gradient that reaches the fake's NLL (0: a fixed reference; read only at fixed = 0)",
        ge=0,
        le=1,
    ),
    "pull": Weight(
        0.0, "weight of the pull back on a true value less likely than its fake (0: none; the hinge's mirror)", ge=0
    ),
    "token_cap": Weight(
        0.0,
        "clip each true-value token's NLL at this multiple of its fake's mean NLL, before the hinge's mean (0: none)",
        ge=0,
        le=100,
    ),
    "profile": Weight(
        1.0,
        "weight of the per-token term that matches each true value's sorted token NLLs to its fake's, pushing the "
        "tokens below their quantile by unlikelihood (0: none)",
        ge=0,
    ),
    "profile_focus": Weight(
        0.0,
        "1: the per-token term's mean runs over the tokens still short of their quantile, not all of the value's "
        "(0: all)",
        ge=0,
        le=1,
        switch=True,
    ),
    "stranger": Weight(
        1.0,
        "weight of the hinge on each row's other answer words, against the same words after a stranger's name "
        "(0: none, and the fakes keep the person's name)",
        ge=0,
    ),
    "name_pull": Weight(
        0.0,
        "share of the hinge's gradient that reaches the fake of a value built from the name (e-mails; 0: a fixed "
        "reference)",
        ge=0,
        le=1,
    ),
    "whole": Weight(
        2.0,
        "weight of the hinge on the weakest token of each true value's first occurrence in a row while teacher-forced "
        "greedy decoding writes it whole and not its fake (0: none)",
        ge=0,
    ),
    "early_end": Weight(
        1.0,
        "weight of the unlikelihood of the answer's end token at every forget answer position the answer goes on "
        "from (0: none)",
        ge=0,
    ),
    "fixed": Weight(
        1.0,
        "1: each true value is compared with its fake under the starting model (the frozen reference), not under "
        "the model being trained (0)",
        ge=0,
        le=1,
        switch=True,
    ),
    "anchor": Weight(
        1.0,
        "weight of the NLL of the stranger copies' fake values (0: none)",
        ge=0,
    ),
    "anchor_floor": Weight(
        0.0,
        "1: with fixed, the anchor descends on a copy's fake values only while the trained model finds them less "
        "likely than the starting model did, per field (a hinge: keep strangers' values, do not teach them; 0: their "
        "plain NLL)",
        ge=0,
        le=1,
        switch=True,
    ),
    "calibrate": Weight(
        0.0,
        "1: each field's hinge (and the per-token term) aims at the never-seen people's gap NLL(true) - NLL(fake) "
        "under the starting model, at most 0, instead of the fakes' own level: a true value pushed as far as a "
        "stranger's sits from its fakes (needs a holdout set and the stop rule; 0: the margin delta alone)",
        ge=0,
        le=1,
        switch=True,
    ),
    "word_runs": Weight(
        0.0,
        "1: the words' hinge per run of words between values, weighted by the run's tokens, against the same run of "
        "the stranger copy (0: one hinge over all of a row's words)",
        ge=0,
        le=1,
        switch=True,
    ),
    "word_likely": Weight(
        0.0,
        "share of the words' push that reaches each word token by the unlikelihood -log(1 - p) (a gradient of p on "
        "the token's logit: the memorised words) instead of the NLL (1 - p: the words the model never learnt); the "
        "hinge's value is unchanged (0: the NLL alone)",
        ge=0,
        le=1,
    ),
    "length_weight": Weight(
        0.0,
        "exponent w of each pair's weight (its true value's tokens / the batch's mean)^w (0: every pair alike)",
        ge=0,
        le=1,
    ),
}


def _token_nll(forward) -> tuple[torch.Tensor, torch.Tensor]:
    """``token_logprobs`` of ``forward`` as ``(nll, mask)``, computed once per forward and kept on it: the value
    hinges, the words' hinge and the profile term all read them, and each log-softmax over the vocabulary would
    otherwise keep its own ``[batch, seq, vocab]`` output for the backward pass."""
    memo = vars(forward)
    if "_token_nll" not in memo:
        logp, mask = token_logprobs(forward.logits, forward.labels)
        memo["_token_nll"] = (-logp, mask)
    return memo["_token_nll"]


def _token_fields(forward, template: bool = False) -> tuple[torch.Tensor, torch.Tensor]:
    """``[batch, seq - 1]`` NLL of each next token and ``[batch, seq - 1, fields]`` which PII field (``Forward.spans``
    codes) it belongs to; where the batch carries no codes, one field: the scored tokens. ``template``: one field,
    the answer's tokens outside every value (:data:`~obliviate.data.records.TEMPLATE_CODE`; none without codes)."""
    nll, mask = _token_nll(forward)
    if forward.spans is None:
        return nll, (mask * 0 if template else mask)[..., None]
    codes = forward.spans[:, 1:] * mask.long()
    coded = torch.nn.functional.one_hot(codes, num_classes=TEMPLATE_CODE + 1).to(nll.dtype)
    return nll, coded[..., TEMPLATE_CODE:] if template else coded[..., 1:TEMPLATE_CODE]


def per_field_nll(
    forward, cap: torch.Tensor | None = None, template: bool = False, likely: float = 0.0
) -> tuple[torch.Tensor, torch.Tensor]:
    """``[batch, fields]`` mean NLL over each row's tokens of each PII field (``Forward.spans`` codes), and the
    number of those tokens; one field, each row's scored tokens, where the batch carries no codes.

    ``cap`` (``[batch, fields]``) clips each token's NLL at its pair's cap before the mean: a token past it counts
    as the cap and gets no gradient, so that the mean can only rise further through the tokens below it.
    ``template``: ``[batch, 1]``, over each row's tokens outside its values instead; ``likely`` (with ``template``):
    that share of each token's NLL's gradient is its unlikelihood's instead (:func:`likely_words`)."""
    nll, fields = _token_fields(forward, template)
    if likely and template:
        nll = likely_words(forward, nll, fields[..., 0] > 0, likely)
    if cap is not None:
        nll = torch.minimum(nll, torch.einsum("btf,bf->bt", fields, cap))
    count = fields.sum(1)
    return torch.einsum("bt,btf->bf", nll, fields) / count.clamp_min(1.0), count


def per_run_nll(forward, likely: float = 0.0) -> tuple[torch.Tensor, torch.Tensor]:
    """``[batch, runs]`` mean NLL of each run of a row's words (the maximal stretches of consecutive template tokens:
    the words before, between and after its values), and ``[batch, runs]`` each run's tokens; run ``r`` is column
    ``r``, the same run in a stranger copy, whose values stand where the person's do. ``runs`` is the sequence's
    length, an upper bound that needs no read on the host. ``likely``: that share of each token's NLL's gradient is
    its unlikelihood's instead (:func:`likely_words`)."""
    nll, fields = _token_fields(forward, template=True)
    if likely:
        nll = likely_words(forward, nll, fields[..., 0] > 0, likely)
    words = fields[..., 0] > 0
    starts = words & ~torch.nn.functional.pad(words, (1, 0))[:, :-1]
    codes = starts.long().cumsum(-1) * words  # 1, 2, … per run, 0 outside the words
    runs = nll.new_zeros(nll.shape[0], nll.shape[1] + 1)
    sums = runs.scatter_add(1, codes, nll * words)[:, 1:]
    count = runs.scatter_add(1, codes, words.to(nll.dtype))[:, 1:]
    return sums / count.clamp_min(1.0), count


def likely_words(forward, nll: torch.Tensor, words: torch.Tensor, weight: float = 1.0) -> torch.Tensor:
    """``nll`` (``[batch, seq - 1]``) with, at the ``words`` positions, ``weight`` of the gradient of minus the
    unlikelihood ``−log(1 − p)`` of each next token in place of that share of its NLL's (both rise as ``p`` falls);
    the values are the NLL's.

    A mean NLL pushed down by gradient sends the push to the tokens the model finds least likely: the NLL's gradient
    on a token's logit is ``1 − p``, near 0 for a memorised word and near 1 for a word the model never learnt. The
    words' hinge is a mean over a row's words, and in a biography re-cut before its first value those words include
    the prompt's, which the model never trained on: on the British set the hinge pushed them from 10.9 to 13.3 nats
    (the holdout's 11.2) while the answer's memorised words stayed at 0.06 nats, and the membership attack, which
    scores the whole text, read the forget rows as far less likely than a stranger's (``docs/METHODS.md``, *Pushing
    the memorised words*). The unlikelihood's gradient on the token's logit is ``p``: the push lands on the words the
    model is sure of. The unlikelihoods are computed once per forward and kept on it (the row's and the runs'
    hinges both read them, with the same ``words``: the forward's template tokens)."""
    memo = vars(forward)
    if "_likely_words" not in memo:
        z = forward.logits[:, :-1][words].float()
        unlikely = unlikelihood(z, forward.labels[:, 1:][words]).to(nll.dtype)
        # raising the NLL lowers p, and so does lowering the unlikelihood: the surrogate carries minus its gradient
        memo["_likely_words"] = torch.zeros_like(nll).index_put((words,), unlikely.detach() - unlikely)
    swapped = nll - (nll - nll.detach()) * words + memo["_likely_words"]  # the words' gradient: the unlikelihood's
    return swapped if weight == 1.0 else weight * swapped + (1.0 - weight) * nll


def _widen(columns: torch.Tensor, width: int) -> torch.Tensor:
    """``columns`` (``[batch, n]``) padded with zeros on the right to ``width`` columns."""
    return torch.nn.functional.pad(columns, (0, width - columns.shape[1]))


def unlikelihood(logits: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    """``−log(1 − p(target))`` at each position of ``logits`` (``[..., vocab]``, ``target`` ``[...]``), from the
    other tokens' logits: exact, with its gradient, where ``p`` rounds to 1."""
    rest = logits.scatter(-1, target.unsqueeze(-1), float("-inf")).logsumexp(-1)
    return logits.logsumexp(-1) - rest


def profile_gap(
    forget, paired, rows: int, focus: bool = False, shift: torch.Tensor | None = None
) -> tuple[torch.Tensor, torch.Tensor]:
    """``[rows, fields]``: for each (row, field) pair, the mean over its true value's tokens of the unlikelihood
    ``−log(1 − p)`` of each token whose NLL is below the NLL its rank asks for, weighted by the shortfall (at most
    one nat); and whether the pair has both sides.

    The value's token NLLs, sorted, are matched to the fake's sorted token NLLs (all copies pooled, detached) at the
    same quantiles: a memorised address is near-certain at every token, a fresh one only where anyone can predict
    it (commas, the state after a city), so the ranks above those ask for the fake's surprise. The mean NLL the
    hinge reads can be met by one token made very unlikely while the rest stay certain (the street after its
    number, the place after its street): this term asks each rank for its own share. Unlikelihood, not NLL, pushes
    the chosen tokens: its gradient on a near-certain token's logit is ``p``, where the NLL's is ``1 − p``, near 0.
    Each token's push is weighted by how far it is below its quantile, up to one nat: a comma 0.01 nats more
    certain than the fake's gets a hundredth of a push, and none once it is level.

    ``shift``: ``[fields]`` nats added to each field's quantiles (``calibrate``: the never-seen gap, at most 0).

    ``focus``: the mean over the tokens still short of their quantile instead of all the value's tokens, so that a
    token's push does not shrink with the tokens of its value already level (an e-mail built from the name holds
    one token a stranger cannot write, its first name, and six anyone can copy).
    """
    nll, fields = _token_fields(forget)
    nll = nll.detach()  # it only ranks the tokens
    batch, length, n_fields = fields.shape
    values = fields.any(-1)
    unlikely = torch.zeros_like(nll)
    if values.any():  # −log(1 − p) from the other tokens' logits: exact, and finite where p rounds to 1
        z = forget.logits[:, :-1][values].float()
        unlikely = unlikely.index_put((values,), unlikelihood(z, forget.labels[:, 1:][values]))
    huge = torch.finfo(nll.dtype).max
    true_sorted, order = torch.where(fields.bool(), nll[..., None], huge).transpose(1, 2).sort(-1)
    fake_nll, fake_fields = _token_fields(paired)
    fake_nll = torch.where(fake_fields.bool(), fake_nll.detach()[..., None], huge)
    fake_sorted = fake_nll.view(-1, rows, fake_nll.shape[1], n_fields).permute(1, 3, 0, 2).flatten(2).sort(-1)[0]
    tokens = fields.sum(1)  # [rows, fields]
    fake_tokens = fake_fields.view(-1, rows, fake_fields.shape[1], n_fields).sum((0, 2))
    rank = torch.arange(length, device=nll.device, dtype=nll.dtype)
    quantile = ((rank + 0.5) * fake_tokens[..., None] / tokens.clamp_min(1)[..., None]).floor().long()
    quantile = torch.minimum(quantile, (fake_tokens - 1).clamp_min(0).long()[..., None])
    wanted = fake_sorted.gather(-1, quantile)
    if shift is not None:  # ``[fields]`` nats added to every quantile of the field (the calibrated aim)
        wanted = wanted + shift[None, :, None]
    valid = (rank < tokens[..., None]) & (fake_tokens[..., None] > 0)
    short = torch.where(valid, wanted - true_sorted, 0.0).clamp(0.0, 1.0)  # a full push from a nat short
    pushed = unlikely[:, None, :].expand(batch, n_fields, length).gather(-1, order) * short
    both = (tokens > 0) & (fake_tokens > 0)
    over = (short > 0).sum(-1) if focus else tokens
    return pushed.sum(-1) / over.clamp_min(1), both


WHOLE_MARGIN = 1.0
"""Nats by which the ``whole`` term wants a value's weakest token behind the model's first choice: the prompts the
leak probes use (a question, the record cut before the value, a paraphrase) are not the training row's."""


def first_choice_margin(forward) -> tuple[torch.Tensor, torch.Tensor]:
    """``[batch, fields]``: how nearly greedy decoding writes each (row, field) value whole, and ``[batch, fields]``
    whether the row holds the value.

    The figure is the least, over the tokens of the value's first occurrence in the row, of the true token's logit
    over the best other token's (teacher-forced): positive exactly when greedy decoding from the text before it
    writes all of it, every token the model's first choice. A later occurrence (a biography writes its e-mail twice,
    as a link's text and its target) is read after the true first one, which it may copy, as anyone could; a greedy
    continuation that missed the first would copy its own miss. A model that never saw the person writes a value
    whole only where anyone could (a value built from what the prompt holds).
    """
    _, fields = _token_fields(forward)
    top = torch.finfo(torch.float32).max
    logits, labels = forward.logits[:, :-1], forward.labels[:, 1:].clamp_min(0)
    best = logits.topk(2, dim=-1)  # no boolean indexing, no read on the host: the loop syncs once per step
    other = torch.where(best.indices[..., 0] == labels, best.values[..., 1], best.values[..., 0])
    margin = (logits.gather(-1, labels[..., None]).squeeze(-1) - other).float()  # [batch, length]
    coded = fields.bool()
    values = coded.any(-1)
    code = (fields.argmax(-1) + 1) * values  # the field of each value token, 0 elsewhere
    starts = values & (code != torch.nn.functional.pad(code, (1, 0))[:, :-1])
    occurrence = starts.long().cumsum(-1)[..., None]  # [batch, length, 1]: each row's occurrences, from 1
    first = torch.where(coded, occurrence, fields.shape[1] + 1).amin(1, keepdim=True)  # [batch, 1, fields]
    least = torch.where(coded & (occurrence == first), margin[..., None], top).amin(1)
    has = coded.any(1)
    return torch.where(has, least, -top), has


def early_end(forward) -> tuple[torch.Tensor, torch.Tensor]:
    """``[batch]``: each row's sum, over its answer positions before its last token, of the unlikelihood
    ``−log(1 − p(end))`` of that last token (its eos); and ``[batch]`` whether the row has such positions. A sum,
    not a mean: one position where the answer would end is one too many, however long the row.

    A model that never saw a person writes some other value where the person's was, and goes on with the record; it
    does not end the answer there. Pushing a memorised value's tokens down moves their probability to every other
    token, the end token among them, and the end token, which closes every answer, is a likely one: greedy decoding
    then stops inside the value (an e-mail cut after the first name, a completion with no words at all), for the
    forget people and, by generalisation, for people the model never saw. That is forgetting by silence, and
    ROUGE-L counts it below a stranger's (``docs/METHODS.md``, *Ending early*).

    The end token is each row's last real token (``input_ids`` at its attention mask's last position): eos, or, for
    a row cut at the length limit, an ordinary word, which is then kept from coming too early as well (a push with
    nothing to do while the row is memorised). The eos is read from the tokens, not the labels, because PII-token
    scoring leaves it unscored. The answer's positions are its scored tokens, and with field codes every coded one
    (values and, with ``score_template``, the words between them). Near 0 where the end is unlikely, as in any model
    that memorised the answers, so it acts only once the push has made it likely."""
    logits = forward.logits[:, :-1]
    answer = (forward.spans[:, 1:] > 0) if forward.spans is not None else forward.labels[:, 1:].ne(IGNORE_INDEX)
    ids = forward.input_ids if forward.input_ids is not None else forward.labels.clamp_min(0)
    position = torch.arange(ids.shape[1], device=ids.device)
    last = torch.where(forward.attention_mask.bool(), position, 0).amax(-1, keepdim=True)  # [batch, 1]
    end = ids.gather(-1, last)  # [batch, 1]: each row's last real token
    following = ids[:, 1:]  # the token each position predicts
    inner = answer & following.ne(end) & (position[1:] < last)
    unlikely = unlikelihood(logits.float(), end.expand(-1, logits.shape[1]))
    return (unlikely * inner).sum(-1), inner.any(-1)


def stranger_values(paired, rows: int, floor=None) -> tuple[torch.Tensor, torch.Tensor]:
    """``[rows]``: each forget row's mean, over its stranger copies, of the copy's mean NLL over the tokens of its
    fake values (every scored token where the batch carries no field codes); and ``[rows]`` whether any copy holds
    one.

    The copies are records of people nobody has: a forget record's words around fresh fakes of its values, after a
    stranger's name. Pushing the true values down also moves what the model writes for people it never saw: on LUME
    Task2 the never-seen people's completions lost a tenth of their ROUGE-L under contrast, their phone numbers
    written as runs of digits and letters of no format that derail the rest of the record, and the forget people's
    completions followed them below the oracle's (``docs/METHODS.md``, *Strangers' values*). Descending on the fake
    values keeps a value of the right shape writable for anyone; a fresh draw each epoch means no fake is learnt as
    a fact. The words around them are left to the words' hinge: descending on them too (the first version) kept the
    forget person's own phrasing likely, and on the demo the values' exposure stalled above its band.

    ``floor`` (``anchor_floor``: the copies under the frozen reference): per (copy, field), only the excess of the
    fake values' NLL over the starting model's, so that strangers' values are kept, not taught (``docs/METHODS.md``,
    *The British set's membership overshoot, traced*)."""
    if floor is not None:  # as likely as the starting model found them, and no likelier: keep, do not teach
        field_nll, field_tokens = per_field_nll(paired)
        start_nll, _ = per_field_nll(floor)
        count = field_tokens.sum(-1)
        per_copy = (torch.relu(field_nll - start_nll.detach()) * field_tokens).sum(-1) / count.clamp_min(1.0)
    else:
        nll, fields = _token_fields(paired)
        tokens = fields.sum(-1)  # [copies * rows, length]: 1 on a value token
        count = tokens.sum(-1)
        per_copy = (nll * tokens).sum(-1) / count.clamp_min(1.0)
    held = (count > 0).to(per_copy.dtype).view(-1, rows)
    total = (per_copy.view(-1, rows) * held).sum(0) / held.sum(0).clamp_min(1.0)
    return total, held.sum(0) > 0


def mean_over_copies(fake_nll: torch.Tensor, scored: torch.Tensor, rows: int) -> tuple[torch.Tensor, torch.Tensor]:
    """``[copies * rows, fields]`` NLLs of the paired batch (copy after copy) as ``[rows, fields]``: each pair's mean
    over the copies that hold it, and whether any does."""
    nll = fake_nll.view(-1, rows, fake_nll.shape[-1])
    held = scored.view(-1, rows, scored.shape[-1])
    weight = held.to(nll.dtype)
    return (nll * weight).sum(0) / weight.sum(0).clamp_min(1.0), held.any(0)


def _with_gradient_share(value: torch.Tensor, share: float) -> torch.Tensor:
    """``value`` unchanged, with ``share`` of its gradient (``value`` itself at 1)."""
    return value if share == 1.0 else share * value + (1 - share) * value.detach()


def _name_built(fake_nll: torch.Tensor) -> torch.Tensor:
    """``[fields]``: the columns of :data:`~obliviate.data.records.NAME_BUILT_FIELDS` in ``per_field_nll``'s
    output (field code ``i + 1`` is column ``i``)."""
    columns = torch.zeros(fake_nll.shape[-1], dtype=torch.bool, device=fake_nll.device)
    for field in NAME_BUILT_FIELDS:
        columns[PII_FIELDS.index(field)] = True
    return columns


def loss(inputs: LossInputs, params: LossParams) -> LossOutput:
    """The hinge on ``NLL(fake) - NLL(true) + params.delta`` (the margin ``m``) per (row, field), plus
    ``params.alpha·NLL(R)``. ``params.fake_pull`` scales the gradient that reaches the fake's NLL, not its value:
    at 1 the hinge closes as much by making the fake likelier as by making the true value less likely, and a fake's
    tokens (unlikely, so with large gradients) move faster than a memorised value's (likely, so with small ones).
    ``params.name_pull`` (0 by default) takes its place for the values the data builds from the name (e-mails): their
    fakes are a fixed reference.

    ``params.pull`` (0 by default) adds the hinge's mirror, ``pull·relu(NLL(true) − NLL(fake) − delta)`` with the
    fake detached: a value pushed past its fake is made likelier again, up to the fake. ``params.length_weight``
    (0 by default) weighs each pair's push (not its pull) by its true value's tokens over the batch's mean, to that
    power. ``params.whole`` (2 by default) adds ``whole·relu(g + 1)`` per (row, field), ``g`` the least first-choice
    margin of the value's first occurrence (:func:`first_choice_margin`), where greedy decoding writes that value
    whole and not its fake. All three are measured in ``docs/METHODS.md``.

    Logs ``forget_nll`` (true values), ``fake_nll``, ``gap_hinge`` (the push) and, with a pull, ``gap_pull``; with
    ``whole``, ``whole``.
    """
    forget, trained = inputs.forget, inputs.paired
    if (forget.spans is None) != (trained.spans is None):  # one side without field codes: compare rows, not fields
        forget, trained = replace(forget, spans=None), replace(trained, spans=None)
    # the fakes the true values are held against: under the starting model (fixed), or the model being trained
    paired = trained
    if params.fixed:
        if inputs.paired_ref is None:
            raise ConfigError("contrast with fixed = 1 needs the paired copies under the frozen reference")
        paired = replace(inputs.paired_ref, spans=trained.spans)
    fake_nll, fake_tokens = per_field_nll(paired)
    rows = len(forget.logits)
    fake_nll, fake_scored = mean_over_copies(fake_nll, fake_tokens > 0, rows)
    cap = params.token_cap * fake_nll.detach() if params.token_cap else None
    true_nll, tokens = per_field_nll(forget, cap)
    scored = tokens > 0
    both = (scored & fake_scored).to(true_nll.dtype)
    pulled = _with_gradient_share(fake_nll, params.fake_pull)  # same value, less of the gradient on the fake side
    if forget.spans is not None and params.name_pull != params.fake_pull:
        # a stranger's e-mail made likelier teaches the model to spell e-mails from the name in the prompt, and a
        # forget person's name is in theirs: that pull would teach again the values the hinge pushes
        pulled = torch.where(_name_built(fake_nll), _with_gradient_share(fake_nll, params.name_pull), pulled)
    fake_nll = pulled
    aim = None  # calibrate: per field, the never-seen people's gap to their fakes (at most 0), added to the margin
    if params.calibrate and inputs.field_margins is not None and forget.spans is not None:
        aim = inputs.field_margins.to(fake_nll.dtype)[: fake_nll.shape[-1]]
    margin = params.delta if aim is None else params.delta + aim[None, :]
    hinge = torch.relu(fake_nll - true_nll + margin) * both
    pairs = inputs.share("forget", "pairs")  # every forget figure is a mean over the (row, field) pairs in both
    count = both.sum().clamp_min(1.0)
    if params.length_weight:  # long values (addresses) get their tokens' share of the push, not one pair's
        length = tokens.to(hinge.dtype) * both
        hinge = hinge * (length / (length.sum() / count).clamp_min(1.0)) ** params.length_weight
    push = hinge.sum() / count * pairs
    pull = torch.zeros_like(push)
    if params.pull:  # overshoot fails too: a value pushed below its fake is pulled back up to it, no further
        pull = params.pull * (torch.relu(true_nll - fake_nll.detach() - margin) * both).sum() / count * pairs
    forget_term = push + pull
    if params.profile and forget.spans is not None:  # each token its share, not the mean alone
        profile, profiled = profile_gap(forget, paired, rows, focus=bool(params.profile_focus), shift=aim)
        profile_term = (profile * profiled).sum() / count * pairs
        forget_term = forget_term + params.profile * profile_term
    if params.whole and forget.spans is not None:  # written whole, where the fake is not: push its weakest token
        least, _ = first_choice_margin(forget)
        with torch.no_grad():  # the fake only opens or closes the gate (its margin is -max where it holds no value)
            fake_least, _ = first_choice_margin(paired)
        fake_whole = (fake_least > 0).view(-1, rows, least.shape[-1]).any(0)
        gate = both.bool() & ~fake_whole  # both sides hold the value, and no copy's fake is written whole
        whole_term = torch.where(gate, torch.relu(least + WHOLE_MARGIN), 0.0).sum() / count * pairs
        forget_term = forget_term + params.whole * whole_term
    if params.early_end:  # forgetting by ending the answer early is not forgetting (docs/METHODS.md)
        early, ends = early_end(forget)
        early_term = (early * ends).sum() / count * pairs
        forget_term = forget_term + params.early_end * early_term
    if params.anchor:  # a stranger's values, of the right shape: what unlearning must leave writable
        floor = paired if params.fixed and params.anchor_floor else None  # the reference, with trained's spans
        anchor_nll, anchor_rows = stranger_values(trained, rows, floor)
        anchor_term = (anchor_nll * anchor_rows).sum() / count * pairs
        forget_term = forget_term + params.anchor * anchor_term
    if params.stranger:  # the row's other words, no likelier than after a stranger's name
        words, word_tokens = per_field_nll(forget, template=True, likely=params.word_likely)
        stranger_words, stranger_tokens = per_field_nll(paired, template=True)
        stranger_words, stranger_held = mean_over_copies(stranger_words, stranger_tokens > 0, rows)
        held = ((word_tokens > 0) & stranger_held).to(words.dtype)
        stranger_words = _with_gradient_share(stranger_words, params.fake_pull)
        row_hinge = torch.relu(stranger_words - words + params.delta)[:, 0]
        if params.word_runs and forget.spans is not None:  # a run at a stranger's level hides no other run's gap
            run_nll, run_tokens = per_run_nll(forget, likely=params.word_likely)
            stranger_runs, stranger_run_tokens = per_run_nll(paired)
            width = max(run_nll.shape[1], stranger_runs.shape[1])  # the two batches' lengths differ
            run_nll, run_tokens = (_widen(x, width) for x in (run_nll, run_tokens))
            stranger_runs, stranger_run_tokens = (_widen(x, width) for x in (stranger_runs, stranger_run_tokens))
            stranger_runs, run_held = mean_over_copies(stranger_runs, stranger_run_tokens > 0, rows)
            stranger_runs = _with_gradient_share(stranger_runs, params.fake_pull)
            # the runs line up only where every copy has as many runs as the row; elsewhere the one hinge
            n_runs = (run_tokens > 0).sum(-1)
            aligned = ((stranger_run_tokens > 0).sum(-1).view(-1, rows) == n_runs).all(0)
            weight = run_tokens * (run_held & (run_tokens > 0))
            per_run = torch.relu(stranger_runs - run_nll + params.delta)
            run_hinge = (weight * per_run).sum(-1) / weight.sum(-1).clamp_min(1.0)
            row_hinge = torch.where(aligned, run_hinge, row_hinge)
        words_hinge = (row_hinge * held[:, 0]).sum() / count * pairs
        forget_term = forget_term + params.stranger * words_hinge
    retain_nll = answer_nll(inputs.retain, "contrast", "retain") * inputs.share("retain", "tokens")
    total = forget_term + params.alpha * retain_nll
    metrics = {
        "forget_nll": ((true_nll * both).sum() / count * pairs).detach(),
        "fake_nll": ((fake_nll * both).sum() / count * pairs).detach(),
        "gap_hinge": push.detach(),
        **({"gap_pull": pull.detach()} if params.pull else {}),
        **({"profile": profile_term.detach()} if params.profile and forget.spans is not None else {}),
        **({"words_hinge": words_hinge.detach()} if params.stranger else {}),
        **({"whole": whole_term.detach()} if params.whole and forget.spans is not None else {}),
        **({"early_end": early_term.detach()} if params.early_end else {}),
        **({"anchor": anchor_term.detach()} if params.anchor else {}),
        "retain_nll": retain_nll.detach(),
    }
    return LossOutput(total, metrics)
