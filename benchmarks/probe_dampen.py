"""Issue 9 probe: selective synaptic dampening (SSD, Foster et al. 2023) on the forget set's PII tokens, with no
training steps, each strength read by the exposure stop rule's check.

One backward pass over the forget rows (scored on their PII values only) and one over a retain sample give each
parameter's importance: the mean over micro-batches of its squared gradient. A parameter whose forget importance is
above ``alpha`` times its retain importance is scaled by ``min(lam * retain / forget, 1)``. The probe tries each
``--alphas`` value from the largest (weakest) down, each from the starting model, and prints per value: the entries
dampened, the stop rule's check (forget exposure per field against the never-seen band, retain exact match), and the
forget / retain rows whose teacher-forced answer the starting model reproduced and the dampened one no longer does.
``--rounds R`` dampens R times at each value, the forget importance measured again on the dampened model before each
round after the first (the retain importance stays the starting model's). ``--save_dir`` keeps the model of the first
value the stop rule accepts, for ``obliviate evaluate``. Measured in the eighteenth session and not kept
(``docs/METHODS.md``, *Without rehearsal*).

    python benchmarks/probe_dampen.py --model_dir runs/cache/target-91171b2240aa \\
        --data_dir runs/cache/data-d605a7e0430f --alphas 100 50 20 10 5 2
"""

from __future__ import annotations

import argparse
import json
import math

ROWS = 8  # rows per backward


def _squared_gradients(model, losses):
    """Each parameter's squared gradient, averaged over the finite losses that ``losses`` (callables, one per
    micro-batch) return; the parameters that require a gradient, in order."""
    import torch

    params = [p for p in model.parameters() if p.requires_grad]
    sums = [torch.zeros_like(p) for p in params]
    batches = 0
    model.train(False)
    for loss_of in losses:
        model.zero_grad(set_to_none=True)
        loss = loss_of()
        if not torch.isfinite(loss):
            continue
        loss.backward()
        batches += 1
        for total, p in zip(sums, params):
            if p.grad is not None:
                total += p.grad.float() ** 2
    model.zero_grad(set_to_none=True)
    return params, [s / max(batches, 1) for s in sums]


def _nll_reader(model, tokenizer):
    """``(nll, tokens)``: ``nll(records)`` is their scored tokens' mean NLL; ``tokens[0]`` counts what it read."""
    from obliviate.data.batching import collate, encode_record
    from obliviate.losses.common import mean_nll
    from obliviate.train.step import run_forward

    tokens = [0]

    def nll(records):
        batch = collate([encode_record(tokenizer, r, 512) for r in records], tokenizer.pad_token_id)
        tokens[0] += int(batch.attention_mask.sum())
        out = run_forward(model, batch)
        return mean_nll(out.logits, out.labels)

    return nll, tokens


def importance(model, tokenizer, records, rows: int | None = None, seed: int = 0):
    """Mean over micro-batches of each parameter's squared gradient of the scored tokens' mean NLL, and the tokens
    read."""
    import random

    order = list(range(len(records)))
    random.Random(seed).shuffle(order)
    order = order[: rows or len(order)]
    nll, tokens = _nll_reader(model, tokenizer)
    batches = ([records[i] for i in order[start : start + ROWS]] for start in range(0, len(order), ROWS))
    params, scores = _squared_gradients(model, (lambda chunk=chunk: nll(chunk) for chunk in batches))
    return params, scores, tokens[0]


def contrast_importance(model, tokenizer, marked, copies):
    """Like :func:`importance`, for the gap between the true values' NLL and their fakes' mean NLL."""
    import torch

    nll, tokens = _nll_reader(model, tokenizer)

    def gap(start):
        fake = torch.stack([nll(c[start : start + ROWS]) for c in copies]).mean()
        return nll(marked[start : start + ROWS]) - fake

    params, scores = _squared_gradients(model, (lambda s=start: gap(s) for start in range(0, len(marked), ROWS)))
    return params, scores, tokens[0]


def dampen(params, forget, retain, alpha: float, lam: float) -> int:
    """SSD's update in place; returns the entries scaled."""
    import torch

    changed = 0
    with torch.no_grad():
        for p, f, r in zip(params, forget, retain):
            chosen = f > alpha * r
            scale = torch.clamp(lam * r / f.clamp_min(1e-30), max=1.0)
            p.mul_(torch.where(chosen, scale, torch.ones_like(scale)).to(p.dtype))
            changed += int(chosen.sum())
    return changed


