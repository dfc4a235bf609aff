"""What the pipeline caches under ``runs/cache``: the synthetic data, the freshly initialised model, target and oracle.

Each entry is named by a hash of everything that determines it (settings and the bytes of the data it is trained on),
so a re-run reuses it; ``PipelineConfig.fresh`` rebuilds it.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import shutil
import time
from collections.abc import Collection
from pathlib import Path
from typing import TYPE_CHECKING, Any

import yaml

from obliviate.config import FinetuneConfig
from obliviate.data.load import load_training_records
from obliviate.errors import ConfigError
from obliviate.evaluate.memorised import memorisation_check_for
from obliviate.models.tiny import SIZES, TOKENIZER_VERSION
from obliviate.train.run import run_finetune

if TYPE_CHECKING:
    from obliviate.pipeline import PipelineConfig


def _hash(payload: Any) -> str:
    return hashlib.sha256(json.dumps(payload, sort_keys=True, default=str).encode()).hexdigest()[:12]


def _dir_hash(path: Path, pattern: str = "*", skip: Collection[str] = ()) -> str:
    """The data at ``path``, a folder or one data file: each file by its path relative to the folder (a file: its
    name) and its bytes. A file moved into another folder (``retain/`` renamed ``forget/``) is other data, and so is
    a data file with other rows (before, a file hashed as an empty folder: every file had one key). For the files
    directly in a folder, the relative path is the name the key was made of before, so the cache entries of flat
    data folders keep their keys. ``pattern`` picks a folder's files by name (``*.py``: source, not its bytecode);
    ``skip`` leaves out the files at those paths relative to the folder."""
    path = Path(path)
    root, files = (path.parent, [path]) if path.is_file() else (path, sorted(path.rglob(pattern)))
    digest = hashlib.sha256()
    for file in files:
        if file.is_file() and file.relative_to(root).as_posix() not in skip:
            digest.update(file.relative_to(root).as_posix().encode() + file.read_bytes())
    return digest.hexdigest()[:12]


def prepare_data(config: PipelineConfig, log) -> dict[str, Path]:
    """The data directories: ``config.data_dirs`` when given, else the cached synthetic people (made once)."""
    if config.data_dirs:
        return {k: Path(v) for k, v in config.data_dirs.items()}
    from obliviate.data.synth import synthesize, write_synth

    key = _hash(["synth", config.people, config.forget_fraction, config.holdout_fraction, config.seed])
    out = Path(config.cache_dir) / f"data-{key}"
    if config.fresh or not (out / "pii.json").is_file():
        shutil.rmtree(out, ignore_errors=True)  # the pipeline's own cache entry, named by its settings' hash
        data = synthesize(
            people=config.people,
            forget_fraction=config.forget_fraction,
            holdout_fraction=config.holdout_fraction,
            seed=config.seed,
        )
        write_synth(data, out, overwrite=True)
    log(f"data: {config.people} synthetic people → {out}")
    return {"forget": out / "forget", "retain": out / "retain", "holdout": out / "holdout"}


MODEL_PACKAGES = ("torch", "transformers", "tokenizers")
"""The packages whose release decides the bytes of a tokenizer, an initial model and a fine-tuned one: their versions
are part of every model entry's key. Without them an entry made under other releases is reused, and a table read
from it is not what a fresh install makes. (On 2026-12-06 a fresh install, with newer releases, fine-tuned the demo's
target to memorisation at epoch 26, where the cached entry of the same key had run all 30 epochs.)"""


def package_versions() -> dict[str, str]:
    """The installed version of each of :data:`MODEL_PACKAGES`."""
    from importlib.metadata import version

    return {name: version(name) for name in MODEL_PACKAGES}


FINETUNE_SOURCES = (
    "config",
    "data",
    "models",
    "train",
    "losses/common.py",
    "losses/finetune.py",
    "evaluate/memorised.py",
)
"""The parts of the package, relative to it, that fine-tuning runs through: tokenizing and batching the data, building
and loading the model, the training loop, its loss and its memorisation stop. Their source is part of every model
entry's key, so that an entry made by older fine-tuning code is not reused (an edit to the loop's unlearning side
also retrains: a key cannot tell which lines a run reached), less the files fine-tuning never runs
(:data:`FINETUNE_UNREACHED`)."""


FINETUNE_UNREACHED = ("train/lr_probe.py",)
"""Files under :data:`FINETUNE_SOURCES` that fine-tuning never runs, left out of the key so that editing them does
not retrain every cached model: the learning-rate range test runs only where ``--lr`` is unset, and a fine-tune's
rate is always set (``FinetuneConfig.lr`` is a number above 0)."""


def finetune_code() -> str:
    """A hash of the source of :data:`FINETUNE_SOURCES`: each part's ``.py`` files by their paths and bytes, less
    :data:`FINETUNE_UNREACHED`."""
    root = Path(__file__).resolve().parent
    parts = []
    for part in FINETUNE_SOURCES:
        skip = [path.removeprefix(f"{part}/") for path in FINETUNE_UNREACHED if path.startswith(f"{part}/")]
        parts.append([part, _dir_hash(root / part, "*.py", skip)])
    return _hash(parts)


def _finetune_settings(config: PipelineConfig) -> dict[str, Any]:
    return dict(
        size=config.size,
        epochs=config.finetune_epochs,
        lr=config.finetune_lr,
        batch_size=config.finetune_batch_size,
        seed=config.seed,
        tokenizer=TOKENIZER_VERSION,  # a new recipe makes new models, and new cache entries
        packages=package_versions(),
        code=finetune_code(),
    )


def cached_init(config: PipelineConfig, tokenizer_data: list[Path]) -> Path:
    """The tokenizer trained on ``tokenizer_data`` and the freshly initialised model, shared by target and oracle."""
    key = _hash([_finetune_settings(config), [_dir_hash(p) for p in tokenizer_data]])
    init = Path(config.cache_dir) / f"init-{key}"
    if config.fresh or not (init / "config.json").is_file():
        from obliviate.models.tiny import init_model

        init_model(load_training_records(tokenizer_data), init, size=config.size, seed=config.seed)
    return init


def finetune_entry(name: str, data: list[Path], config: PipelineConfig, tokenizer_data: list[Path]) -> Path:
    """The cache directory of a fine-tuned model: named by everything that determines it."""
    key_parts: list[Any] = [name, _finetune_settings(config), [_dir_hash(p) for p in data]]
    key_parts.append([_dir_hash(p) for p in tokenizer_data])
    if config.group_by_length:  # appended only when on, so that models cached before the option existed keep their key
        key_parts.append("group_by_length")
    memorised = _memorisation(config)
    if memorised:  # the stop changes the model: a fixed-length run and a memorised one never share an entry
        key_parts.append(memorised)
    return Path(config.cache_dir) / f"{name}-{_hash(key_parts)}"


def cached_finetune(
    name: str, data: list[Path], config: PipelineConfig, tokenizer_data: list[Path], log, init: Path | None = None
) -> Path:
    """Fine-tune (or reuse) a model on ``data``, starting from ``init`` (default: :func:`cached_init` of
    ``tokenizer_data``; pass it when several jobs start from one model, so that none rebuilds it under ``fresh``)."""
    out = finetune_entry(name, data, config, tokenizer_data)
    grouped, memorised = config.group_by_length, _memorisation(config)
    if not config.fresh and (out / "trainer_state.json").is_file():
        log(f"{name}: cached → {out}")
        return out
    init = init if init is not None else cached_init(config, tokenizer_data)
    shutil.rmtree(out, ignore_errors=True)  # the pipeline's own cache entry: stale, or refreshed under --fresh
    started = time.perf_counter()
    result = run_finetune(
        FinetuneConfig(
            output_dir=str(out),
            model=str(init),
            data=[str(p) for p in data],
            epochs=config.finetune_epochs,
            lr=config.finetune_lr,
            batch_size=config.finetune_batch_size,
            micro_batch_size=config.finetune_batch_size,
            group_by_length=grouped,
            seed=config.seed,
            overwrite=True,
            **memorised,
        ),
        memorisation_check=memorisation_check_for,
    )
    _log_finetune(log, name, result, time.perf_counter() - started, bool(memorised))
    return out


def _memorisation(config: PipelineConfig) -> dict[str, Any]:
    """The fine-tuning stop (:mod:`obliviate.evaluate.memorised`), as FinetuneConfig fields; empty when off."""
    if config.finetune_until_memorised is None:
        return {}
    return {"until_memorised": config.finetune_until_memorised, "memorised_sample": config.memorised_sample}


def _log_finetune(log, name: str, result, seconds: float, memorised: bool) -> None:
    ended = ""
    if memorised:
        ended = f"; {result.stopped}" if result.stopped else "; not memorised within the epoch budget"
    log(
        f"{name}: {result.epochs_completed} epochs, {result.tokens_seen:,} tokens in {seconds:.0f}s "
        f"({result.tokens_seen / max(seconds, 1e-9):,.0f} tokens/s){ended} → {result.output_dir}"
    )


RECIPE_SKIPS = ("output_dir", "data", "model", "resume", "overwrite")
"""The fields of a target's ``config.yaml`` that are not its recipe: where it went, what it read, how it was run."""


