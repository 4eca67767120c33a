"""What the curvature toolkit costs, on CPU, real data, float32, random initialisation.

1. A Gauss-Newton-vector product against a Hessian-vector product, per operator call on one batch
   of ``--batch-size`` images, for M1 (MNIST) and C1 (CIFAR-10): ``gauss_newton_operator(...)(v)``
   against ``hessian_operator(...)(v)``, each also ``.linearize()``d. Paired rounds (every
   variant timed in turn per round, ``--number`` calls averaged), median over ``--repeats``
   rounds of the per-round ratio GGN / HVP. Issue target: GGN-vp ≤ HVP time.
2. C1's per-layer analysis (``hessjax.layer_curvature``: every layer's block, Lanczos top-``k``
   to ``--tol`` and XTrace with ``--trace-matvecs``) against the same analysis of the whole
   Hessian (one Lanczos solve + one XTrace), on ``--layer-images`` images: wall time and matvecs.

    python -m benchmarks.curvature_cost
    python -m benchmarks.curvature_cost --models m1 --skip-layers
"""

from __future__ import annotations

import time

import jax
import numpy as np

import hessjax
from benchmarks import common
from hessjax import models


def parse_args(argv=None):
    p = common.argument_parser(__doc__)
    p.add_argument("--models", default="m1,c1")
    p.add_argument("--batch-size", type=int, default=128)
    p.add_argument("--repeats", type=int, default=7)
    p.add_argument("--number", type=int, default=2)
    p.add_argument("--layer-images", type=int, default=128)
    p.add_argument("--k", type=int, default=1)
    p.add_argument("--tol", type=float, default=1e-3)
    p.add_argument("--trace-matvecs", type=int, default=30)
    p.add_argument("--skip-layers", action="store_true")
    common.add_run_args(p, "curvature_cost")
    return p.parse_args(argv)


def setup(name, n, data_dir, seed):
    model = models.get(name)
    variables = models.init(model, jax.random.key(seed))
    x, y = hessjax.data.load(common.DATASETS[name], "train", data_dir=data_dir, limit=n)
    loss_fn = hessjax.make_loss_fn(model.apply, variables)
    return model, variables, loss_fn, (x, y)


def products(name, args):
    model, variables, loss_fn, data = setup(name, args.batch_size, args.data_dir, args.seed)
    params = variables["params"]
    hess = hessjax.hessian_operator(loss_fn, params, data, batch_size=args.batch_size)
    ggn = hessjax.gauss_newton_operator(model.apply, variables, data, batch_size=args.batch_size)
    ops = {"hvp": hess, "ggn": ggn, "hvp_linearized": hess.linearize(),
           "ggn_linearized": ggn.linearize()}  # fmt: skip
    v = common.tree_random_normal(jax.random.key(1), params)
    for op in ops.values():  # compile
        common.block(op(v))
    times = {k: [] for k in ops}
    for r in range(args.repeats):
        names = list(ops)[r % len(ops) :] + list(ops)[: r % len(ops)]
        for k in names:
            times[k].append(common.per_call(lambda k=k: ops[k](v), args.number))
    ratio = lambda a, b: float(np.median(np.array(times[a]) / np.array(times[b])))
    out = {
        "ms": {k: 1e3 * common.median(t) for k, t in times.items()},
        "ggn_over_hvp": ratio("ggn", "hvp"),
        "ggn_linearized_over_hvp_linearized": ratio("ggn_linearized", "hvp_linearized"),
        "ggn_linearized_over_hvp": ratio("ggn_linearized", "hvp"),
    }
    common.log(name, out)
    return out


def layer_cost(args):
    model, variables, loss_fn, data = setup("c1", args.layer_images, args.data_dir, args.seed)
    params = variables["params"]
    key = jax.random.key(0)
    bs = args.layer_images
    solve = dict(k=args.k, tol=args.tol)
    tic = time.perf_counter()
    op = hessjax.hessian_operator(loss_fn, params, data, batch_size=bs)
    eig = hessjax.eigenvalues(op, params, key=key, **solve)
    tr = hessjax.xtrace(op, params, num_matvecs=args.trace_matvecs, key=key)
    whole_s = time.perf_counter() - tic
    whole = {"seconds": whole_s, "matvecs": int(eig.num_matvecs) + int(tr.num_matvecs),
             "lambda_max": float(eig.values[0]), "trace": float(tr.value),
             "trace_error": float(tr.error)}  # fmt: skip
    common.log("whole model:", whole)
    tic = time.perf_counter()
    rows = hessjax.layer_curvature(
        loss_fn, params, data, batch_size=bs, key=key, trace_matvecs=args.trace_matvecs, **solve
    )
    layers_s = time.perf_counter() - tic
    per = {"seconds": layers_s, "matvecs": sum(r.num_matvecs for r in rows),
           "rows": [r.as_dict() for r in rows]}  # fmt: skip
    common.log("per layer:", {k: v for k, v in per.items() if k != "rows"})
    return {"whole": whole, "layers": per, "time_ratio": layers_s / whole_s,
            "table": hessjax.layers.markdown(rows)}  # fmt: skip


def main(argv=None):
    args = parse_args(argv)
    env = common.start(args, torch=False)
    results = {"products": {}}
    lines = ["# Curvature toolkit cost", "", f"## GGN-vector vs Hessian-vector product, batch "
             f"{args.batch_size}, median of {args.repeats} paired rounds", ""]  # fmt: skip
    rows = []
    for name in common.model_names(args.models):
        r = results["products"][name] = products(name, args)
        rows.append([name.upper(), *(r["ms"][k] for k in ("hvp", "ggn", "hvp_linearized",
                     "ggn_linearized")), r["ggn_over_hvp"],
                     r["ggn_linearized_over_hvp_linearized"]])  # fmt: skip
    lines += [common.markdown_table(
        ["model", "HVP ms", "GGN-vp ms", "HVP linearized ms", "GGN-vp linearized ms",
         "GGN / HVP", "GGN lin. / HVP lin."], rows), ""]  # fmt: skip
    if not args.skip_layers:
        r = results["c1_layers"] = layer_cost(args)
        lines += [f"## C1 per-layer analysis vs whole model, {args.layer_images} images, "
                  f"k={args.k}, tol {args.tol}, XTrace {args.trace_matvecs} matvecs", "",
                  common.markdown_table(["analysis", "seconds", "matvecs"], [
                      ["whole Hessian (λ_max, trace)", r["whole"]["seconds"],
                       r["whole"]["matvecs"]],
                      [f"every layer's block ({len(r['layers']['rows'])} layers)",
                       r["layers"]["seconds"], r["layers"]["matvecs"]]]),
                  "", f"Per-layer / whole time: {r['time_ratio']:.2f}×", "", *r["table"],
                  ""]  # fmt: skip
    lines += common.footer(env, "benchmarks.curvature_cost")
    common.finish("benchmarks.curvature_cost", args, env, "\n".join(lines), results,
                  load_at_end=True)  # fmt: skip


if __name__ == "__main__":
    main()
