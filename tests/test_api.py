"""The Python API: the README's example runs as printed, options are checked like flags, in-memory models and record
lists work and are left unchanged, and a script without a ``__main__`` guard is told what to add."""

from __future__ import annotations

import os
import re
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
import torch

import obliviate
from obliviate.data.load import load_split
from obliviate.errors import ConfigError

ROOT = Path(__file__).resolve().parents[1]


def readme_example() -> str:
    text = (ROOT / "README.md").read_text()
    found = re.search(r"<!-- api-example -->\n```python\n(.*?)```", text, re.S)
    assert found, "README.md has no <!-- api-example --> python block"
    return found.group(1)


def python(script: Path, cwd: Path, timeout: int = 300) -> subprocess.CompletedProcess:
    env = {**os.environ, "TQDM_DISABLE": "1", "OMP_NUM_THREADS": "1"}
    env["PYTHONPATH"] = os.pathsep.join([str(ROOT / "src"), env.get("PYTHONPATH", "")])
    return subprocess.run(
        [sys.executable, str(script)], cwd=cwd, env=env, capture_output=True, text=True, timeout=timeout
    )


def test_the_readme_example_runs_as_printed(assets, tmp_path):
    """The block is run unchanged, as a script, in a directory laid out as it expects (the micro assets)."""
    (tmp_path / "models").mkdir()
    (tmp_path / "models" / "target").symlink_to(assets.model)
    (tmp_path / "data").symlink_to(assets.data)
    script = tmp_path / "example.py"
    script.write_text(readme_example())
    done = python(script, tmp_path)
    assert done.returncode == 0, done.stderr[-3000:]
    lines = done.stdout.strip().splitlines()
    run_dir, steps, _ = lines[-3].split(" ", 2)
    assert Path(run_dir) == Path("runs/ga_gd") and 1 <= int(steps) <= 10
    assert (tmp_path / "runs" / "ga_gd" / "model.safetensors").is_file()
    assert (tmp_path / "runs" / "ga_gd" / "README.md").is_file()
    rouge, leak = (float(v) for v in lines[-2].split())
    assert 0 <= rouge <= 1 and 0 <= leak <= 1
    assert "'forget/rougeL_recall'" in lines[-1]


def test_an_unknown_option_is_one_clear_error_naming_the_valid_ones(assets, tmp_path):
    with pytest.raises(ConfigError, match=r"unknown option 'lrr' \(did you mean 'lr'\?\); valid options: .*max_steps"):
        obliviate.unlearn(assets.model, assets.forget, assets.retain, output_dir=tmp_path / "o", lrr=1e-3)
    with pytest.raises(ConfigError, match=r"obliviate.evaluate: unknown option 'max_exemples'.*'max_examples'"):
        obliviate.evaluate(assets.model, assets.forget, max_exemples=3)
    with pytest.raises(ConfigError, match=r"'model_dir' is set by the function's own arguments"):
        obliviate.unlearn(assets.model, assets.forget, assets.retain, model_dir="x")
    with pytest.raises(ConfigError, match=r"obliviate.run: unknown option 'method'.*\(did you mean 'methods'\?\)"):
        obliviate.run(method="ga")
    with pytest.raises(ConfigError, match="--lr must be > 0 and <= 1, found -1"):  # validated like the flag
        obliviate.unlearn(assets.model, assets.forget, assets.retain, output_dir=tmp_path / "o", lr=-1)
    with pytest.raises(ConfigError, match=r"--beta is not a weight of ga_gd \(its weights: gamma, alpha\)"):
        obliviate.unlearn(
            assets.model, assets.forget, assets.retain, method="ga_gd", output_dir=tmp_path / "o", beta=1
        )
    with pytest.raises(ConfigError, match="--alpha must be >= 0, found -2"):  # a weight by name, checked as its flag
        obliviate.unlearn(
            assets.model, assets.forget, assets.retain, method="ga_gd", output_dir=tmp_path / "o", alpha=-2
        )
    assert not (tmp_path / "o").exists()