def target_recipe(target: Path) -> dict[str, Any]:
    """How ``obliviate finetune`` built ``target`` (its resolved ``config.yaml``), with the model it started from
    (``model``: for a build from a named size, the fresh model it kept in ``.init``), to retrain an oracle alike.

    Raises:
        ConfigError: ``target`` was not written by ``obliviate finetune``, or its starting model is gone.
    """
    path = Path(target) / "config.yaml"
    advice = "pass --oracle with a model retrained on the retain set, or build the target with --finetune_target"
    try:
        values = yaml.safe_load(path.read_text(encoding="utf-8"))
    except (OSError, yaml.YAMLError, UnicodeDecodeError):
        values = None
    if not isinstance(values, dict) or "data" not in values or "model" not in values:
        raise ConfigError(
            f"--train_oracle needs the target's recipe: {target} has no `obliviate finetune` config.yaml; {advice}"
        )
    names = {f.name for f in dataclasses.fields(FinetuneConfig)} - set(RECIPE_SKIPS)
    recipe = {k: v for k, v in values.items() if k in names}
    recipe["model"] = str(values["model"])
    if recipe["model"] in SIZES:
        recipe["model"] = str(Path(target) / ".init")
        if not (Path(target) / ".init" / "config.json").is_file():
            raise ConfigError(
                f"--train_oracle: {target} was built from --model {values['model']} and its starting "
                f"model ({target}/.init) is gone; {advice}"
            )
    return recipe


