"""Batch-size sweep (PAPER.md Tables 1, 2, 7, Figs. 1-4): train every (batch size, seed), tracking
the dominant Hessian eigenvalue and gradient norm per epoch, then measure loss/accuracy, the top-k
weight-Hessian spectrum, the input-gradient norm and input-Hessian λ_max, FGSM accuracy and the
loss landscape along the top eigenvectors, on train and test.

    python -m experiments.batch_sweep --config=experiments/configs/m1.py:smoke [--workdir=DIR]
        [--analyze_only] [--config.lr=0.02]

``workdir`` (default ``runs/<config.name>``) holds ``config.json``, ``results.json`` (rewritten
atomically after every finished run, so an interrupted sweep resumes and never redoes a finished
one), ``table.md``, ``figures/*.png`` and ``bs<B>_seed<S>/`` (orbax checkpoints, metrics.jsonl,
per-sample input-gradient norms and input-Hessian eigenvalues as .npy). ``--analyze_only`` re-runs
the analyses on the saved checkpoints without training. Notebooks call :func:`run_sweep`.
"""

from __future__ import annotations

import functools
import json
import os
import pathlib
import sys
import time
from typing import Any

import jax
import numpy as np
from jax.sharding import Mesh

import hessjax
from hessjax import data as hdata
from hessjax import models as hmodels
from hessjax import train as htrain

# `python experiments/batch_sweep.py` puts experiments/ first on sys.path; the configs import
# `experiments.configs.sweep_base`, so the repository root must be importable too.
_ROOT = str(pathlib.Path(__file__).resolve().parents[1])
if _ROOT not in sys.path:
    sys.path.insert(1, _ROOT)

RESULTS = "results.json"
# Fields that may change between invocations on one workdir (they extend or locate the sweep
# without changing any finished run); every other field must match the workdir's config.json.
_EXTENSIBLE = ("batch_sizes", "num_seeds", "data_dir")


def _log(msg: str) -> None:
    print(f"[batch_sweep] {msg}", flush=True)


def _to_dict(config) -> dict:
    return config.to_dict() if hasattr(config, "to_dict") else dict(config)


# ----------------------------------------------------------------------------- validation


def effective_micro_batch(config, batch_size: int) -> int:
    """Batches smaller than ``micro_batch_size`` are a single micro-batch."""
    return min(int(batch_size), int(config.micro_batch_size or batch_size))


def make_mesh(config) -> Mesh | None:
    """A 1-D ``Mesh`` over every device (axis ``"data"``) when ``config.data_parallel`` and there
    is more than one device; else None. Training micro-batches, evaluation batches and the weight
    Hessian's batches are split over it (per-sample input analyses and attacks stay on one)."""
    devices = jax.devices()
    if not config.data_parallel or len(devices) == 1:
        return None
    return Mesh(np.array(devices), ("data",))


def _num_devices(config) -> int:
    return jax.device_count() if config.data_parallel else 1


