"""``precision: auto`` on a CPU: a short timed probe of fp32 against bf16 autocast on the stage's own task, input
shape and batch, cached per machine.

CPU flags do not predict which precision trains faster: bf16 + channels_last was about 2x fp32 on Zen 4 and AMX
Xeons, 0.81-0.92x on an AVX-512 BF16 Xeon without AMX and 1.12x there for MobileNetV2
(benchmarks/results/precision.md). So the probe times a few optimizer steps in each precision, on a deep copy of
the task and a fresh optimizer (the training state and the RNG are left as they were), and trains in bf16 only
if it is at least ``MARGIN`` faster: a near tie keeps fp32, whose results do not depend on the CPU's bf16 kernels.

The result is kept in ``$XDG_CACHE_HOME/compress/precision/`` (default ``~/.cache``) under a key of the CPU model,
core and thread counts, torch version, any kernel cap set in the environment (``KERNEL_CAPS``), the task's layers,
input shape and batch, so later stages and runs on the same machine reuse it instead of probing again.

A probe that finds bf16 ``EMULATED`` times slower or worse also marks the machine (CPU model, cores, threads, torch,
kernel caps): bf16 runs in software there, 11-14x slower for every net measured on an AVX2 CPU, and even the
shortest probe of another net costs two such steps (the default adapt stage's: 5 s, 3.5% of that stage). Later tasks
on that machine train in fp32 without a probe, their record naming the task whose probe found it. The other CPUs
measured came nowhere near that ratio (bf16 at worst 2x slower, on an AVX-512 Xeon without BF16;
benchmarks/results/precision.md), so they are still probed per net.
"""
from __future__ import annotations

import copy
import hashlib
import json
import os
import platform
import time
from pathlib import Path

import torch

from pipeline.train.precision import autocast

MARGIN = 1.05  # bf16 must take at most 1/MARGIN of fp32's step time
WARMUP = 2  # untimed steps per precision first (oneDNN builds its kernels on the first ones)
ROUNDS = 3  # timed rounds, alternating fp32 and bf16 so a burst of load elsewhere hits both
STEPS = 2  # optimizer steps per round
DECISIVE = 2.0  # a round where one precision takes this many times the other's step time ends the probe
EMULATED = 4.0  # bf16 this many times slower than fp32: the CPU has no bf16 hardware; no net on it is probed again
# environment variables that cap the instruction sets PyTorch's and oneDNN's kernels use: the same CPU under a cap
# is another machine for the probe (capped at AVX2, bf16 is emulated: 6-11x slower than fp32 where it was 2x faster)
KERNEL_CAPS = ("ATEN_CPU_CAPABILITY", "ONEDNN_MAX_CPU_ISA", "DNNL_MAX_CPU_ISA")
clock = time.perf_counter


def cache_dir() -> Path:
    return Path(os.environ.get("XDG_CACHE_HOME", Path.home() / ".cache")) / "compress" / "precision"


def cpu_model() -> str:
    """The CPU's model name from /proc/cpuinfo (the same CPU in another VM shape is another key anyway)."""
    try:
        for line in Path("/proc/cpuinfo").read_text(errors="replace").splitlines():
            key, _, value = line.partition(":")
            if key.strip() == "model name":
                return value.strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def key(task: torch.nn.Module, shape: tuple, batch: int, channels_last: bool, world: int = 1) -> dict:
    """What decides the speeds: the machine, torch, and the task's layers (their repr), which of its parameters
    train, the input shape, batch and memory format."""
    trainable = sum(p.numel() for p in task.parameters() if p.requires_grad)
    net = hashlib.sha256(f"{task!r}\n{trainable}".encode()).hexdigest()[:16]
    return {**_machine(world), "task": type(task).__name__, "net": net, "shape": list(shape), "batch": batch,
            "channels_last": channels_last}


def machine_key(world: int = 1) -> dict:
    return {**_machine(world), "verdict": "bf16 emulated"}


def _machine(world: int) -> dict:
    caps = {name: os.environ[name] for name in KERNEL_CAPS if os.environ.get(name)}
    return {"cpu": cpu_model(), "cores": os.cpu_count(), "threads": torch.get_num_threads(), "world": world,
            "torch": torch.__version__, **({"kernel_caps": caps} if caps else {})}


def _path(k: dict) -> Path:
    return cache_dir() / (hashlib.sha256(json.dumps(k, sort_keys=True).encode()).hexdigest()[:24] + ".json")


def lookup(k: dict) -> dict | None:
    """The cached probe for key ``k``, or None (also for an unreadable or foreign entry: the probe reruns)."""
    try:
        entry = json.loads(_path(k).read_text())
    except (OSError, ValueError):
        return None
    return entry if isinstance(entry, dict) and entry.get("key") == k and entry.get("choice") in ("fp32", "bf16") \
        else None


