"""Does the PII come back? ``evaluate --attacks``: relearning and quantisation on copies of the evaluated model.

Each attack changes a copy in memory (:mod:`~obliviate.evaluate.relearn`, :mod:`~obliviate.evaluate.quantize`);
the model on disk, and the model object the caller holds, are never modified. The attacked copy is then evaluated by
the same :func:`~obliviate.evaluate.suite.evaluate_model` with the same options as the unattacked model, so every
number (leak rate with the same probes, exposure, ROUGE-L, exact match) is comparable with the unattacked one, and
each :class:`~obliviate.evaluate.results.AttackResult` keeps both (``before`` and ``after``).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import torch

from obliviate.config import ATTACKS
from obliviate.errors import ConfigError
from obliviate.evaluate import quantize, relearn
from obliviate.evaluate.data import EvalData
from obliviate.evaluate.epochs import release_memory
from obliviate.evaluate.membership import OracleStats
from obliviate.evaluate.results import AttackResult, EvalResult
from obliviate.evaluate.suite import EvalOptions, evaluate_model

RELEARN_LR = 1e-5
"""The relearning rate when the run's own is unknown: ``obliviate unlearn``'s general default, a usual fine-tuning
rate for billion-parameter models (Łucki et al. relearn RMU at 1e-5 to 1e-4)."""


@dataclass(frozen=True)
class AttackOptions:
    """Which attacks, and their settings.

    Attributes:
        attacks: some of :data:`ATTACKS`, in the order run.
        relearn_steps: optimizer steps ``k`` after which the relearned copy is probed (one run serves all).
        relearn_sources: some of :data:`obliviate.evaluate.relearn.SOURCES`.
        relearn_lr: AdamW's constant rate.
        relearn_batch_size: rows per relearning step.
        quantize_bits: bit widths of the round-to-nearest attack.
        group_size: input weights sharing one quantisation scale.
    """

    attacks: tuple[str, ...] = ATTACKS
    relearn_steps: tuple[int, ...] = (10, 50)
    relearn_sources: tuple[str, ...] = relearn.SOURCES
    relearn_lr: float = RELEARN_LR
    relearn_batch_size: int = 8
    quantize_bits: tuple[int, ...] = quantize.BITS
    group_size: int = quantize.GROUP_SIZE

    def __post_init__(self) -> None:
        _check_names("attacks", self.attacks, ATTACKS)
        _check_names("relearn_sources", self.relearn_sources, relearn.SOURCES)
        _check_names("quantize_bits", self.quantize_bits, quantize.BITS)
        if not self.relearn_steps or min(self.relearn_steps) < 1:
            raise ConfigError(f"--relearn_steps: expected positive step counts, found {list(self.relearn_steps)}")
        if not 0 < self.relearn_lr <= 1 or self.relearn_batch_size < 1 or self.group_size < 1:
            raise ConfigError("--relearn_lr must be in (0, 1]; batch and group sizes at least 1")


def _check_names(flag: str, given, valid) -> None:
    unknown = [str(x) for x in given if x not in valid]
    if unknown or not given:
        found = ", ".join(unknown) or "nothing"
        raise ConfigError(f"--{flag}: expected a comma list of {', '.join(map(str, valid))}; found {found}")


def run_attacks(
    model,
    tokenizer,
    data: EvalData,
    options: EvalOptions,
    attack: AttackOptions,
    unattacked: EvalResult,
    oracle: OracleStats | None = None,
    on_result: Callable[[AttackResult], None] | None = None,
) -> list[AttackResult]:
    """Every attack of ``attack.attacks`` on copies of ``model``, each evaluated as ``unattacked`` was."""
    results: list[AttackResult] = []
    for name in attack.attacks:
        runner = _relearn_attacks if name == "relearn" else _quantize_attacks
        for result in runner(model, tokenizer, data, options, attack, unattacked, oracle):
            results.append(result)
            if on_result is not None:
                on_result(result)
    return results


def _quantize_attacks(model, tokenizer, data, options, attack, unattacked, oracle):
    for bits in attack.quantize_bits:
        attacked, change = quantize.quantize_model(model, bits, attack.group_size)
        try:
            after = evaluate_model(attacked, tokenizer, data, options, oracle=oracle)
        finally:
            del attacked
            release_memory()
        params = {"bits": bits, "group_size": attack.group_size, "scheme": "round-to-nearest, symmetric"}
        yield _result("quantize", f"quantize int{bits} g{attack.group_size}", params, unattacked, after, change)


def _relearn_attacks(model, tokenizer, data, options, attack, unattacked, oracle):
    for source in relearn.build_sources(data, attack.relearn_sources, options.seed):
        params = {"source": source.name, "lr": attack.relearn_lr, "batch_size": attack.relearn_batch_size}
        if not source.records:
            for k in sorted(set(attack.relearn_steps)):
                before = unattacked.summary()
                yield AttackResult("relearn", _relearn_name(source.name, k), {**params, "steps": k}, before, None,
                                   note=f"source unavailable: {source.note}")  # fmt: skip
            continue
        probe = source.probe or data
        before = unattacked if source.probe is None else evaluate_model(model, tokenizer, probe, options)
        steps = relearn.relearn(
            model,
            tokenizer,
            source.records,
            attack.relearn_steps,
            lr=attack.relearn_lr,
            batch_size=attack.relearn_batch_size,
            max_length=options.max_length,
            seed=options.seed,
        )
        for k, attacked in steps:
            after = evaluate_model(attacked, tokenizer, probe, options, oracle=None if source.probe else oracle)
            details = {**source.details, **weight_change(model, attacked)}
            yield _result("relearn", _relearn_name(source.name, k), {**params, "steps": k}, before, after, details)
        del steps
        release_memory()


def _relearn_name(source: str, k: int) -> str:
    return f"relearn {source} k={k}"


def _result(kind, name, params, before: EvalResult, after: EvalResult, details) -> AttackResult:
    return AttackResult(
        kind,
        name,
        params,
        before.summary(),
        after.summary(),
        details=dict(details),
        leak=after.leak,
        leaked=after.leaked,
        leaked_before=before.leaked,
    )


@torch.no_grad()
def weight_change(original, attacked) -> dict[str, float]:
    """``relative_change``: ``‖θ' − θ‖ / ‖θ‖`` over every parameter the two models share by name."""
    reference = dict(original.named_parameters())
    change = norm = 0.0
    for name, param in attacked.named_parameters():
        if name in reference:
            base = reference[name].float()
            change += float((param.float() - base).pow(2).sum())
            norm += float(base.pow(2).sum())
    return {"relative_change": (change / norm) ** 0.5 if norm > 0 else 0.0}


