"""What a Lanczos solve and a Hessian operator cost beyond their HVPs: compilation on the first
call and the solver's own work per step, now against the previous implementation.

Three parts, each variant in a fresh process (compilation caches are per process), variants
alternating over ``--rounds``:

* ``solver``: ``hessjax.eigenvalues(k=10)`` on M1's parameter structure (1,256,080 float32) with a
  compiled diagonal matvec (~1 ms, so the time is the solver's; its output is committed to the
  device, as a Hessian operator's is), run for exactly ``--steps`` steps (28: what top-10 of M1
  on 1,000 images takes).
* ``operator``: ``hessian_operator(loss, M1 params, 1,000 MNIST images, batch_size=1000)``
  (linearised by default), then its first and a warm HVP.
* ``inside``: where a warm top-10 solve's time goes on the real problem of
  ``benchmarks.top_eigenvalues_vs_pyhessian`` (M1 trained 1 epoch, 1,000 images,
  ``batch_size=1000``): the operator is wrapped in a timer (each HVP blocked on), so the solve's
  wall splits into HVP time and the solver's own work per step (``--warm`` solves).

``current`` is the library as it is. ``previous`` rebuilds, by patching, the code before
2026-12-04: eager ``ravel_pytree`` / ``unravel`` around every matvec (one op per parameter leaf)
and an eager ``lanczos.init`` instead of ``hessjax.tree.flat_matvec``; host loops that do not
commit their first arguments (``hessjax._internal.committed`` / ``committed_like``), so the
Lanczos update and each batch HVP compile twice (uncommitted first call, committed later ones);
and batches of the cap whatever the tail (7 of 128 and a tail of 104 instead of 8 of 125: two
shapes to compile).

    python -m benchmarks.solver_overhead                    # all parts, 3 rounds (~5 min)
"""

from __future__ import annotations

import json
import subprocess
import sys
import tempfile
import time

import jax
import jax.numpy as jnp
import numpy as np
from jax.flatten_util import ravel_pytree

from benchmarks import common

PARTS = {
    "solver": ("current", "previous"),
    "operator": ("current", "previous"),
    "inside": ("current",),
}


def parse_args(argv=None):
    p = common.argument_parser(__doc__)
    p.add_argument("--parts", default="solver,operator,inside")
    p.add_argument("--rounds", type=int, default=3, help="fresh processes per variant")
    p.add_argument("--steps", type=int, default=28, help="Lanczos steps per solve")
    p.add_argument("--warm", type=int, default=3, help="warm calls per process (median)")
    p.add_argument("--num-images", type=int, default=1000)
    p.add_argument("--variant", default=None, help="internal: one PART:VARIANT in this process")
    common.add_run_args(p, "solver_overhead", trains_m1=True)
    return p.parse_args(argv)


def _use_previous_code() -> None:
    """Patch the library back to its state before 2026-12-04 (see the module docstring)."""
    from hessjax import batching, lanczos, loops, tree

    def flat_matvec(matvec, like):
        unravel = ravel_pytree(like)[1]
        return lambda x: ravel_pytree(matvec(unravel(x)))[0].astype(x.dtype)

    tree.flat_matvec = flat_matvec
    tree.unravel_rows = lambda rows, like: jax.vmap(ravel_pytree(like)[1])(rows)
    tree.flat_spec = lambda like: ravel_pytree(like)[0]
    lanczos.init = lanczos.init.__wrapped__
    loops.committed_like = lambda t, ref: t
    batching.committed = lambda t: t
    batching.fast_batch_size = lambda batch_size, mesh=None, num_samples=None: min(
        int(batch_size), batching.CPU_SAMPLES_PER_DEVICE
    )


