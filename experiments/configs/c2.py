"""C2 / CIFAR-10 batch-size sweep (docs/paper.md Table 1, the C2 rows; C2 = the Carlini-Wagner
net with BatchNorm, valid convolutions).

``--config=experiments/configs/c2.py:SCALE`` with SCALE in {paper (default), cpu, smoke}.

* paper: C1's recipe (SGD momentum 0.9, lr 0.02, x0.2 at epochs 30 and 60, 90 epochs or train loss
  <= 0.001, ghost BN over micro-batches of 128), batch sizes 256..2048 (docs/paper.md), 3 seeds.
* cpu: c1.py's cpu scale (4,000 / 1,000 images, constant lr 0.02 until the training loss is
  <= 0.1, budget 40 epochs), batch sizes 32..512 (micro-batch 32), one seed; weight Hessian on
  256 samples (top 5), input Hessian / FGSM on 500.
* smoke: 256 / 128 images, 2 batch sizes, 1 epoch, k=3.

Built from c1.py's config: only the model, the batch sizes and the cpu micro-batch differ.
"""

from experiments.configs import c1, common, sweep_base

CPU = (c1.CPU, dict(batch_sizes=[32, 64, 128, 256, 512], micro_batch_size=32))


def get_config(arg: str | None = None):
    c = common.derive(c1, "c2", arg, model="c2", batch_sizes=[256, 512, 1024, 2048])
    return common.at_scale(c, cpu=CPU, smoke=sweep_base.SMOKE)
