"""File primitives every stage writes with: atomic writes (temp file, then os.replace) that turn a full
or read-only disk into one line naming the folder, sha256 of files and their manifest records. A leaf: it imports
nothing of ours but the error type."""
from __future__ import annotations

import contextlib
import dataclasses
import errno
import hashlib
import json
import os
import shutil
from pathlib import Path

from pipeline.errors import UserError

_UNWRITABLE = (errno.EROFS, errno.EACCES, errno.EPERM, errno.EISDIR, errno.ENOTDIR, errno.EEXIST, errno.ENOENT)


def free_space(folder: Path) -> str:
    """Free space on the disk that holds ``folder`` (or its nearest existing parent), human-readable."""
    folder = Path(folder).absolute()
    while not folder.exists() and folder != folder.parent:
        folder = folder.parent
    free = shutil.disk_usage(folder).free
    return f"{free / 2**30:.1f} GB" if free >= 2**30 else f"{free / 2**20:.1f} MB" if free >= 2**20 else \
        f"{free / 2**10:.0f} KB"


def cannot_write(exc: OSError, target: str, fix: str) -> UserError:
    """``exc`` from creating or writing ``target`` as the one line that says why and what to do."""
    if exc.errno in (errno.EEXIST, errno.ENOTDIR):  # mkdir where a file is
        why = "part of the path is a file, not a folder"
    else:
        why = "it is a folder" if exc.errno == errno.EISDIR else exc.strerror
    return UserError(f"cannot write to {target} ({why}); {fix}")


def _write_failure(exc: BaseException, path: Path) -> BaseException:
    """What a failed write of ``path`` raises: OSError(ENOSPC) naming ``path`` when the disk is full, a UserError
    when ``path`` cannot be written at all (read-only, no permission, a folder or a file in the way), else ``exc``.

    Libraries hide ENOSPC behind their own errors (torch.save: "unexpected pos ... vs ..."), so a library error
    on a disk with (almost) nothing left counts as full. An OSError keeps its own cause, and so does a library
    error on a pseudo file system (/proc, /sys), which reports no size at all.
    """
    if isinstance(exc, OSError):
        if exc.errno in (errno.ENOSPC, errno.EDQUOT):
            return OSError(exc.errno, os.strerror(exc.errno), str(path))
        # about path, its temp file or a folder above it, not a file the caller reads while writing
        ours = exc.filename is not None and (Path(exc.filename).parent == path.parent or
                                             Path(exc.filename) in path.parents)
        if ours and exc.errno in _UNWRITABLE:
            return cannot_write(exc, str(path), "pick another path")
        return exc
    if isinstance(exc, Exception) and 0 < (usage := shutil.disk_usage(path.parent)).total and usage.free < (1 << 20):
        return OSError(errno.ENOSPC, os.strerror(errno.ENOSPC), str(path))
    return exc


def atomic_write(path: Path, data: bytes | str) -> Path:
    """Write ``data`` to ``path`` through a temp file and os.replace, so readers never see half a file."""
    with atomic_path(path) as tmp, open(tmp, "wb") as fh:
        fh.write(data.encode() if isinstance(data, str) else data)
        fh.flush()
        os.fsync(fh.fileno())
    return Path(path)


def atomic_json(path: Path, obj) -> Path:
    return atomic_write(path, json.dumps(obj, indent=2, sort_keys=False) + "\n")


@contextlib.contextmanager
def atomic_path(path: Path):
    """Yield a temp path beside ``path``; on success it replaces ``path`` (for libraries that write files)."""
    path = Path(path)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp{path.suffix}")
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        yield tmp
        os.replace(tmp, path)
    except BaseException as exc:
        with contextlib.suppress(OSError):  # none written, or its folder cannot be written either
            os.unlink(tmp)
        if (failure := _write_failure(exc, path)) is not exc:
            raise failure from exc
        raise


def save_torch(obj, path: Path) -> Path:
    """torch.save ``obj`` to ``path`` atomically, the same object always as the same bytes.

    torch.save names the zip archive inside after the file it writes, here a temp name with the process id, so
    two saves of identical weights differed in their sha256, and so did every fingerprint that hashes the file.
    Through a file object the archive is always named "archive".
    """
    import torch

    with atomic_path(path) as tmp, open(tmp, "wb") as fh:
        torch.save(obj, fh)
    return Path(path)


def sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as fh:
        for block in iter(lambda: fh.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def file_record(path: Path, root: Path) -> dict:
    return {"path": str(Path(path).relative_to(root)), "sha256": sha256(path), "bytes": Path(path).stat().st_size}


def section_hash(value) -> str:
    """Stable sha256 of a config section (or any JSON-able value)."""
    payload = dataclasses.asdict(value) if dataclasses.is_dataclass(value) else value
    text = json.dumps(payload, sort_keys=True, separators=(",", ":"))
    return hashlib.sha256(text.encode()).hexdigest()
