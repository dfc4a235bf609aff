"""Math tests of the unlearning objectives on hand-made tensors; each derivation is in the test's docstring."""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F

from obliviate.data.batching import TokenBatch
from obliviate.errors import ConfigError
from obliviate.losses import FINETUNE, LOSSES, get_method
from obliviate.losses.common import IGNORE_INDEX, Forward, LossInputs, LossParams, Needs, mean_nll
from obliviate.losses.ga_kl import answer_token_kl
from obliviate.losses.rmu import make_control_vector

VOCAB, HIDDEN = 7, 4
# Two examples: a prompt (-100), answer tokens, then padding (-100, attention 0) on the second.
LABELS = torch.tensor([[IGNORE_INDEX, IGNORE_INDEX, 3, 1, 4], [IGNORE_INDEX, 2, 5, IGNORE_INDEX, IGNORE_INDEX]])
MASK = torch.tensor([[1, 1, 1, 1, 1], [1, 1, 1, 0, 0]])


def fwd(logits: torch.Tensor | None, labels: torch.Tensor = LABELS, hidden: torch.Tensor | None = None) -> Forward:
    mask = MASK if labels is LABELS else torch.ones_like(labels)
    return Forward(logits=logits, labels=labels, attention_mask=mask, hidden=hidden)


def random_logits(seed: int, requires_grad: bool = False) -> torch.Tensor:
    generator = torch.Generator().manual_seed(seed)
    return torch.randn(*LABELS.shape, VOCAB, generator=generator).requires_grad_(requires_grad)


def full_inputs(method_needs: Needs, forget_logits: torch.Tensor | None = None) -> LossInputs:
    """Exactly what ``method_needs`` asks for, nothing more: hidden-state methods get no logits."""
    hidden = method_needs.hidden
    forget_logits = random_logits(0) if forget_logits is None else forget_logits

    def make(seed: int) -> Forward:
        generator = torch.Generator().manual_seed(100 + seed)
        h = torch.randn(*LABELS.shape, HIDDEN, generator=generator) if hidden else None
        return fwd(None if hidden else (forget_logits if seed == 0 else random_logits(seed)), hidden=h)

    return LossInputs(
        forget=make(0),
        retain=make(1) if method_needs.retain else None,
        forget_ref=make(2) if "forget" in method_needs.reference_on else None,
        retain_ref=make(3) if "retain" in method_needs.reference_on else None,
        control=make_control_vector(HIDDEN, 6.5, seed=0) if hidden else None,
        paired=make(4) if method_needs.paired else None,
        paired_ref=make(5) if "paired" in method_needs.reference_on else None,
    )


def test_ga_equals_minus_cross_entropy():
    """GA = −NLL(F), and NLL is torch's cross-entropy of shifted logits/labels with ``ignore_index=-100``."""
    logits = random_logits(0)
    expected = F.cross_entropy(logits[:, :-1].reshape(-1, VOCAB), LABELS[:, 1:].reshape(-1), ignore_index=-100)
    out = get_method("ga").loss(LossInputs(forget=fwd(logits)), LossParams())
    torch.testing.assert_close(out.loss, -expected)
    assert out.metrics["forget_nll"].item() == pytest.approx(expected.item())


def test_ga_gd_reduces_to_ga_and_to_retain_nll():
    """``−γ·NLL(F) + α·NLL(R)``: α = 0 leaves GA (γ = 1); γ = 0 leaves ``α·NLL(R)``."""
    inputs = full_inputs(LOSSES["ga_gd"].needs)
    ga_gd = LOSSES["ga_gd"].loss
    ga_value = LOSSES["ga"].loss(inputs, LossParams()).loss
    torch.testing.assert_close(ga_gd(inputs, LossParams(gamma=1.0, alpha=0.0)).loss, ga_value)
    retain_nll = mean_nll(inputs.retain.logits, inputs.retain.labels)
    torch.testing.assert_close(ga_gd(inputs, LossParams(gamma=0.0, alpha=2.5)).loss, 2.5 * retain_nll)


def test_kl_of_identical_distributions_is_zero_and_positive_otherwise():
    """Gibbs' inequality: KL(p‖q) ≥ 0 with equality iff p = q at every scored position."""
    logits = random_logits(0)
    assert answer_token_kl(logits, logits.clone(), LABELS).item() == pytest.approx(0.0, abs=1e-6)
    assert answer_token_kl(logits, random_logits(1), LABELS).item() > 0.01


def test_kl_ignores_prompt_and_padding_positions():
    """Position t is scored iff labels[t+1] != −100; logits anywhere else must not move the KL.

    In ``LABELS`` the scored logit positions are (0,1), (0,2), (0,3), (1,0), (1,1); all others are changed.
    """
    logits, ref = random_logits(0), random_logits(1)
    unscored = torch.ones(LABELS.shape, dtype=torch.bool)
    unscored[:, :-1] = LABELS[:, 1:].eq(IGNORE_INDEX)
    before = answer_token_kl(logits, ref, LABELS)
    noise = 10 * torch.randn_like(logits) * unscored.unsqueeze(-1)
    after = answer_token_kl(logits + noise, ref - noise, LABELS)
    torch.testing.assert_close(after, before)


def test_kl_matches_hand_computation():
    """Labels ``[-100, 2, 0, -100]`` score logit positions 0 and 1 only; vocabulary of 3.

    Position 0: θ uniform, ref (1/2, 1/4, 1/4): KL = ½·ln(½ / ⅓) + 2·¼·ln(¼ / ⅓) = ½·ln(9/8).
    Position 1: θ (1/2, 1/4, 1/4), ref uniform: KL = ⅓·(ln(⅓/½) + 2·ln(⅓/¼)) = ⅓·ln(32/27).
    The result is their mean; positions 2 and 3 hold very different logits that must not count.
    """
    skewed = torch.tensor([0.5, 0.25, 0.25]).log()
    uniform = torch.zeros(3)
    logits = torch.stack([uniform, skewed, torch.tensor([9.0, 0, 0]), torch.tensor([0, 9.0, 0])]).unsqueeze(0)
    ref = torch.stack([skewed, uniform, torch.tensor([0, 0, 9.0]), torch.tensor([9.0, 0, 0])]).unsqueeze(0)
    labels = torch.tensor([[IGNORE_INDEX, 2, 0, IGNORE_INDEX]])
    expected = (0.5 * math.log(9 / 8) + math.log(32 / 27) / 3) / 2
    assert answer_token_kl(logits, ref, labels).item() == pytest.approx(expected, rel=1e-5)
    out = get_method("ga_kl").loss(
        LossInputs(forget=fwd(random_logits(0)), retain=fwd(logits, labels), retain_ref=fwd(ref, labels)),
        LossParams(kl_weight=3.0),
    )
    assert out.metrics["kl"].item() == pytest.approx(expected, rel=1e-5)
    assert out.loss.item() == pytest.approx(-out.metrics["forget_nll"].item() + 3.0 * expected, rel=1e-5)


@pytest.mark.parametrize("beta", [0.05, 0.1, 1.0, 4.5])
def test_npo_at_reference_is_two_over_beta_log_two(beta: float):
    """θ = ref ⇒ log ratio 0 ⇒ (2/β)·log(1 + 1) = (2/β)·ln 2 (α = 0 drops the retain term)."""
    inputs = full_inputs(LOSSES["npo"].needs)
    inputs.forget_ref = fwd(inputs.forget.logits.clone())
    out = get_method("npo").loss(inputs, LossParams(beta=beta, alpha=0.0))
    assert out.loss.item() == pytest.approx(2 / beta * math.log(2), rel=1e-5)


def test_npo_decreases_as_forget_logprob_decreases():
    """softplus is increasing, so lowering log π_θ(y|x) with the reference fixed lowers the NPO term."""
    inputs = full_inputs(LOSSES["npo"].needs)
    answer_tokens = F.one_hot(LABELS.clamp_min(0), VOCAB) * LABELS.ne(IGNORE_INDEX).unsqueeze(-1)
    # Logit position t predicts labels[t+1]: lower the logit of the next answer token at each scored position.
    target_of_position = torch.zeros_like(answer_tokens)
    target_of_position[:, :-1] = answer_tokens[:, 1:]
    values = []
    for shift in (2.0, 0.0, -2.0, -4.0):
        inputs.forget = fwd(inputs.forget_ref.logits + shift * target_of_position)
        values.append(get_method("npo").loss(inputs, LossParams(beta=0.1, alpha=0.0)).loss.item())
    assert values == sorted(values, reverse=True) and values[0] > values[-1]


@pytest.mark.parametrize(("beta", "delta"), [(1.0, 0.0), (4.5, 0.0), (1.0, math.log(4)), (2.0, -1.0)])
def test_simnpo_matches_hand_computation(beta: float, delta: float):
    """Uniform logits over V = 7: every answer token has log p = −ln 7, so log π(y|x)/|y| = −ln 7 for both examples
    whatever their length (3 and 2 tokens; a version without the length normalisation would differ).
    Loss = −(2/β)·log σ(β·ln 7 − δ) = (2/β)·log(1 + 7^(−β)·e^δ).
    """
    inputs = full_inputs(LOSSES["simnpo"].needs, forget_logits=torch.zeros(*LABELS.shape, VOCAB))
    out = get_method("simnpo").loss(inputs, LossParams(beta=beta, delta=delta, alpha=0.0))
    expected = 2 / beta * math.log(1 + 7 ** (-beta) * math.exp(delta))
    assert out.loss.item() == pytest.approx(expected, rel=1e-5)
    assert out.metrics["forget_nll"].item() == pytest.approx(math.log(7), rel=1e-5)


