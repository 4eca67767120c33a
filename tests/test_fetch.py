"""Getting the data: hessjax.data.fetch against a local HTTP server, and the tfds fallback's
download path run up to its network call (network patched out), so a dependency the ``tfds``
extra lacks fails here rather than on a user's first ``load``."""

import contextlib
import gzip
import hashlib
import http.server
import io
import pickle
import struct
import subprocess
import sys
import tarfile
import threading

import numpy as np
import pytest

from hessjax import data
from hessjax.data import _fetch

# ----------------------------------------------------------------------------- helpers


@contextlib.contextmanager
def serve(files):
    """A local HTTP server for ``files`` {path: bytes} (404 otherwise); yields (base url, hits)."""
    hits = []

    class Handler(http.server.BaseHTTPRequestHandler):
        def do_GET(self):
            hits.append(self.path)
            body = files.get(self.path.lstrip("/"))
            if body is None:
                self.send_error(404)
                return
            self.send_response(200)
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

        def log_message(self, *args):
            pass

    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{server.server_address[1]}/", hits
    finally:
        server.shutdown()
        server.server_close()


@pytest.fixture(autouse=True)
def _no_proxy(monkeypatch):
    for var in ("http_proxy", "HTTP_PROXY", "https_proxy", "HTTPS_PROXY", "all_proxy"):
        monkeypatch.delenv(var, raising=False)
    monkeypatch.setenv("no_proxy", "127.0.0.1,localhost")


def _md5(blob):
    return hashlib.md5(blob).hexdigest()


def _idx_gz(array, magic):
    header = struct.pack(">" + "i" * (1 + array.ndim), magic, *array.shape)
    return gzip.compress(header + array.astype(np.uint8).tobytes(), mtime=0)


def _cifar_tar_gz(folder, members):
    """A tar.gz holding ``folder/name`` for each {name: pickled dict}."""
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w:gz") as tar:
        for name, obj in members.items():
            blob = pickle.dumps(obj)
            info = tarfile.TarInfo(f"{folder}/{name}")
            info.size = len(blob)
            tar.addfile(info, io.BytesIO(blob))
    return buf.getvalue()


def _publisher_files(rng):
    """Small files in the publishers' formats, {name: {filename: bytes}}, and what they hold."""
    truth, files = {}, {}
    mnist = {}
    for split, prefix, n in (("train", "train", 7), ("test", "t10k", 3)):
        pixels, labels = rng.integers(0, 256, (n, 28, 28)), rng.integers(0, 10, n)
        mnist[f"{prefix}-images-idx3-ubyte.gz"] = _idx_gz(pixels, 0x803)
        mnist[f"{prefix}-labels-idx1-ubyte.gz"] = _idx_gz(labels, 0x801)
        truth["mnist", split] = (pixels[..., None], labels)
    files["mnist"] = mnist
    cifar10_files = {"train": [f"data_batch_{i}" for i in range(1, 6)], "test": ["test_batch"]}
    for name, folder, label_key, split_files in (
        ("cifar10", "cifar-10-batches-py", b"labels", cifar10_files),
        ("cifar100", "cifar-100-python", b"fine_labels", {"train": ["train"], "test": ["test"]}),
    ):
        members = {}
        for split, names in split_files.items():
            parts = []
            for fname in names:
                pixels, labels = rng.integers(0, 256, (2, 32, 32, 3)), rng.integers(0, 10, 2)
                planes = pixels.astype(np.uint8).transpose(0, 3, 1, 2).reshape(2, -1)
                members[fname] = {b"data": planes, label_key: labels.tolist()}
                parts.append((pixels, labels))
            truth[name, split] = tuple(np.concatenate(p) for p in zip(*parts))
        tar_name = _fetch.SOURCES[name][0].filename
        files[name] = {tar_name: _cifar_tar_gz(folder, members)}
    return files, truth


def _patch_sources(monkeypatch, files, mirrors):
    """Point SOURCES at ``mirrors`` (base urls tried in order) with the MD5s of ``files``."""
    for name, by_file in files.items():
        sources = tuple(
            _fetch.Source(
                src.folder,
                src.filename,
                _md5(by_file[src.filename]),
                len(by_file[src.filename]),
                tuple(m + src.filename for m in mirrors),
            )
            for src in _fetch.SOURCES[name]
        )
        monkeypatch.setitem(_fetch.SOURCES, name, sources)


def _expected(name, pixels):
    x = pixels / np.float32(255)
    if name == "mnist":
        return (x - np.float32(data.MNIST_MEAN)) / np.float32(data.MNIST_STD)
    if name == "cifar100":
        return (x - data.CIFAR100_MEAN) / data.CIFAR100_STD
    return x


# ----------------------------------------------------------------------------- fetch


