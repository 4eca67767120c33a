# ---
# jupyter:
#   jupytext:
#     formats: ipynb,py:percent
#     text_representation:
#       extension: .py
#       format_name: percent
#   kernelspec:
#     display_name: Python 3
#     language: python
#     name: python3
# ---

# %% [markdown]
# # 02 · Large batches converge to sharper minima
#
# [![Open In Colab](https://colab.research.google.com/assets/colab-badge.svg)](https://colab.research.google.com/github/ORG/hessjax/blob/main/notebooks/02_large_batch_sharpness.ipynb)
# (replace `ORG` with the repository's owner).
#
# Yao et al. (2018), Tables 1 and 7, Figs. 1-3: train the same network at several batch sizes,
# then measure on the train and test sets the top eigenvalues of the weight Hessian of the whole
# loss, the input-gradient norm ‖∇ₓJ‖, the input-Hessian λ_max^x, FGSM accuracy and the loss
# landscape along the top eigenvectors. The claims: λ_max^θ grows with the batch size and FGSM
# accuracy falls.
#
# This notebook only drives `experiments.batch_sweep.run_sweep` (the same function as
# `python -m experiments.batch_sweep --config=experiments/configs/m1.py:cpu`) and shows what it
# writes. The run folder keeps checkpoints and `results.json`: re-running the notebook resumes
# and skips finished runs.

# %%
# Set-up. Needs the repository (for `experiments`): inside a checkout it is put on the path; on
# Colab (or anywhere else) it is cloned from REPO_URL and installed.
REPO_URL = "https://github.com/ORG/hessjax"  # <-- PLACEHOLDER: set to the repository's URL
import importlib.util
import os
import subprocess
import sys

for root in (os.getcwd(), os.path.dirname(os.getcwd())):
    if all(os.path.isdir(os.path.join(root, d)) for d in ("hessjax", "experiments")):
        sys.path.insert(0, root)
        break
if importlib.util.find_spec("experiments") is None:
    if "/ORG/" in REPO_URL:
        raise RuntimeError("the hessjax repository is not here: set REPO_URL in this cell")
    subprocess.run(["git", "clone", "--depth", "1", REPO_URL, "hessjax_repo"], check=True)
    subprocess.run(
        [sys.executable, "-m", "pip", "install", "-q", "./hessjax_repo[notebooks]"], check=True
    )
    sys.path.insert(0, os.path.abspath("hessjax_repo"))

import jax

print(jax.devices())

# %%
# Scale: $HESSJAX_SCALE (smoke | cpu | paper); default paper on an accelerator, cpu otherwise.
SCALE = os.environ.get("HESSJAX_SCALE") or ("cpu" if jax.default_backend() == "cpu" else "paper")
assert SCALE in ("smoke", "cpu", "paper"), f"HESSJAX_SCALE must be smoke, cpu or paper: {SCALE}"
print("scale:", SCALE)

# %%
import importlib
import json
import pathlib

import matplotlib.pyplot as plt
import numpy as np
from IPython.display import Image, Markdown, display

from experiments import batch_sweep

# %% [markdown]
# ## The experiment
#
# `CONFIG` picks the network: `"m1"` (MNIST, Table 7) or `"c1"` (CIFAR-10, Table 1). Each config
# has three scales: `paper` (the authors' protocol: every batch size trained to loss 0.001 or 100
# epochs, 3 seeds, the whole data sets: hours even on a GPU), `cpu` (a reduced protocol that fits a
# laptop in about an hour for M1) and `smoke` (a functional check, seconds). `OVERRIDES` changes
# single fields, e.g. `{"num_seeds": 1, "batch_sizes": [64, 512, 2048]}` to shorten a paper-scale
# run.

# %%
CONFIG = "m1"  # or "c1"
OVERRIDES = {}  # e.g. {"num_seeds": 1}

