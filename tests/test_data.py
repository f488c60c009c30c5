"""Tests of robustlab.data: file formats, lookup, downloads, subsets and batching.

Everything runs on tiny files written here; the real datasets are used only when
ROBUSTLAB_DATA points at them (e.g. ROBUSTLAB_DATA=/work/shared/data).
"""

from __future__ import annotations

import dataclasses
import functools
import gzip
import hashlib
import io
import os
import pickle
import struct
import tarfile
import threading
from http.server import SimpleHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

import robustlab.data.lookup as lookup_module
import robustlab.data.loading as loading_module
from robustlab.data import (
    DATASETS,
    ImageDataset,
    RemoteFile,
    batches,
    fetch,
    load_dataset,
    load_image_folder,
    locate,
    read_idx,
    search_paths,
    stratified_subset,
    train_val_split,
)
from robustlab.data.cifar import safe_unpickle
from robustlab.data.subsets import class_interleaved_order
from robustlab.errors import DataError, RobustlabError

REAL_DATA = os.environ.get("ROBUSTLAB_DATA")


@pytest.fixture(autouse=True)
def isolated_environment(tmp_path, monkeypatch):
    """No test sees the real data roots, the user's cache or system locations unless it asks."""
    monkeypatch.delenv("ROBUSTLAB_DATA", raising=False)
    monkeypatch.setenv("ROBUSTLAB_CACHE", str(tmp_path / "cache"))
    monkeypatch.setattr(lookup_module, "SYSTEM_DATA_DIRS", (tmp_path / "system",))


# --- writers, independent of the library's readers -------------------------------------------


def idx_bytes(array: np.ndarray) -> bytes:
    codes = {np.uint8: 0x08, np.int8: 0x09, np.int16: 0x0B, np.int32: 0x0C, np.float32: 0x0D, np.float64: 0x0E}
    code = codes[array.dtype.type]
    header = bytes([0, 0, code, array.ndim]) + struct.pack(f">{array.ndim}I", *array.shape)
    return header + array.astype(array.dtype.newbyteorder(">")).tobytes()


def write_idx(path: Path, array: np.ndarray, *, gz: bool) -> Path:
    data = idx_bytes(array)
    if gz:
        path = path.with_name(path.name + ".gz")
        data = gzip.compress(data)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(data)
    return path


def fake_mnist(directory: Path, *, n_test: int = 30, n_train: int = 40, gz: bool = True, seed: int = 0):
    """Write a tiny MNIST-like IDX dataset; returns {split: (images, labels)}."""
    rng = np.random.default_rng(seed)
    out = {}
    for split, prefix, n in (("test", "t10k", n_test), ("train", "train", n_train)):
        images = rng.integers(0, 256, size=(n, 28, 28), dtype=np.uint8)
        labels = (np.arange(n) % 10).astype(np.uint8)
        write_idx(directory / f"{prefix}-images-idx3-ubyte", images, gz=gz)
        write_idx(directory / f"{prefix}-labels-idx1-ubyte", labels, gz=gz)
        out[split] = (images, labels)
    return out


def png_bytes(array: np.ndarray) -> bytes:
    buffer = io.BytesIO()
    Image.fromarray(array).save(buffer, format="PNG")
    return buffer.getvalue()


def add_to_tar(archive: tarfile.TarFile, name: str, data: bytes) -> None:
    info = tarfile.TarInfo(name)
    info.size = len(data)
    archive.addfile(info, io.BytesIO(data))


def fake_cifar_batches(directory: Path, per_batch: int = 4, protocol: int = 4):
    """Write cifar-10-batches-py style pickles; returns {batch name: (data, labels)}."""
    rng = np.random.default_rng(1)
    directory.mkdir(parents=True, exist_ok=True)
    batches_written = {}
    for i, name in enumerate([f"data_batch_{k}" for k in range(1, 6)] + ["test_batch"]):
        data = rng.integers(0, 256, size=(per_batch, 3072), dtype=np.uint8)
        labels = [(i + j) % 10 for j in range(per_batch)]
        content = {b"batch_label": name.encode(), b"labels": labels, b"data": data, b"filenames": [b"x.png"] * per_batch}
        (directory / name).write_bytes(pickle.dumps(content, protocol=protocol))
        batches_written[name] = (data, labels)
    meta = {b"label_names": [c.encode() for c in DATASETS["cifar10"].classes], b"num_vis": 3072}
    (directory / "batches.meta").write_bytes(pickle.dumps(meta, protocol=protocol))
    return batches_written


