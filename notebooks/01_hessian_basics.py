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
# # 01 · Hessian basics: exact HVPs, top eigenvalues, trace and spectral density
#
# [![Open In Colab](https://colab.research.google.com/assets/colab-badge.svg)](https://colab.research.google.com/github/OWNER/hessjax/blob/main/notebooks/01_hessian_basics.ipynb)
# (the badge opens `OWNER/hessjax`; for another copy see `notebooks/README.md`). On Colab, set
# `HESSJAX_REPO_URL` to the repository's URL before the install cell (the first code cell).
#
# On a network small enough for a dense `jax.hessian`, this notebook checks every weight-Hessian
# tool of `hessjax` against dense truth:
#
# 1. `hessjax.hvp` and `hessjax.hessian_operator` (exact Hessian-vector products, batch by batch
#    over a whole data set) against the dense Hessian;
# 2. the top-k eigenvalues by power iteration (the paper's method) and by Lanczos, with the number
#    of HVPs each needs, against `numpy.linalg.eigh`;
# 3. Hutchinson's trace estimate against the exact trace;
# 4. the spectral density by stochastic Lanczos quadrature against a histogram of all eigenvalues.
#
# The same calls work unchanged on a 1.26M-parameter M1 or an 11M-parameter ResNet-18, where no
# dense Hessian exists (see notebook 02).

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
import flax.linen as nn
import jax
import jax.numpy as jnp
import matplotlib.pyplot as plt
import numpy as np
from jax.flatten_util import ravel_pytree

import hessjax

# float64, so that the comparisons with the dense Hessian show agreement to ~1e-12, not ~1e-6.
jax.config.update("jax_enable_x64", True)
# Scale: $HESSJAX_SCALE = smoke | cpu | paper (default: paper on an accelerator, cpu otherwise).
SCALE = os.environ.get("HESSJAX_SCALE") or ("cpu" if jax.default_backend() == "cpu" else "paper")
print(f"{SCALE} scale on {jax.devices()}")
# Problem size per scale: a one-hidden-layer ReLU MLP on a synthetic 10-class data set of 8x8
# images (hessjax.data.synthetic: class means + Gaussian noise), trained for a few epochs.
HIDDEN, NUM_SAMPLES, EPOCHS, K = {
    "smoke": (8, 256, 5, 3),
    "cpu": (16, 1024, 20, 5),
    "paper": (32, 2048, 40, 10),
}[SCALE]

# %% [markdown]
# ## A small trained network
#
# A ReLU MLP `64 → HIDDEN → 10` in float64, trained with `hessjax.train` (momentum SGD). Any Flax
# model with a `train` argument works the same way.


# %%
class MLP(nn.Module):
    hidden: int

    @nn.compact
    def __call__(self, x, train: bool = False):
        x = x.reshape(x.shape[0], -1)
        x = nn.relu(nn.Dense(self.hidden, param_dtype=jnp.float64)(x))
        return nn.Dense(10, param_dtype=jnp.float64)(x)


x, y = hessjax.data.synthetic(NUM_SAMPLES, (8, 8, 1), 10, seed=0, noise=2.0)
x = x.astype(np.float64)
model = MLP(HIDDEN)
variables = model.init(jax.random.key(0), x[:1])
tx = hessjax.train.make_optimizer(0.05, momentum=0.9)
state = hessjax.train.init_state(variables, tx, 0)
step = hessjax.train.TrainStep(model.apply, tx)
fit = hessjax.train.fit(step, state, x, y, batch_size=64, num_epochs=EPOCHS, verbose=False)
variables = hessjax.train.state_variables(fit.state)
params = variables["params"]
last = fit.history[-1]
num_params = ravel_pytree(params)[0].size
print(
    f"{num_params} parameters; after {fit.epoch} epochs: train loss {last['train_loss']:.4f}, "
    f"accuracy {last['train_accuracy']:.3f}"
)

