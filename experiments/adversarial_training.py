"""Robust-training study (docs/paper.md, "Robust training (Tables 3, 4, 8)"; Figs. 5, 6, 10-12):
train the original model, continue it with adversarial training under each of FGSM, FGSM-10,
GRAD, FHSM, HESS, then for all six models measure clean and adversarial test accuracy, the top-k
spectrum of the training-set Hessian and of sub-sampled Hessians (b_H = 1 and another size,
several random subsets; at b_H = 1 also the most negative eigenvalues and the gradient norm at
that sample), and the loss along the line (1 − α)θ_orig + α·θ_robust (BatchNorm statistics
interpolated too).

    python experiments/adversarial_training.py --config=experiments/configs/m1_robust.py:smoke
        [--workdir=DIR] [--analyze_only] [--config.robust.eps_linf=0.3]

Run by :mod:`experiments.runner`. ``workdir`` (default ``runs/<config.name>``) holds
``config.json``, ``results.json``, ``table.md`` (Table 3's layout plus the flatness columns),
``figures/`` (``spectra.png``: Fig. 6/12; ``interpolation.png``: Fig. 5/10/11) and one folder per
model (``original/``, ``fgsm/``, ...: checkpoints, metrics.jsonl, record.json).
"""

from __future__ import annotations

import pathlib
import sys

if __package__ in (None, ""):  # `python experiments/<study>.py`: make `experiments` importable
    sys.path.insert(1, str(pathlib.Path(__file__).resolve().parents[1]))

import jax
import numpy as np

import hessjax
from experiments import checks, curvature, plots, runner
from hessjax import attacks, landscape, tree
from hessjax import data as hdata
from hessjax import models as hmodels
from hessjax import train as htrain
from hessjax.adversarial import Adversary
from hessjax.evaluation import evaluate, full_gradient_norm

ORIGINAL = "original"


def _display(name: str) -> str:
    return "Original" if name == ORIGINAL else attacks.spec(name).display


def adversary_for(config, attack: str, section) -> Adversary:
    """The :class:`Adversary` of ``attack`` with ``section``'s ε for its norm (``config.robust``
    for training, ``config.evaluation`` for the evaluation) and its options."""
    spec = attacks.spec(attack)
    eps = section.eps_linf if spec.norm == "linf" else section.eps_l2
    factor = section.get("ifgsm_step_factor")
    options = spec.pick_options(
        steps=config.robust.ifgsm_steps,
        step_size=None if factor is None else factor * eps,
        cg_iters=section.cg_iters,
        cg_tol=section.get("cg_tol"),
    )
    return Adversary(
        spec.key, eps, config.robust.fraction, hdata.input_range(config.dataset), options=options
    )


def _negated(op, v):
    return tree.scale(op(v), -1.0)


def _spectrum(op, params, key, k, tol, max_matvecs, method="lanczos") -> dict:
    eig = hessjax.eigenvalues(
        op, params, k=k, method=method, tol=tol, max_matvecs=max_matvecs, key=key
    )
    return {
        "eigenvalues": np.asarray(eig.values, np.float64).tolist(),
        "residuals": np.asarray(eig.residuals, np.float64).tolist(),
        "num_matvecs": int(eig.num_matvecs),
        "converged": bool(eig.converged),
    }


def _sub_stat(record: dict, b, fn) -> float:
    runs = record["hessian"]["subsampled"].get(str(b), [])
    return float(np.mean([fn(r) for r in runs])) if runs else float("nan")


