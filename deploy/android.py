"""``compress bench-android``: push a .tflite to a phone with adb, run TFLite's benchmark_model there and
parse its output into the results.json schema (then merged like any device result).

benchmark_model feeds random inputs, so it gives latency and memory only; a row's accuracy is the host's
for the same file (``accuracy_source``). Its median becomes p50; it prints no p90 / p99 (p5 / p95 instead).
"""
from __future__ import annotations

import os
import re
import shutil
import signal
import subprocess
from pathlib import Path

from pipeline.errors import UserError

DELEGATES = {"xnnpack": ["--use_xnnpack=true"], "gpu": ["--use_gpu=true"], "nnapi": ["--use_nnapi=true"],
             "none": ["--use_xnnpack=false"]}
_NUM = r"([-+]?\d+(?:\.\d+)?(?:[eE][-+]?\d+)?)"
STATS = re.compile(r"count=(\d+) first=\S+ curr=\S+ min=\S+ max=\S+ avg=" + _NUM + r" std=\S+"
                   r"(?: p5=" + _NUM + r" median=" + _NUM + r" p95=" + _NUM + r")?")
SUMMARY = re.compile(r"Inference timings in us: Init: " + _NUM + r", First inference: " + _NUM)
PEAK = re.compile(r"(?:Overall peak memory footprint \(MB\) via periodic monitoring: |"
                  r"Peak memory footprint \(MB\): init=\S+ overall=)" + _NUM)
DELTA = re.compile(r"Memory footprint delta from the start of the tool \(MB\): init=\S+ overall=" + _NUM)


class Adb:
    """adb with an optional serial; a missing binary or a silent device is a UserError."""

    def __init__(self, acfg):
        self.path = shutil.which(acfg.adb) or (acfg.adb if Path(acfg.adb).is_file() else None)
        if self.path is None:
            raise UserError(f"adb not found ('{acfg.adb}'); install Android platform-tools or set android.adb "
                            "to its path")
        self.serial, self.timeout = acfg.serial, acfg.timeout_s

    def __call__(self, *args: str, check: bool = True) -> str:
        cmd = [self.path, *(["-s", self.serial] if self.serial else []), *args]
        # its own process group, so that a timeout also stops what adb started; bytes that are not UTF-8
        # (a vendor's log) are replaced, not fatal
        try:
            proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                                    errors="replace", start_new_session=True)
        except OSError as exc:  # no execute bit, another architecture's binary, not a program at all
            raise UserError(f"cannot run adb '{self.path}': {exc.strerror}; set android.adb to platform-tools' adb "
                            "(chmod +x it if it lost its execute bit)") from None
        try:
            out, err = proc.communicate(timeout=self.timeout)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.communicate()
            raise UserError(f"the device did not answer '{' '.join(args[:2])}' within {self.timeout:.0f} s; "
                            "check the cable and 'adb devices'") from None
        if check and proc.returncode != 0:
            last = (err or out).strip().splitlines()
            raise UserError(f"adb {' '.join(args[:2])} failed: {last[-1] if last else proc.returncode}")
        return out + err

    def device(self) -> str:
        """The serial to use: the configured one if attached, else the only device attached."""
        lines = self("devices", check=False).splitlines()
        ready = [ln.split()[0] for ln in lines if re.match(r"^\S+\s+device\b", ln)]
        if self.serial:
            if self.serial not in ready:
                raise UserError(f"device {self.serial} is not attached and ready (adb devices: "
                                f"{', '.join(ready) or 'none'}); connect it or fix android.serial")
            return self.serial
        if not ready:
            raise UserError("no Android device attached ('adb devices' lists none ready); connect one with USB "
                            "debugging on and accept the prompt")
        if len(ready) > 1:
            raise UserError(f"several devices attached ({', '.join(ready)}); pick one with android.serial")
        self.serial = ready[0]
        return self.serial


