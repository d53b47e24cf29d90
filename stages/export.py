"""export: PyTorch student -> ONNX (opset >= 17, dynamic batch), checked and parity-tested on real
test images, carrying its own metadata (normalisation, input size and layout, classes, config hash)."""
from __future__ import annotations

from pathlib import Path

NAME = "export"
SECTIONS = ("seed", "data", "export")
UPSTREAM = ("distill",)


def reference(ctx):
    """The student, its checkpoint, the data set, and the parity images with PyTorch's logits for them."""
    from pipeline import data, models
    from pipeline.errors import UserError
    from pipeline.export import artifacts, inventory
    from pipeline.train.evaluate import predict

    model, ckpt = models.load_model(ctx.input("distill", "student.pt"))
    ds = data.load(ctx.cfg.data, ctx.cfg.seed)
    meta = ckpt["meta"]
    if (meta["channels"], meta["size"]) != (ds.channels, ds.size):
        raise UserError(f"the student takes {meta['channels']}x{meta['size']}px images but data set "
                        f"'{ds.name}' has {ds.channels}x{ds.size}px; use the config the student was trained with")
    n = ctx.cfg.export.parity_images  # every class in proportion: a photo folder's test split is in class order
    x = ds.test_x[inventory.sample(ds.test_y.numpy(), n)] if n < len(ds.test_y) else ds.test_x
    ref = predict(model, x, ds).numpy()
    return model, ckpt, ds, artifacts.normalized(ds, x), ref


def run(ctx) -> list[Path]:
    from pipeline.errors import UserError
    from pipeline.export import artifacts, onnx_tools
    from pipeline.files import sha256

    ecfg = ctx.cfg.export
    model, ckpt, ds, x, ref = reference(ctx)
    meta = onnx_tools.model_metadata(ckpt, sha256(ctx.input("distill", "student.pt")))
    out = artifacts.path_of(ctx, "onnx_fp32")
    with artifacts.conversion(ctx, "onnx_fp32") as entry:
        tmp = out.with_name(".export.tmp.onnx")
        try:
            onnx_tools.export(model, tmp, ds.channels, ds.size, ecfg.opset)
            proto = onnx_tools.load(tmp)  # onnx.checker
            onnx_tools.set_metadata(proto, {**meta, "format": "onnx_fp32"})
            onnx_tools.save(proto, tmp)
            onnx_tools.verify(tmp, x, ref, ecfg, entry)
            tmp.replace(out)  # only a checked model takes the artifact's name
        finally:
            tmp.unlink(missing_ok=True)
        entry.update(opset=ecfg.opset, nodes=onnx_tools.node_count(proto), ops=onnx_tools.op_counts(proto))
    if ctx.metrics["artifacts"]["onnx_fp32"]["status"] != "ok":
        raise UserError(ctx.metrics["artifacts"]["onnx_fp32"]["reason"])
    return [out]
