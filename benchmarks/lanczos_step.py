"""Cost of one Lanczos step beyond its matvec: block Gram-Schmidt over the filled basis rows
(``hessjax.lanczos.absorb``) against one pass over the whole preallocated basis (the previous
implementation), on a vector the size of M1 (1,256,080 float32 parameters).

A step at index ``j`` orthogonalises the new vector against ``q_0 .. q_j``. The preallocated basis
has ``max_matvecs + 1`` rows (161 for top-20 with the default ``max(8k, 64)``), so a pass over all
rows reads ~0.8 GB however few are filled; the block loop reads ``⌈(j+1)/8⌉·8`` rows. Both
variants run in turn at each ``j`` (paired), medians of ``--repeats`` calls.

    python -m benchmarks.lanczos_step                 # n = 1,256,080, 160 steps of room
"""

from __future__ import annotations

import argparse

import jax
import jax.numpy as jnp

from benchmarks import common
from hessjax import lanczos


def parse_args(argv=None):
    p = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    p.add_argument("--n", type=int, default=1_256_080, help="vector length (M1's parameters)")
    p.add_argument("--room", type=int, default=160, help="basis rows preallocated (max_matvecs)")
    p.add_argument("--steps", default="1,8,20,40,60,100", help="step indices j to time")
    p.add_argument("--repeats", type=int, default=7)
    p.add_argument("--out", default="lanczos_step")
    return p.parse_args(argv)


@jax.jit
def _whole_basis_pass(basis, w):
    """The previous step's Gram-Schmidt: one classical pass against every preallocated row."""
    return lanczos._orthogonalize(basis, w, passes=1)


@jax.jit
def _filled_rows(basis, w, j):
    return lanczos._orthogonalize_rows(basis, w, j + 1)


def main(argv=None):
    args = parse_args(argv)
    env = common.environment()
    key = jax.random.key(0)
    basis = jax.random.normal(key, (args.room + 1, args.n), jnp.float32)
    w = jax.random.normal(jax.random.fold_in(key, 1), (args.n,), jnp.float32)
    rows = []
    for j in (int(s) for s in args.steps.split(",")):
        times = {"whole": [], "filled": []}
        common.block(_whole_basis_pass(basis, w))
        common.block(_filled_rows(basis, w, j))
        for _ in range(args.repeats):
            times["whole"].append(common.timed(lambda: _whole_basis_pass(basis, w))[0])
            times["filled"].append(common.timed(lambda j=j: _filled_rows(basis, w, j))[0])
        whole, filled = common.median(times["whole"]), common.median(times["filled"])
        rows.append([j, 1e3 * whole, 1e3 * filled, whole / filled])
    headers = ["step j", "whole basis ms", "filled rows ms (block loop)", "speed-up"]
    md = "\n\n".join(
        [
            f"# Lanczos Gram-Schmidt per step: n = {args.n:,}, room for {args.room} steps",
            common.markdown_table(headers, rows),
            f"Medians of {args.repeats} paired calls. {common.environment_line(env)}",
            f"Command: `{common.command_line('benchmarks.lanczos_step')}`",
        ]
    )
    print(md)
    payload = {"args": vars(args), "environment": env, "headers": headers, "rows": rows}
    common.write_results(args.out, payload, md)


if __name__ == "__main__":
    main()