# %% [markdown]
# ## 1. Hessian-vector products against the dense Hessian
#
# `loss_fn(params, (x, y))` is the mean cross-entropy (BatchNorm, if any, in inference mode).
# `hessjax.hvp` differentiates it forward-over-reverse; `hessian_operator` sums
# `(n_b / N) · H_b v` over batches, exact for any `N` (here with a short last batch).

# %%
loss_fn = hessjax.make_loss_fn(model.apply, variables)
# (P, P) dense Hessian, small models only; jitted (one compiled program instead of op by op)
H = np.asarray(jax.jit(hessjax.dense_hessian)(loss_fn, params, (x, y)))
print("dense Hessian:", H.shape, "symmetric to", np.abs(H - H.T).max())

v = jax.tree_util.tree_map(lambda p: jax.random.normal(jax.random.key(1), p.shape, p.dtype), params)
v_flat = ravel_pytree(v)[0]
hv_single = ravel_pytree(jax.jit(hessjax.hvp)(loss_fn, params, v, (x, y)))[0]
op = hessjax.hessian_operator(loss_fn, params, (x, y), batch_size=NUM_SAMPLES // 3)
hv_batched = ravel_pytree(op(v))[0]
print("max |hvp - H v|              :", float(jnp.abs(hv_single - H @ v_flat).max()))
print("max |hessian_operator - H v| :", float(jnp.abs(hv_batched - H @ v_flat).max()))
print("max |H v| (scale)            :", float(jnp.abs(H @ v_flat).max()))

# %% [markdown]
# ## 2. Top-k eigenvalues: power iteration vs Lanczos
#
# Both solvers see the operator only through HVPs. Power iteration with deflation (the paper's
# method, stopping at relative change ≤ tol) finds one eigenpair at a time; Lanczos builds one
# Krylov space for all k and stops when every Ritz residual is ≤ tol · |λ₁|.

# %%
exact = np.linalg.eigh(H)[0][::-1]  # all P eigenvalues, largest first
key = jax.random.key(2)
tols = [1e-2, 1e-4, 1e-6] if SCALE == "smoke" else [1e-2, 1e-3, 1e-4, 1e-5, 1e-6]
runs = {
    method: [hessjax.eigenvalues(op, params, k=K, method=method, tol=t, key=key) for t in tols]
    for method in ("lanczos", "power")
}
lanczos, power = runs["lanczos"][-1], runs["power"][-1]  # the tightest tolerance

print(f"tol = {tols[-1]}")
print(
    f"{'i':>3} {'eigh':>12} {'Lanczos':>12} {'power':>12} {'|Lanczos-eigh|':>15} "
    f"{'|power-eigh|':>13}"
)
for i in range(K):
    lam, pw = float(lanczos.values[i]), float(power.values[i])
    print(
        f"{i + 1:>3} {exact[i]:>12.6f} {lam:>12.6f} {pw:>12.6f} "
        f"{abs(lam - exact[i]):>15.2e} {abs(pw - exact[i]):>13.2e}"
    )
print(
    f"HVPs: Lanczos {int(lanczos.num_matvecs)}, power {int(power.num_matvecs)}; "
    f"converged: {bool(lanczos.converged)}, {bool(power.converged)}"
)

# %% [markdown]
# HVP counts as a function of the tolerance, and the error each run leaves in the top-k values.
# Power iteration converges at the rate λ_{i+1}/λ_i, so close eigenvalues can exhaust its default
# budget (100 HVPs per eigenpair; `max_matvecs`): check `converged`. Lanczos builds one Krylov
# space for all k pairs and converges much faster (Chebyshev-accelerated in the gaps).

# %%
counts = {m: [int(r.num_matvecs) for r in rs] for m, rs in runs.items()}
errors = {
    m: [float(np.abs(np.asarray(r.values) - exact[:K]).max()) for r in rs] for m, rs in runs.items()
}
fig, (ax1, ax2) = plt.subplots(1, 2, figsize=(10, 3.8))
for method, marker in (("power", "s"), ("lanczos", "o")):
    ax1.semilogx(tols, counts[method], marker + "-", label=method)
    ax2.loglog(tols, errors[method], marker + "-", label=method)
ax1.set(ylabel="Hessian-vector products", title=f"Cost of the top-{K} eigenvalues")
ax2.set(ylabel=r"max$_i\,|\lambda_i - \lambda_i^{\rm eigh}|$", title="Error against numpy eigh")
for ax in (ax1, ax2):
    ax.set_xlabel("tolerance tol")
    ax.invert_xaxis()
    ax.grid(True, which="both", alpha=0.3)
    ax.legend()
fig.tight_layout()
plt.show()

# %% [markdown]
# ## 3. Trace: Hutchinson vs exact
#
# `tr(H) ≈ mean_i zᵢᵀ H zᵢ` with Rademacher probes `zᵢ`, one HVP each; `trace_samples` returns
# the per-probe values, so the standard error comes for free.

# %%
num_probes = {"smoke": 30, "cpu": 200, "paper": 500}[SCALE]
samples = np.asarray(hessjax.trace_samples(op, params, num_samples=num_probes, key=key))
estimate, stderr = samples.mean(), samples.std(ddof=1) / np.sqrt(num_probes)
print(f"exact trace      : {np.trace(H):.4f}")
print(f"Hutchinson ({num_probes} probes): {estimate:.4f} ± {stderr:.4f} (one standard error)")

running = np.cumsum(samples) / np.arange(1, num_probes + 1)
fig, ax = plt.subplots(figsize=(6, 3.5))
ax.plot(np.arange(1, num_probes + 1), running, label="Hutchinson running mean")
ax.axhline(np.trace(H), color="k", ls="--", label="exact tr(H)")
ax.set(xlabel="number of probes", ylabel="trace estimate", title="Hutchinson trace estimate")
ax.grid(True, alpha=0.3)
ax.legend()
fig.tight_layout()
plt.show()

# %% [markdown]
# ## 4. Spectral density: stochastic Lanczos quadrature vs all eigenvalues
#
# Each SLQ run takes `num_steps` Lanczos steps from a random vector; Ritz values and weights,
# smoothed by a narrow Gaussian, approximate the eigenvalue density. Compared here with a
# histogram of the P exact eigenvalues (log scale: most of the mass sits near zero, a few
# outliers carry the curvature).

# %%
num_steps = min(num_params, {"smoke": 30, "cpu": 80, "paper": 100}[SCALE])
num_runs = {"smoke": 2, "cpu": 5, "paper": 10}[SCALE]
# sigma 1% of the spectral range: wider than the default, for a smooth curve from few runs
grid, dens = hessjax.density(
    op,
    params,
    num_steps=num_steps,
    num_runs=num_runs,
    key=key,
    sigma=0.01 * float(exact[0] - exact[-1]),
)

fig, ax = plt.subplots(figsize=(8, 4))
ax.hist(
    exact,
    bins=80,
    density=True,
    alpha=0.4,
    color="gray",
    label=f"histogram of all {num_params} eigenvalues (eigh)",
)
ax.plot(grid, dens, color="C3", label=f"SLQ density ({num_runs} runs × {num_steps} HVPs)")
for lam in np.asarray(lanczos.values):
    ax.axvline(lam, color="C0", lw=0.8, alpha=0.6)
ax.plot([], [], color="C0", lw=0.8, label=f"top-{K} Lanczos eigenvalues")
ax.set(
    yscale="log",
    ylim=(1e-5, None),
    xlabel=r"eigenvalue $\lambda$ of $\nabla^2_\theta L$",
    ylabel="density",
    title="Weight-Hessian spectral density",
)
ax.legend(fontsize=8)
ax.grid(True, alpha=0.3)
fig.tight_layout()
plt.show()
