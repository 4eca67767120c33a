"""Robust-training study (PAPER.md Tables 3 and 4, Figs. 5, 6, 10-12): train the original model,
continue it with adversarial training under each of FGSM, FGSM-10, GRAD, FHSM, HESS, then for all
six models measure clean and adversarial test accuracy, the top-k spectrum of the training-set
Hessian and of sub-sampled Hessians (b_H = 1 and another size, several random subsets; at
b_H = 1 also the most negative eigenvalues and the gradient norm at that sample), and the loss
along the line (1 − α)θ_orig + α·θ_robust (BatchNorm statistics interpolated too).

    python -m experiments.adversarial_training --config=experiments/configs/m1_robust.py:smoke
        [--workdir=DIR] [--analyze_only] [--config.robust.eps_linf=0.3]

``workdir`` (default ``runs/<config.name>``) holds ``config.json``, ``results.json`` (rewritten
atomically after every finished model, so an interrupted study resumes and never redoes a finished
model; training itself resumes from orbax checkpoints), ``table.md`` (Table 3's layout plus the
flatness columns), ``figures/`` (``spectra.png``: Fig. 6/12; ``interpolation.png``: Fig. 5/10/11)
and one folder per model (``original/``, ``robust_<attack>/``: checkpoints, metrics.jsonl).
``--analyze_only`` re-runs the analyses on the saved checkpoints without training. Notebooks call
:func:`run_robust`.
"""

from __future__ import annotations

import os
import pathlib
import sys
import time
from typing import Any

# `python experiments/<script>.py` puts experiments/ first on sys.path; the repository root must
# be importable too (`from experiments... import`).
_ROOT = str(pathlib.Path(__file__).resolve().parents[1])
if _ROOT not in sys.path:
    sys.path.insert(1, _ROOT)

import jax
import numpy as np

import hessjax
from experiments.batch_sweep import (
    _to_dict,
    _workdir_errors,
    get_model,
    load_data,
    load_results,
    write_json,
)
from hessjax import attacks as hattacks
from hessjax import data as hdata
from hessjax import models as hmodels
from hessjax import train as htrain
from hessjax import tree
from hessjax.adversarial import NORMS, Adversary, adversary_errors

RESULTS = "results.json"
ORIGINAL = "original"


def _log(msg: str) -> None:
    print(f"[adversarial_training] {msg}", flush=True)


def model_dir_name(name: str) -> str:
    return ORIGINAL if name == ORIGINAL else f"robust_{name}"


def model_names(config) -> list[str]:
    """``["original", *config.robust.attacks]`` (attacks as registry keys)."""
    return [ORIGINAL, *config.robust.attacks]


# ----------------------------------------------------------------------------- validation


def _is_pos_int(v) -> bool:
    return isinstance(v, int) and not isinstance(v, bool) and v >= 1


def _schedule_errors(prefix: str, oc) -> list[str]:
    errors = []
    if not oc.lr > 0:
        errors.append(f"{prefix}.lr must be > 0, got {oc.lr}")
    if not 0 <= oc.momentum < 1:
        errors.append(f"{prefix}.momentum must be in [0, 1), got {oc.momentum}")
    if not isinstance(oc.num_epochs, int) or oc.num_epochs < 0:
        errors.append(f"{prefix}.num_epochs must be an int >= 0, got {oc.num_epochs!r}")
    return errors


def model_errors(config) -> list[str]:
    """Dataset/model/batch problems shared by the robust experiments."""
    errors = []
    if config.dataset not in hdata.DATASETS:
        errors.append(f"unknown dataset {config.dataset!r}; valid: {', '.join(hdata.DATASETS)}")
    try:
        shape = hmodels.input_shape(config.model)
    except ValueError as e:
        errors.append(str(e))
        shape = None
    if shape is not None and config.dataset in hdata.DATASETS and config.dataset != "synthetic":
        if tuple(shape) != tuple(hdata.image_shape(config.dataset)):
            errors.append(
                f"model {config.model!r} takes inputs {shape} but {config.dataset!r} images are "
                f"{hdata.image_shape(config.dataset)}; pair m1 with mnist, c1/c2/c3 with cifar10"
            )
    return errors


