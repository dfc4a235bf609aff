"""One optimizer step's work: the forward passes a method needs, accumulation over micro-batches and length pieces,
one gather of the step's metrics, and the optimizer step itself."""

from __future__ import annotations

import contextlib
import math
from pathlib import Path
from typing import TYPE_CHECKING

import torch
from accelerate import Accelerator

from obliviate.config import TrainConfig
from obliviate.data.batching import TokenBatch, collate, field_code, length_pieces, matched_pieces, unit_count
from obliviate.data.records import TEMPLATE_CODE
from obliviate.errors import TrainingError
from obliviate.losses import Method
from obliviate.losses.common import IGNORE_INDEX, Forward, LossInputs, LossParams, answer_exact, sequence_logprob
from obliviate.models.trainable import decoder_layers
from obliviate.train.forward_count import uncounted
from obliviate.train.parallel import PLAIN

if TYPE_CHECKING:
    from obliviate.train.state import Run


class _StopForward(Exception):
    """Raised by the layer hook once a pass that needs only ``h^ℓ`` has it: the layers above and the logits are
    never computed."""


def run_forward(model, batch: TokenBatch, layer: torch.nn.Module | None = None, stop: bool = False) -> Forward:
    """One pass; with ``layer`` (a decoder block) its output is kept as ``Forward.hidden``, ``[batch, seq, hidden]``.

    The block's own output is taken through a hook rather than from ``output_hidden_states``, whose last entry has
    the final norm applied: ``h^ℓ`` must mean the same thing at every depth. With ``stop`` the pass ends at
    ``layer`` and ``Forward.logits`` is None.
    """
    captured: list[torch.Tensor] = []

    def keep(_module, _args, output) -> None:
        captured.append(output[0] if isinstance(output, tuple) else output)
        if stop:
            raise _StopForward

    handle = layer.register_forward_hook(keep) if layer is not None else None
    logits = None
    try:
        logits = model(input_ids=batch.input_ids, attention_mask=batch.attention_mask, use_cache=False).logits
    except _StopForward:
        pass
    finally:
        if handle is not None:
            handle.remove()
    hidden = captured[-1] if captured else None
    return Forward(logits, batch.labels, batch.attention_mask, hidden, batch.spans, batch.input_ids)


def joint_run_forward(
    model, first: TokenBatch, second: TokenBatch, layer: torch.nn.Module | None
) -> tuple[Forward, Forward]:
    """Both batches in one forward pass, each given back at its own width: under ZeRO-3 / FSDP one all-gather of the
    weights instead of two. Right padding to the common width changes nothing for the real tokens (causal attention,
    padded positions masked and unscored)."""
    width = max(first.input_ids.shape[1], second.input_ids.shape[1])

    def widen(tensor: torch.Tensor, value: int) -> torch.Tensor:
        return torch.nn.functional.pad(tensor, (0, width - tensor.shape[1]), value=value)

    joint = TokenBatch(
        torch.cat([widen(first.input_ids, 0), widen(second.input_ids, 0)]),  # any id: masked, unscored
        torch.cat([widen(first.attention_mask, 0), widen(second.attention_mask, 0)]),
        torch.cat([widen(first.labels, IGNORE_INDEX), widen(second.labels, IGNORE_INDEX)]),
    )
    out = run_forward(model, joint, layer)
    rows = first.input_ids.shape[0]
    parts = []
    for batch, picked in ((first, slice(0, rows)), (second, slice(rows, None))):
        length = batch.input_ids.shape[1]
        logits = out.logits[picked, :length] if out.logits is not None else None
        hidden = out.hidden[picked, :length] if out.hidden is not None else None
        parts.append(Forward(logits, batch.labels, batch.attention_mask, hidden, batch.spans, batch.input_ids))
    return parts[0], parts[1]


@contextlib.contextmanager
def reference_model(run: Run):
    """The frozen reference: a copy, or (under LoRA) the same model with its adapters switched off."""
    if run.reference is not None:
        yield run.reference
        return
    # the switch is on the inner PEFT model, the forward goes through the wrapper (DDP / FSDP / DeepSpeed)
    with run.accelerator.unwrap_model(run.model).disable_adapter():
        yield run.model