def make_dataset(counts: list[int]) -> ImageDataset:
    y = torch.cat([torch.full((c,), k, dtype=torch.int64) for k, c in enumerate(counts)])
    # Interleave the classes so that "original order" is not simply class order.
    y = y[torch.randperm(len(y), generator=torch.Generator().manual_seed(0))]
    n = len(y)
    x = torch.arange(n, dtype=torch.float32).view(n, 1, 1, 1) / n
    return ImageDataset("toy", "train", x, y, [str(k) for k in range(len(counts))], torch.arange(n) + 1000)


# --- IDX ----------------------------------------------------------------------------------


@pytest.mark.parametrize("gz", [False, True])
@pytest.mark.parametrize("dtype", [np.uint8, np.int16, np.float32])
def test_idx_round_trip(tmp_path, gz, dtype):
    array = (np.arange(2 * 3 * 5) * 7 - 11).astype(dtype).reshape(2, 3, 5)
    if dtype == np.uint8:
        array = np.arange(30, dtype=np.uint8).reshape(2, 3, 5)
    path = write_idx(tmp_path / "a-idx3", array, gz=gz)
    back = read_idx(path)
    assert back.dtype == array.dtype and back.shape == array.shape
    np.testing.assert_array_equal(back, array)


@pytest.mark.parametrize("gz", [False, True])
def test_load_idx_dataset_exact(tmp_path, gz):
    written = fake_mnist(tmp_path / "mnist", gz=gz)
    for split, (images, labels) in written.items():
        ds = load_dataset("mnist", split=split, data_dir=tmp_path)
        assert ds.x.shape == (len(labels), 1, 28, 28) and ds.x.dtype == torch.float32
        assert ds.y.dtype == torch.int64 and ds.indices.dtype == torch.int64
        torch.testing.assert_close(ds.x[:, 0], torch.from_numpy(images).float() / 255)
        assert ds.y.tolist() == labels.tolist()
        assert ds.indices.tolist() == list(range(len(labels)))
        assert ds.name == "mnist" and ds.split == split and ds.classes == [str(d) for d in range(10)]


def test_idx_truncated_names_file_and_sizes(tmp_path):
    path = tmp_path / "t10k-images-idx3-ubyte"
    path.write_bytes(idx_bytes(np.zeros((3, 28, 28), np.uint8))[:-100])
    with pytest.raises(DataError, match="truncated") as err:
        read_idx(path)
    assert str(path) in str(err.value)
    assert str(3 * 28 * 28) in str(err.value) and str(3 * 28 * 28 - 100) in str(err.value)


def test_idx_truncated_inside_gzip(tmp_path):
    path = tmp_path / "x-idx1-ubyte.gz"
    path.write_bytes(gzip.compress(idx_bytes(np.zeros(50, np.uint8))[:-5]))
    with pytest.raises(DataError, match="truncated") as err:
        read_idx(path)
    assert str(path) in str(err.value)


def test_idx_wrong_magic(tmp_path):
    path = tmp_path / "bad-idx3-ubyte"
    path.write_bytes(b"\x00\x01\x08\x03" + bytes(100))
    with pytest.raises(DataError, match="magic") as err:
        read_idx(path)
    assert str(path) in str(err.value)


@pytest.mark.parametrize(
    "content",
    [
        pytest.param(lambda raw: gzip.compress(raw)[:-20], id="truncated-gzip"),
        pytest.param(lambda raw: gzip.compress(raw)[:10] + b"garbage" * 20, id="corrupt-gzip"),
        pytest.param(lambda raw: raw, id="not-gzip"),
    ],
)
def test_bad_gzip(tmp_path, content):
    path = tmp_path / "t10k-labels-idx1-ubyte.gz"
    path.write_bytes(content(idx_bytes(np.zeros(500, np.uint8))))
    with pytest.raises(DataError) as err:
        read_idx(path)
    assert str(path) in str(err.value) and "gzip" in str(err.value)


def test_idx_count_mismatch(tmp_path):
    fake_mnist(tmp_path, gz=False)
    write_idx(tmp_path / "t10k-labels-idx1-ubyte", np.zeros(29, np.uint8), gz=False)
    with pytest.raises(DataError, match="30 images.*29 labels"):
        load_dataset("mnist", split="test", data_dir=tmp_path)


