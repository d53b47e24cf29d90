"""What a stage reads from outside the run folder, and which can change under the same config: a photo folder
and starting weights. Their content goes into the stage's fingerprint."""
from __future__ import annotations

from pathlib import Path

from pipeline import config as config_mod
from pipeline.errors import UserError
from pipeline.files import sha256


def keys(cfg: config_mod.Config, secs: tuple[str, ...]) -> list[str]:
    """The config keys among ``secs`` that name data outside the run folder which can change under the same
    config: a photo folder and starting weights. (Fashion-MNIST and CIFAR-10 are fixed public files.)"""
    keys = []
    if "data" in secs and cfg.data.dataset == "imagefolder":
        keys.append("data.root")
    for net in ("teacher", "student"):
        weights = cfg.section(net).weights
        if (net in secs or f"{net}.weights" in secs) and weights and weights != "DEFAULT":
            keys.append(f"{net}.weights")
    return keys


def content_hash(cfg: config_mod.Config, key: str) -> str:
    """A hash of what ``key`` names now; an unreadable path hashes as the error, so its stage is stale and the
    stage itself reports the error when it runs."""
    try:
        if key == "data.root":
            from pipeline.data import imagefolder, photo_scan
            d = cfg.data
            return imagefolder.content(photo_scan.scan(Path(d.root), d.test_fraction, d.val_fraction, cfg.seed))
        return sha256(Path(cfg.section(key.split(".")[0]).weights).expanduser())
    except (OSError, UserError) as exc:
        return f"unreadable: {exc}"
