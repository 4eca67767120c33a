"""Does an XLA:CPU flag close the gradient / HVP gap to PyTorch? (issue 12, item 3)

Runs ``benchmarks.hvp_vs_grad`` (M1 and C1 at batch 128, JAX and PyTorch timed in paired
rounds in one process) once per ``XLA_FLAGS`` variant, each in its own process (XLA reads its
flags once), and tabulates, per variant and model, the medians of the paired ratios

* JAX gradient / PyTorch gradient,
* ``hessjax.hvp`` (forward-over-reverse) / PyTorch double backward,
* the linearised operator's HVP / PyTorch double backward,

so a variant that helps shows as a lower ratio than the first (unset) row. Paired ratios are
what survives a shared machine's load; absolute times are in each variant's JSON.

    python -m benchmarks.xla_cpu_flags                     # the variants below, ~10 min
    python -m benchmarks.xla_cpu_flags --variants "--xla_cpu_use_xnnpack=true"
"""

from __future__ import annotations

from benchmarks import common

#: ``XLA_FLAGS`` values tried by default ("" = XLA's defaults), all present in jaxlib 0.10.
VARIANTS = [
    "",
    "--xla_cpu_use_xnnpack=true",
    "--xla_cpu_use_onednn=true",
    "--xla_cpu_experimental_onednn_custom_call=true",
    "--xla_cpu_enable_fast_math=true",
    "--xla_cpu_use_thunk_runtime=false",
]

RATIOS = {
    "gradient": "jax_grad/torch_grad",
    "hessjax.hvp / PyTorch HVP": "jax_hvp_fwd_rev/torch_hvp_double_backward",
}


def parse_args(argv=None):
    p = common.argument_parser(__doc__)
    p.add_argument("--variants", default=None, help="';'-separated XLA_FLAGS values")
    p.add_argument("--models", default="m1,c1")
    p.add_argument("--repeats", type=int, default=7, help="paired rounds per variant")
    p.add_argument("--torch-threads", type=int, default=None, help="default: all cores")
    p.add_argument("--data-dir", default=common.DEFAULT_DATA_DIR)
    p.add_argument("--out", default="xla_cpu_flags", help="results/<out>.{json,md}")
    return p.parse_args(argv)


def run_variant(flags: str, index: int, args) -> dict:
    """``hvp_vs_grad`` under ``XLA_FLAGS=flags``: :func:`benchmarks.common.run_module`'s record
    with ``flags``."""
    argv = [
        *("--models", args.models, "--repeats", str(args.repeats), "--number", "1"),
        *("--slow-repeats", "1", "--data-dir", args.data_dir, "--torch-device", "cpu"),
        *("--out", str(common.RESULTS_DIR / args.out / f"variant{index}")),
    ]
    if args.torch_threads:
        argv += ["--torch-threads", str(args.torch_threads)]
    return {"flags": flags, **common.run_module("hvp_vs_grad", argv, env={"XLA_FLAGS": flags})}


def main(argv=None):
    args = parse_args(argv)
    variants = VARIANTS if args.variants is None else args.variants.split(";")
    env = common.environment()
    common.log(common.environment_line(env))
    runs = [run_variant(flags, i, args) for i, flags in enumerate(variants)]
    rows = []
    for run in runs:
        if "results" not in run:
            rows.append([run["flags"] or "(unset)", "", run["status"], "", ""])
            continue
        for r in run["results"]["results"]:
            med = {k: r["ratios"][key]["median"] for k, key in RATIOS.items()}
            lin = r["samples_seconds"]["operator_linearized"]
            tor = r["samples_seconds"]["torch_hvp_double_backward"]
            lin_ratio = common.median([a / b for a, b in zip(lin, tor, strict=True)])
            ms = r["median_seconds"]
            rows.append(
                [
                    run["flags"] or "(unset)",
                    r["model"].upper(),
                    f"{med['gradient']:.2f} ({ms['jax_grad'] * 1e3:.0f} / "
                    f"{ms['torch_grad'] * 1e3:.0f} ms)",
                    f"{med['hessjax.hvp / PyTorch HVP']:.2f}",
                    f"{lin_ratio:.2f}",
                ]
            )
    headers = [
        "XLA_FLAGS",
        "model",
        "JAX / PyTorch gradient (ms)",
        "hessjax.hvp / PyTorch HVP",
        "linearised HVP / PyTorch HVP",
    ]
    md = "\n".join(
        [
            "# XLA:CPU flags against PyTorch (batch 128, paired medians)",
            "",
            common.markdown_table(headers, rows),
            *common.footer(env, "benchmarks.xla_cpu_flags"),
        ]
    )
    common.finish("benchmarks.xla_cpu_flags", args, env, md, {"variants": runs}, load_at_end=True)


if __name__ == "__main__":
    main()
