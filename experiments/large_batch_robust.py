"""Table 8 (docs/paper.md, "Robust training (Tables 3, 4, 8)"): C1 on CIFAR-10 at batch sizes up
to the full training set (50,000), trained three ways: plain SGD with the small-batch recipe
("baseline"), Goyal et al.'s linear learning-rate scaling with warm-up ("FB") and robust
(adversarial) training; test accuracy per batch size. Diverged runs are recorded and shown as
diverged.

    python experiments/large_batch_robust.py --config=experiments/configs/table8.py:smoke
        [--workdir=DIR] [--analyze_only]

Every batch is split into micro-batches (ghost BN) accumulated inside one update and each
micro-batch is split over every device of the runner's mesh, so the device memory of a step is
bounded by the micro-batch, whatever the batch size. Peak resident memory is sampled
(``/proc/self/statm``) during every run and during one-step probes at
``config.memory_batch_sizes`` (runs ``probe_bs<B>``, run first, on a fresh process state).

Run by :mod:`experiments.runner`. ``workdir`` (default ``runs/<config.name>``) holds
``config.json``, ``results.json``, ``table.md``, ``figures/table8.png`` and one folder per run
(``<method>_bs<B>/``: orbax checkpoints, metrics.jsonl, record.json).
"""

from __future__ import annotations

import os
import pathlib
import resource
import sys
import threading
import time

if __package__ in (None, ""):  # `python experiments/<study>.py`: make `experiments` importable
    sys.path.insert(1, str(pathlib.Path(__file__).resolve().parents[1]))

import jax
import numpy as np

from experiments import checks, plots, runner
from hessjax import attacks
from hessjax import data as hdata
from hessjax import models as hmodels
from hessjax import train as htrain
from hessjax.adversarial import Adversary, adversary_errors
from hessjax.evaluation import evaluate

METHODS = ("baseline", "fb", "robust")
TITLES = {"baseline": "Baseline", "fb": "FB (Goyal et al.)", "robust": "Robust"}


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
    """``with PeakRSS() as p: ...`` -> ``p.as_dict()``: RSS before, peak RSS (sampled every
    ``interval`` s on a thread) and ``delta = peak - before``, in MB."""

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
        return False

    def as_dict(self) -> dict:
        mb = 1 << 20
        return {
            "rss_before_mb": self._before / mb,
            "peak_rss_mb": self._peak / mb,
            "delta_mb": (self._peak - self._before) / mb,
        }


# ----------------------------------------------------------------------------- the study


