"""The bad-input catalogue: every subcommand, one parametrised case per hostile input.

Each case asserts the promise made to users: the exit code, exactly one ``obliviate…: error: …`` line on stderr and
no traceback, nothing created or changed anywhere under the test's directory (outputs and inputs alike, by sha256),
and the shared model, adapter, run and data byte-identical afterwards.
"""

from __future__ import annotations

import dataclasses
import shutil
from collections.abc import Callable
from pathlib import Path

import pytest

from helpers import Assets, hash_dir, unlearn_argv
from obliviate.cli.main import main
from obliviate.models.tiny import init_model


@dataclasses.dataclass(frozen=True)
class World:
    """The shared, read-only things a case may point at."""

    assets: Assets
    adapter: Path  # a LoRA unlearning run: adapter files at the top, its base is assets.model
    run: Path  # a full-weight run with checkpoints (cosine schedule, 2 epochs), obliviate-owned
    other_tokenizer_model: Path  # a model directory built on other data (another vocabulary)

    def roots(self) -> list[Path]:
        return [self.assets.data, self.assets.model, self.adapter, self.run, self.other_tokenizer_model]


@pytest.fixture(scope="module")
def world(assets: Assets, tmp_path_factory: pytest.TempPathFactory) -> World:
    root = tmp_path_factory.mktemp("world")
    adapter, run = root / "adapter", root / "run"
    assert main(unlearn_argv(assets, adapter, "--lora_r", "4")) == 0
    assert main(unlearn_argv(assets, run, "--epochs", "2", "--scheduler", "cosine", "--method", "ga")) == 0
    from obliviate.data.synth import synthesize

    other = synthesize(12, forget_fraction=0.25, holdout_fraction=0.25, seed=7)
    other_model = init_model(other.retain, root / "other", size="micro", vocab_size=300, seed=1)
    return World(assets, adapter, run, other_model)


def copy(src: Path, dst: Path) -> Path:
    shutil.copytree(src, dst)
    return dst


def foreign(tmp: Path) -> Path:
    """A non-empty directory obliviate did not write."""
    path = tmp / "someone_elses"
    path.mkdir()
    (path / "thesis.tex").write_text("years of work")
    return path


def write(tmp: Path, name: str, content: bytes | str) -> Path:
    path = tmp / name
    path.write_bytes(content if isinstance(content, bytes) else content.encode())
    return path


def resumable(tmp: Path, w: World) -> Path:
    """A copy of the finished 2-epoch run with its final model removed: it can be resumed from epoch 2's state."""
    run = copy(w.run, tmp / "run")
    shutil.rmtree(run / "checkpoints" / "epoch-2")
    return run


def unlearn(w: World, tmp: Path, *extra: str, out: Path | None = None) -> list[str]:
    return unlearn_argv(w.assets, out or tmp / "out", *extra)


def evaluate(w: World, tmp: Path, *extra: str) -> list[str]:
    return ["evaluate", "--forget_dir", str(w.assets.forget), "--retain_dir", str(w.assets.retain), *extra]


def evaluate_model(w: World, tmp: Path, *extra: str) -> list[str]:
    return evaluate(w, tmp, "--model", str(w.assets.model), "--output_dir", str(tmp / "eval"), *extra)


def finetune(w: World, tmp: Path, *extra: str) -> list[str]:
    data = ["--data", str(w.assets.forget), str(w.assets.retain)]
    return ["finetune", "--model", str(w.assets.model), *data, "--output_dir", str(tmp / "ft"), *extra]


def init(w: World, tmp: Path, *extra: str) -> list[str]:
    return ["init-model", "--data", str(w.assets.retain), "--output_dir", str(tmp / "init"), *extra]


def synth(tmp: Path, *extra: str) -> list[str]:
    return ["synth", "--people", "12", "--output_dir", str(tmp / "synth"), *extra]


def demo(tmp: Path, *extra: str) -> list[str]:
    return ["demo", "--output_dir", str(tmp / "demo"), "--cache_dir", str(tmp / "cache"), *extra]


Case = tuple[Callable[[World, Path], list[str]], int, str]
"""(argv builder, exit code, a fragment of the one error line)"""

