"""The run-cache: every stage's finished outputs kept by fingerprint, so no finished work is thrown away.

Like DVC's run-cache: after a stage runs, its outputs go into a content-addressed store (``objects/<sha256>``,
hard links where the disk allows, copies otherwise) and its manifest entry into ``stages/<stage>/<fingerprint>.json``.
A stage whose fingerprint was seen before is restored from there instead of rerun. All our writes replace files
(temp file + rename), so a hard-linked object never changes under the cache; a file edited in place by hand
would change both, which is why an entry is checked against its sha256 before it is used.
"""
from __future__ import annotations

import contextlib
import json
import os
import shutil
from pathlib import Path

from pipeline.files import atomic_json, sha256


def _link_or_copy(src: Path, dst: Path) -> None:
    """Put ``src``'s content at ``dst`` atomically: a hard link if the disk allows, else a copy."""
    if dst.exists() and os.path.samefile(src, dst):  # already that file: renaming a link onto it does nothing
        return
    tmp = dst.with_name(f".{dst.name}.{os.getpid()}.tmp")
    tmp.unlink(missing_ok=True)
    try:
        os.link(src, tmp)
    except OSError:
        shutil.copy2(src, tmp)
    os.replace(tmp, dst)


class RunCache:
    def __init__(self, root: Path):
        self.root = Path(root)

    def _entry_path(self, stage: str, fingerprint: str) -> Path:
        return self.root / "stages" / stage / f"{fingerprint}.json"

    def _object(self, digest: str) -> Path:
        return self.root / "objects" / digest[:2] / digest

    def save(self, stage: str, entry: dict, run_root: Path) -> None:
        """Keep ``entry``'s outputs (already in ``run_root``) and the entry itself."""
        for out in entry["outputs"]:
            obj, src = self._object(out["sha256"]), run_root / out["path"]
            if obj.exists() and (os.path.samefile(obj, src) or sha256(obj) == out["sha256"]):
                continue
            obj.parent.mkdir(parents=True, exist_ok=True)
            _link_or_copy(src, obj)
        atomic_json(self._entry_path(stage, entry["fingerprint"]), entry)
        self._register(run_root)

    def _register(self, run_root: Path) -> None:
        """Remember ``run_root`` as a user of this cache: gc keeps what every user's manifest points to."""
        if str(Path(run_root).resolve()) not in self.users():
            atomic_json(self.root / "runs.json", sorted(self.users() | {str(Path(run_root).resolve())}))

    def users(self) -> set[str]:
        """The run folders that saved into this cache (several when --cache-dir is shared)."""
        with contextlib.suppress(OSError, json.JSONDecodeError, TypeError):
            return set(json.loads((self.root / "runs.json").read_text()))
        return set()

    def lookup(self, stage: str, fingerprint: str) -> dict | None:
        """The cached entry for this fingerprint if every object is there with the right content, else None."""
        path = self._entry_path(stage, fingerprint)
        try:
            entry = json.loads(path.read_text())
        except (OSError, json.JSONDecodeError):
            return None
        for out in entry["outputs"]:
            obj = self._object(out["sha256"])
            if not obj.is_file() or obj.stat().st_size != out["bytes"] or sha256(obj) != out["sha256"]:
                return None
        return entry

    def holds(self, out: dict) -> bool:
        """Whether the cache keeps this output's content (a file not kept must not be deleted from a run)."""
        obj = self._object(out["sha256"])
        return obj.is_file() and obj.stat().st_size == out["bytes"]

    def restore(self, entry: dict, run_root: Path) -> None:
        for out in entry["outputs"]:
            target = run_root / out["path"]
            target.parent.mkdir(parents=True, exist_ok=True)
            _link_or_copy(self._object(out["sha256"]), target)
        self._register(run_root)

    def variants(self, stage: str) -> list[dict]:
        """Cached entries of ``stage``, newest first."""
        entries = []
        for path in (self.root / "stages" / stage).glob("*.json"):
            with contextlib.suppress(OSError, json.JSONDecodeError):
                entries.append((json.loads(path.read_text()), path.stat().st_mtime_ns))
        # "finished" is to the second; the entry file's own time breaks ties between stages that ran in one second
        entries.sort(key=lambda e: (e[0].get("finished", ""), e[1]), reverse=True)
        return [e for e, _ in entries]

    def size(self) -> int:
        return sum(p.stat().st_size for p in (self.root / "objects").rglob("*") if p.is_file())

    def gc(self, keep: int, current: dict[str, set[str]]) -> tuple[int, int]:
        """Drop all but the ``keep`` newest entries of each stage (``current``: stage -> fingerprints in use by
        the runs sharing the cache, always kept), then the objects no entry needs. Returns (entries removed,
        bytes freed on disk)."""
        removed = 0
        wanted: set[str] = set()
        for stage_dir in (self.root / "stages").glob("*"):
            for i, entry in enumerate(self.variants(stage_dir.name)):
                if i < keep or entry["fingerprint"] in current.get(stage_dir.name, ()):
                    wanted.update(o["sha256"] for o in entry["outputs"])
                else:
                    self._entry_path(stage_dir.name, entry["fingerprint"]).unlink()
                    removed += 1
        freed = 0
        for obj in (self.root / "objects").rglob("*"):
            if obj.is_file() and obj.name not in wanted:
                info = obj.stat()
                freed += info.st_size if info.st_nlink == 1 else 0  # a file still linked in the run frees nothing
                obj.unlink()
        return removed, freed
