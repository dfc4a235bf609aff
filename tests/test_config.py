"""Options: --help, --config YAML under command-line flags, config.yaml round trips, shipped configs, bad input."""

from __future__ import annotations

import dataclasses
import json
import shutil
from pathlib import Path

import pytest
import torch
import yaml

from helpers import (
    Assets,
    hash_dir,
    listing,
    unlearn_argv,
    unlearn_config,
)
from obliviate.cli.main import build_parser, main
from obliviate.cli.options import build_config, load_yaml
from obliviate.cli.unlearn import config_from
from obliviate.config import FinetuneConfig, UnlearnConfig
from obliviate.data.load import load_split, write_jsonl
from obliviate.errors import ConfigError
from obliviate.losses import LOSSES, weight_options
from obliviate.train.run import run_unlearn

pytest_plugins = ["helpers"]  # the micro model and data fixtures

CONFIGS = Path(__file__).resolve().parents[1] / "configs"


def parse(*argv: str):
    return build_parser().parse_args(["unlearn", *argv])


def test_help_lists_every_option_with_its_default(capsys):
    with pytest.raises(SystemExit):
        main(["unlearn", "--help"])
    text = " ".join(capsys.readouterr().out.split())  # argparse wraps lines
    for field in dataclasses.fields(UnlearnConfig):
        assert f"--{field.name}" in text or field.metadata.get("flag") is False
    for name, weight in weight_options().items():  # each weight a flag, with every method's default
        assert f"--{name} X" in text and weight[1] in text
    assert "(default per method, ga_gd: 1, ...)" not in text
    assert "--alpha X weight of the retain term (the paper's and the seed's: 1); weight of the retain term" in text
    assert "ga_gd: 4, npo: 4, simnpo: 4, rmu: 100, relabel: 1, contrast: 4)" in text
    for shown in (
        "(default: auto)",
        "(default: None; > 0, <= 1)",
        "(default: auto)",
        "(default: all-linear)",
        "(required)",
        "(default: 32; >= 1)",
    ):
        assert shown in text
    assert "--config" in text


def test_yaml_supplies_options_and_flags_win(tmp_path):
    path = tmp_path / "run.yaml"
    path.write_text(
        "model_dir: m\nforget_dir: f\noutput_dir: o\nmethod: npo\nlr: 1e-4\nepochs: 3\n"
        "trainable_layers: 0\nlora_r: 8\nmerge: true\nbeta: 0.2\n"
    )
    config = config_from(parse("--config", str(path), "--epochs", "7", "--no-merge", "--alpha", "2"))
    assert (config.method, config.lr, config.epochs, config.merge) == ("npo", 1e-4, 7, False)
    assert config.loss_params == {"beta": 0.2, "alpha": 2.0}  # a weight from YAML's top level, one from a flag
    assert config.trainable_layers == "0" and config.lora_r == 8  # YAML 1.1 reads 1e-4 as text and 0 as a number
    assert config.output_dir == "o"

    finetune = tmp_path / "ft.yaml"
    finetune.write_text("model: tiny\ndata: one/dir\noutput_dir: o\n")
    args = build_parser().parse_args(["finetune", "--config", str(finetune)])
    assert build_config(FinetuneConfig, args).data == ["one/dir"]


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("epochs: five\n", "epochs: expected int, found 'five'"),
        ("lr: [1]\n", "lr: expected float"),
        ("merge: 3\n", "merge: expected bool"),
        ("method: null\n", "method: expected a value, found null"),
        ("learning_rate: 1\n", "unknown option"),
        ("- a\n", "expected a mapping"),
        ("a: [\n", "not valid YAML"),
    ],
)
def test_bad_yaml_is_a_config_error(tmp_path, text, message):
    path = tmp_path / "run.yaml"
    path.write_text(text)
    with pytest.raises(ConfigError, match=message):
        load_yaml(path, UnlearnConfig)


