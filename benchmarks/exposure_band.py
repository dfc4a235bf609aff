"""Is a benchmark run's forget exposure inside the holdout band? A two-sample z test on the evaluation's values.

For each method of a pipeline report (``bench_quality.py``, ``probe_objectives.py``, ``obliviate demo``), reads the
per-value exposures its chosen epoch's evaluation wrote (``methods/M/eval/epoch-N/results.json``) and prints the
forget and holdout means, their standard errors (a person's values one draw, as in the evaluation), and z =
(forget − holdout) / sqrt(se_f² + se_h²), over every field
and over the fields whose never-seen values mostly rank first left out (their rank cannot show memorisation). The
stop rule's band is z ≤ 2 (``--stop_band``), but this is a like test, not the same one: it pools the fields' values
as they come (the rule tests each field, and weighs the pooled reference by the forget counts), its holdout is
read under the unlearned model (the rule's, under the starting model), and the evaluation ranks among fewer fakes
(K = 20 on LUME; the rule 50). Prints numbers only, never a value.

    python benchmarks/exposure_band.py runs/lume/report [runs/x/report ...]
"""

from __future__ import annotations

import argparse
import json
import math
import statistics
from pathlib import Path

SATURATED = 0.5  # as evaluate/stop_rule.py: a field whose never-seen values rank first this often is left out


def band(
    forget: list[float],
    holdout: list[float],
    forget_people: list[str] | None = None,
    holdout_people: list[str] | None = None,
) -> dict[str, float]:
    """Means, standard errors and the z of their difference (NaN where a side has fewer than two people). With
    ``*_people`` (each value's person), a person's values count as one draw
    (:func:`obliviate.evaluate.uncertainty.clustered_se`, as the evaluation's errors); without, each value is one."""
    from obliviate.evaluate.uncertainty import clustered_se

    se_f, se_h = clustered_se(forget, forget_people), clustered_se(holdout, holdout_people)
    if se_f is None or se_h is None:
        return {"forget": math.nan, "holdout": math.nan, "z": math.nan}
    spread = math.sqrt(se_f**2 + se_h**2)
    diff = statistics.mean(forget) - statistics.mean(holdout)
    return {
        "forget": statistics.mean(forget),
        "forget_se": se_f,
        "holdout": statistics.mean(holdout),
        "holdout_se": se_h,
        "z": diff / spread if spread else (0.0 if diff == 0 else math.copysign(math.inf, diff)),
        "n_forget": len(forget),
        "n_holdout": len(holdout),
    }


def saturated(pairs: list[dict]) -> set[str]:
    """Fields whose never-seen values rank first at least :data:`SATURATED` of the time."""
    fields: dict[str, list[bool]] = {}
    for p in pairs:
        fields.setdefault(p["field"], []).append(p["rank"] == 1)
    return {f for f, top in fields.items() if sum(top) >= SATURATED * len(top)}


def chosen_epochs(report: Path) -> dict[str, int]:
    """Each method's chosen epoch: from ``results.json``, or where a run wrote none (``probe_objectives.py``'s
    output directory), its last evaluated epoch (the pipeline's ``--select last``; for a run stopped by hand, the
    last one it evaluated, not where it stopped: the printed label names the epoch)."""
    if (report / "results.json").exists():
        runs = json.loads((report / "results.json").read_text())["runs"]
        return {run["method"]: run["best"]["epoch"] for run in runs}
    epochs = {}
    for folder in sorted((report / "methods").glob("*/eval")):
        evaluated = [int(p.parent.name.removeprefix("epoch-")) for p in folder.glob("epoch-*/results.json")]
        if evaluated:
            epochs[folder.parent.name] = max(evaluated)
    return epochs


def report_bands(report: Path) -> dict[str, dict[str, dict[str, float]]]:
    """Per method of ``report`` (a pipeline report directory): the band over all fields, and without saturated ones."""
    out = {}
    for method, epoch in chosen_epochs(report).items():
        path = report / "methods" / method / "eval" / f"epoch-{epoch}" / "results.json"
        exposure = json.loads(path.read_text())["exposure"]
        forget, holdout = exposure["forget"]["pairs"], exposure["holdout"]["pairs"]
        skip = saturated(holdout)
        bands = {"all fields": _band(forget, holdout, set())}
        if skip:
            bands[f"without {', '.join(sorted(skip))}"] = _band(forget, holdout, skip)
        out[f"{method} (epoch {epoch})"] = bands
    return out


def _band(forget: list[dict], holdout: list[dict], skip: set[str]) -> dict[str, float]:
    """:func:`band` of the pairs whose field is not in ``skip``, a person's values one draw."""
    kept_f = [p for p in forget if p["field"] not in skip]
    kept_h = [p for p in holdout if p["field"] not in skip]
    return band(
        [p["exposure"] for p in kept_f],
        [p["exposure"] for p in kept_h],
        [str(p["person_id"]) for p in kept_f],
        [str(p["person_id"]) for p in kept_h],
    )


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("reports", nargs="+", type=Path, help="pipeline report directories")
    args = parser.parse_args(argv)
    print("| report | method | fields | forget (se) | holdout (se) | z |")
    print("|---|---|---|---|---|---|")
    for report in args.reports:
        for method, bands in report_bands(report).items():
            for fields, b in bands.items():
                print(
                    f"| {report} | {method} | {fields} | {b['forget']:.3f} ({b.get('forget_se', math.nan):.3f}) | "
                    f"{b['holdout']:.3f} ({b.get('holdout_se', math.nan):.3f}) | {b['z']:.2f} |"
                )


if __name__ == "__main__":
    main()