def validate(config, workdir: str | os.PathLike | None = None) -> None:
    """Raise one ``ValueError`` listing every problem with ``config`` (and the workdir)."""
    errors = []
    devices = _num_devices(config)
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
                f"{hdata.image_shape(config.dataset)}; pair m1 with mnist, c1/c2/c3 with "
                "cifar10, cr with cifar100"
            )
    if not config.batch_sizes:
        errors.append("batch_sizes is empty")
    for b in config.batch_sizes:
        if not isinstance(b, int) or b < 1:
            errors.append(f"batch size {b!r} must be a positive integer")
            continue
        m = effective_micro_batch(config, b)
        if b % m:
            errors.append(
                f"batch size {b} is not divisible by micro_batch_size={config.micro_batch_size}; "
                f"use multiples of {config.micro_batch_size} (or a smaller micro_batch_size)"
            )
        elif m % devices:
            errors.append(
                f"batch size {b}: micro-batches of {m} cannot be split over {devices} devices; "
                f"use a micro_batch_size divisible by {devices} (or data_parallel=False)"
            )
        if config.train_limit is not None and b > config.train_limit:
            errors.append(f"batch size {b} exceeds train_limit={config.train_limit}")
    if config.num_seeds < 1:
        errors.append(f"num_seeds must be >= 1, got {config.num_seeds}")
    if len(config.fgsm_eps) != 2:
        errors.append(f"fgsm_eps must hold two values (eps1, eps2), got {list(config.fgsm_eps)}")
    if any(e < 0 for e in config.fgsm_eps):
        errors.append(f"fgsm_eps must be >= 0, got {list(config.fgsm_eps)}")
    if config.hessian.k < 2:
        errors.append(
            f"hessian.k must be >= 2 (Fig. 3 needs two eigenvectors), got {config.hessian.k}"
        )
    if config.hessian.method not in ("lanczos", "power"):
        errors.append(f"hessian.method must be 'lanczos' or 'power', got {config.hessian.method!r}")
    for what, n in (("hessian", config.hessian.num_samples), ("track", config.track.num_samples)):
        hessian_batch = min(config.hessian.batch_size, n or config.hessian.batch_size)
        if hessian_batch % devices:
            errors.append(
                f"{what}: Hessian batches of {hessian_batch} samples cannot be split over "
                f"{devices} devices; use hessian.batch_size / {what}.num_samples divisible by it"
            )
    if config.hessian.tol <= 0:
        errors.append(f"hessian.tol must be positive, got {config.hessian.tol}")
    if config.track.every < 0 or config.track.tol <= 0 or config.track.max_matvecs < 1:
        errors.append("track needs every >= 0 (0: off), tol > 0 and max_matvecs >= 1")
    if config.augment and config.dataset in hdata.DATASETS:
        if tuple(hdata.image_shape(config.dataset)) != (32, 32, 3):
            errors.append(f"augment=True crops and flips CIFAR images, not {config.dataset}")
    lc = config.landscape
    if not lc.t_min < lc.t_max or lc.num_points < 2 or lc.grid < 2:
        errors.append("landscape needs t_min < t_max, num_points >= 2 and grid >= 2")
    if workdir is not None:
        errors += _workdir_errors(config, workdir)
    if errors:
        raise ValueError("invalid batch-sweep config:\n  - " + "\n  - ".join(errors))


def _fingerprint(config_dict: dict) -> dict:
    return {k: v for k, v in config_dict.items() if k not in _EXTENSIBLE}


def _workdir_errors(config, workdir) -> list[str]:
    path = pathlib.Path(workdir) / "config.json"
    if not path.exists():
        return []
    old = json.loads(path.read_text())
    new = json.loads(json.dumps(_to_dict(config)))
    if _fingerprint(old) == _fingerprint(new):
        return []
    diff = sorted(
        k for k in set(_fingerprint(old)) | set(_fingerprint(new)) if old.get(k) != new.get(k)
    )
    return [
        f"workdir {workdir} holds the run of another config (config {old.get('name')!r}; fields "
        f"differing: {', '.join(diff)}); pass a fresh --workdir or delete that one"
    ]


# ----------------------------------------------------------------------------- io


def write_json(path: str | os.PathLike, obj: Any) -> None:
    """Atomic: write ``path.tmp`` then ``os.replace``."""
    path = pathlib.Path(path)
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(json.dumps(obj, indent=1, allow_nan=True))
    os.replace(tmp, path)


def load_results(workdir) -> dict:
    path = pathlib.Path(workdir) / RESULTS
    return json.loads(path.read_text()) if path.exists() else {"runs": {}}


def run_name(batch_size: int, seed: int) -> str:
    return f"bs{batch_size}_seed{seed}"


def load_data(config) -> dict[str, tuple[np.ndarray, np.ndarray]]:
    return {
        "train": hdata.load(config.dataset, "train", config.data_dir, limit=config.train_limit),
        "test": hdata.load(config.dataset, "test", config.data_dir, limit=config.test_limit),
    }


# ----------------------------------------------------------------------------- training


@functools.lru_cache(maxsize=8)
def get_model(name: str):
    """One module object per model name, so jitted analyses (static ``apply_fn``) compile once
    for all runs of a sweep."""
    return hmodels.get(name)


def _hessian_subset(x, y, num_samples):
    return x[:num_samples], y[:num_samples]


