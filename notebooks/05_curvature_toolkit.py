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
# # 05 · Curvature toolkit: layer blocks, Gauss-Newton vs Hessian, better trace estimators
#
# [![Open In Colab](https://colab.research.google.com/assets/colab-badge.svg)](https://colab.research.google.com/github/OWNER/hessjax/blob/main/notebooks/05_curvature_toolkit.ipynb)
# (the badge opens `OWNER/hessjax`; for another copy see `notebooks/README.md`). On Colab, set
# `HESSJAX_REPO_URL` to the repository's URL before the install cell (the first code cell).
#
# Beyond the paper, on M1 trained briefly on real MNIST:
#
# 1. **Blocks of the Hessian**: `hessjax.block_operator(..., select="Dense_0")` is the Hessian
#    w.r.t. one layer's parameters (the others fixed); every solver takes it unchanged.
#    `hessjax.layer_curvature` gives λ_max and the trace of every layer's block.
# 2. **Gauss-Newton vs Hessian**: `hessjax.gauss_newton_operator` (G = Jᵀ H_ℓ J, PSD) beside the
#    Hessian: top eigenvalues and SLQ spectral densities.
# 3. **Trace estimators**: the relative error of Hutchinson, Hutch++ and XTrace against the number
#    of HVPs.

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

SEED = 0
# Scale: $HESSJAX_SCALE = smoke | cpu | paper (default: paper on an accelerator, cpu otherwise).
SCALE = os.environ.get("HESSJAX_SCALE") or ("cpu" if jax.default_backend() == "cpu" else "paper")
print(f"{SCALE} scale on {jax.devices()}")
S = {  # training images / epochs, samples of the Hessian, top-k and tol, HVP budgets (per-layer
    # trace; trace-error plot), seeds per budget
    "smoke": dict(train=256, epochs=1, hessian=32, k=2, tol=1e-2, layer_trace=6,
                  budgets=[6, 12], seeds=2),
    "cpu": dict(train=4000, epochs=2, hessian=1000, k=5, tol=1e-3, layer_trace=30,
                budgets=[15, 30, 60, 120], seeds=5),
    "paper": dict(train=20000, epochs=3, hessian=5000, k=10, tol=1e-3, layer_trace=30,
                  budgets=[15, 30, 60, 120, 240], seeds=10),
}[SCALE]  # fmt: skip

# %% [markdown]
# ## A briefly trained M1
#
# M1 of the paper (two stride-2 5×5 convolutions, FC 500, FC 10; 1.26M parameters) on real MNIST
# (`$HESSJAX_DATA_DIR`, else tensorflow_datasets), momentum SGD at batch 128.

# %%
x, y = hessjax.data.load("mnist", "train", limit=S["train"])
model = hessjax.models.get("m1")
init = hessjax.models.init(model, jax.random.key(SEED))
tx = hessjax.train.make_optimizer(0.02, momentum=0.9)
step = hessjax.train.TrainStep(model.apply, tx)
fit = hessjax.train.fit(
    step, hessjax.train.init_state(init, tx, SEED), x, y, batch_size=128,
    num_epochs=S["epochs"], verbose=False,
)  # fmt: skip
variables = hessjax.train.state_variables(fit.state)
params = variables["params"]
print(f"train loss {fit.history[-1]['train_loss']:.4f} after {fit.epoch} epochs")
loss_fn = hessjax.make_loss_fn(model.apply, variables)
data = (x[: S["hessian"]], y[: S["hessian"]])
batch_size = min(500, S["hessian"])
key = jax.random.key(SEED)

# %% [markdown]
# ## 1. Hessian blocks, layer by layer
#
# A block is selected by parameter path: a module name (`"Dense_0"`), a path prefix, a
# `re.compile(...)` pattern, or a predicate `(path, leaf) -> bool`. The block operator acts on the
# selected sub-parameters, a dict `{path: array}` (`op.params`).

# %%
block = hessjax.block_operator(loss_fn, params, data, select="Dense_1", batch_size=batch_size)
print("block space:", {k: v.shape for k, v in block.params.items()})
eig = hessjax.eigenvalues(block, block.params, k=S["k"], tol=S["tol"], key=key)
print("top eigenvalues of the Dense_1 block:", np.round(np.asarray(eig.values), 4))