def decoder_block(accelerator: Accelerator, model, layer: int | None) -> torch.nn.Module | None:
    return None if layer is None else decoder_layers(accelerator.unwrap_model(model))[layer]


def loss_inputs(
    run: Run,
    method: Method,
    forget: TokenBatch,
    retain: TokenBatch | None,
    layer: int | None,
    paired: TokenBatch | None = None,
    rows: list[int] | None = None,
) -> LossInputs:
    """What ``method`` reads for one micro-batch; ``rows`` are the forget rows of ``forget`` (for a cached
    reference)."""
    needs = method.needs_for(run.params)
    block = decoder_block(run.accelerator, run.model, layer)
    if retain is not None and run.joint_forward:
        forget_out, retain_out = joint_run_forward(run.model, forget, retain, block)
        inputs = LossInputs(forget=forget_out, retain=retain_out, control=run.control)
    else:
        inputs = LossInputs(forget=run_forward(run.model, forget, block), control=run.control)
        if retain is not None:
            inputs.retain = run_forward(run.model, retain, block)
    if paired is not None:
        inputs.paired = run_forward(run.model, paired, block)
        inputs.field_margins = run.field_margins
    if needs.reference_logprob and run.forget_ref_logprob is not None:
        index = torch.as_tensor(rows, device=run.forget_ref_logprob.device)
        inputs.forget_ref_logprob = run.forget_ref_logprob.index_select(0, index)
    elif needs.reference:
        # hidden-states methods read only h^ℓ of the reference; a pass cut short is safe without backward and
        # without sharding (ZeRO-3 and FSDP expect every forward to visit every unit)
        stop = needs.hidden and run.accelerator.distributed_type in PLAIN
        with torch.no_grad(), reference_model(run) as reference:
            reference_block = decoder_block(run.accelerator, reference, layer)
            if "forget" in needs.reference_on:
                inputs.forget_ref = run_forward(reference, forget, reference_block, stop)
            if "retain" in needs.reference_on and retain is not None:
                inputs.retain_ref = run_forward(reference, retain, reference_block, stop)
            if "paired" in needs.reference_on and paired is not None:
                inputs.paired_ref = run_forward(reference, paired, reference_block, stop)
    return inputs


def reference_logprobs(run: Run) -> torch.Tensor:
    """``log π_ref(y|x)`` of every forget row under the model as it is now (the starting model), ``[rows]`` on the
    device."""
    return row_logprobs(run, run.forget)[0]


