"""One command for a GPU/TPU (or CPU) machine: every speed comparison with the peer, one JSON.

Runs, each as its own process with the peer (PyTorch, PyHessian) on the same accelerator
(``--torch-device``, default: CUDA when PyTorch sees one) and JAX on its default backend:

1. ``hvp_vs_grad``: HVP / gradient time on one batch of 128, M1 and C1;
2. ``hvp_over_dataset``: the default Hessian operator's HVP over 1,000 images at batch sizes
   100–1,000 against PyTorch's double backward, M1 and C1;
3. ``matmul_precision``: the data-set HVP and λ_max of M1 and C1 under JAX's default float32
   matmul precision (TF32 on recent NVIDIA GPUs), TF32 and full float32, and PyTorch's settings;
4. ``train_epoch``: two epochs of C1 on all 50,000 CIFAR-10 training images at batch 128;
5. ``top_eigenvalues_vs_pyhessian``: top-20 of M1 on 2,000 MNIST images against PyHessian;
6. ``input_hessian_throughput``: per-image input-Hessian λ_max over 10,000 MNIST test images.

then writes ``results/<out>.json`` (every sub-benchmark's full JSON, its command, exit status
and wall time, and a summary) and ``results/<out>.md`` (the summary table). ``--out`` defaults
to ``accelerator_<jax backend>``. A sub-benchmark that fails or passes ``--step-timeout`` is
recorded as such and the others still run. ``--deadline S`` bounds the whole run (a lease on a
lent machine): each step gets at most what is left, a step that would start with under a minute
left is skipped, and ``results/<out>.{json,md}`` are rewritten after every step, so a run cut
short keeps what it measured.

    python -m benchmarks.accelerator                    # paper scale (~15 min on one GPU)
    python -m benchmarks.accelerator --preset quick     # the same steps, small (CPU check)
    python -m benchmarks.accelerator --only train_epoch,hvp_vs_grad
    python -m benchmarks.accelerator --deadline 480     # what fits in 8 minutes, in order

``--preset quick`` exists so the command can be checked on a laptop CPU in a few minutes; its
numbers are not the benchmark's.
"""

from __future__ import annotations

import time
from typing import Any

from benchmarks import common

#: Sub-benchmark -> its arguments, per preset (``--torch-device`` and ``--out`` are added).
PRESETS: dict[str, dict[str, list[str]]] = {
    "paper": {
        "hvp_vs_grad": ["--models", "m1,c1", "--batch-size", "128"],
        "hvp_over_dataset": ["--models", "m1,c1", "--num-images", "1000"],
        "matmul_precision": ["--models", "m1,c1", "--num-images", "1000", "--batch-size", "1000"],
        "train_epoch": ["--model", "c1", "--images", "50000", "--epochs", "2"],
        "top_eigenvalues_vs_pyhessian": [
            *("--num-images", "2000", "--batch-size", "1000", "--top-n", "20"),
            *("--power-tols", "", "--rounds", "3"),
        ],
        "input_hessian_throughput": ["--num-images", "10000"],
    },
    "quick": {
        "hvp_vs_grad": [
            *("--models", "m1,c1", "--repeats", "3", "--number", "1", "--slow-repeats", "1")
        ],
        "hvp_over_dataset": [
            *("--models", "m1", "--num-images", "200", "--batch-sizes", "100,200"),
            *("--repeats", "2"),
        ],
        "matmul_precision": [
            *("--models", "m1", "--num-images", "200", "--batch-size", "200", "--repeats", "2")
        ],
        "train_epoch": ["--model", "c1", "--images", "512", "--epochs", "2"],
        "top_eigenvalues_vs_pyhessian": [
            *("--num-images", "200", "--batch-size", "200", "--top-n", "3", "--power-tols", ""),
            *("--linearized-tols", "", "--no-reference", "--rounds", "1", "--hvp-repeats", "1"),
            *("--train-images", "2000"),
        ],
        "input_hessian_throughput": [
            *("--num-images", "500", "--power-images", "20", "--repeats", "1"),
            *("--no-diagnostic", "--train-images", "2000"),
        ],
    },
}

