"""Checks run before the first stage of a run: names, widths and the module's stage pairing, each of
which a later stage would otherwise only find after the teacher has trained for many minutes.

They need the model and method registries (torch, torchvision), so they are not part of loading the config,
which stays light for ``compress config`` and ``status``. Errors are the same ``UserError`` the stages raise.
"""
from __future__ import annotations

from pipeline.errors import UserError

NATIVE = {"fashion_mnist": (1, 28), "cifar10": (3, 32)}  # (channels, size) of the data sets we read


def image_shape(dcfg) -> tuple[int, int]:
    """(channels, size) the nets will see, from the config alone (no data is read)."""
    from pipeline import data

    if dcfg.dataset == "synthetic":
        channels, size = dcfg.synthetic_channels, dcfg.synthetic_size
    elif dcfg.dataset == "imagefolder":
        channels, size = 3, data.IMAGEFOLDER_SIZE  # every photo is decoded to RGB
    else:
        channels, size = NATIVE[dcfg.dataset]
    return channels, dcfg.image_size or size


def _check_net(section: str, tcfg) -> None:
    from pipeline import models

    try:
        models.check_arch(tcfg.arch)
    except UserError as exc:
        raise UserError(f"{section}.arch: {exc}") from None
    if tcfg.arch in models.TORCHVISION_NETS and tcfg.width != 1.0:
        raise UserError(f"{section}.width is {tcfg.width}, but {tcfg.arch} comes from torchvision at its "
                        f"published width only; set {section}.width: 1.0")


def check(cfg, stages: list[str]) -> None:
    """Everything about ``cfg`` that the ``stages`` about to run (and those after them) would trip on."""
    from pipeline import data
    from pipeline.distill import adaptive
    from pipeline.distill import methods as distillers

    data.check_dataset(cfg.data.dataset)
    if not {"teacher", "adapt", "distill"} & set(stages):
        return
    distillers.check(cfg.distill.method)
    _check_net("teacher", cfg.teacher)
    _check_net("student", cfg.student)
    if "adapt" in stages:  # only the module's pairing needs the nets built
        from pipeline import models

        channels, size = image_shape(cfg.data)
        teacher, student = (models.create(t.arch, channels, 2, t.width) for t in (cfg.teacher, cfg.student))
        adaptive.plan(teacher, student, cfg.adapt.stages, channels, size)
