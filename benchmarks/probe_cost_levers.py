"""Issue 9 probes: levers to cut the tokens of contrast's interleaved run, patched into its loop for one command.

None of them is an option of obliviate. Measured in the seventeenth session and not kept (``docs/METHODS.md``,
*Three cost levers, tried* and *Fewer repairs once fields are inside*); this script is how those figures are
reproduced.

- ``--mask Q``: a saliency mask on the forget steps (after SalUn, Fan et al. 2024, with SSD's forget / retain ratio,
  Foster et al. 2023). At the first forget step, each trained tensor's entries are scored by the summed squared
  gradient of the answer NLL over every forget row, divided by the same over four times as many seeded retain rows;
  every forget step's gradient then keeps the top ``Q`` share of each tensor's entries and zeroes the rest (the
  retain steps are not masked).
- ``--retain_lr_scale S``: every retain step takes ``S`` times the forget step's rate (a constant schedule only).
- ``--focus``: under ``--field_stop``, each epoch's forget batches are drawn only from the rows that still hold a
  value of a field outside its band (the rows ``drop_fields`` would leave with a code), cycled to fill the epoch's
  forget steps, so the steps late in a run push the fields still outside instead of rows with nothing left to push.
- ``--scale_repairs`` (with ``--repair_exact 1``, whose machinery it borrows: cycles of varying length, the stop
  rule asked every k-th cycle): each cycle takes ``ceil(r * outside / fields)`` of its ``r`` retain steps, where
  ``outside`` counts the forget rows' PII fields not inside their band at the last check (``--field_stop``'s
  done fields). With no field done, a cycle takes all ``r``; the check itself reads nothing.
  ``--repair_before_check`` gives the cycle that ends at a stop-rule check all ``r``, so the rule reads (and the run
  stops on) a model the retain steps have repaired.
- ``--pooled``: the stop rule's decision also asks the pooled forget exposure (every deciding field's values) to be
  inside the pooled band (the threshold its plot draws). Where every field is inside and the pooled mean is not, the
  run goes on, and the fields whose mean is above their never-seen mean are pushed again.
- ``--ewc LAMBDA`` (eighteenth session; *Without rehearsal*): a retain step trains on no rows and takes no step; each
  forget step's gradient gets ``LAMBDA * F * (theta - theta_0)``, where ``F`` is the diagonal Fisher of four times as
  many seeded retain rows as the forget set has (summed squared gradients of the answer NLL, over its mean; its
  tokens count as the run's) and ``theta_0`` the parameters at the first forget step. Use it with ``--retain_steps
  1`` and a fixed ``--lr``: the range test's trial steps are not patched.
- ``--project Q`` (nineteenth session; *Without rehearsal*): a retain step trains on no rows and takes no step, as
  with ``--ewc``; instead, each forget step's change to a linear layer's weight is kept only off the retain rows'
  inputs to that layer (after AlphaEdit, Fang et al. 2025): ``W <- W_0 + (W - W_0)(I - U U^T)``, where ``U`` holds
  the top eigenvectors of the layer's uncentred input second moment over four times as many seeded retain rows as
  the forget set has (every real token, one forward pass with gradients off; it and the forget rows' pass below
  count as the run's forward tokens), as many as cover the share ``Q`` of its trace. Any other trained tensor (a
  norm, an embedding) is put back after each forget step. The second moments are measured once, at the first
  forget step; the optimizer (Adam) steps on the unprojected gradient and its step is projected. Use it with
  ``--retain_steps 1`` and a fixed ``--lr``. CPU only, as ``--mask`` and ``--ewc``. It prints, per layer, the
  directions ``U`` holds and the share of the forget rows' PII value tokens' input energy outside them.
- ``--live_reference``: every check measures the never-seen band again, on the holdout people under the model as it
  is at the check (the rule measures it once, under the starting model); the retain bound keeps its start.

The rest of the command line is the command to run, patched: ``unlearn ARGS`` (``obliviate unlearn``) or a script
path and its arguments (``benchmarks/probe_objectives.py …``, ``benchmarks/bench_quality.py … --workers 1``; the
patch lives in this process, so the script must not spawn its runs elsewhere). Then ``benchmarks/probe_fields.py``
counts the rows each run broke.

    python benchmarks/probe_cost_levers.py --mask 0.1 unlearn --model_dir M --forget_dir F --retain_dir R \\
        --output_dir runs/m --method contrast --lr 3.16e-3 --stop_check_steps 0 --max_steps 96 --retain_steps 3
    python benchmarks/probe_cost_levers.py --focus benchmarks/probe_objectives.py --methods contrast --workers 1
"""

