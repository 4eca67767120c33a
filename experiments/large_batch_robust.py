"""Table 8 (PAPER.md): C1 on CIFAR-10 at batch sizes up to the full training set (50,000), trained
three ways: plain SGD with the small-batch recipe ("baseline"), Goyal et al.'s linear learning-rate
scaling with warm-up ("FB") and robust (adversarial) training; test accuracy per batch size.
Diverged runs are recorded and shown as diverged.

    python -m experiments.large_batch_robust --config=experiments/configs/table8.py:smoke
        [--workdir=DIR] [--analyze_only]

Every batch is split into micro-batches (ghost BN) accumulated inside one update, so the device
memory of a step is bounded by the micro-batch, whatever the batch size. Peak resident memory is
sampled (``/proc/self/statm``) during every run and during one-step probes at
``config.memory_batch_sizes`` (run first, on a fresh process state).

``workdir`` (default ``runs/<config.name>``) holds ``config.json``, ``results.json`` (rewritten
atomically after every finished run), ``table.md``, ``figures/table8.png`` and one folder per run
(``<method>_bs<B>/``: orbax checkpoints, metrics.jsonl). ``--analyze_only`` re-evaluates the saved
checkpoints. Notebooks call :func:`run_table8`.
"""

from __future__ import annotations

import os
import pathlib
import resource
import sys
import threading
import time

# `python experiments/<script>.py` puts experiments/ first on sys.path; the repository root must
# be importable too (`from experiments... import`).
_ROOT = str(pathlib.Path(__file__).resolve().parents[1])
if _ROOT not in sys.path:
    sys.path.insert(1, _ROOT)

import jax
import numpy as np

from experiments.adversarial_training import batch_errors, model_errors
from experiments.batch_sweep import (
    _to_dict,
    _workdir_errors,
    get_model,
    load_data,
    load_results,
    write_json,
)
from hessjax import data as hdata
from hessjax import models as hmodels
from hessjax import train as htrain
from hessjax.adversarial import Adversary, adversary_errors

RESULTS = "results.json"
METHODS = ("baseline", "fb", "robust")
TITLES = {"baseline": "Baseline", "fb": "FB (Goyal et al.)", "robust": "Robust"}


def _log(msg: str) -> None:
    print(f"[large_batch_robust] {msg}", flush=True)


def run_name(method: str, batch_size: int) -> str:
    return f"{method}_bs{batch_size}"


# ----------------------------------------------------------------------------- memory


def _rss_bytes() -> int:
    """Current resident set size of this process (Linux ``/proc/self/statm``; else max RSS)."""
    try:
        with open("/proc/self/statm") as f:
            return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")
    except (OSError, ValueError, IndexError):
        return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024


class PeakRSS:
    """``with PeakRSS() as p: ...`` -> ``p.before_mb``, ``p.peak_mb`` (sampled every
    ``interval`` s on a thread) and ``p.delta_mb = peak - before``."""

    def __init__(self, interval: float = 0.02):
        self.interval, self._stop = interval, threading.Event()

    def _run(self):
        while not self._stop.is_set():
            self._peak = max(self._peak, _rss_bytes())
            self._stop.wait(self.interval)

    def __enter__(self):
        self._before = self._peak = _rss_bytes()
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._thread.start()
        return self

    def __exit__(self, *exc):
        self._stop.set()
        self._thread.join()
        self._peak = max(self._peak, _rss_bytes())
        mb = 1 << 20
        self.before_mb, self.peak_mb = self._before / mb, self._peak / mb
        self.delta_mb = self.peak_mb - self.before_mb
        return False

    def as_dict(self) -> dict:
        return {
            "rss_before_mb": self.before_mb,
            "peak_rss_mb": self.peak_mb,
            "delta_mb": self.delta_mb,
        }


# ----------------------------------------------------------------------------- validation


