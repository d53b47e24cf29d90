"""Our own small networks for 28-32 px inputs (CIFAR-style ResNets, wide ResNets, a MobileNetV2): each is a
StagedNet, stem -> stages (one per resolution level) -> head, written so its stage-wise activation maps come
out of one plain loop (``forward_maps``). torchvision's ImageNet-shaped nets downsample 32x before their
last stage, which leaves a 1x1 map of a 32 px image; these keep 3 stages at strides 1, 2 and 4."""
from __future__ import annotations

import torch
from torch import nn

from pipeline.errors import UserError


class StagedNet(nn.Module):
    """stem, a list of stages (each a resolution level) and a pooled linear head."""

    def __init__(self, stem: nn.Module, stages: list[nn.Module], channels: list[int], num_classes: int):
        super().__init__()
        self.stem = stem
        self.stages = nn.ModuleList(stages)
        self.stage_channels = list(channels)
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.fc = nn.Linear(channels[-1], num_classes)

    def head(self, h: torch.Tensor) -> torch.Tensor:
        return self.fc(torch.flatten(self.pool(h), 1))

    def run_stages(self, h: torch.Tensor, start: int, end: int) -> torch.Tensor:
        """Apply stages[start:end] to ``h`` (stage input for ``start``)."""
        for stage in self.stages[start:end]:
            h = stage(h)
        return h

    def forward_maps(self, x: torch.Tensor) -> tuple[torch.Tensor, list[torch.Tensor]]:
        """Logits and the output activation map of every stage."""
        h = self.stem(x)
        maps = []
        for stage in self.stages:
            h = stage(h)
            maps.append(h)
        return self.head(h), maps

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.run_stages(self.stem(x), 0, len(self.stages)))