from __future__ import annotations

import argparse
import math
import random
import runpy
import sys

MASK_ROWS = 8  # rows per backward when scoring the mask: a middle way between per-row and whole-set gradients


def _seeded(records: list, rows: int) -> list:
    """The first ``rows`` of ``records`` in a fixed shuffle (seed 0): the rows every patch here scores on."""
    order = list(range(len(records)))
    random.Random(0).shuffle(order)
    return [records[i] for i in order[:rows]]


def _importance(run, records: list, rows: int):
    """Summed squared gradients of the answer NLL over ``rows`` seeded rows of ``records``, per trained tensor."""
    import torch

    from obliviate.data.batching import collate
    from obliviate.losses.common import mean_nll
    from obliviate.train.step import run_forward

    model = run.model
    params = [p for p in model.parameters() if p.requires_grad]
    sums = [torch.zeros_like(p) for p in params]
    chosen = _seeded(records, rows)
    for start in range(0, len(chosen), MASK_ROWS):
        batch = collate(chosen[start : start + MASK_ROWS], run.tokenizer.pad_token_id)
        model.zero_grad(set_to_none=True)
        out = run_forward(model, batch)
        mean_nll(out.logits, out.labels).backward()
        for total, p in zip(sums, params):
            if p.grad is not None:
                total += p.grad.float() ** 2
    model.zero_grad(set_to_none=True)
    return params, sums


def _mask(run, share: float) -> list:
    """``(parameter, 0/1 mask)`` per trained tensor: the top ``share`` of its entries by forget / retain importance.
    The gradients already accumulated for the step being taken are put back afterwards."""
    saved = [None if p.grad is None else p.grad.clone() for p in run.model.parameters()]
    params, forget = _importance(run, run.forget, len(run.forget))
    _, retain = _importance(run, run.retain, 4 * len(run.forget))
    masks, kept, total = [], 0, 0
    for p, f, r in zip(params, forget, retain):
        score = f / (r + 1e-30)
        k = max(1, int(share * score.numel()))
        threshold = score.flatten().kthvalue(score.numel() - k + 1).values
        mask = (score >= threshold).to(p.dtype)
        masks.append((p, mask))
        kept, total = kept + int(mask.sum()), total + mask.numel()
    for p, grad in zip(run.model.parameters(), saved):
        p.grad = grad
    print(f"[probe_cost_levers] mask keeps {kept} of {total} trained entries", flush=True)
    return masks


def _active_rows(run) -> list[int]:
    """The forget rows that still carry a field code once ``--field_stop``'s done fields are dropped."""
    from obliviate.data.batching import collate
    from obliviate.train.step import drop_fields

    active = []
    for index, encoded in enumerate(run.forget):
        batch = collate([encoded], run.tokenizer.pad_token_id)
        drop_fields(batch, run.fields_done, run.fields_waived)
        if batch.spans is None or bool((batch.spans > 0).any()):
            active.append(index)
    return active


def _fields(run) -> set[int]:
    """The field codes of the values the forget rows hold."""
    from obliviate.data.records import TEMPLATE_CODE

    return {c for e in run.forget for c in (e.scored or ()) if 0 < c < TEMPLATE_CODE}


def repairs_wanted(retain_steps: int, fields: set[int], done: set[int]) -> int:
    """``--scale_repairs``: a cycle's retain steps, in proportion to the fields still outside their band."""
    return math.ceil(retain_steps * len(fields - done) / max(1, len(fields)))