def test_missing_required_options_and_bad_values(tmp_path):
    with pytest.raises(ConfigError, match="missing required option.*--model_dir"):
        build_config(UnlearnConfig, parse("--forget_dir", "f", "--output_dir", "o"))
    for flags, message in (
        (("--scheduler", "step"), "expected one of constant, linear, cosine"),
        (("--lr", "0"), "--lr must be > 0 and <= 1, found 0.0"),
        (("--warmup_ratio", "1"), "warmup_ratio"),
        (("--mixed_precision", "fp8"), "mixed_precision"),
    ):
        with pytest.raises(ConfigError, match=message):
            build_config(UnlearnConfig, parse("--model_dir", "m", "--forget_dir", "f", "--output_dir", "o", *flags))


def test_config_yaml_of_a_run_round_trips(assets, tmp_path):
    out = tmp_path / "out"
    run_unlearn(unlearn_config(assets, out, method="simnpo"))
    values = load_yaml(out / "config.yaml", UnlearnConfig)
    config = UnlearnConfig(**values)
    assert (config.method, config.lr) == ("simnpo", 1e-2)
    assert config.loss_params == {"beta": 4.5, "delta": 0.0, "alpha": 4.0}  # simnpo's own weights, and only those
    assert yaml.safe_load((out / "config.yaml").read_text()) == dataclasses.asdict(config)
    rerun = config_from(parse("--config", str(out / "config.yaml"), "--output_dir", "elsewhere"))
    assert dataclasses.replace(rerun, output_dir=config.output_dir) == config


def test_shipped_configs_load():
    files = sorted(CONFIGS.rglob("*.yaml"))
    assert {p.name for p in files} >= {"ddp.yaml", "deepspeed_zero3.yaml", "fsdp.yaml", "unlearn_ga_gd.yaml"}
    for path in files:
        values = yaml.safe_load(path.read_text())
        assert isinstance(values, dict), path
        if path.parent.name == "accelerate":
            from accelerate.commands.config.config_args import ClusterConfig

            for key in (
                "compute_environment",
                "distributed_type",
                "mixed_precision",
                "num_processes",
                "num_machines",
                "machine_rank",
            ):
                assert key in values, (path, key)
            ClusterConfig.from_yaml_file(str(path))  # accelerate's own reader rejects unknown keys
        elif "data" in values:
            assert FinetuneConfig(**load_yaml(path, FinetuneConfig)).data
        else:
            config = UnlearnConfig(**load_yaml(path, UnlearnConfig, {"loss_params": weight_options()}))
            assert config.method in LOSSES
            LOSSES[config.method].params(config.loss_params)  # every weight it names is one its method reads


def overlapping_retain(root: Path, data: Assets) -> Path:
    records = load_split(data.retain, split="retain") + load_split(data.forget, split="forget")[:2]
    write_jsonl(records, root / "retain" / "retain.jsonl")
    return root / "retain"


def model_copy(root: Path, data: Assets, remove: str | None = None, add_bin: bool = False) -> Path:
    path = root / "model_copy"
    shutil.copytree(data.model, path)
    if remove:
        (path / remove).unlink()
    if add_bin:
        torch.save({}, path / "pytorch_model.bin")
    return path


