"""Standard errors of the suite's aggregates, with the rows of one person counted as one draw.

Every aggregate the suite reports is a mean over units drawn from a few people: a split's rows (ROUGE-L, exact
match), its (person, field) pairs (leak rates, digits in place, exposure), or, for a membership AUC, its members
against its non-members. Rows of one person are not independent draws (a model that knows a person tends to know
all of their values), so each standard error here is cluster-robust, the clusters being people
(``docs/METRICS.md``, *Standard errors*). With every unit its own cluster it is the usual ``s / √n`` that
lm-evaluation-harness reports as ``*_stderr``.
"""

from __future__ import annotations

import math
from collections import defaultdict
from collections.abc import Hashable, Mapping, Sequence
from typing import Any

import numpy as np

CLEAR = 2.0
"""A verdict against a bound is *clear* when its margin is at least this many standard errors from zero; a closer one
could go the other way on another draw of as many people (``docs/METRICS.md``, *Standard errors*)."""


def clustered_se(values: Sequence[float], clusters: Sequence[Hashable] | None = None) -> float | None:
    """Standard error of ``mean(values)`` when ``values[i]`` belongs to cluster ``clusters[i]``.

    ``se² = C / (C − 1) · Σ_c (Σ_{i∈c} (x_i − x̄))² / n²`` over the C clusters (the CR1 sandwich estimator of a
    mean). With no ``clusters`` (or all distinct) it equals ``s / √n``, ``s`` the sample standard deviation.
    None where it cannot be estimated: fewer than two clusters, or a value that is not finite.
    """
    x = np.asarray(values, dtype=np.float64)
    if clusters is not None and len(clusters) != len(x):
        raise ValueError(f"{len(x)} values but {len(clusters)} clusters")
    if x.size < 2 or not np.all(np.isfinite(x)):
        return None
    residual = x - x.mean()
    sums: dict[Hashable, float] = defaultdict(float)
    for i, r in enumerate(residual):
        sums[clusters[i] if clusters is not None else i] += float(r)
    count = len(sums)
    if count < 2:
        return None
    variance = count / (count - 1) * sum(s * s for s in sums.values()) / (x.size**2)
    return math.sqrt(variance)


def auc_components(member_scores: Sequence[float], nonmember_scores: Sequence[float]) -> tuple[np.ndarray, np.ndarray]:
    """DeLong's structural components of the AUC (members scored higher = member): for each member, the share of
    non-members it outscores (a tie counts a half), and for each non-member the share of members that outscore it.
    The mean of either is the AUC (DeLong, DeLong & Clarke-Pearson 1988). Counted on sorted scores, in
    O((m + n) log(m + n)) time and O(m + n) memory."""
    x = np.asarray(member_scores, dtype=np.float64)
    y = np.asarray(nonmember_scores, dtype=np.float64)
    ys, xs = np.sort(y), np.sort(x)
    below = np.searchsorted(ys, x, side="left")  # non-members strictly below each member
    ties = np.searchsorted(ys, x, side="right") - below
    above = x.size - np.searchsorted(xs, y, side="right")  # members strictly above each non-member
    tied = np.searchsorted(xs, y, side="right") - np.searchsorted(xs, y, side="left")
    return (below + 0.5 * ties) / max(y.size, 1), (above + 0.5 * tied) / max(x.size, 1)


def auc_se(
    member_scores: Sequence[float],
    nonmember_scores: Sequence[float],
    member_clusters: Sequence[Hashable] | None = None,
    nonmember_clusters: Sequence[Hashable] | None = None,
) -> float | None:
    """Standard error of the AUC of members against non-members: DeLong's variance, each sample's component
    mean taken with :func:`clustered_se` over its people (Obuchowski 1997), the two samples independent: a person
    is taken to be among the members or among the non-members, not both (the covariance term a person on both
    sides would add is left out). Without clusters it is DeLong's ``S10 / m + S01 / n``. None where either side
    has fewer than two clusters."""
    return components_se(*auc_components(member_scores, nonmember_scores), member_clusters, nonmember_clusters)