def batch_errors(config, batch_size) -> list[str]:
    if not _is_pos_int(batch_size):
        return [f"batch size {batch_size!r} must be a positive integer"]
    errors = []
    m = config.micro_batch_size
    if m is not None and not _is_pos_int(m):
        errors.append(f"micro_batch_size must be a positive integer or None, got {m!r}")
    elif m is not None and batch_size % min(m, batch_size):
        errors.append(
            f"batch size {batch_size} is not divisible by micro_batch_size={m}; use a multiple "
            f"of {m} (or a micro_batch_size that divides {batch_size})"
        )
    if config.train_limit is not None and batch_size > config.train_limit:
        errors.append(f"batch size {batch_size} exceeds train_limit={config.train_limit}")
    return errors


def validate(config, workdir: str | os.PathLike | None = None) -> None:
    """Raise one ``ValueError`` listing every problem with ``config`` (and the workdir)."""
    errors = model_errors(config) + batch_errors(config, config.batch_size)
    errors += _schedule_errors("original", config.original)
    errors += _schedule_errors("robust", config.robust)
    rc, ec, hc, ic = config.robust, config.evaluation, config.hessian, config.interpolation
    if not rc.attacks:
        errors.append("robust.attacks is empty; use some of " + ", ".join(NORMS))
    for a in rc.attacks:
        if a not in NORMS:
            errors.append(f"unknown attack {a!r} in robust.attacks; valid: {', '.join(NORMS)}")
    if len(set(rc.attacks)) != len(rc.attacks):
        errors.append(f"robust.attacks has duplicates: {list(rc.attacks)}")
    for prefix, c in (("robust", rc), ("evaluation", ec)):
        for field in ("eps_linf", "eps_l2"):
            errors += [f"{prefix}.{field}: {m}" for m in adversary_errors("fgsm", c[field], 1.0)]
    errors += adversary_errors("fgsm", 0.0, rc.fraction)
    for name in ("ifgsm_steps", "cg_iters"):
        if not _is_pos_int(rc[name]):
            errors.append(f"robust.{name} must be a positive int, got {rc[name]!r}")
    if not _is_pos_int(ec.cg_iters) or not _is_pos_int(ec.batch_size):
        errors.append("evaluation.cg_iters and evaluation.batch_size must be positive ints")
    if ec.num_samples is not None and not _is_pos_int(ec.num_samples):
        errors.append(f"evaluation.num_samples must be a positive int or None: {ec.num_samples}")
    if not _is_pos_int(hc.k):
        errors.append(f"hessian.k must be a positive int, got {hc.k!r}")
    if hc.method not in ("lanczos", "power"):
        errors.append(f"hessian.method must be 'lanczos' or 'power', got {hc.method!r}")
    if not (hc.tol > 0 and hc.subsample_tol > 0):
        errors.append("hessian.tol and hessian.subsample_tol must be positive")
    limit = config.train_limit
    for b in hc.subsample_sizes:
        if not _is_pos_int(b) or (limit is not None and b > limit):
            errors.append(f"hessian.subsample_sizes: {b!r} must be an int in [1, train_limit]")
    if not _is_pos_int(hc.num_subsets) or not isinstance(hc.num_negative, int):
        errors.append("hessian.num_subsets must be >= 1 and hessian.num_negative an int >= 0")
    if not (ic.alpha_min < ic.alpha_max and ic.num_points >= 2):
        errors.append("interpolation needs alpha_min < alpha_max and num_points >= 2")
    if workdir is not None:
        errors += _workdir_errors(config, workdir)
    if errors:
        raise ValueError(f"invalid config {config.name!r}:\n  - " + "\n  - ".join(errors))


# ----------------------------------------------------------------------------- training


def make_tx(oc, steps_per_epoch: int):
    """Momentum SGD with ``oc.lr`` scaled by ``oc.lr_decay_factor`` at ``oc.lr_decay_epochs``."""
    bounds = htrain.epochs_to_steps(oc.lr_decay_epochs, oc.lr_decay_factor, steps_per_epoch)
    if bounds:
        return htrain.make_optimizer(oc.lr, oc.momentum, "step", boundaries_and_scales=bounds)
    return htrain.make_optimizer(oc.lr, oc.momentum, "constant")