def test_simnpo_is_reference_free_and_delta_raises_it():
    """SimNPO needs no reference pass; the forget term is increasing in δ (softplus is increasing)."""
    assert LOSSES["simnpo"].needs.reference_on == ()
    inputs = full_inputs(LOSSES["simnpo"].needs)
    values = [
        get_method("simnpo").loss(inputs, LossParams(beta=4.5, delta=d, alpha=1.0)).loss.item() for d in (-1, 0, 1)
    ]
    assert values[0] < values[1] < values[2]


def test_rmu_zero_at_target_and_hand_value_otherwise():
    """h(F) = c·u on real tokens and h(R) = h_ref(R) ⇒ 0 (padding holds garbage that must not count).
    Adding 1 to every forget unit gives an MSE of 1; retain off by 2 gives 4; loss = 1 + α·4.
    """
    control = make_control_vector(HIDDEN, 6.5, seed=3)
    garbage = 50 * (1 - MASK).unsqueeze(-1).float()
    forget_hidden = control.expand(*LABELS.shape, HIDDEN) + garbage
    retain_ref_hidden = torch.randn(*LABELS.shape, HIDDEN)
    inputs = LossInputs(
        forget=fwd(None, hidden=forget_hidden),
        retain=fwd(None, hidden=retain_ref_hidden + garbage),
        retain_ref=fwd(None, hidden=retain_ref_hidden),
        control=control,
    )
    assert get_method("rmu").loss(inputs, LossParams(alpha=100.0)).loss.item() == pytest.approx(0.0, abs=1e-6)
    inputs.forget.hidden = forget_hidden + 1.0
    inputs.retain.hidden = retain_ref_hidden + 2.0
    out = get_method("rmu").loss(inputs, LossParams(alpha=100.0))
    assert out.metrics["rmu_forget"].item() == pytest.approx(1.0)
    assert out.metrics["rmu_retain"].item() == pytest.approx(4.0)
    assert out.loss.item() == pytest.approx(401.0)


def test_control_vector_has_norm_c_and_is_seeded():
    """u ~ U[0,1)^d normalised to unit length, times c: norm c, non-negative, a function of the seed only."""
    vector = make_control_vector(32, 6.5, seed=7)
    assert vector.shape == (32,) and vector.norm().item() == pytest.approx(6.5) and bool((vector >= 0).all())
    torch.testing.assert_close(vector, make_control_vector(32, 6.5, seed=7))
    assert not torch.equal(vector, make_control_vector(32, 6.5, seed=8))


@pytest.mark.parametrize("name", ["ga", "ga_kl", "ga_gd", "npo", "simnpo"])
def test_gradient_step_raises_forget_nll(name: str):
    """A tiny "model" whose parameters are the forget logits themselves: one descent step on the loss must raise
    NLL(F). Each row's NLL is convex in its own logits and every method's forget gradient is a positive multiple
    of it per example, so a step of any size along minus the loss gradient raises it; the retain term does not
    depend on these logits. SimNPO runs at β = 1: at its β = 4.5 the per-example weight σ(β·log π/|y|) on these
    already unlikely answers is ~1e-5, too small to see in float32 (by design: it stops pushing).
    """
    method = get_method(name)
    logits = random_logits(0, requires_grad=True)
    inputs = full_inputs(method.needs, forget_logits=logits)
    if inputs.forget_ref is not None:
        inputs.forget_ref = fwd(logits.detach().clone())
    method.loss(inputs, method.params({"beta": 1.0} if name == "simnpo" else None)).loss.backward()
    before = mean_nll(logits, LABELS).item()
    after = mean_nll(logits.detach() - 5.0 * logits.grad, LABELS).item()
    assert after > before + 1e-3


EXPECTED_NEEDS = {
    "ga": Needs(),
    "ga_kl": Needs(retain=True, reference_on=("retain",)),
    "ga_gd": Needs(retain=True),
    "npo": Needs(retain=True, reference_on=("forget",), reference_logprob=True),
    "simnpo": Needs(retain=True),
    "rmu": Needs(retain=True, reference_on=("retain",), hidden=True),
    "relabel": Needs(retain=True),
    "contrast": Needs(retain=True, paired=True, reference_on=("paired",)),
}


def test_registry_needs_and_names():
    """The registry holds exactly the documented methods, each with the needs its docstring states."""
    assert {name: method.needs for name, method in LOSSES.items()} == EXPECTED_NEEDS
    assert all(name == method.name for name, method in LOSSES.items())
    assert FINETUNE.needs == Needs() and FINETUNE.name not in LOSSES


def test_get_method_unknown_lists_valid_names():
    with pytest.raises(ConfigError, match="ga_gd.*simnpo|simnpo.*ga_gd") as info:
        get_method("gradient_ascent")
    assert "gradient_ascent" in str(info.value) and all(name in str(info.value) for name in LOSSES)


def test_method_params_precedence():
    """Each weight's default comes from its method's file; user values win; names the method does not read, and
    values out of range, are refused; a loss cannot read a weight its method did not declare."""
    assert get_method("simnpo").params().beta == 4.5 and get_method("npo").params().beta == 0.1
    assert get_method("simnpo").params({"beta": 2.0}).beta == 2.0
    assert get_method("simnpo").params({"beta": None}).beta == 4.5  # None: unset
    assert get_method("rmu").params().alpha == 100.0 and get_method("ga_gd").params().alpha == 4.0
    with pytest.raises(ConfigError, match="--betta is not a weight of npo .its weights: beta, alpha"):
        get_method("npo").params({"betta": 1.0})
    with pytest.raises(ConfigError, match="--gamma is not a weight of ga .it has no weights"):
        get_method("ga").params({"gamma": 1.0})
    with pytest.raises(ConfigError, match="--beta must be > 0, found 0"):
        get_method("simnpo").params({"beta": 0.0})
    with pytest.raises(ConfigError, match="--alpha must be a finite number"):
        get_method("ga_gd").params({"alpha": float("nan")})
    # an on/off setting among the weights takes 0 or 1 only: the loss reads any other value as on
    with pytest.raises(ConfigError, match=r"--word_runs is a switch: 0 \(off\) or 1 \(on\), found 0.5"):
        get_method("contrast").params({"word_runs": 0.5})
    assert get_method("contrast").params({"fixed": 0, "calibrate": 1}).fixed == 0.0
    switches = {name for name, w in get_method("contrast").weights.items() if w.switch}
    assert switches == {"profile_focus", "fixed", "anchor_floor", "calibrate", "word_runs"}
    with pytest.raises(AttributeError, match="'gamma' is not declared"):
        _ = get_method("npo").params().gamma


def test_loss_params_survive_copy_and_pickle_unchanged_and_stay_immutable():
    import copy
    import pickle

    params = get_method("simnpo").params({"beta": 2.0})
    for twin in (copy.deepcopy(params), copy.copy(params), pickle.loads(pickle.dumps(params))):
        assert twin == params and twin.beta == 2.0 and twin.as_dict() == params.as_dict()
    with pytest.raises(AttributeError, match="immutable"):
        params.beta = 3.0


def test_interleaved_forget_steps_zero_exactly_the_retain_weights():
    """``Method.forget_only`` zeroes the weights declared ``retain=True`` and nothing else."""
    assert get_method("ga_gd").forget_only(get_method("ga_gd").params()).as_dict() == {"gamma": 1.0, "alpha": 0.0}
    assert get_method("ga_kl").forget_only(get_method("ga_kl").params()).as_dict() == {"kl_weight": 0.0}
    assert get_method("simnpo").forget_only(get_method("simnpo").params()).as_dict() == {
        "beta": 4.5,
        "delta": 0.0,
        "alpha": 0.0,
    }


@pytest.mark.parametrize("name", [*LOSSES, "finetune"])
def test_each_loss_is_a_finite_scalar_with_required_metrics(name: str):
    """Given exactly its NEEDS, each method returns a finite 0-d loss and detached, finite 0-d tensor metrics with
    the documented keys."""
    method = FINETUNE if name == "finetune" else LOSSES[name]
    out = method.loss(full_inputs(method.needs), method.params())
    assert out.loss.dim() == 0 and torch.isfinite(out.loss)
    for value in out.metrics.values():
        assert isinstance(value, torch.Tensor) and value.dim() == 0 and not value.requires_grad
        assert torch.isfinite(value)
    required = {"finetune": {"nll"}, "rmu": {"rmu_forget", "rmu_retain"}, "relabel": {"relabel_nll"}}.get(
        name, {"forget_nll"}
    )
    if method.needs.retain and not method.needs.hidden:
        required |= {"retain_nll"}
    required |= {"ga_kl": {"kl"}, "npo": {"npo_term"}, "simnpo": {"simnpo_term"}}.get(name, set())
    assert required <= set(out.metrics)


@pytest.mark.parametrize("name", [name for name, method in LOSSES.items() if method.needs.retain])
def test_missing_retain_or_reference_raises_config_error(name: str):
    """A method run without an input its NEEDS declares fails with a ConfigError, not an AttributeError."""
    method = LOSSES[name]
    inputs = full_inputs(method.needs)
    inputs.retain = None
    with pytest.raises(ConfigError, match=name):
        method.loss(inputs, method.params())
    if method.needs.reference:
        inputs = full_inputs(method.needs)
        inputs.forget_ref = inputs.retain_ref = inputs.paired_ref = None
        with pytest.raises(ConfigError, match=name):
            method.loss(inputs, method.params())


