"""Training selects on the validation split and measures the test split once, at the end."""
import json

import torch
from rich.console import Console

from pipeline import data, models
from pipeline.config import DataConfig, TrainConfig
from pipeline.distill.train import epochs_to
from pipeline.train.engine import Classifier, fit


def test_fit_measures_validation_every_epoch_and_test_once(tmp_path, monkeypatch):
    ds = data.load(DataConfig(dataset="synthetic", synthetic_train=200, synthetic_test=64, val_fraction=0.2))
    torch.manual_seed(0)
    model = models.create("resnet8", 1, 4, 0.25)
    cfg = TrainConfig(arch="resnet8", epochs=3, batch_size=32, lr=0.05, precision="fp32", channels_last=False)
    from pipeline.train import engine
    from pipeline.train import evaluate as evaluate_mod
    seen = []
    real_predict = evaluate_mod.predict
    monkeypatch.setattr(evaluate_mod, "predict",
                        lambda m, x, *a, **k: (seen.append(len(x)), real_predict(m, x, *a, **k))[1])
    vals = iter([0.5, 0.9, 0.7])  # the second epoch is the best on validation
    real_eval = evaluate_mod.evaluate

    def fake_eval(m, d, split, **kw):
        out = real_eval(m, d, split, **kw)
        if split == "val":
            out["val_top1"] = next(vals)
        return out
    monkeypatch.setattr(engine, "evaluate", fake_eval)
    (tmp_path / "best.pt").write_bytes(b"an earlier version's")
    result = fit(Classifier(model), model, ds, cfg, tmp_path, seed=0, fingerprint="f", console=Console(quiet=True))
    assert [h["val_top1"] for h in result.history] == [0.5, 0.9, 0.7]
    assert all("test_top1" not in h for h in result.history)  # no per-epoch look at the test set
    assert seen.count(len(ds.test_y)) == 1 and seen.count(len(ds.val_y)) == 3
    assert set(result.test) == {"test_top1", "test_loss"}
    assert sorted(p.name for p in tmp_path.iterdir()) == ["last.pt", "metrics.jsonl"]  # no unread best.pt
    rows = [json.loads(line) for line in (tmp_path / "metrics.jsonl").read_text().splitlines()]
    assert epochs_to(rows, 0.85) == 2 and epochs_to(rows, 0.95) is None