def test_idx_label_out_of_range(tmp_path):
    fake_mnist(tmp_path, gz=False)
    write_idx(tmp_path / "t10k-labels-idx1-ubyte", np.full(30, 10, np.uint8), gz=False)
    with pytest.raises(DataError, match="out of range") as err:
        load_dataset("mnist", split="test", data_dir=tmp_path)
    assert "t10k-labels-idx1-ubyte" in str(err.value)


def test_idx_verify_content_checksum(tmp_path):
    fake_mnist(tmp_path)
    with pytest.raises(DataError, match="content MD5"):
        load_dataset("mnist", split="test", data_dir=tmp_path, verify=True)


# --- CIFAR-10 python batches ---------------------------------------------------------------


class _Python2StylePickler(pickle._Pickler):
    """Writes bytes as Python 2 ``str`` opcodes and numpy globals under ``numpy.core``, as in
    the canonical CIFAR-10 files (pickled by Python 2 and numpy 1)."""

    dispatch = dict(pickle._Pickler.dispatch)

    def save_py2_str(self, obj):
        self.write(pickle.BINSTRING + struct.pack("<i", len(obj)) + obj)
        self.memoize(obj)

    dispatch[bytes] = save_py2_str
    dispatch[str] = lambda self, obj: self.save_py2_str(obj.encode("latin1"))

    def save_global(self, obj, name=None):
        module = getattr(obj, "__module__", "")
        if module.startswith("numpy._core"):
            name = name or obj.__qualname__
            self.write(pickle.GLOBAL + f"{module.replace('numpy._core', 'numpy.core')}\n{name}\n".encode())
            self.memoize(obj)
        else:
            super().save_global(obj, name)

    dispatch[type(len)] = save_global


def _py2_dumps(obj, protocol=2):
    buffer = io.BytesIO()
    _Python2StylePickler(buffer, protocol=2).dump(obj)
    return buffer.getvalue()


@pytest.mark.parametrize("protocol", ["python2", 4, 5])
def test_cifar_batches_round_trip(tmp_path, protocol, monkeypatch):
    if protocol == "python2":
        monkeypatch.setattr(pickle, "dumps", _py2_dumps)
    written = fake_cifar_batches(tmp_path / "cifar-10-batches-py", protocol=protocol)
    train = load_dataset("cifar10", split="train", data_dir=tmp_path)
    expected = np.concatenate([written[f"data_batch_{k}"][0] for k in range(1, 6)])
    assert train.x.shape == (20, 3, 32, 32)
    torch.testing.assert_close(train.x, torch.from_numpy(expected.reshape(-1, 3, 32, 32)).float() / 255)
    assert train.y.tolist() == sum((written[f"data_batch_{k}"][1] for k in range(1, 6)), [])
    test = load_dataset("cifar10", split="test", data_dir=tmp_path)
    assert test.y.tolist() == written["test_batch"][1]
    assert test.classes[0] == "airplane" and test.classes[9] == "truck"


def test_cifar_python_archive(tmp_path):
    written = fake_cifar_batches(tmp_path / "src" / "cifar-10-batches-py")
    root = tmp_path / "data" / "cifar10"
    root.mkdir(parents=True)
    with tarfile.open(root / "cifar-10-python.tar.gz", "w:gz") as archive:
        archive.add(tmp_path / "src" / "cifar-10-batches-py", arcname="cifar-10-batches-py")
    assert locate("cifar10", tmp_path / "data") == root / "cifar-10-python.tar.gz"
    test = load_dataset("cifar10", split="test", data_dir=tmp_path / "data")
    np.testing.assert_array_equal((test.x * 255).round().byte().reshape(4, -1).numpy(), written["test_batch"][0])


class _Exploit:
    def __init__(self, marker: Path):
        self.marker = marker

    def __reduce__(self):
        return (os.system, (f"touch {self.marker}",))


def test_malicious_pickle_refused(tmp_path):
    fake_cifar_batches(tmp_path / "cifar-10-batches-py")
    marker = tmp_path / "pwned"
    batch = tmp_path / "cifar-10-batches-py" / "test_batch"
    batch.write_bytes(pickle.dumps({b"data": _Exploit(marker), b"labels": []}))
    with pytest.raises(DataError, match="refused global") as err:
        load_dataset("cifar10", split="test", data_dir=tmp_path)
    assert str(batch) in str(err.value)
    assert not marker.exists()


