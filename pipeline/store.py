"""The run directory: atomic writes, sha256 of files, the manifest and the single-writer lock."""
from __future__ import annotations

import contextlib
import errno
import fcntl
import hashlib
import json
import os
import shutil
import socket
import sys
import time
from pathlib import Path

from pipeline.errors import UserError

MANIFEST = "manifest.json"
LOCK = ".lock"
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


class RunDir:
    """``runs/<name>/``: one folder per stage, config.yaml and manifest.json at the top."""

    def __init__(self, root: Path, cache_dir: Path | None = None):
        from pipeline.runcache import RunCache

        self.root = Path(root)
        self.cache = RunCache(cache_dir or self.root / ".cache")

    def stage_dir(self, stage: str) -> Path:
        path = self.root / stage
        path.mkdir(parents=True, exist_ok=True)
        return path

    def manifest(self) -> dict:
        path = self.root / MANIFEST
        if not path.exists():
            return {"stages": {}}
        try:
            return json.loads(path.read_text())
        except json.JSONDecodeError as exc:
            raise UserError(f"{path} is corrupt ({exc.msg}); move it away to rebuild every stage") from exc

    def record(self, stage: str, entry: dict) -> None:
        manifest = self.manifest()
        manifest["stages"][stage] = entry
        atomic_json(self.root / MANIFEST, manifest)

    def create(self) -> None:
        try:
            self.root.mkdir(parents=True, exist_ok=True)
            probe = self.root / f".write-test-{os.getpid()}"
            probe.write_text("")
            probe.unlink()
        except OSError as exc:
            raise cannot_write(exc, f"run directory {self.root}", "pick another with --run-dir") from exc

    @contextlib.contextmanager
    def locked(self):
        """Hold an exclusive lock for this process; a second ``compress`` on the same run refuses to start.

        flock is released by the kernel when the process dies, even by kill -9, so a crash never leaves
        a stale lock behind.
        """
        self.create()
        fh = open(self.root / LOCK, "a+")
        try:
            fcntl.flock(fh, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            fh.seek(0)
            holder = fh.read().strip() or "another process"
            fh.close()
            raise UserError(f"run directory {self.root} is in use by {holder}; wait for it or use another --run-dir")
        fh.seek(0)
        fh.truncate()
        fh.write(f"pid {os.getpid()} on {socket.gethostname()} since {time.strftime('%H:%M:%S')} "
                 f"({' '.join(Path(a).name if i == 0 else a for i, a in enumerate(sys.argv))})")
        fh.flush()
        try:
            yield self
        finally:
            fh.close()