def parse(text: str) -> dict:
    """Timings (ms) and memory from benchmark_model's log; a UserError quoting its error when it failed."""
    runs = [m for m in STATS.finditer(text)]
    if not runs or not SUMMARY.search(text):
        lines = [ln.strip() for ln in text.splitlines() if ln.strip()]
        errors = [ln for ln in lines if "ERROR" in ln or "failed" in ln.lower()] or lines[-1:]
        raise UserError("benchmark_model failed: " + ("; ".join(errors[-2:]) if errors else "it printed nothing"))
    last = runs[-1]  # the first block is the warm-up, the last the timed runs
    count, avg, p5, median, p95 = last.groups()
    ms = lambda v: None if v is None else round(float(v) / 1000, 5)  # noqa: E731 - us -> ms
    lat = {"p50_ms": ms(median) if median else ms(avg), "p90_ms": None, "p99_ms": None, "mean_ms": ms(avg),
           "p5_ms": ms(p5), "p95_ms": ms(p95), "runs": int(count)}
    if median is None:
        lat["p50_is_mean"] = True  # older benchmark_model builds print no percentiles
    init, first = SUMMARY.search(text).groups()
    peak, delta = PEAK.search(text), DELTA.search(text)
    return {"latency": lat, "init_ms": ms(init), "first_inference_ms": ms(first),
            "peak_rss_mb": float(peak.group(1)) if peak else None,
            "memory_delta_mb": float(delta.group(1)) if delta else None}


def machine(adb: Adb, serial: str, delegate: str) -> dict:
    """The phone as a report device; the delegate is part of its name, so an xnnpack and a gpu run of one
    phone are two devices in the report, not one replacing the other."""
    prop = lambda key: adb("shell", "getprop", key, check=False).strip()  # noqa: E731
    cores = adb("shell", "cat", "/sys/devices/system/cpu/present", check=False).strip()
    count = int(cores.split("-")[-1]) + 1 if re.fullmatch(r"\d+(-\d+)?", cores) else None
    model = " ".join(prop("ro.product.model").split()) or "android"  # one line: it heads a report column
    return {"device": f"{model} ({serial}, {delegate})", "cpu": prop("ro.soc.model") or prop("ro.board.platform"),
            "cores": count, "arch": prop("ro.product.cpu.abi"), "os": f"Android {prop('ro.build.version.release')}",
            "python": None, "runtimes": {"benchmark_model": "TFLite benchmark_model"}}


def bench_one(adb: Adb, acfg, local: Path, host_row: dict | None) -> dict:
    """Push one model and time it with one thread and with ``acfg.threads`` threads."""
    remote = f"{acfg.remote_dir.rstrip('/')}/{local.name}"
    adb("push", str(local), remote)
    row: dict = {"latency": {}}
    for key, threads in (("one_thread", 1), ("all_cores", acfg.threads)):
        out = adb("shell", acfg.binary, f"--graph={remote}", f"--num_threads={threads}",
                  f"--num_runs={acfg.num_runs}", f"--warmup_runs={acfg.warmup_runs}", *DELEGATES[acfg.delegate],
                  check=False)
        parsed = parse(out)
        row["latency"][key] = {"threads": threads, **parsed.pop("latency")}
        row.update({k: v for k, v in parsed.items() if v is not None})
    if host_row and host_row.get("status") == "ok":
        row.update(top1=host_row["top1"], images=host_row.get("images"), accuracy_source="host (same file)")
    return {**row, "delegate": acfg.delegate}


def check_delegate(acfg) -> None:
    if acfg.delegate not in DELEGATES:
        raise UserError(f"unknown delegate '{acfg.delegate}'; use one of {', '.join(DELEGATES)}")


def measure(acfg, files: list[tuple], host: dict) -> tuple[dict, list[dict]]:
    """Time each (format, local .tflite path) on the phone; ``host`` gives each format's host row, whose
    accuracy the phone's row takes (the same file). Returns the phone's machine info and the rows."""
    check_delegate(acfg)
    adb = Adb(acfg)
    serial = adb.device()
    # first: a phone that stops answering later must not cost the timings taken
    phone = machine(adb, serial, acfg.delegate)
    rows = []
    for fmt, local in files:
        if not local.is_file():
            raise UserError(f"{local} does not exist; run 'compress {fmt.stage}' first")
        base = {"artifact": fmt.name, "format": fmt.name, "runtime": "tflite", "precision": fmt.precision,
                "bytes": local.stat().st_size, "file": local.name}
        try:
            rows.append({**base, "status": "ok", **bench_one(adb, acfg, local, host.get(fmt.name))})
        except UserError as exc:  # this model failed on the phone; the others are still measured
            rows.append({**base, "status": "failed", "reason": str(exc)})
    return phone, rows