def test_fetch_writes_what_load_reads(tmp_path, monkeypatch):
    files, truth = _publisher_files(np.random.default_rng(0))
    with serve({k: v for by_file in files.values() for k, v in by_file.items()}) as (url, hits):
        _patch_sources(monkeypatch, files, [url])
        lines = []
        paths = data.fetch(["mnist", "cifar10", "cifar100"], tmp_path, log=lines.append)
        assert len(hits) == 6 and len(paths) == 6
        assert {p.relative_to(tmp_path).as_posix() for p in paths} == {
            "mnist/train-images-idx3-ubyte.gz",
            "mnist/train-labels-idx1-ubyte.gz",
            "mnist/t10k-images-idx3-ubyte.gz",
            "mnist/t10k-labels-idx1-ubyte.gz",
            "cifar10/cifar-10-python.tar.gz",
            "cifar100/cifar-100-python.tar.gz",
        }
        assert not list(tmp_path.rglob("*.part"))
        assert any(url in line for line in lines)
        for (name, split), (pixels, labels) in truth.items():
            x, y = data.load(name, split, tmp_path)
            np.testing.assert_allclose(x, _expected(name, pixels), rtol=1e-6, atol=1e-6)
            np.testing.assert_array_equal(y, labels)
        # Already present with the right MD5: nothing is downloaded again.
        lines.clear()
        data.fetch("cifar10", tmp_path, log=lines.append)
        assert len(hits) == 6 and "already present" in lines[0]