def test_in_memory_model_and_record_lists_train_a_copy(assets, tmp_path):
    from obliviate.models.load import load_model

    model, tokenizer = load_model(assets.model)
    before = {k: v.clone() for k, v in model.state_dict().items()}
    forget = load_split(assets.forget, split="forget")  # Records
    retain = [r.to_json() for r in load_split(assets.retain, split="retain")]  # plain dicts
    done = obliviate.unlearn(
        model, forget, retain, tokenizer=tokenizer, method="ga_gd", output_dir=tmp_path / "run", lora_r=4, epochs=1,
        lr=1e-2, batch_size=4, micro_batch_size=4, max_length=64, stop_check_steps=0,
    )  # fmt: skip
    assert done.result.global_step == 5 and done.run_dir == tmp_path / "run"
    assert all(torch.equal(before[k], v) for k, v in model.state_dict().items())  # the caller's model is untouched
    assert type(done.model).__name__.startswith("Peft")
    adapter = (tmp_path / "run" / "adapter_config.json").read_text()
    assert str(model.name_or_path) in adapter and "obliviate-model-" not in adapter  # not the removed temporary copy
    assert "obliviate-model-" not in (tmp_path / "run" / "README.md").read_text()
    result = obliviate.evaluate(
        done.model, forget, retain, tokenizer=done.tokenizer, max_examples=6, max_new_tokens=8, no_exposure=True
    )
    assert type(result).__name__ == "EvalResult" and result.value("rougeL_recall", "forget") is not None
    with pytest.raises(ConfigError, match="in-memory model needs its tokenizer"):
        obliviate.evaluate(done.model, forget)


def test_evaluate_writes_the_command_outputs_only_when_asked(assets, tmp_path):
    out = tmp_path / "eval"
    result = obliviate.evaluate(
        assets.model, assets.forget, assets.retain, output_dir=out, max_examples=4, max_new_tokens=4, no_exposure=True
    )
    assert {"results.json", "per_example.jsonl", "report.md"} <= {p.name for p in out.iterdir()}
    assert result.summary()["forget/rougeL_recall"] is not None


GUARDED = """
import obliviate.api

def main():
    print(obliviate.api.unguarded_main_call())

if __name__ == "__main__":
    main()
"""

UNGUARDED_CALL = """
import obliviate.api

def main():
    print(obliviate.api.unguarded_main_call())

main()
"""

UNGUARDED_RUN = """
import obliviate

obliviate.run(workers=2, methods=("ga",))
"""


@pytest.mark.parametrize(("source", "unguarded"), [(GUARDED, "False"), (UNGUARDED_CALL, "True")])
def test_a_call_from_unguarded_top_level_code_is_recognised(tmp_path, source, unguarded):
    script = tmp_path / "script.py"
    script.write_text(textwrap.dedent(source))
    done = python(script, tmp_path, timeout=60)
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip() == unguarded


def test_run_with_workers_from_an_unguarded_script_says_what_to_add(tmp_path):
    script = tmp_path / "script.py"
    script.write_text(UNGUARDED_RUN)
    done = python(script, tmp_path, timeout=60)
    assert done.returncode != 0
    assert 'put the call under `if __name__ == "__main__":` in your script (or pass workers=1)' in done.stderr
    assert not (tmp_path / "runs").exists()  # refused before any work


@pytest.mark.slow
def test_run_from_an_unguarded_script_runs_in_process_and_warns(assets, tmp_path):
    """The whole pipeline on the micro data, from a script without the guard: one process, a warning, a report."""
    script = tmp_path / "script.py"
    script.write_text(
        textwrap.dedent(
            f"""
            import obliviate

            outcome = obliviate.run(
                {str(assets.forget)!r}, {str(assets.retain)!r}, output_dir="out", cache_dir="cache",
                methods=("ga_gd",), finetune_epochs=2, unlearn_max_steps=2, eval_max_examples=4, max_new_tokens=4,
                exposure_k=10, people=12,
            )
            print("workers", outcome.workers)
            """
        )
    )
    done = python(script, tmp_path, timeout=900)
    assert done.returncode == 0, done.stderr[-3000:]
    assert "without a __main__ guard" in done.stderr and "workers 1" in done.stdout
    assert (tmp_path / "out" / "report.md").is_file()
