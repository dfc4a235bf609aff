"""The pipeline's job runner: side by side in worker processes, results in order, failures raised."""

from __future__ import annotations

import dataclasses
import math
import os

import pytest
import torch

from obliviate.jobs import Jobs, available_cpus
from obliviate.pipeline import PipelineConfig, resolve_workers


def test_jobs_in_workers_come_back_in_order_and_raise_the_first_failure():
    with Jobs(2) as jobs:
        assert jobs.run([(math.factorial, (6,)), (math.factorial, (3,)), (math.comb, (5, 2))]) == [720, 6, 10]
        with pytest.raises(ValueError):
            jobs.run([(math.factorial, (4,)), (math.factorial, (-1,))])
        assert jobs.run([(pow, (2, 10)), (pow, (3, 2))]) == [1024, 9]  # the pool survives a failed job
        # every worker: no progress bars, its share of the CPUs as torch threads
        assert jobs.run([(os.getenv, ("TQDM_DISABLE",))] * 2) == ["1", "1"]
        assert jobs.run([(torch.get_num_threads, ())] * 2) == [max(1, available_cpus() // 2)] * 2


def test_jobs_without_workers_run_in_this_process():
    calls = []
    with Jobs(1) as jobs:
        assert jobs.run([(calls.append, (1,)), (calls.append, (2,))]) == [None, None]
    assert calls == [1, 2]


def test_workers_are_chosen_per_core_and_capped_by_the_jobs(monkeypatch):
    monkeypatch.setattr("torch.cuda.is_available", lambda: False)
    monkeypatch.setattr("obliviate.pipeline.available_cpus", lambda: 8)
    assert resolve_workers(PipelineConfig(), 4) == 4
    assert resolve_workers(PipelineConfig(), 16) == 8
    assert resolve_workers(PipelineConfig(workers=3), 16) == 3
    assert resolve_workers(PipelineConfig(workers=3), 2) == 2
    monkeypatch.setattr("torch.cuda.is_available", lambda: True)
    assert resolve_workers(PipelineConfig(), 4) == 1


def test_available_cpus_honours_affinity_and_a_cgroup_quota(tmp_path, monkeypatch):
    monkeypatch.setattr("os.sched_getaffinity", lambda pid: set(range(16)), raising=False)
    cpu_max = tmp_path / "cpu.max"
    cpu_max.write_text("200000 100000\n")
    assert available_cpus(cpu_max) == 2
    cpu_max.write_text("150000 100000\n")
    assert available_cpus(cpu_max) == 2  # a fractional quota rounds up
    cpu_max.write_text("max 100000\n")
    assert available_cpus(cpu_max) == 16
    assert available_cpus(tmp_path / "missing") == 16


def test_training_bars_follow_tqdm_disable(monkeypatch):
    from types import SimpleNamespace

    from obliviate.train.state import bars_off as _bars_off

    main_process, other = SimpleNamespace(is_main_process=True), SimpleNamespace(is_main_process=False)
    monkeypatch.delenv("TQDM_DISABLE", raising=False)
    assert not _bars_off(main_process) and _bars_off(other)
    monkeypatch.setenv("TQDM_DISABLE", "1")  # what every pipeline worker sets
    assert _bars_off(main_process)


def test_jobs_named_first_start_first_and_results_keep_job_order(tmp_path):
    """``first`` decides which jobs the pool starts first (the long interleaved runs); results stay in job order.
    Each job appends its name to one file when it starts, then waits until two names are there: with 2 workers,
    no third job can start before both of the first two have written theirs, however slowly a worker starts."""
    log = tmp_path / "started"
    jobs_list = [(_append_and_wait_for_two, (log, name)) for name in ("a", "b", "c", "d")]
    with Jobs(2) as jobs:
        assert jobs.run(jobs_list, first=[3, 2]) == ["a", "b", "c", "d"]
    assert set(log.read_text().split()[:2]) == {"c", "d"}


_KILLED_PARENT = """
import os, sys, time
from obliviate.jobs import Jobs

def job(path):
    with open(path, "w") as handle:
        handle.write(str(os.getpid()))
    time.sleep(120)

if __name__ == "__main__":
    with Jobs(2) as jobs:
        jobs.run([(job, (sys.argv[1] + ".a",)), (job, (sys.argv[1] + ".b",))])
"""


def test_workers_end_when_the_pipeline_is_killed_outright(tmp_path):
    """A pipeline killed with SIGKILL runs no cleanup: its workers must not train on. Each worker's job would sleep
    two minutes; once the parent is gone they end within seconds."""
    import signal
    import subprocess
    import sys
    import time

    script = tmp_path / "parent.py"
    script.write_text(_KILLED_PARENT)
    pid_files = [tmp_path / "worker.pid.a", tmp_path / "worker.pid.b"]
    parent = subprocess.Popen([sys.executable, str(script), str(tmp_path / "worker.pid")])
    try:
        deadline = time.monotonic() + 120
        while not all(f.exists() and f.read_text() for f in pid_files) and time.monotonic() < deadline:
            time.sleep(0.1)
        workers = [int(f.read_text()) for f in pid_files]
    finally:
        parent.send_signal(signal.SIGKILL)
        parent.wait()
    deadline = time.monotonic() + 30  # a bound, so that a worker that outlives its parent fails instead of hanging
    alive = list(workers)
    while alive and time.monotonic() < deadline:
        alive = [pid for pid in alive if _running(pid)]
        time.sleep(0.2)
    for pid in alive:
        os.kill(pid, signal.SIGKILL)
    assert not alive, "a worker outlived its killed parent"


def _running(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    return True


def test_the_pipeline_starts_interleaved_methods_first():
    from obliviate.pipeline import interleaves

    config = PipelineConfig(methods=("ga_gd", "contrast"))
    assert interleaves("contrast", config) and not interleaves("ga_gd", config)
    config.presets["ga_gd"] = {"schedule": "interleaved"}
    assert interleaves("ga_gd", config)


def _append_and_wait_for_two(log, name: str) -> str:
    import time

    with open(log, "a") as handle:
        handle.write(name + "\n")
    deadline = time.monotonic() + 60  # a bound, so that a wrong dispatch order fails instead of hanging
    while len(log.read_text().split()) < 2 and time.monotonic() < deadline:
        time.sleep(0.01)
    return name


def test_a_fresh_models_tokenizer_cuts_holdout_rows_as_finely_as_forget_rows(tmp_path):
    """Trained on forget + retain alone, the tokenizer's merges tell forget rows from holdout ones before any model
    is trained (an oracle then scores the forget people as members); trained on every split, it cannot."""
    import sys
    from pathlib import Path

    from transformers import AutoTokenizer

    from obliviate.data.synth import synthesize, write_synth
    from obliviate.pipeline_cache import cached_init, tokenizer_dirs

    sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "benchmarks"))
    from probe_tokenizer import separation

    data = synthesize(120, forget_fraction=0.2, holdout_fraction=0.2, seed=0)
    root = write_synth(data, tmp_path / "data")
    dirs = {split: root / split for split in ("forget", "retain", "holdout")}
    assert tokenizer_dirs(dirs) == [dirs["forget"], dirs["retain"], dirs["holdout"]]
    assert tokenizer_dirs({"forget": dirs["forget"], "retain": dirs["retain"]}) == [dirs["forget"], dirs["retain"]]
    texts = {split: [r.text for r in getattr(data, split)] for split in ("forget", "holdout")}
    config = PipelineConfig(cache_dir=str(tmp_path / "cache"))
    fair = separation(AutoTokenizer.from_pretrained(cached_init(config, tokenizer_dirs(dirs))), **texts)
    unfair = separation(AutoTokenizer.from_pretrained(cached_init(config, [dirs["forget"], dirs["retain"]])), **texts)
    assert unfair["auc"] > 0.7 and unfair["forget"] > 1.1 * unfair["holdout"]  # what the old vocabulary did
    assert 0.3 < fair["auc"] < 0.7 and abs(fair["forget"] - fair["holdout"]) < 0.05 * fair["holdout"]


def test_a_benchmarks_setting_wins_over_the_pipelines_own(tmp_path):
    """``--set contrast.seed=1`` varies the unlearning seed alone: the method's entry in ``presets`` overrides the
    pipeline's settings (it raised a duplicate-keyword error before), and a method without one keeps them."""
    from obliviate.pipeline import unlearn_config

    dirs = {split: tmp_path / split for split in ("forget", "retain", "holdout")}
    config = PipelineConfig(output_dir=str(tmp_path / "out"), seed=3, presets={"contrast": {"seed": 1}})
    assert unlearn_config("contrast", tmp_path / "target", dirs, config).seed == 1
    plain = unlearn_config("ga_gd", tmp_path / "target", dirs, config)
    assert plain.seed == 3 and plain.output_dir == str(tmp_path / "out" / "methods" / "ga_gd")
    assert plain.holdout_dir == str(dirs["holdout"])


def _report(folder, text: str):
    folder.mkdir(parents=True, exist_ok=True)
    (folder / ".obliviate").write_text('{"command": "demo"}')
    (folder / "report.md").write_text(text)
    return folder


@pytest.mark.parametrize("failure", [RuntimeError, KeyboardInterrupt])
def test_an_earlier_report_is_kept_until_the_new_one_is_whole(tmp_path, failure):
    """``run`` / ``demo`` replace their earlier report only when the new one is written: a run that fails or is
    interrupted leaves it as it was, with nothing of its own left behind."""
    from obliviate.pipeline import replacing_report

    out = _report(tmp_path / "out", "old")
    config = PipelineConfig(output_dir=str(out), cache_dir=str(tmp_path / "cache"))
    with pytest.raises(failure), replacing_report(config):
        assert not (out / "report.md").exists()  # the new report is made in an empty folder
        (out / "report.md").write_text("half")
        (out / "methods").mkdir()
        raise failure
    assert sorted(p.name for p in tmp_path.iterdir()) == ["out"]
    assert sorted(p.name for p in out.iterdir()) == [".obliviate", "report.md"]
    assert (out / "report.md").read_text() == "old"
    with replacing_report(config):
        assert (out / ".partial").exists()
        (out / "report.md").write_text("new")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["out"] and (out / "report.md").read_text() == "new"
    assert not (out / ".partial").exists()


def test_after_a_run_killed_outright_the_aside_report_is_the_one_kept(tmp_path):
    """A run killed outright (no ``except``) leaves the last whole report aside and a partial one in the output:
    the next run removes the partial one and puts the whole one back if it fails too; a foreign folder where the
    report would be kept aside is refused, nothing touched."""
    from obliviate.errors import ConfigError
    from obliviate.pipeline import replacing_report

    out = _report(tmp_path / "out", "partial")
    (out / ".partial").touch()  # what a run killed while writing its report leaves
    _report(tmp_path / ".out.previous", "whole")
    config = PipelineConfig(output_dir=str(out), cache_dir=str(tmp_path / "cache"))
    with pytest.raises(RuntimeError), replacing_report(config):
        assert not (out / "report.md").exists()
        raise RuntimeError
    assert sorted(p.name for p in tmp_path.iterdir()) == ["out"] and (out / "report.md").read_text() == "whole"
    # killed after its report was whole, while the earlier one was being deleted: the newer one is kept
    _report(tmp_path / ".out.previous", "older")
    with pytest.raises(RuntimeError), replacing_report(config):
        raise RuntimeError
    assert sorted(p.name for p in tmp_path.iterdir()) == ["out"] and (out / "report.md").read_text() == "whole"
    link = tmp_path / "link"
    link.symlink_to(out)
    linked = dataclasses.replace(config, output_dir=str(link))
    with pytest.raises(ConfigError, match="symbolic link"), replacing_report(linked):
        pass
    assert (out / "report.md").read_text() == "whole"
    (tmp_path / ".out.previous").mkdir()
    (tmp_path / ".out.previous" / "mine.txt").write_text("a user's file")
    with pytest.raises(ConfigError, match="is in the way"), replacing_report(config):
        pass
    assert (out / "report.md").read_text() == "whole"
    assert (tmp_path / ".out.previous" / "mine.txt").read_text() == "a user's file"


def test_an_output_that_cannot_be_renamed_has_its_contents_moved(tmp_path, monkeypatch):
    """A mount point or the working directory cannot be renamed: the earlier report's files are moved aside instead,
    and back when the run fails. ``--output_dir .`` inside the report works too."""
    from pathlib import Path

    from obliviate.pipeline import replacing_report

    out = _report(tmp_path / "out", "old")
    rename = Path.rename

    def no_folder_rename(self, target):
        if self == out:
            raise OSError(16, "Device or resource busy")
        return rename(self, target)

    monkeypatch.setattr(Path, "rename", no_folder_rename)
    monkeypatch.chdir(out)
    config = PipelineConfig(output_dir=".", cache_dir=str(tmp_path / "cache"))
    with pytest.raises(RuntimeError), replacing_report(config):
        assert (tmp_path / ".out.previous" / "report.md").read_text() == "old"
        (out / "report.md").write_text("half")
        raise RuntimeError
    assert (out / "report.md").read_text() == "old"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["out"]