def adversary_for(config, attack: str, section=None) -> Adversary:
    """The :class:`Adversary` of ``attack`` with the config's ε for its norm (training by
    default; ``section=config.evaluation`` for the evaluation ε/CG iterations)."""
    rc = config.robust
    sec = section if section is not None else rc
    eps = sec.eps_linf if NORMS[attack] == "linf" else sec.eps_l2
    return Adversary(
        attack,
        eps,
        rc.fraction,
        hdata.input_range(config.dataset),
        **attack_kwargs(attack, rc.ifgsm_steps, sec.cg_iters),
    )


def attack_kwargs(attack: str, steps: int, cg_iters: int) -> dict:
    if attack == "fgsm10":
        return {"steps": steps}
    if attack in ("fhsm", "l2_hess"):
        return {"cg_iters": cg_iters}
    return {}


def train_model(config, data, name: str, workdir: pathlib.Path, start=None, train=True):
    """Train (or, ``train=False``, only restore) one model; ``(variables, status, epochs)``.

    ``name == "original"``: from the seed's initialisation with ``config.original``; else robust
    training with that attack from ``start`` (the original's variables) with ``config.robust``.
    """
    model = get_model(config.model)
    x, y = data["train"]
    spe = len(y) // config.batch_size
    robust = name != ORIGINAL
    oc = config.robust if robust else config.original
    tx = make_tx(oc, spe)
    if robust:
        variables = start
        adversary = adversary_for(config, name)
    else:
        variables = hmodels.init(model, jax.random.key(config.seed))
        adversary = None
    state = htrain.init_state(variables, tx, config.seed)
    step = htrain.TrainStep(
        model.apply,
        tx,
        micro_batch_size=min(config.micro_batch_size or config.batch_size, config.batch_size),
        adversary=adversary,
    )
    run_dir = workdir / model_dir_name(name)
    run_dir.mkdir(parents=True, exist_ok=True)
    ckpt = run_dir / "ckpt"
    if not train and not (ckpt.is_dir() and any(ckpt.iterdir())):
        raise FileNotFoundError(f"--analyze_only: no checkpoint in {ckpt}; train it first")
    result = htrain.fit(
        step,
        state,
        x,
        y,
        batch_size=config.batch_size,
        num_epochs=oc.num_epochs if train else 0,
        seed=config.seed + (0 if not robust else 1 + config.robust.attacks.index(name)),
        eval_batch_size=config.eval_batch_size,
        workdir=ckpt,
        metrics_file=run_dir / "metrics.jsonl",
        verbose=True,
    )
    return htrain.state_variables(result.state), result.status, result.epoch


# ----------------------------------------------------------------------------- analyses


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


def hessian_analysis(config, model, variables, data) -> dict:
    """Top-k spectrum of the training-set Hessian and of sub-sampled Hessians (Figs. 6, 12)."""
    hc = config.hessian
    params = variables["params"]
    loss_fn = hessjax.make_loss_fn(model.apply, variables)
    x, y = data["train"]
    key = jax.random.key(config.seed)
    n = len(y) if hc.num_samples is None else min(hc.num_samples, len(y))
    xh, yh = x[:n], y[:n]
    bs = min(hc.batch_size, n)
    op = hessjax.hessian_operator(loss_fn, params, (xh, yh), batch_size=bs)
    k = min(hc.k, hessjax.models.param_count(params))
    full = _spectrum(op, params, jax.random.fold_in(key, 0), k, hc.tol, hc.max_matvecs, hc.method)
    full["lambda_max"] = full["eigenvalues"][0]
    full["grad_norm"] = htrain.full_gradient_norm(loss_fn, params, (xh, yh), bs)
    full["num_samples"] = n
    out = {"full": full, "subsampled": {}}
    for b in hc.subsample_sizes:
        runs = []
        for s in range(hc.num_subsets):
            # The same subsets for every model (the key depends on b and s only).
            sub_key = jax.random.fold_in(jax.random.fold_in(key, 1000 + b), s)
            sub = hessjax.subsample((x, y), b, key=sub_key)
            sop = hessjax.hessian_operator(loss_fn, params, sub, batch_size=min(b, 256))
            ks = jax.random.fold_in(sub_key, 1)
            r = _spectrum(sop, params, ks, k, hc.subsample_tol, hc.subsample_max_matvecs)
            if b == 1 and hc.num_negative > 0:
                neg = jax.tree_util.Partial(_negated, sop)
                bottom = _spectrum(
                    neg, params, ks, hc.num_negative, hc.subsample_tol, hc.subsample_max_matvecs
                )
                r["bottom_eigenvalues"] = [-v for v in bottom["eigenvalues"]]  # smallest first
                r["bottom_residuals"] = bottom["residuals"]
            r["grad_norm"] = htrain.full_gradient_norm(loss_fn, params, sub, min(b, 256))
            r["loss"] = float(loss_fn(params, jax.tree_util.tree_map(np.asarray, sub)))
            runs.append(r)
        out["subsampled"][str(b)] = runs
    return out


