"""hessjax.data: real files, file layouts built in tmp_path, tfds mock, errors, augmentation."""

import gzip
import os
import pathlib
import pickle
import shutil
import struct
import subprocess
import sys
import tarfile

import jax
import numpy as np
import pytest

from hessjax import data

# ----------------------------------------------------------------------------- helpers


def _channel_stats(x):
    """Per-channel mean and std of NHWC x, accumulated in float64."""
    mean = x.mean(axis=(0, 1, 2), dtype=np.float64)
    var = np.square(x - mean.astype(np.float32)).mean(axis=(0, 1, 2), dtype=np.float64)
    return mean, np.sqrt(var)


def _write_idx(path, array, magic, compress):
    header = struct.pack(">" + "i" * (1 + array.ndim), magic, *array.shape)
    payload = header + array.astype(np.uint8).tobytes()
    if compress:
        with gzip.open(path, "wb") as f:
            f.write(payload)
    else:
        path.write_bytes(payload)


def _write_cifar_pickle(path, pixels_nhwc, labels, label_key):
    planes = pixels_nhwc.transpose(0, 3, 1, 2).reshape(len(pixels_nhwc), -1)  # R, G, B planes
    with open(path, "wb") as f:
        pickle.dump({b"data": planes, label_key: list(map(int, labels))}, f)


def _random_pixels(rng, n, shape):
    return rng.integers(0, 256, (n, *shape), dtype=np.uint8)


# ----------------------------------------------------------------------------- real files


def test_mnist_real(data_dir):
    x, y = data.load("mnist", "train", data_dir)
    assert x.shape == (60000, 28, 28, 1) and x.dtype == np.float32 and y.dtype == np.int32
    raw = x.astype(np.float64) * data.MNIST_STD + data.MNIST_MEAN
    assert abs(raw.mean() - 0.1307) < 1e-3 and abs(raw.std() - 0.3081) < 1e-3
    assert abs(x.mean(dtype=np.float64)) < 1e-3 and abs(x.std(dtype=np.float64) - 1) < 1e-3
    assert set(np.unique(y)) == set(range(10))
    lo, hi = data.input_range("mnist")
    assert np.isclose(x.min(), lo) and np.isclose(x.max(), hi)
    xt, yt = data.load("mnist", "test", data_dir)
    assert xt.shape == (10000, 28, 28, 1) and yt.shape == (10000,)
    assert set(np.unique(yt)) == set(range(10))


@pytest.mark.slow
def test_cifar10_real(data_dir):
    x, y = data.load("cifar10", "train", data_dir)
    assert x.shape == (50000, 32, 32, 3) and x.dtype == np.float32 and y.shape == (50000,)
    assert x.min() == 0.0 and x.max() == 1.0
    mean, std = _channel_stats(x)
    np.testing.assert_allclose(mean, [0.4914, 0.4822, 0.4465], atol=1e-3)
    np.testing.assert_allclose(std, [0.2470, 0.2435, 0.2616], atol=1e-3)
    assert set(np.unique(y)) == set(range(10))
    del x
    xt, yt = data.load("cifar10", "test", data_dir, limit=None)
    assert xt.shape == (10000, 32, 32, 3) and yt.dtype == np.int32
    x5, y5 = data.load("cifar10", "test", data_dir, limit=5)
    np.testing.assert_array_equal(x5, xt[:5])
    np.testing.assert_array_equal(y5, yt[:5])


def test_cifar100_subset_real(data_dir):
    x, y = data.load("cifar100", "train", data_dir)
    xt, yt = data.load("cifar100", "test", data_dir)
    assert x.shape == (486, 32, 32, 3) and xt.shape == (916, 32, 32, 3)
    assert y.dtype == np.int32 and 0 <= min(y.min(), yt.min()) and max(y.max(), yt.max()) <= 99
    # Exactly (p/255 - mean_c)/std_c of the R, G, B planes, with fine labels.
    path = data_dir / "cifar100-subset" / "cifar-100-python" / "test"
    with open(path, "rb") as f:
        raw = pickle.load(f, encoding="bytes")
    pixels = raw[b"data"].reshape(-1, 3, 32, 32).transpose(0, 2, 3, 1) / np.float32(255)
    np.testing.assert_allclose(xt, (pixels - data.CIFAR100_MEAN) / data.CIFAR100_STD, atol=1e-6)
    np.testing.assert_array_equal(yt, raw[b"fine_labels"])
    mean, std = _channel_stats(xt)  # normalised: near 0 and 1 even on this subset
    assert np.all(np.abs(mean) < 0.05) and np.all(np.abs(std - 1) < 0.05)
    lo, hi = data.input_range("cifar100")
    assert lo <= xt.min() and xt.max() <= hi


