"""The run directory: atomic writes, sha256 of files, the manifest and the single-writer lock."""
from __future__ import annotations

import contextlib
import fcntl
import json
import os
import shutil
import socket
import sys
import time
from pathlib import Path

from pipeline.errors import UserError
from pipeline.files import atomic_json, atomic_write, cannot_write

MANIFEST = "manifest.json"
LOCK = ".lock"
SCRATCH = ".tmp"  # temporary files of the process holding the lock
CACHE_DIR = ".cache-dir"  # the --cache-dir the run last ran with, where it is not the run's own .cache


class RunDir:
    """``runs/<name>/``: one folder per stage, config.yaml and manifest.json at the top."""

    def __init__(self, root: Path, cache_dir: Path | None = None):
        from pipeline.run.cache import RunCache

        self.root = Path(root)
        self.cache = RunCache(cache_dir or self._remembered_cache() or self.root / ".cache")

    def _remembered_cache(self) -> Path | None:
        """The --cache-dir of the run's last stage run: without it, status, gc and a rerun went to an empty
        .cache of the run's own, and gc said it freed nothing."""
        with contextlib.suppress(OSError):
            text = (self.root / CACHE_DIR).read_text().strip()
            return Path(text) if text else None  # Path("") would be the working folder
        return None

    def stage_dir(self, stage: str) -> Path:
        path = self.root / stage
        path.mkdir(parents=True, exist_ok=True)
        return path

    def scratch(self) -> Path:
        """The run's folder for temporary files (``dir=`` of a TemporaryDirectory): a kill -9 leaves them inside
        the run, not in /tmp for good, and the next ``compress`` that takes the lock removes them."""
        path = self.root / SCRATCH
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
        """Make the run folder and check that it and the run-cache can be written, before any stage trains: the
        cache is written when a stage ends, so a wrong --cache-dir would otherwise cost a whole stage."""
        for folder, what, option in ((self.root, "run directory", "--run-dir"),
                                     (self.cache.root, "run-cache folder", "--cache-dir")):
            try:
                folder.mkdir(parents=True, exist_ok=True)
                probe = folder / f".write-test-{os.getpid()}"
                probe.write_text("")
                probe.unlink()
            except OSError as exc:
                raise cannot_write(exc, f"{what} {folder}", f"pick another with {option}") from exc
        remembered = self.root / CACHE_DIR
        if self.cache.root.resolve() == (self.root / ".cache").resolve():
            remembered.unlink(missing_ok=True)
        elif self._remembered_cache() != self.cache.root.resolve():
            atomic_write(remembered, str(self.cache.root.resolve()) + "\n")

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
        shutil.rmtree(self.root / SCRATCH, ignore_errors=True)  # left by a run that was killed; none is alive now
        try:
            yield self
        finally:
            fh.close()