def evaluate_attacks(config, model, variables, data) -> dict:
    """Clean train/test loss and accuracy; test accuracy under every attack of the config."""
    ec = config.evaluation
    out = {}
    for split in ("train", "test"):
        x, y = data[split]
        loss, acc = htrain.evaluate(model.apply, variables, x, y, config.eval_batch_size)
        out[f"{split}_loss"], out[f"{split}_accuracy"] = loss, acc
    x, y = data["test"]
    n = len(y) if ec.num_samples is None else min(ec.num_samples, len(y))
    adv = {}
    for attack in config.robust.attacks:
        a = adversary_for(config, attack, section=ec)
        adv[attack] = float(
            hattacks.adversarial_accuracy(
                model.apply,
                variables,
                x[:n],
                y[:n],
                attack,
                a.eps,
                clip=a.clip,
                batch_size=min(ec.batch_size, n),
                **dict(a.attack_kwargs),
            )
        )
    out["adversarial"] = adv
    out["mean_adversarial"] = float(np.mean(list(adv.values())))
    out["attacked_samples"] = n
    return out


def interpolate(v0: Any, v1: Any, alpha: float) -> Any:
    """``(1 − α)·v0 + α·v1`` leaf by leaf (all collections: params and BN statistics)."""
    return jax.tree_util.tree_map(lambda a, b: (1.0 - alpha) * a + alpha * b, v0, v1)


def interpolation_analysis(config, model, original, robust, data) -> dict:
    """Train/test loss and accuracy along (1 − α)θ_orig + α·θ_robust (Fig. 5)."""
    ic = config.interpolation
    alphas = np.linspace(ic.alpha_min, ic.alpha_max, ic.num_points)
    out = {"alpha": alphas.tolist()}
    for split in ("train", "test"):
        x, y = data[split]
        n = len(y) if ic.num_samples is None else min(ic.num_samples, len(y))
        vals = [
            htrain.evaluate(
                model.apply,
                interpolate(original, robust, float(a)),
                x[:n],
                y[:n],
                config.eval_batch_size,
            )
            for a in alphas
        ]
        out[f"{split}_loss"] = [v[0] for v in vals]
        out[f"{split}_accuracy"] = [v[1] for v in vals]
        out[f"{split}_samples"] = n
    return out


def analyze_model(config, model, variables, data, original=None) -> dict:
    tic = time.perf_counter()
    _log(f"  attacks on {config.evaluation.num_samples or 'all'} test images ...")
    record = evaluate_attacks(config, model, variables, data)
    t_attacks = time.perf_counter()
    _log(f"  Hessian spectra (top {config.hessian.k}) ... [attacks took {t_attacks - tic:.0f}s]")
    record["hessian"] = hessian_analysis(config, model, variables, data)
    t_hessian = time.perf_counter()
    if original is not None:
        _log(f"  interpolation ... [Hessian spectra took {t_hessian - t_attacks:.0f}s]")
        record["interpolation"] = interpolation_analysis(config, model, original, variables, data)
    record["seconds"] = {
        "attacks": t_attacks - tic,
        "hessian": t_hessian - t_attacks,
        "interpolation": time.perf_counter() - t_hessian,
    }
    full = record["hessian"]["full"]
    adv = " ".join(f"{hattacks.DISPLAY_NAMES[a]} {v:.3f}" for a, v in record["adversarial"].items())
    _log(
        f"  clean {record['test_accuracy']:.4f} | {adv} | mean {record['mean_adversarial']:.4f}"
        f" | λ_max {full['lambda_max']:.4g} ({time.perf_counter() - tic:.0f}s: "
        + ", ".join(f"{k} {v:.0f}s" for k, v in record["seconds"].items())
        + ")"
    )
    return record


# ----------------------------------------------------------------------------- summary