def tracker(config, model, data, seed: int, mesh: Mesh | None = None):
    """Fig. 4's per-epoch measurement as a :func:`hessjax.train.fit` callback, or None if off:
    ``{"lambda_max": λ_max(∇²L), "grad_norm": ‖∇L‖}`` of the loss on the first
    ``track.num_samples`` training samples (BN in inference mode), Lanczos k=1 to ``track.tol``."""
    tc = config.track
    if not tc.every:
        return None
    xh, yh = _hessian_subset(*data["train"], tc.num_samples)
    batch = min(config.hessian.batch_size, len(yh))

    def callback(epoch, state, record):
        if epoch % tc.every:
            return None
        variables = htrain.state_variables(state)
        params = variables["params"]
        loss_fn = hessjax.make_loss_fn(model.apply, variables)
        op = hessjax.hessian_operator(loss_fn, params, (xh, yh), batch_size=batch, mesh=mesh)
        key = jax.random.fold_in(jax.random.key(seed), 1000 + epoch)
        eig = hessjax.eigenvalues(op, params, k=1, tol=tc.tol, max_matvecs=tc.max_matvecs, key=key)
        return {
            "lambda_max": float(eig.values[0]),
            "grad_norm": htrain.full_gradient_norm(loss_fn, params, (xh, yh), batch),
        }

    return callback


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


def train_run(config, data, batch_size: int, seed: int, run_dir: pathlib.Path, train: bool = True):
    """Train (or, ``train=False``, only restore) one run; ``(model, variables, status, epochs)``.

    Checkpoints live in ``run_dir/ckpt``; hessjax.train.fit resumes from them (a finished run
    returns at once). Per-epoch records (with Fig. 4's λ_max and gradient norm when
    ``config.track.every``) go to ``run_dir/metrics.jsonl``.
    """
    model, mesh = get_model(config.model), make_mesh(config)
    x, y = data["train"]
    steps_per_epoch = len(y) // batch_size
    bounds = htrain.epochs_to_steps(config.lr_decay_epochs, config.lr_decay_factor, steps_per_epoch)
    if config.schedule == "step" and bounds:
        tx = htrain.make_optimizer(config.lr, config.momentum, "step", boundaries_and_scales=bounds)
    else:  # "step" with no decay epochs (e.g. a 1-epoch smoke run) is a constant rate
        tx = htrain.make_optimizer(config.lr, config.momentum, "constant")
    variables = hmodels.init(model, jax.random.key(seed))
    state = htrain.init_state(variables, tx, seed)
    step = htrain.TrainStep(
        model.apply,
        tx,
        micro_batch_size=effective_micro_batch(config, batch_size),
        augment=hdata.augment_cifar if config.augment else None,
        mesh=mesh,
    )
    ckpt = run_dir / "ckpt"
    if not train and not (ckpt.is_dir() and any(ckpt.iterdir())):
        raise FileNotFoundError(f"--analyze_only: no checkpoint in {ckpt}; train it first")
    result = htrain.fit(
        step,
        state,
        x,
        y,
        batch_size=batch_size,
        num_epochs=config.num_epochs if train else 0,
        seed=seed,
        target_loss=config.target_loss,
        eval_batch_size=config.eval_batch_size,
        workdir=ckpt,
        metrics_file=run_dir / "metrics.jsonl",
        callback=tracker(config, model, data, seed, mesh) if train else None,
        verbose=True,
    )
    return model, htrain.state_variables(result.state), result.status, result.epoch


# ----------------------------------------------------------------------------- analyses


def _axpy(params, vectors, coeffs):
    """``params + Σ_j coeffs[j] · vectors[j]`` (vectors: pytree with leading axis k)."""
    out = params
    for j, c in enumerate(coeffs):
        out = jax.tree_util.tree_map(
            lambda p, v, c=c, j=j: p + c * v[j].astype(p.dtype), out, vectors
        )
    return out


