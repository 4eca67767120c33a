"""Per-micro-batch agreement of C1's training gradient, hessjax vs the PyTorch twin.

Explains the batch-4,096 gradient difference in results/train_throughput.md: for each of the
first 32 micro-batches of 128 CIFAR-10 training images, one hessjax ``TrainStep`` and one PyTorch
step from the same random weights; prints the relative L2 difference of the mean gradient (the
momentum buffer after one step), then the same for the worst micro-batches with the pixels
perturbed by U(±noise), which breaks exact ties on flat image regions.

    python -m benchmarks.c1_gradient_agreement [--noise 1e-3]
"""

import argparse

import jax
import numpy as np

import hessjax
from benchmarks import common, torch_models
from hessjax import models, train


def gradient_difference(jax_loop, variables, tx, x, y):
    """Relative L2 difference of one step's mean gradient, PyTorch vs hessjax; ``jax_loop``'s
    compiled step is reused, its state reset to ``variables``."""
    jax_loop.state = train.init_state(variables, tx, 0)
    jax_loop(x, y)
    torch_loop = torch_models.TrainLoop("c1", variables, 0.01, len(y))
    torch_loop(torch_models.to_nchw(x), torch_models.labels(y))
    return common.rel_diff(
        torch_loop.momentum_buffers(),
        common.host_copy(common.momentum_trace(jax_loop.state.opt_state)),
    )


def main():
    p = argparse.ArgumentParser(description=__doc__)
    p.add_argument("--data-dir", default=common.DEFAULT_DATA_DIR)
    p.add_argument("--noise", type=float, default=1e-3)
    p.add_argument("--micro-batches", type=int, default=32)
    args = p.parse_args()
    m = 128
    x, y = hessjax.data.load(
        "cifar10", "train", data_dir=args.data_dir, limit=m * args.micro_batches
    )
    model = models.get("c1")
    variables = models.init(model, jax.random.key(0))
    tx = train.make_optimizer(0.01, 0.9, "constant")
    # one compilation for every micro-batch
    jax_loop = common.JaxLoop(model, variables, tx, m, 0, True)
    diffs = []
    for j in range(args.micro_batches):
        s = slice(j * m, (j + 1) * m)
        diffs.append(gradient_difference(jax_loop, variables, tx, x[s], y[s]))
        print(f"micro-batch {j}: {diffs[-1]:.2e}", flush=True)
    noisy = x + np.random.default_rng(0).uniform(-args.noise, args.noise, x.shape).astype(x.dtype)
    for j in np.argsort(diffs)[::-1][:5]:
        s = slice(j * m, (j + 1) * m)
        d = gradient_difference(jax_loop, variables, tx, noisy[s], y[s])
        print(f"micro-batch {j}: {diffs[j]:.2e} clean, {d:.2e} with U(±{args.noise:g}) pixels")


if __name__ == "__main__":
    main()
