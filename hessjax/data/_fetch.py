"""Download the publishers' MNIST / CIFAR files into a folder, checking every file's MD5.

Command line (``DIR`` defaults to ``$HESSJAX_DATA_DIR``)::

    python -m hessjax.data.fetch mnist cifar10 cifar100 --dir DIR

Python: ``hessjax.data.fetch(["mnist", "cifar10"], DIR)``. Then ``HESSJAX_DATA_DIR=DIR`` (or
``load(..., data_dir=DIR)``) makes :func:`hessjax.data.load` read them. Files written:

=========  ==========================================================  =========
name       file(s) under ``DIR``                                       size
=========  ==========================================================  =========
mnist      ``mnist/{train,t10k}-{images-idx3,labels-idx1}-ubyte.gz``   11.6 MB
cifar10    ``cifar10/cifar-10-python.tar.gz`` (kept packed)            170.5 MB
cifar100   ``cifar100/cifar-100-python.tar.gz`` (kept packed)          169.0 MB
=========  ==========================================================  =========

The MD5s are the publishers' (the values torchvision's ``datasets`` check). A file already
present with the right MD5 is not downloaded again; one with a wrong MD5 is replaced. Each
download goes to a temporary ``*.part`` file beside its target and is renamed into place only
after its MD5 matched, so an interrupted or corrupt download never leaves a file that ``load``
would read. MNIST is tried at each mirror in turn; CIFAR comes from the Toronto site.
"""

from __future__ import annotations

import argparse
import hashlib
import os
import pathlib
import sys
import tempfile
import urllib.request
from collections.abc import Callable, Iterable, Sequence
from typing import NamedTuple

__all__ = ["FETCHABLE", "SOURCES", "FetchError", "Source", "fetch", "main"]

ENV_VAR = "HESSJAX_DATA_DIR"  # same as hessjax.data.ENV_VAR (no import: keeps the CLI light)
_CHUNK = 1 << 20


class Source(NamedTuple):
    """One file: where it goes under the data folder, its MD5 and size, the URLs to try."""

    folder: str  # sub-folder of DIR
    filename: str
    md5: str
    size: int | None  # bytes; None when unknown
    urls: tuple[str, ...]  # tried in order


# MNIST: torchvision's mirror, the TFDS copy (byte-identical) and the original site, which
# nowadays often refuses scripted downloads.
MNIST_MIRRORS = (
    "https://ossci-datasets.s3.amazonaws.com/mnist/",
    "https://storage.googleapis.com/cvdf-datasets/mnist/",
    "http://yann.lecun.com/exdb/mnist/",
)
CIFAR_URL = "https://www.cs.toronto.edu/~kriz/"


def _mnist(filename: str, md5: str, size: int) -> Source:
    return Source("mnist", filename, md5, size, tuple(m + filename for m in MNIST_MIRRORS))


SOURCES: dict[str, tuple[Source, ...]] = {
    "mnist": (
        _mnist("train-images-idx3-ubyte.gz", "f68b3c2dcbeaaa9fbdd348bbdeb94873", 9_912_422),
        _mnist("train-labels-idx1-ubyte.gz", "d53e105ee54ea40749a09fcbcd1e9432", 28_881),
        _mnist("t10k-images-idx3-ubyte.gz", "9fb629c4189551a2d022fa330f9573f3", 1_648_877),
        _mnist("t10k-labels-idx1-ubyte.gz", "ec29112dd5afa0611ce80d1b7f02629c", 4_542),
    ),
    "cifar10": (
        Source(
            "cifar10",
            "cifar-10-python.tar.gz",
            "c58f30108f718f92721af3b95e74349a",
            170_498_071,
            (CIFAR_URL + "cifar-10-python.tar.gz",),
        ),
    ),
    "cifar100": (
        Source(
            "cifar100",
            "cifar-100-python.tar.gz",
            "eb9058c3a382ffc7106e4002c42a8d85",
            169_001_437,
            (CIFAR_URL + "cifar-100-python.tar.gz",),
        ),
    ),
}
FETCHABLE = tuple(SOURCES)


class FetchError(OSError):
    """A file could not be downloaded with the right MD5 from any of its URLs."""


def md5sum(path: str | os.PathLike) -> str:
    """Hex MD5 of a file, read in 1 MiB chunks."""
    h = hashlib.md5(usedforsecurity=False)
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(_CHUNK), b""):
            h.update(block)
    return h.hexdigest()


def _mb(n: int | None) -> str:
    return "unknown size" if n is None else f"{n / 1e6:.1f} MB"


def _download(url: str, folder: pathlib.Path, src: Source, timeout: float, log) -> str:
    """Stream ``url`` into a temporary ``*.part`` in ``folder``; rename it to ``src.filename``
    if its MD5 matches. Returns '' on success, else why it failed (the .part is removed)."""
    target = folder / src.filename
    fd, part = tempfile.mkstemp(prefix=f"{src.filename}.", suffix=".part", dir=folder)
    h, size = hashlib.md5(usedforsecurity=False), 0
    try:
        request = urllib.request.Request(url, headers={"User-Agent": "hessjax-fetch"})
        with os.fdopen(fd, "wb") as out, urllib.request.urlopen(request, timeout=timeout) as r:
            total = src.size or int(r.headers.get("Content-Length") or 0) or None
            next_report = 0.1
            for block in iter(lambda: r.read(_CHUNK), b""):
                out.write(block)
                h.update(block)
                size += len(block)
                if total and total > 20 * _CHUNK and size / total >= next_report:
                    log(f"  {size / total:4.0%} of {_mb(total)}")
                    next_report += 0.1
        if h.hexdigest() != src.md5:
            return (
                f"downloaded {size} bytes with MD5 {h.hexdigest()}, expected {src.md5} "
                "(corrupt or truncated transfer, or an error page instead of the file)"
            )
        os.replace(part, target)  # atomic: the target is either absent or complete
        return ""
    except (OSError, ValueError) as e:  # URLError, HTTPError, timeouts are OSErrors
        return f"{type(e).__name__}: {e}"
    finally:
        if os.path.exists(part):
            os.remove(part)


