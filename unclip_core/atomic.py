"""Atomic outputs, the one home for them: a file or a folder is built beside its destination, then renamed into place.

A failure (or a kill) before the rename leaves the destination as it was and no temporary file behind; published
files get the permissions open()/mkdir() would give them (mkstemp/mkdtemp make 0600/0700).
"""
from __future__ import annotations

import contextlib
import json
import os
import shutil
import tempfile
import uuid
from pathlib import Path
from typing import Any, Callable, Iterator


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


def publish_permissions(path: str | os.PathLike) -> None:
    """Give a file made by mkstemp/mkdtemp (0600/0700) the permissions open()/mkdir() would (0666/0777 & ~umask)."""
    path = Path(path)
    mode = 0o777 if path.is_dir() else 0o666
    os.chmod(path, mode & ~_umask())


def fsync_dir(path: str | os.PathLike) -> None:
    """fsync a folder so a rename inside it survives a power cut (a no-op where folders cannot be opened)."""
    try:
        fd = os.open(path, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


def atomic_write(path: str | os.PathLike, write: Callable[[Path], None], *, fsync: bool = True) -> Path:
    """Call `write(tmp_path)` on a temporary file beside `path`, then rename it onto `path`.

    The temporary file is fsynced before the rename (and the folder after it) unless fsync=False.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    os.close(fd)
    tmp_path = Path(tmp)
    try:
        write(tmp_path)
        if fsync:
            with open(tmp_path, "rb+") as fh:
                os.fsync(fh.fileno())
        publish_permissions(tmp_path)
        os.replace(tmp_path, path)
    except BaseException:
        tmp_path.unlink(missing_ok=True)
        raise
    if fsync:
        fsync_dir(path.parent)
    return path


def write_bytes(path: str | os.PathLike, data: bytes, *, fsync: bool = True) -> Path:
    """Write bytes atomically."""
    return atomic_write(path, lambda tmp: tmp.write_bytes(data), fsync=fsync)


def write_text(path: str | os.PathLike, text: str, *, fsync: bool = True) -> Path:
    """Write UTF-8 text atomically."""
    return atomic_write(path, lambda tmp: tmp.write_text(text, encoding="utf-8"), fsync=fsync)


def write_json(path: str | os.PathLike, obj: Any, *, indent: int | None = 2, sort_keys: bool = True,
               fsync: bool = True) -> Path:
    """Write `obj` as JSON (non-JSON values through str) atomically, ending in a newline."""
    text = json.dumps(obj, indent=indent, sort_keys=sort_keys, default=str) + "\n"
    return write_text(path, text, fsync=fsync)


@contextlib.contextmanager
def atomic_dir(path: str | os.PathLike, overwrite: bool = False) -> Iterator[Path]:
    """Yield a fresh temporary folder beside `path`, renamed to `path` when the block succeeds.

    A failure (or a kill) inside the block leaves `path` as it was; an existing `path` is replaced only when
    `overwrite`, and only after the new folder is complete.
    """
    path = Path(path)
    if path.exists() and not overwrite:
        raise FileExistsError(f"{path} already exists; pass overwrite=True or choose another folder")
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.parent / f".{path.name}.tmp-{uuid.uuid4().hex[:8]}"
    tmp.mkdir()
    try:
        yield tmp
        for f in [tmp, *tmp.rglob("*")]:  # writers that use mkstemp inside (safetensors) leave 0600 files
            if not f.is_symlink():
                publish_permissions(f)
        if path.exists():
            old = path.parent / f".{path.name}.old-{uuid.uuid4().hex[:8]}"
            os.replace(path, old)
            os.replace(tmp, path)
            shutil.rmtree(old, ignore_errors=True)
        else:
            os.replace(tmp, path)
    finally:
        if tmp.exists():
            shutil.rmtree(tmp, ignore_errors=True)
