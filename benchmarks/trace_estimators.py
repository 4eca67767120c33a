"""Trace estimators at a fixed budget of HVPs: Hutchinson, Hutch++, XTrace, XNysTrace (hessjax) and
matfree's XTrace and XNysTrace, side by side on the same operators and budget; median relative
error over seeds. XNysTrace needs a PSD operator, so it runs on softmax regression (whose Hessian
is PSD) and not on M1's indefinite Hessian.

* softmax regression on the first ``--images`` MNIST training images (784 -> 10, trained
  ``--softmax-steps`` full-batch gradient steps; pixels as ``hessjax.data`` normalises them, or
  in [0, 1] with ``--unit-pixels``, where the mean image dominates the input moments and the
  spectrum decays faster): the trace is exact in closed form,
  ``tr H = (1/N) Σᵢ (1 − ‖pᵢ‖²)(‖xᵢ‖² + 1)`` (H = (1/N) Σᵢ (diag pᵢ − pᵢpᵢᵀ) ⊗ x̃ᵢx̃ᵢᵀ,
  x̃ = (x, 1));
* M1's Hessian over the first ``--m1-images`` images (M1 trained as ``benchmarks.common.train_m1``;
  ``op.linearize()``). No closed form: each estimate is compared with the mean of all *other*
  Hutch++ and XTrace estimates of the run (leave-one-out; every estimator is unbiased, and the
  reference's own noise only adds to every method's error). matfree is not run on M1 (its
  XTrace vmaps the matvec, which puts the convolutions in an XLA loop: jax-ml/jax#12868).

matfree (``pip install matfree``): ``stochtrace.estimator_leave_one_out(
leave_one_out_xtrace(), sampler_sphere(params, num=budget // 2))``, its documented default
(resphering on; sphere samples as the docstring asks for), and likewise
``leave_one_out_xnystrace()`` with ``num=budget``.

    python -m benchmarks.trace_estimators                 # defaults below
    python -m benchmarks.trace_estimators --m1-repeats 0  # softmax regression only
"""

from __future__ import annotations

import functools
import time

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

import hessjax
from benchmarks import common

METHODS = ("hutchinson", "hutchpp", "xtrace")
#: and for PSD operators
PSD_METHODS = (*METHODS, "xnystrace")


def parse_args(argv=None):
    p = common.argument_parser(__doc__)
    p.add_argument("--budget", type=int, default=60, help="HVPs per estimate")
    p.add_argument("--images", type=int, default=2000)
    p.add_argument("--softmax-repeats", type=int, default=20)
    p.add_argument("--softmax-steps", type=int, default=0, help="0: at initialisation")
    p.add_argument("--unit-pixels", action="store_true", help="softmax regression on [0, 1] pixels")
    p.add_argument("--m1-repeats", type=int, default=3)
    p.add_argument("--m1-images", type=int, default=2000)
    p.add_argument("--batch-size", type=int, default=2000, help="samples per HVP batch")
    common.add_run_args(p, "trace_estimators", trains_m1=True)
    return p.parse_args(argv)


class SoftmaxRegression(nn.Module):
    @nn.compact
    def __call__(self, x, train: bool = False):
        return nn.Dense(10)(x.reshape(x.shape[0], -1))


def softmax_regression(args):
    """(operator, params, exact trace) of a trained softmax regression."""
    x, y = hessjax.data.load("mnist", "train", data_dir=args.data_dir, limit=args.images)
    if args.unit_pixels:  # undo (p/255 − 0.1307)/0.3081
        x = (x * np.float32(0.3081) + np.float32(0.1307)).astype(np.float32)
    model = SoftmaxRegression()
    variables = model.init(jax.random.key(args.seed), x[:1])
    loss_fn = hessjax.make_loss_fn(model.apply, variables)
    params = variables["params"]
    step = jax.jit(
        lambda p: jax.tree.map(lambda a, g: a - 0.5 * g, p, jax.grad(loss_fn)(p, (x, y)))
    )
    for _ in range(args.softmax_steps):
        params = step(params)
    p = jax.nn.softmax(model.apply({"params": params}, x).astype(np.float64))
    xf = np.asarray(x, np.float64).reshape(len(x), -1)
    exact = float(np.mean((1 - np.sum(np.asarray(p) ** 2, 1)) * (np.sum(xf**2, 1) + 1)))
    op = hessjax.hessian_operator(loss_fn, params, (x, y), batch_size=args.batch_size)
    return op, params, exact, float(loss_fn(params, (x, y)))


@functools.cache
def _matfree_estimator(method, treedef, shapes, budget):
    from matfree import stochtrace

    like = jax.tree_util.tree_unflatten(treedef, [jnp.zeros(s, d) for s, d in shapes])
    if method == "xtrace":
        integrand, num = stochtrace.leave_one_out_xtrace(), budget // 2
    else:
        integrand, num = stochtrace.leave_one_out_xnystrace(), budget
    sampler = stochtrace.sampler_sphere(like, num=num)
    return jax.jit(stochtrace.estimator_leave_one_out(integrand, sampler))


