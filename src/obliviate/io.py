"""Files on disk: atomic writes, output directories that never swallow an input, and content hashes.

Every directory obliviate writes holds a marker file, :data:`MARKER`. ``--overwrite`` and ``--resume`` act only on a
directory that has one, so a foreign directory (a model someone downloaded, a data set, a home directory) is never
emptied or written beside, whatever flag names it.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import signal
import tempfile
from collections.abc import Iterable
from pathlib import Path

from obliviate.errors import ConfigError

MARKER = ".obliviate"
"""Written into every output directory obliviate creates: ``{"command": ..., "version": ...}``."""


def write_text_atomic(path: str | Path, text: str) -> None:
    """Write ``text`` to ``path`` through a temporary sibling and a rename: readers see the old file or the new one.

    Raises:
        OSError: the write failed (disk full, read-only); the temporary file is removed and ``path`` is unchanged.
    """
    path = Path(path)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", dir=path.parent)
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as handle:
            handle.write(text)
            handle.flush()
            os.fsync(handle.fileno())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def append_line(path: str | Path, line: str) -> None:
    """Append one line to a log; a failed write is cut back off, so the log never ends in half a line."""
    with open(path, "a", encoding="utf-8") as handle:
        size = handle.tell()
        try:
            handle.write(line.rstrip("\n") + "\n")
            handle.flush()
        except BaseException:
            handle.truncate(size)
            raise


def sha256_file(path: str | Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        for block in iter(lambda: handle.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def sha256_tree(path: str | Path) -> str:
    """One hash of a file, or of every file below a directory (relative names and contents, sorted)."""
    root = Path(path)
    if root.is_file():
        return sha256_file(root)
    digest = hashlib.sha256()
    for file in sorted(p for p in root.rglob("*") if p.is_file()):
        digest.update(str(file.relative_to(root)).encode() + b"\0" + sha256_file(file).encode())
    return digest.hexdigest()


def _resolved(paths: Iterable[str | Path | None]) -> list[tuple[str, Path]]:
    found = []
    for source in paths:
        if source is None or not str(source):
            continue
        path = Path(str(source)).expanduser()
        if path.exists():
            found.append((str(source), path.resolve()))
    return found


def check_apart(output_dir: str | Path, inputs: Iterable[str | Path | None]) -> Path:
    """The resolved output directory, once it neither equals, contains nor lies inside any of ``inputs``.

    Raises:
        ConfigError: it does; the message names the flag's value and the input.
    """
    out = Path(output_dir).expanduser().resolve()
    for source, src in _resolved(inputs):
        if out == src or src in out.parents:
            raise ConfigError(
                f"--output_dir {output_dir} is the input {source} or inside it: inputs are never written"
            )
        if out in src.parents:
            raise ConfigError(f"--output_dir {output_dir} contains the input {source}: inputs are never written")
    return out


def check_output_dir(
    output_dir: str | Path, inputs: Iterable[str | Path | None], *, overwrite: bool, resume: bool = False
) -> Path:
    """Refuse an output directory that would touch an input or a directory obliviate did not write.

    Rules: the output may not equal, contain or lie inside any path in ``inputs`` (every path the command reads,
    whatever flag named it); a non-empty output needs ``--overwrite`` or ``--resume``, and either needs the
    :data:`MARKER` that shows obliviate wrote it. Only checks: nothing is written or removed.

    Raises:
        ConfigError: one of the rules is broken; the message names the flag's value and the input.
    """
    out = check_apart(output_dir, inputs)
    if out.exists() and not out.is_dir():
        raise ConfigError(f"--output_dir {output_dir} exists and is not a directory")
    for parent in out.parents:
        if parent.exists() and not parent.is_dir():
            raise ConfigError(f"--output_dir {output_dir} lies under {parent}, which is a file")
    if out.is_dir() and any(out.iterdir()):
        if not resume and not overwrite:
            raise ConfigError(f"--output_dir {output_dir} is not empty: pass --overwrite to replace it or --resume")
        if not (out / MARKER).is_file():
            flag = "--resume" if resume else "--overwrite"
            raise ConfigError(
                f"--output_dir {output_dir} is not empty and was not written by obliviate (no {MARKER} file): "
                f"{flag} acts only on obliviate's own output; choose a new directory"
            )
    return out


def prepare_output_dir(
    output_dir: str | Path,
    inputs: Iterable[str | Path | None],
    *,
    overwrite: bool,
    resume: bool = False,
    command: str = "",
) -> Path:
    """:func:`check_output_dir`, then empty the directory when ``overwrite`` (and not ``resume``) allows it, create
    it and mark it as obliviate's."""
    inputs = list(inputs)
    out = check_output_dir(output_dir, inputs, overwrite=overwrite, resume=resume)
    if out.is_dir() and any(out.iterdir()) and not resume:
        shutil.rmtree(out)
    mark_output_dir(out, command)
    return out


def mark_output_dir(out: str | Path, command: str = "") -> None:
    """Create ``out`` and write the :data:`MARKER` that lets a later ``--overwrite`` / ``--resume`` act on it."""
    from obliviate import __version__

    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    if not (out / MARKER).is_file():
        write_text_atomic(out / MARKER, json.dumps({"command": command, "version": __version__}) + "\n")


def kill_point(name: str) -> None:
    """Fault injection for the interruption tests: SIGKILL this process at the point ``OBLIVIATE_KILL_AT`` names.

    A no-op unless that variable is set (tests set it in a subprocess); the names are listed where they are called.
    """
    if os.environ.get("OBLIVIATE_KILL_AT") == name:
        os.kill(os.getpid(), signal.SIGKILL)
