import gzip
import pickle

import numpy as np
import pytest
import torch

from pipeline import data
from pipeline.config import DataConfig
from pipeline.data import batches, fashion_mnist
from pipeline.errors import UserError


def _write_idx(path, array, compress=True):
    header = bytes([0, 0, 8, array.ndim]) + b"".join(int(d).to_bytes(4, "big") for d in array.shape)
    payload = header + array.astype(np.uint8).tobytes()
    (gzip.open if compress else open)(path, "wb").write(payload)


def _fashion_files(folder, n_train=6, n_test=4, compress=True):
    folder.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(0)
    arrays = {"train_x": rng.integers(0, 255, (n_train, 28, 28)), "train_y": np.arange(n_train) % 10,
              "test_x": rng.integers(0, 255, (n_test, 28, 28)), "test_y": np.arange(n_test) % 10}
    for key, stem in fashion_mnist.FASHION_FILES.items():
        _write_idx(folder / (stem + (".gz" if compress else "")), arrays[key], compress)
    return arrays


def test_fashion_from_a_torchvision_root(tmp_path):
    arrays = _fashion_files(tmp_path / "FashionMNIST" / "raw", compress=False)
    ds = data.load(DataConfig(root=str(tmp_path), download=False))
    assert ds.train_x.shape == (6, 1, 28, 28) and ds.train_x.dtype == torch.uint8
    assert torch.equal(ds.train_x[:, 0], torch.from_numpy(arrays["train_x"].astype(np.uint8)))
    assert ds.test_y.tolist() == [0, 1, 2, 3]
    assert ds.classes[0] == "T-shirt/top" and ds.channels == 1 and ds.size == 28


def test_fashion_from_the_debian_layout(tmp_path, monkeypatch):
    _fashion_files(tmp_path / "debian")
    monkeypatch.setattr(fashion_mnist, "DEBIAN_FASHION", tmp_path / "debian")
    monkeypatch.setattr(data, "DEFAULT_ROOT", tmp_path / "empty")
    ds = data.load(DataConfig(download=False))
    assert len(ds.train_y) == 6 and len(ds.test_y) == 4


def test_fashion_missing_and_corrupt(tmp_path, monkeypatch):
    monkeypatch.setattr(fashion_mnist, "DEBIAN_FASHION", tmp_path / "nowhere")
    monkeypatch.setattr(data, "DEFAULT_ROOT", tmp_path / "empty")
    with pytest.raises(UserError, match="not found in .*apt-get install dataset-fashion-mnist"):
        data.load(DataConfig(download=False))
    with pytest.raises(UserError, match="does not exist"):
        data.load(DataConfig(root=str(tmp_path / "typo"), download=False))
    folder = tmp_path / "bad"
    _fashion_files(folder)
    (folder / "train-images-idx3-ubyte.gz").write_bytes(b"\x1f\x8b garbage")
    with pytest.raises(UserError, match="corrupt"):
        data.load(DataConfig(root=str(folder), download=False))


def _cifar_batch(path, n, seed):
    rng = np.random.default_rng(seed)
    batch = {b"data": rng.integers(0, 255, (n, 3072), dtype=np.uint8), b"labels": list(range(n)),
             b"batch_label": b"x", b"filenames": [b"f"] * n}
    with open(path, "wb") as fh:
        pickle.dump(batch, fh)
    return batch


def test_cifar10_in_its_own_pickle_format(tmp_path):
    folder = tmp_path / "cifar-10-batches-py"
    folder.mkdir()
    train = [_cifar_batch(folder / f"data_batch_{i}", 3, i) for i in range(1, 6)]
    _cifar_batch(folder / "test_batch", 2, 9)
    with open(folder / "batches.meta", "wb") as fh:
        pickle.dump({b"label_names": [c.encode() for c in "abcdefghij"]}, fh)
    ds = data.load(DataConfig(dataset="cifar10", root=str(tmp_path), download=False))
    assert ds.train_x.shape == (15, 3, 32, 32) and ds.test_x.shape == (2, 3, 32, 32)
    # CIFAR rows are 1024 red, then green, then blue values, row-major
    assert ds.train_x[0, 1, 0, 0] == train[0][b"data"][0, 1024]
    assert ds.classes == list("abcdefghij")
    (folder / "test_batch").write_bytes(b"not a pickle")
    with pytest.raises(UserError, match="corrupt"):
        data.load(DataConfig(dataset="cifar10", root=str(tmp_path), download=False))


def test_unknown_dataset_names_closest():
    with pytest.raises(UserError, match="did you mean 'cifar10'"):
        data.load(DataConfig(dataset="cifar"))


