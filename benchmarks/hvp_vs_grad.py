"""HVP cost relative to a gradient, for M1 (MNIST) and C1 (CIFAR-10), on one batch, on CPU.

Measures, on the same batch of real images (float32, BatchNorm in inference mode through
``hessjax.make_loss_fn(model.apply, variables)``):

* ``jax.jit(jax.grad(loss))`` against ``jax.jit(hessjax.hvp)`` (forward-over-reverse);
* the library's operators on that one batch: ``hessian_operator(...)(v)`` and its
  ``.linearize()``d form, which caches the primal forward/backward residuals once so each further
  HVP costs only the tangent operations (what an iterative solver pays per matvec; the one-time
  linearisation is reported separately, with the residual memory);
* as context, JAX reverse-over-reverse (``grad`` of ``<grad, v>``);
* the PyTorch twins (benchmarks/torch_models.py, same weights, ``model.eval()``): a gradient
  (``torch.autograd.grad``) against PyTorch's double-backward HVP (what PyHessian uses) and
  ``torch.func.jvp(torch.func.grad(f))`` (forward-over-reverse).

Every timing sample is the mean of ``--number`` back-to-back calls; all variants are timed in turn
inside each of ``--repeats`` rounds (order rotated per round), and a ratio is the median over
rounds of the per-round ratio (paired, so slow phases of the shared machine cancel). Issue target:
JAX HVP / gradient <= 2.

    python -m benchmarks.hvp_vs_grad                      # defaults: m1,c1, batch 128
    python -m benchmarks.hvp_vs_grad --models m1 --batch-size 512 --repeats 5
"""

from __future__ import annotations

import jax
import numpy as np

import hessjax
from benchmarks import common
from hessjax import models

TARGET = 2.0
#: variants timed with a few single calls after the paired rounds (seconds per call on C1).
SLOW = ("torch_hvp_func_fwd_rev",)


def parse_args(argv=None):
    p = common.argument_parser(__doc__)
    p.add_argument("--models", default="m1,c1", help="comma-separated: m1, c1")
    p.add_argument("--batch-size", type=int, default=128)
    p.add_argument("--repeats", type=int, default=15, help="timing rounds (median over rounds)")
    p.add_argument("--number", type=int, default=3, help="calls averaged per timing sample")
    p.add_argument("--slow-repeats", type=int, default=3, help="calls timed for torch.func")
    p.add_argument("--no-torch", action="store_true", help="skip the PyTorch context columns")
    common.add_run_args(p, "hvp_vs_grad", torch=True)
    return p.parse_args(argv)


def jax_functions(name, batch_size, data_dir, seed):
    model = models.get(name)
    variables = models.init(model, jax.random.key(seed))
    x, y = hessjax.data.load(common.DATASETS[name], "train", data_dir=data_dir, limit=batch_size)
    if len(x) < batch_size:
        raise SystemExit(f"only {len(x)} {common.DATASETS[name]} images found, need {batch_size}")
    loss_fn = hessjax.make_loss_fn(model.apply, variables)
    params = variables["params"]
    v = common.tree_random_normal(jax.random.key(seed + 1), params)
    batch = jax.device_put((x, y))

    grad = jax.jit(lambda lf, p, b: jax.grad(lf)(p, b))
    hvp = jax.jit(lambda lf, p, v, b: hessjax.hvp(lf, p, v, b))
    rev_rev = jax.jit(
        lambda lf, p, v, b: jax.grad(lambda q: common.tree_vdot(jax.grad(lf)(q, b), v))(p)
    )
    op = hessjax.hessian_operator(loss_fn, params, batch, batch_size=batch_size)
    linearize_seconds, lop = common.timed(op.linearize)
    fns = {
        "jax_grad": lambda: grad(loss_fn, params, batch),
        "jax_hvp_fwd_rev": lambda: hvp(loss_fn, params, v, batch),
        "jax_hvp_rev_rev": lambda: rev_rev(loss_fn, params, v, batch),
        "operator": lambda: op(v),
        "operator_linearized": lambda: lop(v),
    }
    linearization = {
        "first_call_seconds_incl_compile": linearize_seconds,
        "residual_bytes": lop.residual_bytes,
    }

    def flops(fn, *a):
        return float(fn.lower(*a).compile().cost_analysis()["flops"])

    xla_flops = {
        "jax_grad": flops(grad, loss_fn, params, batch),
        "jax_hvp_fwd_rev": flops(hvp, loss_fn, params, v, batch),
        "jax_hvp_rev_rev": flops(rev_rev, loss_fn, params, v, batch),
    }
    return model, variables, (x, y), v, fns, xla_flops, linearization


