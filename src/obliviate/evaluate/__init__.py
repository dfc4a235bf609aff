"""Evaluation: metrics, attacks and the epoch hook (see docs/ARCHITECTURE.md).

``obliviate.evaluate`` is also the API function :func:`obliviate.api.evaluate`: once this package is imported, Python
binds the name ``evaluate`` of the ``obliviate`` package to it, so the package itself is made callable and hands a
call to that function. ``obliviate.evaluate(model, forget, retain, ...)`` then works whichever was imported first.
"""

from __future__ import annotations

import sys
import types
from typing import Any


class _CallablePackage(types.ModuleType):
    def __call__(self, *args: Any, **kwargs: Any) -> Any:
        from obliviate.api import evaluate

        return evaluate(*args, **kwargs)


sys.modules[__name__].__class__ = _CallablePackage
