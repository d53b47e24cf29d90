"""torchvision's mobile and standard classifiers, registered by name through one table.

Each row names the graph nodes where the net's resolution changes (the output of its last layer at strides
2, 4, 8, 16 and 32) and the node that gives the logits. From that table alone:

- ``forward_maps`` takes the stage maps with torchvision's own ``create_feature_extractor`` (FX), which
  traces the net once in train and once in eval mode, so a student trains through the same graph it is
  evaluated with (stochastic depth, dropout);
- ``stages`` / ``head`` split the eval-mode graph at those nodes into one GraphModule per stage, so the
  adaptive module can replace a teacher stage exactly as it does in our own StagedNets. Only a frozen
  (eval-mode) teacher ever runs through these pieces.

No forward code is written here per architecture; a new net is one row. The traced modules share the
wrapped net's parameters and are never registered as submodules, so the state_dict stays torchvision's
keys under ``net.``.
"""
from __future__ import annotations

from dataclasses import dataclass, replace
from typing import Callable

import torch
from torch import nn

from pipeline.errors import UserError


@dataclass(frozen=True)
class Row:
    stage_nodes: tuple[str, ...]  # outputs at strides 2, 4, 8, 16, 32
    logits_node: str
    size: int = 224  # the input size its published weights were trained at
    builder: str = ""  # torchvision's constructor, when the row is a variant of it (default: the row's name)
    transform: Callable[[nn.Module], None] | None = None  # edits the built net in place (a variant's changes)


def _modules_replaced(net: nn.Module, old: tuple[type, ...], new: Callable[[nn.Module], nn.Module]) -> None:
    for module in list(net.modules()):
        for name, child in list(module.named_children()):
            if isinstance(child, old):
                setattr(module, name, new(child))


def relu_for_hard_swish(net: nn.Module) -> None:
    """Every nn.Hardswish -> nn.ReLU; the squeeze-excite gates keep their nn.Hardsigmoid, which the int8
    export writes as relu6(x + 3) * (1/6) (pipeline/export/litert_convert.py), so it already runs in XNNPACK's int8
    kernels. Why: hard-swish is the one op of MobileNetV3 that int8 kernel sets lack (XNNPACK, ORT's QDQ fusions),
    and even rewritten it costs 3 elementwise ops per activation, which an int8 ReLU folds into its conv.
    The classifier's dropout stops working in place: it follows the new ReLU, whose backward reads its output."""
    _modules_replaced(net, (nn.Hardswish,), lambda old: nn.ReLU(inplace=True))
    for module in net.modules():
        if isinstance(module, nn.Dropout):
            module.inplace = False


def minimal(net: nn.Module) -> None:
    """ReLU for hard-swish and no squeeze-excite (each SE block an nn.Identity, so every other key keeps its
    torchvision name): the "minimal" MobileNetV3 of the paper (Howard et al. 2019) and the EfficientNet-Lite
    recipe, made for integer accelerators. The 5x5 depthwise kernels stay, so the rest of a torchvision
    checkpoint still fits. Why: the SE gate is a global pool, two 1x1 convs and a multiply per block, all
    memory-bound and with a per-tensor int8 scale to share across channels."""
    from torchvision.ops.misc import SqueezeExcitation

    relu_for_hard_swish(net)
    _modules_replaced(net, (SqueezeExcitation,), lambda old: nn.Identity())


_RESNET = Row(("relu", "layer1", "layer2", "layer3", "layer4"), "fc")
_V3_SMALL = Row(("features.0", "features.1", "features.3", "features.8", "features.12"), "classifier")
TABLE: dict[str, Row] = {
    "mobilenet_v2": Row(("features.1", "features.3", "features.6", "features.13", "features.18"), "classifier"),
    "mobilenet_v3_small": _V3_SMALL,
    # quantization-friendly variants: the same torchvision net, edited by a transform (same stage nodes)
    "mobilenet_v3_small_relu": replace(_V3_SMALL, builder="mobilenet_v3_small", transform=relu_for_hard_swish),
    "mobilenet_v3_small_minimal": replace(_V3_SMALL, builder="mobilenet_v3_small", transform=minimal),
    "mobilenet_v3_large": Row(("features.1", "features.3", "features.6", "features.12", "features.16"), "classifier"),
    "efficientnet_b0": Row(("features.1", "features.2", "features.3", "features.5", "features.8"), "classifier"),
    "shufflenet_v2_x0_5": Row(("conv1", "maxpool", "stage2", "stage3", "conv5"), "fc"),
    "shufflenet_v2_x1_0": Row(("conv1", "maxpool", "stage2", "stage3", "conv5"), "fc"),
    "resnet18": _RESNET,
    "resnet34": _RESNET,
    "resnet50": _RESNET,
}