def summarize(config, models: dict) -> dict:
    """Robust vs original: mean adversarial accuracy and λ_max^θ (the issue's checks)."""
    orig = models.get(ORIGINAL, {})
    if "hessian" not in orig:
        return {}
    o_acc, o_lam = orig["mean_adversarial"], orig["hessian"]["full"]["lambda_max"]
    out = {}
    for a in config.robust.attacks:
        r = models.get(a)
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


def _sub_stat(record: dict, b, fn) -> float:
    runs = record["hessian"]["subsampled"].get(str(b), [])
    return float(np.mean([fn(r) for r in runs])) if runs else float("nan")


def write_table(config, results: dict, path: pathlib.Path) -> None:
    """Table 3's layout (accuracies in %), then the flatness of every model."""
    models = results["models"]
    names = [n for n in model_names(config) if n in models and "adversarial" in models[n]]
    attacks = list(config.robust.attacks)
    disp = lambda n: "Original" if n == ORIGINAL else hattacks.DISPLAY_NAMES[n]
    ec = config.evaluation
    head = ["Training", "Clean"] + [hattacks.DISPLAY_NAMES[a] for a in attacks] + ["Mean"]
    lines = [
        f"# {config.name}: {config.model.upper()} / {config.dataset}, test accuracy (%)",
        "",
        f"Attacks: ε∞ = {ec.eps_linf} (FGSM, FGSM-10, FHSM), ε₂ = {ec.eps_l2} (GRAD, HESS), "
        f"on {models[names[0]]['attacked_samples'] if names else '?'} test images; robust training "
        f"with ε∞ = {config.robust.eps_linf}, ε₂ = {config.robust.eps_l2}, fraction "
        f"{config.robust.fraction}, {config.robust.num_epochs} epochs.",
        "",
        "| " + " | ".join(head) + " |",
        "|" + "---|" * len(head),
    ]
    for n in names:
        r = models[n]
        cells = [disp(n), f"{100 * r['test_accuracy']:.2f}"]
        cells += [f"{100 * r['adversarial'][a]:.2f}" for a in attacks]
        cells += [f"{100 * r['mean_adversarial']:.2f}"]
        lines.append("| " + " | ".join(cells) + " |")
    sizes = list(config.hessian.subsample_sizes)
    head = ["Training", "λ_max^θ (full)", "Σ top-k (full)", "‖∇L‖ (full)"]
    for b in sizes:
        head += [f"λ_max b_H={b}"]
    if 1 in sizes:
        head += ["λ_min b_H=1", "‖∇ℓ‖ b_H=1"]
    hc = config.hessian
    lines += [
        "",
        f"Flatness: top-{hc.k} eigenvalues of the Hessian of the loss over "
        f"{models[names[0]]['hessian']['full']['num_samples'] if names else '?'} training "
        f'images ("full"), and of sub-sampled Hessians (mean over {hc.num_subsets} random '
        "subsets, the same for every model).",
        "",
        "| " + " | ".join(head) + " |",
        "|" + "---|" * len(head),
    ]
    for n in names:
        h = models[n]["hessian"]
        f = h["full"]
        cells = [disp(n), f"{f['lambda_max']:.4g}", f"{sum(f['eigenvalues']):.4g}"]
        cells += [f"{f['grad_norm']:.3g}"]
        cells += [f"{_sub_stat(models[n], b, lambda r: r['eigenvalues'][0]):.4g}" for b in sizes]
        if 1 in sizes:
            lmin = _sub_stat(
                models[n], 1, lambda r: min(r.get("bottom_eigenvalues", r["eigenvalues"]))
            )
            cells += [f"{lmin:.3g}", f"{_sub_stat(models[n], 1, lambda r: r['grad_norm']):.3g}"]
        lines.append("| " + " | ".join(cells) + " |")
    summary = results.get("summary") or {}
    if summary:
        more = [hattacks.DISPLAY_NAMES[a] for a, s in summary.items() if s["more_robust"]]
        flat = [hattacks.DISPLAY_NAMES[a] for a, s in summary.items() if s["flatter"]]
        lines += [
            "",
            f"Robust models with a higher mean adversarial accuracy than the original: "
            f"{len(more)}/{len(summary)} ({', '.join(more) or 'none'}).",
            f"Robust models with a smaller λ_max^θ than the original: {len(flat)}/{len(summary)} "
            f"({', '.join(flat) or 'none'}).",
        ]
    if 1 in sizes and names:
        ones = [r for n in names for r in models[n]["hessian"]["subsampled"]["1"]]
        neg = [r for r in ones if any(v < 0 for v in r.get("bottom_eigenvalues", r["eigenvalues"]))]
        moving = [r for r in neg if r["grad_norm"] > 0]
        smallest = min((r["grad_norm"] for r in neg), default=float("nan"))
        lines.append(
            f"b_H = 1: {len(neg)}/{len(ones)} single-sample Hessians have a negative eigenvalue; "
            f"{len(moving)} of them at a non-zero gradient (smallest ‖∇ℓ‖ {smallest:.3g}): "
            "curvature of both signs, and not a saddle point."
        )
    path.write_text("\n".join(lines) + "\n")


