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
# # 03 · The input Hessian, Theorem 1, and five attacks
#
# [![Open In Colab](https://colab.research.google.com/assets/colab-badge.svg)](https://colab.research.google.com/github/OWNER/hessjax/blob/main/notebooks/03_input_hessian_and_attacks.ipynb)
# (the badge opens `OWNER/hessjax`; for another copy see `notebooks/README.md`). On Colab, set
# `HESSJAX_REPO_URL` to the repository's URL before the install cell (the first code cell).
#
# For one sample, `J(x) = CE(z(x), y)` with logits `z`. Yao et al. (2018) show (Theorem 1,
# Proposition 2) that for ReLU networks the Hessian with respect to the *input*,
# `∇²ₓJ = J_zᵀ (diag p − p pᵀ) J_z`, is positive semi-definite with rank ≤ c − 1, and use it for
# second-order attacks. On a briefly trained M1 and real MNIST images, this notebook computes
#
# 1. per-sample input gradients `∇ₓJ` and the dominant input-Hessian eigenvalue `λ_max^x`;
# 2. the dense 784 × 784 input Hessian of a few samples (`jax.hessian`), to check PSD and rank;
# 3. the five attacks of the paper (FGSM, FGSM-10, GRAD, FHSM, HESS) with pictures of the
#    adversarial images and perturbations, and the accuracy under each.

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
import jax
import matplotlib.pyplot as plt
import numpy as np

import hessjax
from hessjax import attacks, evaluation

# ε in the units the model sees (normalised MNIST), as experiments/configs/m1_robust.py: L∞
# attacks 0.2 (PAPER.md's MNIST ε₁), L2 attacks 4.0 (the FGSM perturbation at 0.2 has L2 norm 5.6).
EPS_LINF, EPS_L2 = 0.2, 4.0
CLIP = hessjax.data.input_range("mnist")  # adversarial images stay valid images
# Scale: $HESSJAX_SCALE = smoke | cpu | paper (default: paper on an accelerator, cpu otherwise).
SCALE = os.environ.get("HESSJAX_SCALE") or ("cpu" if jax.default_backend() == "cpu" else "paper")
print(f"{SCALE} scale on {jax.devices()}")
# Per scale: train images / epochs; test images for the per-sample quantities and for the attacks;
# samples for the dense input Hessian and for power iteration.
S = {
    "smoke": dict(train=2048, epochs=1, test=64, attack=64, dense=2, power=4),
    "cpu": dict(train=10_000, epochs=2, test=1000, attack=500, dense=4, power=16),
    "paper": dict(train=60_000, epochs=5, test=10_000, attack=10_000, dense=8, power=64),
}[SCALE]
# Every attack is run once for a grid of ε that contains EPS_LINF and EPS_L2.
if SCALE == "smoke":
    EPS_GRID = {"linf": [0.1, 0.2], "l2": [2.0, 4.0]}
else:
    EPS_GRID = {"linf": [0.05, 0.1, 0.2, 0.3, 0.4], "l2": [1.0, 2.0, 4.0, 6.0, 8.0]}

# %% [markdown]
# ## A briefly trained M1
#
# Real MNIST from `hessjax.data.load` (`$HESSJAX_DATA_DIR`, else tensorflow_datasets), M1 of the
# paper (two stride-2 5×5 convolutions, FC 500, FC 10; 1.26M parameters), momentum SGD with
# `hessjax.train`.

# %%
x_train, y_train = hessjax.data.load("mnist", "train", limit=S["train"])
x_test, y_test = hessjax.data.load("mnist", "test", limit=S["test"])
model = hessjax.models.get("m1")
tx = hessjax.train.make_optimizer(0.05, momentum=0.9)
state = hessjax.train.init_state(hessjax.models.init(model, jax.random.key(0)), tx, 0)
step = hessjax.train.TrainStep(model.apply, tx)
fit = hessjax.train.fit(
    step, state, x_train, y_train, batch_size=32, num_epochs=S["epochs"], verbose=False
)
variables = hessjax.train.state_variables(fit.state)
apply_fn = model.apply
test_loss, test_acc = evaluation.evaluate(apply_fn, variables, x_test, y_test)
print(
    f"trained {fit.epoch} epoch(s) on {len(y_train)} images: "
    f"train accuracy {fit.history[-1]['train_accuracy']:.3f}, "
    f"test accuracy {test_acc:.3f} on {len(y_test)} images"
)