CASES: dict[str, Case] = {
    # --- unlearn: numbers, every one checked before anything is written
    "unlearn lr nan": (lambda w, t: unlearn(w, t, "--lr", "nan"), 2, "--lr must be a finite number"),
    "unlearn lr inf": (lambda w, t: unlearn(w, t, "--lr", "inf"), 2, "--lr must be a finite number"),
    "unlearn lr negative": (lambda w, t: unlearn(w, t, "--lr", "-1"), 2, "--lr must be > 0"),
    "unlearn lr not a number": (lambda w, t: unlearn(w, t, "--lr", "fast"), 2, "invalid float value: 'fast'"),
    "unlearn weight decay negative": (lambda w, t: unlearn(w, t, "--weight_decay", "-5"), 2, "--weight_decay must"),
    "unlearn alpha nan": (lambda w, t: unlearn(w, t, "--alpha", "nan"), 2, "--alpha must be a finite number"),
    "npo beta 0": (lambda w, t: unlearn(w, t, "--method", "npo", "--beta", "0"), 2, "--beta must be > 0"),
    "eval max examples negative": (
        lambda w, t: unlearn(w, t, "--eval_every_epoch", "--eval_max_examples", "-5"),
        2,
        "--eval_max_examples must be >= 1",
    ),
    "max grad norm negative": (lambda w, t: unlearn(w, t, "--max_grad_norm", "-1"), 2, "--max_grad_norm must"),
    "lora alpha negative": (lambda w, t: unlearn(w, t, "--lora_r", "4", "--lora_alpha", "-16"), 2, "--lora_alpha"),
    "max length 1": (lambda w, t: unlearn(w, t, "--max_length", "1"), 2, "--max_length must be >= 8"),
    "stop forget nll nan": (lambda w, t: unlearn(w, t, "--stop_forget_nll", "nan"), 2, "--stop_forget_nll must be"),
    "epochs 0": (lambda w, t: unlearn(w, t, "--epochs", "0"), 2, "--epochs must be >= 1"),
    "batch size 0": (lambda w, t: unlearn(w, t, "--batch_size", "0"), 2, "--batch_size must be >= 1"),
    "micro batch negative": (lambda w, t: unlearn(w, t, "--micro_batch_size", "-1"), 2, "--micro_batch_size must"),
    "warmup ratio 1.5": (lambda w, t: unlearn(w, t, "--warmup_ratio", "1.5"), 2, "--warmup_ratio must be >= 0"),
    "seed negative": (lambda w, t: unlearn(w, t, "--seed", "-1"), 2, "--seed must be >= 0"),
    "lora dropout 1": (lambda w, t: unlearn(w, t, "--lora_dropout", "1"), 2, "--lora_dropout must be"),
    "scheduler unknown": (lambda w, t: unlearn(w, t, "--scheduler", "step"), 2, "expected one of constant, linear"),
    "mixed precision fp8": (lambda w, t: unlearn(w, t, "--mixed_precision", "fp8"), 2, "--mixed_precision 'fp8'"),
    "trainable modules unknown": (
        lambda w, t: unlearn(w, t, "--trainable_modules", "ffn"),
        2,
        "expected one of auto, all",
    ),
    "retain sampling unknown": (
        lambda w, t: unlearn(w, t, "--retain_sampling", "nearest"),
        2,
        "expected one of auto, uniform, matched",
    ),
    "unknown flag": (lambda w, t: unlearn(w, t, "--learning_rate", "1"), 2, "unrecognized arguments"),
    "unknown method": (lambda w, t: unlearn(w, t, "--method", "gd"), 2, "unknown unlearning method 'gd'"),
    "batch not a multiple": (lambda w, t: unlearn(w, t, "--batch_size", "6"), 2, "must be a multiple"),
    # --- unlearn: --config files
    "config binary": (
        lambda w, t: unlearn(w, t, "--config", str(write(t, "c.yaml", b"\xff\xfe\x00\x81lr"))),
        2,
        "is not a text file",
    ),
    "config lr .nan": (
        lambda w, t: without(unlearn(w, t, "--config", str(write(t, "c.yaml", "lr: .nan\n"))), "--lr"),
        2,
        "--lr must be a finite number",
    ),
    "config unknown key": (
        lambda w, t: unlearn(w, t, "--config", str(write(t, "c.yaml", "learning_rate: 1\n"))),
        2,
        "unknown option(s) learning_rate",
    ),
    "config missing": (lambda w, t: unlearn(w, t, "--config", str(t / "nope.yaml")), 2, "does not exist"),
    "config inside the output": (
        lambda w, t: unlearn(w, t, "--overwrite", "--config", str(write(t, "c.yaml", "lr: 0.01\n")), out=t),
        2,
        "contains the input",
    ),
    # --- unlearn: outputs that would swallow an input
    "unlearn output is the model": (
        lambda w, t: unlearn(w, t, "--overwrite", out=w.assets.model),
        2,
        "is the input",
    ),
    "unlearn output is the holdout": (
        lambda w, t: unlearn(
            w, t, "--overwrite", "--holdout_dir", str(h := copy(w.assets.data / "holdout", t / "h")), out=h
        ),
        2,
        "is the input",
    ),
    "unlearn output is the adapter's base": (
        lambda w, t: unlearn_argv(
            dataclasses.replace(w.assets, model=w.adapter), w.assets.model, "--overwrite", "--lora_r", "4"
        ),
        2,
        "is the input",
    ),
    "unlearn output foreign with overwrite": (
        lambda w, t: unlearn(w, t, "--overwrite", out=foreign(t)),
        2,
        "not written by obliviate",
    ),
    "unlearn output under a file": (
        lambda w, t: unlearn(w, t, out=write(t, "afile", "x") / "out"),
        2,
        "which is a file",
    ),
    "unlearn output is a file": (lambda w, t: unlearn(w, t, out=write(t, "afile", "x")), 2, "is not a directory"),
    # --- unlearn: --resume
    "resume foreign": (lambda w, t: unlearn(w, t, "--resume", out=foreign(t)), 2, "not written by obliviate"),
    "resume other lr": (
        lambda w, t: unlearn(
            w,
            t,
            "--resume",
            "--epochs",
            "2",
            "--scheduler",
            "cosine",
            "--method",
            "ga",
            "--lr",
            "0.02",
            out=resumable(t, w),
        ),
        2,
        "--lr 0.01 -> 0.02",
    ),
    "resume other method": (
        lambda w, t: unlearn(w, t, "--resume", "--epochs", "2", "--scheduler", "cosine", out=resumable(t, w)),
        2,
        "--method 'ga' -> 'contrast'",
    ),
    "resume other batch size": (
        lambda w, t: unlearn(
            w,
            t,
            "--resume",
            "--epochs",
            "2",
            "--scheduler",
            "cosine",
            "--method",
            "ga",
            "--batch_size",
            "2",
            "--micro_batch_size",
            "2",
            out=resumable(t, w),
        ),
        2,
        "--batch_size 4 -> 2",
    ),
    "resume other seed": (
        lambda w, t: unlearn(
            w,
            t,
            "--resume",
            "--epochs",
            "2",
            "--scheduler",
            "cosine",
            "--method",
            "ga",
            "--seed",
            "1",
            out=resumable(t, w),
        ),
        2,
        "--seed 42 -> 1",
    ),
    "resume fewer epochs": (
        lambda w, t: unlearn(
            w, t, "--resume", "--epochs", "1", "--scheduler", "cosine", "--method", "ga", out=resumable(t, w)
        ),
        2,
        "may only grow",
    ),
    "resume more epochs under cosine": (
        lambda w, t: unlearn(
            w, t, "--resume", "--epochs", "3", "--scheduler", "cosine", "--method", "ga", out=resumable(t, w)
        ),
        2,
        "only under --scheduler constant",
    ),
    "resume other model": (
        lambda w, t: unlearn_argv(
            dataclasses.replace(w.assets, model=copy(w.assets.model, t / "m2")),
            resumable(t, w),
            "--resume",
            "--epochs",
            "2",
            "--scheduler",
            "cosine",
            "--method",
            "ga",
        ),
        2,
        "--model_dir",
    ),
    "resume with lora": (
        lambda w, t: unlearn(
            w,
            t,
            "--resume",
            "--epochs",
            "2",
            "--scheduler",
            "cosine",
            "--method",
            "ga",
            "--lora_r",
            "4",
            out=resumable(t, w),
        ),
        2,
        "--lora_r 0 -> 4",
    ),
    # --- unlearn: models and data
    "model missing": (
        lambda w, t: unlearn_argv(dataclasses.replace(w.assets, model=t / "nope"), t / "out"),
        2,
        "does not exist",
    ),
    "tokenizer swapped": (
        lambda w, t: unlearn_argv(dataclasses.replace(w.assets, model=swapped_tokenizer(w, t)), t / "out"),
        2,
        "not the one its model was trained with",
    ),
    "forget missing": (
        lambda w, t: unlearn_argv(dataclasses.replace(w.assets, data=t / "nodata"), t / "out"),
        2,
        "found nothing at this path",
    ),
    "forget malformed": (
        lambda w, t: unlearn_argv(dataclasses.replace(w.assets, data=malformed_data(w, t)), t / "out"),
        2,
        "forget.jsonl",
    ),
    "no retain for ga_gd": (lambda w, t: unlearn(w, t, "--retain_dir", ""), 2, "needs a retain set"),
    # --- finetune
    "finetune lr nan": (lambda w, t: finetune(w, t, "--lr", "nan"), 2, "--lr must be a finite number"),
    "finetune epochs 0": (lambda w, t: finetune(w, t, "--epochs", "0"), 2, "--epochs must be >= 1"),
    "finetune arch unknown": (lambda w, t: finetune(w, t, "--arch", "gpt5"), 2, "--arch 'gpt5'"),
    "finetune data missing": (
        lambda w, t: ["finetune", "--model", "tiny", "--data", str(t / "x"), "--output_dir", str(t / "o")],
        2,
        "found nothing at this path",
    ),
    "finetune output is the data": (
        lambda w, t: [
            "finetune",
            "--model",
            "tiny",
            "--data",
            str(d := copy(w.assets.retain, t / "d")),
            "--output_dir",
            str(d),
            "--overwrite",
        ],
        2,
        "is the input",
    ),
    "finetune output foreign": (
        lambda w, t: [*finetune(w, t, "--overwrite")[:-3], "--output_dir", str(foreign(t)), "--overwrite"],
        2,
        "not written by obliviate",
    ),
    # --- evaluate
    "evaluate max new tokens 0": (lambda w, t: evaluate_model(w, t, "--max_new_tokens", "0"), 2, "--max_new_tokens"),
    "evaluate batch size 0": (lambda w, t: evaluate_model(w, t, "--batch_size", "0"), 2, "--batch_size must be >= 1"),
    "evaluate max examples -1": (lambda w, t: evaluate_model(w, t, "--max_examples", "-1"), 2, "--max_examples"),
    "evaluate leak samples -3": (lambda w, t: evaluate_model(w, t, "--leak_samples", "-3"), 2, "--leak_samples"),
    "evaluate exposure k 0": (lambda w, t: evaluate_model(w, t, "--exposure_k", "0"), 2, "--exposure_k must be >= 1"),
    "evaluate seed negative": (lambda w, t: evaluate_model(w, t, "--seed", "-1"), 2, "--seed must be >= 0"),
    "evaluate select unknown": (lambda w, t: evaluate_model(w, t, "--select", "best"), 2, "--select 'best'"),
    "evaluate model and checkpoints": (
        lambda w, t: evaluate_model(w, t, "--checkpoints", str(w.run)),
        2,
        "exactly one of --model and --checkpoints",
    ),
    "evaluate neither model nor checkpoints": (
        lambda w, t: evaluate(w, t, "--output_dir", str(t / "eval")),
        2,
        "exactly one of --model and --checkpoints",
    ),
    "evaluate no output dir": (lambda w, t: evaluate(w, t, "--model", str(w.assets.model)), 2, "--output_dir"),
    "evaluate output is the oracle": (
        lambda w, t: evaluate(
            w,
            t,
            "--model",
            str(w.assets.model),
            "--oracle",
            str(o := copy(w.assets.model, t / "o")),
            "--output_dir",
            str(o),
            "--overwrite",
        ),
        2,
        "is the input",
    ),
    "evaluate output is the adapter's base": (
        lambda w, t: evaluate(w, t, "--model", str(w.adapter), "--output_dir", str(w.assets.model), "--overwrite"),
        2,
        "is the input",
    ),
    "evaluate output is --base_model": (
        lambda w, t: evaluate(
            w,
            t,
            "--model",
            str(w.adapter),
            "--base_model",
            str(b := copy(w.assets.model, t / "b")),
            "--output_dir",
            str(b),
            "--overwrite",
        ),
        2,
        "is the input",
    ),
    "evaluate output is the run's starting model": (
        lambda w, t: evaluate(w, t, "--checkpoints", str(w.run), "--output_dir", str(w.assets.model), "--overwrite"),
        2,
        "is the input",
    ),
    "evaluate output is the mia dir": (
        lambda w, t: evaluate(
            w,
            t,
            "--model",
            str(w.assets.model),
            "--mia_dir",
            str(m := mia_dir(t)),
            "--output_dir",
            str(m),
            "--overwrite",
        ),
        2,
        "is the input",
    ),
    "evaluate output holds the pii file": (
        lambda w, t: evaluate(
            w,
            t,
            "--model",
            str(w.assets.model),
            "--pii",
            str(p := pii_copy(w, t)),
            "--output_dir",
            str(p.parent),
            "--overwrite",
        ),
        2,
        "contains the input",
    ),
    "evaluate checkpoints not a run": (
        lambda w, t: evaluate(w, t, "--checkpoints", str(w.assets.model), "--output_dir", str(t / "eval")),
        2,
        "config.yaml",
    ),
    "evaluate output foreign": (
        lambda w, t: evaluate(w, t, "--model", str(w.assets.model), "--output_dir", str(foreign(t)), "--overwrite"),
        2,
        "not written by obliviate",
    ),
    # --- synth
    "synth people 0": (lambda w, t: synth(t, "--people", "0"), 2, "--people must be >= 3"),
    "synth people 2": (lambda w, t: synth(t, "--people", "2"), 2, "--people must be >= 3"),
    "synth too few for every split": (lambda w, t: synth(t, "--people", "4"), 2, "at least one person per split"),
    "synth forget fraction 1.5": (lambda w, t: synth(t, "--forget_fraction", "1.5"), 2, "--forget_fraction must"),
    "synth forget fraction nan": (lambda w, t: synth(t, "--forget_fraction", "nan"), 2, "finite number"),
    "synth fractions sum to 1": (
        lambda w, t: synth(t, "--forget_fraction", "0.6", "--holdout_fraction", "0.5"),
        2,
        "expected a sum below 1",
    ),
    "synth output foreign": (
        lambda w, t: ["synth", "--output_dir", str(foreign(t)), "--overwrite"],
        2,
        "not written by obliviate",
    ),
    # --- init-model
    "init vocab -10": (lambda w, t: init(w, t, "--vocab_size", "-10"), 2, "--vocab_size must be >= 300"),
    "init vocab 0": (lambda w, t: init(w, t, "--vocab_size", "0"), 2, "--vocab_size must be >= 300"),
    "init size unknown": (lambda w, t: init(w, t, "--size", "huge"), 2, "--size 'huge'"),
    "init data missing": (
        lambda w, t: ["init-model", "--data", str(t / "x"), "--output_dir", str(t / "init")],
        2,
        "found nothing at this path",
    ),
    "init output is the data": (
        lambda w, t: [
            "init-model",
            "--data",
            str(d := copy(w.assets.retain, t / "d")),
            "--output_dir",
            str(d),
            "--overwrite",
        ],
        2,
        "is the input",
    ),
    # --- demo (validated before any data, model or report is written)
    "demo people 2": (lambda w, t: demo(t, "--people", "2"), 2, "--people must be >= 10"),
    "demo workers -1": (lambda w, t: demo(t, "--workers", "-1"), 2, "--workers must be >= 0"),
    "demo unknown method": (lambda w, t: demo(t, "--methods", "ga", "gdx"), 2, "unknown unlearning method 'gdx'"),
    "demo unlearn epochs 0": (lambda w, t: demo(t, "--unlearn_epochs", "0"), 2, "--unlearn_epochs must be >= 1"),
    "demo eval rows -5": (lambda w, t: demo(t, "--eval_max_examples", "-5"), 2, "--eval_max_examples must be >= 1"),
    "demo output foreign": (
        lambda w, t: ["demo", "--output_dir", str(foreign(t)), "--cache_dir", str(t / "cache")],
        2,
        "not replacing it",
    ),
    # a folder of notes that happens to hold a report.md is no earlier report: it is not replaced
    "demo output with a report.md only": (
        lambda w, t: ["demo", "--output_dir", str(notes_with_a_report(t)), "--cache_dir", str(t / "cache")],
        2,
        "not replacing it",
    ),
    "demo cache inside its output": (
        lambda w, t: ["demo", "--output_dir", str(t / "demo"), "--cache_dir", str(t / "demo" / "cache")],
        2,
        "overlap: replacing the report would delete the cache",
    ),
    "demo output is the cache": (
        lambda w, t: ["demo", "--output_dir", str(t / "cache"), "--cache_dir", str(t / "cache")],
        2,
        "overlap: replacing the report would delete the cache",
    ),
    "run output holds its data": (
        lambda w, t: [
            "run",
            "--model",
            str(w.assets.model),
            "--forget_dir",
            str(earlier_report_holding_data(w, t / "out") / "forget"),
            "--retain_dir",
            str(t / "out" / "data" / "retain"),
            "--output_dir",
            str(t / "out"),
        ],
        2,
        "contains the input",
    ),
    # a pii.json of another layout is read before the target and oracle are fine-tuned, not after
    "run pii.json of another layout": (
        lambda w, t: [
            "run",
            *("--model", "tiny", "--finetune_target", "--train_oracle", "--methods", "ga_gd"),
            *("--forget_dir", str(with_pii(w, t, '{"people": []}') / "forget")),
            *("--retain_dir", str(t / "data" / "retain"), "--output_dir", str(t / "out")),
            *("--cache_dir", str(t / "cache")),
        ],
        2,
        "expected an object with version 1 and a people list",
    ),
    # --- inspect
    "inspect missing": (lambda w, t: ["inspect", str(t / "nothing.jsonl")], 2, "found nothing at this path"),
    "inspect tokenizer not a dir": (
        lambda w, t: ["inspect", str(w.assets.forget), "--tokenizer", str(write(t, "tok", "x"))],
        2,
        "expected a local tokenizer directory",
    ),
    "no subcommand": (lambda w, t: [], 2, "required: COMMAND"),
}