# ----------------------------------------------------------------------------- figures


def write_figures(config, results: dict, folder: pathlib.Path) -> list[pathlib.Path]:
    """``spectra.png`` (Fig. 6/12) and ``interpolation.png`` (Fig. 5/10/11)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from matplotlib.ticker import MaxNLocator

    folder.mkdir(parents=True, exist_ok=True)
    models = results["models"]
    names = [n for n in model_names(config) if n in models and "hessian" in models[n]]
    if not names:
        return []
    disp = lambda n: "original" if n == ORIGINAL else hattacks.DISPLAY_NAMES[n]
    colors = dict(zip(names, plt.cm.tab10(np.arange(len(names))), strict=True))
    paths = []
    sizes = list(config.hessian.subsample_sizes)
    panels = [("full", None)] + [("sub", b) for b in sizes]
    fig, axes = plt.subplots(1, len(panels), figsize=(4.6 * len(panels), 4.2), squeeze=False)
    for ax, (kind, b) in zip(axes[0], panels, strict=True):
        for n in names:
            h = models[n]["hessian"]
            runs = [h["full"]] if kind == "full" else h["subsampled"][str(b)]
            for i, r in enumerate(runs):
                ev = np.asarray(r["eigenvalues"])
                ax.plot(
                    np.arange(1, len(ev) + 1),
                    ev,
                    "o-" if i == 0 else "o--",
                    ms=3,
                    color=colors[n],
                    alpha=1.0 if i == 0 else 0.5,
                    label=disp(n) if i == 0 else None,
                )
                if "bottom_eigenvalues" in r:  # negative end of the spectrum, drawn at the right
                    bot = np.asarray(r["bottom_eigenvalues"])
                    ax.plot(
                        len(ev) + 1 + np.arange(len(bot)),
                        bot,
                        "v",
                        ms=5,
                        color=colors[n],
                        alpha=1.0 if i == 0 else 0.5,
                    )
        title = (
            f"full Hessian ({models[names[0]]['hessian']['full']['num_samples']} samples)"
            if kind == "full"
            else f"sub-sampled Hessian, b_H = {b}"
        )
        ax.set_title(title, fontsize=10)
        ax.set_xlabel("eigenvalue index (▼: most negative)" if b == 1 else "eigenvalue index")
        ax.set_ylabel(r"eigenvalue of $\nabla^2_\theta L$")
        if kind == "full" and all(
            models[n]["hessian"]["full"]["eigenvalues"][-1] > 0 for n in names
        ):
            ax.set_yscale("log")
        else:
            ax.set_yscale("symlog", linthresh=1e-2)
        ax.axhline(0, color="k", lw=0.6)
        ax.xaxis.set_major_locator(MaxNLocator(integer=True))
        ax.grid(True, which="both", alpha=0.3)
        ax.legend(fontsize=7, title="model", title_fontsize=7)
    fig.suptitle(f"{config.name}: top-{config.hessian.k} Hessian spectra (Fig. 6 / 12)")
    fig.tight_layout()
    paths.append(folder / "spectra.png")
    fig.savefig(paths[-1], dpi=110)
    plt.close(fig)

    robust = [n for n in names if n != ORIGINAL and "interpolation" in models[n]]
    if robust:
        fig, axes = plt.subplots(1, 2, figsize=(10, 4.2))
        for ax, split in zip(axes, ("train", "test"), strict=True):
            for n in robust:
                it = models[n]["interpolation"]
                ax.plot(it["alpha"], it[f"{split}_loss"], "-", color=colors[n], label=disp(n))
            ax.axvline(0, color="k", lw=0.6, ls=":")
            ax.axvline(1, color="k", lw=0.6, ls=":")
            ax.set_yscale("log")
            ax.set_xlabel(r"$\alpha$:  $(1-\alpha)\,\theta_{orig} + \alpha\,\theta_{robust}$")
            ax.set_ylabel(f"{split} cross-entropy loss")
            ax.set_title(f"{split} loss (α=0: original, α=1: robust)", fontsize=10)
            ax.grid(True, which="both", alpha=0.3)
            ax.legend(fontsize=8, title="robust training", title_fontsize=8)
        fig.suptitle(f"{config.name}: interpolation original → robust (Fig. 5)")
        fig.tight_layout()
        paths.append(folder / "interpolation.png")
        fig.savefig(paths[-1], dpi=110)
        plt.close(fig)
    return paths


# ----------------------------------------------------------------------------- the study


def run_robust(config, workdir: str | os.PathLike | None = None, analyze_only: bool = False):
    """Train and analyse the original and every robust model of ``config``; the results dict.

    Models recorded in ``workdir/results.json`` are skipped (``analyze_only`` re-analyses every
    model that has a checkpoint, without training).
    """
    workdir = pathlib.Path(workdir or os.path.join("runs", config.name))
    validate(config, workdir)
    results = load_results(workdir)
    results.pop("runs", None)
    models = results.setdefault("models", {})
    names = model_names(config)
    pending = [n for n in names if analyze_only or "adversarial" not in models.get(n, {})]
    data = load_data(config) if pending else None  # missing data fails here, before any work
    workdir.mkdir(parents=True, exist_ok=True)
    write_json(workdir / "config.json", _to_dict(config))
    results["config_name"] = config.name
    _log(f"{config.name}: {len(names)} models, {len(names) - len(pending)} already done")
    model = get_model(config.model)
    original = None
    if pending:
        tic = time.perf_counter()
        try:
            original, status, epochs = train_model(
                config, data, ORIGINAL, workdir, train=not analyze_only
            )
        except FileNotFoundError as e:
            _log(f"  skipped: {e}")
            pending = []
        if ORIGINAL in pending and not analyze_only:
            models[ORIGINAL] = {
                "status": status,
                "epochs": epochs,
                "train_seconds": time.perf_counter() - tic,
            }
    for n, name in enumerate(pending, 1):
        _log(f"[{n}/{len(pending)}] {name}: {'restoring' if analyze_only else 'training'}")
        tic = time.perf_counter()
        record = dict(models.get(name, {}))
        if name == ORIGINAL:
            variables = original
        else:
            try:
                variables, status, epochs = train_model(
                    config, data, name, workdir, start=original, train=not analyze_only
                )
            except FileNotFoundError as e:
                _log(f"  skipped: {e}")
                continue
            if not analyze_only:
                record.update(status=status, epochs=epochs, train_seconds=time.perf_counter() - tic)
        tic = time.perf_counter()
        ref = None if name == ORIGINAL else original
        record.update(analyze_model(config, model, variables, data, ref))
        record["analysis_seconds"] = time.perf_counter() - tic
        models[name] = record
        results["summary"] = summarize(config, models)
        write_json(workdir / RESULTS, results)
    results["summary"] = summarize(config, models)
    write_json(workdir / RESULTS, results)
    write_table(config, results, workdir / "table.md")
    write_figures(config, results, workdir / "figures")
    _log(f"wrote {workdir / RESULTS}, {workdir / 'table.md'}, {workdir / 'figures'}")
    return results


def main(argv) -> None:
    from absl import flags, logging

    if len(argv) > 1:
        raise ValueError(f"unexpected arguments: {argv[1:]}")
    logging.set_verbosity(logging.WARNING)  # orbax logs every checkpoint step at INFO
    f = flags.FLAGS
    run_robust(f.config, f.workdir, analyze_only=f.analyze_only)


if __name__ == "__main__":
    from absl import app, flags
    from ml_collections import config_flags

    config_flags.DEFINE_config_file("config", None, "experiments/configs/<name>_robust.py[:scale]")
    flags.DEFINE_string("workdir", None, "output folder (default runs/<config.name>)")
    flags.DEFINE_bool("analyze_only", False, "re-run the analyses on saved checkpoints only")
    flags.mark_flags_as_required(["config"])
    app.run(main)