def test_env_var_and_limit(data_dir, monkeypatch):
    monkeypatch.setenv(data.ENV_VAR, str(data_dir))
    x, y = data.load("cifar100", "test", limit=7)
    assert x.shape == (7, 32, 32, 3) and y.shape == (7,)


# ----------------------------------------------------------------------------- layouts in tmp_path


@pytest.mark.parametrize(
    "name, subdir, folder, tar_name, files, label_key",
    [
        (
            "cifar10",
            "cifar10",
            "cifar-10-batches-py",
            "cifar-10-python.tar.gz",
            {"train": [f"data_batch_{i}" for i in range(1, 6)], "test": ["test_batch"]},
            b"labels",
        ),
        (
            "cifar100",
            "",
            "cifar-100-python",
            "cifar-100-python.tar.gz",
            {"train": ["train"], "test": ["test"]},
            b"fine_labels",
        ),
    ],
)
def test_cifar_tar_gz(tmp_path, name, subdir, folder, tar_name, files, label_key):
    rng = np.random.default_rng(0)
    build = tmp_path / "build" / folder
    build.mkdir(parents=True)
    written = {}
    for split, names in files.items():
        parts = [(_random_pixels(rng, 2, (32, 32, 3)), rng.integers(0, 10, 2)) for _ in names]
        for fname, (pixels, labels) in zip(names, parts):
            _write_cifar_pickle(build / fname, pixels, labels, label_key)
        written[split] = tuple(np.concatenate(a) for a in zip(*parts))
    root = tmp_path / "root"
    (root / subdir).mkdir(parents=True)
    with tarfile.open(root / subdir / tar_name, "w:gz") as tar:
        tar.add(build, arcname=folder)
    shutil.rmtree(tmp_path / "build")
    for split, (pixels, labels) in written.items():
        x, y = data.load(name, split, root)
        expected = pixels / np.float32(255)
        if name == "cifar100":
            expected = (expected - data.CIFAR100_MEAN) / data.CIFAR100_STD
        assert x.shape == (len(labels), 32, 32, 3) and x.dtype == np.float32
        np.testing.assert_allclose(x, expected, atol=1e-6)
        np.testing.assert_array_equal(y, labels)
    x3, _ = data.load(name, "train", root, limit=3)  # crosses a batch boundary for CIFAR-10
    np.testing.assert_array_equal(x3, data.load(name, "train", root)[0][:3])


@pytest.mark.parametrize("compress", [False, True])
@pytest.mark.parametrize("subdir", ["MNIST/raw", "mnist", ""])
def test_mnist_idx_layouts(tmp_path, compress, subdir):
    rng = np.random.default_rng(1)
    folder = tmp_path / subdir
    folder.mkdir(parents=True, exist_ok=True)
    pixels, labels = _random_pixels(rng, 5, (28, 28)), rng.integers(0, 10, 5)
    suffix = ".gz" if compress else ""
    _write_idx(folder / f"t10k-images-idx3-ubyte{suffix}", pixels, 0x803, compress)
    _write_idx(folder / f"t10k-labels-idx1-ubyte{suffix}", labels, 0x801, compress)
    x, y = data.load("mnist", "test", tmp_path)
    expected = (pixels[..., None] / np.float32(255) - np.float32(0.1307)) / np.float32(0.3081)
    assert x.shape == (5, 28, 28, 1) and x.dtype == np.float32 and y.dtype == np.int32
    np.testing.assert_allclose(x, expected, rtol=1e-6)
    np.testing.assert_array_equal(y, labels)
    with pytest.raises(data.DataNotFoundError, match="train-images-idx3-ubyte"):
        data.load("mnist", "train", tmp_path)  # only the test files were written


def test_corrupt_idx(tmp_path):
    pixels = np.zeros((3, 28, 28), np.uint8)
    _write_idx(tmp_path / "t10k-labels-idx1-ubyte", np.zeros(3), 0x801, False)
    _write_idx(tmp_path / "t10k-images-idx3-ubyte", pixels, 0x801, False)  # wrong magic
    with pytest.raises(ValueError, match="magic"):
        data.load("mnist", "test", tmp_path)
    _write_idx(tmp_path / "t10k-images-idx3-ubyte", pixels, 0x803, False)
    path = tmp_path / "t10k-images-idx3-ubyte"
    path.write_bytes(path.read_bytes()[:-10])  # truncated
    with pytest.raises(ValueError, match="bytes of data"):
        data.load("mnist", "test", tmp_path)
    path.unlink()
    (tmp_path / "t10k-images-idx3-ubyte.gz").write_bytes(b"not gzip at all")
    with pytest.raises(ValueError, match="cannot read"):
        data.load("mnist", "test", tmp_path)


# ----------------------------------------------------------------------------- tfds


