"""Pure scorers on hand-made inputs with answers worked out by hand."""

from __future__ import annotations

import math

import pytest

from obliviate.evaluate.scores import (
    METRICS,
    exact_match,
    harmonic_mean_or_zero,
    higher_is_better,
    ks_forget_quality,
    mia_score,
    perplexity,
    privleak,
    roc_auc,
    rouge_recall,
    rouge_recalls,
)


def test_rouge_recall_with_stemming() -> None:
    """Target "the cats are running fast" → stemmed tokens [the, cat, are, run, fast] (5).

    Prediction "a cat ran fast" → [a, cat, ran, fast]; Porter maps cats→cat, running→run, but not ran→run.
    Common unigrams: cat, fast → ROUGE-1 recall 2/5. LCS of the two sequences is "cat fast" (length 2) → ROUGE-L
    recall 2/5.
    """
    assert rouge_recall("a cat ran fast", "the cats are running fast") == pytest.approx((0.4, 0.4))


def test_rouge_l_differs_from_rouge_1_on_word_order() -> None:
    """Target "police killed the gunman", prediction "the gunman killed police": every target word occurs, so
    ROUGE-1 recall = 4/4. The longest common subsequence keeps order: "the gunman" (2 words; "police" is last in
    the prediction, "killed" is followed there only by "police") → ROUGE-L recall = 2/4.
    """
    assert rouge_recall("the gunman killed police", "police killed the gunman") == pytest.approx((1.0, 0.5))


def test_rouge_recall_stemmer_and_empty() -> None:
    # Without the stemmer "running" and "run" would share nothing.
    assert rouge_recall("run", "running") == pytest.approx((1.0, 1.0))
    assert rouge_recall("", "some reference") == (0.0, 0.0)
    # Recall, not F1: a long prediction containing the whole target still scores 1.
    assert rouge_recall("well the answer is forty two i think", "forty two") == pytest.approx((1.0, 1.0))


def test_rouge_recalls_batch() -> None:
    rouge1, rouge_l = rouge_recalls(["a cat ran fast", "x"], ["the cats are running fast", "y"])
    assert rouge1 == pytest.approx([0.4, 0.0]) and rouge_l == pytest.approx([0.4, 0.0])
    with pytest.raises(ValueError):
        rouge_recalls(["a"], [])


def test_exact_match_normalisation() -> None:
    assert exact_match("  Paris \n", "paris") == 1
    assert exact_match("PARIS", " Paris") == 1
    assert exact_match("Paris.", "Paris") == 0
    assert exact_match("Paris, France", "Paris") == 0


def test_perplexity_is_token_weighted() -> None:
    """Example 1: one token with NLL ln 4; example 2: three tokens with NLL ln 2 each (sum 3 ln 2).
    Token-weighted mean = (2 ln 2 + 3 ln 2) / 4 = 1.25 ln 2 → perplexity 2^1.25 (per-example mean would give 2^1.5).
    """
    assert perplexity([math.log(4), 3 * math.log(2)], [1, 3]) == pytest.approx(2**1.25)
    vocab = 50  # a uniform model's perplexity is the vocabulary size
    assert perplexity([7 * math.log(vocab)], [7]) == pytest.approx(vocab)
    with pytest.raises(ValueError):
        perplexity([1.0], [0])


def test_roc_auc_known_values() -> None:
    assert roc_auc([3.0, 4.0, 5.0], [0.0, 1.0, 2.0]) == 1.0
    assert roc_auc([0.0, 1.0], [3.0, 4.0]) == 0.0
    assert roc_auc([1.0, 1.0, 1.0], [1.0, 1.0]) == 0.5
    # Pairs (member > non-member): 0.9>0.5, 0.9>0.1, 0.4>0.1 hold, 0.4>0.5 does not → 3/4.
    assert roc_auc([0.9, 0.4], [0.5, 0.1]) == pytest.approx(0.75)
    # -inf log-probs of a broken model keep their order.
    assert roc_auc([0.0, -1.0], [-math.inf, -2.0]) == 1.0


def test_roc_auc_refuses_bad_input() -> None:
    with pytest.raises(ValueError, match="both classes"):
        roc_auc([], [1.0])
    with pytest.raises(ValueError, match="NaN"):
        roc_auc([math.nan], [1.0])


def test_mia_score() -> None:
    assert mia_score(0.5) == 1.0
    assert mia_score(1.0) == 0.0
    assert mia_score(0.0) == 0.0
    assert mia_score(0.25) == pytest.approx(0.5)


def test_ks_forget_quality() -> None:
    same = [0.1, 0.5, 0.9, 1.3, 2.0]
    assert ks_forget_quality(same, list(same)) == pytest.approx(1.0)
    # Disjoint samples of 20: D = 1, exact two-sided p = 2 / C(40, 20) ≈ 1.5e-11.
    assert ks_forget_quality(list(range(20)), list(range(100, 120))) < 1e-9
    with pytest.raises(ValueError):
        ks_forget_quality([], [1.0])


def test_privleak_muse_orientation() -> None:
    assert privleak(0.5, 0.5) == 0.0
    # Still memorising (AUC 1 in our orientation): MUSE reads about -100, "under-unlearned".
    assert privleak(1.0, 0.5) == pytest.approx(-100.0)
    # Over-unlearned: forget looks less member-like than for the oracle → positive. (0.6 - 0.5) / 0.5 = +20 %.
    assert privleak(0.4, 0.5) == pytest.approx(20.0)
    with pytest.raises(ValueError):
        privleak(0.5, 1.0)


def test_harmonic_mean_or_zero() -> None:
    assert harmonic_mean_or_zero([0.9, 0.0, 0.8]) == 0.0
    assert harmonic_mean_or_zero([1.0, 0.5]) == pytest.approx(2 / (1 + 2))
    with pytest.raises(ValueError):
        harmonic_mean_or_zero([])


def test_metric_registry_directions() -> None:
    required = {
        "rougeL_recall", "rouge1_recall", "exact_match", "perplexity", "leak_rate", "mia_auc_loss", "mia_auc_zlib",
        "mia_auc_mink", "mia_auc_minkpp", "mia_score", "forget_quality", "privleak", "task_aggregate",
    }  # fmt: skip
    assert required <= set(METRICS)
    assert all(name == info.name for name, info in METRICS.items())
    assert not higher_is_better("rougeL_recall", "forget") and higher_is_better("rougeL_recall", "retain")
    assert not higher_is_better("leak_rate", "holdout") and higher_is_better("leak_rate", "retain")
    assert higher_is_better("perplexity", "forget") and not higher_is_better("perplexity", "retain")
    assert not higher_is_better("perplexity", "holdout")
    assert higher_is_better("mia_score", "anything") and higher_is_better("task_aggregate", "overall")
    assert METRICS["privleak"].ideal == 0.0 and METRICS["mia_auc_loss"].ideal == 0.5
    with pytest.raises(KeyError):
        higher_is_better("bleu", "forget")
    with pytest.raises(ValueError):
        higher_is_better("leak_rate", "train")
