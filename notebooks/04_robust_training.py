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
# [![Open In Colab](https://colab.research.google.com/assets/colab-badge.svg)](https://colab.research.google.com/github/OWNER/hessjax/blob/main/notebooks/04_robust_training.ipynb)
# (the badge opens `OWNER/hessjax`; for another copy see `notebooks/README.md`). On Colab, set
# `HESSJAX_REPO_URL` to the repository's URL before the install cell (the first code cell).
#
# Yao et al. (2018), Tables 3 and 4, Figs. 5 and 6: train an original model, continue it with
# adversarial training, then compare the two: clean and adversarial test accuracy, the top
# eigenvalues of the weight Hessian of the training loss, and the loss along the line from the
# original to the robust model. The claim: the robust model is more robust *and* flatter (smaller
# λ_max^θ).
#
# A small version of the study, with M1 on MNIST and FGSM adversarial training, written with the
# installed library only: `hessjax.train` (with an `Adversary`) trains; `hessjax.hessian_operator`
# + `hessjax.eigenvalues`, `hessjax.landscape.interpolation` and
# `hessjax.attacks.adversarial_accuracy` (FGSM and the second-order HESS attack) measure.


# %%
# Installs hessjax where it is missing (Colab), from $HESSJAX_REPO_URL: first run a cell
#     %env HESSJAX_REPO_URL=https://github.com/<owner>/hessjax
# (the repository this notebook comes from, or your fork). Where hessjax is importable: nothing.
import os
import sys
from importlib.util import find_spec
from subprocess import check_call

URL = (os.environ.get("HESSJAX_REPO_URL") or "<unset>").removeprefix("git+")
if find_spec("hessjax") is None:
    assert "<" not in URL, "hessjax is not installed: run %env HESSJAX_REPO_URL=<repository URL>"
    check_call([sys.executable, "-m", "pip", "install", "-q", f"hessjax[notebooks] @ git+{URL}"])

# %%
import time

import jax
import matplotlib.pyplot as plt
import numpy as np
from IPython.display import Markdown, display

import hessjax
from hessjax import attacks, evaluation, landscape
from hessjax.adversarial import Adversary

BATCH, LR, MOMENTUM, SEED = 32, 0.02, 0.9, 0
# ε in the units the model sees (normalised MNIST), as experiments/configs/m1_robust.py: L∞
# (FGSM, for training and evaluation) 0.2, L2 (HESS, evaluation only) 4.0.
EPS = {"fgsm": 0.2, "l2_hess": 4.0}
CLIP = hessjax.data.input_range("mnist")  # adversarial images stay valid images
# Scale: $HESSJAX_SCALE = smoke | cpu | paper (default: paper on an accelerator, cpu otherwise).
SCALE = os.environ.get("HESSJAX_SCALE") or ("cpu" if jax.default_backend() == "cpu" else "paper")
print(f"{SCALE} scale on {jax.devices()}")
# Per scale: training and test images; epochs of the original model and of robust training
# (continued from the original); training samples for the weight Hessian and the interpolation
# losses, top-k eigenvalues and their HVP budget; test images attacked; CG iterations of the HESS
# attack; points on the line original -> robust.
S = {
    "smoke": dict(
        train=512, test=256, epochs=3, robust_epochs=1, hessian=256, k=3, max_hvps=12,
        attack=128, cg_iters=5, points=9,
    ),
    "cpu": dict(
        train=10_000, test=1000, epochs=10, robust_epochs=2, hessian=1000, k=10, max_hvps=80,
        attack=1000, cg_iters=10, points=21,
    ),
    "paper": dict(
        train=None, test=None, epochs=30, robust_epochs=5, hessian=10_000, k=20, max_hvps=200,
        attack=10_000, cg_iters=20, points=41,
    ),
}[SCALE]  # fmt: skip

# %% [markdown]
# ## Training
#
# Real MNIST from `hessjax.data.load` (`$HESSJAX_DATA_DIR`, else tensorflow_datasets), M1 of the
# paper, momentum SGD. The original model is trained on clean images; the robust model continues
# from it for a few epochs with every training image replaced by its FGSM version at the current
# weights (`Adversary(attack="fgsm", eps=0.2)`: `TrainStep` makes the adversarial examples inside
# each step).

