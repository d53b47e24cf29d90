"""Stage order, fingerprints and the skip / stale decision (make- and dvc.lock-style)."""
from __future__ import annotations

import dataclasses
import hashlib
import importlib
import json
import os
import platform
import shutil
import tempfile
import time
from dataclasses import dataclass, field
from importlib import metadata
from pathlib import Path

from rich.console import Console

import pipeline
from pipeline import config as config_mod
from pipeline import preflight
from pipeline.errors import UserError
from pipeline.files import atomic_write, file_record, sha256
from pipeline.run import codegraph, outside
from pipeline.run.rundir import RunDir

# The pipeline, in order. Each name is a module in stages/.
ORDER = ["teacher", "adapt", "distill", "export", "simplify", "quantize", "benchmark"]
# The stages torchrun's ranks train together. Rank 0 runs the others alone: every rank converting the same
# student would only compete for the CPU, and every rank benchmarking it would skew rank 0's latencies.
DISTRIBUTED = ("teacher", "adapt", "distill")


def available() -> list[str]:
    """Stages whose module exists (the pipeline grows one stage at a time)."""
    return [name for name in ORDER if importlib.util.find_spec(f"stages.{name}") is not None]


def load_stage(name: str):
    return importlib.import_module(f"stages.{name}")


def upstream(mod, cfg) -> tuple[str, ...]:
    """The stages ``mod`` reads from: its ``upstream(cfg)`` where what it reads depends on the config."""
    return tuple(mod.upstream(cfg)) if hasattr(mod, "upstream") else mod.UPSTREAM


def _is_log(path: str) -> bool:
    """A training log or a picture of one: its timings change on every rerun and no stage reads it, so a stage
    retrained to the same weights leaves the stages after it done."""
    return Path(path).name == "metrics.jsonl" or path.endswith(".png")


def sections(mod, cfg) -> tuple[str, ...]:
    return tuple(mod.sections(cfg)) if hasattr(mod, "sections") else mod.SECTIONS


@dataclass
class Context:
    """What a stage gets: the frozen config, its own folder, and read access to the run."""

    cfg: config_mod.Config
    run: RunDir
    name: str
    fingerprint: str
    console: Console
    debug: bool = False
    metrics: dict = field(default_factory=dict)
    _scratch: Path | None = None

    @property
    def dir(self) -> Path:
        """This stage's folder. Under torchrun only rank 0 writes the run; other ranks get a scratch folder."""
        if is_main_process():
            return self.run.stage_dir(self.name)
        if self._scratch is None:
            self._scratch = Path(tempfile.mkdtemp(prefix=f"compress-rank{os.environ.get('RANK')}-{self.name}-"))
            resume = self.run.root / self.name / "last.pt"
            if resume.exists():  # every rank must resume from the same epoch as rank 0
                shutil.copy(resume, self._scratch / "last.pt")
        return self._scratch

    def discard_scratch(self) -> None:
        """Remove the scratch folder of a rank other than 0 (rank 0 has none), once the stage has ended."""
        if self._scratch is not None:
            shutil.rmtree(self._scratch, ignore_errors=True)

    def recorded(self, stage: str, filename: str) -> Path | None:
        """A file an upstream stage may write, where its manifest entry lists it (then the fingerprint covers
        it); None otherwise, also where another config of that stage left one in its folder."""
        entry = self.run.manifest()["stages"].get(stage, {})
        listed = any(o["path"] == f"{stage}/{filename}" for o in entry.get("outputs", []))
        return self.run.root / stage / filename if listed else None

    def input(self, stage: str, filename: str) -> Path:
        """A file written by an upstream stage; a clear error if it is not there."""
        path = self.run.root / stage / filename
        if not path.exists():
            raise UserError(f"{path} is missing; run 'compress {stage}' (or 'compress all') first")
        return path


def is_main_process() -> bool:
    return int(os.environ.get("RANK", "0")) == 0


def _barrier(stage: str) -> None:
    """Keep torchrun ranks in step around a stage they all run (rank 0 writes the manifest the others read)."""
    if stage in DISTRIBUTED and int(os.environ.get("WORLD_SIZE", "1")) > 1:
        import torch.distributed as dist

        if dist.is_initialized():
            dist.barrier()


def _env() -> dict:
    versions = {}
    for pkg in ("torch", "torchvision", "onnx", "onnxruntime", "onnxsim", "litert-torch", "ai-edge-litert"):
        try:
            versions[pkg] = metadata.version(pkg)
        except metadata.PackageNotFoundError:
            pass
    return {"python": platform.python_version(), "machine": platform.machine(),
            "system": f"{platform.system()} {platform.release()}", "packages": versions}