def torch_functions(name, variables, x, y, v):
    import torch
    import torch.nn.functional as F

    from benchmarks import torch_models

    model = torch_models.from_flax(name, variables)
    names = [n for n, _ in model.named_parameters()]
    params = [p for _, p in model.named_parameters()]
    xt = torch_models.to_nchw(x)
    yt = torch_models.labels(y)
    v_np = torch_models.params_to_torch(name, v)
    vt = [torch_models.tensor(v_np[n]) for n in names]

    def grad():
        return torch.autograd.grad(F.cross_entropy(model(xt), yt), params)

    def hvp_double_backward():
        g = torch.autograd.grad(F.cross_entropy(model(xt), yt), params, create_graph=True)
        return torch.autograd.grad(g, params, grad_outputs=vt)

    detached = {n: p.detach() for n, p in zip(names, params, strict=True)}
    buffers = dict(model.named_buffers())
    loss_of = lambda pd: F.cross_entropy(
        torch.func.functional_call(model, {**pd, **buffers}, (xt,)), yt
    )
    grad_of = torch.func.grad(loss_of)
    v_dict = dict(zip(names, vt, strict=True))

    def hvp_fwd_rev():
        return tuple(torch.func.jvp(grad_of, (detached,), (v_dict,))[1][n] for n in names)

    def as_params(tensors):
        return torch_models.torch_to_params(name, dict(zip(names, tensors, strict=True)))

    fns = {
        "torch_grad": grad,
        "torch_hvp_double_backward": hvp_double_backward,
        "torch_hvp_func_fwd_rev": hvp_fwd_rev,
    }
    return fns, as_params, model


def bench_model(name, args):
    model, variables, (x, y), v, fns, xla_flops, linearization = jax_functions(
        name, args.batch_size, args.data_dir, args.seed
    )
    first_call = {}
    for k, fn in fns.items():
        first_call[k] = common.timed(fn)[0]
    hv = fns["jax_hvp_fwd_rev"]()
    checks = {
        "jax_rev_rev_vs_fwd_rev": common.rel_diff(fns["jax_hvp_rev_rev"](), hv),
        "operator_vs_fwd_rev": common.rel_diff(fns["operator"](), hv),
        "linearized_vs_fwd_rev": common.rel_diff(fns["operator_linearized"](), hv),
    }
    if not args.no_torch:
        from benchmarks import torch_models

        tfns, as_params, tmodel = torch_functions(name, variables, x, y, v)
        checks["twin"] = torch_models.check_twin(name, model.apply, variables, tmodel, x, y)
        checks["torch_grad_vs_jax_grad"] = common.rel_diff(
            as_params(tfns["torch_grad"]()), fns["jax_grad"]()
        )
        checks["torch_double_backward_vs_jax_hvp"] = common.rel_diff(
            as_params(tfns["torch_hvp_double_backward"]()), hv
        )
        checks["torch_func_fwd_rev_vs_jax_hvp"] = common.rel_diff(
            as_params(tfns["torch_hvp_func_fwd_rev"]()), hv
        )
        for k, fn in tfns.items():
            first_call[k] = common.timed(fn)[0]
        fns = {**fns, **tfns}

    for fn in fns.values():  # warm-up
        common.block(fn())
    keys = [k for k in fns if k not in SLOW]
    samples = {k: [] for k in fns}
    for r in range(args.repeats):
        for k in keys[r % len(keys) :] + keys[: r % len(keys)]:
            samples[k].append(common.per_call(fns[k], args.number))
    for k in SLOW:  # too slow to pair with every round: a few single calls after the rounds
        if k in fns:
            samples[k] = [common.per_call(fns[k], 1) for _ in range(args.slow_repeats)]

    def paired(num, den):
        ratios = np.asarray(samples[num]) / np.asarray(samples[den])
        return {
            "median": float(np.median(ratios)),
            "p25": float(np.percentile(ratios, 25)),
            "p75": float(np.percentile(ratios, 75)),
            "ratio_of_medians": common.median(samples[num]) / common.median(samples[den]),
        }

    ratios = {
        "jax_hvp_fwd_rev/jax_grad": paired("jax_hvp_fwd_rev", "jax_grad"),
        "jax_hvp_rev_rev/jax_grad": paired("jax_hvp_rev_rev", "jax_grad"),
        "operator/jax_grad": paired("operator", "jax_grad"),
        "operator_linearized/jax_grad": paired("operator_linearized", "jax_grad"),
    }
    if not args.no_torch:
        ratios.update(
            {
                "torch_hvp_double_backward/torch_grad": paired(
                    "torch_hvp_double_backward", "torch_grad"
                ),
                "torch_hvp_func_fwd_rev/torch_grad": {
                    "ratio_of_medians": common.median(samples["torch_hvp_func_fwd_rev"])
                    / common.median(samples["torch_grad"])
                },
                "jax_hvp_fwd_rev/torch_hvp_double_backward": paired(
                    "jax_hvp_fwd_rev", "torch_hvp_double_backward"
                ),
                "jax_grad/torch_grad": paired("jax_grad", "torch_grad"),
            }
        )
    return {
        "model": name,
        "data": common.DATASETS[name],
        "batch_size": args.batch_size,
        "num_params": models.param_count(variables),
        "median_seconds": {k: common.median(s) for k, s in samples.items()},
        "xla_cost_analysis_flops": xla_flops,
        "xla_flops_ratio_hvp_over_grad": xla_flops["jax_hvp_fwd_rev"] / xla_flops["jax_grad"],
        "samples_seconds": samples,
        "first_call_seconds_incl_compile": first_call,
        "ratios": ratios,
        "target_hvp_over_grad": TARGET,
        "meets_target": ratios["jax_hvp_fwd_rev/jax_grad"]["median"] <= TARGET,
        "linearized_meets_target": ratios["operator_linearized/jax_grad"]["median"] <= TARGET,
        "linearization": linearization,
        "agreement_rel_l2": checks,
    }