#: The sub-benchmarks that compare with PyTorch (they get ``--torch-device``).
USES_TORCH = {
    "hvp_vs_grad",
    "hvp_over_dataset",
    "matmul_precision",
    "top_eigenvalues_vs_pyhessian",
    "train_epoch",
}
#: A step that would start with less of ``--deadline`` left than this is skipped.
MIN_STEP_SECONDS = 60.0


def parse_args(argv=None):
    p = common.argument_parser(__doc__)
    p.add_argument("--preset", choices=sorted(PRESETS), default="paper")
    p.add_argument("--only", default="", help="comma-separated sub-benchmarks (default: all)")
    p.add_argument(
        "--torch-device", default="auto", help="cpu, cuda, cuda:N or auto (CUDA if visible)"
    )
    p.add_argument("--step-timeout", type=float, default=3600.0, help="seconds per benchmark")
    p.add_argument(
        "--deadline", type=float, default=None, help="seconds for the whole run (default: none)"
    )
    p.add_argument("--data-dir", default=common.DEFAULT_DATA_DIR)
    p.add_argument(
        "--out", default=None, help="results/<out>.{json,md}; default accelerator_<backend>"
    )
    return p.parse_args(argv)


# ----------------------------------------------------------------------------- summaries


def _get(d: Any, *path: Any, default: Any = None) -> Any:
    for key in path:
        try:
            d = d[key]
        except (KeyError, IndexError, TypeError):
            return default
    return d


def summarize(name: str, res: dict[str, Any]) -> list[tuple[str, Any]]:
    """The headline numbers of one sub-benchmark's JSON as (label, value) rows."""
    rows: list[tuple[str, Any]] = []
    if name == "hvp_vs_grad":
        for r in res.get("results", []):
            m = r["model"].upper()

            def med(key, r=r):
                return _get(r, "ratios", key, "median")

            rows += [
                (f"{m} HVP / gradient (hessjax.hvp)", med("jax_hvp_fwd_rev/jax_grad")),
                (f"{m} HVP / gradient (linearised operator)", med("operator_linearized/jax_grad")),
                (
                    f"{m} HVP / gradient (PyTorch double backward)",
                    med("torch_hvp_double_backward/torch_grad"),
                ),
                (
                    f"{m} hessjax HVP / PyTorch HVP",
                    med("jax_hvp_fwd_rev/torch_hvp_double_backward"),
                ),
                (f"{m} hessjax gradient / PyTorch gradient", med("jax_grad/torch_grad")),
            ]
    elif name == "hvp_over_dataset":
        for model in ("m1", "c1"):
            for r in _get(res, model, "rows", default=[]):
                rows.append(
                    (
                        f"{model.upper()} data-set HVP at batch_size {r['batch_size']}: "
                        "hessjax default / PyTorch at its best chunking",
                        r.get("default_over_torch_best"),
                    )
                )
    elif name == "matmul_precision":
        for model, variants in _get(res, "models", default={}).items():
            m = model.upper()
            f32 = _get(variants, "jax@float32", "hvp_ms")
            for key in ("jax@default", "jax@tensorfloat32", "hessjax"):
                r = variants.get(key)
                if not r:
                    continue
                rows += [
                    (f"{m} {key}: HVP rel. error vs float32", r.get("hvp_rel_error")),
                    (f"{m} {key}: λ_max rel. error vs float32", r.get("lambda_max_rel_error")),
                    (f"{m} {key}: HVP time / float32's", r["hvp_ms"] / f32 if f32 else None),
                ]
            for key in ("torch@default", "torch@f32"):
                r = variants.get(key)
                if r:
                    rows += [
                        (f"{m} {key}: HVP rel. error vs JAX float32", r.get("hvp_rel_error")),
                        (f"{m} JAX float32 HVP / {key} HVP", f32 / r["hvp_ms"] if f32 else None),
                    ]
    elif name == "top_eigenvalues_vs_pyhessian":
        k = _get(res, "args", "top_n")
        for h in res.get("hessjax", []):
            label = f"top-{k} {h['method']} tol {h['tol']:g} vs PyHessian"
            rows += [
                (f"{label}: speed-up warm", h.get("speedup_warm_median")),
                (f"{label}: speed-up incl. compilation", h.get("speedup_first_call")),
                (
                    f"{label}: HVPs (hessjax / PyHessian)",
                    f"{h.get('num_matvecs')} / {_get(res, 'pyhessian', 'num_matvecs')}",
                ),
            ]
    elif name == "input_hessian_throughput":
        for key in ("exact", "power"):
            t = _get(res, "timings", key)
            if t:
                rows.append(
                    (
                        f"input-Hessian λ_max, {key}: images/s warm (of {t['num_images']})",
                        t.get("images_per_second_warm"),
                    )
                )
    elif name == "train_epoch":
        for e in res.get("epochs", []):
            rows.append(
                (
                    f"{_get(res, 'args', 'model', default='').upper()} epoch {e['epoch']} on "
                    f"{_get(res, 'steps_per_epoch')} steps: hessjax / PyTorch examples/s "
                    f"({e['hessjax_examples_per_s']:.0f} / {e['torch_examples_per_s']:.0f})",
                    e["hessjax_over_torch_examples_per_s"],
                )
            )
    return rows


