"""Run a device bundle on an arm64 Debian 12 userland under qemu user-mode emulation, and compare it with the host.

Why our own: ARM builds of tflite-runtime and onnxruntime use other kernels than x86 (NEON, ruy, XNNPACK's ARM
paths, onnxruntime's ARM QDQ kernels), so an int8 model can classify some images differently on a Raspberry Pi.
Without a board, the next best proof is the bundle's own runner.py on Raspberry Pi OS Bookworm's base (Debian 12
arm64, Python 3.11), run through binfmt_misc and qemu-aarch64, with the bundle's requirements.txt installed from
aarch64 wheels that the host downloads (nothing is fetched inside the emulated tree). No tool we know of does
"build an arm64 tree, install these wheels, run this, compare per image" in one step, so this module strings
mmdebstrap, unshare, chroot and pip together.

Every model is run twice on the same eval.npz images: by the host (same runner.py, the host's runtimes) and in
the arm64 tree. The arm64 results.json has ``machine.emulated`` true and the qemu version, and its rows carry
top-1, per-image predictions, ``host_top1`` and ``differ_vs_host`` (images whose top-1 class differs). There is
no latency: emulated time is 10-500x off and says nothing about a board.

What it does not tell you: speed, memory, or anything that depends on a particular ARM core (qemu emulates the
ARMv8 instruction set, not a Cortex-A72's or A76's timing or cache).

The tree and the wheels are cached (default /var/cache/compress-arm64, or $COMPRESS_ARM_CACHE) so a second run on
the same machine only installs and runs. Needs root (binfmt_misc, chroot), mmdebstrap and a qemu-aarch64 binfmt
registration (Debian: qemu-user-static binfmt-support; onnxruntime 1.32 needs qemu >= 8, e.g. bookworm-backports).

    python -m deploy.arm_check runs/smoke/bundle/compress-bundle-<id>.tar.gz [--out arm64.json]
"""
from __future__ import annotations

import argparse
import hashlib
import json
import os
import re
import shutil
import subprocess
import sys
import tarfile
import tempfile
import time
from pathlib import Path

from deploy.runner import BUNDLE_SCHEMA
from pipeline.errors import UserError

DEVICE = "arm64 (emulated)"
SUITE = "bookworm"  # Raspberry Pi OS Bookworm is Debian 12 with the Pi's kernel and firmware on top
PACKAGES = "python3,python3-venv,ca-certificates"
# aarch64 wheel tags the tree's glibc 2.36 accepts, newest first (tflite-runtime 2.14 is manylinux_2_34 only,
# ai-edge-litert 2.3.0 manylinux_2_27 only)
PLATFORMS = ("manylinux_2_34_aarch64", "manylinux_2_28_aarch64", "manylinux_2_27_aarch64", "manylinux2014_aarch64")
BINFMT = Path("/proc/sys/fs/binfmt_misc")
INT8_TOLERANCE = 0.01  # share of images an int8 (or fp16) model may classify differently from the host
TOP = "compress-bundle"


def cache_dir() -> Path:
    return Path(os.environ.get("COMPRESS_ARM_CACHE", "/var/cache/compress-arm64"))


# --- what the machine must have --------------------------------------------------------------------------------

def preflight() -> dict:
    """Root, binfmt_misc mounted, qemu-aarch64 registered: {"interpreter", "qemu"}, or a UserError saying what to do."""
    if os.geteuid() != 0:
        raise UserError("the ARM check needs root (it mounts binfmt_misc and chroots into an arm64 tree); "
                        "run it as root")
    if not (BINFMT / "status").exists():
        proc = _try(["mount", "binfmt_misc", "-t", "binfmt_misc", str(BINFMT)])
        if not (BINFMT / "status").exists():
            raise UserError(f"binfmt_misc is not mounted and cannot be mounted ({proc}); in a container run it "
                            "privileged, or mount binfmt_misc on the host")
    entry = BINFMT / "qemu-aarch64"
    if not entry.is_file() or not entry.read_text().startswith("enabled"):
        _try(["update-binfmts", "--enable", "qemu-aarch64"])
    if not entry.is_file() or not entry.read_text().startswith("enabled"):
        raise UserError("no enabled qemu-aarch64 binfmt registration: apt-get install qemu-user-static "
                        "binfmt-support (qemu >= 8 for onnxruntime: bookworm-backports), then "
                        "update-binfmts --enable qemu-aarch64")
    fields = dict(line.split(" ", 1) for line in entry.read_text().splitlines()[1:] if " " in line)
    interpreter = fields.get("interpreter", "").strip()
    # Debian's *-binfmt-P names only run under binfmt_misc; the file they link to answers --version
    version = _try([os.path.realpath(interpreter), "--version"])
    found = re.search(r"version (\S+)", version)
    return {"interpreter": interpreter, "qemu": found.group(1) if found else "unknown"}


