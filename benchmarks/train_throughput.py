"""Training-step throughput (examples/s) of hessjax's TrainStep against an equivalent PyTorch loop.

M1 (MNIST) and C1 (CIFAR-10), float32, on CPU, at global batches 128 and 4,096 (``--batch-sizes``)
made of micro-batches of 128 (``--micro-batch-size``), as the paper trains every batch size:

* **hessjax**: ``hessjax.train.TrainStep(model.apply, make_optimizer(lr, 0.9, "constant"),
  micro_batch_size=128, host_loops=True)`` -- the CPU default: a Python loop calls one compiled,
  donated ``accumulate`` per micro-batch (BatchNorm in training mode with the micro-batch's own
  statistics, running statistics updated one micro-batch after the other, gradients summed),
  then one compiled ``apply_update`` (mean gradient, SGD + momentum). Inputs are numpy arrays in
  memory; each micro-batch is ``jax.device_put`` inside the step, as in ``hessjax.train.fit``.
* **PyTorch**: the twin of benchmarks/torch_models.py (same initial weights, ``model.train()``),
  ``torch.optim.SGD(lr, momentum=0.9)``; per step ``zero_grad``, then per micro-batch a forward
  pass, ``(loss / M).backward()`` (gradient accumulation), the loss and correct count kept as
  tensors (hessjax returns both too), then ``optimizer.step()``. Inputs are NCHW torch tensors
  in memory (micro-batches are views).
* context: the same hessjax step as one compiled program, ``lax.scan`` over the micro-batches
  (``host_loops=False``, the GPU/TPU default; ``HESSJAX_HOST_LOOPS=0``). XLA:CPU runs
  convolutions inside loop bodies far slower than at top level (BUILD_NOTES.md), so on CPU it is
  timed with few samples, and skipped (with an estimate ``M ×`` its batch-128 step time) when
  that estimate exceeds ``--scan-max-seconds``.

Equivalence, checked once per (model, batch) on the first step from the same weights on the same
batch: relative L2 difference of the updated parameters, of the update ``θ₁ − θ₀`` itself, of the
loss, and (C1) of the BatchNorm running statistics (PyTorch's running variance uses the unbiased
batch variance, Flax the biased one: a relative difference ~1e-5 there is that convention).

Timing: the first call is reported separately (hessjax: includes compilation). Then ``--repeats``
rounds (``--large-repeats`` for batches >= ``--large-batch``); in each round hessjax and PyTorch
each run ``k`` consecutive steps on successive batches of the first ``max(batch sizes)`` training
images (order alternates per round; JAX is waited for at the end of the ``k`` steps), with ``k``
chosen so a sample lasts about ``--sample-seconds``. Throughput = batch / (seconds per step); the
ratio hessjax / PyTorch is the median over rounds of the per-round ratio (paired, so the shared
machine's slow phases cancel). ``--breakdown`` adds per-layer convolution timings (forward,
input gradient, kernel gradient; XLA's kernels, hessjax's patches form and PyTorch's)
that explain where the C1 time goes.

    python -m benchmarks.train_throughput                       # defaults, ~10 min on 2 cores
    python -m benchmarks.train_throughput --models m1 --batch-sizes 128,1024 --repeats 15
    python -m benchmarks.train_throughput --models m1 --conv-implementation auto  # hessjax.conv
"""

from __future__ import annotations

import os
import time

import jax
import numpy as np

import hessjax
from benchmarks import common
from hessjax import models, train


