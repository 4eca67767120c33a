"""Data sets of Yao et al. (2018) as numpy arrays, plus CIFAR augmentation in JAX.

``load(name, split)`` returns ``x`` float32 NHWC and ``y`` int32 ``(N,)``:

=========  ==================  =======  ===================================================
name       x shape             classes  preprocessing of the raw uint8 pixels ``p``
=========  ==================  =======  ===================================================
mnist      (N, 28, 28, 1)      10       ``(p/255 - 0.1307) / 0.3081``
cifar10    (N, 32, 32, 3)      10       ``p/255`` (in [0, 1], unnormalised)
cifar100   (N, 32, 32, 3)      100      ``(p/255 - mean_c) / std_c`` per channel, fine labels
synthetic  (N, 8, 8, 1)        10       class means + Gaussian noise (see ``synthetic``)
=========  ==================  =======  ===================================================

Sources, in order:

1. a local folder of the publishers' files: the ``data_dir`` argument, else ``$HESSJAX_DATA_DIR``
   (MNIST IDX files, gz or not; the CIFAR "python version" pickles, as a folder or the tar.gz).
   An explicit ``data_dir`` is final: if the files are not there, ``DataNotFoundError`` names the
   paths searched. A folder from ``$HESSJAX_DATA_DIR`` that lacks them falls through to 2.
2. ``tensorflow_datasets`` if it imports (``pip install hessjax[tfds]``; downloads on first use).
3. otherwise ``DataNotFoundError``, saying how to provide the data.

To get the files: ``python -m hessjax.data.fetch mnist cifar10 cifar100 --dir DIR`` (or
:func:`fetch`) downloads the publishers' files into ``DIR`` in the layout ``load`` reads, checking
their MD5s (see :mod:`hessjax.data._fetch`). ``load`` itself verifies no checksums (it also reads
files rebuilt from other copies). CIFAR files are unpickled: only read files you trust.
"""

from __future__ import annotations

import functools
import gzip
import io
import os
import pathlib
import pickle
import tarfile

import jax
import jax.numpy as jnp
import numpy as np

from hessjax.data._fetch import FETCHABLE, FetchError, fetch

__all__ = [
    "CIFAR100_MEAN",
    "CIFAR100_STD",
    "DATASETS",
    "ENV_VAR",
    "FETCHABLE",
    "MNIST_MEAN",
    "MNIST_STD",
    "SPLITS",
    "DataNotFoundError",
    "FetchError",
    "augment_cifar",
    "fetch",
    "image_shape",
    "input_range",
    "load",
    "num_classes",
    "synthetic",
]

DATASETS = ("mnist", "cifar10", "cifar100", "synthetic")
SPLITS = ("train", "test")
ENV_VAR = "HESSJAX_DATA_DIR"

MNIST_MEAN, MNIST_STD = 0.1307, 0.3081
CIFAR100_MEAN = np.array([0.5071, 0.4865, 0.4409], np.float32)
CIFAR100_STD = np.array([0.2673, 0.2564, 0.2762], np.float32)

_SHAPES = {
    "mnist": (28, 28, 1),
    "cifar10": (32, 32, 3),
    "cifar100": (32, 32, 3),
    "synthetic": (8, 8, 1),
}
_CLASSES = {"mnist": 10, "cifar10": 10, "cifar100": 100, "synthetic": 10}
_SYNTHETIC_SIZES = {"train": 2048, "test": 512}
_SYNTHETIC_SEEDS = {"train": 0, "test": 1}

_MNIST_FILES = {
    "train": ("train-images-idx3-ubyte", "train-labels-idx1-ubyte"),
    "test": ("t10k-images-idx3-ubyte", "t10k-labels-idx1-ubyte"),
}
# Per name: (folder in the tar.gz, tar.gz name, sub-folders of root searched, files per split,
# label key).
_CIFAR = {
    "cifar10": (
        "cifar-10-batches-py",
        "cifar-10-python.tar.gz",
        ("", "cifar10"),
        {"train": tuple(f"data_batch_{i}" for i in range(1, 6)), "test": ("test_batch",)},
        "labels",
    ),
    "cifar100": (
        "cifar-100-python",
        "cifar-100-python.tar.gz",
        ("", "cifar100", "cifar100-subset"),
        {"train": ("train",), "test": ("test",)},
        "fine_labels",
    ),
}
_MNIST_DIRS = ("mnist", "MNIST/raw", "")


