"""The activation-map adaptive module (our reading of Wu et al., 2020; see docs/method.md).

For each adapted teacher stage ``i`` a small trainable ``Adapter`` replaces the teacher's stage: it takes the
teacher's input to stage ``i`` and produces a map of exactly the shape of the student's stage at the same
resolution (channels, height, width; see ``plan``); a 1x1 projection maps that back to the teacher's width so
the teacher's later stages run on it. The student-shaped map is the hint the student learns from.
"""
from __future__ import annotations

import torch
from torch import nn

from pipeline.errors import UserError


class Adapter(nn.Module):
    """Two 3x3 conv-BN-ReLU layers (the first strided) to the student's shape, then a 1x1 projection back."""

    def __init__(self, cin: int, cout: int, stride: int, teacher_out: int):
        super().__init__()
        self.body = nn.Sequential(
            nn.Conv2d(cin, cout, 3, stride, 1, bias=False), nn.BatchNorm2d(cout), nn.ReLU(inplace=True),
            nn.Conv2d(cout, cout, 3, 1, 1, bias=False), nn.BatchNorm2d(cout), nn.ReLU(inplace=True))
        self.proj = nn.Sequential(nn.Conv2d(cout, teacher_out, 1, bias=False), nn.BatchNorm2d(teacher_out),
                                  nn.ReLU(inplace=True))


def stage_shapes(net: nn.Module, channels: int, size: int) -> tuple[list[tuple], list[tuple]]:
    """(C, H, W) of every stage's input and output for one image of ``channels`` x ``size`` x ``size``."""
    was_training = net.training
    net.eval()
    ins, outs = [], []
    with torch.no_grad():
        h = net.stem(torch.zeros(1, channels, size, size))
        for stage in net.stages:
            ins.append(tuple(h.shape[1:]))
            h = stage(h)
            outs.append(tuple(h.shape[1:]))
    net.train(was_training)
    return ins, outs


def _resolutions(outs: list[tuple], size: int) -> str:
    return ", ".join(f"{h}x{w} (stride {size // h})" if h else f"{h}x{w}" for _, h, w in outs)


def stage_pairs(teacher: nn.Module, student: nn.Module, channels: int, size: int) -> dict[int, int]:
    """Teacher stage -> the first student stage whose map has the same height and width; a clear error when
    they share none.

    Stages are aligned by resolution, not by index: unlike nets (a ResNet teacher, a MobileNet student)
    have different numbers of stages at different strides, but a teacher map at stride s pairs with the
    student's at s. Every method that matches maps (ama, fitnets, at) pairs them this way.
    """
    return _pairs(stage_shapes(teacher, channels, size)[1], stage_shapes(student, channels, size)[1], size)


def _pairs(t_out: list[tuple], s_out: list[tuple], size: int) -> dict[int, int]:
    by_res = {o[1:]: j for j, o in reversed(list(enumerate(s_out)))}  # the first student stage at a resolution
    pairs = {i: by_res[o[1:]] for i, o in enumerate(t_out) if o[1:] in by_res}
    if not pairs:
        raise UserError(f"teacher and student share no map resolution at {size} px: the teacher's maps are "
                        f"{_resolutions(t_out, size)}, the student's {_resolutions(s_out, size)}")
    return pairs


