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
# [![Open In Colab](https://colab.research.google.com/assets/colab-badge.svg)](https://colab.research.google.com/github/OWNER/hessjax/blob/main/notebooks/02_large_batch_sharpness.ipynb)
# (the badge opens `OWNER/hessjax`; for another copy see `notebooks/README.md`). On Colab, set
# `HESSJAX_REPO_URL` to the repository's URL before the install cell (the first code cell).
#
# Yao et al. (2018), Tables 1 and 7, Figs. 1-2: train the same network with the same optimiser at
# several batch sizes, then measure the top eigenvalues of the weight Hessian of the training
# loss, the loss along its top eigenvector, the input-gradient norm ‖∇ₓJ‖, the input-Hessian
# λ_max^x and the accuracy under FGSM. The claims: λ_max^θ grows with the batch size (larger
# batches end at sharper points) and FGSM accuracy falls.
#
# A small version of the study, with M1 on MNIST and a few batch sizes, written with the installed
# library only: `hessjax.train` trains, `hessjax.hessian_operator` + `hessjax.eigenvalues`,
# `hessjax.landscape`, `hessjax.input_hessian_eigenvalues` and `hessjax.attacks` measure.


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
from matplotlib import ticker

import hessjax
from hessjax import attacks, evaluation, landscape

LR, MOMENTUM, SEED = 0.02, 0.9, 0
FGSM_EPS = [0.0, 0.05, 0.1, 0.2, 0.3]  # normalised units; the full study: ε₁ = 0.2, ε₂ = 0.1
CLIP = hessjax.data.input_range("mnist")  # adversarial images stay valid images
# Scale: $HESSJAX_SCALE = smoke | cpu | paper (default: paper on an accelerator, cpu otherwise).
SCALE = os.environ.get("HESSJAX_SCALE") or ("cpu" if jax.default_backend() == "cpu" else "paper")
print(f"{SCALE} scale on {jax.devices()}")
# Per scale: training and test images; batch sizes; every model is trained with the same learning
# rate until its training loss is <= target (the paper: 0.001) or max_epochs are spent; samples of
# the training set for the weight Hessian and the landscape, top-k eigenvalues and their HVP
# budget; test images for the input Hessian and FGSM; points along the top eigenvector.
S = {
    "smoke": dict(
        train=256, test=256, batches=[16, 128], target=0.1, max_epochs=60, hessian=256, k=3,
        max_hvps=12, attack=128, points=9,
    ),
    "cpu": dict(
        train=5000, test=1000, batches=[32, 128, 512], target=0.01, max_epochs=40, hessian=1000,
        k=10, max_hvps=80, attack=500, points=21,
    ),
    "paper": dict(
        train=None, test=None, batches=[64, 512, 2048], target=0.001, max_epochs=100,
        hessian=10_000, k=20, max_hvps=200, attack=10_000, points=41,
    ),
}[SCALE]  # fmt: skip

# %% [markdown]
# ## Training
#
# Real MNIST from `hessjax.data.load` (`$HESSJAX_DATA_DIR`, else tensorflow_datasets), M1 of the
# paper (two stride-2 5×5 convolutions, FC 500, FC 10; 1.26M parameters), momentum SGD with the
# same constant learning rate for every batch size, from the same initialisation, each trained to
# the same training loss (`target_loss`), so that the models are compared at equal loss.

# %%
x_train, y_train = hessjax.data.load("mnist", "train", limit=S["train"])
x_test, y_test = hessjax.data.load("mnist", "test", limit=S["test"])
model = hessjax.models.get("m1")
init = hessjax.models.init(model, jax.random.key(SEED))
apply_fn = model.apply