def test_fetch_rejects_corrupt_files_and_tries_the_next_mirror(tmp_path, monkeypatch):
    files, _ = _publisher_files(np.random.default_rng(1))
    good = files["cifar100"]["cifar-100-python.tar.gz"]
    corrupt = bytearray(good)
    corrupt[len(corrupt) // 2] ^= 0xFF  # one flipped byte
    served = {"bad/cifar-100-python.tar.gz": bytes(corrupt), "good/cifar-100-python.tar.gz": good}
    target = tmp_path / "cifar100" / "cifar-100-python.tar.gz"
    with serve(served) as (url, hits):
        # mirror 1 has no such file (404), mirror 2 serves a corrupt copy, mirror 3 a good one
        _patch_sources(monkeypatch, {"cifar100": files["cifar100"]}, [url, url + "bad/"])
        with pytest.raises(data.FetchError) as info:
            data.fetch("cifar100", tmp_path, log=None)
        msg = str(info.value)
        assert f"{url}cifar-100-python.tar.gz: HTTPError" in msg and "404" in msg
        assert f"{url}bad/cifar-100-python.tar.gz: downloaded {len(good)} bytes with MD5" in msg
        assert _md5(good) in msg and "Fix:" in msg and "HESSJAX_DATA_DIR" in msg
        assert isinstance(info.value, OSError)
        assert not target.exists() and not list(tmp_path.rglob("*.part"))  # nothing half-written

        _patch_sources(monkeypatch, {"cifar100": files["cifar100"]}, [url + "bad/", url + "good/"])
        assert data.fetch("cifar100", tmp_path, log=None) == [target]
        assert target.read_bytes() == good and len(hits) == 4
        # A present file with the wrong MD5 is replaced, not trusted.
        target.write_bytes(bytes(corrupt))
        data.fetch("cifar100", tmp_path, log=None)
        assert target.read_bytes() == good


def test_fetch_command_line(tmp_path, monkeypatch, capsys):
    files, truth = _publisher_files(np.random.default_rng(2))
    with serve(files["mnist"]) as (url, _):
        _patch_sources(monkeypatch, {"mnist": files["mnist"]}, [url])
        monkeypatch.setenv(data.ENV_VAR, str(tmp_path))  # --dir defaults to it
        assert _fetch.main(["mnist"]) == 0
        assert f"HESSJAX_DATA_DIR={tmp_path}" in capsys.readouterr().out
        x, y = data.load("mnist", "test")
        np.testing.assert_array_equal(y, truth["mnist", "test"][1])
        missing = _fetch.Source("cifar10", "nothing-here.tar.gz", "0" * 32, None, (url + "x",))
        monkeypatch.setitem(_fetch.SOURCES, "cifar10", (missing,))
        assert _fetch.main(["cifar10", "--dir", str(tmp_path)]) == 1
        err = capsys.readouterr().err
        assert err.startswith("error: could not download nothing-here.tar.gz") and "404" in err
    monkeypatch.delenv(data.ENV_VAR)
    with pytest.raises(SystemExit):
        _fetch.main(["mnist"])  # no --dir, no HESSJAX_DATA_DIR
    assert "--dir is required" in capsys.readouterr().err
    with pytest.raises(ValueError, match="synthetic is generated"):
        data.fetch(["synthetic"], tmp_path)
    with pytest.raises(ValueError, match="HESSJAX_DATA_DIR"):
        data.fetch(["mnist"])


def test_python_dash_m_and_the_function_share_a_name():
    out = subprocess.run(
        [sys.executable, "-W", "error::RuntimeWarning", "-m", "hessjax.data.fetch", "--help"],
        capture_output=True,
        text=True,
        check=True,
    )
    assert "mnist, cifar10, cifar100" in out.stdout and not out.stderr
    import hessjax.data.fetch  # binds the submodule to hessjax.data.fetch: still callable

    with pytest.raises(ValueError, match="fetchable"):
        hessjax.data.fetch(["imagenet"], "/nonexistent")


def test_fetch_the_real_mnist_files_with_the_publishers_md5s(data_dir, tmp_path, monkeypatch):
    """The published MD5s in SOURCES match the canonical MNIST files (served locally)."""
    files = {p.name: p.read_bytes() for p in (data_dir / "mnist").glob("*.gz")}
    with serve(files) as (url, _):
        sources = tuple(s._replace(urls=(url + s.filename,)) for s in _fetch.SOURCES["mnist"])
        monkeypatch.setitem(_fetch.SOURCES, "mnist", sources)
        data.fetch("mnist", tmp_path, log=None)
    for split in ("train", "test"):
        x, y = data.load("mnist", split, tmp_path)
        x0, y0 = data.load("mnist", split, data_dir)
        np.testing.assert_array_equal(x, x0)
        np.testing.assert_array_equal(y, y0)


# ----------------------------------------------------------------------------- tfds fallback


class NetworkCall(Exception):
    """Raised in place of every HTTP request: the end point of the tfds download path here."""


def _block_network(monkeypatch, tmp_path, serve_dir=None):
    """Patch requests (tfds downloads with it) and send tfds' data dir to ``tmp_path``.

    With ``serve_dir`` files of that folder are answered from disk (by URL basename); every
    other request raises :class:`NetworkCall`. Returns the list of URLs requested."""
    pytest.importorskip("tensorflow_datasets")
    import requests
    from tensorflow_datasets.core import constants

    urls = []

    def send(self, request, **kwargs):
        urls.append(request.url)
        path = serve_dir / request.url.rsplit("/", 1)[-1] if serve_dir else None
        if path is None or not path.is_file():
            raise NetworkCall(request.url)
        response = requests.Response()
        blob = path.read_bytes()
        response.status_code, response.url, response.request = 200, request.url, request
        response.raw = io.BytesIO(blob)
        response.headers["Content-Length"] = str(len(blob))
        return response

    monkeypatch.setattr(requests.adapters.HTTPAdapter, "send", send)
    monkeypatch.setattr(constants, "DATA_DIR", str(tmp_path / "tfds"))
    monkeypatch.delenv(data.ENV_VAR, raising=False)
    return urls


def _chain(exc):
    while exc is not None:
        yield exc
        exc = exc.__cause__ or exc.__context__


_TFDS_HOSTS = {
    "mnist": "storage.googleapis.com",
    "cifar10": "www.cs.toronto.edu",
    "cifar100": "www.cs.toronto.edu",
}


@pytest.mark.parametrize("name, host", sorted(_TFDS_HOSTS.items()))
def test_tfds_download_path_reaches_the_network(name, host, tmp_path, monkeypatch):
    """``load`` without local files runs tfds up to its HTTP request (the tfds extra is complete:
    an undeclared dependency, e.g. tfds 4.9.10's importlib_resources, stops it earlier)."""
    urls = _block_network(monkeypatch, tmp_path)
    with pytest.raises(data.DataNotFoundError) as info:
        data.load(name, "train")
    chain = list(_chain(info.value))
    reached = [e for e in chain if isinstance(e, NetworkCall)]
    missing = [e for e in chain if isinstance(e, ImportError)]
    assert reached and not missing, (
        f"tfds stopped before its network call: {chain[1]!r}. A dependency of "
        "tensorflow_datasets is missing from the 'tfds' extra in setup.py."
    )
    assert urls and all(host in u for u in urls)
    assert "NetworkCall" in str(info.value) and "hessjax.data.fetch" in str(info.value)


@pytest.mark.slow  # tfds prepares all 70,000 images: ~15 s
def test_tfds_fallback_prepares_real_mnist(data_dir, tmp_path, monkeypatch):
    """The whole tfds path (download with tfds' own checksum check, extract, prepare, read) on
    the canonical MNIST files answered from disk instead of the network: same images."""
    urls = _block_network(monkeypatch, tmp_path, serve_dir=data_dir / "mnist")
    x, y = data.load("mnist", "test")
    # the four canonical files, from tfds' host (tfds may retry a request)
    assert len(set(urls)) == 4 and all("storage.googleapis.com" in u for u in urls)
    x0, y0 = data.load("mnist", "test", data_dir)
    assert x.shape == x0.shape and x.dtype == x0.dtype and y.dtype == y0.dtype
    key = lambda xs, ys: sorted(zip((r.tobytes() for r in xs), ys.tolist()))  # tfds shuffles
    assert key(x, y) == key(x0, y0)
    assert (tmp_path / "tfds" / "mnist").is_dir()  # tfds wrote where it was told to