def _conv_bn(cin: int, cout: int, k: int = 3, stride: int = 1, groups: int = 1) -> list[nn.Module]:
    return [nn.Conv2d(cin, cout, k, stride, k // 2, groups=groups, bias=False), nn.BatchNorm2d(cout)]


class BasicBlock(nn.Module):
    """Post-activation residual block of the CIFAR ResNets (He et al., 2016), 1x1 projection shortcut."""

    def __init__(self, cin: int, cout: int, stride: int):
        super().__init__()
        self.body = nn.Sequential(*_conv_bn(cin, cout, 3, stride), nn.ReLU(inplace=True), *_conv_bn(cout, cout))
        self.short = nn.Sequential(*_conv_bn(cin, cout, 1, stride)) if stride != 1 or cin != cout else nn.Identity()
        self.act = nn.ReLU(inplace=True)

    def forward(self, x):
        return self.act(self.body(x) + self.short(x))


class WideBlock(nn.Module):
    """Pre-activation block of wide ResNets (Zagoruyko & Komodakis, 2016)."""

    def __init__(self, cin: int, cout: int, stride: int):
        super().__init__()
        self.pre = nn.Sequential(nn.BatchNorm2d(cin), nn.ReLU(inplace=True))
        self.body = nn.Sequential(nn.Conv2d(cin, cout, 3, stride, 1, bias=False), nn.BatchNorm2d(cout),
                                  nn.ReLU(inplace=True), nn.Conv2d(cout, cout, 3, 1, 1, bias=False))
        self.short = nn.Conv2d(cin, cout, 1, stride, bias=False) if stride != 1 or cin != cout else None

    def forward(self, x):
        o = self.pre(x)
        return self.body(o) + (self.short(o) if self.short is not None else x)


class InvertedResidual(nn.Module):
    """MobileNetV2 block: 1x1 expand, 3x3 depthwise, 1x1 linear projection."""

    def __init__(self, cin: int, cout: int, stride: int, expand: int):
        super().__init__()
        mid = cin * expand
        layers = [*_conv_bn(cin, mid, 1), nn.ReLU6(inplace=True)] if expand != 1 else []
        layers += [*_conv_bn(mid, mid, 3, stride, groups=mid), nn.ReLU6(inplace=True), *_conv_bn(mid, cout, 1)]
        self.body = nn.Sequential(*layers)
        self.residual = stride == 1 and cin == cout

    def forward(self, x):
        return x + self.body(x) if self.residual else self.body(x)


def _scaled(base: int, width: float) -> int:
    return max(4, int(round(base * width)))


def cifar_resnet(depth: int, in_channels: int, num_classes: int, width: float = 1.0) -> StagedNet:
    if (depth - 2) % 6:
        raise UserError(f"CIFAR ResNet depth must be 6n+2 (8, 14, 20, 32, 44, 56, 110), got {depth}")
    n = (depth - 2) // 6
    widths = [_scaled(c, width) for c in (16, 32, 64)]
    stem = nn.Sequential(*_conv_bn(in_channels, widths[0]), nn.ReLU(inplace=True))
    stages, cin = [], widths[0]
    for i, cout in enumerate(widths):
        blocks = [BasicBlock(cin if j == 0 else cout, cout, (1 if i == 0 else 2) if j == 0 else 1) for j in range(n)]
        stages.append(nn.Sequential(*blocks))
        cin = cout
    return _init(StagedNet(stem, stages, widths, num_classes))


def wide_resnet(depth: int, k: int, in_channels: int, num_classes: int, width: float = 1.0) -> StagedNet:
    n = (depth - 4) // 6
    widths = [_scaled(c * k, width) for c in (16, 32, 64)]
    stem = nn.Conv2d(in_channels, _scaled(16, width), 3, 1, 1, bias=False)
    stages, cin = [], _scaled(16, width)
    for i, cout in enumerate(widths):
        blocks = [WideBlock(cin if j == 0 else cout, cout, (1 if i == 0 else 2) if j == 0 else 1) for j in range(n)]
        stages.append(nn.Sequential(*blocks))
        cin = cout
    # pre-activation nets end with BN+ReLU; fold it into the last stage so its map is post-activation
    stages[-1].append(nn.Sequential(nn.BatchNorm2d(cin), nn.ReLU(inplace=True)))
    return _init(StagedNet(stem, stages, widths, num_classes))


def mobilenetv2(in_channels: int, num_classes: int, width: float = 1.0) -> StagedNet:
    """A MobileNetV2 for 28-32 px inputs: three stages at strides 1, 2, 4 like the CIFAR ResNets."""
    # (expansion, channels, blocks, stride) per stage
    plan = [(1, 16, 1, 1), (4, 32, 2, 2), (4, 64, 3, 2)]
    stem_c = _scaled(16, width)
    stem = nn.Sequential(*_conv_bn(in_channels, stem_c), nn.ReLU6(inplace=True))
    stages, channels, cin = [], [], stem_c
    for t, c, blocks, stride in plan:
        cout = _scaled(c, width)
        stages.append(nn.Sequential(*[InvertedResidual(cin if j == 0 else cout, cout, stride if j == 0 else 1, t)
                                      for j in range(blocks)]))
        channels.append(cout)
        cin = cout
    return _init(StagedNet(stem, stages, channels, num_classes))


def _init(model: StagedNet) -> StagedNet:
    for m in model.modules():
        if isinstance(m, nn.Conv2d):
            nn.init.kaiming_normal_(m.weight, mode="fan_out", nonlinearity="relu")
        elif isinstance(m, nn.BatchNorm2d):
            nn.init.ones_(m.weight)
            nn.init.zeros_(m.bias)
    # zero the last BN of each residual branch: blocks start as identity, which trains faster (Goyal et al.)
    for m in model.modules():
        if isinstance(m, BasicBlock):
            nn.init.zeros_(m.body[-1].weight)
    return model


CIFAR_NETS: dict = {
    **{f"resnet{d}": (lambda d: lambda c, k, width=1.0: cifar_resnet(d, c, k, width))(d)
       for d in (8, 14, 20, 32, 44, 56, 110)},
    **{f"wrn{d}_{k}": (lambda d, k: lambda c, n, width=1.0: wide_resnet(d, k, c, n, width))(d, k)
       for d, k in ((16, 1), (16, 2), (16, 4), (28, 2), (28, 10), (40, 2), (40, 4))},
    "mobilenetv2": mobilenetv2,
}