trained = {}  # batch size -> variables
for batch in S["batches"]:
    tic = time.perf_counter()
    tx = hessjax.train.make_optimizer(LR, momentum=MOMENTUM)
    state = hessjax.train.init_state(init, tx, SEED)
    step = hessjax.train.TrainStep(apply_fn, tx, micro_batch_size=min(batch, 256))
    fit = hessjax.train.fit(
        step,
        state,
        x_train,
        y_train,
        batch_size=batch,
        num_epochs=S["max_epochs"],
        target_loss=S["target"],
        verbose=False,
    )
    trained[batch] = hessjax.train.state_variables(fit.state)
    print(
        f"batch {batch:>5}: {fit.status} after {fit.epoch} epochs ({int(fit.state.step)} steps), "
        f"train loss {fit.history[-1]['train_loss']:.4f}, "
        f"accuracy {fit.history[-1]['train_accuracy']:.3f} ({time.perf_counter() - tic:.0f} s)"
    )

# %% [markdown]
# ## Measurements
#
# For each model: loss and accuracy (`hessjax.evaluation.evaluate`); the top-k eigenpairs of the
# Hessian of the mean training loss over the first `S["hessian"]` training images (Lanczos on
# exact HVPs); the training loss along the top eigenvector, `L(θ + t·v₁)`; per test image ‖∇ₓJ‖
# and λ_max^x; the test accuracy under FGSM for a grid of ε (one attack call serves every ε).

# %%
x_h, y_h = x_train[: S["hessian"]], y_train[: S["hessian"]]
x_a, y_a = x_test[: S["attack"]], y_test[: S["attack"]]
TS = np.linspace(-0.5, 0.5, S["points"])  # θ + t·v₁, ‖v₁‖ = 1
results = {}
for batch, variables in trained.items():
    tic = time.perf_counter()
    # weight Hessian of the mean training loss on (x_h, y_h), 1000 samples per HVP at the most
    loss_fn = hessjax.make_loss_fn(apply_fn, variables)
    op = hessjax.hessian_operator(loss_fn, variables["params"], (x_h, y_h), batch_size=1000)
    eig = hessjax.eigenvalues(
        op, op.params, k=S["k"], tol=1e-3, max_matvecs=S["max_hvps"], key=jax.random.key(SEED)
    )
    results[batch] = dict(
        train=evaluation.evaluate(apply_fn, variables, x_train, y_train, 1000),
        test=evaluation.evaluate(apply_fn, variables, x_test, y_test, 1000),
        eigenvalues=np.asarray(eig.values),
        hvps=int(eig.num_matvecs),
        landscape=landscape.landscape_1d(
            apply_fn, variables, x_h, y_h, eig.vectors, TS, batch_size=1000
        ),
        grad_norm=float(np.mean(hessjax.input_gradient_norms(apply_fn, variables, x_a, y_a))),
        input_lambda=float(
            np.mean(hessjax.input_hessian_eigenvalues(apply_fn, variables, x_a, y_a))
        ),
        fgsm=np.asarray(
            attacks.adversarial_accuracy(
                apply_fn, variables, x_a, y_a, "fgsm", FGSM_EPS, clip=CLIP, batch_size=500
            )
        ),
    )
    print(
        f"batch {batch:>5}: λ_max^θ = {eig.values[0]:.4g} ({int(eig.num_matvecs)} HVPs, "
        f"converged {bool(eig.converged)}), {time.perf_counter() - tic:.0f} s"
    )

# %% [markdown]
# ## Table 1 / Table 7 layout
#
# Train (test) accuracy; λ_max^θ of the training-loss Hessian; per-image means of ‖∇ₓJ‖ and
# λ_max^x and FGSM accuracy on the first `S["attack"]` test images.

# %%
i1, i2 = FGSM_EPS.index(0.2), FGSM_EPS.index(0.1)
rows = [
    "| batch | accuracy (%) | λ_max^θ | ‖∇ₓJ‖ | λ_max^x | FGSM ε = 0.2 (%) | FGSM ε = 0.1 (%) |",
    "|---|---|---|---|---|---|---|",
]
for batch, r in results.items():
    rows.append(
        f"| {batch} | {100 * r['train'][1]:.1f} ({100 * r['test'][1]:.1f}) "
        f"| {r['eigenvalues'][0]:.4g} | {r['grad_norm']:.3g} | {r['input_lambda']:.3g} "
        f"| {100 * r['fgsm'][i1]:.1f} | {100 * r['fgsm'][i2]:.1f} |"
    )