def components_se(
    v10: Sequence[float],
    v01: Sequence[float],
    member_clusters: Sequence[Hashable] | None = None,
    nonmember_clusters: Sequence[Hashable] | None = None,
) -> float | None:
    """:func:`auc_se` from the components :func:`auc_components` gave."""
    se_members = clustered_se(v10, member_clusters)
    se_nonmembers = clustered_se(v01, nonmember_clusters)
    if se_members is None or se_nonmembers is None:
        return None
    return math.sqrt(se_members**2 + se_nonmembers**2)


def difference_se(*terms: tuple[float, float | None]) -> float | None:
    """Standard error of ``Σ weight · estimate`` from each term's ``(weight, standard error)``, the estimates taken
    as independent; None when any standard error is unknown. For two models evaluated on the same rows it is only
    a stand-in for :func:`paired_se`, which can be smaller or larger."""
    if any(se is None for _, se in terms):
        return None
    return math.sqrt(sum((weight * se) ** 2 for weight, se in terms))  # type: ignore[operator]


def no_event_se(people: int) -> float | None:
    """Agresti–Coull standard error of a rate with no event (or only events) among ``people`` people: the rate
    estimated as ``p̃ = 2 / (C + 4)`` (two events and two non-events added, Agresti & Coull 1998), its error
    ``sqrt(p̃ (1 − p̃) / (C + 4))``. Where a rate is 0 on every unit the plug-in error is 0, which says nothing;
    for large C twice this one is about ``2.8 / C``, near the rule of three's 95 % bound ``3 / C``. A person is
    one draw, as in :func:`clustered_se`: a count of 0 cannot show how a person's units go together, so they are
    taken to go together wholly, which errs wide (``docs/METRICS.md``, *Standard errors*). None for no people."""
    if people < 1:
        return None
    shrunk = 2.0 / (people + 4)
    return math.sqrt(shrunk * (1.0 - shrunk) / (people + 4))


def uniform_rate_people(units: Mapping[str, Any] | None) -> int | None:
    """The number of people of a one-group :data:`Units` whose values are all 0 or all 1 (a rate with no event, or
    only events); None otherwise."""
    if not units or set(units) != {"all"}:
        return None
    values = {float(value) for _, value in units["all"].values()}
    return len({owner for owner, _ in units["all"].values()}) if values in ({0.0}, {1.0}) else None


Units = dict[str, dict[str, list[Any]]]
"""One metric's units, by group: ``{group: {unit id: [owner, value]}}``. A mean has one group, ``"all"``; a
membership AUC two, ``"member"`` and ``"nonmember"``, whose values are DeLong's components
(:func:`auc_components`). The metric's standard error is the root of the sum over groups of each group's
:func:`clustered_se` squared."""


def mean_units(ids: Sequence[str], owners: Sequence[str], values: Sequence[float]) -> Units:
    """:data:`Units` of a mean over ``values`` (unit ``ids[i]`` of person ``owners[i]``)."""
    return {"all": {str(i): [str(o), float(v)] for i, o, v in zip(ids, owners, values)}}


def auc_units(
    members: Sequence[tuple[str, str]],
    nonmembers: Sequence[tuple[str, str]],
    v10: Sequence[float],
    v01: Sequence[float],
) -> Units:
    """:data:`Units` of an AUC: each member's and non-member's ``(id, owner)`` with its DeLong component
    (:func:`auc_components`)."""
    return {
        "member": {i: [o, float(v)] for (i, o), v in zip(members, v10)},
        "nonmember": {i: [o, float(v)] for (i, o), v in zip(nonmembers, v01)},
    }


def paired_se(
    units: Mapping[str, Any] | None, reference: Mapping[str, Any] | None, weight: float = 1.0
) -> float | None:
    """Standard error of ``estimate − weight · reference estimate`` where both were measured on the same units
    (two models evaluated on the same rows): per group the clustered error of the per-unit differences, the groups
    added in quadrature. None where either has no units or they are not the same units."""
    if not units or not reference or set(units) != set(reference):
        return None
    variance = 0.0
    for group, found in units.items():
        other = reference[group]
        if set(found) != set(other):
            return None
        ids = sorted(found)
        se = clustered_se([found[i][1] - weight * other[i][1] for i in ids], [found[i][0] for i in ids])
        if se is None:
            return None
        variance += se * se
    return math.sqrt(variance)