def _ewc_start(run, state: dict) -> None:
    """``--ewc``: the retain rows' diagonal Fisher (summed squared gradients, as the mask scores them), over the
    mean of all its entries, and the parameters as they are now; the Fisher's tokens count as the run's."""
    saved = [None if p.grad is None else p.grad.clone() for p in run.model.parameters()]
    params, fisher = _importance(run, run.retain, 4 * len(run.forget))
    for p, grad in zip(run.model.parameters(), saved):
        p.grad = grad
    tokens = sum(len(e.ids) for e in _seeded(run.retain, 4 * len(run.forget)))
    run.state["tokens_seen"] += tokens
    mean = sum(float(f.sum()) for f in fisher) / sum(f.numel() for f in fisher)
    state["ewc"] = [(p, f / mean, p.detach().clone()) for p, f in zip(params, fisher)]
    print(f"[probe_cost_levers] ewc: retain Fisher over {tokens} tokens", flush=True)


def _input_moments(model, layers: list, records: list, pad_id: int, values_only: bool = False) -> dict:
    """Each layer's uncentred second moment of its inputs (float64, ``[in, in]``) over ``records``' real tokens, or
    with ``values_only`` over their PII value tokens (``spans`` above 0); one pass with gradients off."""
    import torch

    from obliviate.data.batching import collate
    from obliviate.train.step import run_forward

    moments = {m: torch.zeros(m.in_features, m.in_features, dtype=torch.float64) for m in layers}
    current: dict = {}

    def gather(module, args, _output):
        x = args[0].detach().double()[current["mask"]]  # the chosen tokens' inputs, [tokens, in]
        moments[module] += x.T @ x

    handles = [m.register_forward_hook(gather) for m in layers]
    try:
        with torch.no_grad():
            for start in range(0, len(records), MASK_ROWS):
                batch = collate(records[start : start + MASK_ROWS], pad_id)
                chosen = batch.attention_mask.bool()
                if values_only:
                    chosen = chosen & (batch.spans > 0) if batch.spans is not None else torch.zeros_like(chosen)
                current["mask"] = chosen
                run_forward(model, batch)
    finally:
        for h in handles:
            h.remove()
    return moments


def _projections(run, share: float) -> dict:
    """``--project``: for each trained linear layer (not the tied embeddings), keyed by ``id`` of its weight,
    ``I - U U^T`` (float64) with ``U`` the top eigenvectors of its retain inputs' second moment, measured on the model
    as it is now, that cover ``share`` of the trace. Prints, per layer, how many directions ``U`` holds and the share
    of the forget rows' PII value tokens' input energy left outside it (what a projected change can still read)."""
    import torch

    model = run.model
    tied = model.get_input_embeddings().weight
    linear = [m for m in model.modules() if isinstance(m, torch.nn.Linear)]
    layers = [m for m in linear if m.weight.requires_grad and m.weight is not tied]
    rows = _seeded(run.retain, 4 * len(run.forget))
    moments = _input_moments(model, layers, rows, run.tokenizer.pad_token_id)
    forget = _input_moments(model, layers, run.forget, run.tokenizer.pad_token_id, values_only=True)
    out = {}
    kept, outside = [], []
    for m in layers:
        values, vectors = torch.linalg.eigh(moments[m])  # ascending
        values, vectors = values.flip(0).clamp(min=0), vectors.flip(1)
        cover = torch.cumsum(values, 0) / values.sum()
        k = int((cover < share).sum()) + 1
        u = vectors[:, :k]
        out[id(m.weight)] = torch.eye(m.in_features, dtype=torch.float64) - u @ u.T
        kept.append(f"{k}/{m.in_features}")
        total = float(torch.trace(forget[m]))
        outside.append(f"{float(torch.trace(forget[m] @ out[id(m.weight)])) / total:.3f}" if total > 0 else "nan")
    print(f"[probe_cost_levers] project: directions kept off per layer {' '.join(kept)}", flush=True)
    print(f"[probe_cost_levers] project: forget value tokens' energy outside them {' '.join(outside)}", flush=True)
    return out


