"""Convolution kernels per layer: XLA's, hessjax's patches form, and PyTorch's (oneDNN on CPU).

For every convolution shape of the paper's models (``--models``: m1, c1, c2/c3, cr), at batch
``--batch`` (default 128, the CPU chunk of hessjax's operators), float32, the three parts that
training and HVPs run:

* ``forward``: the convolution;
* ``grad_input``: its VJP w.r.t. the input (a transposed convolution);
* ``grad_kernel``: its VJP w.r.t. the kernel,

each jitted: ``hessjax.conv.conv2d(..., implementation="xla")`` (``lax.conv_general_dilated``),
``implementation="patches"`` (strided slices + one GEMM, :mod:`hessjax.conv`), and
``torch.nn.functional.conv2d`` / ``torch.nn.grad.conv2d_input`` / ``conv2d_weight`` in NCHW. Times
are medians of ``--repeats`` paired samples (each the mean of 2 calls; the three alternate
within a sample). The summary row per layer adds the three parts and names what
``implementation="auto"`` picks on this backend (``hessjax.conv.choose``), so the rule is checked
against the measurement it was set from.

    python -m benchmarks.conv_kernels                      # every model, batch 128
    python -m benchmarks.conv_kernels --models m1 --batch 1000
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np

from benchmarks import common
from hessjax import conv

PARTS = ("forward", "grad_input", "grad_kernel")
IMPLS = ("xla", "patches", "torch")

#: model -> [(label, input HWC, features, kernel, stride, padding)], one row per distinct shape.
LAYERS = {
    "m1": [
        ("conv1 5x5/20 s2", (28, 28, 1), 20, 5, 2, 2),
        ("conv2 5x5/50 s2", (14, 14, 20), 50, 5, 2, 2),
    ],
    "c1": [
        ("conv1 5x5/64", (32, 32, 3), 64, 5, 1, 2),
        ("conv2 5x5/64", (16, 16, 64), 64, 5, 1, 2),
    ],
    "c2": [
        ("conv1 3x3/64 valid", (32, 32, 3), 64, 3, 1, 0),
        ("conv2 3x3/64 valid", (30, 30, 64), 64, 3, 1, 0),
        ("conv3 3x3/128 valid", (14, 14, 64), 128, 3, 1, 0),
        ("conv4 3x3/128 valid", (12, 12, 128), 128, 3, 1, 0),
    ],
    "cr": [
        ("3x3/64 (stem 3 in)", (32, 32, 3), 64, 3, 1, 1),
        ("3x3/64", (32, 32, 64), 64, 3, 1, 1),
        ("3x3/128 s2", (32, 32, 64), 128, 3, 2, 1),
        ("1x1/128 s2 shortcut", (32, 32, 64), 128, 1, 2, 0),
        ("3x3/256 at 8x8", (8, 8, 256), 256, 3, 1, 1),
    ],
}


def parse_args(argv=None):
    p = common.argument_parser(__doc__)
    p.add_argument("--models", default="m1,c1,c2,cr", help="comma-separated: m1, c1, c2, cr")
    p.add_argument("--batch", type=int, default=128)
    p.add_argument("--repeats", type=int, default=7)
    common.add_run_args(p, "conv_kernels", torch=True)
    return p.parse_args(argv)


def layer_functions(rng, batch, hwc, features, ks, stride, pad):
    """{impl: {part: zero-argument callable}} for ``xla``, ``patches`` and ``torch``."""
    import torch

    from benchmarks import torch_models

    x = rng.standard_normal((batch, *hwc), dtype=np.float32)
    kern = rng.standard_normal((ks, ks, hwc[-1], features), dtype=np.float32) * 0.1
    xj, kj = jnp.asarray(x), jnp.asarray(kern)
    out_shape = jax.eval_shape(lambda a, b: conv.conv2d(a, b, stride, pad, "xla"), xj, kj).shape
    gj = jnp.asarray(rng.standard_normal(out_shape, dtype=np.float32))
    fns = {}
    for impl in ("xla", "patches"):

        def c(a, b, impl=impl):
            return conv.conv2d(a, b, stride, pad, impl)

        fwd = jax.jit(c)
        d_in = jax.jit(lambda a, b, g, c=c: jax.vjp(lambda u: c(u, b), a)[1](g)[0])
        d_k = jax.jit(lambda a, b, g, c=c: jax.vjp(lambda u: c(a, u), b)[1](g)[0])
        fns[impl] = {
            "forward": lambda fwd=fwd: fwd(xj, kj),
            "grad_input": lambda d_in=d_in: d_in(xj, kj, gj),
            "grad_kernel": lambda d_k=d_k: d_k(xj, kj, gj),
        }
    xt, gt = torch_models.to_nchw(x), torch_models.to_nchw(np.asarray(gj))
    kt = torch_models.tensor(kern.transpose(3, 2, 0, 1))
    tgrad = torch.nn.grad
    fns["torch"] = {
        "forward": lambda: torch.nn.functional.conv2d(xt, kt, stride=stride, padding=pad),
        "grad_input": lambda: tgrad.conv2d_input(xt.shape, kt, gt, stride=stride, padding=pad),
        "grad_kernel": lambda: tgrad.conv2d_weight(xt, kt.shape, gt, stride=stride, padding=pad),
    }
    flops = 2.0 * np.prod(out_shape) * ks * ks * hwc[-1]
    return fns, flops


def time_layers(model, batch, repeats, seed=0):
    """One row per (layer, part) with ``xla_ms``, ``patches_ms``, ``torch_ms`` (medians)."""
    rng = np.random.default_rng(seed)
    rows = []
    for label, hwc, feat, ks, stride, pad in LAYERS[model]:
        fns, flops = layer_functions(rng, batch, hwc, feat, ks, stride, pad)
        for part in PARTS:
            for impl in fns:
                common.block(fns[impl][part]())
            samples = {impl: [] for impl in fns}
            for _ in range(repeats):
                for impl in fns:
                    samples[impl].append(common.per_call(fns[impl][part], 2))
            rows.append(
                {
                    "model": model,
                    "layer": label,
                    "input_nhwc": [batch, *hwc],
                    "features": feat,
                    "kernel": ks,
                    "stride": stride,
                    "part": part,
                    "gflop": flops / 1e9,
                    "auto_picks": conv.choose(stride),
                    **{f"{impl}_ms": 1e3 * common.median(s) for impl, s in samples.items()},
                    "patches_over_xla": float(
                        np.median(np.asarray(samples["patches"]) / np.asarray(samples["xla"]))
                    ),
                }
            )
            common.log(
                f"{model} {label} {part}: "
                + ", ".join(f"{impl} {rows[-1][f'{impl}_ms']:.1f} ms" for impl in fns)
            )
    return rows


def layer_sums(rows):
    """Per layer: the three parts added, per implementation (``rows``: per-part rows only)."""
    sums = {}
    for r in rows:
        key = (r["model"], r["layer"])
        if key not in sums:
            sums[key] = {**r, "part": "sum", **{f"{i}_ms": 0.0 for i in IMPLS}}
        for impl in IMPLS:
            sums[key][f"{impl}_ms"] += r[f"{impl}_ms"]
    for s in sums.values():
        s["patches_over_xla"] = s["patches_ms"] / s["xla_ms"]
    return list(sums.values())


def with_sums(part_rows):
    """``part_rows`` with each layer's sum row after its last part."""
    by_layer = {(r["model"], r["layer"]): r for r in layer_sums(part_rows)}
    out = []
    for r in part_rows:
        out.append(r)
        if r["part"] == PARTS[-1]:
            out.append(by_layer[(r["model"], r["layer"])])
    return out