def _solver(args, variant: str) -> dict:
    import hessjax
    from hessjax import models

    if variant == "previous":
        _use_previous_code()
    params = models.init("m1", jax.random.key(0))["params"]
    device = jax.devices()[0]  # committed, like a Hessian operator's output
    scales = jax.tree.map(
        lambda p: jax.device_put(jnp.linspace(0.0, 1.0, p.size).reshape(p.shape), device), params
    )
    matvec = jax.jit(lambda v: jax.tree.map(jnp.multiply, v, scales))
    common.block(matvec(params))
    mv_seconds = common.median([common.timed(lambda: matvec(params))[0] for _ in range(20)])

    def solve():  # tol unreachable: exactly --steps steps
        return hessjax.eigenvalues(
            matvec, params, k=10, tol=1e-30, max_matvecs=args.steps, key=jax.random.key(1)
        )

    first, out = common.timed(solve)
    warm = common.median([common.timed(solve)[0] for _ in range(args.warm)])
    steps = int(out.num_matvecs)
    return dict(
        first_call_seconds=first,
        warm_seconds=warm,
        matvec_seconds=mv_seconds,
        steps=steps,
        overhead_per_step_seconds=(warm - steps * mv_seconds) / steps,
        compile_seconds=first - warm,
    )


def _operator(args, variant: str) -> dict:
    import hessjax
    from hessjax import models

    if variant == "previous":
        _use_previous_code()
    model = models.get("m1")
    variables = models.init("m1", jax.random.key(0))
    x, y = hessjax.data.load("mnist", "train", data_dir=args.data_dir, limit=args.num_images)
    loss_fn = hessjax.make_loss_fn(model.apply, variables)
    v = common.tree_random_normal(jax.random.key(2), variables["params"])
    tic = time.perf_counter()
    op = hessjax.hessian_operator(loss_fn, variables["params"], (x, y), batch_size=len(x))
    first_hvp, hv = common.timed(lambda: op(v))
    build = time.perf_counter() - tic - first_hvp
    warm = common.median([common.timed(lambda: op(v))[0] for _ in range(args.warm)])
    full = jax.tree_util.tree_leaves(op.linear.full if op.is_linearized else op.full)[0]
    return dict(
        build_seconds=build,
        first_hvp_seconds=first_hvp,
        warm_hvp_seconds=warm,
        batches=f"{full.shape[0]} x {full.shape[1]} + tail {op.tail_size}",
        linearized=op.is_linearized,
        hv_probe=_probe(hv),
    )


def _probe(hv) -> float:
    """``⟨Hv, u⟩`` in float64 for a fixed random ``u``: sensitive to every entry's rounding."""
    flat = np.asarray(ravel_pytree(hv)[0], np.float64)
    return float(flat @ np.random.default_rng(0).standard_normal(flat.size))


def _inside(args, variant: str) -> dict:
    import hessjax
    from hessjax import models

    variables, _ = common.trained_m1(args)
    x, y = hessjax.data.load("mnist", "train", data_dir=args.data_dir, limit=args.num_images)
    loss_fn = hessjax.make_loss_fn(models.get("m1").apply, variables)
    op = hessjax.hessian_operator(loss_fn, variables["params"], (x, y), batch_size=len(x))
    hvp_seconds: list[float] = []

    def timed_op(v):
        seconds, out = common.timed(lambda: op(v))
        hvp_seconds.append(seconds)
        return out

    def solve():
        return hessjax.eigenvalues(
            timed_op, variables["params"], k=10, tol=1e-3, key=jax.random.key(args.seed)
        )

    common.timed(solve)  # compiles
    alone = common.median([common.timed(lambda: op(variables["params"]))[0] for _ in range(3)])
    walls, inside, steps = [], [], 0
    for _ in range(args.warm):
        hvp_seconds.clear()
        wall, out = common.timed(solve)
        steps = int(out.num_matvecs)
        walls.append(wall)
        inside.append(sum(hvp_seconds))
    wall, hvps = common.median(walls), common.median(inside)
    return dict(
        steps=steps,
        wall_seconds=wall,
        hvp_seconds_in_solve=hvps,
        hvp_alone_seconds=alone,
        solver_seconds_per_step=(wall - hvps) / steps,
        hvp_in_solve_seconds_each=hvps / steps,
    )


def _one_variant(args) -> None:
    part, variant = args.variant.split(":")
    result = {"solver": _solver, "operator": _operator, "inside": _inside}[part](args, variant)
    print("RESULT " + json.dumps(result))