def plan(teacher: nn.Module, student: nn.Module, stages, channels: int, size: int) -> list[dict]:
    """For each adapted teacher stage: the adapter's input channels, output shape and stride, and the
    student stage of the same resolution (see ``stage_pairs``); a clear error otherwise."""
    t_in, t_out = stage_shapes(teacher, channels, size)
    _, s_out = stage_shapes(student, channels, size)
    pairs = _pairs(t_out, s_out, size)
    if not stages:
        raise UserError("adapt.stages is empty; list at least one teacher stage, e.g. [1]")
    specs = []
    for i in sorted(set(stages)):
        if not 0 <= i < len(t_out):
            raise UserError(f"adapt.stages has {i}, out of range: the teacher's stages are 0..{len(t_out) - 1}")
        (cin, hin, win), (ct, ht, wt) = t_in[i], t_out[i]
        j = pairs.get(i)
        if j is None or hin % ht or win % wt:
            raise UserError(f"adapt.stages has {i}, whose {ht}x{wt} map no student stage has; stages with a "
                            f"student match: {sorted(pairs)} (teacher maps {_resolutions(t_out, size)}, "
                            f"student maps {_resolutions(s_out, size)})")
        specs.append({"stage": i, "student_stage": j, "in_channels": cin, "student_shape": tuple(s_out[j]),
                      "stride": hin // ht, "teacher_channels": ct})
    return specs


class AdaptedTeacher(nn.Module):
    """The teacher with some stages replaced by adapters. ``forward`` gives logits; ``forward_hints`` also
    gives the adapters' student-shaped maps. The teacher's own weights are frozen."""

    def __init__(self, teacher: nn.Module, specs: list[dict]):
        super().__init__()
        self.teacher = teacher
        for p in teacher.parameters():
            p.requires_grad_(False)
        self.specs = specs
        self.adapters = nn.ModuleDict({
            str(s["stage"]): Adapter(s["in_channels"], s["student_shape"][0], s["stride"], s["teacher_channels"])
            for s in specs})

    @property
    def stages(self) -> list[int]:
        return [s["stage"] for s in self.specs]

    @property
    def student_stages(self) -> dict[int, int]:
        """Adapted teacher stage -> the student stage whose map its hint matches."""
        return {s["stage"]: s.get("student_stage", s["stage"]) for s in self.specs}

    def train(self, mode: bool = True):
        """Only the adapters ever train; the frozen teacher keeps its BatchNorm statistics."""
        super().train(mode)
        self.teacher.eval()
        return self

    def forward_hints(self, x: torch.Tensor, projections: dict | None = None):
        """Logits and {stage: student-shaped map}; ``projections``, if given, receives the maps handed back to
        the teacher (what its own stage would have output), which the adapt stage matches."""
        h = self.teacher.stem(x)
        hints = {}
        for i in range(len(self.teacher.stages)):
            h = self._stage(i, h, hints, projections)
        return self.teacher.head(h), hints

    def original_logits_and_hints(self, x: torch.Tensor):
        """The original teacher's logits and the adapters' hints in one pass, what ``distill.kd_target:
        original`` caches: the stages before the first adapter run once for both, and nothing of the adapted
        teacher runs past its last adapter (its logits are not wanted). About half the cost of ``forward_hints``
        plus the original teacher."""
        orig = adapted = self.teacher.stem(x)
        hints: dict = {}
        last = max(self.stages)
        for i, stage in enumerate(self.teacher.stages):
            shared = adapted is orig
            orig = stage(orig)
            if i <= last:
                adapted = orig if shared and str(i) not in self.adapters else self._stage(i, adapted, hints)
        return self.teacher.head(orig), hints

    def _stage(self, i: int, h: torch.Tensor, hints: dict | None = None, projections: dict | None = None):
        """Teacher stage ``i``, or its adapter (body, then projection) where one replaces it."""
        adapter = self.adapters[str(i)] if str(i) in self.adapters else None
        if adapter is None:
            return self.teacher.stages[i](h)
        hint = adapter.body(h)
        out = adapter.proj(hint)
        if hints is not None:
            hints[i] = hint
        if projections is not None:
            projections[i] = out
        return out

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.forward_hints(x)[0]

    def route(self, stage: int, student_map: torch.Tensor) -> torch.Tensor:
        """Logits of the rest of the adapted teacher run on a student-shaped map put in place of adapted stage
        ``stage``'s: its projection, the later stages, the head. Given the module's own hint it gives
        ``forward``'s logits; given the student's map it tells the student what the teacher makes of it."""
        h = self.adapters[str(stage)].proj(student_map)
        for i in range(stage + 1, len(self.teacher.stages)):
            h = self._stage(i, h)
        return self.teacher.head(h)

    def adapter_state(self) -> dict:
        """What adapt/adapted.pt holds: plain tensors and lists, loadable with weights_only=True."""
        return {"stages": self.stages, "specs": [{k: list(v) if isinstance(v, tuple) else v for k, v in s.items()}
                                                 for s in self.specs],
                "state_dict": {k: v.detach().cpu().contiguous() for k, v in self.adapters.state_dict().items()}}


def build(teacher: nn.Module, student: nn.Module, stages, channels: int, size: int) -> AdaptedTeacher:
    return AdaptedTeacher(teacher, plan(teacher, student, stages, channels, size))


def load_adapted(path, teacher: nn.Module, student: nn.Module, channels: int, size: int) -> AdaptedTeacher:
    """Rebuild the adapted teacher that adapt/adapted.pt describes, checking it fits this teacher/student."""
    from pipeline.models import read_checkpoint

    state = read_checkpoint(path)
    if not isinstance(state, dict) or "stages" not in state or "state_dict" not in state:
        raise UserError(f"{path} is not an adapted-module file; rerun 'compress adapt --force adapt'")
    model = build(teacher, student, state["stages"], channels, size)
    try:
        model.adapters.load_state_dict(state["state_dict"])
    except RuntimeError as exc:
        raise UserError(f"{path} was adapted for another teacher/student pair; rerun 'compress adapt' "
                        "with --force adapt") from exc
    return model