@pytest.mark.parametrize("module,name", [("builtins", "eval"), ("numpy", "load"), ("subprocess", "Popen")])
def test_restricted_unpickler_refuses_other_globals(module, name):
    payload = b"\x80\x02c" + f"{module}\n{name}\n".encode() + b"."
    with pytest.raises(DataError, match=f"refused global {module}.{name}"):
        safe_unpickle(payload, "payload.pkl")


def test_cifar_batch_bad_shape(tmp_path):
    fake_cifar_batches(tmp_path)
    (tmp_path / "test_batch").write_bytes(pickle.dumps({b"data": np.zeros((2, 10), np.uint8), b"labels": [0, 1]}))
    with pytest.raises(DataError, match=r"uint8 \[n, 3072\]"):
        load_dataset("cifar10", split="test", data_dir=tmp_path)


# --- image folders -------------------------------------------------------------------------


def _folder_images(seed: int = 0, size=(6, 5)):
    rng = np.random.default_rng(seed)
    # Class names and file names chosen so that sorting matters.
    files = {("dog", "b.png"): None, ("dog", "a.png"): None, ("cat", "z.png"): None, ("cat", "c.png"): None}
    return {key: rng.integers(0, 256, size=(*size, 3), dtype=np.uint8) for key in files}


def _expected(images):
    keys = sorted(images)
    x = torch.from_numpy(np.stack([images[k] for k in keys]).transpose(0, 3, 1, 2)).float() / 255
    y = [0 if cls == "cat" else 1 for cls, _ in keys]
    return x, y


def test_image_folder_directory(tmp_path):
    images = _folder_images()
    for (cls, name), array in images.items():
        (tmp_path / "pets" / cls).mkdir(parents=True, exist_ok=True)
        Image.fromarray(array).save(tmp_path / "pets" / cls / name)
    (tmp_path / "pets" / "cat" / "notes.txt").write_text("not an image")
    ds = load_image_folder(tmp_path / "pets")
    x, y = _expected(images)
    assert ds.classes == ["cat", "dog"] and ds.split == "custom" and ds.name == "pets"
    torch.testing.assert_close(ds.x, x)
    assert ds.y.tolist() == y and ds.indices.tolist() == [0, 1, 2, 3]
    gray = load_image_folder(tmp_path / "pets", grayscale=True, image_size=(3, 4), split_name="val")
    assert gray.x.shape == (4, 1, 3, 4) and gray.split == "val"


@pytest.mark.parametrize("prefix", ["", "pets/", "./"])
def test_image_folder_archive_and_cache(tmp_path, prefix):
    images = _folder_images()
    archive_path = tmp_path / "pets.tar.gz"
    with tarfile.open(archive_path, "w:gz") as archive:
        for (cls, name), array in images.items():
            add_to_tar(archive, f"{prefix}{cls}/{name}", png_bytes(array))
    ds = load_image_folder(archive_path)
    x, y = _expected(images)
    torch.testing.assert_close(ds.x, x)
    assert ds.y.tolist() == y and ds.name == "pets"
    cached = list((tmp_path / "cache" / "decoded").glob("*.npz"))
    assert len(cached) == 1
    again = load_image_folder(archive_path)
    torch.testing.assert_close(again.x, ds.x)
    assert not list((tmp_path / "cache" / "decoded").glob(".*"))  # no temporary file left


def test_image_folder_mixed_sizes_and_corrupt(tmp_path):
    (tmp_path / "f" / "a").mkdir(parents=True)
    Image.fromarray(np.zeros((4, 4, 3), np.uint8)).save(tmp_path / "f" / "a" / "1.png")
    Image.fromarray(np.zeros((5, 4, 3), np.uint8)).save(tmp_path / "f" / "a" / "2.png")
    with pytest.raises(DataError, match="image_size") as err:
        load_image_folder(tmp_path / "f", cache=False)
    assert "2.png" in str(err.value)
    assert load_image_folder(tmp_path / "f", image_size=4, cache=False).x.shape == (2, 3, 4, 4)
    (tmp_path / "f" / "a" / "3.jpg").write_bytes(b"not a jpeg")
    with pytest.raises(DataError, match="cannot decode") as err:
        load_image_folder(tmp_path / "f", image_size=4, cache=False)
    assert "3.jpg" in str(err.value)
    with pytest.raises(DataError, match="no images"):
        load_image_folder(tmp_path / "f" / "a", cache=False)