def _try(argv: list) -> str:
    """A command's output, or why it could not run; never raises."""
    try:
        proc = subprocess.run(argv, capture_output=True, text=True, timeout=60)
    except (OSError, subprocess.TimeoutExpired) as exc:
        return str(exc)
    return (proc.stdout + proc.stderr).strip() or f"exit code {proc.returncode}"


def _run(argv: list, what: str, timeout: float = 1800, results: Path | None = None,
         **kw) -> subprocess.CompletedProcess:
    """``argv``, or a UserError with why it failed: stderr's last line; else, for runner.py (exit 2: no model
    measured), the first failed row's reason in its ``results`` file, as its own last line is 'wrote ...';
    else stdout's last line."""
    proc = subprocess.run(argv, capture_output=True, text=True, timeout=timeout, **kw)
    if proc.returncode != 0:
        lines = [ln for ln in proc.stderr.splitlines() if ln.strip()]
        if not lines and proc.returncode == 2 and results is not None and results.is_file():
            rows = json.loads(results.read_text())["rows"]
            lines = [f"{r['artifact']}: {r['reason']}" for r in rows if r["status"] != "ok"][:1]
        lines = lines or [ln for ln in proc.stdout.splitlines() if ln.strip()] or ["no output"]
        raise UserError(f"{what} failed (exit {proc.returncode}): {lines[-1][:300]}")
    return proc


# --- the arm64 tree, its venv, running inside it ------------------------------------------------------------

def ensure_tree(cache: Path, interpreter: str) -> Path:
    """Debian 12 arm64 in ``cache``, built once by mmdebstrap (~2.5 min) and reused after."""
    tree = cache / f"{SUITE}-arm64"
    if not (tree / ".compress-ready").is_file():
        if not shutil.which("mmdebstrap"):
            raise UserError("mmdebstrap is not installed: apt-get install mmdebstrap")
        partial = cache / f"{SUITE}-arm64.partial"
        shutil.rmtree(partial, ignore_errors=True)
        shutil.rmtree(tree, ignore_errors=True)
        cache.mkdir(parents=True, exist_ok=True)
        _run(["mmdebstrap", "--arch=arm64", "--variant=apt", f"--include={PACKAGES}", SUITE, str(partial)],
             "mmdebstrap (building the arm64 tree)")
        (partial / ".compress-ready").write_text(f"{SUITE} {PACKAGES}\n")
        os.replace(partial, tree)
    # without binfmt's F flag the kernel looks for the interpreter inside the chroot
    inside = tree / interpreter.lstrip("/")
    if interpreter and not inside.exists():
        inside.parent.mkdir(parents=True, exist_ok=True)
        shutil.copy2(os.path.realpath(interpreter), inside)
    return tree


def chroot(tree: Path, argv: list, binds: dict, what: str, timeout: float = 3600,
           results: Path | None = None) -> subprocess.CompletedProcess:
    """``argv`` inside ``tree`` with /proc, /sys, /dev and ``binds`` {host dir: path inside} mounted, in a mount
    namespace of its own so nothing stays mounted when it ends (or crashes)."""
    # paths reach the shell through the environment, never pasted into its text
    script = ['set -e', 'mount -t proc proc "$T/proc"', 'mount --rbind /sys "$T/sys"', 'mount --rbind /dev "$T/dev"']
    for i, (src, dst) in enumerate(binds.items()):
        script += [f'mkdir -p "$T{dst}"', f'mount --bind "$B{i}" "$T{dst}"']
    env = {"T": str(tree), "PATH": "/usr/local/bin:/usr/bin:/bin:/usr/sbin:/sbin", "HOME": "/root",
           "LANG": "C.UTF-8", "PIP_DISABLE_PIP_VERSION_CHECK": "1",
           **{f"B{i}": str(src) for i, src in enumerate(binds)}}
    script.append('exec chroot "$T" "$@"')
    return _run(["unshare", "--mount", "--propagation", "private", "sh", "-c", "; ".join(script), "sh", *argv],
                what, timeout=timeout, results=results, env=env)


def download_wheels(requirements: str, cache: Path) -> Path:
    """aarch64 cp311 wheels of ``requirements`` (and their dependencies), fetched by the host's pip, cached."""
    key = hashlib.sha256((requirements + " ".join(PLATFORMS)).encode()).hexdigest()[:12]
    wheels = cache / "wheels" / key
    if not (wheels / ".ready").is_file():
        partial = wheels.with_suffix(".partial")
        shutil.rmtree(partial, ignore_errors=True)
        partial.mkdir(parents=True)
        (partial / "requirements.txt").write_text(requirements)
        platforms = [a for p in PLATFORMS for a in ("--platform", p)]
        _run([sys.executable, "-m", "pip", "download", "-q", "--only-binary=:all:", "--python-version", "3.11",
              "--implementation", "cp", *platforms, "-d", str(partial), "-r", str(partial / "requirements.txt")],
             "pip download of the aarch64 wheels", timeout=900)
        (partial / ".ready").write_text("ok\n")
        shutil.rmtree(wheels, ignore_errors=True)
        os.replace(partial, wheels)
    return wheels