def write_report(args, env: dict[str, Any], steps: dict[str, Any], *, final: bool) -> None:
    """``results/<args.out>.{json,md}``: the summary table and every step's JSON (after each
    step, so that a run cut short keeps what it measured; printed only when ``final``)."""
    lines = [f"# Accelerator benchmark ({env['jax_backend']}, preset {args.preset})", ""]
    table = []
    for name, step in steps.items():
        table.append([f"**{name}**", f"{step['status']}, {step['wall_seconds']:.0f} s"])
        table += [[label, value] for label, value in step.get("summary", [])]
    lines.append(common.markdown_table(["measure", "value"], table))
    if args.preset == "quick":
        lines += ["", "Preset `quick`: a check that every step runs, not the benchmark's numbers."]
    lines += common.footer(env, "benchmarks.accelerator")
    payload = {"preset": args.preset, "complete": final, "steps": steps}
    if final:
        common.finish(
            "benchmarks.accelerator", args, env, "\n".join(lines), payload, load_at_end=True
        )
    else:
        common.write_results(args.out, {"environment": env, **payload}, "\n".join(lines))


def main(argv=None):
    args = parse_args(argv)
    preset = PRESETS[args.preset]
    names = [n.strip() for n in args.only.split(",") if n.strip()] or list(preset)
    unknown = [n for n in names if n not in preset]
    if unknown:
        raise SystemExit(f"unknown sub-benchmark(s) {unknown}; choose from {', '.join(preset)}")
    env = common.environment()
    common.log(common.environment_line(env))
    out = args.out or f"accelerator_{env['jax_backend']}"
    results_dir = common.RESULTS_DIR / out
    args.out = out
    start = time.perf_counter()
    steps: dict[str, Any] = {}
    for name in names:
        timeout = args.step_timeout
        if args.deadline is not None:
            timeout = min(timeout, args.deadline - (time.perf_counter() - start))
        if timeout < MIN_STEP_SECONDS:
            steps[name] = {"status": "skipped (--deadline)", "wall_seconds": 0.0}
            common.log(f"[{name}] skipped: {timeout:.0f} s of --deadline left")
            continue
        argv_ = [*preset[name], "--data-dir", args.data_dir, "--out", str(results_dir / name)]
        if name in USES_TORCH:
            argv_ += ["--torch-device", args.torch_device]
        step = common.run_module(name, argv_, timeout=timeout)
        if "results" in step:
            step["summary"] = summarize(name, step["results"])
        steps[name] = step
        common.log(f"[{name}] {step['status']} in {step['wall_seconds']:.0f} s")
        write_report(args, env, steps, final=False)
    write_report(args, env, steps, final=True)
    failed = [n for n, s in steps.items() if s["status"] != "ok"]
    if failed:
        raise SystemExit(f"failed: {', '.join(failed)} (see results/{out}.md)")


if __name__ == "__main__":
    main()