class DataNotFoundError(FileNotFoundError):
    """No local files and no usable ``tensorflow_datasets`` for the requested data set."""


# ----------------------------------------------------------------------------- metadata


def _check(name: str, split: str | None = None) -> None:
    if name not in DATASETS:
        raise ValueError(f"unknown data set {name!r}; valid names: {', '.join(DATASETS)}")
    if split is not None and split not in SPLITS:
        raise ValueError(f"unknown split {split!r}; valid splits: {', '.join(SPLITS)}")


def num_classes(name: str) -> int:
    """Number of classes: 10 (mnist, cifar10, synthetic) or 100 (cifar100)."""
    _check(name)
    return _CLASSES[name]


def image_shape(name: str) -> tuple[int, int, int]:
    """Per-sample ``(H, W, C)`` of ``load(name, ...)`` (synthetic: the default shape)."""
    _check(name)
    return _SHAPES[name]


def input_range(name: str) -> tuple[float, float]:
    """Valid input range ``(lo, hi)`` in the units the model sees; attacks clip to it.

    mnist: ``(-0.1307/0.3081, (1-0.1307)/0.3081)``; cifar10: ``(0, 1)``; cifar100: the min of
    ``-mean_c/std_c`` and the max of ``(1-mean_c)/std_c`` over channels (a scalar box that contains
    every channel's range); synthetic: unbounded ``(-inf, inf)``.
    """
    _check(name)
    if name == "mnist":
        return (0.0 - MNIST_MEAN) / MNIST_STD, (1.0 - MNIST_MEAN) / MNIST_STD
    if name == "cifar10":
        return 0.0, 1.0
    if name == "cifar100":
        mean, std = CIFAR100_MEAN.astype(np.float64), CIFAR100_STD.astype(np.float64)
        return float(np.min(-mean / std)), float(np.max((1.0 - mean) / std))
    return -np.inf, np.inf


def _preprocess(name: str, pixels: np.ndarray) -> np.ndarray:
    """uint8 NHWC pixels -> float32 model inputs (formulas in the module docstring)."""
    x = pixels.astype(np.float32)  # in-place below: CIFAR-10 train is 600 MB as float32
    x /= np.float32(255.0)
    if name == "mnist":
        x -= np.float32(MNIST_MEAN)
        x /= np.float32(MNIST_STD)
    elif name == "cifar100":
        x -= CIFAR100_MEAN
        x /= CIFAR100_STD
    return x


# ----------------------------------------------------------------------------- synthetic


def synthetic(
    num_samples: int,
    image_shape: tuple[int, ...] = (8, 8, 1),
    num_classes: int = 10,
    seed: int = 0,
    *,
    noise: float = 1.0,
) -> tuple[np.ndarray, np.ndarray]:
    """A small learnable data set: ``x = mu[y] + noise * N(0, I)``.

    Returns ``x`` float32 ``(num_samples, *image_shape)`` and ``y`` int32 ``(num_samples,)`` with
    balanced, shuffled labels. The class means ``mu ~ N(0, I)`` depend only on ``image_shape`` and
    ``num_classes`` (not on ``seed``), so sets drawn with different seeds share one distribution.
    """
    if num_samples < 0 or num_classes < 1:
        raise ValueError("need num_samples >= 0 and num_classes >= 1")
    shape = tuple(int(d) for d in image_shape)
    means = np.random.default_rng([len(shape), *shape, num_classes]).standard_normal(
        (num_classes, *shape)
    )
    rng = np.random.default_rng(seed)
    y = rng.permutation(np.arange(num_samples) % num_classes).astype(np.int32)
    x = means[y] + noise * rng.standard_normal((num_samples, *shape))
    return x.astype(np.float32), y