def ensure_venv(tree: Path, wheels: Path) -> str:
    """A venv in the tree with the bundle's requirements installed from ``wheels`` (no network); its python."""
    venv = f"/opt/compress-venv-{wheels.name}"
    if not (tree / venv.lstrip("/") / ".ready").is_file():
        shutil.rmtree(tree / venv.lstrip("/"), ignore_errors=True)
        chroot(tree, ["python3", "-m", "venv", venv], {}, "python3 -m venv in the arm64 tree")
        chroot(tree, [f"{venv}/bin/pip", "install", "-q", "--no-index", "--find-links", "/mnt/wheels", "-r",
                      "/mnt/wheels/requirements.txt"], {wheels: "/mnt/wheels"}, "pip install in the arm64 tree")
        (tree / venv.lstrip("/") / ".ready").write_text("ok\n")
    return f"{venv}/bin/python"


# --- the check -------------------------------------------------------------------------------------------------

def unpack(bundle: Path, dest: Path) -> Path:
    """The bundle's folder (a .tar.gz is unpacked into ``dest``); a UserError when it has no models."""
    bundle = Path(bundle)
    if bundle.is_dir():
        folder = bundle
    elif bundle.is_file() and tarfile.is_tarfile(bundle):
        with tarfile.open(bundle) as tar:
            tar.extractall(dest, filter="data")
        folder = dest / TOP
    else:
        raise UserError(f"{bundle} is not a bundle (a compress-bundle-*.tar.gz or its unpacked folder); "
                        "run 'compress bundle' first")
    try:
        spec = json.loads((folder / "bundle.json").read_text())
    except (OSError, ValueError):
        raise UserError(f"{bundle} has no readable bundle.json; rebuild it with 'compress bundle'") from None
    if not isinstance(spec, dict) or spec.get("schema") != BUNDLE_SCHEMA:
        raise UserError(f"{bundle}: its bundle.json is not of format {BUNDLE_SCHEMA}; rebuild the bundle with "
                        "'compress bundle'")
    if not spec.get("models"):
        raise UserError(f"{bundle} carries no models; rebuild it with 'compress bundle --format NAME'")
    return folder


def compare(host: dict, arm: dict) -> list[dict]:
    """Per artifact: host top-1, arm64 top-1, images whose predicted class differs (None where a side failed), and
    for TFLite the arm64 runtime package and the XNNPACK partitions each side made of the file (whether a Pi's int8
    file runs in XNNPACK at all depends on the runtime the bundle installs)."""
    by_name = {r["artifact"]: r for r in host["rows"]}
    out = []
    for row in arm["rows"]:
        ref = by_name.get(row["artifact"], {})
        both = row["status"] == "ok" and ref.get("status") == "ok"
        differ = sum(a != b for a, b in zip(row["predictions"], ref["predictions"])) if both else None
        out.append({"artifact": row["artifact"], "precision": row.get("precision", "?"),
                    "images": row.get("images") or ref.get("images"), "host_top1": ref.get("top1"),
                    "arm_top1": row.get("top1"), "differ": differ, "package": row.get("tflite_package"),
                    "host_partitions": ref.get("xnnpack_partitions"), "partitions": row.get("xnnpack_partitions"),
                    "reason": None if both else row.get("reason") or ref.get("reason") or "missing on the host"})
    return out


def problems(rows: list[dict]) -> list[str]:
    """What fails the check: a failed model, an fp32 model with any image classified differently, any other
    precision with more than INT8_TOLERANCE of the images different."""
    out = []
    for r in rows:
        if r["differ"] is None:
            out.append(f"{r['artifact']}: not measured on both machines ({r['reason']})")
        elif r["precision"] == "fp32" and r["differ"]:
            out.append(f"{r['artifact']}: fp32, yet {r['differ']} of {r['images']} images differ from the host")
        elif r["differ"] > INT8_TOLERANCE * r["images"]:
            out.append(f"{r['artifact']}: {r['differ']} of {r['images']} images differ from the host "
                       f"(more than {INT8_TOLERANCE:.0%})")
    return out