def validate(config, workdir: str | os.PathLike | None = None) -> None:
    """Raise one ``ValueError`` listing every problem with ``config`` (and the workdir)."""
    errors = model_errors(config)
    if not config.batch_sizes:
        errors.append("batch_sizes is empty")
    for b in list(config.batch_sizes) + list(config.memory_batch_sizes):
        errors += batch_errors(config, b)
    unknown = [m for m in config.methods if m not in METHODS]
    if unknown or not config.methods:
        errors.append(f"methods {list(config.methods)} must be a non-empty subset of {METHODS}")
    rc = config.robust
    errors += adversary_errors(rc.attack, rc.eps, rc.fraction)
    if not config.lr > 0 or not 0 <= config.momentum < 1:
        errors.append(f"need lr > 0 and momentum in [0, 1); got {config.lr}, {config.momentum}")
    if not isinstance(config.num_epochs, int) or config.num_epochs < 0:
        errors.append(f"num_epochs must be an int >= 0, got {config.num_epochs!r}")
    for field in ("max_steps_per_epoch", "eval_limit"):
        v = config[field]
        if v is not None and (not isinstance(v, int) or v < 1):
            errors.append(f"{field} must be a positive int or None, got {v!r}")
    if config.fb.base_batch_size < 1 or config.fb.warmup_epochs < 0:
        errors.append("fb.base_batch_size must be >= 1 and fb.warmup_epochs >= 0")
    if workdir is not None:
        errors += _workdir_errors(config, workdir)
    if errors:
        raise ValueError(f"invalid config {config.name!r}:\n  - " + "\n  - ".join(errors))


# ----------------------------------------------------------------------------- training


def steps_per_epoch(config, n: int, batch_size: int) -> int:
    spe = n // batch_size
    return spe if config.max_steps_per_epoch is None else min(spe, config.max_steps_per_epoch)


def make_tx(config, method: str, batch_size: int, spe: int):
    """The optimiser of ``method``: baseline/robust = C1's step schedule at ``lr``; FB = Goyal."""
    bounds = htrain.epochs_to_steps(config.lr_decay_epochs, config.lr_decay_factor, spe)
    if method == "fb":
        return htrain.make_optimizer(
            config.lr,
            config.momentum,
            "goyal",
            batch_size=batch_size,
            base_batch_size=config.fb.base_batch_size,
            warmup_steps=int(config.fb.warmup_epochs * spe),
            boundaries_and_scales=bounds,
        )
    if bounds:
        return htrain.make_optimizer(
            config.lr, config.momentum, "step", boundaries_and_scales=bounds
        )
    return htrain.make_optimizer(config.lr, config.momentum, "constant")


def make_step(config, method: str, tx):
    model = get_model(config.model)
    adversary = None
    if method == "robust":
        rc = config.robust
        kw = {"fgsm10": {"steps": rc.ifgsm_steps}, "fhsm": {"cg_iters": rc.cg_iters}}
        kw["l2_hess"] = kw["fhsm"]
        adversary = Adversary(
            rc.attack,
            rc.eps,
            rc.fraction,
            hdata.input_range(config.dataset),
            **kw.get(rc.attack, {}),
        )
    return htrain.TrainStep(
        model.apply, tx, micro_batch_size=config.micro_batch_size, adversary=adversary
    )


def train_run(config, data, method: str, batch_size: int, run_dir: pathlib.Path, train=True):
    """Train (or only restore) one run; ``(variables, FitResult, peak memory dict)``."""
    x, y = data["train"]
    spe = steps_per_epoch(config, len(y), batch_size)
    tx = make_tx(config, method, batch_size, spe)
    step = make_step(config, method, tx)
    model = get_model(config.model)
    state = htrain.init_state(hmodels.init(model, jax.random.key(config.seed)), tx, config.seed)
    ckpt = run_dir / "ckpt"
    if not train and not (ckpt.is_dir() and any(ckpt.iterdir())):
        raise FileNotFoundError(f"--analyze_only: no checkpoint in {ckpt}; train it first")
    with PeakRSS() as mem:
        result = htrain.fit(
            step,
            state,
            x,
            y,
            batch_size=batch_size,
            num_epochs=config.num_epochs if train else 0,
            seed=config.seed,
            divergence_factor=config.divergence_factor,
            eval_batch_size=config.eval_batch_size,
            workdir=ckpt,
            metrics_file=run_dir / "metrics.jsonl",
            max_steps_per_epoch=config.max_steps_per_epoch,
            eval_limit=config.eval_limit,
            verbose=True,
        )
    return htrain.state_variables(result.state), result, mem.as_dict()


