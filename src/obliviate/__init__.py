"""obliviate: selective unlearning of personal information in causal language models.

The Python API (:mod:`obliviate.api`): ``obliviate.unlearn``, ``obliviate.evaluate`` and ``obliviate.run``. They are
imported on first use, so that ``import obliviate`` (and the CLI's ``--help``) does not pay for torch.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

__version__ = "0.1.0"

__all__ = ["Unlearned", "__version__", "evaluate", "run", "unlearn"]

if TYPE_CHECKING:
    from obliviate.api import Unlearned, evaluate, run, unlearn


def __getattr__(name: str) -> Any:
    if name in ("unlearn", "evaluate", "run", "Unlearned"):
        from obliviate import api

        return getattr(api, name)
    raise AttributeError(f"module 'obliviate' has no attribute {name!r}")
