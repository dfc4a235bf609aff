"""Is fine-tuning repeatable here? Fine-tune a cached demo model again into an empty cache, then compare the weights.

The pipeline's target or oracle (``--model``) at ``--size`` is fine-tuned afresh with the demo's settings into
``--scratch`` (emptied first), and its ``model.safetensors`` is compared byte for byte with the entry of the same key
under ``--cache_dir``. Prints both SHA-256 digests and SAME or DIFFERENT; exits 1 on a difference, 2 when the cache
holds no such entry. Reads no forget value and prints none.

    python benchmarks/probe_refit.py --model oracle --size tiny --cache_dir runs/cache --scratch runs/refit
"""

from __future__ import annotations

import argparse
import hashlib
import shutil
import sys
from pathlib import Path


def digest(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def main(argv: list[str] | None = None) -> int:
    from obliviate import pipeline_cache as pc
    from obliviate.pipeline import PipelineConfig

    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", choices=("target", "oracle"), default="oracle")
    parser.add_argument("--size", default="tiny")
    parser.add_argument("--cache_dir", default="runs/cache", help="the cache holding the model to compare with")
    parser.add_argument("--scratch", default="runs/refit", help="emptied, then the fresh fine-tune's cache")
    args = parser.parse_args(argv)

    def config(cache: str) -> PipelineConfig:
        return PipelineConfig(output_dir=str(Path(cache) / "out"), cache_dir=cache, methods=("contrast",),
                              size=args.size, workers=1, attacks="none")  # fmt: skip

    cached = config(args.cache_dir)
    dirs = pc.prepare_data(cached, print)
    vocabulary = pc.tokenizer_dirs(dirs)
    data = [dirs["forget"], dirs["retain"]] if args.model == "target" else [dirs["retain"]]
    old = pc.finetune_entry(args.model, data, cached, vocabulary) / "model.safetensors"
    if not old.is_file():
        print(f"probe_refit: no cached {args.model} at {old.parent}: run the pipeline first", file=sys.stderr)
        return 2
    shutil.rmtree(args.scratch, ignore_errors=True)
    fresh = config(args.scratch)  # the same data files; the tokenizer, the initial model and the model made anew
    init = pc.cached_init(fresh, vocabulary)
    new = pc.cached_finetune(args.model, data, fresh, vocabulary, print, init) / "model.safetensors"
    a, b = digest(old), digest(new)
    print(f"cached {a}\nfresh  {b}\n{'SAME' if a == b else 'DIFFERENT'}")
    return 0 if a == b else 1


if __name__ == "__main__":
    sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "src"))
    sys.exit(main())