def _fake_cifar_jpeg(root: Path) -> dict:
    rng = np.random.default_rng(2)
    images = {}
    root.mkdir(parents=True, exist_ok=True)
    with tarfile.open(root / "cifar10-jpeg.tar.gz", "w:gz") as archive:
        for split in ("train", "test"):
            for cls in ("ship", "cat"):
                for name in ("0002.png", "0001.png"):
                    array = rng.integers(0, 256, size=(32, 32, 3), dtype=np.uint8)
                    images[(split, cls, name)] = array
                    add_to_tar(archive, f"{split}/{cls}/{name}", png_bytes(array))
    return images


def test_cifar_image_folder_archive(tmp_path):
    images = _fake_cifar_jpeg(tmp_path / "cifar10-jpeg")
    ds = load_dataset("cifar10", split="test", data_dir=tmp_path)
    # Round-robin over the classes (registry indices: cat 3, ship 8), file-name order within a class.
    keys = [("test", "cat", "0001.png"), ("test", "ship", "0001.png"), ("test", "cat", "0002.png"),
            ("test", "ship", "0002.png")]
    assert ds.y.tolist() == [3, 8, 3, 8]
    assert ds.classes == list(DATASETS["cifar10"].classes)
    torch.testing.assert_close(ds.x, torch.from_numpy(np.stack([images[k] for k in keys]).transpose(0, 3, 1, 2)).float() / 255)


def test_cifar_prefers_canonical_batches(tmp_path):
    _fake_cifar_jpeg(tmp_path / "cifar10-jpeg")
    fake_cifar_batches(tmp_path / "cifar10" / "cifar-10-batches-py")
    assert locate("cifar10", tmp_path) == tmp_path / "cifar10" / "cifar-10-batches-py"
    assert len(load_dataset("cifar10", split="test", data_dir=tmp_path)) == 4


# --- digits --------------------------------------------------------------------------------


def test_digits_needs_no_files():
    train = load_dataset("digits", split="train")
    test = load_dataset("digits", split="test")
    assert train.shape == (1, 8, 8) and len(train) + len(test) == 1797
    assert 0.0 <= float(train.x.min()) and float(train.x.max()) <= 1.0 and float(train.x.max()) == 1.0
    assert train.x.dtype == torch.float32 and train.y.dtype == torch.int64
    # The split is fixed: the seed argument only changes `limit` subsets.
    torch.testing.assert_close(load_dataset("digits", split="test", seed=5).x, test.x)
    counts = torch.bincount(test.y, minlength=10)
    assert int(counts.min()) >= 44 and int(counts.max()) <= 46
    # Disjoint: no test image (as bytes) occurs more often than in the full set.
    from sklearn.datasets import load_digits

    full = {}
    for image in load_digits().images:
        full[image.tobytes()] = full.get(image.tobytes(), 0) + 1
    seen = {}
    for image in torch.cat([train.x, test.x]).mul(16).double().squeeze(1).numpy():
        seen[image.tobytes()] = seen.get(image.tobytes(), 0) + 1
    assert seen == full
    assert locate("digits") is not None and fetch("digits").exists()


# --- subsets and batches -------------------------------------------------------------------


def test_stratified_subset_balanced_and_deterministic():
    ds = make_dataset([50, 30, 20])
    sub = stratified_subset(ds, 10, seed=3)
    assert torch.bincount(sub.y).tolist() == [5, 3, 2]
    assert sub.indices.tolist() == sorted(sub.indices.tolist())
    assert torch.equal(stratified_subset(ds, 10, seed=3).indices, sub.indices)
    assert not torch.equal(stratified_subset(ds, 10, seed=4).indices, sub.indices)
    # x, y and indices stay aligned: x encodes the position in ds, indices = position + 1000.
    assert torch.equal((sub.x.flatten() * len(ds)).round().long() + 1000, sub.indices)
    assert torch.equal(ds.y[sub.indices - 1000], sub.y)
    assert stratified_subset(ds, 1000) is ds
    assert len(stratified_subset(ds, 0)) == 0


