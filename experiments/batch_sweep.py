"""Batch-size sweep (docs/paper.md, "Training (Tables 1, 2, 7)"; Figs. 1-4): train every (batch
size, seed), tracking the dominant Hessian eigenvalue and gradient norm per epoch, then measure
loss/accuracy, the top-k weight-Hessian spectrum, the input-gradient norm and input-Hessian λ_max,
FGSM accuracy and the loss landscape along the top eigenvectors, on train and test.

    python experiments/batch_sweep.py --config=experiments/configs/m1.py:smoke [--workdir=DIR]
        [--analyze_only] [--config.lr=0.02]

Run by :mod:`experiments.runner` (validation, resume, mesh, results.json, logs). ``workdir``
(default ``runs/<config.name>``) holds ``config.json``, ``results.json``, ``table.md`` (Table 1's
layout), ``figures/`` (``fig1_spectrum.png``, ``fig2_landscape_1d.png``, ``fig3_landscape_2d.png``,
``fig4_training.png``) and ``bs<B>_seed<S>/`` (orbax checkpoints, metrics.jsonl, record.json,
per-sample input-gradient norms and input-Hessian eigenvalues as .npy).
"""

from __future__ import annotations

import json
import pathlib
import sys

if __package__ in (None, ""):  # `python experiments/batch_sweep.py`: make `experiments` importable
    sys.path.insert(1, str(pathlib.Path(__file__).resolve().parents[1]))

import jax
import numpy as np

import hessjax
from experiments import checks, curvature, plots, runner
from hessjax import data as hdata
from hessjax import landscape
from hessjax import models as hmodels
from hessjax import train as htrain
from hessjax.evaluation import evaluate, full_gradient_norm

SPLITS = ("train", "test")
COLUMNS = (  # (record key, Table 1 title, display scale)
    ("accuracy", "Acc (%)", 100.0),
    ("lambda_max", "λ_max^θ", 1.0),
    ("input_grad_norm", "‖∇ₓJ‖", 1.0),
    ("input_lambda_max", "λ_max^x", 1.0),
    ("fgsm_eps1", "FGSM ε₁ (%)", 100.0),
    ("fgsm_eps2", "FGSM ε₂ (%)", 100.0),
)
_INPUT_COLUMNS = ("input_grad_norm", "input_lambda_max")


def run_name(batch_size: int, seed: int) -> str:
    return f"bs{batch_size}_seed{seed}"


def read_history(metrics_file: pathlib.Path) -> list[dict]:
    """Per-epoch records of ``metrics.jsonl``, one per epoch (the last one written wins: an epoch
    redone after an interruption is logged twice)."""
    if not metrics_file.exists():
        return []
    by_epoch = {}
    for line in metrics_file.read_text().splitlines():
        if line.strip():
            rec = json.loads(line)
            by_epoch[rec["epoch"]] = rec
    return [by_epoch[e] for e in sorted(by_epoch)]


def spearman(a, b) -> float:
    """Spearman rank correlation (average ranks for ties); NaN for < 2 points or constant data."""
    a, b = np.asarray(a, float), np.asarray(b, float)
    if len(a) < 2:
        return float("nan")

    def ranks(v):
        order = np.argsort(v, kind="stable")
        r = np.empty(len(v))
        r[order] = np.arange(len(v), dtype=float)
        for u in np.unique(v):
            r[v == u] = r[v == u].mean()
        return r

    ra, rb = ranks(a), ranks(b)
    if ra.std() == 0 or rb.std() == 0:
        return float("nan")
    return float(np.corrcoef(ra, rb)[0, 1])


def training_line(config, runs: dict) -> str:
    """How far each run trained: epochs used against the target loss and the epoch budget, and
    the runs that hit the budget before the target (the equal-loss protocol's record)."""
    used, hits = [], []
    for b in config.batch_sizes:
        for s in range(config.num_seeds):
            name, r = run_name(b, s), runs.get(run_name(b, s), {})
            if "epochs" not in r:
                continue
            loss = r.get("final_train_loss")
            used.append(f"{b}: {r['epochs']}" + (f" ({loss:.3g})" if loss is not None else ""))
            if r.get("status") == "max_epochs":
                hits.append(name)
    target = config.target_loss
    head = f"Training to loss ≤ {target:g}" if target is not None else "Training"
    line = f"{head}, budget {config.num_epochs} epochs; epochs used (final train loss): "
    line += "; ".join(used) or "–"
    return line + ". Budget hit before the target: " + (", ".join(hits) or "none") + "."