def with_pii(w: World, tmp: Path, text: str) -> Path:
    """A copy of the test data whose ``pii.json`` holds ``text``."""
    data = copy(w.assets.data, tmp / "data")
    (data / "pii.json").write_text(text)
    return data


def notes_with_a_report(tmp: Path) -> Path:
    notes = tmp / "notes"
    notes.mkdir()
    write(notes, "report.md", "my own notes")
    return notes


def earlier_report_holding_data(w: World, out: Path) -> Path:
    """An earlier report (its marker says obliviate wrote it) into which the user has put the data the next run
    reads: replacing the report would delete it."""
    data = copy(w.assets.data, out / "data")
    (out / ".obliviate").write_text('{"command": "demo"}')
    return data


def without(argv: list[str], flag: str) -> list[str]:
    """``argv`` less ``flag`` and its value (so that a value from ``--config`` is the one used)."""
    at = argv.index(flag)
    return argv[:at] + argv[at + 2 :]


def swapped_tokenizer(w: World, tmp: Path) -> Path:
    """The model directory with the tokenizer files of a model built on other data."""
    model = copy(w.assets.model, tmp / "swapped")
    for name in ("tokenizer.json", "tokenizer_config.json"):
        shutil.copy(w.other_tokenizer_model / name, model / name)
    return model


