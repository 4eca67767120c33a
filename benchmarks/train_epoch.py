"""Whole training epochs of C1 (or M1) at the paper's scale: hessjax against the PyTorch twin.

The paper trains C1 on all 50,000 CIFAR-10 training images at batch 128 with SGD (lr 0.02,
momentum 0.9; docs/paper.md). This benchmark times ``--epochs`` such epochs, both sides from the
same initial weights on the same shuffled batches (``numpy.random.default_rng([seed, epoch])``,
the order ``hessjax.train.fit`` uses), with the data in host memory as numpy arrays:

* **hessjax**: ``hessjax.train.TrainStep`` at its backend default (host micro-batch loop on CPU,
  one compiled program elsewhere); each batch is moved to the device inside the step, as in
  ``fit``. Epoch 1 includes compilation.
* **PyTorch**: ``benchmarks.torch_models.TrainLoop`` (``model.train()``, ``torch.optim.SGD``) on
  ``--torch-device``; each batch is transposed to NCHW and copied to the device per step (what a
  ``DataLoader`` feeding a GPU does).

Reported per epoch: seconds, examples/s, the ratio hessjax / PyTorch of examples/s, and the mean
training loss of the epoch on both sides (same weights and batches: they agree to a few percent
while training is stable; a large gap means the two loops differ). Evaluation is not timed.

    python -m benchmarks.train_epoch                                 # C1, 50,000 images, 2 epochs
    python -m benchmarks.train_epoch --images 4096 --epochs 1        # a quick check on a CPU
"""

from __future__ import annotations

import time

import jax
import numpy as np

import hessjax
from benchmarks import common
from hessjax import loops, models, train


def parse_args(argv=None):
    p = common.argument_parser(__doc__)
    p.add_argument("--model", default="c1", choices=sorted(common.DATASETS))
    p.add_argument("--images", type=int, default=50_000, help="training images (paper: 50,000)")
    p.add_argument("--batch-size", type=int, default=128)
    p.add_argument("--micro-batch-size", type=int, default=None, help="default: the batch")
    p.add_argument("--epochs", type=int, default=2, help="epoch 1 includes compilation")
    p.add_argument("--lr", type=float, default=0.02, help="SGD learning rate (momentum 0.9)")
    common.add_run_args(p, "train_epoch", torch=True)
    return p.parse_args(argv)


def epoch_batches(num: int, batch: int, seed: int, epoch: int) -> list[np.ndarray]:
    """Index arrays of the full batches of one epoch, shuffled as ``hessjax.train.fit`` does."""
    perm = np.random.default_rng([seed, epoch]).permutation(num)
    return [np.sort(perm[s * batch : (s + 1) * batch]) for s in range(num // batch)]


def time_epoch(step_fn, x, y, batches, to_inputs, loss_of) -> tuple[float, float]:
    """Seconds of one epoch of ``step_fn(*to_inputs(x[idx], y[idx]))`` and the mean of its
    per-step losses ``loss_of(output)`` (device scalars, read once the epoch is waited for)."""
    start = time.perf_counter()
    losses = common.block([loss_of(step_fn(*to_inputs(x[idx], y[idx]))) for idx in batches])
    seconds = time.perf_counter() - start
    return seconds, float(np.mean([float(v) for v in losses]))


def main(argv=None):
    args = parse_args(argv)
    env = common.start(args, torch=True)
    from benchmarks import torch_models

    micro = args.micro_batch_size or args.batch_size
    if args.batch_size % micro:
        raise SystemExit(f"--batch-size {args.batch_size} is not a multiple of {micro}")
    dataset = common.DATASETS[args.model]
    x, y = hessjax.data.load(dataset, "train", data_dir=args.data_dir, limit=args.images)
    if len(y) < args.batch_size:
        raise SystemExit(f"{len(y)} images are fewer than one batch of {args.batch_size}")
    model = models.get(args.model)
    variables = models.init(model, jax.random.key(args.seed))
    tx = train.make_optimizer(args.lr, 0.9, "constant")
    jax_loop = common.JaxLoop(model, variables, tx, micro, args.seed, host_loops=None)
    torch_loop = torch_models.TrainLoop(args.model, variables, args.lr, micro)
    steps = len(y) // args.batch_size
    common.log(
        f"{args.model}: {args.epochs} epoch(s) of {steps} steps (batch {args.batch_size}, "
        f"micro-batch {micro}) on {len(y)} {dataset} images; hessjax host loops: "
        f"{loops.host_loops()}"
    )
    rows, epochs = [], []
    for epoch in range(args.epochs):
        batches = epoch_batches(len(y), args.batch_size, args.seed, epoch)
        js, jl = time_epoch(
            jax_loop, x, y, batches, lambda a, b: (a, b), lambda out: out[1]["loss"]
        )
        ts, tl = time_epoch(
            torch_loop,
            x,
            y,
            batches,
            lambda a, b: (torch_models.to_nchw(a), torch_models.labels(b)),
            lambda out: out[0],
        )
        n = steps * args.batch_size
        record = {
            "epoch": epoch + 1,
            "hessjax_seconds": js,
            "torch_seconds": ts,
            "hessjax_examples_per_s": n / js,
            "torch_examples_per_s": n / ts,
            "hessjax_over_torch_examples_per_s": ts / js,
            "hessjax_mean_loss": jl,
            "torch_mean_loss": tl,
        }
        epochs.append(record)
        common.log(record)
        rows.append(
            [
                epoch + 1 if epoch else "1 (hessjax incl. compile)",
                js,
                ts,
                n / js,
                n / ts,
                ts / js,
                jl,
                tl,
            ]
        )
    table = common.markdown_table(
        [
            "epoch",
            "hessjax s",
            "PyTorch s",
            "hessjax ex/s",
            "PyTorch ex/s",
            "hessjax / PyTorch ex/s",
            "hessjax mean loss",
            "PyTorch mean loss",
        ],
        rows,
    )
    md = "\n".join(
        [
            f"# Training epochs: {args.model.upper()} on {len(y)} {dataset} images, batch "
            f"{args.batch_size}",
            "",
            table,
            *common.footer(env, "benchmarks.train_epoch"),
        ]
    )
    common.finish(
        "benchmarks.train_epoch",
        args,
        env,
        md,
        {"steps_per_epoch": steps, "host_loops": loops.host_loops(), "epochs": epochs},
        load_at_end=True,
    )


if __name__ == "__main__":
    main()