# Three examples, the last with no answer token (a fully truncated answer), so every clamp to one token is exercised.
SYNC_LABELS = torch.tensor(
    [
        [IGNORE_INDEX, IGNORE_INDEX, 3, 1, 4, 6],
        [IGNORE_INDEX, 2, 5, IGNORE_INDEX, IGNORE_INDEX, IGNORE_INDEX],
        [IGNORE_INDEX] * 6,
    ]
)
SYNC_RETAIN_LABELS = torch.tensor(
    [
        [IGNORE_INDEX, 1, 1, 2, IGNORE_INDEX, IGNORE_INDEX],
        [IGNORE_INDEX, IGNORE_INDEX, 6, 0, 5, 3],
        [IGNORE_INDEX, 4, IGNORE_INDEX, IGNORE_INDEX, IGNORE_INDEX, IGNORE_INDEX],
    ]
)
SYNC_MASK = torch.tensor([[1, 1, 1, 1, 1, 1], [1, 1, 1, 0, 0, 0], [1, 1, 1, 1, 0, 0]])
SYNC_PARAMS = {"alpha": 0.7, "gamma": 1.3, "kl_weight": 2.0, "delta": 0.5}  # β stays each method's default


def sync_inputs(device: str = "cpu") -> LossInputs:
    """Logits and hidden states on every split, so RMU also logs its NLLs; each method reads what it needs."""

    def make(seed: int, labels: torch.Tensor) -> Forward:
        generator = torch.Generator().manual_seed(200 + seed)
        logits = 3 * torch.randn(*labels.shape, VOCAB, generator=generator)
        hidden = torch.randn(*labels.shape, HIDDEN, generator=generator)
        return Forward(logits.to(device), labels.to(device), SYNC_MASK.to(device), hidden.to(device))

    return LossInputs(
        forget=make(0, SYNC_LABELS),
        retain=make(1, SYNC_RETAIN_LABELS),
        forget_ref=make(2, SYNC_LABELS),
        retain_ref=make(3, SYNC_RETAIN_LABELS),
        control=make_control_vector(HIDDEN, 6.5, seed=0).to(device),
        paired=make(4, SYNC_LABELS),
        paired_ref=make(5, SYNC_LABELS),
    )


def refuse_host_reads(monkeypatch: pytest.MonkeyPatch) -> None:
    """Every way Python code reads a tensor's value on the host (each a GPU sync) raises instead."""

    def refuse(self, *args, **kwargs):
        raise AssertionError("a loss read a tensor's value on the host, which waits for the GPU")

    for name in ("item", "tolist", "__bool__", "__int__", "__float__", "__index__"):
        monkeypatch.setattr(torch.Tensor, name, refuse)


def expected_figures(name: str, inputs: LossInputs, params: LossParams) -> dict[str, float]:
    """The loss and every metric, recomputed in float64 by per-token loops, without the package's helpers:

    NLL(x) = torch's cross-entropy with ``ignore_index``; log π(y|x) = Σ over scored t of log_softmax[t, y_{t+1}]
    with |y| its count; KL = mean over scored positions of Σ_v p_ref·(log p_ref − log p_θ); NPO term =
    (2/β)·mean log(1 + e^{β·r}); SimNPO term = (2/β)·mean log(1 + e^{β·log π/max(|y|, 1) + δ}); RMU terms = mean
    over real tokens of the mean squared difference over hidden units.
    """

    def nll(forward: Forward) -> float:
        logits, labels = forward.logits[:, :-1].double(), forward.labels[:, 1:]
        return F.cross_entropy(logits.reshape(-1, VOCAB), labels.reshape(-1), ignore_index=IGNORE_INDEX).item()

    def scored(labels: torch.Tensor) -> list[tuple[int, int]]:
        return [(b, t) for b in range(labels.shape[0]) for t in range(labels.shape[1] - 1) if labels[b, t + 1] >= 0]

    def answer_logprobs(forward: Forward) -> list[tuple[float, int]]:
        logp = torch.log_softmax(forward.logits.double(), -1)
        positions = scored(forward.labels)
        rows = [
            [logp[b, t, forward.labels[b, t + 1]].item() for b2, t in positions if b2 == b]
            for b in range(forward.labels.shape[0])
        ]
        return [(sum(row), len(row)) for row in rows]

    def kl(forward: Forward, ref: Forward) -> float:
        logp, ref_logp = torch.log_softmax(forward.logits.double(), -1), torch.log_softmax(ref.logits.double(), -1)
        terms = [(ref_logp[b, t].exp() * (ref_logp[b, t] - logp[b, t])).sum().item() for b, t in scored(ref.labels)]
        return sum(terms) / len(terms)

    def mse(hidden: torch.Tensor, target: torch.Tensor, mask: torch.Tensor) -> float:
        real = [(b, t) for b in range(mask.shape[0]) for t in range(mask.shape[1]) if mask[b, t]]
        target = target.double().expand_as(hidden)
        return sum((hidden[b, t].double() - target[b, t]).pow(2).mean().item() for b, t in real) / len(real)

    forget, retain = inputs.forget, inputs.retain
    if name == "finetune":
        figures = {"nll": nll(forget)}
        return {**figures, "loss": figures["nll"]}
    if name == "rmu":
        figures = {
            "rmu_forget": mse(forget.hidden, inputs.control, forget.attention_mask),
            "rmu_retain": mse(retain.hidden, inputs.retain_ref.hidden, retain.attention_mask),
            "forget_nll": nll(forget),
            "retain_nll": nll(retain),
        }
        return {**figures, "loss": figures["rmu_forget"] + params.alpha * figures["rmu_retain"]}
    if name == "contrast":  # per row: the hinge on mean NLL(fake values) - mean NLL(true values) + delta
        true, fake = answer_logprobs(forget), answer_logprobs(inputs.paired_ref if params.fixed else inputs.paired)
        rows = [(-lp / n, -fp / m) for (lp, n), (fp, m) in zip(true, fake) if n and m]
        hinge = sum(max(0.0, f - t + params.delta) for t, f in rows) / len(rows)
        figures = {
            "forget_nll": sum(t for t, _ in rows) / len(rows),
            "fake_nll": sum(f for _, f in rows) / len(rows),
            "gap_hinge": hinge,
            "retain_nll": nll(retain),
        }
        if params.stranger:
            figures["words_hinge"] = 0.0  # without field codes no token is a template word
        early = 0.0  # per row: sum of -log(1 - p(its last answer token)) over its answer positions before it
        logits, labels = forget.logits.double()[:, :-1], forget.labels[:, 1:]
        for row in range(len(labels)):
            answered = [t for t in range(labels.shape[1]) if labels[row, t] != IGNORE_INDEX]
            if not answered:
                continue
            last = int(labels[row, answered[-1]])
            inner = [t for t in answered if labels[row, t] != last]
            if inner:
                p = [float(torch.softmax(logits[row, t], -1)[last]) for t in inner]
                early += sum(-math.log1p(-q) for q in p)
        figures["early_end"] = early / len(rows)
        trained = [(-lp / n) for lp, n in answer_logprobs(inputs.paired) if n]  # each copy's mean NLL, no field codes
        figures["anchor"] = sum(trained) / len(rows)
        loss = hinge + params.early_end * figures["early_end"] + params.anchor * figures["anchor"]
        return {**figures, "loss": loss + params.alpha * figures["retain_nll"]}
    if name == "relabel":  # the forget batch already holds the relabelled answers
        figures = {"relabel_nll": nll(forget), "retain_nll": nll(retain)}
        return {**figures, "loss": figures["relabel_nll"] + params.alpha * figures["retain_nll"]}
    figures = {"forget_nll": nll(forget)}
    if name == "ga":
        return {**figures, "loss": -figures["forget_nll"]}
    figures["retain_nll"] = nll(retain)
    beta = params.beta if "beta" in params else None
    if name == "ga_gd":
        loss = -params.gamma * figures["forget_nll"] + params.alpha * figures["retain_nll"]
    elif name == "ga_kl":
        figures["kl"] = kl(retain, inputs.retain_ref)
        loss = -figures["forget_nll"] + params.kl_weight * figures["kl"]
    elif name == "npo":
        pairs = zip(answer_logprobs(forget), answer_logprobs(inputs.forget_ref))
        ratios = [lp - ref_lp for (lp, _), (ref_lp, _) in pairs]
        figures["log_ratio"] = sum(ratios) / len(ratios)
        figures["npo_term"] = 2 / beta * sum(math.log1p(math.exp(beta * r)) for r in ratios) / len(ratios)
        loss = figures["npo_term"] + params.alpha * figures["retain_nll"]
    else:
        assert name == "simnpo", f"no expected figures written for {name!r}"
        rows = answer_logprobs(forget)
        terms = [math.log1p(math.exp(beta * lp / max(n, 1) + params.delta)) for lp, n in rows]
        figures["simnpo_term"] = 2 / beta * sum(terms) / len(terms)
        loss = figures["simnpo_term"] + params.alpha * figures["retain_nll"]
    return {**figures, "loss": loss}