def markdown_rows(rows):
    headers = [
        "model",
        "layer",
        "input NHWC",
        "part",
        "XLA ms",
        "patches ms",
        "torch ms",
        "patches / XLA",
        "`auto` picks",
    ]
    table = []
    for r in rows:
        bold = "**" if r["part"] == "sum" else ""
        table.append(
            [
                r["model"].upper(),
                r["layer"],
                "×".join(map(str, r["input_nhwc"])),
                f"{bold}{r['part']}{bold}",
                f"{r['xla_ms']:.1f}",
                f"{r['patches_ms']:.1f}",
                f"{r['torch_ms']:.1f}",
                f"{bold}{r['patches_over_xla']:.2f}{bold}",
                r["auto_picks"] if r["part"] == "sum" else "",
            ]
        )
    return common.markdown_table(headers, table)


def main(argv=None):
    args = parse_args(argv)
    env = common.start(args, torch=True)
    rows = []
    for model in [m.strip() for m in args.models.split(",") if m.strip()]:
        if model not in LAYERS:
            raise SystemExit(f"unknown model {model!r}; use {', '.join(LAYERS)}")
        rows += with_sums(time_layers(model, args.batch, args.repeats, args.seed))
    md = "\n".join(
        [
            f"# Convolution kernels per layer, batch {args.batch}, float32",
            "",
            markdown_rows(rows),
            "",
            f"Medians of {args.repeats} paired samples (each the mean of 2 calls). 'patches / XLA' "
            "is the median of the per-sample ratios (the 'sum' rows: ratio of the summed medians).",
            "",
            *common.footer(env, "benchmarks.conv_kernels"),
        ]
    )
    common.finish("benchmarks.conv_kernels", args, env, md, {"rows": rows}, load_at_end=True)


if __name__ == "__main__":
    main()
