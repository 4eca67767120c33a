"""Shared skeleton of the batch-sweep configs (m1.py, c1.py; c2.py and cr.py derive from c1.py).

Each table's file states the paper's recipe and its ``cpu`` reduction; the fields every sweep has,
their defaults and the ``smoke`` reduction live here once (the scale check and the fields of every
study: common.py).
"""

from __future__ import annotations

import ml_collections
from ml_collections.config_dict import placeholder

from experiments.configs import common


def sweep_config(
    table: str,
    arg: str | None,
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
    """Paper-scale sweep config; the caller then applies its ``cpu`` changes or :data:`SMOKE`."""
    c = common.study_config(table, arg, dataset=dataset, model=model)
    c.batch_sizes = list(batch_sizes)
    # Ghost BN: a batch larger than micro_batch_size is accumulated from micro-batches of that
    # size (BN statistics per micro-batch); smaller batches are one micro-batch.
    c.micro_batch_size = micro_batch_size
    c.num_seeds = 3
    c.lr = lr
    c.momentum = 0.9
    # "step": lr × lr_decay_factor from each epoch in lr_decay_epochs (none listed: a constant
    # rate, as the :cpu equal-loss sweeps use); "constant": lr throughout, no decay epochs.
    c.schedule = "step"
    c.lr_decay_epochs = list(lr_decay_epochs)
    c.lr_decay_factor = lr_decay_factor
    c.num_epochs = num_epochs
    c.target_loss = 0.001  # stop once the full training loss is <= this (docs/paper.md)
    c.data_parallel = True  # split batches over all devices when there are several
    c.augment = False  # random crop (pad 4) + horizontal flip of every training micro-batch

    c.hessian = common.hessian(hessian_batch_size)

    c.input_hessian = ml_collections.ConfigDict()
    c.input_hessian.enabled = True  # False: skip ‖∇ₓJ‖ and λ_max^x (Table 2 has no such columns)
    c.input_hessian.num_samples = placeholder(
        int
    )  # also the FGSM evaluation set; None: the whole subset
    c.input_hessian.batch_size = input_batch_size

    c.fgsm_eps = list(fgsm_eps)  # eps1, eps2 in the units the model sees (docs/paper.md [choice])

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

    c.curvature = common.curvature()  # beyond the paper: per-layer blocks, GGN
    return c


#: A functional check in about a minute: 256 / 128 images (common.SMOKE_DATA), 2 batch sizes,
#: 1 epoch, every measurement on 32 samples (a CIFAR-net HVP costs ~0.05 s per image on 2 cores).
SMOKE = dict(
    batch_sizes=[32, 128],
    micro_batch_size=32,
    num_seeds=1,
    num_epochs=1,
    lr_decay_epochs=[],
    hessian=dict(num_samples=32, batch_size=32, k=3, tol=1e-2, max_matvecs=12),
    input_hessian=dict(num_samples=32, batch_size=32),
    landscape=dict(num_points=5, grid=3, num_samples=32),
    track=dict(num_samples=32, tol=1e-2, max_matvecs=6),
    curvature=common.SMOKE_CURVATURE,
)