def parse_args(argv=None):
    p = common.argument_parser(__doc__)
    p.add_argument("--models", default="m1,c1", help="comma-separated: m1, c1")
    p.add_argument("--batch-sizes", default="128,4096", help="comma-separated global batches")
    p.add_argument("--micro-batch-size", type=int, default=128)
    p.add_argument("--lr", type=float, default=0.01, help="SGD learning rate (momentum 0.9)")
    p.add_argument("--repeats", type=int, default=9, help="timing rounds (median over rounds)")
    p.add_argument("--large-repeats", type=int, default=3, help="rounds for large batches")
    p.add_argument("--large-batch", type=int, default=1024, help="'large' from this batch on")
    p.add_argument("--sample-seconds", type=float, default=0.5, help="target seconds per sample")
    p.add_argument("--scan-repeats", type=int, default=2, help="lax.scan samples (at most)")
    p.add_argument(
        "--scan-budget", type=float, default=60.0, help="fewer lax.scan samples past this (s)"
    )
    p.add_argument(
        "--scan-max-seconds",
        type=float,
        default=30.0,
        help="skip lax.scan when its estimated step time exceeds this (s)",
    )
    p.add_argument("--no-scan", action="store_true", help="skip the lax.scan context column")
    p.add_argument("--breakdown", action="store_true", help="per-layer conv timings, XLA vs torch")
    p.add_argument("--breakdown-repeats", type=int, default=7)
    p.add_argument(
        "--conv-implementation",
        default="xla",
        help="hessjax models' conv_implementation: xla (default), patches, auto (hessjax.conv)",
    )
    common.add_run_args(p, "train_throughput", torch=True)
    return p.parse_args(argv)


def _tree_sub(a, b):
    return jax.tree_util.tree_map(lambda u, v: np.asarray(u, np.float64) - v, a, b)


def _runner(step_fn, batches, wait):
    """``run(k)``: ``k`` steps on successive batches, then wait for the result."""
    cursor = [0]

    def run(k):
        out = None
        for _ in range(k):
            out = step_fn(*batches[cursor[0] % len(batches)])
            cursor[0] += 1
        wait(out)

    return run


def _seconds_per_step(run, k):
    start = time.perf_counter()
    run(k)
    return (time.perf_counter() - start) / k