class AdversarialTraining:
    """The robust-training study as a :class:`experiments.runner.Study`."""

    name = "adversarial_training"
    extensible = ("curvature",)  # analyses beyond the paper, added with --analyze_only

    # -- config ----------------------------------------------------------------------------------

    def validate(self, config) -> list[str]:
        errors = checks.batch_errors(config, config.batch_size)
        errors += checks.optimizer_errors("original", config.original)
        errors += checks.optimizer_errors("robust", config.robust)
        rc, ec, hc, ic = config.robust, config.evaluation, config.hessian, config.interpolation
        if not rc.attacks:
            errors.append("robust.attacks is empty; use some of " + ", ".join(attacks.REGISTRY))
        errors += checks.attack_name_errors(list(rc.attacks), "robust.attacks")
        eps_fields = ("eps_linf", "eps_l2")
        errors += checks.attack_errors("robust", rc, eps_fields=eps_fields, fraction=rc.fraction)
        errors += checks.attack_errors("evaluation", ec, eps_fields=eps_fields)
        for name in ("ifgsm_steps", "cg_iters"):
            errors += checks.positive_int(f"robust.{name}", rc[name])
        errors += checks.positive_int("evaluation.cg_iters", ec.cg_iters)
        for name, section in (("robust", rc), ("evaluation", ec)):
            if section.get("ifgsm_step_factor") is not None:
                errors += checks.positive(f"{name}.ifgsm_step_factor", section.ifgsm_step_factor)
            if section.get("cg_tol") is not None and not section.cg_tol >= 0:
                errors.append(f"{name}.cg_tol must be >= 0, got {section.cg_tol}")
        errors += checks.positive_int("evaluation.batch_size", ec.batch_size)
        errors += checks.positive_int("evaluation.num_samples", ec.num_samples, optional=True)
        errors += checks.positive_int("eval_batch_size", config.eval_batch_size)
        errors += checks.positive_int("hessian.k", hc.k)
        if hc.method not in ("lanczos", "power"):
            errors.append(f"hessian.method must be 'lanczos' or 'power', got {hc.method!r}")
        errors += checks.positive("hessian.tol", hc.tol) + checks.positive(
            "hessian.subsample_tol", hc.subsample_tol
        )
        limit = config.train_limit
        for b in hc.subsample_sizes:
            if not checks.is_positive_int(b) or (limit is not None and b > limit):
                errors.append(f"hessian.subsample_sizes: {b!r} must be an int in [1, train_limit]")
        if not checks.is_positive_int(hc.num_subsets) or not isinstance(hc.num_negative, int):
            errors.append("hessian.num_subsets must be >= 1 and hessian.num_negative an int >= 0")
        if not (ic.alpha_min < ic.alpha_max and ic.num_points >= 2):
            errors.append("interpolation needs alpha_min < alpha_max and num_points >= 2")
        return errors + curvature.config_errors(config.curvature)

    def sharded_sizes(self, config) -> list[tuple[str, int]]:
        m = (
            checks.micro_batch(config, config.batch_size)
            if checks.is_positive_int(config.batch_size)
            else None
        )
        return [("micro-batches", m)]

    def runs(self, config) -> list[runner.Run]:
        robust = [runner.Run(a, {"attack": a}, needs=(ORIGINAL,)) for a in config.robust.attacks]
        return [runner.Run(ORIGINAL, {}), *robust]

    # -- training ----------------------------------------------------------------------------------

    def train(self, ctx, run):
        config = ctx.config
        x, y = ctx.data["train"]
        robust = run.name != ORIGINAL
        section = config.robust if robust else config.original
        tx = htrain.make_optimizer_for(section, len(y) // config.batch_size)
        if robust:
            variables = ctx.variables_of(ORIGINAL)
            adversary = adversary_for(config, run.name, config.robust)
            seed = config.seed + 1 + list(config.robust.attacks).index(run.name)
        else:
            variables = hmodels.init(ctx.model, jax.random.key(config.seed))
            adversary, seed = None, config.seed
        state = htrain.init_state(variables, tx, config.seed)
        step = htrain.TrainStep(
            ctx.train_model.apply,
            tx,
            micro_batch_size=checks.micro_batch(config, config.batch_size),
            adversary=adversary,
            mesh=ctx.mesh,
        )
        epochs = section.num_epochs
        result = ctx.fit_or_restore(
            run.name, step, state, batch_size=config.batch_size, num_epochs=epochs, seed=seed
        )
        variables = htrain.state_variables(result.state)
        return variables, (
            {} if ctx.analyze_only else {"status": result.status, "epochs": result.epoch}
        )

    # -- analysis ----------------------------------------------------------------------------------

    def analyze(self, ctx, run, variables) -> dict:
        config = ctx.config
        ec = config.evaluation
        with ctx.phase(f"accuracy and attacks on {ec.num_samples or 'all'} test images"):
            record = self.evaluate_attacks(ctx, variables)
        with ctx.phase(f"Hessian spectra (top {config.hessian.k})"):
            record["hessian"] = self.hessian_analysis(ctx, variables)
        if config.curvature.enabled:  # the same samples and key for every model
            x, y = ctx.data["train"]
            n = config.curvature.num_samples or config.hessian.num_samples or len(y)
            key = jax.random.fold_in(jax.random.key(config.seed), 100)
            record["curvature"] = curvature.measure(
                ctx, variables, (x[:n], y[:n]), key, batch_size=config.hessian.batch_size
            )
        if run.name != ORIGINAL:
            with ctx.phase("interpolation original → robust"):
                record["interpolation"] = self.interpolation_analysis(ctx, variables)
        full = record["hessian"]["full"]
        adv = " ".join(f"{_display(a)} {v:.3f}" for a, v in record["adversarial"].items())
        ctx.log(
            f"  clean {record['test_accuracy']:.4f} | {adv} | mean {record['mean_adversarial']:.4f}"
            f" | λ_max {full['lambda_max']:.4g}"
        )
        return record

    def evaluate_attacks(self, ctx, variables) -> dict:
        """Clean train/test loss and accuracy; test accuracy under every attack of the config."""
        config, mesh, apply_fn = ctx.config, ctx.mesh, ctx.model.apply
        ec = config.evaluation
        out = {}
        for split in ("train", "test"):
            loss, acc = evaluate(
                apply_fn, variables, *ctx.data[split], config.eval_batch_size, mesh=mesh
            )
            out[f"{split}_loss"], out[f"{split}_accuracy"] = loss, acc
        x, y = ctx.data["test"]
        n = len(y) if ec.num_samples is None else min(ec.num_samples, len(y))
        adv = {}
        for attack in config.robust.attacks:
            a = adversary_for(config, attack, ec)
            adv[attack] = float(
                attacks.adversarial_accuracy(
                    apply_fn,
                    variables,
                    x[:n],
                    y[:n],
                    a.attack,
                    a.eps,
                    clip=a.clip,
                    batch_size=min(ec.batch_size, n),
                    mesh=mesh,
                    **dict(a.options),
                )
            )
        out["adversarial"] = adv
        out["mean_adversarial"] = float(np.mean(list(adv.values())))
        out["attacked_samples"] = n
        return out

    def hessian_analysis(self, ctx, variables) -> dict:
        """Top-k spectrum of the training-set Hessian and of sub-sampled Hessians (Figs. 6, 12)."""
        config = ctx.config
        hc = config.hessian
        params = variables["params"]
        loss_fn = hessjax.make_loss_fn(ctx.model.apply, variables)
        x, y = ctx.data["train"]
        key = jax.random.key(config.seed)
        n = len(y) if hc.num_samples is None else min(hc.num_samples, len(y))
        bs = min(hc.batch_size, n)
        mesh = ctx.mesh_for(bs)
        op = hessjax.hessian_operator(loss_fn, params, (x[:n], y[:n]), batch_size=bs, mesh=mesh)
        k = min(hc.k, hmodels.param_count(params))
        full = _spectrum(
            op, params, jax.random.fold_in(key, 0), k, hc.tol, hc.max_matvecs, hc.method
        )
        full["lambda_max"] = full["eigenvalues"][0]
        full["grad_norm"] = full_gradient_norm(loss_fn, params, (x[:n], y[:n]), bs, mesh=mesh)
        full["num_samples"] = n
        out = {"full": full, "subsampled": {}}
        for b in hc.subsample_sizes:
            runs = []
            for s in range(hc.num_subsets):
                # The same subsets for every model (the key depends on b and s only).
                sub_key = jax.random.fold_in(jax.random.fold_in(key, 1000 + b), s)
                sub = hessjax.subsample((x, y), b, key=sub_key)
                sb = min(b, 256)
                sop = hessjax.hessian_operator(
                    loss_fn, params, sub, batch_size=sb, mesh=ctx.mesh_for(sb)
                )
                ks = jax.random.fold_in(sub_key, 1)
                r = _spectrum(sop, params, ks, k, hc.subsample_tol, hc.subsample_max_matvecs)
                if b == 1 and hc.num_negative > 0:
                    neg = jax.tree_util.Partial(_negated, sop)
                    bottom = _spectrum(
                        neg, params, ks, hc.num_negative, hc.subsample_tol, hc.subsample_max_matvecs
                    )
                    r["bottom_eigenvalues"] = [-v for v in bottom["eigenvalues"]]  # smallest first
                    r["bottom_residuals"] = bottom["residuals"]
                r["grad_norm"] = full_gradient_norm(loss_fn, params, sub, sb, mesh=ctx.mesh_for(sb))
                r["loss"] = float(loss_fn(params, jax.tree_util.tree_map(np.asarray, sub)))
                runs.append(r)
            out["subsampled"][str(b)] = runs
        return out

    def interpolation_analysis(self, ctx, robust) -> dict:
        """Train/test loss and accuracy along (1 − α)θ_orig + α·θ_robust (Fig. 5)."""
        config = ctx.config
        ic = config.interpolation
        alphas = np.linspace(ic.alpha_min, ic.alpha_max, ic.num_points)
        out = {"alpha": alphas.tolist()}
        original = ctx.variables_of(ORIGINAL)
        for split in ("train", "test"):
            x, y = ctx.data[split]
            n = len(y) if ic.num_samples is None else min(ic.num_samples, len(y))
            curve = landscape.interpolation(
                ctx.model.apply,
                original,
                robust,
                x[:n],
                y[:n],
                alphas,
                batch_size=config.eval_batch_size,
                mesh=ctx.mesh,
            )
            out[f"{split}_loss"] = curve["loss"].tolist()
            out[f"{split}_accuracy"] = curve["accuracy"].tolist()
            out[f"{split}_samples"] = n
        return out

    # -- summary, table, figures -------------------------------------------------------------------

    def summarize(self, config, runs: dict) -> dict:
        """Robust vs original: mean adversarial accuracy and λ_max^θ."""
        orig = runs.get(ORIGINAL, {})
        if "hessian" not in orig:
            return {}
        o_acc, o_lam = orig["mean_adversarial"], orig["hessian"]["full"]["lambda_max"]
        out = {}
        for a in config.robust.attacks:
            r = runs.get(a)
            if not r or "hessian" not in r:
                continue
            acc, lam = r["mean_adversarial"], r["hessian"]["full"]["lambda_max"]
            out[a] = {
                "mean_adversarial_gain": acc - o_acc,
                "lambda_max_ratio": lam / o_lam,
                "more_robust": acc > o_acc,
                "flatter": lam < o_lam,
            }
        return out

    def _analysed(self, config, results) -> list[str]:
        runs = results["runs"]
        return [n for n in (ORIGINAL, *config.robust.attacks) if "hessian" in runs.get(n, {})]

    def table(self, config, results: dict) -> str:
        """Table 3's layout (accuracies in %), then the flatness of every model."""
        runs, names = results["runs"], self._analysed(config, results)
        attack_names = list(config.robust.attacks)
        ec, rc, hc = config.evaluation, config.robust, config.hessian
        attacked = runs[names[0]]["attacked_samples"] if names else "?"
        rows = [
            [_display(n), f"{100 * runs[n]['test_accuracy']:.2f}"]
            + [f"{100 * runs[n]['adversarial'][a]:.2f}" for a in attack_names]
            + [f"{100 * runs[n]['mean_adversarial']:.2f}"]
            for n in names
        ]
        lines = [
            f"# {config.name}: {config.model.upper()} / {config.dataset}, test accuracy (%)",
            "",
            f"Attacks: ε∞ = {ec.eps_linf} (FGSM, FGSM-10, FHSM), ε₂ = {ec.eps_l2} (GRAD, HESS), "
            f"on {attacked} test images; robust training with ε∞ = {rc.eps_linf}, ε₂ = "
            f"{rc.eps_l2}, fraction {rc.fraction}, {rc.num_epochs} epochs.",
            "",
            *plots.markdown_table(
                ["Training", "Clean"] + [_display(a) for a in attack_names] + ["Mean"], rows
            ),
        ]
        sizes = list(hc.subsample_sizes)
        head = ["Training", "λ_max^θ (full)", "Σ top-k (full)", "‖∇L‖ (full)"]
        head += [f"λ_max b_H={b}" for b in sizes]
        if 1 in sizes:
            head += ["λ_min b_H=1", "‖∇ℓ‖ b_H=1"]
        rows = []
        for n in names:
            f = runs[n]["hessian"]["full"]
            cells = [
                _display(n),
                f"{f['lambda_max']:.4g}",
                f"{sum(f['eigenvalues']):.4g}",
                f"{f['grad_norm']:.3g}",
            ]
            cells += [f"{_sub_stat(runs[n], b, lambda r: r['eigenvalues'][0]):.4g}" for b in sizes]
            if 1 in sizes:
                lmin = _sub_stat(
                    runs[n], 1, lambda r: min(r.get("bottom_eigenvalues", r["eigenvalues"]))
                )
                cells += [f"{lmin:.3g}", f"{_sub_stat(runs[n], 1, lambda r: r['grad_norm']):.3g}"]
            rows.append(cells)
        full_n = runs[names[0]]["hessian"]["full"]["num_samples"] if names else "?"
        lines += [
            "",
            f"Flatness: top-{hc.k} eigenvalues of the Hessian of the loss over {full_n} training "
            f'images ("full"), and of sub-sampled Hessians (mean over {hc.num_subsets} random '
            "subsets, the same for every model).",
            "",
            *plots.markdown_table(head, rows),
        ]
        summary = results.get("summary") or {}
        if summary:
            more = [_display(a) for a, s in summary.items() if s["more_robust"]]
            flat = [_display(a) for a, s in summary.items() if s["flatter"]]
            lines += [
                "",
                "Robust models with a higher mean adversarial accuracy than the original: "
                f"{len(more)}/{len(summary)} ({', '.join(more) or 'none'}).",
                "Robust models with a smaller λ_max^θ than the original: "
                f"{len(flat)}/{len(summary)} ({', '.join(flat) or 'none'}).",
            ]
        if 1 in sizes and names:
            ones = [r for n in names for r in runs[n]["hessian"]["subsampled"]["1"]]
            neg = [
                r for r in ones if any(v < 0 for v in r.get("bottom_eigenvalues", r["eigenvalues"]))
            ]
            moving = [r for r in neg if r["grad_norm"] > 0]
            smallest = min((r["grad_norm"] for r in neg), default=float("nan"))
            lines.append(
                f"b_H = 1: {len(neg)}/{len(ones)} single-sample Hessians have a negative "
                f"eigenvalue; {len(moving)} of them at a non-zero gradient (smallest ‖∇ℓ‖ "
                f"{smallest:.3g}): curvature of both signs, and not a saddle point."
            )
        lines += curvature.table_lines(config, self._curvature_rows(runs, names), "Training")
        return "\n".join(lines) + "\n"

    @staticmethod
    def _curvature_rows(runs: dict, names: list[str]) -> dict:
        """``{display name: curvature.summary}`` of the models with a curvature record."""
        return {
            _display(n): curvature.summary([runs[n]["curvature"]])
            for n in names
            if "curvature" in runs[n]
        }

    def figures(self, config, results: dict, folder: pathlib.Path) -> list[pathlib.Path]:
        """``spectra.png`` (Fig. 6/12) and ``interpolation.png`` (Fig. 5/10/11)."""
        plt = plots.pyplot()
        runs, names = results["runs"], self._analysed(config, results)
        if not names:
            return []
        colors = dict(zip(names, plt.cm.tab10(np.arange(len(names))), strict=True))
        markers = dict(zip(names, "osD^P*Xh", strict=False))  # "v" marks negatives
        # Models share eigenvalue indices: a small horizontal offset per model keeps
        # overlapping lines (e.g. b_H = 1, where models agree) visible.
        offsets = dict(zip(names, np.linspace(-0.2, 0.2, len(names)), strict=True))
        sizes = list(config.hessian.subsample_sizes)
        panels = [("full", None)] + [("sub", b) for b in sizes]
        fig, axes = plt.subplots(1, len(panels), figsize=(4.6 * len(panels), 4.2), squeeze=False)
        for ax, (kind, b) in zip(axes[0], panels, strict=True):
            values = []
            for n in names:
                h = runs[n]["hessian"]
                for i, r in enumerate([h["full"]] if kind == "full" else h["subsampled"][str(b)]):
                    ev = np.asarray(r["eigenvalues"])
                    values += list(ev)
                    style = dict(color=colors[n], alpha=1.0 if i == 0 else 0.5, ms=4)
                    ax.plot(
                        np.arange(1, len(ev) + 1) + offsets[n],
                        ev,
                        marker=markers[n],
                        ls="-" if i == 0 else "--",
                        label=_display(n).lower() if i == 0 else None,
                        **style,
                    )
                    if "bottom_eigenvalues" in r:  # negative end of the spectrum, at the right
                        bot = np.asarray(r["bottom_eigenvalues"])
                        values += list(bot)
                        ax.plot(
                            len(ev) + 1 + np.arange(len(bot)) + offsets[n], bot, "v", ls="", **style
                        )
            title = (
                f"full Hessian ({runs[names[0]]['hessian']['full']['num_samples']} samples)"
                if kind == "full"
                else f"sub-sampled Hessian, b_H = {b}"
            )
            ax.set_title(title, fontsize=10)
            ax.set_xlabel("eigenvalue index (▼: most negative)" if b == 1 else "eigenvalue index")
            ax.set_ylabel(r"eigenvalue of $\nabla^2_\theta L$")
            if min(values) > 0:
                plots.value_scale(ax, values)
            else:
                ax.set_yscale("symlog", linthresh=1e-2)
            ax.axhline(0, color="k", lw=0.6)
            plots.integer_ticks(ax)
            ax.grid(True, which="both", alpha=0.3)
            ax.legend(fontsize=7, title="model", title_fontsize=7)
        fig.suptitle(f"{config.name}: top-{config.hessian.k} Hessian spectra (Fig. 6 / 12)")
        fig.tight_layout()
        paths = [plots.save(fig, folder / "spectra.png")]

        robust = [n for n in names if n != ORIGINAL and "interpolation" in runs[n]]
        if robust:
            fig, axes = plt.subplots(1, 2, figsize=(10, 4.2))
            for ax, split in zip(axes, ("train", "test"), strict=True):
                values = []
                for n in robust:
                    it = runs[n]["interpolation"]
                    values += it[f"{split}_loss"]
                    ax.plot(
                        it["alpha"], it[f"{split}_loss"], "-", color=colors[n], label=_display(n)
                    )
                ax.axvline(0, color="k", lw=0.6, ls=":")
                ax.axvline(1, color="k", lw=0.6, ls=":")
                plots.value_scale(ax, values)
                ax.set_xlabel(r"$\alpha$:  $(1-\alpha)\,\theta_{orig} + \alpha\,\theta_{robust}$")
                ax.set_ylabel(f"{split} cross-entropy loss")
                ax.set_title(f"{split} loss (α=0: original, α=1: robust)", fontsize=10)
                ax.grid(True, which="both", alpha=0.3)
                ax.legend(fontsize=8, title="robust training", title_fontsize=8)
            fig.suptitle(f"{config.name}: interpolation original → robust (Fig. 5)")
            fig.tight_layout()
            paths.append(plots.save(fig, folder / "interpolation.png"))
        rows = self._curvature_rows(runs, names)
        if rows:
            path = folder / "fig_layers.png"
            paths.append(curvature.figure(config, rows, path, xlabel="training"))
        return paths


STUDY = AdversarialTraining()

if __name__ == "__main__":
    runner.main(STUDY)