class LargeBatchRobust:
    """Table 8 as a :class:`experiments.runner.Study`."""

    name = "large_batch_robust"
    extensible = ()

    def validate(self, config) -> list[str]:
        errors = []
        if not config.batch_sizes:
            errors.append("batch_sizes is empty")
        for b in list(config.batch_sizes) + list(config.memory_batch_sizes):
            errors += checks.batch_errors(config, b)
        unknown = [m for m in config.methods if m not in METHODS]
        if unknown or not config.methods:
            errors.append(f"methods {list(config.methods)} must be a non-empty subset of {METHODS}")
        rc = config.robust
        errors += adversary_errors(rc.attack, rc.eps, rc.fraction)
        errors += checks.optimizer_errors("", config)
        for field in ("max_steps_per_epoch", "eval_limit"):
            errors += checks.positive_int(field, config[field], optional=True)
        errors += checks.positive_int("eval_batch_size", config.eval_batch_size)
        if not config.fb.base_batch_size > 0 or config.fb.warmup_epochs < 0:
            errors.append("fb.base_batch_size must be > 0 and fb.warmup_epochs >= 0")
        return errors

    def sharded_sizes(self, config) -> list[tuple[str, int]]:
        return [("micro-batches", config.micro_batch_size)]

    def runs(self, config) -> list[runner.Run]:
        probes = [
            runner.Run(f"probe_bs{b}", {"batch_size": b, "probe": True})
            for b in config.memory_batch_sizes
        ]
        # Largest batches first: a run stopped part-way has the columns the claim is about.
        trained = [
            runner.Run(run_name(m, b), {"method": m, "batch_size": b})
            for b in sorted(config.batch_sizes, reverse=True)
            for m in config.methods
        ]
        return probes + trained

    # -- training ----------------------------------------------------------------------------------

    def _step(self, ctx, method: str, batch_size: int, steps_per_epoch: int):
        config = ctx.config
        if method == "fb":
            tx = htrain.make_optimizer_for(
                config,
                steps_per_epoch,
                schedule="goyal",
                batch_size=batch_size,
                base_batch_size=config.fb.base_batch_size,
                warmup_epochs=config.fb.warmup_epochs,
            )
        else:
            tx = htrain.make_optimizer_for(config, steps_per_epoch)
        adversary = None
        if method == "robust":
            rc = config.robust
            spec = attacks.spec(rc.attack)
            adversary = Adversary(
                spec.key,
                rc.eps,
                rc.fraction,
                hdata.input_range(config.dataset),
                options=spec.pick_options(steps=rc.ifgsm_steps, cg_iters=rc.cg_iters),
            )
        step = htrain.TrainStep(
            ctx.train_model.apply,
            tx,
            micro_batch_size=config.micro_batch_size,
            adversary=adversary,
            mesh=ctx.mesh,
        )
        state = htrain.init_state(
            hmodels.init(ctx.model, jax.random.key(config.seed)), tx, config.seed
        )
        return step, state

    def _probe(self, ctx, batch_size: int) -> dict:
        """Peak RSS of one baseline update at ``batch_size`` on the first training images (the
        batch materialised on the host, as :func:`hessjax.train.fit` does)."""
        x, y = ctx.data["train"]
        step, state = self._step(ctx, "baseline", batch_size, 1)
        tic = time.perf_counter()
        with PeakRSS() as mem:
            xb, yb = x[:batch_size].copy(), y[:batch_size].copy()
            state, _ = step(step.replicate(state), xb, yb)
            jax.block_until_ready(state)
            del xb, yb
        out = mem.as_dict()
        out.update(batch_size=batch_size, seconds=time.perf_counter() - tic, kind="one-step probe")
        return out

    def train(self, ctx, run):
        config = ctx.config
        b = run.settings["batch_size"]
        if run.settings.get("probe"):
            if ctx.analyze_only:
                raise runner.MissingCheckpoint("a memory probe has nothing to re-analyse")
            memory = self._probe(ctx, b)
            ctx.log(f"  memory probe batch {b}: peak RSS {memory['peak_rss_mb']:.0f} MB")
            return None, {"memory": memory, "status": "probe"}
        x, y = ctx.data["train"]
        spe = len(y) // b
        if config.max_steps_per_epoch is not None:
            spe = min(spe, config.max_steps_per_epoch)
        step, state = self._step(ctx, run.settings["method"], b, spe)
        tic = time.perf_counter()
        with PeakRSS() as mem:
            result = ctx.fit_or_restore(
                run.name, step, state, batch_size=b, num_epochs=config.num_epochs,
                seed=config.seed, divergence_factor=config.divergence_factor,
                max_steps_per_epoch=config.max_steps_per_epoch, eval_limit=config.eval_limit,
            )  # fmt: skip
        variables = htrain.state_variables(result.state)
        if ctx.analyze_only:
            return variables, {}
        hist = result.history
        memory = dict(
            mem.as_dict(),
            batch_size=b,
            seconds=time.perf_counter() - tic,
            kind=f"{run.settings['method']} run (fit)",
        )
        return variables, {
            "method": run.settings["method"],
            "batch_size": b,
            "status": result.status,
            "epochs": result.epoch,
            "steps": int(result.state.step),
            "train_loss": hist[-1]["train_loss"] if hist else None,
            "lr_last": hist[-1]["lr"] if hist else None,
            "memory": memory,
        }

    def analyze(self, ctx, run, variables) -> dict:
        if run.settings.get("probe"):
            return {}
        with ctx.phase("test accuracy"):
            loss, acc = evaluate(
                ctx.model.apply,
                variables,
                *ctx.data["test"],
                ctx.config.eval_batch_size,
                mesh=ctx.mesh,
            )
        ctx.log(f"  {run.name}: test accuracy {acc:.4f} loss {loss:.4g}")
        return {"test_loss": loss, "test_accuracy": acc}

    # -- summary, table, figure --------------------------------------------------------------------

    def summarize(self, config, runs: dict) -> dict:
        """Per batch size: the test accuracy of each method (None if not run, NaN if diverged
        is kept as measured) and whether robust ≥ baseline."""
        out = {}
        for b in config.batch_sizes:
            row = {m: runs.get(run_name(m, b), {}).get("test_accuracy") for m in config.methods}
            status = {m: runs.get(run_name(m, b), {}).get("status") for m in config.methods}
            if (
                "robust" in row
                and "baseline" in row
                and None not in (row["robust"], row["baseline"])
            ):
                row["robust_at_least_baseline"] = row["robust"] >= row["baseline"]
            out[str(b)] = {"test_accuracy": row, "status": status}
        return {"per_batch_size": out}

    def table(self, config, results: dict) -> str:
        runs = results["runs"]
        methods = list(config.methods)

        def cell(r):
            diverged = bool(r) and r.get("status") == "diverged"
            if not r or "test_accuracy" not in r:  # the runner does not analyse diverged runs
                return "diverged" if diverged else "–"
            acc = f"{r['test_accuracy']:.4f}"
            return f"diverged ({acc})" if diverged else acc

        rows = []
        for b in config.batch_sizes:
            steps = sorted(
                {runs[run_name(m, b)].get("steps") for m in methods if run_name(m, b) in runs}
                - {None}
            )
            rows.append(
                [b]
                + [cell(runs.get(run_name(m, b))) for m in methods]
                + [", ".join(map(str, steps)) or "–"]
            )
        budget = (
            f" of at most {config.max_steps_per_epoch} update(s)"
            if config.max_steps_per_epoch
            else ""
        )
        lines = [
            f"# {config.name}: {config.model.upper()} / {config.dataset}, test accuracy (Table 8)",
            "",
            f"Micro-batch {config.micro_batch_size}; lr {config.lr}, momentum {config.momentum}; "
            f"{config.num_epochs} epoch(s){budget}; "
            f"FB peak lr = lr·B/{config.fb.base_batch_size:g}, warm-up "
            f"{config.fb.warmup_epochs} epoch(s); robust: {config.robust.attack} ε = "
            f"{config.robust.eps}, fraction {config.robust.fraction}.",
            "",
            *plots.markdown_table(
                ["Batch"] + [f"{TITLES[m]} Acc" for m in methods] + ["updates"], rows
            ),
            "",
            "Diverged: NaN/inf training loss or more than "
            f"{config.divergence_factor}× the initial loss; training stops there and the "
            "diverged model is not evaluated (the paper prints 0.1, chance).",
        ]
        memory = [r["memory"] for r in runs.values() if "memory" in r]
        if memory:
            lines += ["", "Peak resident memory (MB; Δ = peak − RSS before):", ""]
            rows = [
                [
                    m["batch_size"],
                    m["kind"],
                    f"{m['peak_rss_mb']:.0f}",
                    f"{m['delta_mb']:.0f}",
                    f"{m['seconds']:.0f}",
                ]
                for m in sorted(memory, key=lambda m: (m["batch_size"], m["kind"]))
            ]
            lines += plots.markdown_table(["batch", "what", "peak RSS", "Δ", "seconds"], rows)
        return "\n".join(lines) + "\n"

    def figures(self, config, results: dict, folder: pathlib.Path) -> list[pathlib.Path]:
        from matplotlib.patches import Patch

        plt = plots.pyplot()
        runs = results["runs"]
        fig, ax = plt.subplots(figsize=(6.4, 4.2))
        bs, methods = list(config.batch_sizes), list(config.methods)
        width = 0.8 / max(len(methods), 1)
        handles = []
        for i, m in enumerate(methods):
            rs = [runs.get(run_name(m, b), {}) for b in bs]
            pos = np.arange(len(bs)) + (i - (len(methods) - 1) / 2) * width
            # a diverged run without an accuracy (not analysed) is drawn as an empty bar
            heights = [
                r.get("test_accuracy", 0.0 if r.get("status") == "diverged" else np.nan) for r in rs
            ]
            bars = ax.bar(pos, heights, width)
            handles.append(Patch(facecolor=bars.patches[0].get_facecolor(), label=TITLES[m]))
            for bar, r in zip(bars, rs, strict=True):
                if r.get("status") == "diverged":
                    bar.set_hatch("//")
                    ax.annotate(
                        "diverged",
                        (bar.get_x() + bar.get_width() / 2, bar.get_height() + 0.01),
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
        return [plots.save(fig, folder / "table8.png")]


STUDY = LargeBatchRobust()

if __name__ == "__main__":
    runner.main(STUDY)
