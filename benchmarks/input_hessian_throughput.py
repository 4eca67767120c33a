"""Per-sample input-Hessian top eigenvalue on MNIST test images: method="exact" vs "power", CPU.

``hessjax.input_hessian_eigenvalues(model.apply, variables, x, y, method=...)`` on a partly
trained M1 (benchmarks/common.py ``train_m1``, the same weights as the eigenvalue benchmark):

* ``"exact"``: top eigenvalue of the c x c matrix ``B Bᵀ``, ``B = (I − q qᵀ) diag(q) J_z``,
  ``q = √p`` (c = 10 reverse passes per sample), on all ``--num-images`` test images;
* ``"power"``: power iteration on exact input HVPs (library defaults ``tol=1e-6``,
  ``max_iters=200``), on the first ``--power-images`` of them (it is ~40x slower);
* check: the same eigenvalue from another formula, ``S^½ J_z J_zᵀ S^½`` with ``S^½`` from an
  ``eigh`` of ``S = diag p − p pᵀ``, evaluated with ``jax.vmap`` at the top level of one jitted
  call per chunk (no ``lax.map``): an independent value check, and a
  timing of the per-sample work without any loop in the compiled program.

Reports images per second (first call incl. compile, and warm), and how far "power" is from
"exact" (relative difference per image: max, 99th percentile, median; power <= exact in exact
arithmetic since a Rayleigh quotient never exceeds λ_max).

    python -m benchmarks.input_hessian_throughput                      # ~10 min
    python -m benchmarks.input_hessian_throughput --power-images 10000 # power on all (~30+ min)
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np

import hessjax
from benchmarks import common
from hessjax import models


def parse_args(argv=None):
    p = common.argument_parser(__doc__)
    p.add_argument("--num-images", type=int, default=10_000, help="MNIST test images (exact)")
    p.add_argument("--power-images", type=int, default=500, help="first N of them for power")
    p.add_argument("--batch-size", type=int, default=500, help="library batch_size (chunk)")
    p.add_argument("--power-tol", type=float, default=1e-6)
    p.add_argument("--power-max-iters", type=int, default=200)
    p.add_argument("--repeats", type=int, default=3, help="warm calls of exact (median)")
    p.add_argument("--power-repeats", type=int, default=1, help="warm calls of power (median)")
    p.add_argument("--no-diagnostic", action="store_true")
    common.add_run_args(p, "input_hessian_throughput", trains_m1=True)
    return p.parse_args(argv)


def time_method(fn, n, repeats):
    return time_methods({"m": fn}, n, repeats)["m"]


def time_methods(fns, n, repeats):
    """First call of each, then ``repeats`` rounds of one warm call of each, in turn."""
    firsts = {key: common.timed(fn) for key, fn in fns.items()}
    warms = {key: [] for key in fns}
    for _ in range(repeats):
        for key, fn in fns.items():
            warms[key].append(common.timed(fn)[0])
    return {key: _summary(firsts[key][0], warms[key], n, np.asarray(firsts[key][1])) for key in fns}


def _summary(first, warm, n, out):
    med = common.median(warm) if warm else None
    return {
        "num_images": n,
        "first_call_seconds": first,
        "warm_seconds": warm,
        "warm_median_seconds": med,
        "images_per_second_first_call": n / first,
        "images_per_second_warm": n / med if med else None,
    }, out


def top_level_vmap_exact(apply_fn, variables, x, chunk):
    """λ_max of ``S^½ J_z J_zᵀ S^½`` per sample, ``jax.vmap`` at the top level of one jitted call
    per chunk of ``chunk`` samples (a Python loop over chunks instead of ``lax.map``)."""

    def one(xi):
        logits_of = lambda z: apply_fn(variables, z[None])[0]
        jac = jax.jacrev(logits_of)(xi)
        jac = jac.reshape(jac.shape[0], -1)
        p = jax.nn.softmax(logits_of(xi))
        w, u = jnp.linalg.eigh(jnp.diag(p) - jnp.outer(p, p))
        s_half = (u * jnp.sqrt(jnp.clip(w, 0.0))) @ u.T
        return jnp.linalg.eigvalsh(s_half @ (jac @ jac.T) @ s_half)[-1]

    f = jax.jit(jax.vmap(one))
    return lambda: np.concatenate(
        [np.asarray(f(x[i : i + chunk])) for i in range(0, len(x), chunk)]
    )


def agreement(power, exact):
    rel = np.abs(power - exact) / np.abs(exact)
    return {
        "num_images": int(len(rel)),
        "max_rel_diff": float(np.max(rel)),
        "p99_rel_diff": float(np.percentile(rel, 99)),
        "median_rel_diff": float(np.median(rel)),
        "count_rel_diff_over_1e-3": int(np.sum(rel > 1e-3)),
        "count_rel_diff_over_1e-6": int(np.sum(rel > 1e-6)),
        "fraction_power_le_exact_plus_1e-6": float(np.mean(power <= exact * (1 + 1e-6))),
        "worst_index": int(np.argmax(rel)),
        "worst_exact_power": [float(exact[np.argmax(rel)]), float(power[np.argmax(rel)])],
    }


def markdown(r, env, args):
    t = r["training"]
    rows = []
    for label, key in [
        ('`method="exact"`', "exact"),
        (
            f'`method="power"` (tol {args.power_tol:g}, max_iters {args.power_max_iters})',
            "power",
        ),
        ("check: benchmark's own exact formula, `jax.vmap` per chunk from Python", "diagnostic"),
    ]:
        m = r["timings"].get(key)
        if not m:
            continue
        rows.append(
            [
                label,
                m["num_images"],
                f"{m['first_call_seconds']:.1f}",
                f"{m['warm_median_seconds']:.1f}" if m["warm_median_seconds"] else "not run",
                f"{m['images_per_second_first_call']:.1f}",
                f"**{m['images_per_second_warm']:.1f}**" if m["images_per_second_warm"] else "—",
            ]
        )
    e, p = r["timings"]["exact"], r["timings"]["power"]
    speed = e["images_per_second_warm"] / p["images_per_second_warm"]
    a = r["agreement_power_vs_exact"]
    d = r.get("agreement_diagnostic_vs_exact")
    return "\n".join(
        [
            "# Input-Hessian λ_max per MNIST test image: exact vs power (M1, CPU, float32)",
            "",
            f"M1 trained by {t['recipe']} (test accuracy {t['test_accuracy']:.3f}, weights "
            f"fingerprint {t['fingerprint']}); `batch_size={args.batch_size}`.",
            "",
            common.markdown_table(
                [
                    "method",
                    "images",
                    "1st call s (incl. compile)",
                    "warm s (median)",
                    "images/s, 1st call",
                    "images/s, warm",
                ],
                rows,
            ),
            "",
            f"exact has **{speed:.1f}×** the throughput of power (warm, images/s).",
            "",
            f"Agreement on the first {a['num_images']} images (relative difference of power to "
            f"exact): max **{a['max_rel_diff']:.1e}**, 99th percentile "
            f"{a['p99_rel_diff']:.1e}, median {a['median_rel_diff']:.1e}; "
            f"{a['count_rel_diff_over_1e-3']} images differ by more than 1e-3 and "
            f"{a['count_rel_diff_over_1e-6']} by more than 1e-6; power ≤ exact·(1+1e-6) on "
            f"{100 * a['fraction_power_le_exact_plus_1e-6']:.1f}% of images (worst image "
            f"#{a['worst_index']}: exact {a['worst_exact_power'][0]:.6g}, power "
            f"{a['worst_exact_power'][1]:.6g})."
            + (
                " Benchmark's own exact formula vs library exact: max relative difference "
                f"{d['max_rel_diff']:.1e}."
                if d
                else ""
            ),
            *common.footer(env, "benchmarks.input_hessian_throughput"),
        ]
    )


def main(argv=None):
    args = parse_args(argv)
    env = common.start(args, torch=False)
    variables, training = common.trained_m1(args)
    model = models.get("m1")
    x, y = hessjax.data.load("mnist", "test", data_dir=args.data_dir, limit=args.num_images)
    n, n_power = len(x), min(args.power_images, len(x))

    def run(method, xs, ys):
        return lambda: hessjax.input_hessian_eigenvalues(
            model.apply,
            variables,
            xs,
            ys,
            method=method,
            batch_size=args.batch_size,
            tol=args.power_tol,
            max_iters=args.power_max_iters,
            key=jax.random.key(args.seed),
        )

    timings = {}
    common.log(f"exact on {n} images ...")
    exact_fn = run("exact", x, y)
    if args.no_diagnostic:
        timings["exact"], exact = time_method(exact_fn, n, args.repeats)
    else:  # warm calls of exact and of the diagnostic alternate (same machine load)
        diag_fn = top_level_vmap_exact(model.apply, variables, x, args.batch_size)
        both = time_methods({"exact": exact_fn, "diagnostic": diag_fn}, n, args.repeats)
        (timings["exact"], exact), (timings["diagnostic"], diag) = both["exact"], both["diagnostic"]
        common.log(timings["diagnostic"])
    common.log(timings["exact"])
    common.log(f"power on {n_power} images ...")
    xp, yp = x[:n_power], y[:n_power]
    timings["power"], power = time_method(run("power", xp, yp), n_power, args.power_repeats)
    common.log(timings["power"])
    result = {
        "training": training,
        "timings": timings,
        "agreement_power_vs_exact": agreement(power, exact[:n_power]),
    }
    if not args.no_diagnostic:
        result["agreement_diagnostic_vs_exact"] = agreement(diag, exact)
    md = markdown(result, env, args)
    result["exact_values_summary"] = {
        "min": float(exact.min()),
        "median": float(np.median(exact)),
        "max": float(exact.max()),
    }
    common.finish("benchmarks.input_hessian_throughput", args, env, md, result, load_at_end=True)


if __name__ == "__main__":
    main()