def attack_options(config, model_path: str | None) -> AttackOptions | None:
    """The :class:`AttackOptions` of an ``EvaluateConfig`` (None when ``--attacks`` is empty); an unset
    ``--relearn_lr`` is the unlearning run's own rate where ``model_path`` is an obliviate run or checkpoint."""
    from obliviate.config import QUANTIZE_BITS, RELEARN_SOURCES, comma_list
    from obliviate.evaluate.epochs import run_of_model

    attacks = comma_list("attacks", config.attacks, ATTACKS)
    if not attacks:
        return None
    lr = config.relearn_lr
    if lr is None:
        run = run_of_model(model_path) if model_path else None
        lr = float(run["config"]["lr"]) if run and run["config"].get("lr") else RELEARN_LR
    return AttackOptions(
        attacks=attacks,
        relearn_steps=tuple(int(s) for s in str(config.relearn_steps).split(",") if s.strip()),
        relearn_sources=comma_list("relearn_sources", config.relearn_sources, RELEARN_SOURCES),
        relearn_lr=lr,
        relearn_batch_size=config.relearn_batch_size,
        quantize_bits=comma_list("quantize_bits", config.quantize_bits, QUANTIZE_BITS, int),
    )


def describe(result: AttackResult) -> str:
    """One progress line: the forget leak rate before → after, or why the attack did not run."""
    if not result.ran:
        return f"attack {result.name}: not run ({result.note})"
    before, after = result.before.get("forget/leak_rate"), result.after.get("forget/leak_rate")
    shown = "–" if before is None or after is None else f"{before:.3f} → {after:.3f}"
    return f"attack {result.name}: forget leak rate {shown}"