def markdown(rows: list[dict]) -> str:
    pct = lambda v: "-" if v is None else f"{100 * v:.2f}"  # noqa: E731
    dash = lambda v: "-" if v is None else v  # noqa: E731
    lines = ["| artifact | precision | images | host top-1 % | arm64 top-1 % | images that differ "
             "| arm64 TFLite runtime | XNNPACK partitions host / arm64 |", "|---|---|---|---|---|---|---|---|"]
    lines += [f"| {r['artifact']} | {r['precision']} | {r['images']} | {pct(r['host_top1'])} | {pct(r['arm_top1'])} "
              f"| {'failed: ' + str(r['reason'])[:60] if r['differ'] is None else r['differ']} "
              f"| {dash(r.get('package'))} | {dash(r.get('host_partitions'))} / {dash(r.get('partitions'))} |"
              for r in rows]
    return "\n".join(lines) + "\n"


def check(bundle: Path, out: Path, cache: Path | None = None, log=print) -> tuple[dict, list[dict], dict]:
    """Run ``bundle`` on the host and in the arm64 tree; write the arm64 results.json to ``out``.
    Returns (arm64 results document, comparison rows, seconds per step)."""
    cache, times, start = Path(cache or cache_dir()), {}, time.perf_counter()
    qemu = preflight()
    with tempfile.TemporaryDirectory(prefix="compress-arm-") as tmp:
        folder = unpack(bundle, Path(tmp))
        runtimes = {m["runtime"] for m in json.loads((folder / "bundle.json").read_text())["models"]}
        if "onnxruntime" in runtimes and qemu["qemu"].split(".")[0].isdigit() and int(qemu["qemu"].split(".")[0]) < 8:
            log(f"warning: onnxruntime's aarch64 build crashed under qemu 7.2 here; qemu {qemu['qemu']} may fail "
                "the ONNX rows (qemu-user-static from bookworm-backports runs them)")
        lap = time.perf_counter()
        tree = ensure_tree(cache, qemu["interpreter"])
        times["tree"], lap = time.perf_counter() - lap, time.perf_counter()
        wheels = download_wheels((folder / "requirements.txt").read_text(), cache)
        python = ensure_venv(tree, wheels)
        times["install"], lap = time.perf_counter() - lap, time.perf_counter()
        log(f"arm64 tree {tree} (qemu {qemu['qemu']}); running the bundle on the host, then in the tree")
        flags = ["--device", DEVICE, "--accuracy-only"]
        _run([sys.executable, str(folder / "runner.py"), "--bundle", str(folder), "--out", str(folder / "host.json"),
              *flags], "the bundle's runner on the host", results=folder / "host.json")
        times["host_run"], lap = time.perf_counter() - lap, time.perf_counter()
        chroot(tree, [python, "/mnt/bundle/runner.py", "--bundle", "/mnt/bundle", "--out", "/mnt/bundle/arm64.json",
                      *flags], {folder: "/mnt/bundle"}, "the bundle's runner in the arm64 tree",
               results=folder / "arm64.json")
        times["arm_run"] = time.perf_counter() - lap
        host, arm = (json.loads((folder / f).read_text()) for f in ("host.json", "arm64.json"))
    rows = compare(host, arm)
    for row, cmp in zip(arm["rows"], rows):
        row.update(emulated=True, host_top1=cmp["host_top1"], differ_vs_host=cmp["differ"])
    arm["machine"].update(emulated=True, qemu=qemu["qemu"], host_cpu=host["machine"]["cpu"],
                          host_runtimes=host["machine"]["runtimes"])
    times["total"] = time.perf_counter() - start
    out = Path(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps({**arm, "check_seconds": {k: round(v, 1) for k, v in times.items()}}, indent=2) + "\n")
    return arm, rows, times


def summary(rows: list[dict], times: dict) -> str:
    t = {k: f"{v:.0f} s" for k, v in times.items()}
    return (markdown(rows) + f"\nARM check wall time {t['total']} (tree {t['tree']}, install {t['install']}, "
            f"host run {t['host_run']}, arm64 run {t['arm_run']})\n")


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description="Run a compress bundle on an emulated arm64 Debian 12 and "
                                                 "compare each image's prediction with the host's.")
    parser.add_argument("bundle", type=Path, help="compress-bundle-*.tar.gz or its unpacked folder")
    parser.add_argument("--out", type=Path, default=Path("arm64-emulated.json"))
    parser.add_argument("--cache", type=Path, default=None, help=f"tree and wheel cache (default {cache_dir()})")
    args = parser.parse_args(argv)
    try:
        _, rows, times = check(args.bundle, args.out, args.cache)
    except UserError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    print(summary(rows, times) + f"wrote {args.out}; merge it with: compress report --add {args.out}")
    bad = problems(rows)
    for line in bad:
        print(f"FAIL {line}")
    return 1 if bad else 0


if __name__ == "__main__":
    sys.exit(main())
