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
# # 04 · Robust training moves the model to flatter regions
#
# [![Open In Colab](https://colab.research.google.com/assets/colab-badge.svg)](https://colab.research.google.com/github/ORG/hessjax/blob/main/notebooks/04_robust_training.ipynb)
# (replace `ORG` with the repository's owner).
#
# Yao et al. (2018), Tables 3 and 4, Figs. 5 and 6: train an original model, continue it with
# adversarial training under each of FGSM, FGSM-10, GRAD, FHSM and HESS, then compare the six
# models: clean and adversarial test accuracy, the top eigenvalues of the full and of sub-sampled
# weight Hessians (b_H = 1 gives negative eigenvalues at a non-zero gradient: no saddle point), and
# the loss along the line from the original to each robust model. The claims: robust models are
# more robust *and* flatter (smaller λ_max^θ).
#
# This notebook only drives `experiments.adversarial_training.run_robust` (the same function as
# `python -m experiments.adversarial_training --config=experiments/configs/m1_robust.py:cpu`) and
# shows what it writes. The run folder keeps checkpoints and `results.json`: re-running the
# notebook resumes and skips finished models.

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
import pathlib

import matplotlib.pyplot as plt
import numpy as np
from IPython.display import Image, Markdown, display

from experiments import adversarial_training
from hessjax import attacks

# %% [markdown]
# ## The experiment
#
# `CONFIG` picks the study: `"m1_robust"` (M1 / MNIST, Table 3) or `"c3_robust"` (C3 / CIFAR-10,
# Table 4). Scales: `paper` (original trained 100 epochs on the whole training set, 5 robust
# epochs per attack, every test image attacked: hours on a GPU), `cpu` (10,000 training images,
# 20 + 2 epochs: about an hour on a laptop for M1), `smoke` (a functional check, seconds).
# `OVERRIDES` changes single fields, e.g. `{"robust": {"attacks": ["fgsm", "l2_hess"]}}` or
# `{"robust": {"eps_linf": 0.3}}`.

# %%
CONFIG = "m1_robust"  # or "c3_robust"
OVERRIDES = {}

config = importlib.import_module(f"experiments.configs.{CONFIG}").get_config(SCALE)
config.update(OVERRIDES)
WORKDIR = pathlib.Path("runs") / config.name
print(
    f"{config.name}: {config.model.upper()} on {config.dataset}; original "
    f"{config.original.num_epochs} epoch(s), then {config.robust.num_epochs} robust epoch(s) "
    "with each of "
    f"{', '.join(attacks.DISPLAY_NAMES[a] for a in config.robust.attacks)} "
    f"(ε∞ = {config.robust.eps_linf}, ε₂ = {config.robust.eps_l2}); run folder {WORKDIR}"
)

# %%
results = adversarial_training.run_robust(config, WORKDIR)

# %% [markdown]
# ## Table 3 / Table 4 layout, and flatness
#
# Test accuracy of every model on clean images and under each attack (rows: how the model was
# trained; columns: the attack it is evaluated against), then the top eigenvalues of the full
# and sub-sampled training-loss Hessians.

# %%
display(Markdown((WORKDIR / "table.md").read_text()))

# %% [markdown]
# ## Robustness against flatness
#
# Drawn from `results.json`: mean accuracy over the five attacks against λ_max^θ of the full
# Hessian, one point per model. The paper's claim puts the robust models up and to the left of
# the original.

# %%
# run_robust's figure writer switches matplotlib to the Agg backend; back to inline plots:
# %matplotlib inline
models = results["models"]
names = [n for n in ["original", *config.robust.attacks] if "hessian" in models.get(n, {})]
label = lambda n: "original" if n == "original" else attacks.DISPLAY_NAMES[n]

fig, (ax1, ax2) = plt.subplots(1, 2, figsize=(12, 4.2))
for i, n in enumerate(names):
    m = models[n]
    ax1.scatter(
        m["hessian"]["full"]["lambda_max"],
        m["mean_adversarial"],
        s=60,
        color=f"C{i}",
        marker="*" if n == "original" else "o",
        label=label(n),
    )
ax1.set(
    xscale="log",
    xlabel=r"$\lambda_{\max}$ of $\nabla^2_\theta L$ (full training Hessian)",
    ylabel="mean accuracy over the attacks",
    title="Robustness vs sharpness",
)
ax1.grid(True, which="both", alpha=0.3)
ax1.legend(fontsize=8, title="training")

columns = ["clean", *config.robust.attacks]
width = 0.8 / len(names)
for i, n in enumerate(names):
    m = models[n]
    acc = [m["test_accuracy"]] + [m["adversarial"][a] for a in config.robust.attacks]
    ax2.bar(
        np.arange(len(columns)) + (i - (len(names) - 1) / 2) * width,
        acc,
        width,
        color=f"C{i}",
        label=label(n),
    )
ax2.set_xticks(
    np.arange(len(columns)), ["clean"] + [attacks.DISPLAY_NAMES[a] for a in config.robust.attacks]
)
ax2.set(
    xlabel="evaluated against",
    ylabel="test accuracy",
    ylim=(0, 1.05),
    title="Test accuracy of each model (colour: training)",
)
ax2.grid(True, axis="y", alpha=0.3)
ax2.legend(fontsize=7, ncol=2, title="training", title_fontsize=7)
fig.tight_layout()
plt.show()

# %% [markdown]
# ## Figures written by the study
#
# `spectra.png` (Fig. 6 / 12): the top eigenvalues of the full Hessian and of the sub-sampled
# ones (▼: the most negative eigenvalues at b_H = 1). `interpolation.png` (Fig. 5): train and
# test loss along `(1 − α)·θ_orig + α·θ_robust`.

# %%
for path in sorted((WORKDIR / "figures").glob("*.png")):
    print(path.name)
    display(Image(filename=str(path)))