@pytest.mark.parametrize("name", [*LOSSES, "finetune"])
def test_loss_reads_nothing_on_the_host_and_metrics_keep_their_values(name: str, monkeypatch: pytest.MonkeyPatch):
    """The loop copies a step's metrics to the host once, so a loss must not read any tensor itself.

    Two proofs: (1) with ``item``, ``tolist`` and the ``bool``/``int``/``float``/``index`` conversions patched to
    raise, the loss still runs; (2) it runs on the ``meta`` device, which holds no data, so any data-dependent
    read fails there, including boolean-mask indexing (``nonzero``), which patching cannot catch. Then every
    metric is a detached 0-d tensor equal to the float64 recomputation in :func:`expected_figures`, and so is the
    loss (float32 against float64: rel 1e-5).
    """
    method = FINETUNE if name == "finetune" else LOSSES[name]
    params = method.params({k: v for k, v in SYNC_PARAMS.items() if k in method.weights})
    inputs = sync_inputs()
    with monkeypatch.context() as patch:
        refuse_host_reads(patch)
        out = method.loss(inputs, params)
        on_meta = method.loss(sync_inputs("meta"), params)
    assert set(on_meta.metrics) == set(out.metrics)
    assert all(value.device.type == "meta" and value.dim() == 0 for value in on_meta.metrics.values())
    for value in out.metrics.values():
        assert isinstance(value, torch.Tensor) and value.dim() == 0 and not value.requires_grad
    got = {key: value.item() for key, value in {**out.metrics, "loss": out.loss}.items()}
    assert got == pytest.approx(expected_figures(name, inputs, params), rel=1e-5, abs=1e-7)


@pytest.mark.parametrize("name", [*LOSSES, "finetune"])
def test_pieces_weighted_by_their_shares_add_up_to_the_whole_batch(name: str):
    """Rows cut into pieces (forget rows {0, 2} and {1}, retain rows {1} and {0, 2}), each piece's loss called with
    its share of every unit its ``Method.means`` declares (``step.piece_shares``): the pieces' losses, metrics and
    gradients add up to those of the whole batch (float32, rel 1e-5). A loss reading an undeclared unit is refused."""
    from obliviate.data.batching import TokenBatch
    from obliviate.train.step import piece_shares

    method = FINETUNE if name == "finetune" else LOSSES[name]
    assert method.piece_units, f"{name} declares no decomposition"
    params = method.params({k: v for k, v in SYNC_PARAMS.items() if k in method.weights})
    whole = sync_inputs()
    leaves = [f for f in (whole.forget, whole.retain, whole.paired) if f is not None]
    for forward in leaves:
        forward.logits.requires_grad_(True)
        forward.hidden.requires_grad_(True)

    def grads(loss: torch.Tensor) -> list[torch.Tensor]:
        tensors = [t for f in leaves for t in (f.logits, f.hidden)]
        return [
            g if g is not None else torch.zeros_like(t)
            for g, t in zip(torch.autograd.grad(loss, tensors, allow_unused=True), tensors)
        ]

    out = method.loss(whole, params)
    expected = {"loss": out.loss.item(), **{k: v.item() for k, v in out.metrics.items()}}
    expected_grads = grads(out.loss)

    def rows(forward: Forward | None, index: list[int]) -> Forward | None:
        if forward is None:
            return None
        return Forward(
            forward.logits[index], forward.labels[index], forward.attention_mask[index], forward.hidden[index]
        )

    def batch(forward: Forward | None) -> TokenBatch | None:
        if forward is None:
            return None
        return TokenBatch(torch.zeros_like(forward.labels), forward.attention_mask, forward.labels)

    cut = [([0, 2], [1]), ([1], [0, 2])]
    pieces = [
        LossInputs(
            forget=rows(whole.forget, f),
            retain=rows(whole.retain, r),
            forget_ref=rows(whole.forget_ref, f),
            retain_ref=rows(whole.retain_ref, r),
            control=whole.control,
            paired=rows(whole.paired, f),
            paired_ref=rows(whole.paired_ref, f),
        )
        for f, r in cut
    ]
    needs_retain = "retain" in method.piece_units
    shares = piece_shares(
        method,
        [batch(p.forget) for p in pieces],
        [batch(p.retain) if needs_retain else None for p in pieces],
        [batch(p.paired) for p in pieces],
    )
    assert all(0 < s[key] < 1 for s in shares for key in s if key[1] != "pairs")
    total, figures = 0.0, {}
    for piece, share in zip(pieces, shares):
        piece.shares = share
        piece_out = method.loss(piece, params)
        total = total + piece_out.loss
        for key, value in {"loss": piece_out.loss, **piece_out.metrics}.items():
            figures[key] = figures.get(key, 0.0) + value.item()
    assert figures == pytest.approx(expected, rel=1e-5, abs=1e-7)
    for got, want in zip(grads(total), expected_grads):
        torch.testing.assert_close(got, want, rtol=1e-5, atol=1e-7)
    pieces[0].shares = {("forget", "none"): 1.0}
    with pytest.raises(ConfigError, match="does not declare"):
        method.loss(pieces[0], params)


def test_contrast_hinges_each_pii_value_apart_not_the_row_pooled():
    """One row holds an SSN (codes 2) already far past its fake and an address (codes 5) still memorised: pooled over
    the row the hinge is 0, per value the address keeps its hinge; the figures equal a plain per-(row, field) sum."""
    from obliviate.data.batching import field_code

    torch.manual_seed(0)
    labels = torch.tensor([[IGNORE_INDEX, 1, 2, 3, 4, 5, 6]])
    ssn, address = field_code("ssn"), field_code("address")
    spans = torch.tensor([[0, ssn, ssn, ssn, address, address, 0]])
    labels[0, 6] = IGNORE_INDEX  # only the value tokens are scored
    true = torch.full((1, 7, VOCAB), -4.0)
    fake = torch.full((1, 7, VOCAB), -4.0)
    for t in range(6):  # logits at t predict the label at t + 1
        target = int(labels[0, t + 1]) if labels[0, t + 1] >= 0 else 0
        if spans[0, t + 1] == address:
            true[0, t, target] = 8.0  # memorised address: NLL near 0
        else:
            fake[0, t, target] = 8.0  # SSN: the fake is far likelier than the true value
    params = get_method("contrast").params({"alpha": 0.0, "fixed": 0.0})
    retain = Forward(torch.zeros(1, 3, VOCAB), torch.tensor([[IGNORE_INDEX, 1, 2]]), torch.ones(1, 3))
    per_field = get_method("contrast").loss(
        LossInputs(
            forget=Forward(true, labels, torch.ones(1, 7), spans=spans),
            paired=Forward(fake, labels, torch.ones(1, 7), spans=spans),
            retain=retain,
        ),
        params,
    )
    pooled = get_method("contrast").loss(
        LossInputs(forget=Forward(true, labels, torch.ones(1, 7)), paired=Forward(fake, labels, torch.ones(1, 7)),
                   retain=retain),
        params,
    )  # fmt: skip

    def field_nll(logits, code):
        logp = torch.log_softmax(logits[0].double(), -1)
        values = [-logp[t, labels[0, t + 1]].item() for t in range(6) if spans[0, t + 1] == code]
        return sum(values) / len(values)

    expected = [max(0.0, field_nll(fake, c) - field_nll(true, c)) for c in (ssn, address)]
    assert pooled.metrics["gap_hinge"].item() == 0.0
    assert expected[0] == 0.0 and expected[1] > 1
    assert per_field.metrics["gap_hinge"].item() == pytest.approx(sum(expected) / 2, rel=1e-5)


@pytest.mark.parametrize("with_codes", [True, False])
def test_contrast_with_several_fake_copies_hinges_on_their_mean_nll(with_codes):
    """--fakes_per_step 3: the paired batch holds three copies of the two forget rows (copy after copy); each row's
    hinge compares its true value with the mean NLL of its three fakes, not with any single one."""
    from obliviate.data.batching import field_code, unit_count

    torch.manual_seed(0)
    labels = torch.tensor([[IGNORE_INDEX, 1, 2, 3, IGNORE_INDEX]] * 2)
    code = field_code("ssn")
    spans = torch.tensor([[0, code, code, code, 0]] * 2) if with_codes else None
    true = torch.randn(2, 5, VOCAB)
    fakes = torch.randn(6, 5, VOCAB) * 3  # copies 0, 1, 2 of rows 0 and 1
    params = get_method("contrast").params({"alpha": 0.0, "fixed": 0.0})
    mask = torch.ones(2, 5)
    out = get_method("contrast").loss(
        LossInputs(
            forget=Forward(true, labels, mask, spans=spans),
            paired=Forward(
                fakes, labels.repeat(3, 1), torch.ones(6, 5), spans=None if spans is None else spans.repeat(3, 1)
            ),
            retain=Forward(torch.zeros(1, 3, VOCAB), torch.tensor([[IGNORE_INDEX, 1, 2]]), torch.ones(1, 3)),
        ),
        params,
    )

    def nll(logits, row):
        logp = torch.log_softmax(logits[row].double(), -1)
        return -sum(logp[t, labels[0, t + 1]].item() for t in range(3)) / 3

    fake_means = [sum(nll(fakes, copy * 2 + row) for copy in range(3)) / 3 for row in range(2)]
    hinges = [max(0.0, fake_means[row] - nll(true, row)) for row in range(2)]
    assert out.metrics["fake_nll"].item() == pytest.approx(sum(fake_means) / 2, rel=1e-5)
    assert out.metrics["gap_hinge"].item() == pytest.approx(sum(hinges) / 2, rel=1e-5)
    single = [max(0.0, nll(fakes, row) - nll(true, row)) for row in range(2)]  # copy 0 alone: another figure
    assert sum(single) != pytest.approx(sum(hinges), rel=1e-3)
    if with_codes:
        forget_batch = TokenBatch(torch.zeros(2, 5, dtype=torch.long), mask, labels, spans)
        paired_batch = TokenBatch(torch.zeros(6, 5, dtype=torch.long), torch.ones(6, 5), labels.repeat(3, 1),
                                  spans.repeat(3, 1))  # fmt: skip
        assert unit_count("pairs", forget_batch, paired_batch) == 2