# %% [markdown]
# ## 1. Per-sample input gradients and input-Hessian eigenvalues
#
# `input_gradients` and `input_hessian_eigenvalues` map over samples with `jax.vmap` (in chunks).
# `method="exact"` takes the top eigenvalue of the c × c matrix `B Bᵀ`,
# `B = (I − q qᵀ) diag(q) J_z` with `q = √p`, which has the nonzero eigenvalues of
# `∇²ₓJ = J_zᵀ (diag p − p pᵀ) J_z` for piecewise-linear nets;
# `method="power"` runs power iteration on exact input HVPs and needs no such assumption.

# %%
grads = np.asarray(hessjax.input_gradients(apply_fn, variables, x_test, y_test))
grad_norms = np.asarray(hessjax.input_gradient_norms(apply_fn, variables, x_test, y_test))
lam_x = np.asarray(hessjax.input_hessian_eigenvalues(apply_fn, variables, x_test, y_test))
correct = np.asarray(apply_fn(variables, x_test).argmax(-1) == y_test)
print(
    f"mean ‖∇ₓJ‖ = {grad_norms.mean():.4g}, mean λ_max^x = {lam_x.mean():.4g} "
    f"over {len(y_test)} test images"
)

n = S["power"]
lam_power = np.asarray(
    hessjax.input_hessian_eigenvalues(
        apply_fn,
        variables,
        x_test[:n],
        y_test[:n],
        method="power",
        batch_size=n,
        key=jax.random.key(0),
    )
)
rel = np.abs(lam_power - lam_x[:n]) / lam_x[:n]
print(
    f"power iteration vs exact on {n} samples: relative difference median {np.median(rel):.1e}, "
    f"max {rel.max():.1e}"
)

# %%
fig, (ax1, ax2) = plt.subplots(1, 2, figsize=(11, 4))
for mask, label, color in (
    (correct, "correctly classified", "C0"),
    (~correct, "misclassified", "C3"),
):
    ax1.scatter(grad_norms[mask], lam_x[mask], s=10, alpha=0.6, color=color, label=label)
ax1.set(
    xscale="log",
    yscale="log",
    xlabel=r"$\|\nabla_x J\|_2$",
    ylabel=r"$\lambda_{\max}(\nabla^2_x J)$",
    title="Per-sample input sensitivity",
)
ax1.grid(True, which="both", alpha=0.3)
ax1.legend()
bins = np.logspace(np.log10(lam_x.min()), np.log10(lam_x.max()), 30)
ax2.hist(
    [lam_x[correct], lam_x[~correct]],
    bins=bins,
    stacked=True,
    color=["C0", "C3"],
    label=["correctly classified", "misclassified"],
)
ax2.set(
    xscale="log",
    xlabel=r"$\lambda_{\max}(\nabla^2_x J)$",
    ylabel="number of test images",
    title=r"Distribution of $\lambda_{\max}^x$",
)
ax2.legend()
fig.tight_layout()
plt.show()

# %% [markdown]
# The input gradient of a few test images: where a small change of the pixels changes the loss
# most (red: increasing the pixel increases the loss).

# %%
show = 6
fig, axes = plt.subplots(2, show, figsize=(1.7 * show, 3.8))
for j in range(show):
    g = grads[j, ..., 0]
    axes[0, j].imshow(x_test[j, ..., 0], cmap="gray")
    axes[0, j].set_title(f"label {y_test[j]}", fontsize=9)
    axes[1, j].imshow(g, cmap="RdBu_r", vmin=-np.abs(g).max(), vmax=np.abs(g).max())
    axes[1, j].set_title(f"‖∇ₓJ‖ = {grad_norms[j]:.2g}", fontsize=9)
for ax in axes.ravel():
    ax.set_xticks([])
    ax.set_yticks([])
axes[0, 0].set_ylabel("image")
axes[1, 0].set_ylabel(r"$\nabla_x J$")
fig.tight_layout()
plt.show()

# %% [markdown]
# ## 2. Theorem 1 and Proposition 2: PSD, rank ≤ c − 1
#
# The dense input Hessian of a few samples by `jax.hessian` of the per-sample loss
# (`hessjax.input_hessian.sample_loss`), in float64 so that round-off does not hide the zero
# eigenvalues, against the c = 10 eigenvalues of `hessjax.input_hessian_spectrum`. The true
# Hessian is PSD, so its negative computed eigenvalues are pure round-off; the numerical rank counts
# the eigenvalues above ten times the most negative one's magnitude.