def analyze(config, model, variables, data, seed: int, run_dir: pathlib.Path) -> dict:
    """Every measurement of one trained model on the train and test subsets (PAPER.md Table 1)."""
    apply_fn, mesh = model.apply, make_mesh(config)
    params = variables["params"]
    loss_fn = hessjax.make_loss_fn(apply_fn, variables)
    clip = hdata.input_range(config.dataset)
    hc, ic, lc = config.hessian, config.input_hessian, config.landscape
    out = {}
    for i, split in enumerate(("train", "test")):
        tic = time.perf_counter()
        x, y = data[split]
        loss, acc = htrain.evaluate(apply_fn, variables, x, y, config.eval_batch_size, mesh=mesh)
        r = {"loss": loss, "accuracy": acc}

        xh, yh = _hessian_subset(x, y, hc.num_samples)
        op = hessjax.hessian_operator(
            loss_fn, params, (xh, yh), batch_size=min(hc.batch_size, len(yh)), mesh=mesh
        )
        eig = hessjax.eigenvalues(
            op,
            params,
            k=hc.k,
            method=hc.method,
            tol=hc.tol,
            max_matvecs=hc.max_matvecs,
            key=jax.random.fold_in(jax.random.key(seed), i),
        )
        r["eigenvalues"] = np.asarray(eig.values, np.float64).tolist()
        r["lambda_max"] = r["eigenvalues"][0]
        r["eig_residuals"] = np.asarray(eig.residuals, np.float64).tolist()
        r["num_matvecs"] = int(eig.num_matvecs)
        r["hessian_samples"] = len(yh)
        r["grad_norm"] = htrain.full_gradient_norm(
            loss_fn, params, (xh, yh), min(hc.batch_size, len(yh))
        )

        xi, yi = x[: ic.num_samples], y[: ic.num_samples]
        bs = min(ic.batch_size, len(yi))
        r["input_samples"] = len(yi)
        if ic.enabled:
            gnorm = hessjax.input_gradient_norms(apply_fn, variables, xi, yi, batch_size=bs)
            lam_x = hessjax.input_hessian_eigenvalues(
                apply_fn, variables, xi, yi, method="exact", batch_size=bs
            )
            gnorm, lam_x = np.asarray(gnorm), np.asarray(lam_x)
            np.save(run_dir / f"{split}_input_grad_norms.npy", gnorm)
            np.save(run_dir / f"{split}_input_lambda_max.npy", lam_x)
            r["input_grad_norm"] = float(gnorm.mean())
            r["input_lambda_max"] = float(lam_x.mean())
        fgsm = hessjax.attacks.adversarial_accuracy(
            apply_fn, variables, xi, yi, "fgsm", list(config.fgsm_eps), clip=clip, batch_size=bs
        )
        r["fgsm_eps1"], r["fgsm_eps2"] = (float(a) for a in fgsm)

        nl = lc.num_samples or hc.num_samples
        xl, yl = x[:nl], y[:nl]
        ev = lambda p, xl=xl, yl=yl: htrain.evaluate(
            apply_fn, {**variables, "params": p}, xl, yl, config.eval_batch_size, mesh=mesh
        )[0]
        ts = np.linspace(lc.t_min, lc.t_max, lc.num_points)
        r["landscape_1d"] = {
            "t": ts.tolist(),
            "loss": [ev(_axpy(params, eig.vectors, [t])) for t in ts],
        }
        g = np.linspace(lc.t_min, lc.t_max, lc.grid)
        surface = [[ev(_axpy(params, eig.vectors, [a, b])) for b in g] for a in g]
        r["landscape_2d"] = {"t": g.tolist(), "loss": surface}  # loss[i][j] at t1=g[i], t2=g[j]
        r["seconds"] = time.perf_counter() - tic
        out[split] = r
        inputs = (
            f"‖∇ₓJ‖ {r['input_grad_norm']:.4g} λ_max^x {r['input_lambda_max']:.4g} "
            if ic.enabled
            else ""
        )
        _log(
            f"  {split}: loss {loss:.4g} acc {acc:.4f} λ_max {r['lambda_max']:.4g} {inputs}"
            f"FGSM {r['fgsm_eps1']:.3f}/{r['fgsm_eps2']:.3f} ({r['seconds']:.1f}s)"
        )
    return out


# ----------------------------------------------------------------------------- summary


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