def memory_probe(config, data, batch_size: int) -> dict:
    """Peak RSS of one baseline update at ``batch_size`` on the first training images (the batch
    materialised on the host, as :func:`hessjax.train.fit` does, micro-batched on the device)."""
    x, y = data["train"]
    tx = make_tx(config, "baseline", batch_size, 1)
    step = make_step(config, "baseline", tx)
    state = htrain.init_state(
        hmodels.init(get_model(config.model), jax.random.key(config.seed)), tx, config.seed
    )
    tic = time.perf_counter()
    with PeakRSS() as mem:
        xb, yb = x[:batch_size].copy(), y[:batch_size].copy()
        state, metrics = step(state, xb, yb)
        jax.block_until_ready(state)
        del xb, yb
    out = mem.as_dict()
    out.update(batch_size=batch_size, seconds=time.perf_counter() - tic, kind="one-step probe")
    return out


# ----------------------------------------------------------------------------- table


def _cell(r: dict | None) -> str:
    if not r or "test_accuracy" not in r:
        return "–"
    acc = f"{r['test_accuracy']:.4f}"
    return f"diverged ({acc})" if r.get("status") == "diverged" else acc


def write_table(config, results: dict, path: pathlib.Path) -> None:
    runs = results["runs"]
    methods = list(config.methods)
    head = ["Batch"] + [f"{TITLES[m]} Acc" for m in methods]
    steps = {
        b: [runs[run_name(m, b)].get("steps") for m in methods if run_name(m, b) in runs]
        for b in config.batch_sizes
    }
    lines = [
        f"# {config.name}: {config.model.upper()} / {config.dataset}, test accuracy (Table 8)",
        "",
        f"Micro-batch {config.micro_batch_size}; lr {config.lr}, momentum {config.momentum}; "
        f"{config.num_epochs} epoch(s)"
        + (
            f" of at most {config.max_steps_per_epoch} update(s)"
            if config.max_steps_per_epoch
            else ""
        )
        + f"; FB peak lr = lr·B/{config.fb.base_batch_size}, warm-up {config.fb.warmup_epochs} "
        f"epoch(s); robust: {config.robust.attack} ε = {config.robust.eps}, fraction "
        f"{config.robust.fraction}.",
        "",
        "| " + " | ".join(head) + " | updates |",
        "|" + "---|" * (len(head) + 1),
    ]
    for b in config.batch_sizes:
        cells = [str(b)] + [_cell(runs.get(run_name(m, b))) for m in methods]
        s = sorted({v for v in steps[b] if v is not None})
        lines.append("| " + " | ".join(cells) + f" | {', '.join(map(str, s)) or '–'} |")
    lines += [
        "",
        "Diverged: NaN/inf training loss or more than "
        f"{config.divergence_factor}× the initial loss (accuracy of the diverged model).",
    ]
    mem = results.get("memory", {})
    if mem:
        lines += ["", "Peak resident memory (MB; Δ = peak − RSS before):", ""]
        lines += ["| batch | what | peak RSS | Δ | seconds |", "|---|---|---|---|---|"]
        for m in sorted(mem.values(), key=lambda m: m["batch_size"]):
            lines.append(
                f"| {m['batch_size']} | {m['kind']} | {m['peak_rss_mb']:.0f} | "
                f"{m['delta_mb']:.0f} | {m['seconds']:.0f} |"
            )
    path.write_text("\n".join(lines) + "\n")


def write_figure(config, results: dict, folder: pathlib.Path) -> list[pathlib.Path]:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from matplotlib.patches import Patch

    runs = results["runs"]
    handles = []
    folder.mkdir(parents=True, exist_ok=True)
    fig, ax = plt.subplots(figsize=(6.4, 4.2))
    bs = list(config.batch_sizes)
    width = 0.8 / max(len(config.methods), 1)
    for i, m in enumerate(config.methods):
        accs, hatches = [], []
        for b in bs:
            r = runs.get(run_name(m, b), {})
            accs.append(r.get("test_accuracy", np.nan))
            hatches.append(r.get("status") == "diverged")
        pos = np.arange(len(bs)) + (i - (len(config.methods) - 1) / 2) * width
        bars = ax.bar(pos, accs, width)
        handles.append(Patch(facecolor=bars.patches[0].get_facecolor(), label=TITLES[m]))
        for bar, div in zip(bars, hatches, strict=True):
            if div:
                bar.set_hatch("//")
                ax.annotate(
                    "diverged",
                    (bar.get_x() + bar.get_width() / 2, bar.get_height()),
                    ha="center",
                    va="bottom",
                    fontsize=7,
                    rotation=90,
                )
    ax.set_xticks(np.arange(len(bs)), [str(b) for b in bs])
    ax.set_xlabel("batch size")
    ax.set_ylabel("test accuracy")
    ax.set_ylim(0, 1)
    ax.grid(True, axis="y", alpha=0.3)
    handles.append(Patch(facecolor="white", edgecolor="k", hatch="//", label="diverged"))
    ax.legend(handles=handles, fontsize=8)
    ax.set_title(f"{config.name}: Table 8 (hatched: diverged)", fontsize=10)
    fig.tight_layout()
    path = folder / "table8.png"
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return [path]


