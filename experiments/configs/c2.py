"""C2 / CIFAR-10 batch-size sweep (PAPER.md Table 1, the C2 rows; C2 = the Carlini-Wagner net
with BatchNorm, valid convolutions).

``--config=experiments/configs/c2.py:SCALE`` with SCALE in {paper (default), cpu, smoke}.

* paper: C1's recipe (SGD momentum 0.9, lr 0.02, x0.2 at epochs 30 and 60, 90 epochs or train loss
  <= 0.001, ghost BN over micro-batches of 128), batch sizes 256..2048 (PAPER.md), 3 seeds.
* cpu: 4,000 / 1,000 images, 10 epochs (x0.2 at 4 and 8), batch sizes 32..512 (micro-batch 32),
  one seed; weight Hessian on 256 samples (top 5), input Hessian / FGSM on 500. Not run for the
  BUILD_NOTES reproductions (C1 and M1 are); expect about 30 minutes.
* smoke: 256 / 128 images, 2 batch sizes, 1 epoch, k=3.
"""

from experiments.configs import sweep_base


def get_config(arg: str | None = None):
    scale = sweep_base.check_scale(arg, "c2")
    c = sweep_base.sweep_config(
        "c2",
        scale,
        dataset="cifar10",
        model="c2",
        batch_sizes=[256, 512, 1024, 2048],
        lr=0.02,
        lr_decay_epochs=[30, 60],
        lr_decay_factor=0.2,
        num_epochs=90,
        fgsm_eps=[0.02, 0.01],
    )
    if scale == "cpu":
        c.train_limit, c.test_limit = 4000, 1000
        c.batch_sizes = [32, 64, 128, 256, 512]
        c.micro_batch_size = 32
        c.num_seeds = 1
        c.num_epochs = 10
        c.lr_decay_epochs = [4, 8]
        c.hessian.num_samples = 256
        c.hessian.batch_size = 256
        c.hessian.k = 5
        c.hessian.tol = 1e-2
        c.input_hessian.num_samples = 500
        c.landscape.num_points = 15
        c.landscape.grid = 7
        c.track.every = 2
        c.track.num_samples = 128
        c.track.tol = 1e-2
    elif scale == "smoke":
        sweep_base.smoke(c)
    return c