COLUMNS = (
    ("accuracy", "Acc (%)", 100.0),
    ("lambda_max", "λ_max^θ", 1.0),
    ("input_grad_norm", "‖∇ₓJ‖", 1.0),
    ("input_lambda_max", "λ_max^x", 1.0),
    ("fgsm_eps1", "FGSM ε₁ (%)", 100.0),
    ("fgsm_eps2", "FGSM ε₂ (%)", 100.0),
)
_INPUT_COLUMNS = ("input_grad_norm", "input_lambda_max")


def columns(config) -> tuple:
    """Table 1's columns (Table 2's without the input-Hessian ones when they are switched off)."""
    if config.input_hessian.enabled:
        return COLUMNS
    return tuple(c for c in COLUMNS if c[0] not in _INPUT_COLUMNS)


def summarize(config, runs: dict) -> dict:
    """Per batch size: mean/std over finished seeds of every Table-1 column; Spearman ρ."""
    summary = {}
    for b in config.batch_sizes:
        done = [
            runs[run_name(b, s)]
            for s in range(config.num_seeds)
            if run_name(b, s) in runs and runs[run_name(b, s)].get("train")
        ]
        if not done:
            continue
        row = {"num_seeds": len(done)}
        for split in ("train", "test"):
            for key, _, _ in columns(config):
                vals = np.array([r[split][key] for r in done], float)
                row[f"{split}_{key}"] = {"mean": float(vals.mean()), "std": float(vals.std())}
        summary[str(b)] = row
    bs = [int(b) for b in summary]
    rho = {
        split: spearman(bs, [summary[str(b)][f"{split}_lambda_max"]["mean"] for b in bs])
        for split in ("train", "test")
    }
    return {"per_batch_size": summary, "spearman_lambda_max_vs_batch": rho}


def _fmt(stat: dict, scale: float, n: int) -> str:
    m, s = stat["mean"] * scale, stat["std"] * scale
    digits = lambda v: f"{v:.4g}"
    return f"{digits(m)} ± {digits(s)}" if n > 1 else digits(m)


def write_table(config, results: dict, path: pathlib.Path) -> None:
    """Table 1's layout: one row per batch size, "train (test)" per column."""
    per = results["summary"]["per_batch_size"]
    head = ["Batch"] + [title for _, title, _ in columns(config)]
    lines = [
        f"# {config.name}: {config.model.upper()} / {config.dataset}, train (test)",
        "",
        f"FGSM ε₁ = {config.fgsm_eps[0]}, ε₂ = {config.fgsm_eps[1]}; mean ± std over seeds "
        "when more than one.",
        "",
        "| " + " | ".join(head) + " |",
        "|" + "---|" * len(head),
    ]
    for b, row in per.items():
        n = row["num_seeds"]
        cells = [
            f"{_fmt(row[f'train_{k}'], sc, n)} ({_fmt(row[f'test_{k}'], sc, n)})"
            for k, _, sc in columns(config)
        ]
        lines.append(f"| {b} | " + " | ".join(cells) + " |")
    diverged = sorted(k for k, r in results["runs"].items() if r.get("status") == "diverged")
    if diverged:
        lines += ["", f"Diverged (excluded): {', '.join(diverged)}"]
    rho = results["summary"]["spearman_lambda_max_vs_batch"]
    lines += [
        "",
        f"Spearman ρ(λ_max^θ, batch size): train {rho['train']:.3f}, test {rho['test']:.3f}",
    ]
    path.write_text("\n".join(lines) + "\n")


# ----------------------------------------------------------------------------- figures


def _first_seed_runs(config, runs: dict) -> list[tuple[int, dict]]:
    out = []
    for b in config.batch_sizes:
        for s in range(config.num_seeds):
            r = runs.get(run_name(b, s))
            if r and r.get("train"):
                out.append((b, r))
                break
    return out