def cached_recipe_oracle(target: Path, retain: Path, config: PipelineConfig, log) -> Path:
    """An oracle fine-tuned on ``retain`` alone with ``target``'s recipe (:func:`target_recipe`), cached by that
    recipe, the target's own run and the retain data."""
    recipe = target_recipe(target)
    state = (
        (Path(target) / "trainer_state.json").read_text() if (Path(target) / "trainer_state.json").is_file() else ""
    )
    out = Path(config.cache_dir) / f"oracle-{_hash(['recipe', recipe, state, _dir_hash(retain)])}"
    if not config.fresh and (out / "trainer_state.json").is_file():
        log(f"oracle: cached → {out}")
        return out
    shutil.rmtree(out, ignore_errors=True)  # the pipeline's own cache entry: stale, or refreshed under --fresh
    started = time.perf_counter()
    finetune = FinetuneConfig(**recipe, output_dir=str(out), data=[str(retain)], overwrite=True)
    result = run_finetune(finetune, memorisation_check=memorisation_check_for)
    _log_finetune(log, "oracle", result, time.perf_counter() - started, finetune.until_memorised is not None)
    return out


def check_inputs(config: PipelineConfig, dirs: dict[str, Path]) -> None:
    """Before anything is written: given data reads and validates (forget and retain share no record, a
    ``pii.json`` beside the forget set reads), given models exist, and an oracle to retrain with a given target's
    recipe has one (:func:`pipeline_models` trains what is missing)."""
    from obliviate.data.load import check_overlap, load_split
    from obliviate.data.pii import find_pii_json
    from obliviate.data.synth import load_pii
    from obliviate.errors import ModelError

    if config.data_dirs:
        splits = {name: load_split(path, split=name) for name, path in dirs.items()}
        check_overlap(splits["forget"], splits["retain"], allow_overlap=False)
        if (pii_file := find_pii_json(dirs["forget"])) is not None:  # read where fine-tuning has not yet begun
            load_pii(pii_file)

    for flag, path in (("--model", config.target_dir), ("--oracle", config.oracle_dir)):
        if path is not None and not (Path(path) / "config.json").is_file():
            raise ModelError(f"{flag} {path}: not a model directory (no config.json)")
    if config.target_dir is not None and config.oracle_dir is None and config.train_oracle:
        target_recipe(Path(config.target_dir))