def test_synthetic_is_deterministic_and_learnable():
    cfg = DataConfig(dataset="synthetic", synthetic_train=400, synthetic_test=200, synthetic_classes=4)
    a, b = data.load(cfg, seed=0), data.load(cfg, seed=0)
    assert torch.equal(a.train_x, b.train_x)
    # a nearest-class-mean classifier on the power spectrum separates the classes well above chance
    def feats(x):
        return torch.fft.rfft2(x.float()[:, 0] - 127.5).abs().flatten(1)
    centroids = torch.stack([feats(a.train_x)[a.train_y == c].mean(0) for c in range(4)])
    pred = torch.cdist(feats(a.test_x), centroids).argmin(1)
    assert (pred == a.test_y).float().mean() > 0.6


def test_batch_augmentation_crops_and_flips_whole_batches():
    x = torch.arange(2 * 28 * 28, dtype=torch.int32).reshape(2, 1, 28, 28).to(torch.uint8)
    out = batches.augment(x, "crop_flip", torch.Generator().manual_seed(0))
    assert out.shape == x.shape and out.dtype == torch.uint8
    padded = torch.nn.functional.pad(x, (2, 2, 2, 2))
    for i in range(2):  # every output is some 28x28 window of the padded image, maybe mirrored
        windows = [padded[i, :, dy:dy + 28, dx:dx + 28] for dy in range(5) for dx in range(5)]
        assert any(torch.equal(out[i], w) or torch.equal(out[i], w.flip(2)) for w in windows)
    assert batches.augment(x, "none", torch.Generator()) is x
    with pytest.raises(UserError, match="augment"):
        batches.augment(x, "rotate", torch.Generator())


def test_batches_shard_across_ranks_without_overlap():
    x, y = torch.zeros(10, 1, 2, 2, dtype=torch.uint8), torch.arange(10)
    seen = [torch.cat([i for _, _, i in batches.batches(x, y, 2, shuffle=True, seed=1, rank=r, world=2)])
            for r in range(2)]
    assert len(seen[0]) == len(seen[1]) == 5
    assert not set(seen[0].tolist()) & set(seen[1].tolist())


def test_validation_split_is_seeded_stratified_and_held_out():
    y = torch.tensor([0] * 50 + [1] * 30 + [2] * 20)
    kept, held = data.split_off(y, 0.1, seed=3)
    assert torch.bincount(y[held]).tolist() == [5, 3, 2]  # 10% of every class
    assert sorted(kept.tolist() + held.tolist()) == list(range(100))
    assert torch.equal(held, data.split_off(y, 0.1, seed=3)[1])
    assert not torch.equal(held, data.split_off(y, 0.1, seed=4)[1])
    assert len(data.split_off(y, 0.0, seed=0)[1]) == 0
    with pytest.raises(UserError, match="val_fraction"):
        data.split_off(y, 1.0, seed=0)


def test_every_data_set_gets_a_validation_split_training_never_sees():
    cfg = DataConfig(dataset="synthetic", synthetic_train=400, synthetic_test=100, val_fraction=0.25)
    ds = data.load(cfg, seed=0)
    assert len(ds.train_y) == 300 and len(ds.val_y) == 100 and len(ds.test_y) == 100
    full = data.load(DataConfig(dataset="synthetic", synthetic_train=400, synthetic_test=100, val_fraction=0.0))
    assert len(full.val_y) == 0 and len(full.train_y) == 400
    rows = {tuple(r) for r in full.train_x.flatten(1).tolist()}
    train = {tuple(r) for r in ds.train_x.flatten(1).tolist()}
    val = {tuple(r) for r in ds.val_x.flatten(1).tolist()}
    assert train | val == rows and not train & val
    sub = data.load(DataConfig(dataset="synthetic", synthetic_train=400, val_fraction=0.25, train_subset=50))
    assert len(sub.train_y) == 50 and torch.equal(sub.val_x, ds.val_x)  # the subset never eats into val


def test_normalize_is_the_formula_and_leaves_its_input_alone():
    x = torch.randint(0, 256, (8, 3, 5, 5), dtype=torch.uint8, generator=torch.Generator().manual_seed(0))
    ds = data.Dataset("t", x, torch.zeros(8, dtype=torch.int64), x, torch.zeros(8, dtype=torch.int64), ["a"],
                      stats=((0.49, 0.48, 0.45), (0.247, 0.243, 0.261)))
    mean, std = torch.tensor(ds.mean).view(1, 3, 1, 1), torch.tensor(ds.std).view(1, 3, 1, 1)
    expected = (x.float() / 255 - mean) / std
    assert torch.equal(ds.normalize(x), expected)  # in place after one copy: the same bits as the formula
    as_float = x.float()
    assert torch.equal(ds.normalize(as_float), expected) and torch.equal(as_float, x.float())  # input untouched