def malformed_data(w: World, tmp: Path) -> Path:
    data = copy(w.assets.data, tmp / "bad_data")
    (data / "forget" / "forget.jsonl").write_text('{"id": "a", "input": "x", "output": \n')
    return data


def mia_dir(tmp: Path) -> Path:
    path = tmp / "mia"
    path.mkdir()
    for name in ("member", "nonmember"):
        (path / f"{name}.jsonl").write_text('{"id": "1", "document": "A short public text about a town."}\n')
    return path


def pii_copy(w: World, tmp: Path) -> Path:
    folder = tmp / "pii"
    folder.mkdir()
    return Path(shutil.copy(w.assets.data / "pii.json", folder / "pii.json"))


def test_catalogue_is_large_enough():
    assert len(CASES) >= 60


@pytest.mark.parametrize("name", list(CASES))
def test_bad_input(name: str, world: World, tmp_path: Path, capsys, monkeypatch):
    monkeypatch.chdir(tmp_path)
    build, code, fragment = CASES[name]
    argv = build(world, tmp_path)
    before_tmp = hash_dir(tmp_path)
    before_world = {root: hash_dir(root) for root in world.roots()}
    capsys.readouterr()
    try:
        returned = main(argv)
    except SystemExit as exc:  # argparse's own errors
        returned = exc.code
    err = capsys.readouterr().err.strip().splitlines()
    assert returned == code, err
    assert len(err) == 1, err
    assert "Traceback" not in err[0] and ": error: " in err[0] and err[0].startswith("obliviate"), err
    assert fragment in err[0], err[0]
    assert hash_dir(tmp_path) == before_tmp, "something under the test directory was created or changed"
    assert {root: hash_dir(root) for root in world.roots()} == before_world, "a shared input changed"
