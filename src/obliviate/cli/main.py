"""``obliviate``: one console script, one short module per subcommand."""

from __future__ import annotations

import argparse
import importlib
import os
import sys

# Idle OpenMP threads sleep instead of spinning: on a CPU shared with other work, spinning threads made torch
# steps up to 20x slower here (measured: 315 ms vs 103 ms per tiny-model step). Must be set before torch loads.
os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")

from safetensors import SafetensorError  # noqa: E402

from obliviate import __version__
from obliviate.errors import ObliviateError

SUBCOMMANDS = ("synth", "inspect", "init_model", "finetune", "unlearn", "evaluate", "run", "demo", "audit")


class OneLineParser(argparse.ArgumentParser):
    """argparse, but a usage error is one line that points to ``--help`` instead of the whole usage text."""

    def error(self, message: str):
        self.exit(2, f"{self.prog}: error: {message} (see '{self.prog} --help')\n")


def build_parser() -> argparse.ArgumentParser:
    parser = OneLineParser(
        prog="obliviate",
        description="Selective unlearning of personal information in causal language models, with measurements.",
    )
    parser.add_argument("--version", action="version", version=f"obliviate {__version__}")
    subparsers = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)
    for name in SUBCOMMANDS:
        try:
            module = importlib.import_module(f"obliviate.cli.{name}")
        except ModuleNotFoundError as exc:
            if exc.name and exc.name.startswith("obliviate"):
                continue  # a subcommand whose library part is not installed in this build
            raise
        module.register(subparsers)
    return parser


def main(argv: list[str] | None = None) -> int:
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    from transformers.utils import logging as hf_logging

    hf_logging.disable_progress_bar()
    hf_logging.set_verbosity_error()
    parser = build_parser()
    args = parser.parse_args(argv)
    try:
        return int(args.func(args) or 0)
    except ObliviateError as exc:
        print(f"obliviate: error: {exc}", file=sys.stderr)
        return exc.exit_code
    except KeyboardInterrupt:
        print("obliviate: interrupted; complete checkpoints are kept and --resume continues", file=sys.stderr)
        return 130
    except OSError as exc:  # disk full, read-only, a path under a file, a file size limit: the system said no
        print(f"obliviate: error: {describe_os_error(exc)}", file=sys.stderr)
        return IO_EXIT_CODE
    except SafetensorError as exc:  # safetensors' Rust writer reports the system's refusal as its own error
        message = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
        print(f"obliviate: error: {message}", file=sys.stderr)
        return IO_EXIT_CODE if "os error" in message or "I/O error" in message else ObliviateError.exit_code


IO_EXIT_CODE = 1
"""Exit code of an input/output failure (bad input is 2, an interrupt 130)."""


def describe_os_error(exc: OSError) -> str:
    """One line: what the system refused and where, e.g. ``No space left on device: runs/x/model.safetensors``."""
    reason = exc.strerror or (str(exc).splitlines()[0] if str(exc) else type(exc).__name__)
    names = [str(n) for n in (exc.filename, exc.filename2) if n]
    return f"{reason}: {' -> '.join(names)}" if names else str(reason)


if __name__ == "__main__":
    sys.exit(main())