# %%
k = S["dense"]
jax.config.update("jax_enable_x64", True)
try:
    v64 = jax.tree_util.tree_map(lambda a: np.asarray(a, np.float64), variables)
    x64 = x_test[:k].astype(np.float64)
    hess_of = jax.jit(
        jax.hessian(lambda xi, yi: hessjax.input_hessian.sample_loss(apply_fn, v64, xi, yi))
    )
    dense_eigs = np.stack(
        [
            np.linalg.eigvalsh(np.asarray(hess_of(x64[i], y_test[i])).reshape(784, 784))[::-1]
            for i in range(k)
        ]
    )
    reduced = np.asarray(hessjax.input_hessian_spectrum(apply_fn, v64, x64, y_test[:k]))
finally:
    jax.config.update("jax_enable_x64", False)

print(
    f"{'sample':>6} {'λ_max':>10} {'min λ / λ_max':>14} {'rank':>5} "
    f"{'max |dense - reduced| / λ_max':>29}"
)
for i in range(k):
    ev = dense_eigs[i]
    rank = int((ev > 10 * abs(ev.min())).sum())  # above the round-off level set by λ_min < 0
    err = np.abs(ev[:10] - reduced[i]).max() / ev[0]
    print(f"{i:>6} {ev[0]:>10.3g} {ev.min() / ev[0]:>14.1e} {rank:>5} {err:>29.1e}")

# All 784 eigenvalues of each sample, ordered by magnitude; hollow markers are negative ones.
fig, ax = plt.subplots(figsize=(8, 4))
idx = np.arange(1, 785)
for i in range(k):
    ev = dense_eigs[i][np.argsort(-np.abs(dense_eigs[i]))]
    (line,) = ax.plot(idx, np.abs(ev), "-", lw=0.8, label=f"sample {i} (label {y_test[i]})")
    ax.plot(idx[ev < 0], -ev[ev < 0], "o", ms=3, mfc="none", color=line.get_color())
    ax.plot(idx[ev >= 0], ev[ev >= 0], "o", ms=3, color=line.get_color())
ax.axvline(9.5, color="k", ls="--", lw=1)
ax.text(10.5, 0.5, "c − 1 = 9", transform=ax.get_xaxis_transform(), fontsize=9)
ax.plot([], [], "ko", ms=3, label="λ ≥ 0")
ax.plot([], [], "ko", ms=3, mfc="none", label="λ < 0 (|λ| plotted)")
ax.set(
    xscale="log",
    yscale="log",
    xlabel="eigenvalue index (by decreasing |λ|)",
    ylabel=r"$|\lambda_i(\nabla^2_x J)|$",
    title="Dense input Hessian: ≤ 9 nonzero eigenvalues, all others at round-off",
)
ax.grid(True, which="both", alpha=0.3)
ax.legend(fontsize=8)
fig.tight_layout()
plt.show()

# %% [markdown]
# ## 3. Five attacks
#
# `hessjax.attacks`: FGSM `ε·sign(g)`, FGSM-10 (ten projected sign steps), GRAD `ε·g/‖g‖`, FHSM
# `ε·sign(p)` and HESS `ε·p/‖p‖` with `p` solving `∇²ₓJ p = g` by conjugate gradient. L∞ attacks
# use ε∞ = 0.2, L2 attacks ε₂ = 4.0 (normalised units); every adversarial image is clipped to
# the valid pixel range.

# %%
x_att, y_att = x_test[: S["attack"]], y_test[: S["attack"]]
NORM = {name: spec.norm for name, spec in attacks.REGISTRY.items()}
EPS = {"linf": EPS_LINF, "l2": EPS_L2}
adv_grid = {}  # name -> (E, N, 28, 28, 1): one adversarial set per ε of the grid
for name in attacks.REGISTRY:
    kwargs = dict(return_info=True) if name == "fhsm" else {}
    out = attacks.get(name)(
        apply_fn, variables, x_att, y_att, EPS_GRID[NORM[name]], clip=CLIP, **kwargs
    )
    if name == "fhsm":
        out, info = out
    adv_grid[name] = np.asarray(out)
