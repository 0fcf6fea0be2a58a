"""MNIST loading (shipped copy, folders, GPUNET_DATA), the IDX format, and the download path against a
local HTTP server on 127.0.0.1 serving small IDX files written here."""
import functools
import gzip
import hashlib
import http.server
import threading

import numpy as np
import pytest

import gpunet as gn
from gpunet import datasets

from helpers import write_small_mnist


def test_shipped_mnist_shapes_and_ranges():
    (X, y), (Xt, yt) = gn.datasets.load_mnist()
    assert X.shape == (60000, 784) and Xt.shape == (10000, 784)
    assert X.dtype == np.float32 and y.dtype == np.int64
    assert X.min() == 0.0 and X.max() == 1.0
    assert set(np.unique(y)) == set(range(10)) and np.bincount(yt).min() > 800
    assert y[:8].tolist() == [5, 0, 4, 1, 9, 2, 1, 3]  # the canonical first training labels


def test_shipped_files_match_their_checksums():
    for name, digest in datasets.MNIST_SHA256.items():
        assert datasets._sha256_of_gz(datasets.PACKAGED / name) == digest


def test_directory_and_env_variable(tmp_path, monkeypatch):
    folder = write_small_mnist(tmp_path / "mnist", n_train=30, n_test=10)
    (X, y), (Xt, yt) = gn.datasets.load_mnist(folder)
    assert X.shape == (30, 784) and Xt.shape == (10, 784)
    monkeypatch.setenv("GPUNET_DATA", str(tmp_path))  # the variable may name the parent of mnist/
    assert datasets.find_mnist() == folder
    with pytest.raises(FileNotFoundError, match="MNIST files missing"):
        gn.datasets.load_mnist(tmp_path / "nothing")


def test_idx_parser_rejects_bad_files(tmp_path):
    with pytest.raises(ValueError, match="bad magic"):
        datasets.parse_idx(b"\x00\x00\x09\x01\x00\x00\x00\x01\x00")
    with pytest.raises(ValueError, match="expected 6 data bytes"):
        datasets.parse_idx(bytes([0, 0, 8, 2, 0, 0, 0, 2, 0, 0, 0, 3]) + b"\x01\x02")
    arr = np.arange(24, dtype=np.uint8).reshape(2, 3, 4)
    datasets.write_idx_gz(tmp_path / "a.gz", arr)
    np.testing.assert_array_equal(datasets.read_idx_gz(tmp_path / "a.gz"), arr)
    (tmp_path / "b.gz").write_bytes(b"not gzip")
    with pytest.raises(ValueError, match="not a readable gzip"):
        datasets.read_idx_gz(tmp_path / "b.gz")


def test_inconsistent_files_are_reported(tmp_path):
    folder = write_small_mnist(tmp_path, n_train=20, n_test=10)
    datasets.write_idx_gz(folder / "train-labels-idx1-ubyte.gz", np.zeros(19, np.uint8))
    with pytest.raises(ValueError, match="inconsistent MNIST train files"):
        gn.datasets.load_mnist(folder)


@pytest.fixture
def server(tmp_path):
    """An HTTP server on 127.0.0.1 serving tmp_path/www; yields (base_url, www, request log)."""
    www = tmp_path / "www"
    www.mkdir()
    requests = []

    class Handler(http.server.SimpleHTTPRequestHandler):
        def log_request(self, code="-", size="-"):  # once per request, whatever its status
            requests.append(self.path)

        def log_message(self, *args):
            pass

    httpd = http.server.ThreadingHTTPServer(("127.0.0.1", 0), functools.partial(Handler, directory=str(www)))
    thread = threading.Thread(target=httpd.serve_forever, daemon=True)
    thread.start()
    yield f"http://127.0.0.1:{httpd.server_address[1]}/", www, requests
    httpd.shutdown()
    httpd.server_close()


def checksums(folder):
    return {f: hashlib.sha256(gzip.open(folder / f).read()).hexdigest() for f in datasets.MNIST_FILES.values()}


def test_download_with_checksums_then_load(server, tmp_path):
    url, www, requests = server
    write_small_mnist(www, n_train=40, n_test=12)
    cache = tmp_path / "cache"
    datasets.fetch_mnist(cache, mirrors=[url], checksums=checksums(www), timeout=10)
    assert len(requests) == 4
    (X, y), (Xt, yt) = gn.datasets.load_mnist(cache)
    assert X.shape == (40, 784) and Xt.shape == (12, 784)
    datasets.fetch_mnist(cache, mirrors=[url], checksums=checksums(www))  # present: nothing fetched
    assert len(requests) == 4


def test_bad_mirror_falls_back_to_the_next(server, tmp_path):
    url, www, requests = server
    write_small_mnist(www / "good", n_train=20, n_test=10)
    datasets.fetch_mnist(tmp_path / "cache", mirrors=[url + "missing/", url + "good/"], checksums=checksums(www / "good"),
                         timeout=10)
    assert sum(r.startswith("/missing/") for r in requests) == 4 and sum(r.startswith("/good/") for r in requests) == 4


def test_checksum_mismatch_is_an_error_and_leaves_nothing(server, tmp_path):
    url, www, _ = server
    write_small_mnist(www, n_train=20, n_test=10)
    wrong = {k: "0" * 64 for k in datasets.MNIST_FILES.values()}
    cache = tmp_path / "cache"
    with pytest.raises(OSError, match="checksum mismatch"):
        datasets.fetch_mnist(cache, mirrors=[url], checksums=wrong, timeout=10)
    assert list(cache.iterdir()) == []


def test_corrupt_download_leaves_nothing(server, tmp_path):
    url, www, _ = server
    write_small_mnist(www, n_train=20, n_test=10)
    sums = checksums(www)
    name = "train-images-idx3-ubyte.gz"
    (www / name).write_bytes((www / name).read_bytes()[:100])  # truncated on the server
    with pytest.raises(ValueError, match="not a valid gzip file"):
        datasets.download(url + name, tmp_path / "cache" / name, sums[name], timeout=10)
    assert list((tmp_path / "cache").iterdir()) == []


def test_unreachable_server_leaves_nothing(tmp_path):
    with pytest.raises(OSError):
        datasets.download("http://127.0.0.1:9/nothing.gz", tmp_path / "x.gz", None, timeout=2)
    assert list(tmp_path.iterdir()) == []


def test_synthetic_sets():
    X, y = gn.datasets.sinc(200, seed=3)
    np.testing.assert_allclose(y[:, 0], np.sin(X[:, 0]) / X[:, 0] + 2)
    X2, _ = gn.datasets.sinc(200, seed=3)
    np.testing.assert_array_equal(X, X2)
    X, y = gn.datasets.sincos(100, seed=0)
    assert y.shape == (100, 2)
    np.testing.assert_allclose(y[:, 0] ** 2 + y[:, 1] ** 2, 1.0)
