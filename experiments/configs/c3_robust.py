"""C3 / CIFAR-10 robust-training study (docs/paper.md Table 4; Figs. 5, 6, 10-12 for CIFAR-10).

``--config=experiments/configs/c3_robust.py:SCALE`` with SCALE in {paper (default), cpu, smoke}.

* paper: the original C3 (no BatchNorm) trained as M1 (SGD lr 0.01, momentum 0.9, lr halved every
  5 epochs) for 100 epochs, batch 128 [choice]; then 10 epochs of adversarial training per attack,
  lr 0.01, momentum 0.9, halved after 5 epochs [choice: the paper says "more epochs" and "halved
  after five"; the printed rate and epoch count were lost].
* cpu: 5,000 training images at batch 32 [choice: at batch 128 the BN-free C3 sat on the loss
  plateau at 2.30 for 5 of 12 epochs (39 steps each) and ended at 28% training accuracy; batch 32
  gives 4x the steps and leaves the plateau in 2 epochs], 15 epochs (lr halved at 5 and 10, as
  the paper's every 5), then 1 robust epoch (156 steps, as many as m1_robust:cpu's 2 epochs);
  attacks on 500 test images (CG capped at 10 as in training); "full" Hessian over 200 training
  images (top 20, <= 50 HVPs), sub-sampled b_H = 1, 128 (<= 30 HVPs); interpolation at 21 points
  on 500 images (the recorded run used 11, which misses alpha = 0 and 1). Sized so the 6
  models' analyses fit about an hour on 2 CPU cores (a C3 HVP on 500 images takes ~10 s there).
* smoke: m1_robust's: 256 / 128 images, 1 + 1 epochs, k = 2, b_H = 1 only.

ε [choice; lost in the paper]: L∞ ε∞ = 0.02 (docs/paper.md's CIFAR ε₁, inputs in [0, 1]); L2
ε₂ = 0.5 (the FGSM perturbation at ε∞ = 0.02 has L2 norm 1.1).

Built from m1_robust.py's paper config, smoke reduction included.
"""

import ml_collections

from experiments.configs import common, m1_robust

CPU = dict(
    train_limit=5000,
    test_limit=1000,
    batch_size=32,
    micro_batch_size=32,
    original=dict(num_epochs=15, lr_decay_epochs=[5, 10]),
    robust=dict(num_epochs=1, lr_decay_epochs=[]),
    evaluation=dict(num_samples=500, cg_iters=10),
    hessian=dict(
        num_samples=200,
        batch_size=200,
        tol=1e-3,
        max_matvecs=50,
        num_subsets=2,
        subsample_max_matvecs=30,
    ),
    # 21 points: step 0.1 on [-0.5, 1.5], so alpha = 0 and 1 are on the grid
    interpolation=dict(num_points=21, num_samples=500),
)


def get_config(arg: str | None = None) -> ml_collections.ConfigDict:
    c = common.derive(
        m1_robust,
        "c3_robust",
        arg,
        dataset="cifar10",
        model="c3",
        hessian=dict(batch_size=500),
        robust=dict(num_epochs=10, lr_decay_epochs=[5], eps_linf=0.02, eps_l2=0.5),
        evaluation=dict(eps_linf=0.02, eps_l2=0.5),
    )
    return common.at_scale(c, cpu=CPU, smoke=m1_robust.SMOKE)