def write_figures(config, results: dict, folder: pathlib.Path) -> list[pathlib.Path]:
    """Fig. 1 (spectra), Fig. 2 (1-D landscapes), Fig. 3 (2-D contours), Fig. 4 (training) as
    PNGs; first seed. The matplotlib backend is left alone (headless machines fall back to Agg;
    in a notebook the inline backend keeps working), and every figure is closed after saving."""
    import matplotlib
    import matplotlib.pyplot as plt
    import matplotlib.ticker  # noqa: F401  (used as matplotlib.ticker)

    folder.mkdir(parents=True, exist_ok=True)
    runs = _first_seed_runs(config, results["runs"])
    if not runs:
        return []
    colors = plt.cm.viridis(np.linspace(0, 0.9, len(runs)))
    paths = []

    fig, axes = plt.subplots(1, 2, figsize=(10, 4))
    for ax, split in zip(axes, ("train", "test"), strict=True):
        for (b, r), col in zip(runs, colors, strict=True):
            ev = np.asarray(r[split]["eigenvalues"])
            idx = np.arange(1, len(ev) + 1)
            pos = ev > 0  # log scale: non-positive eigenvalues are not drawn
            ax.plot(idx[pos], ev[pos], "o-", color=col, label=f"B={b}")
        ax.set_yscale("log")
        ax.set_xlabel("eigenvalue index")
        ax.set_ylabel(r"eigenvalue $\lambda_i(\nabla^2_\theta L)$")
        ax.xaxis.set_major_locator(matplotlib.ticker.MaxNLocator(integer=True))
        ax.set_title(f"Top-{config.hessian.k} Hessian spectrum ({split})")
        ax.grid(True, which="both", alpha=0.3)
        ax.legend(title="batch size", fontsize=8)
    fig.suptitle(f"{config.name}: Fig. 1")
    fig.tight_layout()
    paths.append(folder / "fig1_spectrum.png")
    fig.savefig(paths[-1], dpi=110)
    plt.close(fig)

    fig, axes = plt.subplots(1, 2, figsize=(10, 4))
    for ax, split in zip(axes, ("train", "test"), strict=True):
        for (b, r), col in zip(runs, colors, strict=True):
            land = r[split]["landscape_1d"]
            ax.plot(land["t"], land["loss"], color=col, label=f"B={b}")
        ax.set_xlabel("t  (θ + t·v₁)")
        ax.set_ylabel("cross-entropy loss")
        ax.set_title(f"Loss along the top eigenvector ({split})")
        ax.grid(True, alpha=0.3)
        ax.legend(title="batch size", fontsize=8)
    fig.suptitle(f"{config.name}: Fig. 2")
    fig.tight_layout()
    paths.append(folder / "fig2_landscape_1d.png")
    fig.savefig(paths[-1], dpi=110)
    plt.close(fig)

    fig, axes = plt.subplots(
        2, len(runs), figsize=(3.6 * len(runs), 6.4), squeeze=False, constrained_layout=True
    )
    for col, (b, r) in enumerate(runs):
        for row, split in enumerate(("train", "test")):
            ax = axes[row, col]
            land = r[split]["landscape_2d"]
            g, z = np.asarray(land["t"]), np.asarray(land["loss"])
            cs = ax.contourf(g, g, z.T, levels=15, cmap="viridis")  # z[i, j] at (t1=g[i], t2=g[j])
            fig.colorbar(cs, ax=ax)
            ax.set_title(f"B={b} ({split})", fontsize=9)
            ax.set_xlabel("t₁ (v₁)")
            ax.set_ylabel("t₂ (v₂)")
    fig.suptitle(f"{config.name}: Fig. 3, loss on θ + t₁v₁ + t₂v₂")
    paths.append(folder / "fig3_landscape_2d.png")
    fig.savefig(paths[-1], dpi=110)
    plt.close(fig)

    tracked = [(b, r["history"]) for b, r in runs if any("lambda_max" in h for h in r["history"])]
    if tracked:
        paths.append(_training_figure(config, tracked, colors, folder, plt))
    return paths


def _training_figure(config, tracked, colors, folder: pathlib.Path, plt) -> pathlib.Path:
    """Fig. 4: training loss, λ_max(∇²L) and ‖∇L‖ per epoch, one line per batch size."""
    panels = (
        ("train_loss", "training loss (full set)"),
        ("lambda_max", r"$\lambda_{max}$ of $\nabla^2_\theta L$"),
        ("grad_norm", r"$\|\nabla_\theta L\|$"),
    )
    fig, axes = plt.subplots(1, 3, figsize=(13, 3.8))
    for ax, (key, label) in zip(axes, panels, strict=True):
        for (b, history), col in zip(tracked, colors, strict=False):
            pts = [(h["epoch"], h[key]) for h in history if key in h]
            if pts:
                ax.plot(*zip(*pts, strict=True), "o-", ms=3, color=col, label=f"B={b}")
        ax.set_yscale("log")
        ax.set_xlabel("epoch")
        ax.set_ylabel(label)
        ax.grid(True, which="both", alpha=0.3)
    axes[0].legend(title="batch size", fontsize=8)
    n = config.track.num_samples
    fig.suptitle(f"{config.name}: Fig. 4, during training (Hessian, gradient on {n} train samples)")
    fig.tight_layout()
    path = folder / "fig4_training.png"
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


