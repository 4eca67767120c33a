"""Shared skeleton of the batch-sweep configs (m1.py, c1.py, c2.py, cr.py).

Each table's file states the paper's recipe and its ``cpu`` reduction; the fields every sweep has,
their defaults, the ``smoke`` reduction and the scale check live here once.
"""

from __future__ import annotations

import ml_collections
from ml_collections.config_dict import placeholder

SCALES = ("paper", "cpu", "smoke")


def check_scale(arg: str | None, table: str) -> str:
    """The scale named by ``--config=...py:SCALE`` (default ``paper``); ValueError otherwise."""
    scale = arg or "paper"
    if scale not in SCALES:
        raise ValueError(f"unknown scale {scale!r} for {table}; choose one of {SCALES}")
    return scale


def sweep_config(
    table: str,
    scale: str,
    *,
    dataset: str,
    model: str,
    batch_sizes: list[int],
    lr: float,
    lr_decay_epochs: list[int],
    lr_decay_factor: float,
    num_epochs: int,
    fgsm_eps: list[float],
    micro_batch_size: int = 128,
    hessian_batch_size: int = 500,
    input_batch_size: int = 250,
) -> ml_collections.ConfigDict:
    """Paper-scale sweep config; the caller then applies its ``cpu`` changes or :func:`smoke`."""
    c = ml_collections.ConfigDict()
    c.name = f"{table}_{scale}"
    c.scale = scale
    c.dataset = dataset
    c.model = model
    c.data_dir = placeholder(str)  # None: $HESSJAX_DATA_DIR, then tensorflow_datasets
    c.train_limit = placeholder(int)  # None: the whole split
    c.test_limit = placeholder(int)
    c.batch_sizes = list(batch_sizes)
    # Ghost BN: a batch larger than micro_batch_size is accumulated from micro-batches of that
    # size (BN statistics per micro-batch); smaller batches are one micro-batch.
    c.micro_batch_size = micro_batch_size
    c.num_seeds = 3
    c.lr = lr
    c.momentum = 0.9
    c.schedule = "step"
    c.lr_decay_epochs = list(lr_decay_epochs)
    c.lr_decay_factor = lr_decay_factor
    c.num_epochs = num_epochs
    c.target_loss = 0.001  # stop once the full training loss is <= this (PAPER.md)
    c.data_parallel = True  # split batches over all devices when there are several
    c.augment = False  # random crop (pad 4) + horizontal flip of every training micro-batch
    c.eval_batch_size = 1000

    c.hessian = ml_collections.ConfigDict()
    c.hessian.num_samples = placeholder(int)  # None: the whole train (test) subset, as in the paper
    c.hessian.batch_size = hessian_batch_size  # samples per HVP evaluation (memory knob only)
    c.hessian.k = 20
    c.hessian.method = "lanczos"  # or "power" (the paper's deflated power iteration)
    c.hessian.tol = 1e-4
    c.hessian.max_matvecs = placeholder(int)  # None: hessjax.eigen.default_max_matvecs

    c.input_hessian = ml_collections.ConfigDict()
    c.input_hessian.enabled = True  # False: skip ‖∇ₓJ‖ and λ_max^x (Table 2 has no such columns)
    c.input_hessian.num_samples = placeholder(
        int
    )  # also the FGSM evaluation set; None: the whole subset
    c.input_hessian.batch_size = input_batch_size

    c.fgsm_eps = list(fgsm_eps)  # eps1, eps2 in the units the model sees (PAPER.md [choice])

    c.landscape = ml_collections.ConfigDict()
    c.landscape.t_min = -0.5
    c.landscape.t_max = 0.5
    c.landscape.num_points = 41  # Fig. 2: points along the top eigenvector
    c.landscape.grid = 21  # Fig. 3: grid x grid points on the plane of v1, v2
    c.landscape.num_samples = placeholder(
        int
    )  # samples for each landscape loss; None: hessian.num_samples

    # Fig. 4: λ_max of the weight Hessian and the full gradient norm after every `every` epochs
    # (0 disables), on the first `num_samples` training samples, Lanczos k=1 to `tol`.
    c.track = ml_collections.ConfigDict()
    c.track.every = 1
    c.track.num_samples = 2000
    c.track.tol = 1e-3
    c.track.max_matvecs = 40
    return c


def smoke(c: ml_collections.ConfigDict, batch_sizes=(32, 128)) -> ml_collections.ConfigDict:
    """A functional check in about a minute: 256 / 128 images, 2 batch sizes, 1 epoch, every
    measurement on 32 samples (a CIFAR-net HVP costs ~0.05 s per image on 2 CPU cores)."""
    c.train_limit, c.test_limit = 256, 128
    c.batch_sizes = list(batch_sizes)
    c.micro_batch_size = min(batch_sizes)
    c.num_seeds = 1
    c.num_epochs = 1
    c.lr_decay_epochs = []
    c.eval_batch_size = 128
    c.hessian.num_samples = 32
    c.hessian.batch_size = 32
    c.hessian.k = 3
    c.hessian.tol = 1e-2
    c.hessian.max_matvecs = 12
    c.input_hessian.num_samples = 32
    c.input_hessian.batch_size = 32
    c.landscape.num_points = 5
    c.landscape.grid = 3
    c.landscape.num_samples = 32
    c.track.num_samples = 32
    c.track.tol = 1e-2
    c.track.max_matvecs = 6
    return c