# ----------------------------------------------------------------------------- file parsing


def _read_bytes(path: pathlib.Path) -> bytes:
    try:
        if path.suffix == ".gz":
            with gzip.open(path, "rb") as f:
                return f.read()
        return path.read_bytes()
    except (OSError, EOFError) as e:  # gzip.BadGzipFile is an OSError
        raise ValueError(f"cannot read {path}: {e}") from e


def _parse_idx(path: pathlib.Path, magic: int) -> np.ndarray:
    """IDX file (big-endian int32 magic, then ndim int32 sizes, then uint8 data) -> array."""
    buf = _read_bytes(path)
    ndim = magic & 0xFF
    header = 4 * (1 + ndim)
    if len(buf) < header:
        raise ValueError(f"corrupt IDX file {path}: {len(buf)} bytes, shorter than its header")
    found, *dims = (int(v) for v in np.frombuffer(buf, ">i4", 1 + ndim))
    if found != magic:
        raise ValueError(f"corrupt IDX file {path}: magic {found:#x}, expected {magic:#x}")
    if len(buf) - header != int(np.prod(dims)):
        raise ValueError(
            f"corrupt IDX file {path}: header says {dims} ({int(np.prod(dims))} "
            f"bytes of data) but {len(buf) - header} bytes follow"
        )
    return np.frombuffer(buf, np.uint8, offset=header).reshape(dims)


def _find_idx(folder: pathlib.Path, stem: str) -> pathlib.Path | None:
    for candidate in (folder / f"{stem}.gz", folder / stem):
        if candidate.is_file():
            return candidate
    return None


def _mnist_local(root: pathlib.Path, split: str, searched: list[str]):
    img_stem, lbl_stem = _MNIST_FILES[split]
    for sub in _MNIST_DIRS:
        folder = root / sub
        searched.append(f"{folder}/{{{img_stem},{lbl_stem}}}[.gz]")
        img_path, lbl_path = _find_idx(folder, img_stem), _find_idx(folder, lbl_stem)
        if img_path and lbl_path:
            images = _parse_idx(img_path, 0x803)
            labels = _parse_idx(lbl_path, 0x801)
            if images.shape[0] != labels.shape[0]:
                raise ValueError(
                    f"{img_path} has {images.shape[0]} images but {lbl_path} has "
                    f"{labels.shape[0]} labels"
                )
            return images[..., None], labels
    return None


def _unpickle_cifar(where: str, blob: bytes, label_key: str):
    d = pickle.load(io.BytesIO(blob), encoding="bytes")
    get = lambda k: d[k.encode()] if k.encode() in d else d[k]
    try:
        data, labels = np.asarray(get("data"), np.uint8), np.asarray(get(label_key), np.int64)
    except KeyError as e:
        raise ValueError(f"{where}: CIFAR pickle lacks key {e}") from e
    if data.ndim != 2 or data.shape[1] != 3 * 32 * 32 or len(labels) != len(data):
        raise ValueError(
            f"{where}: data {data.shape} / labels {labels.shape}, expected (N, 3072) / (N,)"
        )
    return data.reshape(-1, 3, 32, 32).transpose(0, 2, 3, 1), labels


def _tar_reader(path: pathlib.Path, folder: str, files: tuple[str, ...]):
    """Read ``folder/f`` for every f in ``files`` from a tar.gz; None if any is missing."""
    try:
        with tarfile.open(path, "r:*") as tar:
            found = {}
            for member in tar:  # one sequential pass through the gzip stream
                parts = pathlib.PurePosixPath(member.name).parts
                if (
                    member.isfile()
                    and len(parts) >= 2
                    and parts[-2] == folder
                    and parts[-1] in files
                ):
                    found[parts[-1]] = tar.extractfile(member).read()
    except (tarfile.TarError, OSError, EOFError) as e:
        raise ValueError(f"cannot read {path}: {e}") from e
    return found if len(found) == len(files) else None


