"""Datasets: MNIST from the canonical IDX files, and the synthetic regression sets of the seeds.

``load_mnist`` looks for the four ``*-idx?-ubyte.gz`` files in, in order: the ``path`` argument,
``$GPUNET_DATA`` (the folder itself or its ``mnist/`` subfolder), the copy shipped inside the package,
the user cache (``$XDG_CACHE_HOME/gpunet/mnist``); failing that it downloads them into the cache,
checking each file's SHA-256. The checksum is taken over the decompressed IDX bytes, so a mirror
that recompressed the files still verifies. A failed or mismatching download leaves no file behind.
"""
from __future__ import annotations

import gzip
import hashlib
import logging
import os
import struct
import urllib.request
from pathlib import Path

import numpy as np

log = logging.getLogger("gpunet")

MNIST_FILES = {
    "train_images": "train-images-idx3-ubyte.gz",
    "train_labels": "train-labels-idx1-ubyte.gz",
    "test_images": "t10k-images-idx3-ubyte.gz",
    "test_labels": "t10k-labels-idx1-ubyte.gz",
}
#: SHA-256 of the decompressed IDX contents
MNIST_SHA256 = {
    "train-images-idx3-ubyte.gz": "ba891046e6505d7aadcbbe25680a0738ad16aec93bde7f9b65e87a2fc25776db",
    "train-labels-idx1-ubyte.gz": "65a50cbbf4e906d70832878ad85ccda5333a97f0f4c3dd2ef09a8a9eef7101c5",
    "t10k-images-idx3-ubyte.gz": "0fa7898d509279e482958e8ce81c8e77db3f2f8254e26661ceb7762c4d494ce7",
    "t10k-labels-idx1-ubyte.gz": "ff7bcfd416de33731a308c3f266cc351222c34898ecbeaf847f06e48f7ec33f2",
}
MNIST_MIRRORS = (
    "https://ossci-datasets.s3.amazonaws.com/mnist/",
    "https://storage.googleapis.com/cvdf-datasets/mnist/",
)
PACKAGED = Path(__file__).parent / "data" / "mnist"


def cache_dir() -> Path:
    base = os.environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache")
    return Path(base) / "gpunet" / "mnist"


# ----------------------------------------------------------------------------- IDX format
def parse_idx(raw: bytes, name="IDX data") -> np.ndarray:
    """Decode an uncompressed IDX file (unsigned-byte data: magic 0x0000080N) into a uint8 array."""
    if len(raw) < 4 or raw[0] != 0 or raw[1] != 0 or raw[2] != 0x08:
        raise ValueError(f"{name}: not an unsigned-byte IDX file (bad magic number)")
    ndim = raw[3]
    header = 4 + 4 * ndim
    if ndim < 1 or len(raw) < header:
        raise ValueError(f"{name}: truncated IDX header")
    shape = struct.unpack(f">{ndim}I", raw[4:header])
    count = int(np.prod(shape))
    if len(raw) - header != count:
        raise ValueError(f"{name}: expected {count} data bytes for shape {shape}, found {len(raw) - header}")
    return np.frombuffer(raw, dtype=np.uint8, offset=header).reshape(shape)


def read_idx_gz(path) -> np.ndarray:
    try:
        with gzip.open(path, "rb") as f:
            raw = f.read()
    except (OSError, EOFError) as exc:
        raise ValueError(f"{path}: not a readable gzip file ({exc})") from None
    return parse_idx(raw, str(path))


def write_idx_gz(path, array) -> None:
    """Write a uint8 array as a gzipped IDX file (used by tests and tools)."""
    array = np.ascontiguousarray(array, dtype=np.uint8)
    header = bytes([0, 0, 0x08, array.ndim]) + struct.pack(f">{array.ndim}I", *array.shape)
    with gzip.open(path, "wb") as f:
        f.write(header + array.tobytes())


def _sha256_of_gz(path) -> str:
    with gzip.open(path, "rb") as f:
        return hashlib.sha256(f.read()).hexdigest()