config = importlib.import_module(f"experiments.configs.{CONFIG}").get_config(SCALE)
config.update(OVERRIDES)
WORKDIR = pathlib.Path("runs") / config.name
print(
    f"{config.name}: {config.model.upper()} on {config.dataset}, batch sizes "
    f"{list(config.batch_sizes)}, {config.num_seeds} seed(s), up to {config.num_epochs} epochs; "
    f"top-{config.hessian.k} eigenvalues by {config.hessian.method}; run folder {WORKDIR}"
)

# %%
results = batch_sweep.run_sweep(config, WORKDIR)

# %% [markdown]
# ## Table 1 / Table 7 layout
#
# Every column as "train (test)"; `λ_max^θ` is the top eigenvalue of the weight Hessian of the
# whole train (test) loss, `‖∇ₓJ‖` and `λ_max^x` are per-sample means, FGSM columns are the
# accuracy under attack at ε₁ and ε₂.

# %%
display(Markdown((WORKDIR / "table.md").read_text()))

# %% [markdown]
# ## The trends against batch size
#
# Drawn from `results.json` (mean over seeds).

# %%
# run_sweep's figure writer switches matplotlib to the Agg backend; back to inline plots:
# %matplotlib inline
per = results["summary"]["per_batch_size"]
batches = [int(b) for b in per]
panels = [
    ("lambda_max", r"$\lambda_{\max}$ of $\nabla^2_\theta L$", "log"),
    ("input_lambda_max", r"mean $\lambda_{\max}$ of $\nabla^2_x J$", "log"),
    ("fgsm_eps1", f"FGSM accuracy, ε₁ = {config.fgsm_eps[0]}", "linear"),
]
fig, axes = plt.subplots(1, len(panels), figsize=(4.2 * len(panels), 3.6))
for ax, (key, label, yscale) in zip(axes, panels, strict=True):
    for split, marker in (("train", "o-"), ("test", "s--")):
        mean = np.array([per[str(b)][f"{split}_{key}"]["mean"] for b in batches])
        std = np.array([per[str(b)][f"{split}_{key}"]["std"] for b in batches])
        ax.errorbar(batches, mean, yerr=std, fmt=marker, capsize=3, label=split)
    ax.set(xscale="log", yscale=yscale, xlabel="batch size", ylabel=label)
    ax.set_xticks(batches, [str(b) for b in batches])
    ax.xaxis.set_minor_locator(plt.NullLocator())
    ax.grid(True, which="both", alpha=0.3)
    ax.legend()
fig.suptitle(f"{config.name}: sharpness and robustness against batch size")
fig.tight_layout()
plt.show()
rho = results["summary"]["spearman_lambda_max_vs_batch"]
print(f"Spearman ρ(λ_max^θ, batch size): train {rho['train']:.2f}, test {rho['test']:.2f}")

# %% [markdown]
# ## Figures written by the sweep
#
# Fig. 1: the top eigenvalues per batch size. Fig. 2: the loss along the top eigenvector,
# θ + t·v₁. Fig. 3: the loss surface on the plane of the top two eigenvectors.

# %%
for path in sorted((WORKDIR / "figures").glob("*.png")):
    print(path.name)
    display(Image(filename=str(path)))

# %% [markdown]
# ## Per-run details
#
# Training status and time, Hessian cost (HVPs) and the residuals of the computed eigenpairs,
# from `results.json`.

# %%
print(
    f"{'run':>14} {'status':>11} {'epochs':>6} {'train s':>8} {'HVPs':>5} "
    f"{'max residual':>12} {'analysis s':>10}"
)
for name, run in json.loads((WORKDIR / "results.json").read_text())["runs"].items():
    tr = run.get("train", {})
    print(
        f"{name:>14} {run.get('status', '?'):>11} {run.get('epochs', 0):>6} "
        f"{run.get('train_seconds', 0):>8.1f} {tr.get('num_matvecs', 0):>5} "
        f"{max(tr.get('eig_residuals', [np.nan])):>12.2e} {run.get('analysis_seconds', 0):>10.1f}"
    )