def _spawn(args, part: str, variant: str) -> dict:
    cmd = [sys.executable, "-m", "benchmarks.solver_overhead", "--variant", f"{part}:{variant}"]
    cmd += ["--steps", str(args.steps), "--warm", str(args.warm)]
    cmd += ["--num-images", str(args.num_images), "--data-dir", args.data_dir]
    cmd += ["--seed", str(args.seed)]
    with tempfile.TemporaryFile("w+") as log:
        proc = subprocess.run(cmd, stdout=subprocess.PIPE, stderr=log, text=True, check=False)
        if proc.returncode:
            log.seek(0)
            raise SystemExit(f"{part}:{variant} failed:\n{log.read()[-3000:]}")
    line = [ln for ln in proc.stdout.splitlines() if ln.startswith("RESULT ")][-1]
    return json.loads(line[len("RESULT ") :])


def main(argv=None):
    args = parse_args(argv)
    if args.variant:
        return _one_variant(args)
    env = common.start(args, torch=False)
    parts = [p.strip() for p in args.parts.split(",") if p.strip()]
    runs = {p: {v: [] for v in PARTS[p]} for p in parts}
    for rnd in range(args.rounds):
        for part in parts:
            for variant in PARTS[part]:
                common.log(f"round {rnd + 1}/{args.rounds}: {part} {variant} ...")
                runs[part][variant].append(_spawn(args, part, variant))
                common.log(runs[part][variant][-1])
    med = lambda part, variant, key: common.median([r[key] for r in runs[part][variant]])
    sections = [
        f"# Solver and operator overhead beyond the HVPs ({args.rounds} fresh processes each)"
    ]
    if "solver" in runs:
        keys = [
            "first_call_seconds",
            "warm_seconds",
            "compile_seconds",
            "overhead_per_step_seconds",
        ]
        rows = [[v, *(med("solver", v, k) for k in keys)] for v in PARTS["solver"]]
        sections += [
            f"Lanczos, k = 10, {args.steps} steps on M1's 1,256,080 parameters, a ~"
            f"{1e3 * med('solver', 'current', 'matvec_seconds'):.1f} ms diagonal matvec "
            "(medians over processes):",
            common.markdown_table(
                ["variant", "1st call s", "warm s", "compile s", "per step s"], rows
            ),
        ]
    if "operator" in runs:
        keys = ["build_seconds", "first_hvp_seconds", "warm_hvp_seconds"]
        rows = [
            [v, runs["operator"][v][0]["batches"], *(med("operator", v, k) for k in keys)]
            for v in PARTS["operator"]
        ]
        probes = [r["hv_probe"] for v in PARTS["operator"] for r in runs["operator"][v]]
        sections += [
            f"`hessian_operator` of M1 (untrained) on {args.num_images} MNIST images, "
            "`batch_size=N`, default linearisation (medians over processes):",
            common.markdown_table(
                ["variant", "batches", "build s", "1st HVP s", "warm HVP s"], rows
            ),
            "Agreement: ⟨Hv, u⟩ (float64, fixed random u) spreads by "
            f"{(max(probes) - min(probes)) / abs(common.median(probes)):.1e} relative over all "
            "variants and processes.",
        ]
    if "inside" in runs:
        r = runs["inside"]["current"]
        keys = ["steps", "wall_seconds", "hvp_seconds_in_solve", "hvp_in_solve_seconds_each"]
        keys += ["hvp_alone_seconds", "solver_seconds_per_step"]
        rows = [[i + 1, *(q[k] for k in keys)] for i, q in enumerate(r)]
        sections += [
            "Inside a warm top-10 Lanczos solve (tol 1e-3) of trained M1 on "
            f"{args.num_images} MNIST images, `batch_size=N` (one row per process, median of "
            f"{args.warm} solves):",
            common.markdown_table(
                [
                    "process",
                    "HVPs",
                    "wall s",
                    "HVPs s",
                    "s / HVP in the solve",
                    "s / HVP alone",
                    "solver s / step",
                ],
                rows,
            ),  # fmt: skip
        ]
    md = "\n\n".join(sections + common.footer(env, "benchmarks.solver_overhead"))
    common.finish("benchmarks.solver_overhead", args, env, md, {"runs": runs}, load_at_end=True)


if __name__ == "__main__":
    main()