tic = time.perf_counter()
rows = hessjax.layer_curvature(
    loss_fn, params, data, batch_size=batch_size, key=key, k=2, tol=S["tol"],
    trace_matvecs=S["layer_trace"],
)  # fmt: skip
print(f"per-layer analysis in {time.perf_counter() - tic:.0f} s")
display(Markdown("\n".join(hessjax.layers.markdown(rows))))
fig = hessjax.layers.figure(rows, title="M1: curvature of each layer's Hessian block")
plt.show()

# %% [markdown]
# The blocks hold the whole diagonal of H, so the layers' traces add up to tr(H) (checked against
# XTrace on the whole Hessian below); each block's λ_max is at most λ_max(H) (interlacing).

# %%
hessian = hessjax.hessian_operator(loss_fn, params, data, batch_size=batch_size)
whole = hessjax.xtrace(hessian, params, num_matvecs=S["budgets"][-1], key=key)
total = sum(r.trace for r in rows)
print(f"Σ layer traces {total:.4g}; XTrace of the whole Hessian {float(whole.value):.4g} "
      f"± {float(whole.error):.2g}")  # fmt: skip

# %% [markdown]
# ## 2. Gauss-Newton vs Hessian
#
# The generalised Gauss-Newton `G = (1/N) Σ Jᵀ (diag p − ppᵀ) J` drops the term of the Hessian
# that involves the second derivatives of the network. Its spectrum is non-negative; where the
# Hessian's top eigenvalues are close to G's, the Gauss-Newton part explains the sharpness.

# %%
ggn = hessjax.gauss_newton_operator(model.apply, variables, data, batch_size=batch_size)
top = {
    name: np.asarray(hessjax.eigenvalues(op, params, k=S["k"], tol=S["tol"], key=key).values)
    for name, op in (("Hessian", hessian), ("Gauss-Newton", ggn))
}
display(Markdown("\n".join(
    ["| i | Hessian λᵢ | Gauss-Newton λᵢ |", "|---|---|---|"]
    + [f"| {i + 1} | {h:.4g} | {g:.4g} |" for i, (h, g) in
       enumerate(zip(top["Hessian"], top["Gauss-Newton"], strict=True))]
)))  # fmt: skip

fig, ax = plt.subplots(figsize=(7, 3.6))
for name, op in (("Hessian", hessian), ("Gauss-Newton", ggn)):
    grid, dens = hessjax.density(op, params, num_steps=2 * S["k"] + 10, num_runs=2, key=key)
    ax.semilogy(grid, np.maximum(np.asarray(dens), 1e-8), label=name)
ax.set(xlabel="eigenvalue", ylabel="density (SLQ)", title="Spectral densities on M1")
ax.legend()
plt.show()

# %% [markdown]
# ## 3. Trace error against HVPs
#
# Hutchinson's error falls like 1/√m with m HVPs; Hutch++ and XTrace deflate the top of the
# spectrum first, so on a Hessian whose spectrum decays they need far fewer HVPs. No exact trace
# exists for M1: the reference is the mean of every Hutch++ and XTrace estimate at the largest
# budget (all estimators are unbiased).

# %%
estimates = {m: {} for m in ("hutchinson", "hutchpp", "xtrace")}
for m in estimates:
    for budget in S["budgets"]:
        estimates[m][budget] = [
            float(getattr(hessjax, m)(hessian, params, num_matvecs=budget,
                                      key=jax.random.key(100 + s)).value)
            for s in range(S["seeds"])
        ]  # fmt: skip
largest = S["budgets"][-1]
reference = np.mean(estimates["hutchpp"][largest] + estimates["xtrace"][largest])
fig, ax = plt.subplots(figsize=(6, 4))
for m, by_budget in estimates.items():
    errors = [np.median(np.abs(np.array(v) - reference)) / reference for v in by_budget.values()]
    ax.loglog(S["budgets"], errors, "o-", label=m)
ax.set(xlabel="HVPs (matvecs)", ylabel="median relative error",
       title=f"Trace of M1's Hessian ({S['hessian']} images)")  # fmt: skip
ax.legend()
plt.show()

# %% [markdown]
# The same calls take any operator: a block (`hessjax.xtrace(block, block.params, ...)`), the
# Gauss-Newton matrix, or `op.linearize()`. `hessjax.diagonal(op, params, num_matvecs=..., key=...)`
# estimates the diagonal (XDiag; `method="hutchinson"` for Hutchinson's) as a pytree like the
# parameters. In the batch-size sweep (`python experiments/batch_sweep.py
# --config=experiments/configs/c1.py:cpu`, from a clone), every run also records these per-layer
# quantities and the Gauss-Newton λ_max (`table.md`, `figures/fig_layers.png`).
