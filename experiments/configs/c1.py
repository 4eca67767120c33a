"""C1 / CIFAR-10 batch-size sweep (PAPER.md Table 1; Figs. 1-4).

``--config=experiments/configs/c1.py:SCALE`` with SCALE in {paper (default), cpu, smoke}.

* paper: the authors' recipe: SGD momentum 0.9, lr 0.02, x0.2 at epochs 30 and 60, 90 epochs (or
  train loss <= 0.001), micro-batches of 128 ("ghost" BN), batch sizes 16..2048, 3 seeds; top-20
  eigenvalues of the Hessian of the whole train / test loss; input Hessian and FGSM on every sample.
* cpu: reduced to fit a 2-core CPU in about 30 minutes: 4,000 training and 1,000 test images,
  10 epochs with x0.2 at epochs 4 and 8, 5 batch sizes 16..256 (micro-batch 16 so every batch size
  divides), one seed; the weight Hessian on the first 256 samples of each split (top 5, tol 1e-2),
  input Hessian / FGSM on 500, λ_max during training on 128 samples every 2 epochs.
* smoke: 256 / 128 images, 2 batch sizes, 1 epoch, k=3.
"""

from experiments.configs import sweep_base


def get_config(arg: str | None = None):
    scale = sweep_base.check_scale(arg, "c1")
    c = sweep_base.sweep_config(
        "c1",
        scale,
        dataset="cifar10",
        model="c1",
        batch_sizes=[16, 32, 64, 128, 256, 512, 1024, 2048],
        lr=0.02,
        lr_decay_epochs=[30, 60],
        lr_decay_factor=0.2,
        num_epochs=90,
        fgsm_eps=[0.02, 0.01],  # CIFAR-10 in [0, 1] (PAPER.md [choice])
    )
    if scale == "cpu":
        c.train_limit, c.test_limit = 4000, 1000
        c.batch_sizes = [16, 32, 64, 128, 256]
        c.micro_batch_size = 16
        c.num_seeds = 1
        c.num_epochs = 10
        c.lr_decay_epochs = [4, 8]
        c.hessian.num_samples = 256
        c.hessian.batch_size = 256
        c.hessian.k = 5
        c.hessian.tol = 1e-2  # residual ≤ 1e-2·θ₁: Ritz values are far closer (~residual²/gap)
        c.input_hessian.num_samples = 500
        c.landscape.num_points = 15
        c.landscape.grid = 7
        c.track.every = 2
        c.track.num_samples = 128
        c.track.tol = 1e-2
    elif scale == "smoke":
        sweep_base.smoke(c)
    return c