def columns(config) -> tuple:
    """Table 1's columns (Table 2's without the input-Hessian ones when they are switched off)."""
    if config.input_hessian.enabled:
        return COLUMNS
    return tuple(c for c in COLUMNS if c[0] not in _INPUT_COLUMNS)


def _first(x, y, n):
    return (x, y) if n is None else (x[:n], y[:n])


def _curvature_rows(per_batch: dict) -> dict:
    """``{batch size: curvature.summary}`` of the batch sizes with a curvature record."""
    return {b: row["curvature"] for b, row in per_batch.items() if "curvature" in row}


class BatchSweep:
    """The batch-size sweep as a :class:`experiments.runner.Study`."""

    name = "batch_sweep"
    # curvature: analyses beyond the paper, added to existing workdirs without retraining
    extensible = ("batch_sizes", "num_seeds", "curvature")

    # -- config ----------------------------------------------------------------------------------

    def validate(self, config) -> list[str]:
        errors = []
        if not config.batch_sizes:
            errors.append("batch_sizes is empty")
        for b in config.batch_sizes:
            errors += checks.batch_errors(config, b)
        errors += checks.positive_int("num_seeds", config.num_seeds)
        errors += checks.optimizer_errors("", config)
        if config.schedule not in ("step", "constant"):
            errors.append(f"schedule must be 'step' or 'constant', got {config.schedule!r}")
        elif config.schedule == "constant" and list(config.lr_decay_epochs):
            errors.append(
                f"schedule='constant' but lr_decay_epochs={list(config.lr_decay_epochs)}; use "
                "schedule='step' or lr_decay_epochs=[]"
            )
        if len(config.fgsm_eps) != 2:
            errors.append(
                f"fgsm_eps must hold two values (eps1, eps2), got {list(config.fgsm_eps)}"
            )
        if any(not e >= 0 for e in config.fgsm_eps):
            errors.append(f"fgsm_eps must be >= 0, got {list(config.fgsm_eps)}")
        hc, tc, lc = config.hessian, config.track, config.landscape
        if not checks.is_positive_int(hc.k) or hc.k < 2:
            errors.append(f"hessian.k must be >= 2 (Fig. 3 needs two eigenvectors), got {hc.k}")
        if hc.method not in ("lanczos", "power"):
            errors.append(f"hessian.method must be 'lanczos' or 'power', got {hc.method!r}")
        errors += checks.positive("hessian.tol", hc.tol)
        errors += checks.positive_int("hessian.batch_size", hc.batch_size)
        errors += checks.positive_int("hessian.num_samples", hc.num_samples, optional=True)
        errors += checks.positive_int("input_hessian.batch_size", config.input_hessian.batch_size)
        if not (isinstance(tc.every, int) and tc.every >= 0) or tc.max_matvecs < 1:
            errors.append("track needs every >= 0 (0: off), tol > 0 and max_matvecs >= 1")
        errors += checks.positive("track.tol", tc.tol)
        errors += checks.positive_int("eval_batch_size", config.eval_batch_size)
        if config.augment and config.dataset in hdata.DATASETS:
            if tuple(hdata.image_shape(config.dataset)) != (32, 32, 3):
                errors.append(f"augment=True crops and flips CIFAR images, not {config.dataset}")
        if not lc.t_min < lc.t_max or lc.num_points < 2 or lc.grid < 2:
            errors.append("landscape needs t_min < t_max, num_points >= 2 and grid >= 2")
        return errors + curvature.config_errors(config.curvature)

    def sharded_sizes(self, config) -> list[tuple[str, int]]:
        sizes = [
            (f"micro-batches of batch {b}", checks.micro_batch(config, b))
            for b in config.batch_sizes
            if checks.is_positive_int(b)
        ]
        for what, n in (
            ("hessian", config.hessian.num_samples),
            ("track", config.track.num_samples),
            ("curvature", config.curvature.num_samples or config.hessian.num_samples),
        ):
            sizes.append(
                (
                    f"{what}: Hessian batches",
                    min(config.hessian.batch_size, n or config.hessian.batch_size),
                )
            )
        return sizes

    def runs(self, config) -> list[runner.Run]:
        return [
            runner.Run(run_name(b, s), {"batch_size": b, "seed": s})
            for b in config.batch_sizes
            for s in range(config.num_seeds)
        ]

    # -- training ----------------------------------------------------------------------------------

    def tracker(self, ctx, seed: int):
        """Fig. 4's per-epoch measurement as a :func:`hessjax.train.fit` callback, or None if
        off: ``{"lambda_max": λ_max(∇²L), "grad_norm": ‖∇L‖}`` of the loss on the first
        ``track.num_samples`` training samples (BN in inference mode), Lanczos k=1 to
        ``track.tol``."""
        config, tc = ctx.config, ctx.config.track
        if not tc.every:
            return None
        xh, yh = _first(*ctx.data["train"], tc.num_samples)
        batch = min(config.hessian.batch_size, len(yh))

        def callback(epoch, state, record):
            if epoch % tc.every:
                return None
            variables = htrain.state_variables(state)
            params = variables["params"]
            loss_fn = hessjax.make_loss_fn(ctx.model.apply, variables)
            op = hessjax.hessian_operator(
                loss_fn, params, (xh, yh), batch_size=batch, mesh=ctx.mesh
            )
            key = jax.random.fold_in(jax.random.key(seed), 1000 + epoch)
            eig = hessjax.eigenvalues(
                op, params, k=1, tol=tc.tol, max_matvecs=tc.max_matvecs, key=key
            )
            return {
                "lambda_max": float(eig.values[0]),
                "grad_norm": full_gradient_norm(loss_fn, params, (xh, yh), batch, mesh=ctx.mesh),
            }

        return callback

    def train(self, ctx, run):
        config = ctx.config
        b, seed = run.settings["batch_size"], run.settings["seed"]
        x, y = ctx.data["train"]
        # schedule=None: step decay at lr_decay_epochs, a constant rate when there are none
        schedule = None if config.schedule == "step" else "constant"
        tx = htrain.make_optimizer_for(config, len(y) // b, schedule=schedule)
        state = htrain.init_state(hmodels.init(ctx.model, jax.random.key(seed)), tx, seed)
        step = htrain.TrainStep(
            ctx.train_model.apply,
            tx,
            micro_batch_size=checks.micro_batch(config, b),
            augment=hdata.augment_cifar if config.augment else None,
            mesh=ctx.mesh,
        )
        callback = self.tracker(ctx, seed)
        epochs, target = config.num_epochs, config.target_loss
        result = ctx.fit_or_restore(
            run.name, step, state, batch_size=b, num_epochs=epochs, seed=seed,
            target_loss=target, callback=callback,
        )  # fmt: skip
        variables = htrain.state_variables(result.state)
        if ctx.analyze_only:
            return variables, {}
        record = {"batch_size": b, "seed": seed, "status": result.status, "epochs": result.epoch}
        record["history"] = read_history(ctx.run_dir(run.name) / "metrics.jsonl")
        # Equal-loss protocol (docs/paper.md): every batch size trains until its full training
        # loss is <= target_loss; "max_epochs" means the epoch budget ran out first.
        record["target_loss"] = target
        record["reached_target"] = result.status == "converged"
        if record["history"]:
            record["final_train_loss"] = record["history"][-1]["train_loss"]
        return variables, record

    # -- analysis ----------------------------------------------------------------------------------

    def analyze(self, ctx, run, variables) -> dict:
        """Every measurement of one trained model on the train and test subsets (Table 1)."""
        config, mesh, apply_fn = ctx.config, ctx.mesh, ctx.model.apply
        params = variables["params"]
        loss_fn = hessjax.make_loss_fn(apply_fn, variables)
        hc, ic, lc = config.hessian, config.input_hessian, config.landscape
        out = {}
        for i, split in enumerate(SPLITS):
            x, y = ctx.data[split]
            r = {}
            with ctx.phase(f"{split}: loss and accuracy"):
                r["loss"], r["accuracy"] = evaluate(
                    apply_fn, variables, x, y, config.eval_batch_size, mesh=mesh
                )
            xh, yh = _first(x, y, hc.num_samples)
            batch = min(hc.batch_size, len(yh))
            with ctx.phase(f"{split}: weight Hessian (top {hc.k} on {len(yh)} samples)"):
                op = hessjax.hessian_operator(
                    loss_fn, params, (xh, yh), batch_size=batch, mesh=mesh
                )
                eig = hessjax.eigenvalues(
                    op,
                    params,
                    k=hc.k,
                    method=hc.method,
                    tol=hc.tol,
                    max_matvecs=hc.max_matvecs,
                    key=jax.random.fold_in(jax.random.key(run.settings["seed"]), i),
                )
                r["eigenvalues"] = np.asarray(eig.values, np.float64).tolist()
                r["lambda_max"] = r["eigenvalues"][0]
                r["eig_residuals"] = np.asarray(eig.residuals, np.float64).tolist()
                r["num_matvecs"] = int(eig.num_matvecs)
                r["hessian_samples"] = len(yh)
                r["grad_norm"] = full_gradient_norm(loss_fn, params, (xh, yh), batch, mesh=mesh)
            xi, yi = _first(x, y, ic.num_samples)
            bs = min(ic.batch_size, len(yi))
            r["input_samples"] = len(yi)
            with ctx.phase(f"{split}: input Hessian and FGSM on {len(yi)} samples"):
                if ic.enabled:
                    gnorm = np.asarray(
                        hessjax.input_gradient_norms(
                            apply_fn, variables, xi, yi, batch_size=bs, mesh=mesh
                        )
                    )
                    lam_x = np.asarray(
                        hessjax.input_hessian_eigenvalues(
                            apply_fn, variables, xi, yi, method="exact", batch_size=bs, mesh=mesh
                        )
                    )
                    ctx.save_array(run.name, f"{split}_input_grad_norms.npy", gnorm)
                    ctx.save_array(run.name, f"{split}_input_lambda_max.npy", lam_x)
                    r["input_grad_norm"] = float(gnorm.mean())
                    r["input_lambda_max"] = float(lam_x.mean())
                fgsm = hessjax.attacks.adversarial_accuracy(
                    apply_fn,
                    variables,
                    xi,
                    yi,
                    "fgsm",
                    list(config.fgsm_eps),
                    clip=hdata.input_range(config.dataset),
                    batch_size=bs,
                    mesh=mesh,
                )
                r["fgsm_eps1"], r["fgsm_eps2"] = (float(a) for a in fgsm)
            xl, yl = _first(x, y, lc.num_samples or hc.num_samples)
            with ctx.phase(f"{split}: loss landscape on {len(yl)} samples"):
                kw = dict(batch_size=config.eval_batch_size, mesh=mesh)
                ts = np.linspace(lc.t_min, lc.t_max, lc.num_points)
                r["landscape_1d"] = {
                    "t": ts.tolist(),
                    "loss": landscape.landscape_1d(
                        apply_fn, variables, xl, yl, eig.vectors, ts, **kw
                    ).tolist(),
                }
                g = np.linspace(lc.t_min, lc.t_max, lc.grid)
                surface = landscape.landscape_2d(apply_fn, variables, xl, yl, eig.vectors, g, **kw)
                r["landscape_2d"] = {
                    "t": g.tolist(),
                    "loss": surface.tolist(),
                }  # [i][j]: t1=g[i], t2=g[j]
            out[split] = r
            if split == "train" and config.curvature.enabled:
                key = jax.random.fold_in(jax.random.key(run.settings["seed"]), 100)
                data = _first(x, y, config.curvature.num_samples or hc.num_samples)
                out["curvature"] = curvature.measure(
                    ctx, variables, data, key, batch_size=hc.batch_size
                )
            inputs = (
                f"‖∇ₓJ‖ {r['input_grad_norm']:.4g} λ_max^x {r['input_lambda_max']:.4g} "
                if ic.enabled
                else ""
            )
            ctx.log(
                f"  {split}: loss {r['loss']:.4g} acc {r['accuracy']:.4f} "
                f"λ_max {r['lambda_max']:.4g} {inputs}"
                f"FGSM {r['fgsm_eps1']:.3f}/{r['fgsm_eps2']:.3f}"
            )
        return out

    # -- summary, table, figures -------------------------------------------------------------------

    def summarize(self, config, runs: dict) -> dict:
        """Per batch size: mean/std over analysed seeds of every Table-1 column; Spearman ρ of
        λ_max^θ against the batch size on each split."""
        summary = {}
        for b in config.batch_sizes:
            done = [
                runs[n]
                for n in (run_name(b, s) for s in range(config.num_seeds))
                if "train" in runs.get(n, {})
            ]
            if not done:
                continue
            row = {"num_seeds": len(done)}
            for split in SPLITS:
                for key, _, _ in columns(config):
                    vals = np.array([r[split][key] for r in done], float)
                    row[f"{split}_{key}"] = {"mean": float(vals.mean()), "std": float(vals.std())}
            curv = [r["curvature"] for r in done if "curvature" in r]
            if curv:
                row["curvature"] = curvature.summary(curv)
            summary[str(b)] = row
        bs = [int(b) for b in summary]
        rho = {
            split: spearman(bs, [summary[str(b)][f"{split}_lambda_max"]["mean"] for b in bs])
            for split in SPLITS
        }
        return {"per_batch_size": summary, "spearman_lambda_max_vs_batch": rho}

    def table(self, config, results: dict) -> str:
        """Table 1's layout: one row per batch size, "train (test)" per column."""
        per = results["summary"]["per_batch_size"]

        def fmt(stat, scale, n):
            m, s = stat["mean"] * scale, stat["std"] * scale
            return f"{m:.4g} ± {s:.4g}" if n > 1 else f"{m:.4g}"

        def cell(row, key, scale):
            n = row["num_seeds"]
            return f"{fmt(row[f'train_{key}'], scale, n)} ({fmt(row[f'test_{key}'], scale, n)})"

        rows = [[b] + [cell(row, k, sc) for k, _, sc in columns(config)] for b, row in per.items()]
        lines = [
            f"# {config.name}: {config.model.upper()} / {config.dataset}, train (test)",
            "",
            f"FGSM ε₁ = {config.fgsm_eps[0]}, ε₂ = {config.fgsm_eps[1]}; mean ± std over seeds "
            "when more than one.",
            "",
            *plots.markdown_table(["Batch"] + [t for _, t, _ in columns(config)], rows),
        ]
        diverged = sorted(k for k, r in results["runs"].items() if r.get("status") == "diverged")
        if diverged:
            lines += ["", f"Diverged (excluded): {', '.join(diverged)}"]
        lines += ["", training_line(config, results["runs"])]
        rho = results["summary"]["spearman_lambda_max_vs_batch"]
        lines += [
            "",
            f"Spearman ρ(λ_max^θ, batch size): train {rho['train']:.3f}, test {rho['test']:.3f}",
        ]
        lines += curvature.table_lines(config, _curvature_rows(per), "Batch")
        return "\n".join(lines) + "\n"

    def figures(self, config, results: dict, folder: pathlib.Path) -> list[pathlib.Path]:
        """Fig. 1 (spectra), 2 (1-D landscapes), 3 (2-D landscapes, one colour scale), 4
        (training curves, when at least two epochs were tracked); first analysed seed."""
        plt = plots.pyplot()
        runs = []
        for b in config.batch_sizes:
            for s in range(config.num_seeds):
                r = results["runs"].get(run_name(b, s))
                if r and "train" in r:
                    runs.append((b, r))
                    break
        if not runs:
            return []
        colors = plt.cm.viridis(np.linspace(0, 0.9, len(runs)))
        paths = []

        def spectrum(r):
            ev = np.asarray(r["eigenvalues"])
            return np.arange(1, len(ev) + 1), ev, "o-"

        def line(r):
            return r["landscape_1d"]["t"], r["landscape_1d"]["loss"], "-"

        eigenvalue, top = r"eigenvalue $\lambda_i(\nabla^2_\theta L)$", config.hessian.k
        panels = (
            ("fig1_spectrum", "Fig. 1", spectrum, "eigenvalue index", eigenvalue,
             f"Top-{top} Hessian spectrum"),
            ("fig2_landscape_1d", "Fig. 2", line, "t  (θ + t·v₁)", "cross-entropy loss",
             "Loss along the top eigenvector"),
        )  # fmt: skip
        for name, fig_title, draw, xlabel, ylabel, title in panels:
            fig, axes = plt.subplots(1, 2, figsize=(10, 4))
            for ax, split in zip(axes, SPLITS, strict=True):
                values = []
                for (b, r), col in zip(runs, colors, strict=True):
                    xs, ys, style = draw(r[split])
                    values += list(ys)
                    ax.plot(xs, ys, style, color=col, label=f"B={b}")
                plots.value_scale(ax, values)
                if draw is spectrum:
                    plots.integer_ticks(ax)
                ax.set(xlabel=xlabel, ylabel=ylabel, title=f"{title} ({split})")
                ax.grid(True, which="both", alpha=0.3)
                ax.legend(title="batch size", fontsize=8)
            fig.suptitle(f"{config.name}: {fig_title}")
            fig.tight_layout()
            paths.append(plots.save(fig, folder / f"{name}.png"))

        paths.append(self._landscape_2d_figure(config, runs, folder, plt))
        tracked = [(b, [h for h in r.get("history", []) if "lambda_max" in h]) for b, r in runs]
        if max((len(h) for _, h in tracked), default=0) >= 2:
            paths.append(self._training_figure(config, tracked, colors, folder, plt))
        per = results["summary"]["per_batch_size"]
        rows = _curvature_rows(per)
        if rows:
            path = folder / "fig_layers.png"
            paths.append(curvature.figure(config, rows, path, xlabel="batch size"))
        return paths

    def _landscape_2d_figure(self, config, runs, folder, plt) -> pathlib.Path:
        """Fig. 3: contours of the loss on θ + t₁v₁ + t₂v₂, one colour scale for all panels."""
        surfaces = [np.asarray(r[s]["landscape_2d"]["loss"]) for _, r in runs for s in SPLITS]
        finite = np.concatenate([z[np.isfinite(z)] for z in surfaces])
        levels = np.linspace(finite.min(), finite.max(), 16)
        fig, axes = plt.subplots(
            2,
            len(runs),
            figsize=(3.4 * len(runs) + 1.2, 6.4),
            squeeze=False,
            constrained_layout=True,
        )
        for col, (b, r) in enumerate(runs):
            for row, split in enumerate(SPLITS):
                ax = axes[row, col]
                land = r[split]["landscape_2d"]
                g, z = np.asarray(land["t"]), np.asarray(land["loss"])
                cs = ax.contourf(g, g, z.T, levels=levels, cmap="viridis", extend="both")
                ax.set_title(f"B={b} ({split})", fontsize=9)
                ax.set_xlabel("t₁ (v₁)")
                ax.set_ylabel("t₂ (v₂)")
        fig.colorbar(cs, ax=axes, label="cross-entropy loss (one scale for all panels)")
        fig.suptitle(f"{config.name}: Fig. 3, loss on θ + t₁v₁ + t₂v₂")
        return plots.save(fig, folder / "fig3_landscape_2d.png")

    def _training_figure(self, config, tracked, colors, folder, plt) -> pathlib.Path:
        """Fig. 4: training loss, λ_max(∇²L) and ‖∇L‖ per epoch, one line per batch size."""
        panels = (
            ("train_loss", "training loss (full set)"),
            ("lambda_max", r"$\lambda_{max}$ of $\nabla^2_\theta L$"),
            ("grad_norm", r"$\|\nabla_\theta L\|$"),
        )
        fig, axes = plt.subplots(1, 3, figsize=(13, 3.8))
        for ax, (key, label) in zip(axes, panels, strict=True):
            values = []
            for (b, history), col in zip(tracked, colors, strict=False):
                pts = [(h["epoch"], h[key]) for h in history if key in h]
                if pts:
                    values += [v for _, v in pts]
                    ax.plot(*zip(*pts, strict=True), "o-", ms=3, color=col, label=f"B={b}")
            plots.value_scale(ax, values)
            plots.integer_ticks(ax)
            ax.set_xlabel("epoch")
            ax.set_ylabel(label)
            ax.grid(True, which="both", alpha=0.3)
        axes[0].legend(title="batch size", fontsize=8)
        n = config.track.num_samples
        fig.suptitle(
            f"{config.name}: Fig. 4, during training (Hessian, gradient on {n} train samples)"
        )
        fig.tight_layout()
        return plots.save(fig, folder / "fig4_training.png")


STUDY = BatchSweep()

if __name__ == "__main__":
    runner.main(STUDY)