def store(k: dict, record: dict) -> None:
    """Keep ``record`` for key ``k``; a cache folder that cannot be written only costs a probe next time."""
    from pipeline.files import atomic_json

    try:
        _path(k).parent.mkdir(parents=True, exist_ok=True)
        atomic_json(_path(k), {"key": k, **record})
    except OSError:
        pass


def choose(fp32_step_s: float, bf16_step_s: float) -> str:
    """bf16 only where it is at least MARGIN faster than fp32."""
    return "bf16" if fp32_step_s >= MARGIN * bf16_step_s else "fp32"


def measure(task, make_opt, x: torch.Tensor, y: torch.Tensor) -> dict[str, float]:
    """Seconds per optimizer step in fp32 and bf16: the best of ROUNDS rounds of STEPS steps each (load from
    other processes only ever adds time), after WARMUP steps whose first builds the kernels and is not counted, on
    a copy of ``task`` and its optimizer. As soon as one precision is DECISIVE times slower (already on the
    warm-up's warm steps) it ends: that is the CPU without bf16 hardware, where every bf16 step costs about ten
    fp32 ones, and each saved bf16 step is ten fp32 ones (the photos teacher's probe: 78 -> 34 s on AVX2)."""
    shared = getattr(task, "cache", None)  # a distiller's teacher-target cache is read-only: share, do not copy
    counts = (shared.hits, shared.misses) if shared is not None else None
    memo = {id(shared): shared} if shared is not None else {}
    runs = {}
    with torch.random.fork_rng(devices=[]):
        for precision in ("fp32", "bf16"):
            twin = copy.deepcopy(task, memo={**memo})
            twin.train()
            runs[precision] = (twin, make_opt(twin))
        best = {p: float("inf") for p in runs}
        for r in range(-1, ROUNDS):
            for precision, (twin, opt) in runs.items():
                times = []
                for _ in range(WARMUP if r < 0 else STEPS):
                    started = clock()
                    with autocast(x.device, precision):
                        loss, _ = twin(x, y)
                    opt.zero_grad(set_to_none=True)
                    loss.backward()
                    opt.step()
                    times.append(clock() - started)
                timed = times[1:] if r < 0 else times  # a warm-up's first step builds kernels; the rest are warm
                if timed:
                    best[precision] = min(best[precision], sum(timed) / len(timed))
            if max(best.values()) >= DECISIVE * min(best.values()):
                break  # more rounds cannot change so clear a choice (bf16 emulated on AVX2 is ~10x slower)
    if counts is not None:
        shared.hits, shared.misses = counts
    return best


def describe(record: dict) -> str:
    """One line: how much faster or slower bf16 was, what the probe cost or where it came from, the choice."""
    ratio = record["fp32_step_s"] / record["bf16_step_s"]
    how = f"{ratio:.2f}x faster than" if ratio >= 1 else f"{1 / ratio:.2f}x slower than"
    src = (f"measured {record['measured']}, cached" if record.get("cached")
           else f"probe {record['probe_s']:.1f} s")
    if record.get("found_by"):
        src = f"no bf16 hardware: an earlier probe ({record['found_by']}, {record['measured']}) found it, cached"
    margin = " (under the 5% margin)" if 1 <= ratio < MARGIN else ""
    return f"bf16 {how} fp32 here{margin} ({src}): training in {record['choice']}"


def probe(task, make_opt, x: torch.Tensor, y: torch.Tensor, channels_last: bool, world: int = 1) -> dict:
    """The cached record for this task and input, else a fresh measurement (stored). The record says the choice,
    both step times, the probe's seconds and whether it came from the cache."""
    k = key(task, tuple(x.shape[1:]), len(x), channels_last, world)
    hit = lookup(k)
    if hit is not None:
        return {**{f: v for f, v in hit.items() if f != "key"}, "cached": True}
    started = time.perf_counter()
    emulated = lookup(machine_key(world))
    if emulated is not None:
        return {**{f: v for f, v in emulated.items() if f != "key"}, "cached": True}
    fp32, bf16 = (round(s, 6) for s in measure(task, make_opt, x, y).values())
    record = {"choice": choose(fp32, bf16), "fp32_step_s": fp32, "bf16_step_s": bf16,
              "probe_s": round(time.perf_counter() - started, 2), "measured": time.strftime("%Y-%m-%d %H:%M")}
    store(k, record)
    if bf16 >= EMULATED * fp32:
        store(machine_key(world), {**record, "probe_s": 0.0, "found_by": type(task).__name__})
    return {**record, "cached": False}
