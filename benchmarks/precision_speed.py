"""Which precision trains faster on this CPU for every net of the default and photos configs, and what the
``precision: auto`` probe picks for each, in one run.

    .venv/bin/python benchmarks/precision_speed.py [--steps 20] [--threads 2] [--configs default photos]

For each config's teacher and student (its arch, width, batch, channels_last and input size: 28x28x1 for
Fashion-MNIST, data.image_size RGB for a photo folder), prints images/s of a bare training loop in fp32 and in
bf16 autocast (both in the config's memory format), their ratio, and then runs the probe that ``auto`` runs
(pipeline/train/probe.py, on the same net wrapped as the engine's Classifier, with a fresh cache so it measures)
and prints its choice, the ratio it measured and its seconds. Inputs are random images: the speed of a
convolution does not depend on the pixels.
"""
from __future__ import annotations

import argparse
import os
import sys
import tempfile
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).parent))
from engine_throughput import bare_loop  # noqa: E402

from pipeline import config as config_mod  # noqa: E402
from pipeline import models  # noqa: E402
from pipeline.errors import UserError  # noqa: E402
from pipeline.train import probe  # noqa: E402
from pipeline.train.engine import Classifier  # noqa: E402
from pipeline.train.optim import make_optimizer, param_groups  # noqa: E402


def cpu_line() -> str:
    bf16 = [name for name, test in (("AVX-512 BF16", "_is_avx512_bf16_supported"), ("AMX", "_is_amx_tile_supported"))
            if getattr(torch.cpu, test, lambda: False)()]
    return f"{probe.cpu_model()}, {torch.backends.cpu.get_cpu_capability()}, bf16 hardware: {', '.join(bf16) or 'none'}"


def nets(names: list[str]):
    """(config, role, train section, (channels, size)) for the teacher and student of each config."""
    for name in names:
        cfg = config_mod.load(name)
        shape = (3, cfg.data.image_size or 224) if cfg.data.dataset == "imagefolder" else (1, 28)
        for role in ("teacher", "student"):
            yield name, role, getattr(cfg, role), shape


def probe_choice(section, shape: tuple[int, int]) -> dict:
    """The probe ``auto`` runs for this net and batch, measured afresh (an empty cache folder)."""
    torch.manual_seed(0)
    model = models.create(section.arch, shape[0], 10, section.width)
    task = Classifier(model)
    if section.channels_last:
        task.to(memory_format=torch.channels_last)
    x = torch.randn(section.batch_size, shape[0], shape[1], shape[1])
    if section.channels_last:
        x = x.contiguous(memory_format=torch.channels_last)
    y = torch.randint(0, 10, (section.batch_size,))

    def make_opt(twin):
        return make_optimizer(param_groups(twin, twin, section.lr, 1.0), section, 1000)[0]
    with tempfile.TemporaryDirectory() as tmp:
        old = os.environ.get("XDG_CACHE_HOME")
        os.environ["XDG_CACHE_HOME"] = tmp
        try:
            return probe.probe(task, make_opt, x, y, section.channels_last)
        finally:
            os.environ.pop("XDG_CACHE_HOME") if old is None else os.environ.update(XDG_CACHE_HOME=old)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--steps", type=int, default=20)
    parser.add_argument("--threads", type=int, default=torch.get_num_threads())
    parser.add_argument("--configs", nargs="+", default=["default", "photos"])
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    try:
        rows = list(nets(args.configs))
    except UserError as e:
        parser.exit(2, f"error: {e}\n")
    print(f"# Training images/s by precision, bare loop, {args.threads} threads, {args.steps} steps; the probe of "
          f"`auto` (warm-up {probe.WARMUP}, {probe.ROUNDS} rounds x {probe.STEPS} steps per precision)")
    print(f"machine: {cpu_line()}; torch {torch.__version__}\n")
    print("| config | net | input, batch | fp32 | bf16 | bf16 / fp32 | probe: bf16 / fp32 | probe picks | probe s |")
    print("|---|---|---|---|---|---|---|---|---|")
    for name, role, section, (c, size) in rows:
        batch = section.batch_size
        x, y = torch.randn(batch * 2, c, size, size), torch.randint(0, 10, (batch * 2,))
        speeds = {p: bare_loop(section.arch, x, y, batch, args.steps, p, section.channels_last, section.width)
                  for p in ("fp32", "bf16")}
        got = probe_choice(section, (c, size))
        print(f"| {name} | {role} {section.arch} x{section.width:g} | {size}x{size}x{c}, {batch} | "
              f"{speeds['fp32']:.0f} | {speeds['bf16']:.0f} | {speeds['bf16'] / speeds['fp32']:.2f} | "
              f"{got['fp32_step_s'] / got['bf16_step_s']:.2f} | {got['choice']} | {got['probe_s']:.1f} |", flush=True)


if __name__ == "__main__":
    main()