def markdown(results, env, args):
    headers = [
        "model",
        "batch",
        "params",
        "JAX grad ms",
        "JAX HVP (fwd-over-rev) ms",
        "**JAX HVP / grad** [IQR]",
        "≤ 2×?",
        "XLA FLOPs HVP / grad",
        "JAX rev-over-rev / grad",
        "operator / grad",
        "**linearized operator / grad** [IQR]",
        "≤ 2×?",
        "linearize once s (incl. compile), residual MiB",
    ]
    if not args.no_torch:
        headers += [
            "torch grad ms",
            "torch double-backward HVP ms",
            "torch dbl-bwd / grad",
            "torch.func fwd-over-rev / grad",
            "JAX HVP / torch dbl-bwd HVP",
        ]
    rows = []
    for r in results:
        ms = {k: 1e3 * s for k, s in r["median_seconds"].items()}
        q = r["ratios"]
        main = q["jax_hvp_fwd_rev/jax_grad"]
        row = [
            r["model"].upper(),
            r["batch_size"],
            f"{r['num_params']:,}",
            f"{ms['jax_grad']:.1f}",
            f"{ms['jax_hvp_fwd_rev']:.1f}",
            f"**{main['median']:.2f}** [{main['p25']:.2f}, {main['p75']:.2f}]",
            "yes" if r["meets_target"] else "**no**",
            f"{r['xla_flops_ratio_hvp_over_grad']:.2f}",
            f"{q['jax_hvp_rev_rev/jax_grad']['median']:.2f}",
            f"{q['operator/jax_grad']['median']:.2f}",
        ]
        lin, lin_q = r["linearization"], q["operator_linearized/jax_grad"]
        row += [
            f"**{lin_q['median']:.2f}** [{lin_q['p25']:.2f}, {lin_q['p75']:.2f}]",
            "yes" if r["linearized_meets_target"] else "**no**",
            f"{lin['first_call_seconds_incl_compile']:.2f}, {lin['residual_bytes'] / 2**20:.0f}",
        ]
        if not args.no_torch:
            row += [
                f"{ms['torch_grad']:.1f}",
                f"{ms['torch_hvp_double_backward']:.1f}",
                f"{q['torch_hvp_double_backward/torch_grad']['median']:.2f}",
                f"{q['torch_hvp_func_fwd_rev/torch_grad']['ratio_of_medians']:.1f}",
                f"{q['jax_hvp_fwd_rev/torch_hvp_double_backward']['median']:.2f}",
            ]
        rows.append(row)
    agree = "; ".join(
        f"{r['model'].upper()}: "
        + ", ".join(
            f"{k} {v:.1e}" for k, v in r["agreement_rel_l2"].items() if isinstance(v, float)
        )
        + (
            f", twin max|Δlogit| {r['agreement_rel_l2']['twin']['max_abs_logit_diff']:.1e}"
            if "twin" in r["agreement_rel_l2"]
            else ""
        )
        for r in results
    )
    return "\n".join(
        [
            "# HVP vs gradient time (one batch, CPU, float32)",
            "",
            common.markdown_table(headers, rows),
            "",
            f"Median over {args.repeats} rounds of the per-round ratio (each sample = mean of "
            f"{args.number} calls; [IQR] = 25th-75th percentile of the per-round ratio); "
            "real MNIST (M1) / CIFAR-10 (C1) training images, randomly initialised weights, "
            "BN in inference mode. Target: JAX HVP / grad ≤ 2. torch.func column: ratio of "
            f"medians, {args.slow_repeats} single calls after the rounds (too slow to pair). "
            "XLA FLOPs = `jit(...).lower(...).compile().cost_analysis()['flops']`. "
            "operator = `hessian_operator(loss, params, batch, batch_size=B)(v)`; linearized = "
            "its `.linearize()` form (primal residuals cached once: the per-matvec cost inside "
            "an iterative solver; the one-time linearisation and its memory are listed).",
            "",
            f"Agreement (relative L2) of the HVPs/gradients across implementations: {agree}.",
            *common.footer(env, "benchmarks.hvp_vs_grad"),
        ]
    )


def main(argv=None):
    args = parse_args(argv)
    names = common.model_names(args.models)
    env = common.start(args, torch=not args.no_torch)
    results = []
    for name in names:
        print(f"benchmarking {name} ...", flush=True)
        results.append(bench_model(name, args))
    md = markdown(results, env, args)
    common.finish("benchmarks.hvp_vs_grad", args, env, md, {"results": results})


if __name__ == "__main__":
    main()