BAD_INPUTS = {
    "output is the model": (lambda r, a: ["--output_dir", str(a.model)], "is the input"),
    "output inside the model": (lambda r, a: ["--output_dir", str(a.model / "run")], "or inside it"),
    "output not empty": (lambda r, a: ["--output_dir", str(r / "full")], "is not empty: pass --overwrite"),
    "output holds the model": (
        lambda r, a: ["--output_dir", str(r), "--overwrite", "--model_dir", str(model_copy(r, a))],
        "contains the input",
    ),
    "unknown method": (lambda r, a: ["--method", "gd"], "unknown unlearning method 'gd'; expected one of ga, "),
    "layer out of range": (lambda r, a: ["--trainable_layers", "9"], "9 is out of range, the model has 2 layers"),
    "empty selection": (lambda r, a: ["--trainable_layers", ","], "selects no layer; the model has 2 layers"),
    "rmu layer out of range": (lambda r, a: ["--method", "rmu", "--rmu_layer", "2"], "the model has 2 layers"),
    "no retain set": (lambda r, a: ["--retain_dir", ""], "method ga_gd needs a retain set: pass --retain_dir"),
    "no config.json": (
        lambda r, a: ["--model_dir", str(model_copy(r, a, remove="config.json"))],
        "expected config.json",
    ),
    "pickled weights only": (
        lambda r, a: ["--model_dir", str(model_copy(r, a, remove="model.safetensors", add_bin=True))],
        "holds no safetensors weights: expected model.safetensors, found only pickled weights (pytorch_model.bin)",
    ),
    "forget/retain overlap": (
        lambda r, a: ["--retain_dir", str(overlapping_retain(r, a))],
        "found 2 retain records with a forget id",
    ),
    "bad model with --overwrite": (
        lambda r, a: ["--output_dir", str(r / "full"), "--overwrite", "--model_dir", str(r / "missing" / "model")],
        "does not exist",
    ),
    "batch not a multiple": (
        lambda r, a: ["--batch_size", "6", "--output_dir", str(r / "full"), "--overwrite"],
        "must be a multiple of --micro_batch_size 4",
    ),
    "retain batch not a multiple": (
        lambda r, a: ["--schedule", "interleaved", "--micro_batch_size", "2", "--retain_batch_size", "3"],
        "--retain_batch_size 3 must be a multiple of 2 micro-batch(es) per step x 1 process(es)",
    ),
    "retain batch above the batch": (
        lambda r, a: ["--schedule", "interleaved", "--retain_batch_size", "8"],
        "--retain_batch_size 8 must be at most --batch_size 4",
    ),
    "a stop check inside a cycle": (
        lambda r, a: ["--schedule", "interleaved", "--retain_steps", "2", "--stop_check_steps", "4"],
        "--stop_check_steps 4 must be a multiple of a cycle's 3 optimizer steps",
    ),
    "interleaved without retain steps": (
        lambda r, a: ["--schedule", "interleaved", "--retain_steps", "0", "--output_dir", str(r / "full")],
        "--schedule interleaved with --retain_steps 0 takes no retain step: use --schedule joint",
    ),
    # before it was refused, the range test divided by the zero retain rows of a method that reads none
    "interleaved with a method that reads no retain set": (
        lambda r, a: ["--method", "ga", "--schedule", "interleaved", "--output_dir", str(r / "full"), "--overwrite"],
        "--schedule interleaved takes retain steps, and method ga reads no retain set",
    ),
}


@pytest.mark.parametrize("case", list(BAD_INPUTS))
def test_bad_input_is_one_error_line_and_writes_nothing(case, assets, tmp_path, capsys):
    full = tmp_path / "full"
    full.mkdir()
    (full / "keep.txt").write_text("an earlier run")
    (full / ".obliviate").write_text('{"command": "unlearn"}')  # obliviate's own: --overwrite may replace it
    extra, message = BAD_INPUTS[case]
    flags = extra(tmp_path, assets)
    before_model, before_tmp = hash_dir(assets.model), hash_dir(tmp_path)

    assert main(unlearn_argv(assets, tmp_path / "out", *flags)) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("obliviate: error: "), err
    assert message in err[0]
    assert hash_dir(assets.model) == before_model and hash_dir(tmp_path) == before_tmp
    assert listing(tmp_path / "out") == []


@pytest.mark.parametrize("launcher", ["ACCELERATE_USE_FSDP", "ACCELERATE_USE_DEEPSPEED"])
def test_the_range_test_under_sharded_weights_is_refused_before_the_output_is_touched(
    launcher, assets, tmp_path, capsys, monkeypatch
):
    """The range test puts weights back, which sharded ones cannot be: refused before the old output goes."""
    monkeypatch.setenv(launcher, "true")
    out = tmp_path / "out"
    out.mkdir()
    (out / ".obliviate").write_text('{"command": "unlearn"}')
    (out / "metrics.jsonl").write_text("an earlier run's\n")
    argv = unlearn_argv(assets, out, "--overwrite")
    del argv[argv.index("--lr") : argv.index("--lr") + 2]
    assert main(argv) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert err == [
        "obliviate: error: the learning-rate range test (unset --lr) runs without DeepSpeed / FSDP: pass --lr"
    ]
    assert (out / "metrics.jsonl").read_text() == "an earlier run's\n"