# %%
x_train, y_train = hessjax.data.load("mnist", "train", limit=S["train"])
x_test, y_test = hessjax.data.load("mnist", "test", limit=S["test"])
model = hessjax.models.get("m1")
apply_fn = model.apply


def train(variables, num_epochs, adversary=None, seed=SEED):
    """``num_epochs`` of momentum SGD from ``variables`` (adversarial with ``adversary``)."""
    tic = time.perf_counter()
    tx = hessjax.train.make_optimizer(LR, momentum=MOMENTUM)
    state = hessjax.train.init_state(variables, tx, seed)
    step = hessjax.train.TrainStep(apply_fn, tx, adversary=adversary)
    fit = hessjax.train.fit(
        step, state, x_train, y_train, batch_size=BATCH, num_epochs=num_epochs, verbose=False
    )
    last = fit.history[-1]
    print(
        f"{fit.epoch} epoch(s), {'FGSM' if adversary else 'clean'} training: train loss "
        f"{last['train_loss']:.4f}, accuracy {last['train_accuracy']:.3f} "
        f"({time.perf_counter() - tic:.0f} s)"
    )
    return hessjax.train.state_variables(fit.state)


models = {"original": train(hessjax.models.init(model, jax.random.key(SEED)), S["epochs"])}
adversary = Adversary(attack="fgsm", eps=EPS["fgsm"], clip=CLIP)
models["FGSM-robust"] = train(models["original"], S["robust_epochs"], adversary, seed=SEED + 1)

# %% [markdown]
# ## Measurements
#
# For each model: clean test accuracy (`hessjax.evaluation.evaluate`); accuracy under FGSM
# (ε∞ = 0.2) and under HESS (ε₂ = 4.0, the L2 attack along the Newton direction `H⁺∇ₓJ` of the
# input Hessian, by conjugate gradient) on the first `S["attack"]` test images; the top-k
# eigenvalues of the Hessian of the mean training loss over the first `S["hessian"]` training
# images (Lanczos on exact HVPs).

# %%
x_h, y_h = x_train[: S["hessian"]], y_train[: S["hessian"]]
x_a, y_a = x_test[: S["attack"]], y_test[: S["attack"]]
results = {}
for name, variables in models.items():
    tic = time.perf_counter()
    accuracy = {"clean": evaluation.evaluate(apply_fn, variables, x_test, y_test, 1000)[1]}
    for attack, eps in EPS.items():
        options = {"cg_iters": S["cg_iters"]} if attack == "l2_hess" else {}
        accuracy[attack] = attacks.adversarial_accuracy(
            apply_fn, variables, x_a, y_a, attack, eps, clip=CLIP, batch_size=500, **options
        )
    # weight Hessian of the mean training loss on (x_h, y_h), 1000 samples per HVP at the most
    loss_fn = hessjax.make_loss_fn(apply_fn, variables)
    op = hessjax.hessian_operator(loss_fn, variables["params"], (x_h, y_h), batch_size=1000)
    eig = hessjax.eigenvalues(
        op, op.params, k=S["k"], tol=1e-3, max_matvecs=S["max_hvps"], key=jax.random.key(SEED)
    )
    results[name] = dict(eigenvalues=np.asarray(eig.values), accuracy=accuracy)
    print(
        f"{name:>12}: λ_max^θ = {eig.values[0]:.4g} ({int(eig.num_matvecs)} HVPs, converged "
        f"{bool(eig.converged)}), {time.perf_counter() - tic:.0f} s"
    )

# %% [markdown]
# ## Table 3 layout
#
# Test accuracy (%) on clean images and under each attack, and λ_max^θ of the training-loss
# Hessian.

# %%
rows = [
    "| training | clean | FGSM ε∞ = 0.2 | HESS ε₂ = 4.0 | λ_max^θ |",
    "|---|---|---|---|---|",
]
for name, r in results.items():
    a = r["accuracy"]
    rows.append(
        f"| {name} | {100 * a['clean']:.1f} | {100 * a['fgsm']:.1f} | {100 * a['l2_hess']:.1f} "
        f"| {r['eigenvalues'][0]:.4g} |"
    )
display(Markdown("\n".join(rows)))

# %% [markdown]
# ## From the original to the robust model (Fig. 5)
#
# `hessjax.landscape.interpolation`: the loss and accuracy of `(1 − α)·θ_original + α·θ_robust`
# (α = 0: the original, α = 1: the robust model; beyond: extrapolation), on the training images of
# the Hessian and on the test images. As in the paper, the robust model has had
# `S["robust_epochs"]` more epochs of training than the original; at smoke scale the original is
# far from converged, so those epochs also raise its clean accuracy.