def matfree_trace(method, op, params, budget, key):
    """matfree's ``method`` ("xtrace" or "xnystrace") estimate of ``tr(op)``."""
    leaves, treedef = jax.tree_util.tree_flatten(params)
    shapes = tuple((leaf.shape, leaf.dtype) for leaf in leaves)
    return float(_matfree_estimator(method, treedef, shapes, budget)(op, key))


def run_estimators(op, params, budget, repeats, *, methods, matfree, label):
    """``repeats`` estimates (keys 1000, 1001, ...) by hessjax's ``methods`` and matfree's
    ``matfree`` methods; values and total seconds per method."""
    out = {m: [] for m in (*methods, *(f"matfree_{m}" for m in matfree))}
    seconds = {m: 0.0 for m in out}
    for r in range(repeats):
        key = jax.random.key(1000 + r)
        for m in methods:
            tic = time.perf_counter()
            est = getattr(hessjax, m)(op, params, num_matvecs=budget, key=key)
            out[m].append(float(est.value))
            seconds[m] += time.perf_counter() - tic
        for m in matfree:
            tic = time.perf_counter()
            out[f"matfree_{m}"].append(matfree_trace(m, op, params, budget, key))
            seconds[f"matfree_{m}"] += time.perf_counter() - tic
        common.log(f"{label} repeat {r + 1}/{repeats}:", {m: v[-1] for m, v in out.items()})
    return out, seconds


def summarize(values: dict, reference) -> dict:
    rows = {}
    for m, vals in values.items():
        vals = np.asarray(vals)
        ref = reference(m) if callable(reference) else np.full(len(vals), reference)
        rel = np.abs(vals - ref) / np.abs(ref)
        rows[m] = {"median_rel_error": float(np.median(rel)), "rel_errors": rel.tolist()}
    return rows


def main(argv=None):
    args = parse_args(argv)
    env = common.start(args, torch=False)
    results, lines = {}, ["# Trace estimators at a fixed HVP budget", ""]
    op, params, exact, loss = softmax_regression(args)
    common.log(f"softmax regression: loss {loss:.4f}, exact trace {exact:.6g}")
    values, seconds = run_estimators(
        *(op, params, args.budget, args.softmax_repeats),
        methods=PSD_METHODS,
        matfree=("xtrace", "xnystrace"),
        label="softmax",
    )
    results["softmax_regression"] = {
        "exact_trace": exact, "train_loss": loss, "values": values, "seconds": seconds,
        "errors": summarize(values, exact),
    }  # fmt: skip
    pixels = "[0, 1] pixels" if args.unit_pixels else "normalised pixels"
    sections = [("softmax_regression", f"softmax regression on {args.images} MNIST images "
                 f"({pixels}, {args.softmax_steps} GD steps), exact trace {exact:.6g}, "
                 f"{args.softmax_repeats} seeds")]  # fmt: skip
    if args.m1_repeats:
        variables, info = common.trained_m1(args)
        x, y = hessjax.data.load("mnist", "train", data_dir=args.data_dir, limit=args.m1_images)
        model = hessjax.models.get("m1")
        loss_fn = hessjax.make_loss_fn(model.apply, variables)
        m1 = hessjax.hessian_operator(
            loss_fn, variables["params"], (x, y), batch_size=args.batch_size
        ).linearize()
        values, seconds = run_estimators(
            *(m1, variables["params"], args.budget, args.m1_repeats),
            methods=METHODS,
            matfree=(),
            label="M1",
        )
        pool = [(m, i, v) for m in ("hutchpp", "xtrace") for i, v in enumerate(values[m])]

        def loo(method):  # mean of every other Hutch++ / XTrace estimate, per estimate
            out = []
            for i in range(len(values[method])):
                others = [v for m, j, v in pool if (m, j) != (method, i)]
                out.append(np.mean(others))
            return np.asarray(out)

        ref = np.mean([v for _, _, v in pool])
        results["m1"] = {
            "model": info, "reference_trace": float(ref), "values": values, "seconds": seconds,
            "reference_sem": float(np.std([v for _, _, v in pool], ddof=1) / np.sqrt(len(pool))),
            "errors": summarize(values, loo),
        }  # fmt: skip
        sem = results["m1"]["reference_sem"]
        sections.append(("m1", f"M1 Hessian on {args.m1_images} MNIST images ({info['recipe']}), "
                         f"reference trace {ref:.6g} ± {sem:.2g} (leave-one-out means of "
                         f"Hutch++/XTrace), {args.m1_repeats} seeds"))  # fmt: skip
    for key, title in sections:
        errs = results[key]["errors"]
        hutch = errs["hutchinson"]["median_rel_error"]
        rows = [
            [m, errs[m]["median_rel_error"], hutch / errs[m]["median_rel_error"],
             results[key]["seconds"][m] / len(results[key]["values"][m])]
            for m in errs
        ]  # fmt: skip
        lines += [f"## {title}", "", f"Budget {args.budget} HVPs per estimate.", ""]
        lines += [common.markdown_table(
            ["estimator", "median relative error", "Hutchinson / this", "s per estimate"], rows
        ), ""]  # fmt: skip
    lines += common.footer(env, "benchmarks.trace_estimators")
    common.finish("benchmarks.trace_estimators", args, env, "\n".join(lines), results,
                  load_at_end=True)  # fmt: skip


if __name__ == "__main__":
    main()