adversarial = {n: a[EPS_GRID[NORM[n]].index(EPS[NORM[n]])] for n, a in adv_grid.items()}
print(
    f"CG for H p = g (FHSM, HESS): median {np.median(info.iterations):.0f} iterations, "
    f"median relative residual ‖g − Hp‖/‖g‖ {np.median(info.relative_residual):.1e}"
)

clean_acc = attacks.accuracy(apply_fn, variables, x_att, y_att)
print(f"\n{'attack':>8} {'ε':>5} {'accuracy':>9} {'max |Δx|':>9} {'mean ‖Δx‖₂':>11}")
print(f"{'clean':>8} {'':>5} {clean_acc:>9.3f}")
for name, x_adv in adversarial.items():
    delta = (x_adv - x_att).reshape(len(y_att), -1)
    acc = attacks.accuracy(apply_fn, variables, x_adv, y_att)
    print(
        f"{attacks.spec(name).display:>8} {EPS[NORM[name]]:>5} {acc:>9.3f} "
        f"{np.abs(delta).max():>9.3f} {np.linalg.norm(delta, axis=1).mean():>11.3f}"
    )

# %% [markdown]
# Adversarial images (top) and the perturbations `Δx = x_adv − x` (bottom) for the first test
# images; titles give the model's prediction, red where the attack changed it to a wrong class.

# %%
show = 6
pred = {"clean": np.asarray(apply_fn(variables, x_att[:show]).argmax(-1))}
images = {"clean": x_att[:show]}
for name, x_adv in adversarial.items():
    images[name] = x_adv[:show]
    pred[name] = np.asarray(apply_fn(variables, x_adv[:show]).argmax(-1))
label = lambda name: "clean" if name == "clean" else attacks.spec(name).display

fig, axes = plt.subplots(len(images), show, figsize=(1.6 * show, 1.75 * len(images)))
for r, (name, imgs) in enumerate(images.items()):
    for j in range(show):
        ax = axes[r, j]
        ax.imshow(imgs[j, ..., 0], cmap="gray", vmin=CLIP[0], vmax=CLIP[1])
        wrong = pred[name][j] != y_att[j]
        ax.set_title(f"pred {pred[name][j]}", fontsize=8, color="C3" if wrong else "k")
        ax.set_xticks([])
        ax.set_yticks([])
    axes[r, 0].set_ylabel(label(name), fontsize=10)
fig.suptitle("Adversarial images (true labels: " + " ".join(map(str, y_att[:show])) + ")")
fig.tight_layout()
plt.show()

fig, axes = plt.subplots(
    len(adversarial), show, figsize=(1.7 * show, 1.6 * len(adversarial)), layout="constrained"
)
for r, name in enumerate(adversarial):
    delta = images[name] - x_att[:show]
    vmax = max(np.abs(delta).max(), 1e-12)
    for j in range(show):
        ax = axes[r, j]
        im = ax.imshow(delta[j, ..., 0], cmap="RdBu_r", vmin=-vmax, vmax=vmax)
        ax.set_xticks([])
        ax.set_yticks([])
    axes[r, 0].set_ylabel(f"{label(name)} Δx", fontsize=10)
    fig.colorbar(im, ax=axes[r, :].tolist(), shrink=0.9)
fig.suptitle("Perturbations Δx (normalised units; colour scale per row)")
plt.show()

# %% [markdown]
# Accuracy under each attack as ε grows (one attack call per method served every ε above: the
# attack direction is computed once and shared, FGSM-10 iterates per ε).

# %%
fig, axes = plt.subplots(1, 2, figsize=(11, 4))
for ax, norm in zip(axes, ("linf", "l2"), strict=True):
    eps = [0.0, *EPS_GRID[norm]]
    for name in (n for n in attacks.REGISTRY if NORM[n] == norm):
        acc = [clean_acc] + [
            attacks.accuracy(apply_fn, variables, a, y_att) for a in adv_grid[name]
        ]
        ax.plot(eps, acc, "o-", label=attacks.spec(name).display)
    ax.axvline(EPS[norm], color="gray", ls=":", label="ε of the pictures")
    title = "L∞" if norm == "linf" else "L2"
    ax.set(
        xlabel=f"ε ({title} norm, normalised units)",
        ylabel="accuracy",
        ylim=(0, 1.02),
        title=f"{title} attacks on {len(y_att)} test images",
    )
    ax.grid(True, alpha=0.3)
    ax.legend()
fig.tight_layout()
plt.show()