def first_conv(net: nn.Module) -> tuple[str, nn.Conv2d]:
    """The stem convolution: the first Conv2d registered (true for every net in the table)."""
    return next((n, m) for n, m in net.named_modules() if isinstance(m, nn.Conv2d))


def _replace(net: nn.Module, name: str, new: nn.Module) -> None:
    parent, _, leaf = name.rpartition(".")
    setattr(net.get_submodule(parent) if parent else net, leaf, new)


def adapt_first_conv(net: nn.Module, in_channels: int) -> None:
    """Give the stem conv ``in_channels`` inputs (torchvision builds every net for RGB)."""
    name, conv = first_conv(net)
    if conv.in_channels == in_channels:
        return
    new = nn.Conv2d(in_channels, conv.out_channels, conv.kernel_size, conv.stride, conv.padding,
                    conv.dilation, conv.groups, conv.bias is not None)
    _replace(net, name, new)


class TorchvisionNet(nn.Module):
    """A torchvision classifier (``self.net``) with the StagedNet interface the rest of compress uses."""

    def __init__(self, arch: str, in_channels: int, num_classes: int):
        super().__init__()
        import torchvision

        self.arch, self.row = arch, TABLE[arch]
        self.net = getattr(torchvision.models, self.row.builder or arch)(weights=None, num_classes=num_classes)
        if self.row.transform:
            self.row.transform(self.net)
        adapt_first_conv(self.net, in_channels)
        self.stem = nn.Identity()  # stage 0 starts from the image
        self.stage_channels = [m.shape[1] for m in self._probe(in_channels)]

    def _probe(self, in_channels: int) -> list[torch.Tensor]:
        was = self.training
        self.eval()
        with torch.no_grad():
            maps = self.forward_maps(torch.zeros(1, in_channels, 64, 64))[1]
        self.train(was)
        return maps

    # the traced graphs are caches: rebuilt after a copy, never saved
    def __getstate__(self):
        return {k: v for k, v in self.__dict__.items() if k not in ("_extractor", "_pieces")}

    def _nodes(self) -> dict[str, str]:
        return {**{node: f"s{i}" for i, node in enumerate(self.row.stage_nodes)}, self.row.logits_node: "logits"}

    def extractor(self):
        if "_extractor" not in self.__dict__:
            from torchvision.models.feature_extraction import create_feature_extractor

            self.__dict__["_extractor"] = create_feature_extractor(self.net, return_nodes=self._nodes())
        return self.__dict__["_extractor"]

    def forward_maps(self, x: torch.Tensor) -> tuple[torch.Tensor, list[torch.Tensor]]:
        """Logits and the map at every stride boundary (2, 4, 8, 16, 32)."""
        ext = self.extractor()
        if ext.training != self.training:
            ext.train(self.training)
        out = ext(x)
        return out["logits"], [out[f"s{i}"] for i in range(len(self.row.stage_nodes))]

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.net(x)

    def _split(self) -> list[nn.Module]:
        """The eval-mode graph cut at the stage nodes: one GraphModule per stage, then the head."""
        if "_pieces" not in self.__dict__:
            import torch.fx as fx

            ext = self.extractor()
            graph = ext.eval_graph
            order = list(graph.nodes)
            outputs = order[-1].args[0]
            ends = [outputs[f"s{i}"] for i in range(len(self.row.stage_nodes))] + [outputs["logits"]]
            pieces, start = [], order[0]
            for end in ends:
                piece = fx.Graph()
                env = {start: piece.placeholder("x")}
                for node in order[order.index(start) + 1:order.index(end) + 1]:
                    try:
                        env[node] = piece.node_copy(node, lambda a: env[a])
                    except KeyError as exc:  # a connection across a stage boundary: the table row is wrong
                        raise RuntimeError(f"{self.arch}: node {node.name} crosses stage boundary {start.name}") \
                            from exc
                piece.output(env[end])
                pieces.append(fx.GraphModule(ext, piece))
                start = end
            self.__dict__["_pieces"] = pieces
        return self.__dict__["_pieces"]

    @property
    def stages(self) -> list[nn.Module]:
        return self._split()[:-1]

    def head(self, h: torch.Tensor) -> torch.Tensor:
        return self._split()[-1](h)

    def run_stages(self, h: torch.Tensor, start: int, end: int) -> torch.Tensor:
        for stage in self.stages[start:end]:
            h = stage(h)
        return h


def create(arch: str, in_channels: int, num_classes: int, width: float = 1.0) -> TorchvisionNet:
    if width != 1.0:
        raise UserError(f"{arch} comes from torchvision at its published width; set width: 1.0 (got {width})")
    return TorchvisionNet(arch, in_channels, num_classes)
