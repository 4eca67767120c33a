"""CR (ResNet-18) / CIFAR-100 batch-size sweep (PAPER.md Table 2: accuracy, λ_max^θ, FGSM).

``--config=experiments/configs/cr.py:SCALE`` with SCALE in {paper (default), cpu, smoke}.

* paper: SGD momentum 0.9, lr 0.02 with x0.2 at epochs 30 and 60, 90 epochs (or train loss
  <= 0.001; PAPER.md gives C1's recipe only, so CR reuses it: a [choice]), ghost BN over
  micro-batches of 128, random crop (pad 4) + flip, batch sizes 64..512, 3 seeds; Table 2 has no
  input-Hessian columns, so they are skipped (``input_hessian.enabled = False``); FGSM on every
  test sample.
* cpu: a functional run, not a reproduction: the bundled CIFAR-100 subset has 486 training
  images (``../shared/data``), far too few to train ResNet-18; 3 batch sizes 16..64, 4 epochs, the
  weight Hessian on 64 samples (top 3, tol 1e-2). With full CIFAR-100 (tfds or the publisher's
  files) raise ``train_limit``. ResNet-18 HVPs cost ~0.1 s per image on 2 CPU cores.
* smoke: 32 / 32 images, batch sizes 16 and 32, 1 epoch, Hessian on 16 samples, k=2.
"""

from experiments.configs import sweep_base


def get_config(arg: str | None = None):
    scale = sweep_base.check_scale(arg, "cr")
    c = sweep_base.sweep_config(
        "cr",
        scale,
        dataset="cifar100",
        model="cr",
        batch_sizes=[64, 128, 256, 512],
        lr=0.02,
        lr_decay_epochs=[30, 60],
        lr_decay_factor=0.2,
        num_epochs=90,
        fgsm_eps=[0.02, 0.01],  # in the normalised units the model sees (PAPER.md)
        hessian_batch_size=128,
        input_batch_size=128,
    )
    c.augment = True
    c.input_hessian.enabled = False
    c.track.num_samples = 512
    if scale == "cpu":
        c.batch_sizes = [16, 32, 64]
        c.micro_batch_size = 16
        c.num_seeds = 1
        c.num_epochs = 4
        c.lr_decay_epochs = []
        c.eval_batch_size = 256
        c.hessian.num_samples = 64
        c.hessian.batch_size = 64
        c.hessian.k = 3
        c.hessian.tol = 1e-2
        c.hessian.max_matvecs = 20
        c.input_hessian.num_samples = 256
        c.landscape.num_points = 9
        c.landscape.grid = 5
        c.track.num_samples = 64
        c.track.tol = 1e-2
        c.track.max_matvecs = 10
    elif scale == "smoke":
        sweep_base.smoke(c, batch_sizes=(16, 32))
        c.train_limit, c.test_limit = 32, 32
        c.eval_batch_size = 32
        c.hessian.num_samples = 16
        c.hessian.batch_size = 16
        c.hessian.k = 2
        c.hessian.max_matvecs = 6
        c.input_hessian.num_samples = 16
        c.input_hessian.batch_size = 16
        c.landscape.num_points = 3
        c.landscape.grid = 2
        c.landscape.num_samples = 16
        c.track.num_samples = 16
        c.track.max_matvecs = 4
    return c