def _cifar_local(name: str, root: pathlib.Path, split: str, limit: int | None, searched: list[str]):
    folder, tar_name, subdirs, split_files, label_key = _CIFAR[name]
    files = split_files[split]
    read = None  # file name -> (description, pickle bytes)
    for sub in subdirs:
        directory, archive = root / sub / folder, root / sub / tar_name
        searched += [f"{directory}/{{{','.join(files)}}}", str(archive)]
        if all((directory / f).is_file() for f in files):
            read = lambda f, d=directory: (str(d / f), (d / f).read_bytes())
            break
        contents = _tar_reader(archive, folder, files) if archive.is_file() else None
        if contents is not None:
            read = lambda f, a=archive, c=contents: (f"{a}:{f}", c[f])
            break
    if read is None:
        return None
    xs, ys = [], []
    for f in files:
        x, y = _unpickle_cifar(*read(f), label_key)
        xs.append(x)
        ys.append(y)
        if limit is not None and sum(map(len, xs)) >= limit:  # skip batches past the limit
            break
    return np.concatenate(xs), np.concatenate(ys)


# ----------------------------------------------------------------------------- tfds


def _import_tfds():
    try:
        import tensorflow_datasets as tfds
    except ImportError:
        return None
    return tfds


def _tfds_load(tfds, name: str, split: str, limit: int | None):
    """``tfds.load`` in chunks of 10,000 (``batch_size=-1`` aborts the process when the split
    sizes are unknown, e.g. under ``tfds.testing.mock_data``)."""
    ds = tfds.load(name, split=f"{split}[:{limit}]" if limit else split)
    chunks = list(tfds.as_numpy(ds.batch(10_000)))
    if not chunks:
        return np.zeros((0, *_SHAPES[name]), np.uint8), np.zeros((0,), np.int64)
    return (
        np.concatenate([c["image"] for c in chunks]),
        np.concatenate([c["label"] for c in chunks]),
    )


# ----------------------------------------------------------------------------- load


def _expected_files(name: str) -> str:
    if name == "mnist":
        stems = [s for pair in _MNIST_FILES.values() for s in pair]
        return (
            f"{', '.join(s + '.gz' for s in stems)} (or uncompressed) in <dir>/mnist/, "
            "<dir>/MNIST/raw/ or <dir>/"
        )
    folder, tar_name, subdirs, split_files, _ = _CIFAR[name]
    files = ", ".join(f for fs in split_files.values() for f in fs)
    places = ", ".join(f"<dir>/{s + '/' if s else ''}" for s in subdirs)
    return f"{folder}/ (holding {files}) or {tar_name}, in {places}"


def _not_found(name: str, split: str, searched: list[str], why: str) -> DataNotFoundError:
    lines = [f"{name} ({split}) not found: {why}."]
    if searched:
        lines += ["Searched:", *(f"  {p}" for p in searched)]
    lines += [
        "Fix, one of:",
        f"  1. `python -m hessjax.data.fetch {name} --dir DIR` (downloads the publishers' files, "
        f"MD5-checked), then set {ENV_VAR}=DIR (or pass data_dir=DIR);",
        f"  2. set {ENV_VAR} (or pass data_dir=) to a folder already holding the publishers' "
        f"files: {_expected_files(name)};",
        "  3. `pip install hessjax[tfds]` on a machine with internet, so tensorflow_datasets can "
        "download it.",
    ]
    return DataNotFoundError("\n".join(lines))


