"""Data sets for the models (config group ``data``): binary images as flat tensors.

Three sources, each a function that Hydra instantiates from ``conf/data/<name>.yaml``:

- ``digits``: scikit-learn's bundled 8×8 digits (1797 images), binarised at half the grey
  range, with a fixed, seeded train/test split. Needs nothing from the network: the
  offline default.
- ``mnist``: MNIST from local files at ``path``: a folder holding the four IDX files
  (``train-images-idx3-ubyte``, ``t10k-images-idx3-ubyte``, optionally ``.gz``), a single
  IDX image file (split like ``digits``), or an ``.npz`` with ``x_train`` and ``x_test``
  (Keras' ``mnist.npz``). Binarised statically (threshold 0.5) or dynamically (a fresh
  Bernoulli draw of the grey levels each time a training batch is taken).
- ``synthetic``: binary vectors drawn from a random sigmoid belief net; tiny, for tests.

A missing or malformed file raises ``ValueError`` with a one-line message naming the path.
"""

from __future__ import annotations

import functools
import gzip
import struct
import zipfile
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch
from torch import Tensor

from benchmarks.errors import DataError

BINARIZE = ("static", "dynamic")


@dataclass
class Dataset:
    """Train and test images as flat tensors in [0, 1], [N, D] and [M, D].

    ``test`` is always binary. ``train`` is binary too unless ``dynamic``, in which case
    it holds grey levels and ``batch`` draws binary pixels from them on every call.
    """

    name: str
    train: Tensor
    test: Tensor
    image_shape: tuple[int, ...]
    dynamic: bool = False
    info: dict = field(default_factory=dict)

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
        return Dataset(
            self.name,
            self.train.to(device, dtype),
            self.test.to(device, dtype),
            self.image_shape,
            self.dynamic,
            self.info,
        )


def _split(x: np.ndarray, test_fraction: float, split_seed: int) -> tuple[np.ndarray, np.ndarray]:
    if not 0.0 < test_fraction < 1.0:
        raise ValueError(f"data.test_fraction must be in (0, 1), got {test_fraction}")
    order = np.random.default_rng(split_seed).permutation(len(x))
    n_test = max(1, round(test_fraction * len(x)))
    return x[order[n_test:]], x[order[:n_test]]


def _binarize(name: str, grey_train, grey_test, image_shape, binarize: str, seed: int) -> Dataset:
    """Datasets from grey levels in [0, 1]: thresholded, or kept for dynamic draws."""
    if binarize not in BINARIZE:
        raise ValueError(f"data.binarize must be one of {', '.join(BINARIZE)}; got {binarize!r}")
    train = torch.as_tensor(grey_train, dtype=torch.float32)
    test = torch.as_tensor(grey_test, dtype=torch.float32)
    if binarize == "static":
        return Dataset(name, (train > 0.5).float(), (test > 0.5).float(), image_shape)
    # A fixed draw for the test set, so that held-out ELBOs are comparable across runs.
    generator = torch.Generator().manual_seed(seed)
    test = (torch.rand(test.shape, generator=generator) < test).float()
    return Dataset(name, train, test, image_shape, dynamic=True)


def digits(test_fraction: float = 0.2, split_seed: int = 0, binarize: str = "static") -> Dataset:
    """scikit-learn's 8×8 digits, grey levels 0..16 scaled to [0, 1], split at random
    (fixed by ``split_seed``) into train and test."""
    from sklearn.datasets import load_digits

    images = load_digits().images.reshape(-1, 64).astype(np.float32) / 16.0
    train, test = _split(images, test_fraction, split_seed)
    return _binarize("digits", train, test, (8, 8), binarize, split_seed)


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