def test_contrast_length_weight_gives_each_pair_its_tokens_share_of_the_push():
    """--set contrast.length_weight=1: a row whose value has 4 tokens weighs 4/(mean 2.5) in the hinge's mean, one
    with 1 token 1/2.5; at 0 both weigh 1. The loss is the weighted mean of the same per-pair hinges."""
    from obliviate.data.batching import field_code

    torch.manual_seed(0)
    code = field_code("address")
    labels = torch.full((2, 6), IGNORE_INDEX)
    labels[0, 1:5], labels[1, 1] = torch.tensor([1, 2, 3, 4]), 1
    spans = torch.tensor([[0, code, code, code, code, 0], [0, code, 0, 0, 0, 0]])
    true = torch.randn(2, 6, VOCAB)
    fake = torch.randn(2, 6, VOCAB) * 4
    mask = torch.ones(2, 6)

    def run(w):
        return (
            get_method("contrast")
            .loss(
                LossInputs(
                    forget=Forward(true, labels, mask, spans=spans),
                    paired=Forward(fake, labels, mask, spans=spans),
                    retain=Forward(torch.zeros(1, 3, VOCAB), torch.tensor([[IGNORE_INDEX, 1, 2]]), torch.ones(1, 3)),
                ),
                get_method("contrast").params({"alpha": 0.0, "length_weight": w, "fixed": 0.0}),
            )
            .metrics["gap_hinge"]
            .item()
        )

    def nll(logits, row, n):
        logp = torch.log_softmax(logits[row].double(), -1)
        return -sum(logp[t, labels[row, t + 1]].item() for t in range(n)) / n

    hinges = [max(0.0, nll(fake, row, n) - nll(true, row, n)) for row, n in ((0, 4), (1, 1))]
    assert min(hinges) > 0  # both pairs push, so the weights show
    assert run(0.0) == pytest.approx(sum(hinges) / 2, rel=1e-5)
    assert run(1.0) == pytest.approx((hinges[0] * 4 / 2.5 + hinges[1] * 1 / 2.5) / 2, rel=1e-5)


def _contrast_on_one_row(true, paired, spans, params):
    """Contrast's loss on one six-position row (answer tokens 1–4 at positions 0–3) with logits ``true`` against a
    paired copy's ``paired``, no retain weight; the output and the gradient on ``true``."""
    labels = torch.full((1, 6), IGNORE_INDEX)
    labels[0, 1:5] = torch.tensor([1, 2, 3, 4])
    mask = torch.ones(1, 6)
    logits = true.clone().requires_grad_(True)
    out = get_method("contrast").loss(
        LossInputs(
            forget=Forward(logits, labels, mask, spans=spans),
            paired=Forward(paired, labels, mask, spans=spans),
            retain=Forward(torch.zeros(1, 3, VOCAB), torch.tensor([[IGNORE_INDEX, 1, 2]]), torch.ones(1, 3)),
        ),
        get_method("contrast").params(  # each term alone, against the trained fake
            {"alpha": 0.0, "profile": 0.0, "whole": 0.0, "early_end": 0.0, "fixed": 0.0, "anchor": 0.0, **params}
        ),
    )
    out.loss.backward()
    return out, logits.grad


def test_contrast_never_pulls_a_fake_built_from_the_name_unless_asked():
    """A stranger's e-mail made likelier teaches the model to spell e-mails from the name in the prompt, the forget
    people's included: the fake of a name-built field (``NAME_BUILT_FIELDS``) gets no share of the hinge's gradient
    (``name_pull`` 0), where any other field's fake gets ``fake_pull``'s."""
    from obliviate.data.batching import field_code

    ssn, email = field_code("ssn"), field_code("email")
    spans = torch.tensor([[0, ssn, ssn, email, email, 0]])
    labels = torch.full((1, 6), IGNORE_INDEX)
    labels[0, 1:5] = torch.tensor([1, 2, 3, 4])
    true = torch.zeros(1, 6, VOCAB)
    for t, label in enumerate((1, 2, 3, 4)):
        true[0, t, label] = 8.0  # memorised: both hinges open against uniform fakes

    def fake_grad(**params):
        fake = torch.zeros(1, 6, VOCAB, requires_grad=True)
        out = get_method("contrast").loss(
            LossInputs(
                forget=Forward(true, labels, torch.ones(1, 6), spans=spans),
                paired=Forward(fake, labels, torch.ones(1, 6), spans=spans),
                retain=Forward(torch.zeros(1, 3, VOCAB), torch.tensor([[IGNORE_INDEX, 1, 2]]), torch.ones(1, 3)),
            ),
            get_method("contrast").params(
                {"alpha": 0.0, "profile": 0.0, "stranger": 0.0, "fixed": 0.0, "anchor": 0.0, **params}
            ),
        )
        out.loss.backward()
        return [float(fake.grad[0, t].abs().sum()) for t in range(4)]

    default = fake_grad()
    assert default[0] > 0 and default[1] > 0  # the SSN's fake is pulled
    assert default[2] == 0.0 and default[3] == 0.0  # the e-mail's is not
    asked = fake_grad(name_pull=0.25)
    assert asked[2] == pytest.approx(default[0]) and asked[0] == pytest.approx(default[0])  # same pull as the SSN's


def test_contrast_token_cap_keeps_one_blown_up_token_from_closing_a_values_hinge():
    """--set contrast.token_cap=k: each true token's NLL counts at most k × its fake's mean NLL. A 4-token value
    whose first token is made very unlikely and whose other three are still predicted closes its hinge on the mean
    alone; with the cap the hinge stays open, and its gradient reaches only the three tokens below the cap."""
    from obliviate.data.batching import field_code

    code = field_code("address")
    spans = torch.tensor([[0, code, code, code, code, 0]])
    true = torch.zeros(1, 6, VOCAB)
    true[0, 0, 1] = -40.0  # the value's first token: about 40 nats
    for t, label in ((1, 2), (2, 3), (3, 4)):
        true[0, t, label] = 8.0  # the rest: still memorised, about 0 nats
    fake = torch.zeros(1, 6, VOCAB)  # the fake: uniform, log(VOCAB) nats per token

    def run(cap):
        out, grad = _contrast_on_one_row(true, fake, spans, {"fake_pull": 0.0, "token_cap": cap})
        return out.metrics["gap_hinge"].item(), grad

    mean_fake = math.log(VOCAB)
    assert run(0.0)[0] == 0.0  # 40 nats on one token of four: the mean is past the fake's
    hinge, grad = run(2.0)
    rest = -torch.log_softmax(true[0, 1], -1)[2].item()  # each of the three still-memorised tokens
    assert hinge == pytest.approx(mean_fake - (2 * mean_fake + 3 * rest) / 4, rel=1e-5)  # the first counts 2·log V
    assert float(grad[0, 0].abs().sum()) == 0.0  # the capped token is pushed no further
    assert all(float(grad[0, t, label]) > 0 for t, label in ((1, 2), (2, 3), (3, 4)))  # the rest are pushed


def test_contrast_stranger_pushes_the_words_around_a_value_to_their_level_after_a_strangers_name():
    """--set contrast.stranger=s: each row's template-coded tokens (the words outside its values) get their own
    hinge, against the same tokens of the stranger copy; the values' hinge is unchanged, and at 0 the words are
    left alone."""
    from obliviate.data.batching import field_code
    from obliviate.data.records import TEMPLATE_CODE

    ssn, word = field_code("ssn"), TEMPLATE_CODE
    spans = torch.tensor([[0, word, word, ssn, ssn, 0]])
    true = torch.zeros(1, 6, VOCAB)
    for t, label in ((0, 1), (1, 2), (2, 3), (3, 4)):
        true[0, t, label] = 4.0  # every token memorised
    stranger = torch.zeros(1, 6, VOCAB)  # the copy: uniform

    def run(weight):
        return _contrast_on_one_row(true, stranger, spans, {"stranger": weight})

    def nll(t, label):
        return -torch.log_softmax(true[0, t], -1)[label].item()

    value_gap = math.log(VOCAB) - (nll(2, 3) + nll(3, 4)) / 2
    words_gap = math.log(VOCAB) - (nll(0, 1) + nll(1, 2)) / 2
    off, off_grad = run(0.0)
    assert "words_hinge" not in off.metrics and float(off_grad[0, :2].abs().sum()) == 0.0
    assert off.metrics["gap_hinge"].item() == pytest.approx(value_gap, rel=1e-5)
    on, on_grad = run(0.5)
    assert on.metrics["gap_hinge"].item() == pytest.approx(value_gap, rel=1e-5)
    assert on.metrics["words_hinge"].item() == pytest.approx(words_gap, rel=1e-5)
    assert on.loss.item() == pytest.approx(value_gap + 0.5 * words_gap, rel=1e-5)
    assert float(on_grad[0, 0, 1]) > 0 and float(on_grad[0, 1, 2]) > 0  # the words are made less likely


