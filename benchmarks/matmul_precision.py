"""Float32 matmul precision: what TensorFloat-32 does to Hessian-vector products and λ_max.

On NVIDIA GPUs since Ampere, JAX computes float32 matmuls and convolutions with TF32 inputs (10
mantissa bits instead of 23) unless told otherwise; PyTorch computes matmuls in full float32 and
cuDNN convolutions in TF32 by default. The Hessian is a second derivative, so this is a question
of accuracy as much as of speed. For M1 (MNIST) and C1 (CIFAR-10) on ``--num-images`` real
training images, initial weights (seed ``--seed``), float32 data:

* ``jax@<p>``: the default ``hessjax.hessian_operator(..., batch_size=--batch-size)`` of
  ``make_loss_fn(..., precision=None)``, built and called under ``jax.default_matmul_precision(p)``
  for p in ``default`` (JAX's own default), ``tensorfloat32`` and ``float32``; its data-set HVP
  time (median of ``--repeats``), its relative error ``‖Hv − Hv_f32‖ / ‖Hv_f32‖`` against the
  ``float32`` HVP, and the relative error of the top eigenvalue (``hessjax.eigenvalues(k=1,
  tol=--tol)``) against the ``float32`` one;
* ``hessjax``: the same with ``make_loss_fn``'s default (``precision="float32"``, inside the loss
  only: hessjax/precision.py) and no context, as a user calls it;
* ``torch@<tf32|f32>``: PyTorch double backward over the same chunks with
  ``torch.backends.cuda.matmul.allow_tf32`` and ``torch.backends.cudnn.allow_tf32`` both on or both
  off (PyTorch's own default is matmul off, cuDNN on: ``torch@default``); time and relative error
  against JAX's ``float32`` HVP.

On a CPU every setting computes in float32, so the errors are float32 rounding (~1e-6), a check
that the settings change nothing there.

    python -m benchmarks.matmul_precision                      # m1,c1 on 1,000 images
    python -m benchmarks.matmul_precision --models m1 --num-images 200 --repeats 2
"""

from __future__ import annotations

import jax

import hessjax
from benchmarks import common
from hessjax import models

#: ``jax.default_matmul_precision`` settings; the last is the reference.
JAX_PRECISIONS = {"default": None, "tensorfloat32": "tensorfloat32", "float32": "float32"}
#: PyTorch settings: ``torch_models.tf32(enabled)`` (None: PyTorch's defaults).
TORCH_PRECISIONS = {"default": None, "tf32": True, "f32": False}


def parse_args(argv=None):
    p = common.argument_parser(__doc__)
    p.add_argument("--models", default="m1,c1", help="comma-separated: m1, c1")
    p.add_argument("--num-images", type=int, default=1000)
    p.add_argument("--batch-size", type=int, default=1000)
    p.add_argument("--repeats", type=int, default=5)
    p.add_argument("--tol", type=float, default=1e-4, help="Lanczos tolerance of λ_max")
    p.add_argument("--no-torch", action="store_true")
    common.add_run_args(p, "matmul_precision", torch=True)
    return p.parse_args(argv)


def jax_variant(loss_fn, params, data, batch_size, precision, v, tol, key):
    """(hvp callable, Hv, λ_max) with everything traced under ``precision`` (None: no context)."""
    with hessjax.precision.scope(precision):
        op = hessjax.hessian_operator(loss_fn, params, data, batch_size=batch_size)
        hv = common.block(op(v))
        lam = float(hessjax.eigenvalues(op, params, k=1, tol=tol, key=key).values[0])

    def call():
        with hessjax.precision.scope(precision):
            return op(v)

    return call, hv, lam


def bench_model(name, args):
    model = models.get(name)
    variables = models.init(model, jax.random.key(args.seed))
    x, y = hessjax.data.load(
        common.DATASETS[name], "train", data_dir=args.data_dir, limit=args.num_images
    )
    loss_fn = hessjax.make_loss_fn(model.apply, variables, precision=None)
    params = variables["params"]
    v = common.tree_random_normal(jax.random.key(args.seed + 1), params)
    key = jax.random.key(args.seed + 2)
    fns, hvs, lams = {}, {}, {}
    for label, p in JAX_PRECISIONS.items():
        fns[f"jax@{label}"], hvs[label], lams[label] = jax_variant(
            loss_fn, params, (x, y), args.batch_size, p, v, args.tol, key
        )
        common.log(f"{name}: jax@{label} λ_max {lams[label]:.6g}")
    fns["hessjax"], hvs["hessjax"], lams["hessjax"] = jax_variant(
        hessjax.make_loss_fn(model.apply, variables),
        params,
        (x, y),
        args.batch_size,
        None,
        v,
        args.tol,
        key,
    )
    ref_hv, ref_lam = hvs["float32"], lams["float32"]
    rows = {
        ("hessjax" if label == "hessjax" else f"jax@{label}"): {
            "hvp_rel_error": common.rel_diff(hvs[label], ref_hv),
            "lambda_max": lams[label],
            "lambda_max_rel_error": abs(lams[label] - ref_lam) / abs(ref_lam),
        }
        for label in [*JAX_PRECISIONS, "hessjax"]
    }
    if not args.no_torch:
        from benchmarks import torch_models  # imports torch

        thvp, _, as_params = torch_models.dataset_hvp_and_grad(
            name, variables, x, y, v, args.batch_size
        )
        for label, enabled in TORCH_PRECISIONS.items():

            def call(enabled=enabled):
                with torch_models.tf32(enabled):
                    out = thvp()
                torch_models.synchronize()
                return out

            fns[f"torch@{label}"] = call
            rows[f"torch@{label}"] = {"hvp_rel_error": common.rel_diff(as_params(call()), ref_hv)}
    for fn in fns.values():
        common.block(fn())
    samples = {k: [] for k in fns}
    keys = list(fns)
    for r in range(args.repeats):
        for k in keys[r % len(keys) :] + keys[: r % len(keys)]:
            samples[k].append(common.per_call(fns[k], 1))
    for k, s in samples.items():
        rows[k]["hvp_ms"] = 1e3 * common.median(s)
        rows[k]["samples_s"] = s
    return rows


def main(argv=None):
    args = parse_args(argv)
    env = common.start(args, torch=not args.no_torch)
    results, lines = {}, []
    for name in common.model_names(args.models):
        rows = results[name] = bench_model(name, args)
        lines += [
            f"## {name.upper()}: data-set HVP over {args.num_images} images, "
            f"batch_size {args.batch_size}",
            "",
            common.markdown_table(
                [
                    "variant",
                    "HVP ms (median)",
                    "HVP rel. error vs JAX float32",
                    "λ_max",
                    "λ_max rel. error",
                ],
                [
                    [
                        k,
                        r["hvp_ms"],
                        r["hvp_rel_error"],
                        r.get("lambda_max", ""),
                        r.get("lambda_max_rel_error", ""),
                    ]
                    for k, r in rows.items()
                ],
            ),
            "",
        ]
    lines += common.footer(env, "benchmarks.matmul_precision")
    common.finish("benchmarks.matmul_precision", args, env, "\n".join(lines), {"models": results})


if __name__ == "__main__":
    main()
