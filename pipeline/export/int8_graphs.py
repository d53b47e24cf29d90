"""Rewrites of an exported (aten) graph, before PT2E quantization, that keep the function and let every op of the
int8 TFLite file run in XNNPACK (pipeline/export/litert_convert.py applies them)."""
from __future__ import annotations


def _zeros_around(graph, x, pad_h: int, pad_w: int):
    """Nodes giving ``x`` (N, C, H, W) with ``pad_h`` rows and ``pad_w`` columns of zeros on each side, written as
    two concatenations with zero blocks. Their shapes are static but for a free batch size (the QAT graph's),
    which they read from ``x`` at run time."""
    import torch

    aten, g, val = torch.ops.aten, graph.graph, x.meta["val"]
    n, c, h, w = val.shape
    batch = n
    if not isinstance(n, int):
        batch = g.call_function(aten.sym_size.int, (x, 0))
        batch.meta["val"] = n

    def zeros(rest):
        node = g.call_function(aten.full.default, ([batch, *rest], 0.0),
                               {"dtype": val.dtype, "device": val.device, "pin_memory": False})
        node.meta["val"] = val.new_zeros((n, *rest))
        return node

    def cat(parts, dim):
        node = g.call_function(aten.cat.default, (parts, dim))
        node.meta["val"] = aten.cat.default([p.meta["val"] for p in parts], dim)
        return node

    if pad_w:
        side = zeros((c, h, pad_w))
        x = cat([side, x, side], 3)
    if pad_h:
        side = zeros((c, pad_h, w + 2 * pad_w))
        x = cat([side, x, side], 2)
    return x


def max_pool_padding_as_zero_pad(graph) -> int:
    """Rewrite, in an exported graph, every max-pool with padding whose input is a ReLU output as the same max-pool
    without padding on the input framed with zeros; returns how many were rewritten.

    Why: litert-torch lowers a padded max-pool as PADV2 with the dtype's minimum (-128), then MAX_POOL_2D, and
    XNNPACK does not take that int8 PADV2, so ResNets and ShuffleNets (MaxPool2d(3, 2, padding=1) after the stem)
    run it on TFLite's builtin kernel in an int8 file of 2 XNNPACK partitions. Where the input is a ReLU output
    (>= 0), padding with 0 gives the same maximum as padding with -inf: every window holds at least one real value
    >= 0, so the function is unchanged; elsewhere (and with ceil_mode, whose output size depends on the padding)
    nothing is touched. Done on the exported aten graph, before PT2E, so nn.ReLU and F.relu count alike.

    Why zero blocks and concatenations (measured on resnet18 int8, 64 px): a zero ``constant_pad_nd`` becomes a PAD
    that XNNPACK takes (1 partition), but litert-torch's NHWC layout pass has no rule for it, so it runs in NCHW
    between two TRANSPOSEs; ``replication_pad2d`` (exact for any input) becomes MIRROR_PAD, which XNNPACK does not
    take (2 partitions). Two CONCATENATIONs stay NHWC and in XNNPACK: 1 partition and no TRANSPOSE, plus one int8
    requantization (the histogram observer gives the framed map its own scale); latency as before or lower."""
    import torch

    aten = torch.ops.aten
    pools = (aten.max_pool2d.default, aten.max_pool2d_with_indices.default)
    nonnegative = (aten.relu.default, aten.relu_.default)
    rewritten = 0
    for node in list(graph.graph.nodes):
        # (input, kernel_size, stride, padding, dilation, ceil_mode); fewer args: padding 0, nothing to do
        if node.op != "call_function" or node.target not in pools or node.kwargs or len(node.args) < 4:
            continue
        x, kernel, stride, padding = node.args[:4]
        ceil_mode = len(node.args) > 5 and node.args[5]
        pad_h, pad_w = (list(padding) * 2)[:2] if isinstance(padding, (list, tuple)) else (padding, padding)
        if not (pad_h or pad_w) or ceil_mode or getattr(x, "target", None) not in nonnegative:
            continue
        with graph.graph.inserting_before(node):
            framed = _zeros_around(graph, x, pad_h, pad_w)
        node.args = (framed, kernel, stride, [0, 0], *node.args[4:])
        rewritten += 1
    if rewritten:
        graph.graph.lint()
        graph.recompile()
    return rewritten