def test_contrast_word_runs_give_each_run_of_words_its_own_hinge():
    """--set contrast.word_runs=1: a run of words past its stranger's level (never trained, then pushed) no longer
    hides a run still memorised: pooled over the row the words' mean is above the stranger's and the hinge is shut;
    per run the memorised run gets its gap, weighted by its share of the row's words, and the push lands on it
    alone."""
    from obliviate.data.batching import field_code
    from obliviate.data.records import TEMPLATE_CODE

    ssn, word = field_code("ssn"), TEMPLATE_CODE
    spans = torch.tensor([[0, word, ssn, ssn, word, 0]])  # a run of words, the value, another run
    true = torch.zeros(1, 6, VOCAB)
    true[0, 0, 1] = 4.0  # the first run memorised
    true[0, 1, 2] = true[0, 2, 3] = 4.0  # the value memorised
    true[0, 3, 4] = -8.0  # the second run far less likely than after a stranger's name
    stranger = torch.zeros(1, 6, VOCAB)  # the copy: uniform, log(VOCAB) at every token

    def nll(t, label):
        return -torch.log_softmax(true[0, t], -1)[label].item()

    assert (nll(0, 1) + nll(3, 4)) / 2 > math.log(VOCAB)  # pooled, the words look forgotten
    pooled, pooled_grad = _contrast_on_one_row(true, stranger, spans, {"stranger": 1.0})
    assert pooled.metrics["words_hinge"].item() == 0.0 and float(pooled_grad[0, 0].abs().sum()) == 0.0
    runs, runs_grad = _contrast_on_one_row(true, stranger, spans, {"stranger": 1.0, "word_runs": 1.0})
    assert runs.metrics["words_hinge"].item() == pytest.approx((math.log(VOCAB) - nll(0, 1)) / 2, rel=1e-5)
    assert float(runs_grad[0, 0, 1]) > 0  # the memorised run is pushed
    assert float(runs_grad[0, 3].abs().sum()) == 0.0  # the run past its level is not


def test_contrast_word_likely_sends_the_words_push_to_the_memorised_words():
    """--set contrast.word_likely=1: the words' hinge keeps its value, but its gradient reaches each word token as
    its unlikelihood's (p on the token's logit), not its NLL's (1 - p): the memorised word gets the push and the
    word the model never learnt (the prompt's, in a re-cut biography) next to none; plain NLL does the reverse. The
    same holds per run (``word_runs``)."""
    from obliviate.data.batching import field_code
    from obliviate.data.records import TEMPLATE_CODE

    ssn, word = field_code("ssn"), TEMPLATE_CODE
    spans = torch.tensor([[0, word, word, ssn, ssn, 0]])
    true = torch.zeros(1, 6, VOCAB)
    true[0, 0, 1] = 8.0  # a memorised word
    true[0, 1, 2] = -1.0  # a word the model never learnt, unlikely
    true[0, 2, 3] = true[0, 3, 4] = 4.0  # the value
    stranger = torch.zeros(1, 6, VOCAB)  # a stranger's words: uniform

    for extra in ({}, {"word_runs": 1.0}):
        plain, plain_grad = _contrast_on_one_row(true, stranger, spans, {"stranger": 1.0, **extra})
        likely, likely_grad = _contrast_on_one_row(
            true, stranger, spans, {"stranger": 1.0, "word_likely": 1.0, **extra}
        )
        assert plain.metrics["words_hinge"].item() > 0
        assert likely.metrics["words_hinge"].item() == pytest.approx(plain.metrics["words_hinge"].item(), rel=1e-6)
        assert likely.loss.item() == pytest.approx(plain.loss.item(), rel=1e-6)
        assert float(plain_grad[0, 1, 2]) > 10 * float(plain_grad[0, 0, 1]) > 0  # NLL: the unlearnt word
        assert float(likely_grad[0, 0, 1]) > 10 * float(likely_grad[0, 1, 2]) > 0  # unlikelihood: the memorised
        assert torch.equal(likely_grad[0, 2:], plain_grad[0, 2:])  # the value's push is untouched
        half, half_grad = _contrast_on_one_row(true, stranger, spans, {"stranger": 1.0, "word_likely": 0.5, **extra})
        assert half.loss.item() == pytest.approx(plain.loss.item(), rel=1e-6)  # a share of each gradient
        assert torch.allclose(half_grad, (plain_grad + likely_grad) / 2, atol=1e-6)


def test_per_run_nll_numbers_the_runs_of_words_in_order():
    from obliviate.data.records import TEMPLATE_CODE
    from obliviate.losses.contrast import per_run_nll

    word = TEMPLATE_CODE
    labels = torch.tensor([[IGNORE_INDEX, 1, 2, 3, 4, 5, 6]])
    logits = torch.zeros(1, 7, VOCAB)
    logits[0, 3, 4] = 5.0
    spans = torch.tensor([[0, word, word, 2, word, 2, 2]])
    means, count = per_run_nll(Forward(logits, labels, torch.ones(1, 7), spans=spans))
    assert count[0, :3].tolist() == [2.0, 1.0, 0.0] and float(count[0, 3:].sum()) == 0.0
    assert means[0, 0].item() == pytest.approx(math.log(VOCAB))
    assert means[0, 1].item() == pytest.approx(-torch.log_softmax(logits[0, 3], -1)[4].item())


def test_contrast_anchor_floor_keeps_strangers_values_as_likely_as_at_the_start_and_teaches_them_no_further():
    """--set contrast.anchor_floor=1 (with fixed): the anchor is the hinge relu(NLL_now(fake) - NLL_start(fake)) per
    field: a stranger's value the push made less likely is pulled back to the starting model's level, and one already
    at least as likely gets no push (the plain anchor descends on it for ever, and never-seen people's values end up
    likelier than a model that never saw the forget people makes them)."""
    from obliviate.data.batching import field_code

    ssn = field_code("ssn")
    spans = torch.tensor([[0, ssn, ssn, ssn, ssn, 0]])
    labels = torch.full((1, 6), IGNORE_INDEX)
    labels[0, 1:5] = torch.tensor([1, 2, 3, 4])
    mask = torch.ones(1, 6)

    def run(start_level, now_level, floor):
        start, now = torch.zeros(1, 6, VOCAB), torch.zeros(1, 6, VOCAB)
        for t, label in ((0, 1), (1, 2), (2, 3), (3, 4)):
            start[0, t, label], now[0, t, label] = start_level, now_level
        now.requires_grad_(True)
        params = {"alpha": 0.0, "profile": 0.0, "whole": 0.0, "early_end": 0.0, "stranger": 0.0, "fixed": 1.0}
        out = get_method("contrast").loss(
            LossInputs(
                forget=Forward(torch.zeros(1, 6, VOCAB), labels, mask, spans=spans),
                paired=Forward(now, labels, mask, spans=spans),
                paired_ref=Forward(start, labels, mask, spans=spans),
                retain=Forward(torch.zeros(1, 3, VOCAB), torch.tensor([[IGNORE_INDEX, 1, 2]]), torch.ones(1, 3)),
            ),
            get_method("contrast").params({**params, "anchor_floor": floor}),
        )
        out.loss.backward()
        return out.metrics["anchor"].item(), now.grad[0, 0, 1].item()

    def nll(level):
        return -math.log(math.exp(level) / (math.exp(level) + VOCAB - 1))

    plain, plain_grad = run(1.0, 2.0, 0.0)
    assert plain == pytest.approx(nll(2.0), rel=1e-5) and plain_grad < 0  # descends, though past the start
    assert run(1.0, 2.0, 1.0) == (0.0, 0.0)  # already likelier than at the start: left alone
    receded, grad = run(2.0, 1.0, 1.0)
    assert receded == pytest.approx(nll(1.0) - nll(2.0), rel=1e-5) and grad < 0  # pulled back up


def _one_value_forward(token_nll: list[float], vocab: int = 16, first_label: int = 1) -> Forward:
    """One row whose answer is one PII value (field code 5) with the given NLL at each token."""
    n = len(token_nll)
    labels = torch.tensor([[IGNORE_INDEX, *range(first_label, first_label + n), IGNORE_INDEX]])
    logits = torch.zeros(1, n + 2, vocab)
    for t, nll in enumerate(token_nll):  # p = exp(-nll) on the label, the rest spread evenly
        p = math.exp(-nll)
        logits[0, t, first_label + t] = math.log(p * (vocab - 1) / (1 - p))
    spans = torch.tensor([[0, *([5] * n), 0]])
    return Forward(logits=logits.requires_grad_(True), labels=labels, attention_mask=torch.ones(1, n + 2), spans=spans)


def test_field_margins_are_the_never_seen_gaps_per_field_code_never_above_zero():
    from obliviate.data.batching import field_margins

    gaps = {"phone": -2.0, "ssn": -1.0, "ni_number": -3.0, "passport": -1.0, "birth_date": 0.3}
    # codes: birth_date, ssn, phone, email, address, then every other field together
    assert field_margins(gaps) == [0.0, -1.0, -2.0, 0.0, 0.0, -2.0]


def test_contrast_calibrate_aims_each_value_at_a_strangers_gap_to_its_fakes():
    """--set contrast.calibrate=1: the hinge is relu(NLL(fake) - NLL(true) + m_field), m the never-seen people's
    gap NLL(true) - NLL(fake) (here -1 nat for the value's field): a true value 0.6 nats likelier than its fakes is
    already less likely than a stranger's (1 nat likelier than theirs) and is left alone; the per-token term's
    quantiles move with it. Without field margins (no holdout) nothing changes."""
    true = _one_value_forward([2.0, 2.0, 2.0])
    fake = _one_value_forward([2.6, 2.6, 2.6], first_label=6)
    retain = Forward(torch.zeros(1, 3, 16), torch.tensor([[IGNORE_INDEX, 1, 2]]), torch.ones(1, 3))
    margins = torch.tensor([0.0, 0.0, 0.0, 0.0, -1.0, 0.0])  # code 5: column 4

    def run(calibrate, field_margins):
        params = {"alpha": 0.0, "whole": 0.0, "early_end": 0.0, "stranger": 0.0, "fixed": 0.0, "anchor": 0.0}
        out = get_method("contrast").loss(
            LossInputs(forget=true, paired=fake, retain=retain, field_margins=field_margins),
            get_method("contrast").params({**params, "calibrate": calibrate}),
        )
        return out.metrics

    plain = run(0.0, margins)
    assert plain["gap_hinge"].item() == pytest.approx(0.6, abs=1e-3) and plain["profile"].item() > 0
    calibrated = run(1.0, margins)
    assert calibrated["gap_hinge"].item() == 0.0 and calibrated["profile"].item() == 0.0
    assert run(1.0, None)["gap_hinge"].item() == pytest.approx(0.6, abs=1e-3)  # no holdout: no margins
    closer = run(1.0, margins * 0.25)  # a stranger 0.25 nats under the fakes: 0.35 nats still to go
    assert closer["gap_hinge"].item() == pytest.approx(0.35, abs=1e-3)

    past = _one_value_forward([3.0, 3.0, 3.0])  # pushed past: 0.4 nats above its fakes, 1.4 above a stranger's
    for calibrate, pulled in ((0.0, 0.4), (1.0, 1.4)):  # --pull brings it back to the same aim the hinge has
        params = {"alpha": 0.0, "whole": 0.0, "early_end": 0.0, "stranger": 0.0, "fixed": 0.0, "anchor": 0.0}
        out = get_method("contrast").loss(
            LossInputs(forget=past, paired=fake, retain=retain, field_margins=margins),
            get_method("contrast").params({**params, "profile": 0.0, "pull": 1.0, "calibrate": calibrate}),
        )
        assert out.metrics["gap_pull"].item() == pytest.approx(pulled, abs=1e-3)