# ----------------------------------------------------------------------------- download
def download(url, dest, sha256=None, timeout=60.0) -> Path:
    """Fetch ``url`` to ``dest`` atomically; if ``sha256`` is given, check it over the decompressed
    content. On any failure nothing is left at ``dest`` (nor a temporary file) and the error is raised."""
    dest = Path(dest)
    dest.parent.mkdir(parents=True, exist_ok=True)
    tmp = dest.with_name(dest.name + f".part{os.getpid()}")
    try:
        with urllib.request.urlopen(url, timeout=timeout) as response, open(tmp, "wb") as f:
            while chunk := response.read(1 << 20):
                f.write(chunk)
        if sha256 is not None:
            try:
                got = _sha256_of_gz(tmp)
            except (OSError, EOFError) as exc:
                raise ValueError(f"downloaded {url} is not a valid gzip file ({exc})") from None
            if got != sha256:
                raise ValueError(f"checksum mismatch for {url}: expected SHA-256 {sha256}, got {got}")
        os.replace(tmp, dest)
    finally:
        if tmp.exists():
            tmp.unlink()
    return dest


def fetch_mnist(directory=None, mirrors=MNIST_MIRRORS, checksums=None, timeout=60.0) -> Path:
    """Download whichever MNIST files are missing from ``directory`` (default: the user cache),
    trying each mirror in turn. Returns the directory."""
    directory = Path(directory) if directory is not None else cache_dir()
    checksums = MNIST_SHA256 if checksums is None else checksums
    for name in MNIST_FILES.values():
        if (directory / name).exists():
            continue
        errors = []
        for base in mirrors:
            url = base.rstrip("/") + "/" + name
            try:
                log.info("gpunet: downloading %s", url)
                download(url, directory / name, checksums.get(name), timeout)
                break
            except Exception as exc:  # next mirror
                errors.append(f"{url}: {exc}")
        else:
            raise OSError(f"could not download {name}:\n  " + "\n  ".join(errors))
    return directory


def _has_mnist(directory) -> bool:
    return directory is not None and all((Path(directory) / f).is_file() for f in MNIST_FILES.values())


def find_mnist(path=None, download_missing=True) -> Path:
    """The folder holding the four MNIST files (see the module docstring for the search order)."""
    if path is not None:
        if not _has_mnist(path):
            missing = [f for f in MNIST_FILES.values() if not (Path(path) / f).is_file()]
            raise FileNotFoundError(f"MNIST files missing in {path}: {', '.join(missing)}")
        return Path(path)
    env = os.environ.get("GPUNET_DATA")
    if env:  # an explicit location is used or reported, never silently passed over
        for c in (Path(env), Path(env) / "mnist"):
            if _has_mnist(c):
                return c
        raise FileNotFoundError(f"GPUNET_DATA={env} holds no MNIST files ({', '.join(MNIST_FILES.values())}, in "
                                "that folder or its mnist/ subfolder); fix or unset it")
    candidates = []
    candidates += [PACKAGED, cache_dir()]
    for c in candidates:
        if _has_mnist(c):
            return c
    if not download_missing:
        raise FileNotFoundError("MNIST not found: pass path=, set GPUNET_DATA, or allow the download")
    return fetch_mnist()


def load_mnist(path=None, download=True):
    """``((X_train, y_train), (X_test, y_test))``: X float32 in [0, 1] of shape (n, 784), y int64."""
    folder = find_mnist(path, download)
    parts = {k: read_idx_gz(folder / f) for k, f in MNIST_FILES.items()}
    out = []
    for split in ("train", "test"):
        images, labels = parts[f"{split}_images"], parts[f"{split}_labels"]
        if images.ndim != 3 or labels.ndim != 1 or images.shape[0] != labels.shape[0]:
            raise ValueError(f"{folder}: inconsistent MNIST {split} files: images {images.shape}, labels {labels.shape}")
        X = images.reshape(images.shape[0], -1).astype(np.float32) / np.float32(255.0)
        out.append((X, labels.astype(np.int64)))
    return tuple(out)


# ----------------------------------------------------------------------------- synthetic sets
def sinc(n=1000, low=-10.0, high=10.0, noise=0.0, seed=0):
    """``y = sin(x)/x + 2`` on ``x ~ U(low, high)`` (y(0) = 3): X (n, 1), y (n, 1), float64."""
    rng = np.random.default_rng(seed)
    x = rng.uniform(low, high, size=(n, 1))
    y = np.sinc(x / np.pi) + 2.0 + noise * rng.standard_normal((n, 1))
    return x, y


def sincos(n=1000, low=0.0, high=2 * np.pi, noise=0.0, seed=0):
    """``y = [sin x, cos x]`` on ``x ~ U(low, high)``: X (n, 1), y (n, 2), float64."""
    rng = np.random.default_rng(seed)
    x = rng.uniform(low, high, size=(n, 1))
    y = np.hstack([np.sin(x), np.cos(x)]) + noise * rng.standard_normal((n, 2))
    return x, y