def mnist(
    path: str | None = None,
    binarize: str = "static",
    test_fraction: float = 1 / 7,
    split_seed: int = 0,
) -> Dataset:
    """MNIST (or any IDX / .npz set of grey images) from local files at ``path``.

    Raises:
        ValueError: one line naming ``path`` when it is unset, missing or malformed.
    """
    if not path:
        raise ValueError(
            "data.path must name an MNIST .npz file, an IDX file or a folder of IDX files"
        )
    source = Path(path).expanduser()
    if not source.exists():
        raise DataError(f"data.path: no such file or folder: {source}")
    try:
        train, test = _read_images(source, test_fraction, split_seed)
    except DataError:
        raise
    except (OSError, EOFError, zipfile.BadZipFile, struct.error, KeyError, ValueError) as exc:
        reason = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
        raise DataError(f"data.path: cannot read {source}: {reason}") from None
    image_shape = train.shape[1:]
    scale = 255.0 if train.dtype == np.uint8 or train.max(initial=0) > 1 else 1.0
    flat = [a.reshape(len(a), -1).astype(np.float32) / scale for a in (train, test)]
    dataset = _binarize("mnist", *flat, tuple(image_shape), binarize, split_seed)
    dataset.info["path"] = str(source)
    return dataset


def _read_images(source: Path, test_fraction: float, split_seed: int):
    """(train, test) arrays [N, *image_shape] from a folder, an IDX file or an .npz."""
    if source.is_dir():
        files = [_find_idx(source, prefix) for prefix in ("train-images", "t10k-images")]
        return tuple(_read_idx(f) for f in files)
    if source.suffix == ".npz":
        with np.load(source, allow_pickle=False) as npz:
            missing = [k for k in ("x_train", "x_test") if k not in npz.files]
            if missing:
                raise DataError(
                    f"data.path: {source} has arrays {sorted(npz.files)}; "
                    "expected x_train and x_test"
                )
            train, test = npz["x_train"], npz["x_test"]
        for name, array in (("x_train", train), ("x_test", test)):
            if array.ndim < 2 or len(array) == 0:
                raise DataError(
                    f"data.path: {source}: {name} must be a non-empty array of images, "
                    f"got shape {array.shape}"
                )
        return train, test
    return _split(_read_idx(source), test_fraction, split_seed)


def _find_idx(folder: Path, prefix: str) -> Path:
    for name in (f"{prefix}-idx3-ubyte", f"{prefix}.idx3-ubyte"):
        for candidate in (folder / name, folder / f"{name}.gz"):
            if candidate.is_file():
                return candidate
    raise DataError(f"data.path: no {prefix}-idx3-ubyte[.gz] file in folder {folder}")


@functools.lru_cache(maxsize=4)
def _read_idx_cached(path: str, mtime: float) -> np.ndarray:
    opener = gzip.open if path.endswith(".gz") else open
    with opener(path, "rb") as handle:
        raw = handle.read()
    if len(raw) < 4 or raw[0] != 0 or raw[1] != 0:
        raise DataError(f"data.path: {path} is not an IDX file (bad magic number)")
    dtype_code, ndim = raw[2], raw[3]
    if dtype_code != 0x08 or ndim < 2:
        raise DataError(
            f"data.path: {path} is not an IDX file of unsigned-byte images "
            f"(type 0x{dtype_code:02x}, {ndim} dimensions)"
        )
    shape = struct.unpack(f">{ndim}I", raw[4 : 4 + 4 * ndim])
    body = raw[4 + 4 * ndim :]
    if len(body) != int(np.prod(shape)) or shape[0] == 0:
        raise DataError(
            f"data.path: {path} is truncated or malformed: header says {shape}, "
            f"found {len(body)} bytes of pixels"
        )
    return np.frombuffer(body, dtype=np.uint8).reshape(shape)


def _read_idx(path: Path) -> np.ndarray:
    """Images from an IDX file (optionally gzipped), cached by path and mtime."""
    return _read_idx_cached(str(path), path.stat().st_mtime)


def write_idx(path: str | Path, images: np.ndarray) -> Path:
    """Write uint8 ``images`` [N, H, W] as an IDX file (gzipped if the name ends in .gz).

    The inverse of the reader; tests and users with a converted data set use it.
    """
    images = np.ascontiguousarray(images, dtype=np.uint8)
    header = bytes([0, 0, 0x08, images.ndim]) + struct.pack(f">{images.ndim}I", *images.shape)
    path = Path(path)
    opener = gzip.open if path.suffix == ".gz" else open
    with opener(path, "wb") as handle:
        handle.write(header + images.tobytes())
    return path