def test_stratified_subset_remainder():
    ds = make_dataset([34, 33, 33])
    assert torch.bincount(stratified_subset(ds, 10).y, minlength=3).tolist() == [4, 3, 3]
    ds = make_dataset([10, 10, 10, 10])
    assert torch.bincount(stratified_subset(ds, 6).y, minlength=4).tolist() == [2, 2, 1, 1]


def test_load_dataset_limit_is_stratified_subset(tmp_path):
    fake_mnist(tmp_path, n_test=30)
    limited = load_dataset("mnist", data_dir=tmp_path, limit=10, seed=1)
    full = load_dataset("mnist", data_dir=tmp_path)
    assert torch.equal(limited.indices, stratified_subset(full, 10, seed=1).indices)
    assert torch.bincount(limited.y, minlength=10).tolist() == [1] * 10
    torch.testing.assert_close(limited.x, full.x[limited.indices])


def test_train_val_split_disjoint_and_covering():
    ds = make_dataset([40, 40, 20])
    train, val = train_val_split(ds, 0.2, seed=1)
    assert len(val) == 20 and len(train) == 80
    assert torch.bincount(val.y).tolist() == [8, 8, 4]
    assert set(train.indices.tolist()).isdisjoint(val.indices.tolist())
    assert sorted(train.indices.tolist() + val.indices.tolist()) == ds.indices.tolist()
    assert val.split == "val" and train.split == "train"
    again = train_val_split(ds, 0.2, seed=1)
    assert torch.equal(again[1].indices, val.indices)
    with pytest.raises(RobustlabError):
        train_val_split(ds, 1.0)


def test_batches_cover_once_and_shuffle_reproducibly():
    ds = make_dataset([7, 6])
    plain = list(batches(ds, 5))
    assert [len(b[1]) for b in plain] == [5, 5, 3]
    assert torch.cat([b[2] for b in plain]).tolist() == ds.indices.tolist()

    def order(seed):
        got = list(batches(ds, 4, shuffle=True, generator=torch.Generator().manual_seed(seed)))
        for x, y, idx in got:
            assert torch.equal(ds.y[idx - 1000], y) and torch.equal(ds.x[idx - 1000], x)
        return torch.cat([b[2] for b in got])

    first = order(0)
    assert sorted(first.tolist()) == ds.indices.tolist()
    assert torch.equal(first, order(0)) and not torch.equal(first, order(1))
    with pytest.raises(RobustlabError):
        next(batches(ds, 0))


def test_subset_accepts_lists_and_masks():
    ds = make_dataset([3, 3])
    assert ds.subset([4, 1]).indices.tolist() == [1004, 1001]
    mask = ds.y == 1
    assert ds.subset(mask).indices.tolist() == ds.indices[mask].tolist()
    assert ds.num_classes == 2 and ds.shape == (1, 1, 1)
    with pytest.raises(RobustlabError):
        ImageDataset("bad", "test", torch.zeros(2, 1, 1, 1), torch.zeros(3, dtype=torch.int64), ["a"], torch.arange(2))


# --- lookup order --------------------------------------------------------------------------


def test_lookup_order(tmp_path, monkeypatch):
    explicit, env, cache, system = (tmp_path / n for n in ("explicit", "env", "cache", "system"))
    fake_mnist(system / "mnist", n_test=10)
    fake_mnist(cache / "data" / "mnist", n_test=20)
    fake_mnist(env / "mnist", n_test=30)
    fake_mnist(explicit, n_test=40)  # files directly in the root
    monkeypatch.setenv("ROBUSTLAB_DATA", str(env))

    assert len(load_dataset("mnist", data_dir=explicit)) == 40
    assert locate("mnist", explicit) == explicit
    assert len(load_dataset("mnist")) == 30
    monkeypatch.delenv("ROBUSTLAB_DATA")
    assert len(load_dataset("mnist")) == 20
    monkeypatch.setenv("ROBUSTLAB_CACHE", str(tmp_path / "empty-cache"))
    assert len(load_dataset("mnist")) == 10
    assert locate("mnist") == system / "mnist"

    monkeypatch.setenv("ROBUSTLAB_DATA", str(env))
    paths = search_paths("mnist", explicit)
    assert paths.index(explicit / "mnist") < paths.index(env / "mnist") < paths.index(
        tmp_path / "empty-cache" / "data" / "mnist"
    ) < paths.index(system / "mnist")


