"""The forget set as an unlearning method trains on it: PII tokens only (``--forget_tokens pii``), relabelled
stranger answers (``relabel``), or fake-value copies (paired methods); and whether its people's PII is known."""

from __future__ import annotations

from obliviate.config import UnlearnConfig
from obliviate.distributed import process_state
from obliviate.errors import ConfigError
from obliviate.losses import Method


def prepare_forget(model, tokenizer, config: UnlearnConfig, method: Method, forget, retain):
    """The forget records ``method`` trains on, its relabelled draws and its paired fake-value draws (None where the
    method takes none)."""
    if config.forget_tokens == "pii":
        forget = pii_tokens_only(config, forget, retain, method.relabels)
    forget_draws = paired_draws = None
    if method.relabels:
        forget, forget_draws = relabelled_forget(model, tokenizer, config, forget, retain)
    if method.needs.paired:
        forget, paired_draws = fake_pairs(config, forget, retain, tokenizer)
    return forget, forget_draws, paired_draws


def known_people(config: UnlearnConfig, forget, retain, holdout: bool = True) -> list:
    """Everyone whose PII values the data names, as the stop rule and evaluation see them: the forget and retain
    people and, given ``--holdout_dir`` (and ``holdout``), the holdout's too. A fake a method trains on is never a
    holdout person's value (on LUME Task2, 6 of 6,000 fake copies drawn without the holdout held a holdout person's
    birth date), so training never moves the never-seen band the stop rule and the report compare with."""
    from obliviate.data.load import load_split
    from obliviate.train.relabel import known_people as people_of

    splits = {"forget": forget, "retain": retain or []}
    if holdout and config.holdout_dir:
        splits["holdout"] = load_split(config.holdout_dir, split="holdout")
    return people_of(config.forget_dir, splits)


def has_pii(config: UnlearnConfig, forget, retain) -> bool:
    """Whether any forget record's person has known PII values (what the stop rule measures)."""
    people = known_people(config, forget, retain, holdout=False)  # the holdout's people hold no forget record
    forget_ids = {r.id for r in forget}
    return any(p.fields and forget_ids.intersection(p.records) for p in people)


def pii_tokens_only(config: UnlearnConfig, forget, retain, relabels: bool):
    """``--forget_tokens pii``: the forget term scores only the tokens of each person's PII values, wherever the
    record holds them (a value in the prompt moves into the answer, :func:`~obliviate.data.pii.values_in_answers`)."""
    from obliviate.data.pii import mark_pii_spans, values_in_answers

    if relabels:
        raise ConfigError(f"--forget_tokens pii does not apply to --method {config.method}, which replaces the values")
    people = known_people(config, forget, retain)
    marked, count = mark_pii_spans(values_in_answers(forget, people), people)
    if not count:
        raise ConfigError("--forget_tokens pii: no forget record holds a known PII value (pii.json or Task2 QA rows)")
    if process_state().is_main_process:
        print(f"forget tokens: PII values only, in {count} of {len(forget)} forget records (the rest score nothing)")
    return marked


def fake_pairs(config: UnlearnConfig, forget, retain, tokenizer=None):
    """A paired method's forget set (scored on PII values) and its fake-value copies: ``--relabel_draws`` sets of
    ``--fakes_per_step``, one set per epoch in turn; ``tokenizer`` cuts the stranger copies' fresh name parts as the
    people's own are cut."""
    from obliviate.train.relabel import fake_pairs as pair_with_fakes
    from obliviate.train.resolve import resolve_params
    from obliviate.train.sampling import fakes_per_step

    people = known_people(config, forget, retain)
    draws = config.relabel_draws * fakes_per_step(config)
    stranger = bool(getattr(resolve_params(config), "stranger", 0.0))
    marked, copies = pair_with_fakes(
        forget, people, draws=draws, seed=config.seed, stranger=stranger, tokenizer=tokenizer
    )
    if not any(r.meta["score_spans"] for r in marked):
        raise ConfigError(
            f"--method {config.method}: no forget record holds a known PII value (pii.json or Task2 QA rows)"
        )
    return marked, copies


def relabelled_forget(model, tokenizer, config: UnlearnConfig, forget, retain):
    """The relabelled forget sets of a relabelling method, made by the starting model before any training."""
    from obliviate.train.relabel import relabelled_draws

    people = known_people(config, forget, retain)
    draws, stats = relabelled_draws(model, tokenizer, forget, people, draws=config.relabel_draws, seed=config.seed)
    # a record that could not be relabelled (no known person) would be trained on its true answer: leave it out
    kept = [i for i, record in enumerate(forget) if any(d[i] != record for d in draws)]
    if not kept:
        raise ConfigError(
            f"--method {config.method}: no forget record names a known person (expected a pii.json beside the forget "
            "set or Task2 QA rows), so none can be relabelled"
        )
    if process_state().is_main_process:
        print(
            f"relabel: {stats.name_swapped} of {stats.records} forget records answered as for a stranger, "
            f"{stats.fake_values} with fake PII values, {stats.records - len(kept)} left out (nothing to relabel); "
            f"{config.relabel_draws} draws"
        )
    return [forget[i] for i in kept], [[draw[i] for i in kept] for draw in draws]