def _fetch_one(src: Source, root: pathlib.Path, timeout: float, log) -> pathlib.Path:
    folder = root / src.folder
    target = folder / src.filename
    if target.is_file():
        if (src.size is None or target.stat().st_size == src.size) and md5sum(target) == src.md5:
            log(f"ok (already present, MD5 verified): {target}")
            return target
        log(f"{target} is present but its MD5 is not {src.md5}: downloading it again")
    folder.mkdir(parents=True, exist_ok=True)
    failures = []
    for url in src.urls:
        log(f"downloading {url} ({_mb(src.size)}) -> {target}")
        why = _download(url, folder, src, timeout, log)
        if not why:
            log(f"ok (MD5 {src.md5}): {target}")
            return target
        log(f"  failed: {why}")
        failures.append(f"  {url}: {why}")
    raise FetchError(
        "\n".join(
            [
                f"could not download {src.filename} (MD5 {src.md5}) from any of:",
                *failures,
                "Fix: check the internet connection (HTTPS_PROXY / HTTP_PROXY are honoured) "
                "and run the same command again (files already verified are kept); or "
                f"download {src.urls[0]} by hand into {folder}/ (its MD5 must be {src.md5}); "
                f"or point {ENV_VAR} at a folder that already holds the files.",
            ]
        )
    )


def fetch(
    names: str | Iterable[str] = FETCHABLE,
    data_dir: str | os.PathLike | None = None,
    *,
    timeout: float = 60.0,
    log: Callable[[str], None] | None = print,
) -> list[pathlib.Path]:
    """Download ``names`` (any of ``mnist``, ``cifar10``, ``cifar100``) into ``data_dir``.

    ``data_dir`` defaults to ``$HESSJAX_DATA_DIR``. Files already present with the publisher's
    MD5 are kept; the others are downloaded (to a ``*.part`` file, renamed once its MD5 matches).
    ``timeout`` is per network operation in seconds; ``log`` receives progress lines (``None``:
    silent). Returns the paths of all requested files. Raises ``ValueError`` for an unknown name
    or a missing ``data_dir``, :class:`FetchError` (an ``OSError``) naming every URL tried, why
    each failed and how to fix it, when a file cannot be obtained.
    """
    names = [names] if isinstance(names, str) else list(names)
    unknown = [n for n in names if n not in SOURCES]
    if unknown:
        extra = " (synthetic is generated, not downloaded)" if "synthetic" in unknown else ""
        raise ValueError(
            f"cannot fetch {', '.join(map(repr, unknown))}{extra}; "
            f"fetchable: {', '.join(FETCHABLE)}"
        )
    if data_dir is None:
        data_dir = os.environ.get(ENV_VAR) or None
    if data_dir is None:
        raise ValueError(f"no folder given: pass data_dir (--dir) or set {ENV_VAR}")
    root = pathlib.Path(data_dir).expanduser()
    log = log or (lambda _: None)
    return [_fetch_one(src, root, timeout, log) for n in dict.fromkeys(names) for src in SOURCES[n]]


def main(argv: Sequence[str] | None = None) -> int:
    """``python -m hessjax.data.fetch``; returns the exit status (0 ok, 1 failed, 2 usage)."""
    parser = argparse.ArgumentParser(
        prog="python -m hessjax.data.fetch",
        description=(
            "Download the publishers' MNIST / CIFAR-10 / CIFAR-100 files into DIR, checking "
            "their MD5s; hessjax.data.load reads them with HESSJAX_DATA_DIR=DIR."
        ),
    )
    parser.add_argument(
        "names",
        nargs="+",
        choices=[*FETCHABLE, "all"],
        metavar="NAME",
        help=f"{', '.join(FETCHABLE)} or all",
    )
    parser.add_argument(
        "--dir",
        default=os.environ.get(ENV_VAR) or None,
        help=f"target folder (default: ${ENV_VAR})",
    )
    parser.add_argument(
        "--timeout", type=float, default=60.0, help="seconds per network operation (default 60)"
    )
    args = parser.parse_args(argv)
    if args.dir is None:
        parser.error(f"--dir is required when {ENV_VAR} is unset")
    names = FETCHABLE if "all" in args.names else args.names
    try:
        paths = fetch(names, args.dir, timeout=args.timeout, log=lambda s: print(s, flush=True))
    except FetchError as e:
        print(f"error: {e}", file=sys.stderr)
        return 1
    root = pathlib.Path(args.dir).expanduser()
    print(f"{len(paths)} file(s) in {root}; use them with {ENV_VAR}={root} or data_dir={root!s}")
    return 0