@pytest.mark.slow
def test_tfds_mock():
    """The tfds path on tfds.testing.mock_data, for MNIST, CIFAR-10 and CIFAR-100. Run in a fresh
    process: importing TensorFlow into a test worker that has run many JAX tests can crash it."""
    pytest.importorskip("tensorflow_datasets")
    env = {k: v for k, v in os.environ.items() if k != data.ENV_VAR}
    repo = pathlib.Path(__file__).resolve().parents[1]
    env["PYTHONPATH"] = os.pathsep.join([str(repo), env.get("PYTHONPATH", "")])
    out = subprocess.run(
        [sys.executable, "-c", TFDS_MOCK_SCRIPT],
        env=env,
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert out.returncode == 0 and "TFDS_MOCK_OK" in out.stdout, out.stderr[-3000:]


TFDS_MOCK_SCRIPT = """
import numpy as np
import tensorflow_datasets as tfds
from hessjax import data

for name in ("mnist", "cifar10", "cifar100"):
    with tfds.testing.mock_data(num_examples=6):
        x, y = data.load(name, "train", None)
        raw = tfds.as_numpy(tfds.load(name, split="train").batch(6)).__iter__().__next__()
        x4, _ = data.load(name, "test", None, limit=4)  # the mock ignores "test[:4]"
    pixels = raw["image"] / np.float32(255)
    expected = {
        "mnist": (pixels - np.float32(0.1307)) / np.float32(0.3081),
        "cifar10": pixels,
        "cifar100": (pixels - data.CIFAR100_MEAN) / data.CIFAR100_STD,
    }[name]
    assert x.shape == (6, *data.image_shape(name)) and x.dtype == np.float32
    assert y.dtype == np.int32 and x4.shape == (4, *data.image_shape(name))
    np.testing.assert_allclose(x, expected, rtol=1e-6, atol=1e-6)
    np.testing.assert_array_equal(y, raw["label"])
    lo, hi = data.input_range(name)
    assert lo - 1e-6 <= x.min() and x.max() <= hi + 1e-6
    if name == "mnist":  # random uint8 mock pixels nearly span the normalised range
        assert x.min() < lo + 0.1 and x.max() > hi - 0.1
print("TFDS_MOCK_OK")
"""


# ----------------------------------------------------------------------------- errors


def _no_tfds(monkeypatch):
    monkeypatch.setitem(sys.modules, "tensorflow_datasets", None)  # import now fails


def test_missing_explicit_dir(tmp_path, monkeypatch):
    _no_tfds(monkeypatch)
    with pytest.raises(data.DataNotFoundError) as info:
        data.load("cifar10", "train", tmp_path)
    msg = str(info.value)
    assert isinstance(info.value, FileNotFoundError)
    assert "HESSJAX_DATA_DIR" in msg and "hessjax[tfds]" in msg and "data_batch_1" in msg
    assert str(tmp_path / "cifar10" / "cifar-10-python.tar.gz") in msg  # the paths searched
    with pytest.raises(data.DataNotFoundError, match="not a directory"):
        data.load("mnist", "train", tmp_path / "nowhere")
    # A $HESSJAX_DATA_DIR that does not exist is a typo: no tfds download is attempted.
    monkeypatch.setenv(data.ENV_VAR, str(tmp_path / "typo"))
    monkeypatch.setattr(data, "_import_tfds", lambda: pytest.fail("tfds tried"))
    with pytest.raises(
        data.DataNotFoundError, match=r"\$HESSJAX_DATA_DIR .*typo is not a directory"
    ):
        data.load("mnist", "train")


def test_missing_env_dir_and_no_tfds(tmp_path, monkeypatch):
    _no_tfds(monkeypatch)
    monkeypatch.setenv(data.ENV_VAR, str(tmp_path))
    with pytest.raises(data.DataNotFoundError) as info:
        data.load("mnist", "test")
    msg = str(info.value)
    assert "hessjax[tfds]" in msg and "t10k-images-idx3-ubyte.gz" in msg
    assert str(tmp_path / "MNIST" / "raw") in msg
    monkeypatch.delenv(data.ENV_VAR)
    with pytest.raises(data.DataNotFoundError, match="HESSJAX_DATA_DIR is unset") as info:
        data.load("cifar100", "test")
    assert "hessjax[tfds]" in str(info.value) and "cifar-100-python.tar.gz" in str(info.value)


def test_tfds_failure_is_data_not_found(monkeypatch):
    class FakeTfds:  # tfds that cannot download (no internet)
        @staticmethod
        def load(*args, **kwargs):
            raise ConnectionError("no route to host")

    monkeypatch.setitem(sys.modules, "tensorflow_datasets", FakeTfds)
    monkeypatch.delenv(data.ENV_VAR, raising=False)
    with pytest.raises(data.DataNotFoundError, match="ConnectionError: no route") as info:
        data.load("cifar10", "test")
    assert "HESSJAX_DATA_DIR" in str(info.value) and "hessjax[tfds]" in str(info.value)


def test_invalid_names():
    with pytest.raises(ValueError, match="mnist, cifar10, cifar100, synthetic"):
        data.load("imagenet", "train")
    with pytest.raises(ValueError, match="train, test"):
        data.load("mnist", "validation")
    with pytest.raises(ValueError, match="valid names"):
        data.num_classes("svhn")
    with pytest.raises(ValueError, match="valid names"):
        data.input_range("svhn")


def test_metadata():
    assert [data.num_classes(n) for n in data.DATASETS] == [10, 10, 100, 10]
    lo, hi = data.input_range("mnist")
    assert np.isclose(lo, -0.1307 / 0.3081) and np.isclose(hi, 0.8693 / 0.3081)
    assert data.input_range("cifar10") == (0.0, 1.0)
    lo, hi = data.input_range("cifar100")
    assert np.isclose(lo, min(-np.array([0.5071, 0.4865, 0.4409]) / [0.2673, 0.2564, 0.2762]))
    assert np.isclose(hi, max((1 - np.array([0.5071, 0.4865, 0.4409])) / [0.2673, 0.2564, 0.2762]))
    assert data.input_range("synthetic") == (-np.inf, np.inf)


# ----------------------------------------------------------------------------- synthetic


def test_synthetic():
    x, y = data.synthetic(300, image_shape=(4, 4, 2), num_classes=3, seed=5)
    assert x.shape == (300, 4, 4, 2) and x.dtype == np.float32 and y.dtype == np.int32
    np.testing.assert_array_equal(np.bincount(y), [100, 100, 100])
    x2, y2 = data.synthetic(300, image_shape=(4, 4, 2), num_classes=3, seed=5)
    np.testing.assert_array_equal(x, x2)
    np.testing.assert_array_equal(y, y2)
    # Learnable: nearest class mean of the train set classifies the (differently seeded) test set.
    xtr, ytr = data.load("synthetic", "train")
    xte, yte = data.load("synthetic", "test", limit=100)
    assert xtr.shape == (2048, 8, 8, 1) and xte.shape == (100, 8, 8, 1)
    assert not np.array_equal(xtr[:100], xte)
    means = np.stack([xtr[ytr == c].mean(0) for c in range(10)]).reshape(10, -1)
    dists = ((xte.reshape(100, 1, -1) - means) ** 2).sum(-1)
    assert (dists.argmin(1) == yte).mean() > 0.9


# ----------------------------------------------------------------------------- augmentation


def test_augment_shapes_and_determinism():
    x = np.random.default_rng(0).standard_normal((16, 32, 32, 3)).astype(np.float32)
    key = jax.random.key(0)
    a, b = data.augment_cifar(key, x), data.augment_cifar(key, x)
    assert a.shape == x.shape and a.dtype == x.dtype
    np.testing.assert_array_equal(a, b)
    assert not np.array_equal(a, data.augment_cifar(jax.random.key(1), x))


def test_augment_flip_only():
    img = np.arange(2 * 5 * 3, dtype=np.float32).reshape(2, 5, 3)
    x = np.stack([img, img[:, ::-1]] * 8)  # an image and its mirror, 8 times
    out = np.asarray(data.augment_cifar(jax.random.key(3), x, pad=0))
    flipped = [np.array_equal(o, xi[:, ::-1]) for o, xi in zip(out, x)]
    kept = [np.array_equal(o, xi) for o, xi in zip(out, x)]
    assert all(f or k for f, k in zip(flipped, kept))
    assert any(flipped) and any(kept)


def test_augment_crops_are_padded_windows():
    rng = np.random.default_rng(0)
    x = rng.uniform(1, 2, (8, 6, 6, 3)).astype(np.float32)  # nonzero, so padding is visible
    pad_value = np.array([-1.0, -2.0, -3.0], np.float32)
    out = np.asarray(data.augment_cifar(jax.random.key(7), x, pad=2, pad_value=pad_value))
    shifted = 0
    for o, xi in zip(out, x):
        canvas = np.broadcast_to(pad_value, (10, 10, 3)).copy()
        canvas[2:8, 2:8] = xi
        windows = [canvas[dy : dy + 6, dx : dx + 6] for dy in range(5) for dx in range(5)]
        assert any(np.array_equal(o, w) or np.array_equal(o, w[:, ::-1]) for w in windows)
        shifted += not (np.array_equal(o, xi) or np.array_equal(o, xi[:, ::-1]))
    assert shifted > 0
