"""M1 / MNIST batch-size sweep (PAPER.md Table 7; Figs. 1-4 for MNIST).

``--config=experiments/configs/m1.py:SCALE`` with SCALE in {paper (default), cpu, smoke}.

* paper: the authors' recipe on the full data sets: SGD lr 0.01, momentum 0.9, lr halved every 5
  epochs, 100 epochs (or train loss <= 0.001), batch sizes 64..2048, 3 seeds; top-20 eigenvalues of
  the Hessian of the whole train / test loss; input Hessian and FGSM on every sample.
* cpu: what fits a 2-core CPU in about 20 minutes: 5,000 training and 1,000 test images, 8 epochs
  with the lr halved every 2 (the schedule's shape kept), 5 batch sizes 32..512, one seed; the
  weight Hessian on the first 1,000 samples of each split (top 10), the input Hessian / FGSM on
  500, λ_max during training on 500.
* smoke: a functional check in well under a minute: 256 / 128 images, 2 batch sizes, 1 epoch, k=3.
"""

from experiments.configs import sweep_base


def get_config(arg: str | None = None):
    scale = sweep_base.check_scale(arg, "m1")
    c = sweep_base.sweep_config(
        "m1",
        scale,
        dataset="mnist",
        model="m1",
        batch_sizes=[64, 128, 256, 512, 1024, 2048],
        lr=0.01,
        lr_decay_epochs=list(range(5, 100, 5)),  # halved every 5 epochs
        lr_decay_factor=0.5,
        num_epochs=100,
        fgsm_eps=[0.2, 0.1],  # normalised MNIST units (PAPER.md [choice])
        hessian_batch_size=1000,
        input_batch_size=500,
    )
    # M1 has no BatchNorm: micro-batching only bounds memory.
    if scale == "cpu":
        c.train_limit, c.test_limit = 5000, 1000
        c.batch_sizes = [32, 64, 128, 256, 512]
        c.num_seeds = 1
        c.num_epochs = 8
        c.lr_decay_epochs = [2, 4, 6]
        c.hessian.num_samples = 1000
        c.hessian.k = 10
        c.input_hessian.num_samples = 500
        c.landscape.num_points = 21
        c.landscape.grid = 11
        c.track.num_samples = 500
    elif scale == "smoke":
        sweep_base.smoke(c)
    return c