def test_missing_data_error_lists_places(tmp_path, monkeypatch):
    monkeypatch.setenv("ROBUSTLAB_DATA", str(tmp_path / "env"))
    assert locate("fashion-mnist", tmp_path / "explicit") is None
    with pytest.raises(DataError) as err:
        load_dataset("fashion-mnist", data_dir=tmp_path / "explicit")
    message = str(err.value)
    for place in (tmp_path / "explicit", tmp_path / "env" / "fashion-mnist", tmp_path / "system" / "fashion-mnist"):
        assert str(place) in message
    assert "ROBUSTLAB_DATA" in message and "robustlab datasets fetch fashion-mnist" in message


def test_only_the_requested_split_must_exist(tmp_path):
    fake_mnist(tmp_path / "full")
    only_test = tmp_path / "partial" / "mnist"
    only_test.mkdir(parents=True)
    for name in ("t10k-images-idx3-ubyte.gz", "t10k-labels-idx1-ubyte.gz"):
        (only_test / name).write_bytes((tmp_path / "full" / name).read_bytes())
    assert len(load_dataset("mnist", split="test", data_dir=tmp_path / "partial")) == 30
    with pytest.raises(DataError, match="not found"):
        load_dataset("mnist", split="train", data_dir=tmp_path / "partial")


def test_unknown_dataset_and_split():
    with pytest.raises(RobustlabError, match="known datasets"):
        load_dataset("imagenet")
    with pytest.raises(RobustlabError, match="no split"):
        load_dataset("digits", split="val")
    assert len(load_dataset("DIGITS", split="test")) == 449
    assert search_paths("Fashion_MNIST", "/d")[0] == Path("/d/fashion-mnist")


# --- downloads -----------------------------------------------------------------------------


class _QuietHandler(SimpleHTTPRequestHandler):
    def log_message(self, *args):
        pass


@pytest.fixture
def http_root(tmp_path):
    """A local HTTP server on 127.0.0.1 serving tmp_path/served; yields (folder, base URL)."""
    served = tmp_path / "served"
    served.mkdir()
    server = ThreadingHTTPServer(("127.0.0.1", 0), functools.partial(_QuietHandler, directory=str(served)))
    thread = threading.Thread(target=functools.partial(server.serve_forever, poll_interval=0.05), daemon=True)
    thread.start()
    try:
        yield served, f"http://127.0.0.1:{server.server_address[1]}/files"
    finally:
        server.shutdown()
        server.server_close()
        thread.join()


def _serve_fake_mnist(http_root_dir: Path) -> tuple[RemoteFile, ...]:
    fake_mnist(http_root_dir / "files")
    return tuple(
        RemoteFile(p.name, f"https://example.invalid/{p.name}", md5=hashlib.md5(p.read_bytes()).hexdigest())
        for p in sorted((http_root_dir / "files").iterdir())
    )


def test_fetch_from_local_server(http_root, tmp_path, monkeypatch):
    served, base_url = http_root
    files = _serve_fake_mnist(served)
    monkeypatch.setitem(DATASETS, "mnist", dataclasses.replace(DATASETS["mnist"], files=files))
    dest = fetch("mnist", base_url=base_url, progress=True)
    assert dest == tmp_path / "cache" / "data" / "mnist"
    assert sorted(p.name for p in dest.iterdir()) == [f.filename for f in files]
    assert len(load_dataset("mnist")) == 30  # found in the user cache
    (served / "files" / files[0].filename).unlink()
    assert fetch("mnist", base_url=base_url) == dest  # verified files are not downloaded again


def test_fetch_checksum_mismatch_leaves_nothing(http_root, tmp_path, monkeypatch):
    served, base_url = http_root
    files = _serve_fake_mnist(served)
    bad = dataclasses.replace(files[1], md5="0" * 32)
    monkeypatch.setitem(DATASETS, "mnist", dataclasses.replace(DATASETS["mnist"], files=(bad,)))
    dest = tmp_path / "dest"
    with pytest.raises(DataError) as err:
        fetch("mnist", dest=dest, base_url=base_url)
    message = str(err.value)
    assert str(dest / bad.filename) in message and "0" * 32 in message and files[1].md5 in message
    assert list(dest.iterdir()) == []