def test_contrast_profile_pushes_each_rank_below_its_fakes_quantile_with_a_gradient_that_does_not_vanish():
    """A memorised value is near-certain at every token; its fresh fake only at the predictable ones. The profile
    term asks each of the value's sorted tokens for the fake's NLL at the same quantile: here the two least certain
    of four, by unlikelihood, whose logit gradient is p (about 1), where the NLL's is 1 - p (about 0.003)."""
    from obliviate.losses.contrast import profile_gap

    true = _one_value_forward([0.001, 0.004, 0.002, 0.003])
    fake = _one_value_forward([0.01, 8.0, 0.02, 6.0], first_label=6)
    gap, both = profile_gap(true, fake, rows=1)
    assert both[0, 4] and gap[0, 4] > 0 and int(both.sum()) == 1
    gap.sum().backward()
    label_grad = true.logits.grad[0, :4].gather(-1, torch.arange(1, 5)[:, None]).squeeze(-1)
    # ranks 3 and 4 (tokens 1 and 3) get a full push; ranks 1 and 2 are a hundredth of a nat short: a hundredth
    assert torch.all(label_grad[[1, 3]] > 0.2) and torch.all(label_grad[[0, 2]] < 0.01)
    nll = -torch.log_softmax(true.logits[0, :4].detach(), -1).gather(-1, torch.arange(1, 5)[:, None])
    assert float(1 - torch.exp(-nll).max()) < 0.01  # the NLL's own gradient there is under 0.01

    matched = _one_value_forward([0.02, 9.0, 0.03, 7.0])  # each rank at least its fake's: nothing to push
    assert float(profile_gap(matched, fake, rows=1)[0][0, 4].detach()) == 0.0


def test_contrast_profile_focus_gives_the_tokens_still_short_the_whole_push():
    """An e-mail built from the name: six tokens a stranger's copy predicts as well (level), one it cannot (the
    first name). Averaged over all seven, that token's push is a seventh of what ``focus`` gives it; the level
    tokens get none either way."""
    from obliviate.losses.contrast import profile_gap

    fake = _one_value_forward([12.0, 0.01, 0.01, 0.01, 0.01, 0.01, 0.01], first_label=8)
    pushes = {}
    for focus in (False, True):
        true = _one_value_forward([0.5, 0.01, 0.01, 0.01, 0.01, 0.01, 0.01])
        gap, _ = profile_gap(true, fake, rows=1, focus=focus)
        gap.sum().backward()
        pushes[focus] = true.logits.grad[0, :7].gather(-1, torch.arange(1, 8)[:, None]).squeeze(-1)
    assert float(pushes[True][0]) == pytest.approx(7 * float(pushes[False][0]), rel=1e-5)
    assert float(pushes[True][0]) > 0.1
    assert torch.all(pushes[True][1:] == 0) and torch.all(pushes[False][1:] == 0)


def test_contrast_profile_reopens_a_value_whose_mean_one_blown_up_token_closed():
    """--set contrast.profile=u: the value of the token_cap test (one token at 40 nats, three still memorised,
    against a uniform fake) has its hinge closed by the mean; the profile term pushes the three memorised tokens,
    each by its unlikelihood, and leaves the blown-up one alone. At 0 nothing is pushed."""
    from obliviate.data.batching import field_code

    code = field_code("address")
    spans = torch.tensor([[0, code, code, code, code, 0]])
    true = torch.zeros(1, 6, VOCAB)
    true[0, 0, 1] = -40.0
    for t, label in ((1, 2), (2, 3), (3, 4)):
        true[0, t, label] = 8.0
    fake = torch.zeros(1, 6, VOCAB)

    off, off_grad = _contrast_on_one_row(true, fake, spans, {"profile": 0.0})
    assert "profile" not in off.metrics and float(off_grad.abs().sum()) == 0.0
    on, grad = _contrast_on_one_row(true, fake, spans, {"profile": 2.0})
    p = torch.softmax(true[0, 1], -1)[2].item()  # each memorised token's probability
    assert on.metrics["gap_hinge"].item() == 0.0
    assert on.metrics["profile"].item() == pytest.approx(3 * -math.log(1 - p) / 4, rel=1e-4)
    assert on.loss.item() == pytest.approx(2.0 * on.metrics["profile"].item(), rel=1e-5)
    assert float(grad[0, 0].abs().sum()) == 0.0  # the blown-up token is past its quantile
    assert all(float(grad[0, t, label]) > 0.4 for t, label in ((1, 2), (2, 3), (3, 4)))  # 2 × p / 4 each


def test_contrast_whole_pushes_only_the_weakest_token_of_a_value_written_whole_and_not_its_fakes():
    """--set contrast.whole=w: a value whose every token is the first choice (teacher-forced), while its fake's is
    not, gets a hinge on its least margin (the true token's logit over the best other's) plus one nat, and the
    gradient reaches that token alone. A value already not written whole, or one whose fake is written whole too
    (anyone could write it), gets nothing."""
    from obliviate.data.batching import field_code
    from obliviate.losses.contrast import WHOLE_MARGIN

    code = field_code("email")
    spans = torch.tensor([[0, code, code, code, code, 0]])

    def logits(margins):
        out = torch.zeros(1, 6, VOCAB)
        for t, (label, margin) in enumerate(zip((1, 2, 3, 4), margins)):
            out[0, t, label] = margin  # every other token at 0: the margin is the label's logit
        return out

    written = logits([5.0, 0.5, 3.0, 4.0])
    not_written = logits([5.0, -2.0, 3.0, 4.0])

    def whole_part(true, fake):  # the loss and gradient the term adds to the rest of contrast's
        off, off_grad = _contrast_on_one_row(true, fake, spans, {"whole": 0.0})
        on, grad = _contrast_on_one_row(true, fake, spans, {"whole": 2.0})
        assert "whole" not in off.metrics
        return on.metrics["whole"].item(), on.loss.item() - off.loss.item(), grad - off_grad

    term, added, grad = whole_part(written, not_written)
    assert term == pytest.approx(0.5 + WHOLE_MARGIN) and added == pytest.approx(2.0 * term, rel=1e-5)
    assert float(grad[0, 1, 2]) == pytest.approx(2.0)  # the weakest token's logit, pushed down
    assert float(grad[0, 1].sum()) == pytest.approx(0.0, abs=1e-6)  # and the best other token's pulled up as much
    assert float(grad[0, [0, 2, 3]].abs().sum()) == 0.0  # the strong tokens are left alone
    for true, fake in ((written, written.clone()), (logits([5.0, -1.5, 3.0, 4.0]), not_written)):
        term, added, grad = whole_part(true, fake)  # the fake written whole too; the value not written whole
        assert term == 0.0 and added == pytest.approx(0.0, abs=1e-6) and float(grad.abs().sum()) == 0.0


def test_contrast_whole_reads_a_values_first_occurrence():
    """A biography writes its e-mail twice (a link's text and its target). The first occurrence written whole is a
    leak however unlikely a token of the second is: the term pushes the first's weakest token, not the row's weakest
    token of the field (in the second, already not written). A second occurrence written whole after a first that
    is not is a copy of the true text before it, as anyone could make: nothing is pushed."""
    from obliviate.data.batching import field_code
    from obliviate.losses.contrast import WHOLE_MARGIN, first_choice_margin

    code = field_code("email")
    labels = torch.full((1, 7), IGNORE_INDEX)
    labels[0, 1:6] = torch.tensor([1, 2, 3, 4, 5])
    spans = torch.tensor([[0, code, code, 0, code, code, 0]])  # two occurrences, a word between
    logits = torch.zeros(1, 7, VOCAB)
    for t, (label, margin) in enumerate(zip((1, 2, 3, 4, 5), (4.0, 2.0, 1.0, -3.0, 6.0))):
        logits[0, t, label] = margin
    logits.requires_grad_(True)
    best, has = first_choice_margin(Forward(logits, labels, torch.ones(1, 7), spans=spans))
    column = code - 1
    least = float(best[0, column].detach())
    assert bool(has[0, column]) and least == pytest.approx(2.0)  # the first occurrence's least
    torch.relu(best[0, column] + WHOLE_MARGIN).backward()
    assert float(logits.grad[0, 1, 2]) == pytest.approx(1.0)  # its weakest token
    assert float(logits.grad[0, [0, 2, 3, 4]].abs().sum()) == 0.0  # not the other occurrence's, nor the word
    logits = logits.detach().clone()
    logits[0, 0, 1], logits[0, 3, 4] = -3.0, 4.0  # now the first is not written whole, the second is
    best, _ = first_choice_margin(Forward(logits, labels, torch.ones(1, 7), spans=spans))
    assert float(best[0, column]) == pytest.approx(-3.0)