def test_options_the_run_does_not_read_are_named_in_one_note(assets, tmp_path, capsys):
    """A joint run given interleaved-only options, a method without fake-value copies given their number or the
    per-field stop, stop-rule options with the rule off, the holdout's stop options without a holdout set,
    range-test options beside ``--lr``: the run goes ahead and says, in one line, which flags had no effect."""
    argv = unlearn_argv(
        assets,
        tmp_path / "out",
        *("--method", "ga_gd", "--retain_steps", "3", "--fakes_per_step", "2", "--field_stop"),
        *("--stop_band", "3", "--stop_retain_bound", "0.5", "--lr_probe_steps", "7"),
    )
    assert main(argv) == 0
    notes = [line for line in capsys.readouterr().err.splitlines() if line.startswith("obliviate: note:")]
    off = "(the stop rule is off: --stop_check_steps 0)"
    assert notes == [
        "obliviate: note: ignored: --retain_steps (the schedule is joint); --fakes_per_step (ga_gd compares with no "
        f"fake-value copies); --stop_band {off}; --field_stop {off}; --lr_probe_steps (--lr is given, so no range "
        "test runs)"
    ]  # --stop_retain_bound 0.5 is its default: a flag given its default value cannot be told apart
    argv = unlearn_argv(assets, tmp_path / "out2", "--method", "ga_gd", "--field_stop", "--stop_check_steps", "5")
    assert main(argv) == 0
    notes = [line for line in capsys.readouterr().err.splitlines() if line.startswith("obliviate: note:")]
    assert notes == [
        "obliviate: note: ignored: --field_stop (ga_gd scores no value per field; the stop rule still ends the run)"
    ]
    argv = unlearn_argv(assets, tmp_path / "out3", "--stop_reread", "--stop_words", "--stop_check_steps", "5")
    assert main(argv) == 0  # the holdout's options without a holdout set
    notes = [line for line in capsys.readouterr().err.splitlines() if line.startswith("obliviate: note:")]
    chance = "(no --holdout_dir: the stop rule's reference is chance)"
    assert notes == [f"obliviate: note: ignored: --stop_words {chance}; --stop_reread {chance}"]
    argv = unlearn_argv(assets, tmp_path / "out4", "--stop_reread")
    assert main(argv) == 0
    notes = [line for line in capsys.readouterr().err.splitlines() if line.startswith("obliviate: note:")]
    assert notes == [f"obliviate: note: ignored: --stop_reread {off}"]
    argv = unlearn_argv(
        assets, tmp_path / "out5", "--method", "contrast", "--calibrate", "1", "--anchor_floor", "1", "--fixed", "0"
    )
    assert main(argv) == 0  # contrast's margins without the stop rule, its floor without the frozen reference
    notes = [line for line in capsys.readouterr().err.splitlines() if line.startswith("obliviate: note:")]
    assert notes == [
        "obliviate: note: ignored: --calibrate (its margins are the holdout's gaps the stop rule reads: needs "
        "--holdout_dir and the rule); --anchor_floor (its floor is the frozen reference's NLL: needs --fixed 1)"
    ]


def test_ga_needs_no_retain_set_and_a_relative_output_dir_works(assets, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    argv = [
        a for a in unlearn_argv(assets, Path("out"), "--method", "ga") if a not in ("--retain_dir", str(assets.retain))
    ]
    assert main(argv) == 0
    state = json.loads((tmp_path / "out" / "trainer_state.json").read_text())
    assert state["global_step"] == 5


def test_a_registered_method_reaches_the_unlearn_help(monkeypatch, capsys):
    """Adding a method is one file and one registry entry: ``--method``'s help and choices come from ``LOSSES``."""
    import dataclasses as dc

    from obliviate.cli.main import build_parser
    from obliviate.losses import LOSSES

    monkeypatch.setitem(LOSSES, "ga_twice", dc.replace(LOSSES["ga"], name="ga_twice", summary="GA, said twice"))
    with pytest.raises(SystemExit):
        build_parser().parse_args(["unlearn", "--help"])
    text = " ".join(capsys.readouterr().out.split())
    assert "ga_twice: GA, said twice" in text and "{auto,ga," in text and ",ga_twice}" in text