# %%
ALPHAS = np.linspace(-0.5, 1.5, S["points"])  # (1 − α)·θ_original + α·θ_robust
curves = {
    split: landscape.interpolation(
        apply_fn, models["original"], models["FGSM-robust"], x, y, ALPHAS, batch_size=1000
    )
    for split, (x, y) in {"train": (x_h, y_h), "test": (x_test, y_test)}.items()
}

# %% [markdown]
# Left (Fig. 6): the top-k eigenvalues of the two Hessians. Middle (Fig. 5): the loss on the line
# between the models. Right: test accuracy of each model on clean and attacked images.

# %%
fig, axes = plt.subplots(1, 3, figsize=(15, 4.2), layout="constrained")
colors = {"original": "C0", "FGSM-robust": "C3"}
for name, r in results.items():
    axes[0].plot(np.arange(1, S["k"] + 1), r["eigenvalues"], "o-", color=colors[name], label=name)
axes[0].set(
    xlabel="eigenvalue index",
    xticks=np.arange(1, S["k"] + 1),
    ylabel=r"$\lambda_i$ of $\nabla^2_\theta L$ (training loss)",
    title="Top Hessian eigenvalues",
)
axes[0].set_ylim(bottom=min(0.0, axes[0].get_ylim()[0]))  # a linear axis from 0

for split, style in (("train", "-"), ("test", "--")):
    axes[1].plot(ALPHAS, curves[split]["loss"], style, color="k", label=f"{split} loss")
for alpha, name in ((0.0, "original"), (1.0, "FGSM-robust")):
    axes[1].axvline(alpha, color=colors[name], lw=1.5, ls=":", label=f"α = {alpha:g}: {name}")
axes[1].set(
    xlabel=r"$\alpha$ in $(1-\alpha)\,\theta_{original} + \alpha\,\theta_{robust}$",
    ylabel="loss",
    title="Loss from the original to the robust model",
)

columns = ["clean", *EPS]
width = 0.8 / len(results)
for i, (name, r) in enumerate(results.items()):
    acc = [100 * r["accuracy"][c] for c in columns]
    pos = np.arange(len(columns)) + (i - (len(results) - 1) / 2) * width
    bars = axes[2].bar(pos, acc, width, color=colors[name], label=name)
    axes[2].bar_label(bars, fmt="%.0f", fontsize=8)
axes[2].set_xticks(
    np.arange(len(columns)),
    ["clean"] + [f"{attacks.spec(a).display} ε = {e}" for a, e in EPS.items()],
)
axes[2].set(ylabel="test accuracy (%)", ylim=(0, 105), title=f"Accuracy on {len(y_a)} test images")
for ax in axes:
    ax.grid(True, which="both", alpha=0.3)
    ax.legend()
fig.suptitle(f"M1 on MNIST ({SCALE} scale): FGSM training, flatter and more robust")
plt.show()

orig, rob = results["original"], results["FGSM-robust"]
print(
    f"λ_max^θ: original {orig['eigenvalues'][0]:.4g}, robust {rob['eigenvalues'][0]:.4g} "
    f"({orig['eigenvalues'][0] / rob['eigenvalues'][0]:.2f}× flatter); mean attacked accuracy: "
    f"original {np.mean([orig['accuracy'][a] for a in EPS]):.3f}, "
    f"robust {np.mean([rob['accuracy'][a] for a in EPS]):.3f}"
)

# %% [markdown]
# ## The full study
#
# The experiment script runs the paper's protocol: the original trained 100 epochs with the
# learning rate halved every 5, then robust training with each of the five attacks (FGSM, FGSM-10,
# GRAD, FHSM, HESS), every model attacked by all five, the spectra of the full and of sub-sampled
# Hessians (b_H = 1: negative eigenvalues), resumable, with checkpoints, a results file, the
# paper's table and its figures. From a clone of the repository:
#
# ```bash
# python experiments/adversarial_training.py --config=experiments/configs/m1_robust.py:cpu
# python experiments/adversarial_training.py --config=experiments/configs/c3_robust.py:cpu
# ```
#
# (M1 / MNIST and C3 / CIFAR-10; drop `:cpu` for the paper's scale on a GPU).
