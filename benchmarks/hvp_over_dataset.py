"""Hessian-vector products over a data set at a user's ``batch_size``: hessjax's default
operator against PyTorch double backward (what PyHessian runs), with the gradient as the unit.

For M1 (MNIST) and C1 (CIFAR-10) on the same ``--num-images`` real training images, same weights,
float32, BatchNorm in inference mode, at every ``--batch-sizes`` value ``B``:

* ``default``: ``hessjax.hessian_operator(loss_fn, params, (x, y), batch_size=B)`` as a user calls
  it: batches of at most ``B`` (on CPU at most ``hessjax.batching.CPU_SAMPLES_PER_DEVICE`` per
  device) and, within the memory budget, the cached linearisation;
* ``auto_conv_at_B``: the default operator of the same model built with
  ``conv_implementation="auto"`` (:mod:`hessjax.conv`: on CPU, strided convolutions as patches
  and one GEMM; on GPU/TPU the same as the default);
* ``plain_at_B``: the operator before "fast by default": batches of exactly ``B``, no cached
  linearisation (``linearize=False`` and the CPU cap lifted while it is built);
* ``jax_grad``: the gradient over the set at the default operator's batches
  (``batching.batch_mean`` of ``jax.grad``, walked as the operator walks its batches: host loops
  on CPU, one program on GPU/TPU), the unit of the default operator's cost;
  ``jax_grad_auto_conv`` the same with ``conv_implementation="auto"``;
* ``torch_hvp``: PyTorch double backward summed over chunks of ``B`` (weights ``n_b / N``);
  ``torch_grad`` likewise.

Every variant is timed once per round, in rotated order, over ``--repeats`` rounds; the reported
number is the median (paired ratios: median over rounds of the per-round ratio). Targets (issue 12):
``default`` no slower than ``torch_hvp`` at its best ``B`` for every ``B``, and
``default / jax_grad <= 1.7``.

    python -m benchmarks.hvp_over_dataset                       # m1,c1; B = 100,250,500,1000
    python -m benchmarks.hvp_over_dataset --models m1 --repeats 3 --batch-sizes 1000
"""

from __future__ import annotations

import jax
import numpy as np

import hessjax
from benchmarks import common
from hessjax import batching, loops, models, tree
from hessjax.evaluation import _batch_gradient

TARGET_GRAD_RATIO = 1.7


def parse_args(argv=None):
    p = common.argument_parser(__doc__)
    p.add_argument("--models", default="m1,c1", help="comma-separated: m1, c1")
    p.add_argument("--num-images", type=int, default=1000)
    p.add_argument("--batch-sizes", default="100,250,500,1000")
    p.add_argument("--repeats", type=int, default=5, help="timing rounds (median over rounds)")
    p.add_argument("--no-torch", action="store_true")
    common.add_run_args(p, "hvp_over_dataset", torch=True)
    return p.parse_args(argv)


def plain_operator(loss_fn, params, data, batch_size):
    """The operator as it was before the CPU cap and the default linearisation."""
    cap = batching.CPU_SAMPLES_PER_DEVICE
    batching.CPU_SAMPLES_PER_DEVICE = 1 << 30
    try:
        return hessjax.hessian_operator(
            loss_fn, params, data, batch_size=batch_size, linearize=False
        )
    finally:
        batching.CPU_SAMPLES_PER_DEVICE = cap


def gradient_over(loss_fn, params, data, batch_size):
    full, tail = batching.device_batches(data, batch_size)
    args = (hessjax._internal.as_partial(loss_fn), params)
    return lambda: batching.batch_mean(
        _batch_gradient,
        args,
        full,
        tail,
        batch_size=batch_size,
        tail_size=tree.leading_dim(tail),
        init=tree.zeros_like(params),
        host=loops.host_loops(),  # as the operator walks its batches (one program on GPU/TPU)
    )


