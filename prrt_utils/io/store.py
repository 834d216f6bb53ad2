"""Atomic writes and content hashes shared by every stage.

A result file either exists whole or not at all: writers go to a temporary
file in the same directory and ``os.replace`` it into place, so an
interrupted run never leaves a half-written file that a rerun would read as
complete.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any


def _file_mode() -> int:
    umask = os.umask(0)
    os.umask(umask)
    return 0o666 & ~umask


_FILE_MODE = _file_mode()


@contextlib.contextmanager
def atomic_path(path: str | Path) -> Iterator[Path]:
    """Yield a temporary path beside ``path``; move it into place on success only."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".part", dir=path.parent)
    os.close(fd)
    tmp_path = Path(tmp)
    try:
        yield tmp_path
        os.chmod(tmp_path, _FILE_MODE)  # mkstemp creates 0600; give the file the mode open() would
        os.replace(tmp_path, path)
    finally:
        if tmp_path.exists():
            tmp_path.unlink()


def write_bytes(path: str | Path, data: bytes) -> None:
    with atomic_path(path) as tmp:
        tmp.write_bytes(data)


def write_text(path: str | Path, text: str) -> None:
    write_bytes(path, text.encode())


def write_json(path: str | Path, obj: Any) -> None:
    write_text(path, json.dumps(obj, indent=2, sort_keys=True, default=str) + "\n")


def write_csv(path: str | Path, frame: Any, **kwargs: Any) -> None:
    """Write a pandas DataFrame as CSV atomically (index off unless asked)."""
    kwargs.setdefault("index", False)
    with atomic_path(path) as tmp:
        frame.to_csv(tmp, **kwargs)


def write_parquet(path: str | Path, frame: Any) -> None:
    with atomic_path(path) as tmp:
        frame.to_parquet(tmp, index=False)


def sha256_file(path: str | Path, chunk: int = 1 << 20) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as fh:
        while block := fh.read(chunk):
            h.update(block)
    return h.hexdigest()


def sha256_tree(root: str | Path) -> str:
    """Hash of every file's relative path and content under ``root`` (sorted, stable).

    Names are hashed as the bytes the file system holds (:func:`os.fsencode`),
    so a folder whose name is not UTF-8 is hashed like any other.
    """
    root = Path(root)
    h = hashlib.sha256()
    for p in sorted(q for q in root.rglob("*") if q.is_file()):
        h.update(os.fsencode(p.relative_to(root).as_posix()))
        h.update(sha256_file(p).encode())
    return h.hexdigest()


class UnsafePathError(ValueError):
    """A name that would lead a path out of its folder (a separator, ``..``, an absolute path)."""


def is_utf8_name(name: str) -> bool:
    """False for a file name that is not UTF-8 on disk (Python holds its bytes as surrogates)."""
    try:
        name.encode("utf-8")
    except UnicodeEncodeError:
        return False
    return True


def child(folder: str | Path, name: str) -> Path:
    """``folder / name``, refusing any ``name`` that is not one plain entry of ``folder``.

    Every file a stage names after a patient id goes through here, so that an
    id such as ``../victim`` can never read, write or delete outside its
    folder (it once deleted a file outside the work folder).

    Raises
    ------
    UnsafePathError
        ``name`` is empty, ``.`` or ``..``, holds a path separator or a NUL, or is absolute.
    """
    name = str(name)
    if name in ("", ".", "..") or any(c in name for c in ("/", "\\", "\x00")) or os.path.isabs(name):
        raise UnsafePathError("a name that is not a plain file name would lead outside its folder")
    return Path(folder) / name
