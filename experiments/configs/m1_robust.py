"""M1 / MNIST robust-training study (docs/paper.md Table 3; Figs. 5, 6, 10-12 for MNIST).

``--config=experiments/configs/m1_robust.py:SCALE`` with SCALE in {paper (default), cpu, smoke}.

* paper: the original M1 as in docs/paper.md (SGD lr 0.01, momentum 0.9, lr halved every 5 epochs,
  100 epochs, batch 128 [choice: the paper does not give the batch size of this study]), then 5
  more epochs of adversarial training with each of FGSM, FGSM-10, GRAD, FHSM, HESS (lr 0.01,
  momentum 0.9 [choice: the printed rate was lost]); all test images attacked; top-20
  eigenvalues of the whole training-set Hessian and of sub-sampled Hessians with b_H = 1 and 128
  (3 random subsets).
* cpu: 10,000 training images, the original trained 20 epochs (lr halved every 5), 2 robust epochs
  per attack; clean accuracy on the 10,000 test images, attacks on the first 1,000; the "full"
  Hessian on the first 500 training images (top 20, Lanczos tol 1e-3, at most 60 HVPs),
  sub-sampled b_H = 1 and 128 (2 subsets, at most 40 HVPs each).
* smoke: 256 / 128 images, 1 + 1 epochs, k = 2, b_H = 1 only: a functional check.

ε [choice; the printed values were lost]: L∞ attacks (FGSM, FGSM-10, FHSM) ε∞ = 0.2 (docs/paper.md's
MNIST ε₁, normalised units), L2 attacks (GRAD, HESS) ε₂ = 4.0 (normalised units, ≈ 1.23 in
pixel units; the FGSM perturbation at ε∞ = 0.2 has L2 norm 5.6), for training and evaluation.

c3_robust.py derives from this file's paper config and uses its ``SMOKE`` reduction.
"""

import ml_collections
from ml_collections.config_dict import placeholder

from experiments.configs import common

ATTACKS = ["fgsm", "fgsm10", "l2_grad", "fhsm", "l2_hess"]

CPU = dict(
    train_limit=10000,
    original=dict(num_epochs=20, lr_decay_epochs=[5, 10, 15]),
    robust=dict(num_epochs=2),
    evaluation=dict(num_samples=1000),
    hessian=dict(
        num_samples=500, tol=1e-3, max_matvecs=60, num_subsets=2, subsample_max_matvecs=40
    ),
    interpolation=dict(num_points=21, num_samples=2000),
)
SMOKE = dict(
    batch_size=64,
    micro_batch_size=64,
    original=dict(num_epochs=1, lr_decay_epochs=[]),
    robust=dict(num_epochs=1, ifgsm_steps=3, cg_iters=3),
    evaluation=dict(num_samples=32, batch_size=32, cg_iters=3),
    hessian=dict(
        num_samples=128,
        batch_size=128,
        k=2,
        tol=1e-2,
        max_matvecs=6,
        subsample_sizes=[1],
        num_subsets=1,
        num_negative=1,
        subsample_tol=1e-2,
        subsample_max_matvecs=4,
    ),
    interpolation=dict(num_points=3, num_samples=64),
    curvature=common.SMOKE_CURVATURE,
)


def get_config(arg: str | None = None) -> ml_collections.ConfigDict:
    c = common.study_config(
        "m1_robust", arg, dataset="mnist", model="m1", seed=0, batch_size=128, micro_batch_size=128
    )
    # XLA's convolutions in training too: the sign attacks (FGSM) turn the patches kernels'
    # rounding, which depends on the per-device batch shape, into visibly different robust models
    # (lambda_max 4e-4 apart on 1 vs 4 devices in tests/test_study_devices_and_resume.py, against
    # < 1e-4 with XLA's). C3 and C1 have no strided convolutions, where "auto" is XLA's anyway.
    c.train_conv_implementation = "xla"

    c.original = ml_collections.ConfigDict()
    c.original.lr = 0.01
    c.original.momentum = 0.9
    c.original.lr_decay_epochs = list(range(5, 100, 5))  # halved every 5 epochs
    c.original.lr_decay_factor = 0.5
    c.original.num_epochs = 100

    c.robust = ml_collections.ConfigDict()
    c.robust.attacks = list(ATTACKS)
    c.robust.eps_linf = 0.2  # FGSM, FGSM-10, FHSM
    c.robust.eps_l2 = 4.0  # GRAD, HESS
    c.robust.fraction = 1.0  # adversarial share of every micro-batch (docs/paper.md: all)
    c.robust.lr = 0.01
    c.robust.momentum = 0.9
    c.robust.lr_decay_epochs = []
    c.robust.lr_decay_factor = 0.5
    c.robust.num_epochs = 5
    c.robust.ifgsm_steps = 10
    # FGSM-10's step α = ifgsm_step_factor·ε; None: ε/ifgsm_steps (docs/paper.md [choice])
    c.robust.ifgsm_step_factor = placeholder(float)
    c.robust.cg_iters = 10  # CG iterations of FHSM/HESS during training (rank <= c - 1 = 9)
    # CG stops at ‖g − Hp‖ ≤ cg_tol·‖g‖ (an inexact-Newton forcing term; 1e-6: the cap decides)
    c.robust.cg_tol = 1e-6

    c.evaluation = ml_collections.ConfigDict()
    c.evaluation.num_samples = placeholder(int)  # test samples attacked; None: the whole subset
    c.evaluation.batch_size = 500  # samples per attack call
    c.evaluation.eps_linf = 0.2
    c.evaluation.eps_l2 = 4.0
    c.evaluation.cg_iters = 20
    c.evaluation.cg_tol = 1e-6  # see robust.cg_tol; FGSM-10 uses robust.ifgsm_steps and
    c.evaluation.ifgsm_step_factor = placeholder(float)  # this step rule (None: ε/steps)

    c.hessian = common.hessian(1000)  # "full" Hessian over the whole training subset
    c.hessian.subsample_sizes = [1, 128]  # b_H (docs/paper.md [choice])
    c.hessian.num_subsets = 3  # random subsets per b_H
    c.hessian.num_negative = 3  # most negative eigenvalues reported at b_H = 1
    c.hessian.subsample_tol = 1e-3
    c.hessian.subsample_max_matvecs = placeholder(int)

    c.interpolation = ml_collections.ConfigDict()
    c.interpolation.alpha_min = -0.5  # docs/paper.md [choice]
    c.interpolation.alpha_max = 1.5
    c.interpolation.num_points = 41
    c.interpolation.num_samples = placeholder(int)  # per loss; None: the whole subsets

    c.curvature = common.curvature()  # beyond the paper: per-layer blocks and GGN of each model
    return common.at_scale(c, cpu=CPU, smoke=SMOKE)