def test_fetch_http_error(http_root, tmp_path, monkeypatch):
    _, base_url = http_root
    missing = RemoteFile("nothing.gz", "https://example.invalid/nothing.gz", md5="0" * 32)
    monkeypatch.setitem(DATASETS, "mnist", dataclasses.replace(DATASETS["mnist"], files=(missing,)))
    with pytest.raises(DataError, match="404"):
        fetch("mnist", dest=tmp_path / "dest", base_url=base_url)
    assert list((tmp_path / "dest").iterdir()) == []


def test_load_dataset_download_flag(http_root, tmp_path, monkeypatch):
    served, base_url = http_root
    files = _serve_fake_mnist(served)
    monkeypatch.setitem(DATASETS, "mnist", dataclasses.replace(DATASETS["mnist"], files=files))
    monkeypatch.setattr(loading_module, "fetch", functools.partial(fetch, base_url=base_url))
    with pytest.raises(DataError):
        load_dataset("mnist")
    assert len(load_dataset("mnist", download=True)) == 30


def test_registry_has_official_checksums():
    assert {f.md5 for f in DATASETS["mnist"].files} >= {"f68b3c2dcbeaaa9fbdd348bbdeb94873"}
    assert DATASETS["cifar10"].files[0].md5 == "c58f30108f718f92721af3b95e74349a"
    assert not DATASETS["digits"].needs_download
    for info in DATASETS.values():
        assert len(info.classes) == 10 and all(f.url.startswith("http") for f in info.files)


# --- real data (only when ROBUSTLAB_DATA holds it) -----------------------------------------


def _real(name: str):
    if not REAL_DATA:
        pytest.skip("ROBUSTLAB_DATA is not set")
    path = lookup_module.find_source(DATASETS[name], "test", REAL_DATA)
    if path is None:
        pytest.skip(f"{name} not found under ROBUSTLAB_DATA={REAL_DATA}")


@pytest.mark.parametrize("name", ["mnist", "fashion-mnist"])
def test_real_idx_datasets(name, monkeypatch):
    _real(name)
    monkeypatch.setenv("ROBUSTLAB_DATA", REAL_DATA)
    ds = load_dataset(name, split="test", limit=100, verify=True)
    assert ds.x.shape == (100, 1, 28, 28) and ds.x.dtype == torch.float32 and ds.y.dtype == torch.int64
    assert 0.0 <= float(ds.x.min()) and float(ds.x.max()) <= 1.0
    counts = torch.bincount(ds.y, minlength=10)
    assert int(counts.min()) >= 8 and int(counts.max()) <= 12
    assert int(ds.indices.max()) < 10_000


def test_real_cifar10(monkeypatch):
    _real("cifar10")
    monkeypatch.setenv("ROBUSTLAB_DATA", REAL_DATA)
    ds = load_dataset("cifar10", split="test", limit=100)
    assert ds.x.shape == (100, 3, 32, 32) and ds.x.dtype == torch.float32
    assert 0.0 <= float(ds.x.min()) and float(ds.x.max()) <= 1.0 and float(ds.x.std()) > 0.1
    assert torch.bincount(ds.y, minlength=10).tolist() == [10] * 10
    first = load_dataset("cifar10", split="test").y[:20]  # the first images, as protocols take them
    assert torch.bincount(first, minlength=10).tolist() == [2] * 10
    cached = load_dataset("cifar10", split="test", limit=100)  # second load reads the cache
    assert torch.equal(cached.x, ds.x) and torch.equal(cached.indices, ds.indices)


@pytest.mark.slow
def test_real_cifar10_train_full(monkeypatch):
    _real("cifar10")
    monkeypatch.setenv("ROBUSTLAB_DATA", REAL_DATA)
    ds = load_dataset("cifar10", split="train")
    assert ds.x.shape == (50_000, 3, 32, 32)
    assert torch.bincount(ds.y).tolist() == [5000] * 10


def test_class_interleaved_order_is_round_robin_and_keeps_the_order_within_a_class():
    labels = np.array([2, 0, 0, 2, 1, 0, 2, 2])
    order = class_interleaved_order(labels)
    assert order.tolist() == [1, 4, 0, 2, 3, 5, 6, 7]
    assert labels[order].tolist() == [0, 1, 2, 0, 2, 0, 2, 2]
    assert class_interleaved_order(np.array([], dtype=np.int64)).tolist() == []