# ----------------------------------------------------------------------------- the experiment


def run_table8(config, workdir: str | os.PathLike | None = None, analyze_only: bool = False):
    """Train and evaluate every (batch size, method) of ``config``; returns the results dict.

    Finished runs in ``workdir/results.json`` are skipped (``analyze_only`` re-evaluates every run
    that has a checkpoint). Diverged runs are recorded with their status and shown as diverged.
    """
    workdir = pathlib.Path(workdir or os.path.join("runs", config.name))
    validate(config, workdir)
    results = load_results(workdir)
    runs = results.setdefault("runs", {})
    memory = results.setdefault("memory", {})
    todo = [(m, b) for b in config.batch_sizes for m in config.methods]
    pending = [mb for mb in todo if analyze_only or run_name(*mb) not in runs]
    probes = [
        b for b in config.memory_batch_sizes if f"probe_{b}" not in memory and not analyze_only
    ]
    data = load_data(config) if pending or probes else None  # missing data fails before any work
    workdir.mkdir(parents=True, exist_ok=True)
    write_json(workdir / "config.json", _to_dict(config))
    results["config_name"] = config.name
    _log(f"{config.name}: {len(todo)} runs, {len(todo) - len(pending)} already done, in {workdir}")
    for b in probes:  # first, so earlier big allocations do not hide in the process RSS
        memory[f"probe_{b}"] = memory_probe(config, data, b)
        _log(f"memory probe batch {b}: peak RSS {memory[f'probe_{b}']['peak_rss_mb']:.0f} MB")
        write_json(workdir / RESULTS, results)
    model = get_model(config.model)
    for n, (method, b) in enumerate(pending, 1):
        name = run_name(method, b)
        run_dir = workdir / name
        run_dir.mkdir(exist_ok=True)
        _log(f"[{n}/{len(pending)}] {name}: {'restoring' if analyze_only else 'training'}")
        tic = time.perf_counter()
        try:
            variables, result, mem = train_run(config, data, method, b, run_dir, not analyze_only)
        except FileNotFoundError as e:
            _log(f"  skipped: {e}")
            continue
        record = dict(runs.get(name, {}), method=method, batch_size=b)
        if not analyze_only:
            hist = result.history
            record.update(
                status=result.status,
                epochs=result.epoch,
                steps=int(result.state.step),
                train_seconds=time.perf_counter() - tic,
                train_loss=hist[-1]["train_loss"] if hist else None,
                lr_last=hist[-1]["lr"] if hist else None,
                memory=mem,
            )
            if method == "baseline":
                memory[f"run_{b}"] = dict(
                    mem, batch_size=b, seconds=record["train_seconds"], kind="baseline run (fit)"
                )
        x, y = data["test"]
        loss, acc = htrain.evaluate(model.apply, variables, x, y, config.eval_batch_size)
        record.update(test_loss=loss, test_accuracy=acc)
        _log(f"  {name}: {record.get('status')} test accuracy {acc:.4f} loss {loss:.4g}")
        runs[name] = record
        write_json(workdir / RESULTS, results)
    write_json(workdir / RESULTS, results)
    write_table(config, results, workdir / "table.md")
    write_figure(config, results, workdir / "figures")
    _log(f"wrote {workdir / RESULTS}, {workdir / 'table.md'}, {workdir / 'figures'}")
    return results


def main(argv) -> None:
    from absl import flags, logging

    if len(argv) > 1:
        raise ValueError(f"unexpected arguments: {argv[1:]}")
    logging.set_verbosity(logging.WARNING)
    f = flags.FLAGS
    run_table8(f.config, f.workdir, analyze_only=f.analyze_only)


if __name__ == "__main__":
    from absl import app, flags
    from ml_collections import config_flags

    config_flags.DEFINE_config_file("config", None, "experiments/configs/table8.py[:scale]")
    flags.DEFINE_string("workdir", None, "output folder (default runs/<config.name>)")
    flags.DEFINE_bool("analyze_only", False, "re-evaluate the saved checkpoints only")
    flags.mark_flags_as_required(["config"])
    app.run(main)