def bench_model(name, args, sizes):
    model = models.get(name)
    variables = models.init(model, jax.random.key(args.seed))
    x, y = hessjax.data.load(
        common.DATASETS[name], "train", data_dir=args.data_dir, limit=args.num_images
    )
    loss_fn = hessjax.make_loss_fn(model.apply, variables)
    auto_model = models.get(name, conv_implementation="auto")
    auto_loss_fn = hessjax.make_loss_fn(auto_model.apply, variables)
    params = variables["params"]
    v = common.tree_random_normal(jax.random.key(args.seed + 1), params)
    fns, info, checks = {}, {}, {}
    for b in sizes:
        build, op = common.timed(
            lambda b=b: hessjax.hessian_operator(loss_fn, params, (x, y), batch_size=b)
        )
        plain = plain_operator(loss_fn, params, (x, y), b)
        auto_op = hessjax.hessian_operator(auto_loss_fn, params, (x, y), batch_size=b)
        fns[f"default@{b}"] = lambda op=op: op(v)
        fns[f"auto_conv@{b}"] = lambda auto_op=auto_op: auto_op(v)
        fns[f"plain@{b}"] = lambda plain=plain: plain(v)
        info[b] = {
            "default_batch": tree.leading_dim(op.full, axis=1),
            "linearized": op.is_linearized,
            "build_seconds_incl_compile": build,
        }
        checks[f"default_vs_plain@{b}"] = common.rel_diff(op(v), plain(v))
    chunk = info[sizes[0]]["default_batch"]
    fns["jax_grad"] = gradient_over(loss_fn, params, (x, y), chunk)
    fns["jax_grad_auto_conv"] = gradient_over(auto_loss_fn, params, (x, y), chunk)
    if not args.no_torch:
        from benchmarks import torch_models  # imports torch

        hv = fns[f"plain@{sizes[-1]}"]()
        for b in sizes:
            thvp, tgrad, as_params = torch_models.dataset_hvp_and_grad(name, variables, x, y, v, b)
            fns[f"torch_hvp@{b}"], fns[f"torch_grad@{b}"] = thvp, tgrad
            checks[f"torch_vs_jax@{b}"] = common.rel_diff(as_params(thvp()), hv)
    for fn in fns.values():
        common.block(fn())
    keys = list(fns)
    samples = {k: [] for k in keys}
    for r in range(args.repeats):
        for k in keys[r % len(keys) :] + keys[: r % len(keys)]:
            samples[k].append(common.per_call(fns[k], 1))
        common.log(f"{name}: round {r + 1}/{args.repeats}")
    med = {k: common.median(s) for k, s in samples.items()}
    paired = lambda a, b: float(np.median(np.asarray(samples[a]) / np.asarray(samples[b])))
    torch_best = (
        min((med[f"torch_hvp@{b}"] for b in sizes), default=None) if not args.no_torch else None
    )
    rows = []
    for b in sizes:
        row = {
            "batch_size": b,
            **info[b],
            "default_ms": 1e3 * med[f"default@{b}"],
            "auto_conv_ms": 1e3 * med[f"auto_conv@{b}"],
            "plain_ms": 1e3 * med[f"plain@{b}"],
            "default_over_grad": paired(f"default@{b}", "jax_grad"),
        }
        if torch_best is not None:
            row["torch_hvp_ms"] = 1e3 * med[f"torch_hvp@{b}"]
            row["torch_grad_ms"] = 1e3 * med[f"torch_grad@{b}"]
            row["default_over_torch_best"] = med[f"default@{b}"] / torch_best
        rows.append(row)
    return {
        "rows": rows,
        "jax_grad_ms": 1e3 * med["jax_grad"],
        "jax_grad_auto_conv_ms": 1e3 * med["jax_grad_auto_conv"],
        "checks": checks,
        "samples": samples,
    }


def main(argv=None):
    args = parse_args(argv)
    env = common.start(args, torch=not args.no_torch)
    sizes = [int(b) for b in args.batch_sizes.split(",")]
    results, lines = {}, []
    for name in common.model_names(args.models):
        r = results[name] = bench_model(name, args, sizes)
        headers = [
            "B",
            "default batch",
            "linearised",
            "default ms",
            "default, `auto` convs ms",
            "before (plain@B) ms",
            "default / grad",
        ]
        if not args.no_torch:
            headers += ["torch HVP ms", "torch grad ms", "default / torch best"]
        table = []
        for row in r["rows"]:
            cells = [
                row["batch_size"],
                row["default_batch"],
                row["linearized"],
                row["default_ms"],
                row["auto_conv_ms"],
                row["plain_ms"],
                row["default_over_grad"],
            ]
            if not args.no_torch:
                cells += [row["torch_hvp_ms"], row["torch_grad_ms"], row["default_over_torch_best"]]
            table.append(cells)
        lines += [
            f"### {name.upper()} on {args.num_images} images "
            f"(jax gradient over the set: {r['jax_grad_ms']:.0f} ms; "
            f"{r['jax_grad_auto_conv_ms']:.0f} ms with `conv_implementation=\"auto\"`)",
            "",
            common.markdown_table(headers, table),
            "",
        ]
    md = "\n".join(
        [
            f"# HVP over a data set (target: default / grad <= {TARGET_GRAD_RATIO})",
            "",
            *lines,
            *common.footer(env, "benchmarks.hvp_over_dataset"),
        ]
    )
    common.finish("benchmarks.hvp_over_dataset", args, env, md, results, load_at_end=True)


if __name__ == "__main__":
    main()