display(Markdown("\n".join(rows)))

# %% [markdown]
# ## Spectra, landscape, robustness
#
# Left (Fig. 1): the top-k eigenvalues of each model's Hessian. Middle (Fig. 2): the training
# loss along the top eigenvector, `θ + t·v₁`: the sharper the minimum, the faster the loss rises.
# Right: test accuracy under FGSM as ε grows.

# %%
fig, axes = plt.subplots(1, 3, figsize=(15, 4.2), layout="constrained")
colors = {b: plt.cm.viridis(i / max(len(results) - 1, 1) * 0.85) for i, b in enumerate(results)}
for batch, r in results.items():
    kw = dict(color=colors[batch], label=f"batch {batch}")
    ev = r["eigenvalues"]
    axes[0].plot(np.arange(1, len(ev) + 1), ev, "o-", **kw)
    axes[1].plot(TS, r["landscape"], "-", **kw)
    axes[2].plot(FGSM_EPS, 100 * r["fgsm"], "o-", **kw)
all_ev = np.concatenate([r["eigenvalues"] for r in results.values()])
if all_ev.min() > 0 and all_ev.max() / all_ev.min() > 10:  # log scale, ticks as plain numbers
    axes[0].set_yscale("log")
    axes[0].yaxis.set_major_locator(ticker.LogLocator(subs=(1.0, 2.0, 5.0)))
    axes[0].yaxis.set_major_formatter(ticker.FuncFormatter(lambda v, _: f"{v:g}"))
    axes[0].yaxis.set_minor_formatter(ticker.NullFormatter())
else:
    axes[0].set_ylim(bottom=min(0.0, 1.1 * all_ev.min()))
axes[0].set(
    xlabel="eigenvalue index",
    ylabel=r"$\lambda_i$ of $\nabla^2_\theta L$ (training loss)",
    title="Top Hessian eigenvalues",
)
axes[0].set_xticks(np.arange(1, S["k"] + 1))
axes[1].set(
    xlabel=r"$t$ (step along the top eigenvector $v_1$)",
    ylabel=r"training loss $L(\theta + t\,v_1)$",
    title="Loss along the top eigenvector",
)
axes[2].set(
    xlabel="FGSM ε (L∞, normalised units)",
    ylabel="test accuracy under FGSM (%)",
    ylim=(0, 102),
    title=f"FGSM on {len(y_a)} test images",
)
for ax in axes:
    ax.grid(True, which="both", alpha=0.3)
    ax.legend()
fig.suptitle(f"M1 on MNIST ({SCALE} scale): larger batches, sharper and less robust")
plt.show()

lam = np.array([r["eigenvalues"][0] for r in results.values()])
fgsm = np.array([r["fgsm"][i1] for r in results.values()])
print(
    f"λ_max^θ grows with the batch size: {bool(np.all(np.diff(lam) > 0))}; "
    f"FGSM accuracy (ε = 0.2) falls: {bool(np.all(np.diff(fgsm) < 0))}"
)

# %% [markdown]
# ## The full study
#
# The experiment script runs the paper's protocol (every batch size trained to loss 0.001 or 100
# epochs with the learning rate halved every 5 epochs, 3 seeds, train and test Hessians, the 2-D
# landscape of Fig. 3, λ_max during training of Fig. 4), resumable, with checkpoints, a results
# file, the paper's table and its figures. From a clone of the repository:
#
# ```bash
# python experiments/batch_sweep.py --config=experiments/configs/m1.py:cpu  # M1 / MNIST
# python experiments/batch_sweep.py --config=experiments/configs/c1.py:cpu  # C1 / CIFAR-10
# ```
#
# (`:cpu` takes about 20 minutes for M1 on a laptop; drop it for the paper's scale on a GPU).