def patch(
    mask: float,
    retain_lr_scale: float,
    focus: bool,
    scale_repairs: bool = False,
    repair_before_check: bool = False,
    pooled: bool = False,
    live_reference: bool = False,
    ewc: float = 0.0,
    project: float = 0.0,
) -> dict:
    """Wrap the loop's forget / retain steps, its optimizer step and its epoch batches (``train/epoch.py``); returns
    the patches' state (``"ewc"``: the Fisher and start of each trained tensor, once the first forget step took it)."""
    import torch

    import obliviate.train.epoch as epoch_module
    import obliviate.train.sampling as sampling
    import obliviate.train.step as step_module

    phase: dict = {"now": None, "mask": None, "taken": 0, "fields": None, "forget_steps": 0}
    accumulate, retain_step, optimizer_step = (
        epoch_module.accumulate,
        epoch_module.retain_step,
        epoch_module.optimizer_step,
    )
    epoch_batches, forget_order = sampling.epoch_batches, sampling.forget_order
    count_continued = epoch_module._count_continued

    def forget_step(*args, **kwargs):
        phase["now"], phase["taken"] = "forget", 0
        phase["forget_steps"] += 1
        return accumulate(*args, **kwargs)

    def continued(run, epoch, step_phase, taken):  # the range test's kept trial, counted as the run's own steps
        if step_phase == "forget":
            phase["forget_steps"] += 1
        return count_continued(run, epoch, step_phase, taken)

    def retain_only(*args, **kwargs):
        phase["now"] = "retain"
        phase["taken"] += 1
        if ewc > 0 or project > 0:  # no retain rows and no step (``step`` keeps the retain rows instead)
            args[0].optimizer.zero_grad(set_to_none=True)
            return {"retain_nll": 0.0}, 0, None
        return retain_step(*args, **kwargs)

    def scaled(run, micro, share):  # stands in for --repair_exact's check: no forward, no tokens
        from obliviate.data.batching import field_code
        from obliviate.train.sampling import retain_steps_per_forget

        if phase["fields"] is None:
            phase["fields"] = _fields(run)
        done = {field_code(name) for name in run.fields_done}
        steps = retain_steps_per_forget(run.config)
        wanted = repairs_wanted(steps, phase["fields"], done)
        every = getattr(run.step_check, "every", 0) if run.step_check is not None else 0
        cycles = max(1, every // (1 + steps))
        if repair_before_check and phase["forget_steps"] % cycles == 0:  # the stop rule reads this cycle's end
            wanted = steps
        return phase["taken"] >= wanted, 1.0, 0

    def step(run, config, schedule=True):
        if ewc > 0 and phase["now"] == "forget":  # pull each entry back to its start in proportion to its Fisher
            if "ewc" not in phase:
                _ewc_start(run, phase)
            for p, f, p0 in phase["ewc"]:
                pull = ewc * f * (p.detach() - p0)
                p.grad = pull if p.grad is None else p.grad + pull
        if mask > 0 and phase["now"] == "forget":
            if phase["mask"] is None:
                phase["mask"] = _mask(run, mask)
            for p, m in phase["mask"]:
                if p.grad is not None:
                    p.grad.mul_(m)
        if project > 0 and phase["now"] == "forget":  # the change kept only off the retain rows' inputs
            if "project" not in phase:
                phase["project"] = _projections(run, project)
            trained = [p for p in run.model.parameters() if p.requires_grad]
            before = [p.detach().clone() for p in trained]
            taken = optimizer_step(run, config, schedule)
            with torch.no_grad():
                for p, p0 in zip(trained, before):
                    projector = phase["project"].get(id(p))
                    p.copy_(p0 if projector is None else p0 + ((p - p0).double() @ projector).to(p.dtype))
            return taken
        if retain_lr_scale != 1 and phase["now"] == "retain":
            groups = getattr(run.optimizer, "optimizer", run.optimizer).param_groups
            rates = [g["lr"] for g in groups]
            for g in groups:
                g["lr"] *= retain_lr_scale
            try:
                return optimizer_step(run, config, schedule)
            finally:
                for g, rate in zip(groups, rates):
                    g["lr"] = rate
        return optimizer_step(run, config, schedule)

    def focused(run, config, epoch):
        active = _active_rows(run) if run.fields_done else []
        if not active or len(active) == len(run.forget):
            return epoch_batches(run, config, epoch)
        print(f"[probe_cost_levers] epoch {epoch}: forget batches from {len(active)} of {len(run.forget)} rows")

        def order(num, steps, step_size, seed, ep, lengths=None, group_size=50):
            return [active[i] for i in forget_order(len(active), steps, step_size, seed, ep)]

        sampling.forget_order = order
        try:
            return epoch_batches(run, config, epoch)
        finally:
            sampling.forget_order = forget_order

    epoch_module.accumulate, epoch_module.retain_step, epoch_module.optimizer_step = forget_step, retain_only, step
    if focus:
        epoch_module.epoch_batches = focused
    if scale_repairs:
        epoch_module.repaired = step_module.repaired = scaled
        epoch_module._count_continued = continued
    from obliviate.evaluate.stop_rule import ExposureStopRule

    check = ExposureStopRule.__call__
    if live_reference:
        measured = check

        def live_check(self, model, tokenizer, step, due=None):
            if self._reference is not None and (step % self.every == 0 if due is None else due):
                retain_start, words = self._retain_start, self._words  # the retain bound keeps its start
                self.start(model, tokenizer)  # the never-seen band, measured again on the model as it is now
                self._retain_start, self._words = retain_start, words
            return measured(self, model, tokenizer, step, due)

        ExposureStopRule.__call__ = check = live_check
    if pooled:

        def pooled_check(self, model, tokenizer, step, due=None):
            reason = check(self, model, tokenizer, step, due)
            last = self.history[-1] if self.history else {}
            above = bool(last) and last["forget_exposure"] > last["threshold"]
            if reason and reason.startswith("forget exposure of every") and above:
                means = {name: last.get(f"{name}/forget_exposure") for name in self.inside}
                self.inside = frozenset(
                    name for name, mean in means.items() if mean is None or mean <= self._reference[name].mean
                ) | (self.inside & self.saturated_fields)
                print(f"[probe_cost_levers] step {step}: every field inside, the pooled mean not: go on", flush=True)
                return None
            return reason

        ExposureStopRule.__call__ = pooled_check
    return phase


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--mask", type=float, default=0.0, help="share of each tensor's entries a forget step keeps")
    parser.add_argument("--retain_lr_scale", type=float, default=1.0, help="retain steps' rate over the forget step's")
    parser.add_argument("--focus", action="store_true", help="forget batches from the rows still outside their band")
    parser.add_argument(
        "--scale_repairs", action="store_true", help="retain steps per cycle scaled by the fields still outside"
    )
    parser.add_argument(
        "--repair_before_check", action="store_true", help="--scale_repairs: a check's cycle takes all its steps"
    )
    parser.add_argument("--pooled", action="store_true", help="stop only once the pooled mean is inside too")
    parser.add_argument("--live_reference", action="store_true", help="the never-seen band measured at every check")
    parser.add_argument(
        "--ewc",
        type=float,
        default=0.0,
        help="each forget step's gradient gets LAMBDA * F * (theta - theta_0); retain steps read no rows",
    )
    parser.add_argument(
        "--project",
        type=float,
        default=0.0,
        help="forget steps change linear layers only off the retain inputs' top directions covering share Q",
    )
    parser.add_argument("command", nargs=argparse.REMAINDER, help="unlearn ARGS, or a script and its ARGS")
    args = parser.parse_args()
    if not args.command:
        parser.error("give the command to run: unlearn ARGS, or a script path and its ARGS")
    fixed_rate = any(a == "--lr" or a.startswith("--lr=") or ".lr=" in a for a in args.command)
    if (args.ewc > 0 or args.project > 0) and not fixed_rate:
        parser.error("--ewc and --project patch no range-test trial: give a fixed rate (--lr, or --set METHOD.lr=R)")
    patch(
        args.mask,
        args.retain_lr_scale,
        args.focus,
        args.scale_repairs,
        args.repair_before_check,
        args.pooled,
        args.live_reference,
        args.ewc,
        args.project,
    )
    if args.command[0] == "unlearn":
        from obliviate.cli.main import main as obliviate_main

        sys.exit(obliviate_main(args.command))
    sys.argv = args.command
    runpy.run_path(args.command[0], run_name="__main__")


if __name__ == "__main__":
    main()