@torch.no_grad()
def row_logprobs(run: Run, records: list) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Per record, under the model as it is now: the summed log-probability of its scored tokens, their count, and
    whether every one is the most likely next token (teacher-forced exact match); ``[rows]`` each on the device,
    in micro-batches of rows in order. Every process computes all rows (the same forwards on every rank, as
    sharded weights need); eval mode and autocast, as a frozen copy would run."""
    model, acc, size = run.model, run.accelerator, run.config.micro_batch_size
    was_training = model.training
    model.eval()
    values, counts, exact = [], [], []
    for start in range(0, len(records), size):
        batch = collate(records[start : start + size], run.tokenizer.pad_token_id).to(acc.device)
        with acc.autocast():
            out = run_forward(model, batch)
        logp, count = sequence_logprob(out.logits, out.labels)
        values.append(logp.float())
        counts.append(count.float())
        exact.append(answer_exact(out.logits, out.labels))
    model.train(was_training)
    return torch.cat(values), torch.cat(counts), torch.cat(exact)


@torch.no_grad()
def repaired(run: Run, micro: list[list[int]], share: float) -> tuple[bool, float, int]:
    """Whether the retain rows of one retain step (this process's micro-batches) already reproduce at least
    ``share`` of the rows among them that the starting model reproduced exactly (``run.retain_start``), counted over
    every process, so that all decide alike; also that share (1 where none was exact at the start) and the tokens
    the check read on all processes. One forward per micro-batch, in the mode training runs in, no update."""
    acc, pad_id = run.accelerator, run.tokenizer.pad_token_id
    kept, wanted, tokens = 0, 0, 0
    for rows in micro:
        batch = collate([run.retain[i] for i in rows], pad_id)
        tokens += batch.num_tokens
        batch = batch.to(acc.device)
        # its tokens go to tokens_seen, with the steps', not to forward_tokens
        with acc.autocast(), uncounted(getattr(run, "forward_counter", None)):
            out = run_forward(run.model, batch)
        start = run.retain_start[torch.as_tensor(rows, device=run.retain_start.device)]
        now = answer_exact(out.logits, out.labels).to(start.device)
        kept, wanted = kept + int((start & now).sum()), wanted + int(start.sum())
    totals = acc.gather(torch.tensor([[kept, wanted, tokens]], dtype=torch.float64, device=acc.device)).sum(0).tolist()
    fraction = totals[0] / totals[1] if totals[1] else 1.0
    return fraction >= share, fraction, int(totals[2])


def _checksum(indices: list[int]) -> int:
    value = 0
    for index in indices:
        value = (value * 1_000_003 + index + 1) % 2_147_483_647
    return value


def optimizer_step(run: Run, config: TrainConfig, schedule: bool = True) -> None:
    """Clip, step the optimizer and (unless ``schedule`` is False: the range test's fixed rate) the schedule, clear
    the gradients."""
    if config.max_grad_norm > 0:
        run.accelerator.clip_grad_norm_(run.model.parameters(), config.max_grad_norm)
    run.optimizer.step()
    if schedule:
        run.scheduler.step()
    run.optimizer.zero_grad(set_to_none=True)


def retain_step(run: Run, params: LossParams, epoch: int, micro: list[list[int]]):
    """One retain-only step of the interleaved schedule: plain NLL on retain rows (logged as ``retain_nll``)."""
    from obliviate.losses import FINETUNE

    forget, paired = run.forget, run.paired
    run.forget, run.paired = run.retain, []  # accumulate reads its rows from run.forget
    try:
        metrics, tokens, _ = accumulate(run, FINETUNE, params, epoch, micro, [None] * len(micro))
    finally:
        run.forget, run.paired = forget, paired
    return {"retain_nll": metrics["nll"]}, tokens, None


def accumulate(
    run: Run,
    method: Method,
    params: LossParams,
    epoch: int,
    forget_ids: list[list[int]],
    retain_ids: list[list[int] | None],
):
    """Forward and backward over one optimizer step's micro-batches; accelerate syncs gradients on the last one.

    Where the method's loss decomposes (:attr:`~obliviate.losses.Method.means`), a micro-batch of mixed lengths runs
    as length-sorted pieces (:func:`pieces`), each its own forward and backward with little padding; each piece's
    loss weights every mean by the piece's share of its split's units (:func:`piece_shares`), so the pieces' losses,
    gradients and metrics add up to the whole micro-batch's.

    Metrics stay on the device until the step's last forward; then one all-gather and one host copy carry them, the
    token counts (taken on the CPU before the batches move) and the retain-draw checksums. That happens before the
    last backward, because DeepSpeed steps inside it: a non-finite loss on any process stops every process first.

    Returns:
        ``(metrics averaged over micro-batches and processes, tokens this step on all processes, per-process
        retain-draw checksums or None)``.
    """
    acc, config = run.accelerator, run.config
    pad_id = run.tokenizer.pad_token_id
    layer = run.layer if method.needs.hidden else None
    sums: dict[str, torch.Tensor] = {}
    tokens, draw_ids, step = 0, [], None
    for position, (forget_rows, retain_rows) in enumerate(zip(forget_ids, retain_ids)):
        draw_ids.extend(retain_rows or [])
        cut = pieces(run, method, forget_rows, retain_rows)
        forget_cpu = [collate([run.forget[i] for i in f], pad_id) for f, _ in cut]
        retain_cpu = [collate([run.retain[i] for i in r], pad_id) if r else None for _, r in cut]
        # the paired batch holds each fake-value draw's copy of the piece's rows, draw after draw
        paired_cpu = [collate([d[i] for d in run.paired for i in f], pad_id) if run.paired else None for f, _ in cut]
        if run.fields_done:
            for batch in forget_cpu + paired_cpu:
                drop_fields(batch, run.fields_done, run.fields_waived)
        tokens += sum(b.num_tokens for b in forget_cpu + retain_cpu + paired_cpu if b is not None)
        shares = piece_shares(method, forget_cpu, retain_cpu, paired_cpu) if len(cut) > 1 else [{}]
        with acc.accumulate(run.model):
            for index, (rows, _) in enumerate(cut):
                last = index == len(cut) - 1
                retain, paired = retain_cpu[index], paired_cpu[index]
                with contextlib.nullcontext() if last else acc.no_sync(run.model):
                    out = _piece_loss(
                        run, method, params, layer, (forget_cpu[index], retain, paired), rows, shares[index]
                    )
                    for key, value in {"loss": out.loss.detach(), **out.metrics}.items():
                        value = torch.as_tensor(value, dtype=torch.float32, device=acc.device)
                        sums[key] = sums.get(key, 0.0) + value.detach().float() / run.accumulation
                    if last and position == len(forget_ids) - 1:
                        counter = getattr(run, "forward_counter", None)
                        forward = counter.take() if counter is not None else 0  # the reference's and earlier checks'
                        step = _gather_step(acc, sums, (tokens, forward), draw_ids)
                        if not all(math.isfinite(v) for v in step[0].values()):
                            non_finite(run, config, epoch, step[0])
                    acc.backward(out.loss)  # accelerate divides by accumulation
    metrics, (tokens_all, forward_all), checksums = step
    if forward_all:
        run.state["forward_tokens"] = run.state.get("forward_tokens", 0) + forward_all
    return metrics, tokens_all, checksums if draw_ids else None


def drop_fields(batch: TokenBatch | None, fields: frozenset[str], waived: frozenset[str] = frozenset()) -> None:
    """``--field_stop``: the tokens of ``fields``' values no longer carry their field code (``TokenBatch.spans``
    0), so a loss that scores values per field (contrast) leaves them alone, and the units the pieces are weighted
    by are counted without them. A row left with no value at all loses its words' code too
    (:data:`~obliviate.data.records.TEMPLATE_CODE`): the words around values that are all inside their band are
    left alone with them. A value of a ``waived`` field (``--field_stop_words checked``) does not keep its row's
    words coded."""
    if batch is None or batch.spans is None:
        return
    codes = torch.tensor([field_code(name) for name in sorted(fields)], dtype=batch.spans.dtype)
    waived_codes = torch.tensor([field_code(name) for name in sorted(waived)], dtype=batch.spans.dtype)

    def holds_values() -> torch.Tensor:  # per row: any token still coded as a value of a field that is not waived
        coded = (batch.spans > 0) & (batch.spans < TEMPLATE_CODE) & ~torch.isin(batch.spans, waived_codes)
        return coded.any(1)

    had_values = holds_values()
    batch.spans[torch.isin(batch.spans, codes)] = 0
    done = had_values & ~holds_values()
    batch.spans[done[:, None] & (batch.spans == TEMPLATE_CODE)] = 0


def _piece_loss(run: Run, method: Method, params: LossParams, layer, batches, rows: list[int], shares):
    """One piece's forwards and loss under autocast; ``batches`` are its ``(forget, retain, paired)`` CPU batches
    (retain and paired may be None), ``shares`` its weights (:func:`piece_shares`)."""
    device = run.accelerator.device
    forget, retain, paired = (b.to(device) if b is not None else None for b in batches)
    with run.accelerator.autocast():
        inputs = loss_inputs(run, method, forget, retain, layer, paired, rows)
        inputs.shares = shares
        return method.loss(inputs, params)


def pieces(
    run: Run, method: Method, forget_rows: list[int], retain_rows: list[int] | None
) -> list[tuple[list[int], list[int] | None]]:
    """The micro-batch as ``(forget rows, retain rows)`` pieces: one piece (the whole) unless :func:`_splittable`.

    Forget rows alone are cut by :func:`~obliviate.data.batching.length_pieces`; with retain rows both splits are
    cut into the same number of pieces (:func:`~obliviate.data.batching.matched_pieces`), so that every piece runs
    the whole objective. The paired copies follow their forget rows, so a row's length is the longest of them.
    """
    if not _splittable(run.accelerator, method, retain_rows, run.config):
        return [(forget_rows, retain_rows)]

    def length(i: int) -> int:
        return max([len(run.forget[i].ids)] + [len(d[i].ids) for d in run.paired])

    forget_lengths = [length(i) for i in forget_rows]
    if not retain_rows:
        return [([forget_rows[i] for i in piece], retain_rows) for piece in length_pieces(forget_lengths)]
    retain_lengths = [len(run.retain[i].ids) for i in retain_rows]
    return [
        ([forget_rows[i] for i in f], [retain_rows[i] for i in r])
        for f, r in matched_pieces(forget_lengths, retain_lengths)
    ]


def piece_shares(
    method: Method,
    forget: list[TokenBatch],
    retain: list[TokenBatch | None],
    paired: list[TokenBatch | None],
) -> list[dict[tuple[str, str], float]]:
    """Per piece, its share of the micro-batch's units for every ``(split, unit)`` the method's ``means`` declares
    (counted on the CPU batches: no device sync). A split with none of a unit gives every piece a share of 0: each
    piece's mean is 0 there, as the whole batch's is."""
    batches = {"forget": forget, "retain": retain}
    shares: list[dict[tuple[str, str], float]] = [{} for _ in forget]
    for split, units in method.piece_units.items():
        for unit in units:
            counts = [
                unit_count(unit, batch, paired[index]) if batch is not None else 0
                for index, batch in enumerate(batches[split])
            ]
            total = sum(counts)
            for index, count in enumerate(counts):
                shares[index][(split, unit)] = count / total if total else 0.0
    return shares


def _gather_step(acc: Accelerator, sums: dict[str, torch.Tensor], counts, draw_ids: list[int]):
    """``[metrics..., tokens, forward tokens, checksum]`` of every process in one all-gather and one ``.tolist()``;
    ``counts`` is ``(tokens trained on, tokens read without training)``, the latter a device tensor or an int.

    float64 carries the token counts and the checksum (< 2^31) exactly.
    """
    tokens, forward = counts
    extra = torch.tensor([tokens, 0, _checksum(draw_ids)], dtype=torch.float64, device=acc.device)
    extra[1] = torch.as_tensor(forward, dtype=torch.float64, device=acc.device)  # no host sync for a device count
    local = torch.cat([torch.stack(list(sums.values())).double(), extra]) if sums else extra
    rows = acc.gather(local.unsqueeze(0)).tolist()  # [processes, len(sums) + 3]
    metrics = {key: sum(row[i] for row in rows) / len(rows) for i, key in enumerate(sums)}
    totals = (int(sum(row[-3] for row in rows)), int(sum(row[-2] for row in rows)))
    return metrics, totals, [int(row[-1]) for row in rows]


def _splittable(acc: Accelerator, method: Method, retain_rows: list[int] | None, config: TrainConfig) -> bool:
    """Whether a micro-batch may run as length-sorted pieces: a loss that declares how it decomposes over every
    split it gets (``Method.means``), ``--length_pieces`` on, and one process or plain data parallelism (DeepSpeed
    steps inside each backward; FSDP gathers parameters in every forward, and ranks may cut different numbers of
    pieces)."""
    units = method.piece_units
    return (
        config.length_pieces
        and "forget" in units
        and (not retain_rows or "retain" in units)
        and acc.distributed_type in PLAIN
    )


def non_finite(run: Run, config: TrainConfig, epoch: int, metrics: dict[str, float]) -> None:
    run.optimizer.zero_grad(set_to_none=True)
    raise TrainingError(
        f"non-finite loss at epoch {epoch} step {run.state['global_step'] + 1} ({fmt_metrics(metrics)}); "
        f"the last good checkpoint is kept in {Path(config.output_dir) / 'checkpoints'}; lower --lr "
        "or add a stop bound"
    )


def fmt_metrics(metrics: dict[str, float]) -> str:
    return " ".join(f"{k}={v:.4g}" for k, v in metrics.items())