def tokenizer_dirs(dirs: dict[str, Path]) -> list[Path]:
    """The splits a fresh named-size model's tokenizer is trained on: forget, retain and the holdout.

    A pretrained model's tokenizer knows nothing of who is in which split. One trained on the fine-tuning data alone
    (forget + retain) learns merges for the forget people's names and values and none for the holdout's: the
    characters per token of a row then tell forget rows from holdout ones before any model is trained (ROC AUC 0.85
    on the demo data, 0.80 on LUME Task2), and the oracle, which never saw a forget row, still scores as a member
    through the tokenizer (``docs/METRICS.md``, membership inference). Trained on all three splits, the holdout is
    cut as finely as the forget set (AUC 0.48 and 0.49). ``benchmarks/probe_tokenizer.py`` measures this.
    """
    names = ("forget", "retain", "holdout")
    return [Path(dirs[n]) for n in names if n in dirs and Path(dirs[n]).is_dir()]


def pipeline_models(jobs, config: PipelineConfig, dirs: dict[str, Path], log) -> tuple[Path, Path | None]:
    """The target and the oracle: each given (``target_dir``, ``oracle_dir``) or fine-tuned here, side by side and
    cached; no oracle when none is given and ``train_oracle`` is off."""
    train_dirs = [dirs["forget"], dirs["retain"]]
    vocabulary = tokenizer_dirs(dirs)
    target = Path(config.target_dir) if config.target_dir else None
    oracle = Path(config.oracle_dir) if config.oracle_dir else None
    calls: dict[str, tuple] = {}
    if target is None:
        init = cached_init(config, vocabulary)  # once, before the workers
        calls["target"] = (cached_finetune, ("target", train_dirs, config, vocabulary, log, init))
        if oracle is None and config.train_oracle:
            calls["oracle"] = (cached_finetune, ("oracle", [dirs["retain"]], config, vocabulary, log, init))
    elif oracle is None and config.train_oracle:
        calls["oracle"] = (cached_recipe_oracle, (target, dirs["retain"], config, log))
    trained = dict(zip(calls, jobs.run(list(calls.values())))) if calls else {}
    return trained.get("target", target), trained.get("oracle", oracle)


def model_memorisation(
    config: PipelineConfig, dirs: dict[str, Path], target: Path, oracle: Path | None
) -> dict[str, dict[str, Any]]:
    """How well target (forget + retain) and oracle (retain) reproduce their training rows: the last check of their
    fine-tuning under ``--until_memorised``, else measured now on the same seeded sample (a given model)."""
    from obliviate.evaluate.data import sample_records
    from obliviate.evaluate.memorised import MemorisationCheck, read_memorisation
    from obliviate.models.load import load_model

    threshold = config.finetune_until_memorised or 0.95
    out: dict[str, dict[str, Any]] = {}
    for name, path, given, data in (
        ("target", target, config.target_dir, [dirs["forget"], dirs["retain"]]),
        ("oracle", oracle, config.oracle_dir, [dirs["retain"]]),
    ):
        if path is None:
            continue
        recorded = None if given else read_memorisation(path)
        if recorded is not None:
            out[name] = {**recorded, "source": "fine-tuning"}
            continue
        rows = [r for r in load_training_records(data) if r.kind in ("qa", "completion")]
        check = MemorisationCheck(sample_records(rows, config.memorised_sample, config.seed), threshold)
        model, tokenizer = load_model(path)
        check(model, tokenizer, 0)
        del model
        out[name] = {**check.history[-1], **_trained_epochs(path), "source": "measured"}
    return out


def _trained_epochs(model_dir: Path) -> dict[str, Any]:
    """The epochs a model directory obliviate wrote was trained (``trainer_state.json``), else nothing."""
    state = Path(model_dir) / "trainer_state.json"
    if not state.is_file():
        return {"epochs": None}
    return {"epochs": json.loads(state.read_text()).get("epoch")}