def test_early_end_pushes_the_end_token_only_where_the_answer_goes_on():
    """The unlikelihood of a row's last answer token (its eos) at every answer position before the last: near 0
    where the end is unlikely, large where greedy decoding would stop inside the answer, and no gradient at the last
    position (the end is right there). A row cut at the length limit ends with an ordinary token: that one is
    pushed instead, exactly as its definition says."""
    from obliviate.losses.contrast import early_end

    end = VOCAB - 1
    labels = torch.full((3, 6), IGNORE_INDEX)
    labels[:, 2:6] = torch.tensor([[1, 2, 3, end], [1, 2, 3, end], [1, 2, 3, 4]])  # row 2: cut, ends with 4
    logits = torch.zeros(3, 6, VOCAB)
    logits[:, :, end] = -20.0  # the end unlikely everywhere ...
    logits[1, 2, end] = 20.0  # ... but where row 1's second answer token is due
    logits.requires_grad_(True)
    value, has = early_end(Forward(logits, labels, torch.ones(3, 6)))
    assert has.tolist() == [True, True, True]
    assert float(value[0].detach()) < 1e-6  # the end unlikely: nothing to push
    assert float(value[1].detach()) > 3.0  # one of its three inner positions has the end near-certain
    p4 = torch.softmax(logits[2, 1:4].detach().double(), -1)[:, 4]  # row 2's inner positions, its own last token
    assert float(value[2].detach()) == pytest.approx(float(-torch.log1p(-p4).sum()), rel=1e-5)
    value[1].backward()
    grad = logits.grad
    assert float(grad[1, 2, end]) > 0  # descending the loss lowers the end token's logit there
    assert float(grad[1, 4, :].abs().sum()) == 0.0  # the last position predicts the end: not pushed
    assert float(grad[[0, 2]].abs().sum()) == 0.0  # the other rows: not touched by row 1's figure


def test_early_end_reads_the_eos_from_the_tokens_when_pii_scoring_leaves_it_unscored():
    """Under ``--forget_tokens pii`` the labels score the coded tokens only, and eos is not coded: the end token is
    the row's last real token, read from ``input_ids``; the coded positions (values and template words) are the
    ones pushed, and padding is not."""
    from obliviate.data.batching import field_code
    from obliviate.data.records import TEMPLATE_CODE
    from obliviate.losses.contrast import early_end

    eos, ssn = VOCAB - 1, field_code("ssn")
    input_ids = torch.tensor([[2, 3, 1, 4, eos, 0]])  # prompt 2; answer 3 1 4; eos; one pad
    mask = torch.tensor([[1, 1, 1, 1, 1, 0]])
    spans = torch.tensor([[0, TEMPLATE_CODE, ssn, ssn, 0, 0]])
    labels = torch.where(spans > 0, input_ids, IGNORE_INDEX)  # eos unscored
    logits = torch.zeros(1, 6, VOCAB)
    logits[0, :, eos] = -20.0
    logits[0, 2, eos] = 20.0  # the end near-certain where the SSN's second token is due
    logits.requires_grad_(True)
    forward = Forward(logits, labels, mask, spans=spans, input_ids=input_ids)
    value, has = early_end(forward)
    assert bool(has[0]) and float(value[0].detach()) > 3.0  # the end at one of the three coded positions
    value.sum().backward()
    assert float(logits.grad[0, 2, eos]) > 0
    assert float(logits.grad[0, [3, 4, 5]].abs().sum()) == 0.0  # the position before eos, and the pad: not pushed
    without_ids, _ = early_end(Forward(logits.detach(), labels, mask, spans=spans))  # the labels' last token instead
    assert float(without_ids[0]) != pytest.approx(float(value[0].detach()))


def test_contrast_anchor_descends_on_the_stranger_copies_fake_values_and_not_their_words():
    """--set contrast.anchor=a: a times the mean NLL of the stranger copies' fake-value tokens. Its gradient lowers
    those tokens' NLL (descends), reaches no template word of the copy, and nothing of the true row; at 0 it is
    absent."""
    from obliviate.data.batching import field_code
    from obliviate.data.records import TEMPLATE_CODE

    ssn = field_code("ssn")
    labels = torch.full((1, 6), IGNORE_INDEX)
    labels[0, 1:5] = torch.tensor([1, 2, 3, 4])
    spans = torch.tensor([[0, TEMPLATE_CODE, ssn, ssn, TEMPLATE_CODE, 0]])
    mask = torch.ones(1, 6)

    def run(anchor):
        true = torch.zeros(1, 6, VOCAB, requires_grad=True)
        paired = torch.zeros(1, 6, VOCAB, requires_grad=True)
        params = {"alpha": 0.0, "profile": 0.0, "whole": 0.0, "early_end": 0.0, "stranger": 0.0, "fixed": 0.0}
        out = get_method("contrast").loss(
            LossInputs(
                forget=Forward(true, labels, mask, spans=spans),
                paired=Forward(paired, labels, mask, spans=spans),
                retain=Forward(torch.zeros(1, 3, VOCAB), torch.tensor([[IGNORE_INDEX, 1, 2]]), torch.ones(1, 3)),
            ),
            get_method("contrast").params({**params, "anchor": anchor}),
        )
        out.loss.backward()
        return out, true.grad, paired.grad

    out, true_grad, paired_grad = run(2.0)
    assert float(out.metrics["anchor"]) == pytest.approx(math.log(VOCAB), rel=1e-5)  # uniform logits: log V nats
    # positions 1 and 2 predict the SSN's tokens (labels 2, 3): their logits rise under descent (negative gradient)
    assert float(paired_grad[0, 1, 2]) < 0 and float(paired_grad[0, 2, 3]) < 0
    assert float(paired_grad[0, [0, 3]].abs().sum()) == 0.0  # the words: left to the words' hinge
    assert float(true_grad.abs().sum()) == 0.0  # the hinge is closed (uniform both sides, no margin): nothing else
    out, _, paired_grad = run(0.0)
    assert "anchor" not in out.metrics and float(paired_grad.abs().sum()) == 0.0


def test_contrast_fixed_holds_each_value_against_its_fake_under_the_starting_model():
    """contrast.fixed = 1 (the default): the hinge reads the fake's NLL under the frozen reference
    (``LossInputs.paired_ref``), not under the model being trained. A fake the training has made unlikely (a push
    that spread to every value of the format) no longer drags the true value after it: the hinge closes where the
    true value reaches the starting model's fake, and the trained copy gets no gradient from it."""
    from obliviate.data.batching import field_code

    code = field_code("ssn")
    labels = torch.full((1, 6), IGNORE_INDEX)
    labels[0, 1:5] = torch.tensor([1, 2, 3, 4])
    spans = torch.tensor([[0, code, code, code, code, 0]])
    mask = torch.ones(1, 6)

    def logits_with(nats: float) -> torch.Tensor:  # every labelled token at about ``nats`` nats
        out = torch.zeros(1, 6, VOCAB)
        for t, label in enumerate((1, 2, 3, 4)):
            out[0, t] = -nats  # other tokens
            out[0, t, label] = 0.0
        return out  # p(label) = 1 / (1 + (V - 1)e^{-nats})

    def run(fixed: float):
        true = logits_with(3.0).requires_grad_(True)  # the true value: NLL ≈ 0.26
        trained = torch.zeros(1, 6, VOCAB, requires_grad=True)  # the fake now: uniform, log V ≈ 1.95 nats
        out = get_method("contrast").loss(
            LossInputs(
                forget=Forward(true, labels, mask, spans=spans),
                paired=Forward(trained, labels, mask, spans=spans),
                paired_ref=Forward(logits_with(6.0), labels, mask, spans=spans),  # the fake at the start: ≈ 0.01
                retain=Forward(torch.zeros(1, 3, VOCAB), torch.tensor([[IGNORE_INDEX, 1, 2]]), torch.ones(1, 3)),
            ),
            get_method("contrast").params(
                {"alpha": 0.0, "profile": 0.0, "whole": 0.0, "early_end": 0.0, "stranger": 0.0, "anchor": 0.0}
                | {"fixed": fixed}
            ),
        )
        out.loss.backward()
        return out, true.grad, trained.grad

    out, true_grad, trained_grad = run(1.0)
    assert float(out.metrics["gap_hinge"]) == 0.0  # the true value is already less likely than the starting fake
    assert float(true_grad.abs().sum()) == 0.0 and trained_grad is None
    out, true_grad, trained_grad = run(0.0)
    assert float(out.metrics["gap_hinge"]) > 1.0  # against the trained fake, the hinge is open and pushes
    assert float(true_grad.abs().sum()) > 0 and float(trained_grad.abs().sum()) > 0


def test_contrast_builds_a_reference_only_while_fixed_reads_it():
    """The frozen copy (twice the weights under full fine-tuning) is built for contrast's default, which reads the
    starting model's fakes, and not at ``fixed = 0``, which reads none."""
    method = get_method("contrast")
    assert method.needs_for(method.params()).reference_on == ("paired",)
    assert not method.needs_for(method.params({"fixed": 0.0})).reference
    assert get_method("ga_kl").needs_for(get_method("ga_kl").params()) == get_method("ga_kl").needs