class Runner:
    def __init__(self, cfg: config_mod.Config, run: RunDir, console: Console, debug: bool = False):
        self.cfg, self.run, self.console, self.debug = cfg, run, console, debug
        self.stages = available()
        self._external: dict[str, str] = {}

    def fingerprint(self, name: str, manifest: dict) -> str:
        """Stage name + the source of every module of ours it imports + its config sections + its inputs, those
        from upstream stages and those from outside the run (``external``)."""
        mod = load_stage(name)
        secs = sections(mod, self.cfg)
        payload = {
            "stage": name,
            "code": self.code_hash(name),
            "version": pipeline.__version__,
            "config": {s: _without_locations(s, _as_json(self.cfg.section(s))) for s in secs},
            "inputs": {up: [o["sha256"] for o in manifest["stages"].get(up, {}).get("outputs", [])
                            if not _is_log(o.get("path", ""))]
                       for up in upstream(mod, self.cfg)},
        }
        if files := {k: self.external(k) for k in outside.keys(self.cfg, secs)}:
            payload["files"] = files
        return hashlib.sha256(json.dumps(payload, sort_keys=True).encode()).hexdigest()

    def code_hash(self, name: str) -> str:
        """The source of stage ``name`` and of every module of ours it runs, for this config."""
        return codegraph.code_hash(f"stages.{name}", self.chosen_modules(f"stages.{name}"))

    def chosen_modules(self, module: str) -> tuple[str, ...]:
        """The modules ``module`` loads by a config value rather than an import: the data source
        ``data.dataset`` names, for a stage that loads data (pipeline/data/__init__.py)."""
        source = f"pipeline.data.{self.cfg.data.dataset}"
        if "pipeline.data" in codegraph.closure(module) and codegraph.module_file(source):
            return (source,)
        return ()

    def external(self, key: str) -> str:
        """What the file or folder behind config key ``key`` holds now, hashed once per process: a weights
        file's sha256, or a photo folder's image list with sizes and mtimes (as its decode cache keys it)."""
        if key not in self._external:
            self._external[key] = outside.content_hash(self.cfg, key)
        return self._external[key]

    def states(self, manifest: dict) -> dict[str, str]:
        """done, stale or missing for every stage, in order, each stage's outputs hashed once.

        A stage is only done if everything it reads from is done too.
        """
        known: dict[str, str] = {}
        for name in self.stages:
            known[name] = self._own_state(name, manifest, known)
        return known

    def _own_state(self, name: str, manifest: dict, known: dict[str, str]) -> str:
        entry = manifest["stages"].get(name)
        if not entry:
            return "missing"
        if any(known[up] != "done" for up in upstream(load_stage(name), self.cfg) if up in known):
            return "stale"
        if entry.get("fingerprint") != self.fingerprint(name, manifest):
            return "stale"
        for out in entry.get("outputs", []):
            path = self.run.root / out["path"]
            if not path.exists() or path.stat().st_size != out["bytes"] or sha256(path) != out["sha256"]:
                return "stale"
        return "done"

    def select(self, to: str | None = None, start: str | None = None) -> list[str]:
        for stage in (to, start):
            if stage is not None and stage not in self.stages:
                raise UserError(f"unknown stage '{stage}'; stages are: {', '.join(self.stages)}")
        first = self.stages.index(start) if start else 0
        last = self.stages.index(to) if to else len(self.stages) - 1
        if first > last:
            raise UserError(f"--from {start} comes after --to {to}")
        return self.stages[first:last + 1]

    def needed(self, last: str) -> set[str]:
        """``last`` and every stage it reads from, transitively, for this config: a method that distils without
        the adaptive module does not need the adapt stage."""
        wanted, todo = set(), [last]
        while todo:
            name = todo.pop()
            if name not in wanted and name in self.stages:
                wanted.add(name)
                todo.extend(upstream(load_stage(name), self.cfg))
        return wanted

    def run_all(self, selected: list[str], force: str | None = None) -> dict[str, str]:
        """Run what ``selected`` needs; returns every stage's state after it (Runner.states)."""
        if force is not None and force not in self.stages:
            raise UserError(f"unknown stage '{force}' for --force; stages are: {', '.join(self.stages)}")
        if is_main_process():
            self.run.create()
        if force is not None and force not in selected and self.stages.index(force) > self.stages.index(selected[-1]):
            raise UserError(f"--force {force} comes after the last stage selected ({selected[-1]}); nothing would "
                            "rerun: drop --to or force an earlier stage")
        if force is not None and force not in selected:
            raise UserError(f"--force {force} comes before the first stage selected ({selected[0]}), which would "
                            "not rerun it: drop --from or force a selected stage")
        forced = set(self.stages[self.stages.index(force):]) if force else set()
        wanted = self.needed(selected[-1])
        states = self.states(self.run.manifest())
        for name in self.stages[:self.stages.index(selected[0])]:
            if name in wanted and states[name] != "done":
                raise UserError(f"stage '{name}' is {'not done' if states[name] == 'missing' else 'stale'}; run "
                                f"without --from, or 'compress {name}' first")
        to_run = [n for n in selected if n in wanted and (n in forced or states[n] != "done")]
        if to_run:
            preflight.check(self.cfg, to_run)
        for name in selected:
            if not is_main_process() and name not in DISTRIBUTED:
                continue
            if name not in wanted:
                self.console.print(f"[dim]{name}: not read by any later stage with this config, skipped[/dim]")
                continue
            if name not in forced and states[name] == "done":
                self.console.print(f"[dim]{name}: up to date, skipped[/dim]")
                continue
            manifest = self.run.manifest()
            fingerprint = self.fingerprint(name, manifest)
            cached = None if name in forced else self.run.cache.lookup(name, fingerprint)
            if cached is not None:
                self._restore(name, cached)
            else:
                if name in forced:  # --force trains from scratch, not from the resume state
                    if is_main_process():
                        for resume in (self.run.root / name).rglob("last.pt"):
                            resume.unlink()
                    _barrier(name)  # before any torchrun rank looks for it (Context.dir)
                self._run_stage(name, fingerprint)
            if is_main_process():
                self._drop_leftovers(manifest["stages"].get(name), self.run.manifest()["stages"].get(name))
                # the config of what ran; a run that fails before any stage leaves it alone
                atomic_write(self.run.root / "config.yaml", config_mod.dump(self.cfg))
            states = self.states(self.run.manifest())  # what ran changes what comes after it
        return states

    def _drop_leftovers(self, before: dict | None, now: dict | None) -> None:
        """Remove the files the stage's previous variant wrote and this one did not (the student alone of a config
        that no longer trains one, another variant's TFLite files): left in the folder they were read as this
        variant's. Only files the run-cache keeps go, so switching back restores them; others stay, unread."""
        kept = {o["path"] for o in (now or {}).get("outputs", [])}
        for out in (before or {}).get("outputs", []):
            path = self.run.root / out["path"]
            if out["path"] not in kept and path.is_file() and self.run.cache.holds(out) \
                    and sha256(path) == out["sha256"]:
                path.unlink()

    def _restore(self, name: str, entry: dict) -> None:
        """A stage seen before with the same fingerprint: its outputs come back from the run-cache."""
        if is_main_process():
            self.run.cache.restore(entry, self.run.root)
            self.run.record(name, {**entry, "restored": time.strftime("%Y-%m-%dT%H:%M:%S")})
            self.console.print(f"{name}: restored from the run-cache (first run {entry['finished']}, "
                               f"{entry['seconds']:.1f} s of work saved)")
        _barrier(name)

    def _run_stage(self, name: str, fingerprint: str) -> None:
        mod = load_stage(name)
        ctx = Context(self.cfg, self.run, name, fingerprint, self.console, self.debug)
        self.console.rule(f"[bold]{name}")
        started = time.time()
        try:
            outputs = mod.run(ctx)
        finally:  # a rank's scratch copy is of no use once the stage has ended, done or failed
            ctx.discard_scratch()
        if is_main_process():
            entry = {
                "fingerprint": ctx.fingerprint,
                "finished": time.strftime("%Y-%m-%dT%H:%M:%S"),
                "seconds": round(time.time() - started, 2),
                "outputs": [file_record(p, self.run.root) for p in outputs],
                "metrics": ctx.metrics,
                "env": _env(),
            }
            self.run.cache.save(name, entry, self.run.root)
            self.run.record(name, entry)
            self.console.print(f"{name}: done in {entry['seconds']:.1f} s")
        _barrier(name)

    def status_rows(self) -> list[tuple[str, str, str, str, str]]:
        """stage, state, finished, took, number of variants in the run-cache."""
        manifest = self.run.manifest()
        states = self.states(manifest)
        wanted = self.needed(self.stages[-1])
        rows = []
        for name in self.stages:
            if name not in wanted:
                states[name] = "not used"  # by this config ('all' skips it, done or not)
            entry = manifest["stages"].get(name, {})
            seconds = entry.get("seconds")
            rows.append((name, states[name], entry.get("finished", "-"),
                         f"{seconds:.1f} s" if seconds is not None else "-", str(len(self.run.cache.variants(name)))))
        return rows


def _as_json(value):
    return dataclasses.asdict(value) if dataclasses.is_dataclass(value) else value


# keys that say where something is kept, not what is computed: a fingerprint sees their default value, so moving
# the decode cache to another disk retrains nothing (and runs made with the default keep their fingerprints)
LOCATIONS = {"data.cache_dir": config_mod.DataConfig.cache_dir}


def _without_locations(section: str, value):
    if not isinstance(value, dict):
        return value
    return {k: LOCATIONS.get(f"{section}.{k}", v) for k, v in value.items()}
