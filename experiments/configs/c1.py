"""C1 / CIFAR-10 batch-size sweep (PAPER.md Table 1; Figs. 1-3).

``--config=experiments/configs/c1.py:SCALE`` with SCALE in {paper (default), cpu, smoke}.

* paper: the authors' recipe: SGD momentum 0.9, lr 0.02, x0.2 at epochs 30 and 60, 90 epochs (or
  train loss <= 0.001), micro-batches of 128 ("ghost" BN), batch sizes 16..2048, 3 seeds; top-20
  eigenvalues of the Hessian of the whole train / test loss; input Hessian and FGSM on every sample.
* cpu: reduced to fit a 2-core CPU: 5,000 training and 1,000 test images, 12 epochs with x0.2 at
  epochs 4 and 8, 5 batch sizes 16..256 (micro-batch 16 so every batch size divides), one seed; the
  weight Hessian on the first 500 samples of each split (top 10), input Hessian / FGSM on 500.
* smoke: 256 / 128 images, 2 batch sizes, 1 epoch, k=3.
"""

import ml_collections

SCALES = ("paper", "cpu", "smoke")


def get_config(arg: str | None = None) -> ml_collections.ConfigDict:
    scale = arg or "paper"
    if scale not in SCALES:
        raise ValueError(f"unknown scale {scale!r} for c1; choose one of {SCALES}")
    c = ml_collections.ConfigDict()
    c.name = f"c1_{scale}"
    c.scale = scale
    c.dataset = "cifar10"
    c.model = "c1"
    c.data_dir = None  # None: $HESSJAX_DATA_DIR, then tensorflow_datasets
    c.train_limit = None  # None: the whole split
    c.test_limit = None
    c.batch_sizes = [16, 32, 64, 128, 256, 512, 1024, 2048]
    # Ghost BN: batches > 128 are accumulated from micro-batches of 128; smaller batches are one
    # micro-batch (effective micro-batch = min(batch, micro_batch_size)).
    c.micro_batch_size = 128
    c.num_seeds = 3
    c.lr = 0.02
    c.momentum = 0.9
    c.schedule = "step"
    c.lr_decay_epochs = [30, 60]
    c.lr_decay_factor = 0.2
    c.num_epochs = 90
    c.target_loss = 0.001
    c.eval_batch_size = 1000

    c.hessian = ml_collections.ConfigDict()
    c.hessian.num_samples = None  # None: the whole train (test) subset, as in the paper
    c.hessian.batch_size = 500  # samples per HVP evaluation (memory knob only)
    c.hessian.k = 20
    c.hessian.method = "lanczos"  # or "power" (the paper's deflated power iteration)
    c.hessian.tol = 1e-4
    c.hessian.max_matvecs = None  # None: hessjax.eigen.default_max_matvecs

    c.input_hessian = ml_collections.ConfigDict()
    c.input_hessian.num_samples = None  # also the FGSM evaluation set; None: the whole subset
    c.input_hessian.batch_size = 250

    c.fgsm_eps = [0.02, 0.01]  # eps1, eps2 for CIFAR-10 in [0, 1] (PAPER.md [choice])

    c.landscape = ml_collections.ConfigDict()
    c.landscape.t_min = -0.5
    c.landscape.t_max = 0.5
    c.landscape.num_points = 41
    c.landscape.grid = 21
    c.landscape.num_samples = None  # None: hessian.num_samples

    if scale == "cpu":
        c.train_limit, c.test_limit = 5000, 1000
        c.batch_sizes = [16, 32, 64, 128, 256]
        c.micro_batch_size = 16
        c.num_seeds = 1
        c.num_epochs = 12
        c.lr_decay_epochs = [4, 8]
        c.hessian.num_samples = 500
        c.hessian.k = 10
        c.input_hessian.num_samples = 500
        c.landscape.num_points = 21
        c.landscape.grid = 11
    elif scale == "smoke":
        c.train_limit, c.test_limit = 256, 128
        c.batch_sizes = [32, 128]
        c.micro_batch_size = 32
        c.num_seeds = 1
        c.num_epochs = 1
        c.lr_decay_epochs = []
        c.eval_batch_size = 128
        c.hessian.num_samples = 128
        c.hessian.batch_size = 128
        c.hessian.k = 3
        c.hessian.tol = 1e-2
        c.hessian.max_matvecs = 24
        c.input_hessian.num_samples = 64
        c.input_hessian.batch_size = 64
        c.landscape.num_points = 5
        c.landscape.grid = 3
        c.landscape.num_samples = 64
    return c