def load(
    name: str, split: str, data_dir: str | os.PathLike | None = None, *, limit: int | None = None
) -> tuple[np.ndarray, np.ndarray]:
    """Load ``name`` in {mnist, cifar10, cifar100, synthetic}, ``split`` in {train, test}.

    Returns ``x`` float32 ``(N, H, W, C)`` preprocessed as in the module docstring and ``y`` int32
    ``(N,)``; ``limit`` keeps the first ``limit`` samples. Local files under ``data_dir`` (else
    ``$HESSJAX_DATA_DIR``) come first, then ``tensorflow_datasets``; raises ``DataNotFoundError``
    when neither has the data or when the folder named does not exist (no download is tried),
    ``ValueError`` for an unknown name/split or a corrupt file.
    synthetic: ``synthetic(2048 | 512, seed=0 | 1)`` for train | test; ``data_dir`` is ignored.
    """
    _check(name, split)
    if limit is not None and limit < 0:
        raise ValueError(f"limit must be >= 0, got {limit}")
    if name == "synthetic":
        x, y = synthetic(_SYNTHETIC_SIZES[split], seed=_SYNTHETIC_SEEDS[split])
        return x[:limit], y[:limit]

    explicit = data_dir is not None
    root = data_dir if explicit else (os.environ.get(ENV_VAR) or None)
    searched: list[str] = []
    found = None
    if root is not None:
        root = pathlib.Path(root).expanduser()
        source = "data_dir" if explicit else f"${ENV_VAR}"
        if not root.is_dir():  # a typo, not a request to download: fail before any fallback
            raise _not_found(name, split, [], f"{source} {root} is not a directory")
        if name == "mnist":
            found = _mnist_local(root, split, searched)
        else:
            found = _cifar_local(name, root, split, limit, searched)
        if found is None and explicit:
            raise _not_found(name, split, searched, f"no files for it in data_dir {root}")

    if found is None:
        tfds = _import_tfds()
        if tfds is None:
            why = "no local files" if searched else f"{ENV_VAR} is unset"
            raise _not_found(
                name, split, searched, f"{why} and tensorflow_datasets is not installed"
            )
        try:
            found = _tfds_load(tfds, name, split, limit)
        except Exception as e:  # e.g. no internet for the download
            raise _not_found(
                name, split, searched, f"tensorflow_datasets failed ({type(e).__name__}: {e})"
            ) from e

    pixels, labels = found
    return _preprocess(name, pixels[:limit]), labels[:limit].astype(np.int32)


# ----------------------------------------------------------------------------- augmentation


def _augment_one(key: jax.Array, img: jax.Array, pad: int, pad_value: jax.Array) -> jax.Array:
    h, w, c = img.shape
    k_crop, k_flip = jax.random.split(key)
    canvas = jnp.broadcast_to(pad_value, (h + 2 * pad, w + 2 * pad, c))
    canvas = canvas.at[pad : pad + h, pad : pad + w].set(img)
    dy, dx = jax.random.randint(k_crop, (2,), 0, 2 * pad + 1)
    out = jax.lax.dynamic_slice(canvas, (dy, dx, 0), (h, w, c))
    return jnp.where(jax.random.bernoulli(k_flip), out[:, ::-1], out)


@functools.partial(jax.jit, static_argnames="pad")
def augment_cifar(
    key: jax.Array, x: jax.Array, *, pad: int = 4, pad_value: float | jax.Array = 0.0
) -> jax.Array:
    """Random crop + horizontal flip of each image of ``x`` ``(N, H, W, C)``; same shape out.

    Per image (independent keys from ``jax.random.split(key, N)``): pad ``pad`` pixels of
    ``pad_value`` (scalar or ``(C,)``) on each side, take the ``H x W`` window at offsets
    ``dy, dx ~ U{0..2*pad}``, then mirror left-right with probability 1/2. Deterministic in
    ``key``; jitted. ``pad_value=0`` pads with the mean colour of normalised data; torchvision's
    ``RandomCrop(32, padding=4)`` before ``Normalize`` pads black, i.e. ``-CIFAR100_MEAN /
    CIFAR100_STD``.
    """
    pad_value = jnp.asarray(pad_value, x.dtype)
    keys = jax.random.split(key, x.shape[0])
    return jax.vmap(_augment_one, in_axes=(0, 0, None, None))(keys, x, pad, pad_value)
