"""The ARM check's figures: its wall time (tree build + install + runs) and, per bundled artifact, host top-1,
arm64 top-1, the images whose top-1 class differs and the XNNPACK partitions of each TFLite file, on the bundle's
images, once per TFLite runtime a bundle can install (the default's bundle with every format, the others' with the
TFLite formats only: what changes between them is the TFLite runtime).

    sudo .venv/bin/python benchmarks/arm_check.py [--run-dir /tmp/arm-fm] [--cold]

Makes the run if its benchmark stage is missing (Fashion-MNIST, the smoke config's tiny nets trained briefly: a
real classifier in a few minutes, unlike the smoke config's synthetic data where everything predicts alike), packs
the bundle (bundle.formats: TFLite fp32/fp16/int8, ONNX fp32 and ARM QDQ int8; 1000 test images), then runs
deploy/arm_check.py on it. ``--cold`` uses an empty cache so the arm64 tree is built and the wheels installed
inside the timing (what a CI machine's first run pays); without it the cached tree is reused. Goal: <= 10 min.
"""
from __future__ import annotations

import argparse
import subprocess
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

RUN = ["-c", "smoke", "-s", "data.dataset=fashion_mnist", "-s", "data.train_subset=12000", "-s", "teacher.epochs=3",
       "-s", "bundle.images=1000", "-s", "benchmark.eval_images=1000"]


def main() -> None:
    from deploy import arm_check
    from deploy.bundle import TFLITE_RUNTIMES
    from deploy.runner import cpu_name

    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--run-dir", type=Path, default=Path("/tmp/arm-fm"))
    parser.add_argument("--cold", action="store_true", help="build the arm64 tree and install inside the timing")
    args = parser.parse_args()
    compress = [str(Path(sys.executable).with_name("compress")), *RUN, "-r", str(args.run_dir)]
    if not (args.run_dir / "benchmark" / "results.json").is_file():
        subprocess.run([*compress, "all"], check=True, cwd=ROOT, stdout=subprocess.DEVNULL)
    tflite_only = [a for f in ("tflite_fp32", "tflite_fp16", "tflite_int8") for a in ("--format", f)]
    with tempfile.TemporaryDirectory(prefix="arm-cache-", dir="/var/tmp") as cold:
        cache = Path(cold) if args.cold else None
        for i, runtime in enumerate(TFLITE_RUNTIMES):
            bundle = args.run_dir / "bundle" / f"bench-{runtime}.tar.gz"
            formats = tflite_only if i else []
            subprocess.run([*compress, "bundle", "--runtime", runtime, "--out", str(bundle), *formats],
                           check=True, cwd=ROOT, stdout=subprocess.DEVNULL)
            doc, rows, times = arm_check.check(bundle, args.run_dir / "bundle" / f"arm64-{runtime}.json", cache)
            m = doc["machine"]
            print(f"## bundle.runtime {runtime}\n\nhost: {cpu_name()}, {m['cores']} cores; arm64: Debian 12 "
                  f"({m['os']}), Python {m['python']}, qemu {m['qemu']}, runtimes "
                  + ", ".join(f"{k} {v}" for k, v in m["runtimes"].items()))
            print("host runtimes: " + ", ".join(f"{k} {v}" for k, v in m["host_runtimes"].items() if k != "torch"))
            print(f"cache: {'cold (tree built, wheels installed)' if args.cold else 'warm (tree reused)'}\n")
            print(arm_check.summary(rows, times))
            for line in arm_check.problems(rows):
                print(f"FAIL {line}")


if __name__ == "__main__":
    main()