def bench_config(name, batch, args, data, scan_step_128):
    m = args.micro_batch_size
    num_micro = batch // m
    if batch % m:
        raise SystemExit(f"batch {batch} is not a multiple of the micro-batch {m}")
    x, y = data
    model = models.get(name, conv_implementation=args.conv_implementation)
    variables = models.init(model, jax.random.key(args.seed))
    tx = train.make_optimizer(args.lr, 0.9, "constant")
    starts = range(0, len(y) - batch + 1, batch)
    batches = [(x[s : s + batch], y[s : s + batch]) for s in starts]
    from benchmarks import torch_models

    xt, yt = torch_models.to_nchw(x), torch_models.labels(y)
    tbatches = [(xt[s : s + batch], yt[s : s + batch]) for s in starts]

    p0 = common.host_copy(variables["params"])
    s0 = common.host_copy(variables.get("batch_stats", {}))
    host = common.JaxLoop(model, variables, tx, m, args.seed, host_loops=True)
    tloop = torch_models.TrainLoop(name, variables, args.lr, m)

    # First calls (hessjax: compilation included), on the same batch from the same weights.
    first = {}
    first["hessjax"], (_, jm) = common.timed(lambda: host(*batches[0]))
    jp = common.host_copy(host.state.params)
    js = common.host_copy(host.state.batch_stats)
    first["torch"], tm = common.timed(lambda: tloop(*tbatches[0]))
    tp, ts = tloop.params(), tloop.batch_stats()
    jg = common.host_copy(common.momentum_trace(host.state.opt_state))
    checks = {
        "params_rel_l2": common.rel_diff(tp, jp),
        "mean_gradient_rel_l2": common.rel_diff(tloop.momentum_buffers(), jg),
        "update_rel_l2": common.rel_diff(_tree_sub(tp, p0), _tree_sub(jp, p0)),
        "loss_jax": float(jm["loss"]),
        "loss_torch": float(tm[0]),
        "loss_abs_diff": abs(float(jm["loss"]) - float(tm[0])),
        "accuracy_jax": float(jm["accuracy"]),
        "accuracy_torch": float(tm[1]),
    }
    if js:
        mean = lambda t: {k: v["mean"] for k, v in t.items()}
        var = lambda t: {k: v["var"] for k, v in t.items()}
        checks["running_mean_rel_l2"] = common.rel_diff(mean(ts), mean(js))
        checks["running_var_rel_l2"] = common.rel_diff(var(ts), var(js))
        checks["running_mean_change_rel_l2"] = common.rel_diff(
            _tree_sub(mean(ts), mean(s0)), _tree_sub(mean(js), mean(s0))
        )
        checks["running_var_change_rel_l2"] = common.rel_diff(
            _tree_sub(var(ts), var(s0)), _tree_sub(var(js), var(s0))
        )

    run_jax = _runner(host, batches, common.block)
    run_torch = _runner(tloop, tbatches, lambda out: torch_models.synchronize())
    # Steps per sample from PyTorch's first call (no compilation there).
    k = max(1, round(args.sample_seconds / first["torch"]))
    if first["torch"] * k < 2.0:  # one untimed step each, when cheap
        run_jax(1)
        run_torch(1)

    # lax.scan context: skipped when its estimated step time is too long.
    scan = {"ran": False}
    if not args.no_scan:
        est = None if scan_step_128 is None else scan_step_128 * num_micro
        scan["estimated_seconds_per_step"] = est
        if est is not None and batch != m and est > args.scan_max_seconds:
            scan["skipped"] = f"estimated {est:.0f} s/step > --scan-max-seconds"
        else:
            sloop = common.JaxLoop(model, variables, tx, m, args.seed, host_loops=False)
            scan["first_call_seconds"], _ = common.timed(lambda: sloop(*batches[0]))
            checks["scan_vs_host_mean_gradient_rel_l2"] = common.rel_diff(
                common.host_copy(common.momentum_trace(sloop.state.opt_state)), jg
            )
            run_scan = _runner(sloop, batches, common.block)
            budget_samples = int(args.scan_budget // scan["first_call_seconds"])
            scan["ran"] = True
            scan["samples"] = max(1, min(args.scan_repeats, budget_samples))
            scan["samples_seconds"] = []

    large = batch >= args.large_batch
    repeats = args.large_repeats if large else args.repeats
    samples = {"hessjax": [], "torch": []}
    for r in range(repeats):
        order = [("hessjax", run_jax), ("torch", run_torch)]
        for key, run in order if r % 2 == 0 else order[::-1]:
            samples[key].append(_seconds_per_step(run, k))
        if scan["ran"] and r < scan["samples"]:
            scan["samples_seconds"].append(_seconds_per_step(run_scan, 1))

    t_jax, t_torch = np.asarray(samples["hessjax"]), np.asarray(samples["torch"])
    speed = t_torch / t_jax  # throughput ratio hessjax / PyTorch, per round
    result = {
        "model": name,
        "data": common.DATASETS[name],
        "batch_size": batch,
        "micro_batch_size": m,
        "num_micro_batches": num_micro,
        "num_params": models.param_count(variables),
        "distinct_batches_cycled": len(batches),
        "rounds": repeats,
        "steps_per_sample": k,
        "samples_seconds_per_step": samples,
        "median_seconds_per_step": {k_: common.median(v) for k_, v in samples.items()},
        "examples_per_s": {k_: batch / common.median(v) for k_, v in samples.items()},
        "ratio_hessjax_over_torch_throughput": {
            "median": float(np.median(speed)),
            "p25": float(np.percentile(speed, 25)),
            "p75": float(np.percentile(speed, 75)),
            "ratio_of_medians": common.median(t_torch) / common.median(t_jax),
        },
        "first_call_seconds": first,
        "scan": scan,
        "equivalence": checks,
    }
    if scan["ran"]:
        ts_ = np.asarray(scan["samples_seconds"])
        scan["median_seconds_per_step"] = common.median(ts_)
        scan["examples_per_s"] = batch / common.median(ts_)
        scan["ratio_scan_over_host_throughput_paired"] = float(np.median(t_jax[: len(ts_)] / ts_))
    return result


# ----------------------------------------------------------------------------- breakdown


def breakdown(name, args):
    """Per-layer conv time at micro-batch 128: forward, d/d input, d/d kernel (XLA's kernels,
    hessjax's patches form, PyTorch's); benchmarks/conv_kernels.py."""
    from benchmarks import conv_kernels

    return conv_kernels.time_layers(name, 128, args.breakdown_repeats)


# ----------------------------------------------------------------------------- report


def markdown(results, env, args, rows_breakdown):
    headers = [
        "model",
        "batch (M × m)",
        "hessjax ex/s",
        "PyTorch ex/s",
        "**hessjax / PyTorch** [IQR]",
        "hessjax `lax.scan` ex/s (context)",
        "1st call s: hessjax / torch / scan",
        "rounds × steps",
    ]
    rows = []
    for r in results:
        q, s, f = r["ratio_hessjax_over_torch_throughput"], r["scan"], r["first_call_seconds"]
        if s.get("ran"):
            scan_cell = f"{s['examples_per_s']:.4g} (n={len(s['samples_seconds'])})"
            scan_first = f"{s['first_call_seconds']:.1f}"
        elif "skipped" in s:
            scan_cell = f"not run (est. {r['batch_size'] / s['estimated_seconds_per_step']:.2g})"
            scan_first = "—"
        else:
            scan_cell = scan_first = "—"
        rows.append(
            [
                r["model"].upper(),
                f"{r['batch_size']:,} ({r['num_micro_batches']} × {r['micro_batch_size']})",
                f"{r['examples_per_s']['hessjax']:.4g}",
                f"{r['examples_per_s']['torch']:.4g}",
                f"**{q['median']:.2f}** [{q['p25']:.2f}, {q['p75']:.2f}]",
                scan_cell,
                f"{f['hessjax']:.2f} / {f['torch']:.2f} / {scan_first}",
                f"{r['rounds']} × {r['steps_per_sample']}",
            ]
        )
    eq_headers = [
        "model",
        "batch",
        "θ₁ rel. diff",
        "**mean gradient** rel. diff",
        "θ₁−θ₀ rel. diff",
        "|Δloss|",
        "running mean / var rel. diff (change)",
        "scan vs host gradient",
    ]
    eq_rows = []
    for r in results:
        e = r["equivalence"]
        bn = (
            f"{e['running_mean_rel_l2']:.1e} / {e['running_var_rel_l2']:.1e} "
            f"({e['running_mean_change_rel_l2']:.1e} / {e['running_var_change_rel_l2']:.1e})"
            if "running_mean_rel_l2" in e
            else "— (no BN)"
        )
        sv = e.get("scan_vs_host_mean_gradient_rel_l2")
        eq_rows.append(
            [
                r["model"].upper(),
                f"{r['batch_size']:,}",
                f"{e['params_rel_l2']:.1e}",
                f"**{e['mean_gradient_rel_l2']:.1e}**",
                f"{e['update_rel_l2']:.1e}",
                f"{e['loss_abs_diff']:.1e}",
                bn,
                "—" if sv is None else f"{sv:.1e}",
            ]
        )
    parts = [
        "# Training-step throughput: hessjax TrainStep vs PyTorch (CPU, float32)",
        "",
        common.markdown_table(headers, rows),
        "",
        "Examples/s = batch / median seconds per step. **hessjax / PyTorch** = median over rounds "
        "of the per-round throughput ratio ([IQR] = 25th-75th percentile); in each round both "
        "run the same number of consecutive steps (alternating which goes first). hessjax = "
        "`TrainStep(model.apply, make_optimizer(lr, 0.9), micro_batch_size=128)` with the CPU "
        "default host loop over micro-batches (numpy inputs, `device_put` per micro-batch); "
        "PyTorch = the twin in `model.train()`, `SGD(lr, momentum=0.9)`, per micro-batch "
        "forward + `(loss/M).backward()`, then `step()` (torch tensors in memory). `lax.scan` "
        "= the same step as one program (`host_loops=False`, the GPU/TPU default), few samples "
        "(n), context only; 'est.' = M × its batch-128 step time, not run. 1st call = first "
        "step (hessjax: includes compilation). Real MNIST / CIFAR-10 training images (the first "
        f"{max(r['batch_size'] for r in results):,}, cycled), randomly initialised weights, "
        f"lr {args.lr}.",
        "",
        "## Equivalence after one step from the same weights on the same batch",
        "",
        common.markdown_table(eq_headers, eq_rows),
        "",
        "Relative L2 differences, PyTorch vs hessjax (host loop), after one step at lr "
        f"{args.lr}: the parameters θ₁; the mean gradient (1/M) Σ_j ∇L_j, read from both "
        "optimisers' momentum buffers (equal to it after the first step); and the step θ₁ − θ₀, "
        "which is limited by the float32 rounding of θ₁ (|θ| ≫ |lr·g|), hence larger than the "
        "gradient's difference. 'scan vs host' = the same mean gradient from the two hessjax "
        "forms. BN running statistics (C1): relative difference of the statistics and, in "
        "parentheses, of their change in the step; PyTorch's running variance uses the unbiased "
        "batch variance, Flax the biased one (factor n/(n−1), n = 128·H·W per micro-batch), "
        "which accounts for the running-variance difference.",
    ]
    if rows_breakdown:
        from benchmarks import conv_kernels

        parts += [
            "",
            "## Convolution time per layer at micro-batch 128 (XLA:CPU, patches, PyTorch/oneDNN)",
            "",
            conv_kernels.markdown_rows(rows_breakdown),
            "",
            f"Median of {args.breakdown_repeats} paired samples (each the mean of 2 calls): "
            "`jax.jit` of `hessjax.conv.conv2d` (XLA's kernels and the patches form) and of its "
            "two VJPs, against `torch.nn.functional.conv2d`, `torch.nn.grad.conv2d_input` / "
            "`conv2d_weight` (benchmarks/conv_kernels.py).",
        ]
    parts += common.footer(env, "benchmarks.train_throughput")
    return "\n".join(parts)


def main(argv=None):
    args = parse_args(argv)
    names = common.model_names(args.models)
    env = common.start(args, torch=True)
    batch_sizes = sorted(int(b) for b in args.batch_sizes.split(","))
    started = time.perf_counter()
    results, rows_breakdown = [], []
    for name in names:
        x, y = hessjax.data.load(
            common.DATASETS[name], "train", data_dir=args.data_dir, limit=max(batch_sizes)
        )
        if len(y) < max(batch_sizes):
            raise SystemExit(f"only {len(y)} {common.DATASETS[name]} images found")
        scan_step_m = None
        for batch in batch_sizes:
            print(f"benchmarking {name} batch {batch} ...", flush=True)
            r = bench_config(name, batch, args, (x, y), scan_step_m)
            if r["scan"].get("ran") and batch == args.micro_batch_size:
                scan_step_m = r["scan"]["median_seconds_per_step"]
            print({k: r[k] for k in ("examples_per_s", "ratio_hessjax_over_torch_throughput")})
            print(r["equivalence"], flush=True)
            results.append(r)
        if args.breakdown:
            rows_breakdown += breakdown(name, args)
    env["load_average_at_end_1_5_15"] = list(os.getloadavg())
    env["total_seconds"] = time.perf_counter() - started
    md = markdown(results, env, args, rows_breakdown)
    common.finish(
        "benchmarks.train_throughput",
        args,
        env,
        md,
        {"results": results, "conv_breakdown": rows_breakdown},
    )


if __name__ == "__main__":
    main()