def main() -> None:
    import torch

    from obliviate.data.load import load_split
    from obliviate.data.pii import mark_pii_spans, values_in_answers
    from obliviate.evaluate.data import sample_records
    from obliviate.evaluate.stop_rule import EXPOSURE_SAMPLE, RETAIN_SAMPLE, ExposureStopRule
    from obliviate.models.load import load_model
    from obliviate.train.relabel import known_people
    from probe_fields import kept_by  # beside this script: the rows a model reproduces, as probe_fields counts them

    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model_dir", required=True)
    parser.add_argument("--data_dir", required=True, help="holds forget/, retain/ and holdout/")
    parser.add_argument("--alphas", type=float, nargs="+", default=[100, 50, 20, 10, 5, 2])
    parser.add_argument("--lam", type=float, default=1.0)
    parser.add_argument(
        "--rounds", type=int, default=1, help="dampen again this many times, the forget importance measured anew"
    )
    parser.add_argument("--retain_rows", type=int, default=None, help="retain rows for the importance (all)")
    parser.add_argument("--forget_tokens", choices=["pii", "answer", "contrast"], default="pii")
    parser.add_argument("--draws", type=int, default=4, help="fake copies per row (--forget_tokens contrast)")
    parser.add_argument("--save_dir", default=None)
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()
    torch.manual_seed(args.seed)

    d = args.data_dir
    forget = load_split(f"{d}/forget", split="forget")
    retain = load_split(f"{d}/retain", split="retain")
    holdout = load_split(f"{d}/holdout", split="holdout")
    people = known_people(f"{d}/forget", {"forget": forget, "retain": retain, "holdout": holdout})
    scored = mark_pii_spans(values_in_answers(forget, people), people)[0] if args.forget_tokens == "pii" else forget

    model, tokenizer = load_model(args.model_dir, dtype=torch.float32)
    if args.forget_tokens == "contrast":
        from obliviate.train.relabel import fake_pairs

        marked, copies = fake_pairs(forget, people, draws=args.draws, seed=args.seed)

    def forget_importance():
        if args.forget_tokens == "contrast":
            return contrast_importance(model, tokenizer, marked, copies)
        return importance(model, tokenizer, scored, seed=args.seed)

    params, f_imp, f_tokens = forget_importance()
    _, r_imp, r_tokens = importance(model, tokenizer, retain, args.retain_rows, seed=args.seed)
    print(f"importance: forget {f_tokens} tokens, retain {r_tokens} tokens", flush=True)
    start = {n: p.detach().clone() for n, p in model.named_parameters()}

    rule = ExposureStopRule(
        forget=sample_records(forget, EXPOSURE_SAMPLE, args.seed),
        people=people,
        retain=sample_records(retain, RETAIN_SAMPLE, args.seed),
        holdout=sample_records(holdout, EXPOSURE_SAMPLE, args.seed),
        every=1,
        retain_exact=0.95,
        seed=args.seed,
    )
    rule.start(model, tokenizer)
    before_f, before_r = kept_by(model, tokenizer, forget), kept_by(model, tokenizer, retain)
    ref = rule.describe()
    print(f"never-seen band: pooled {ref['reference_exposure']:.3f} ± {ref['reference_se']:.3f}", flush=True)
    saved = False

    def check_round(step, alpha, round_, changed, spent):
        nonlocal saved
        reason = rule(model, tokenizer, step, due=True)
        check = rule.history[-1]
        after_f, after_r = kept_by(model, tokenizer, forget), kept_by(model, tokenizer, retain)
        lost_f = sum(b and not a for b, a in zip(before_f, after_f))
        lost_r = sum(b and not a for b, a in zip(before_r, after_r))
        fields = {k.split("/")[0]: round(v, 2) for k, v in check.items() if k.endswith("/forget_exposure")}
        print(
            json.dumps(
                {
                    "alpha": alpha,
                    "round": round_,
                    "forget_tokens": f_tokens + spent,
                    "dampened": changed,
                    "forget_exposure": round(check["forget_exposure"], 3),
                    "threshold": round(check["threshold"], 3),
                    "fields_outside": check["fields_outside"],
                    "retain_exact": round(check["retain_exact"], 3),
                    "retain_nll": round(check["retain_nll"], 3),
                    "forget_lost": f"{lost_f}/{sum(before_f)}",
                    "retain_lost": f"{lost_r}/{sum(before_r)}",
                    "fields": fields,
                    "stop": reason,
                }
            ),
            flush=True,
        )
        if reason and "exposure" in reason and args.save_dir and not saved:
            model.save_pretrained(args.save_dir, safe_serialization=True)
            tokenizer.save_pretrained(args.save_dir)
            saved = True

    first, step = f_imp, 0
    for alpha in args.alphas:
        with torch.no_grad():
            for n, p in model.named_parameters():
                p.copy_(start[n])
        f_imp, changed, spent = first, 0, 0
        for round_ in range(1, args.rounds + 1):
            step += 1
            if round_ > 1:
                _, f_imp, tokens = forget_importance()
                spent += tokens
            changed += dampen(params, f_imp, r_imp, alpha, args.lam)
            check_round(step, alpha, round_, changed, spent)

    if not rule.history or not math.isfinite(rule.history[-1]["forget_exposure"]):
        raise SystemExit("no forget exposure measured")


if __name__ == "__main__":
    main()
