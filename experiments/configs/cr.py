"""CR (ResNet-18) / CIFAR-100 batch-size sweep (docs/paper.md Table 2: accuracy, λ_max^θ, FGSM).

``--config=experiments/configs/cr.py:SCALE`` with SCALE in {paper (default), cpu, smoke}.

* paper: SGD momentum 0.9, lr 0.02 with x0.2 at epochs 30 and 60, 90 epochs (or train loss
  <= 0.001; docs/paper.md gives C1's recipe only, so CR reuses it: a [choice]), ghost BN over
  micro-batches of 128, random crop (pad 4) + flip, batch sizes 64..512, 3 seeds; Table 2 has no
  input-Hessian columns, so they are skipped (``input_hessian.enabled = False``); FGSM on every
  test sample.
* cpu: a functional run, not a reproduction: the bundled CIFAR-100 subset has 486 training
  images (``../shared/data``), far too few to train ResNet-18; 3 batch sizes 16..64, 4 epochs, the
  weight Hessian on 64 samples (top 3, tol 1e-2). With full CIFAR-100 (tfds or the publisher's
  files) raise ``train_limit``. ResNet-18 HVPs cost ~0.1 s per image on 2 CPU cores.
* smoke: 32 / 32 images, batch sizes 16 and 32, 1 epoch, Hessian on 16 samples, k=2.

Built from c1.py's paper config (the recipe, FGSM ε in the normalised units the model sees);
the data, model, batch sizes, HVP chunks and the measurements Table 2 has differ.
"""

from experiments.configs import c1, common, sweep_base

CPU = dict(
    batch_sizes=[16, 32, 64],
    micro_batch_size=16,
    num_seeds=1,
    num_epochs=4,
    lr_decay_epochs=[],
    eval_batch_size=256,
    hessian=dict(num_samples=64, batch_size=64, k=3, tol=1e-2, max_matvecs=20),
    input_hessian=dict(num_samples=256),
    landscape=dict(num_points=9, grid=5),
    track=dict(num_samples=64, tol=1e-2, max_matvecs=10),
)
# sweep_base.SMOKE at batch sizes 16 and 32, then smaller still: a ResNet-18 HVP is slow.
SMOKE = (
    sweep_base.SMOKE,
    dict(
        batch_sizes=[16, 32],
        micro_batch_size=16,
        train_limit=32,
        test_limit=32,
        eval_batch_size=32,
        hessian=dict(num_samples=16, batch_size=16, k=2, max_matvecs=6),
        input_hessian=dict(num_samples=16, batch_size=16),
        landscape=dict(num_points=3, grid=2, num_samples=16),
        track=dict(num_samples=16, max_matvecs=4),
    ),
)


def get_config(arg: str | None = None):
    c = common.derive(
        c1,
        "cr",
        arg,
        dataset="cifar100",
        model="cr",
        batch_sizes=[64, 128, 256, 512],
        augment=True,
        hessian=dict(batch_size=128),
        input_hessian=dict(enabled=False, batch_size=128),
        track=dict(num_samples=512),
    )
    return common.at_scale(c, cpu=CPU, smoke=SMOKE)