# ----------------------------------------------------------------------------- the sweep


def run_sweep(config, workdir: str | os.PathLike | None = None, analyze_only: bool = False) -> dict:
    """Train and analyse every (batch size, seed) of ``config``; returns the results dict.

    Finished runs recorded in ``workdir/results.json`` are skipped (``analyze_only`` re-analyses
    every run that has a checkpoint, without training). Diverged runs are recorded and skipped.
    """
    workdir = pathlib.Path(workdir or os.path.join("runs", config.name))
    validate(config, workdir)
    workdir.mkdir(parents=True, exist_ok=True)
    write_json(workdir / "config.json", _to_dict(config))
    results = load_results(workdir)
    results["config_name"] = config.name
    runs = results.setdefault("runs", {})
    todo = [(b, s) for b in config.batch_sizes for s in range(config.num_seeds)]
    pending = [bs for bs in todo if analyze_only or run_name(*bs) not in runs]
    _log(f"{config.name}: {len(todo)} runs, {len(todo) - len(pending)} already done, in {workdir}")
    data = load_data(config) if pending else None
    for n, (b, s) in enumerate(pending, 1):
        name = run_name(b, s)
        run_dir = workdir / name
        run_dir.mkdir(exist_ok=True)
        _log(f"[{n}/{len(pending)}] {name}: {'restoring' if analyze_only else 'training'}")
        tic = time.perf_counter()
        try:
            model, variables, status, epochs = train_run(
                config, data, b, s, run_dir, train=not analyze_only
            )
        except FileNotFoundError as e:
            _log(f"  skipped: {e}")
            continue
        record = dict(runs.get(name, {}), batch_size=b, seed=s)
        if not analyze_only:
            record.update(status=status, epochs=epochs, train_seconds=time.perf_counter() - tic)
            record["history"] = read_history(run_dir / "metrics.jsonl")
        if record.get("status") == "diverged":
            _log(f"  {name} diverged; recorded and skipped")
        else:
            tic = time.perf_counter()
            record.update(analyze(config, model, variables, data, s, run_dir))
            record["analysis_seconds"] = time.perf_counter() - tic
        runs[name] = record
        results["summary"] = summarize(config, runs)
        write_json(workdir / RESULTS, results)
    results["summary"] = summarize(config, runs)
    write_json(workdir / RESULTS, results)
    write_table(config, results, workdir / "table.md")
    write_figures(config, results, workdir / "figures")
    rho = results["summary"]["spearman_lambda_max_vs_batch"]
    _log(f"Spearman ρ(λ_max^θ, batch size): train {rho['train']:.3f}, test {rho['test']:.3f}")
    _log(f"wrote {workdir / RESULTS}, {workdir / 'table.md'}, {workdir / 'figures'}")
    return results


def main(argv) -> None:
    from absl import flags

    if len(argv) > 1:
        raise ValueError(f"unexpected arguments: {argv[1:]}")
    from absl import logging

    logging.set_verbosity(logging.WARNING)  # orbax logs every checkpoint step at INFO
    f = flags.FLAGS
    run_sweep(f.config, f.workdir, analyze_only=f.analyze_only)


if __name__ == "__main__":
    from absl import app, flags
    from ml_collections import config_flags

    config_flags.DEFINE_config_file("config", None, "experiments/configs/<name>.py[:scale]")
    flags.DEFINE_string("workdir", None, "output folder (default runs/<config.name>)")
    flags.DEFINE_bool("analyze_only", False, "re-run the analyses on saved checkpoints only")
    flags.mark_flags_as_required(["config"])
    app.run(main)
