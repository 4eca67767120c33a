"""eigenvalues (Lanczos, power), trace and density against numpy.linalg.eigh of dense Hessians."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from jax.flatten_util import ravel_pytree
from nets import MLP, SmallCNN, dense_hessian, loss_problem

import hessjax
from hessjax.loops import CompiledLoopWarning

CASES = {"mlp": (MLP((7, 6, 3), act=jnp.tanh), (5,)), "cnn_bn": (SmallCNN(), (6, 6, 2))}


def _problem(case, seed, n=23):
    loss_fn, params, data = loss_problem(*CASES[case], seed, n)
    return loss_fn, params, data, np.asarray(dense_hessian(loss_fn, params, data))


def _flat_vectors(vectors):
    return np.asarray(jax.vmap(lambda t: ravel_pytree(t)[0])(vectors))


@pytest.mark.parametrize("case", sorted(CASES))
@pytest.mark.parametrize("seed", [0, 1])
def test_lanczos_matches_eigh(case, seed, loop_mode):
    loss_fn, params, data, dense = _problem(case, seed)
    op = hessjax.hessian_operator(loss_fn, params, data, batch_size=10)
    res = hessjax.eigenvalues(op, params, k=5, tol=1e-9, key=jax.random.key(seed))
    evals, evecs = np.linalg.eigh(dense)
    np.testing.assert_allclose(res.values, evals[::-1][:5], rtol=1e-7, atol=1e-10)
    assert bool(res.converged) and int(res.num_matvecs) < dense.shape[0]
    vecs = _flat_vectors(res.vectors)
    np.testing.assert_allclose(np.linalg.norm(vecs, axis=1), 1.0, rtol=1e-10)
    true_residuals = np.linalg.norm(vecs @ dense - res.values[:, None] * vecs, axis=1)
    np.testing.assert_allclose(res.residuals, true_residuals, atol=1e-8)
    gaps = np.diff(evals[::-1][:6])
    for i in np.flatnonzero(np.abs(gaps[:5]) > 1e-6):  # well-separated pairs: same eigenvector
        assert abs(vecs[i] @ evecs[:, ::-1][:, i]) > 1 - 1e-6


@pytest.mark.parametrize("case", sorted(CASES))
@pytest.mark.parametrize("seed", [0, 1])
def test_power_iteration_finds_largest_magnitude_eigenvalues(case, seed, loop_mode):
    loss_fn, params, data, dense = _problem(case, seed)
    op = hessjax.hessian_operator(loss_fn, params, data, batch_size=23)
    res = hessjax.eigenvalues(
        op, params, k=3, method="power", tol=1e-10, max_matvecs=3 * 3000, key=jax.random.key(seed)
    )
    evals = np.linalg.eigvalsh(dense)
    by_magnitude = np.sort(evals[np.argsort(-np.abs(evals))][:3])[::-1]
    np.testing.assert_allclose(res.values, by_magnitude, rtol=1e-4)
    assert np.all(np.diff(np.asarray(res.values)) <= 0)  # reported largest algebraic first


@pytest.mark.parametrize("seed", [0, 1])
def test_single_sample_hessian_is_indefinite_and_both_ends_are_found(seed):
    """b_H = 1 (docs/paper.md, "Claims", claim 3): negative eigenvalues appear; Lanczos finds
    both ends exactly."""
    loss_fn, params, data, _ = _problem("cnn_bn", seed)
    op = hessjax.subsampled_hessian_operator(
        loss_fn, params, data, num_samples=1, key=jax.random.key(seed)
    )
    sample = hessjax.subsample(data, 1, key=jax.random.key(seed))  # the same random sample
    flat, unravel = ravel_pytree(params)
    evals = np.linalg.eigvalsh(np.asarray(jax.hessian(lambda f: loss_fn(unravel(f), sample))(flat)))
    assert evals[0] < -1e-3 * evals[-1]  # genuinely indefinite
    top = hessjax.eigenvalues(op, params, k=3, tol=1e-10, key=jax.random.key(0))
    np.testing.assert_allclose(top.values, evals[::-1][:3], rtol=1e-7, atol=1e-10)
    neg = lambda v: jax.tree_util.tree_map(jnp.negative, op(v))
    bottom = hessjax.eigenvalues(neg, params, k=2, tol=1e-10, key=jax.random.key(1))
    np.testing.assert_allclose(-bottom.values, evals[:2], rtol=1e-7, atol=1e-10)


def test_lanczos_handles_repeated_spectrum_and_breakdown(loop_mode):
    """A low-rank operator: Lanczos breaks down after rank+1 steps and must restart cleanly."""
    rng = np.random.default_rng(0)
    u = np.linalg.qr(rng.normal(size=(40, 4)))[0]
    a = u @ np.diag([5.0, 3.0, 2.0, -1.0]) @ u.T
    res = hessjax.eigenvalues(lambda v: a @ v, jnp.zeros(40), k=6, tol=1e-10, key=jax.random.key(0))
    np.testing.assert_allclose(res.values, [5, 3, 2, 0, 0, 0], atol=1e-9)
    assert bool(res.converged)


@pytest.mark.slow
def test_lanczos_and_power_agree_on_trained_m1(data_dir):
    import optax

    x, y = hessjax.data.load("mnist", "train", data_dir, limit=1024)
    model = hessjax.models.get("m1")
    variables = model.init(jax.random.key(0), x[:1])
    params = variables["params"]
    opt = optax.sgd(0.05, momentum=0.9)
    loss_fn = hessjax.make_loss_fn(model.apply, variables)

    @jax.jit
    def step(params, opt_state, batch):
        grads = jax.grad(loss_fn)(params, batch)
        updates, opt_state = opt.update(grads, opt_state)
        return optax.apply_updates(params, updates), opt_state

    opt_state = opt.init(params)
    for epoch in range(3):
        for i in range(0, 1024, 128):
            params, opt_state = step(params, opt_state, (x[i : i + 128], y[i : i + 128]))
    op = hessjax.hessian_operator(loss_fn, params, (x[:256], y[:256]), batch_size=256)
    lz = hessjax.eigenvalues(op, params, k=2, method="lanczos", tol=1e-5, key=jax.random.key(1))
    pw = hessjax.eigenvalues(
        op, params, k=2, method="power", tol=1e-5, max_matvecs=400, key=jax.random.key(2)
    )
    assert bool(lz.converged)
    np.testing.assert_allclose(pw.values, lz.values, rtol=2e-3)
    assert int(lz.num_matvecs) < int(pw.num_matvecs)


def test_trace_is_unbiased_within_its_standard_error(loop_mode):
    _, _, _, dense = _problem("mlp", 3)
    mv = lambda v: dense @ v
    z = jnp.zeros(dense.shape[0])
    s = 4000
    est = float(hessjax.trace(mv, z, num_samples=s, key=jax.random.key(0)))
    off = dense - np.diag(np.diag(dense))
    stderr = np.sqrt(2 * np.sum(off**2) / s)  # exact Rademacher-Hutchinson variance
    assert abs(est - np.trace(dense)) < 4 * stderr
    samples = hessjax.trace_samples(mv, z, num_samples=50, key=jax.random.key(1))
    np.testing.assert_allclose(
        samples.mean(), hessjax.trace(mv, z, num_samples=50, key=jax.random.key(1))
    )


@pytest.mark.slow
def test_density_matches_the_eigenvalue_histogram(monkeypatch):
    monkeypatch.setenv("HESSJAX_HOST_LOOPS", "0")  # 300 runs: one XLA program (host: below)
    _, _, _, dense = _problem("mlp", 4)
    n = dense.shape[0]
    evals = np.linalg.eigvalsh(dense)
    mv = lambda v: dense @ v
    z = jnp.zeros(n)
    quad = hessjax.spectral_quadrature(mv, z, num_steps=n, num_runs=300, key=jax.random.key(0))
    # With num_steps = n every run's nodes are the exact eigenvalues...
    np.testing.assert_allclose(np.sort(quad.nodes[0]), evals, atol=1e-9)
    np.testing.assert_allclose(quad.weights.sum(axis=1), 1.0, rtol=1e-10)
    sigma = 0.02 * (evals[-1] - evals[0])
    grid, dens = hessjax.smooth_density(quad, grid_size=2000, sigma=sigma)
    grid, dens = np.asarray(grid), np.asarray(dens)
    dx = grid[1] - grid[0]
    assert abs(dens.sum() * dx - 1.0) < 1e-3
    # ...and the weights average to 1/n: the smoothed eigenvalue histogram, up to SLQ's
    # Monte-Carlo error (relative std of each averaged weight ~ sqrt(2 / num_runs) = 8%).
    exact = np.exp(-0.5 * ((grid[:, None] - evals[None]) / sigma) ** 2).sum(1)
    exact /= n * sigma * np.sqrt(2 * np.pi)
    assert np.abs(dens - exact).sum() * dx < 0.15
    one_run = hessjax.smooth_density(
        hessjax.Quadrature(quad.nodes[:1], quad.weights[:1]), grid_size=2000, sigma=sigma
    )[1]
    assert np.abs(dens - exact).sum() < np.abs(np.asarray(one_run) - exact).sum()  # runs average
    # The quadrature reproduces moments: E[vᵀAv] = tr(A)/n.
    mean = np.sum(np.asarray(quad.nodes) * np.asarray(quad.weights)) / quad.nodes.shape[0]
    assert abs(mean - evals.mean()) < 0.1 * np.abs(evals).max()


def test_host_loop_compiles_each_piece_once(monkeypatch):
    # The first carry holds fresh (uncommitted) arrays, later ones committed outputs; jit keys on
    # that, so without committing the first carry every piece would compile twice per shape.
    from hessjax import eigen, loops

    monkeypatch.setenv("HESSJAX_HOST_LOOPS", "1")
    diag = jax.device_put(jnp.linspace(0.0, 1.0, 37), jax.devices()[0])  # committed, as data
    update = loops._compiled(eigen._lanczos_update(3), donate=True)  # as matvec_loop calls it
    before = update._cache_size()
    for seed in range(2):
        params = {"w": jnp.zeros(37)}  # a fresh uncommitted array each call
        found = hessjax.eigenvalues(
            lambda v: {"w": diag * v["w"]}, params, k=3, tol=1e-6, key=jax.random.key(seed)
        )
        np.testing.assert_allclose(found.values, diag[::-1][:3], rtol=1e-5)
    assert update._cache_size() - before == 1


def test_eigenvalue_arguments_are_checked():
    z = jnp.zeros(5)
    with pytest.raises(ValueError, match="method"):
        hessjax.eigenvalues(lambda v: v, z, method="arnoldi", key=jax.random.key(0))
    with pytest.raises(ValueError, match="k must be"):
        hessjax.eigenvalues(lambda v: v, z, k=6, key=jax.random.key(0))
    with pytest.raises(ValueError, match="num_steps"):
        hessjax.density(lambda v: v, z, num_steps=9, num_runs=1, key=jax.random.key(0))


@pytest.mark.slow
def test_host_and_compiled_loops_give_the_same_quadrature(monkeypatch):
    _, _, _, dense = _problem("mlp", 5)
    mv, z = (lambda v: dense @ v), jnp.zeros(dense.shape[0])
    out = {}
    for flag in ("0", "1"):
        monkeypatch.setenv("HESSJAX_HOST_LOOPS", flag)
        out[flag] = hessjax.spectral_quadrature(
            mv, z, num_steps=20, num_runs=3, key=jax.random.key(2)
        )
    np.testing.assert_allclose(out["0"].nodes, out["1"].nodes, rtol=1e-9, atol=1e-10)
    np.testing.assert_allclose(out["0"].weights, out["1"].weights, rtol=1e-7, atol=1e-10)


def test_solvers_under_jit_on_cpu_warn_and_agree(monkeypatch):
    """Under jit the loop cannot run in Python: a CompiledLoopWarning names the fix, and the
    compiled loop gives the host loop's value (the lax-loop equality of every solver is tested
    with the loop_mode parameter)."""
    monkeypatch.setenv("HESSJAX_HOST_LOOPS", "1")  # the CPU default, whatever the backend
    loss_fn, params, data, _ = _problem("mlp", 0)
    op = hessjax.hessian_operator(loss_fn, params, data, batch_size=10)
    key = jax.random.key(0)
    outside = hessjax.trace(op, params, num_samples=3, key=key)
    expected = "hessjax.trace is called under a JAX transformation"
    with pytest.warns(CompiledLoopWarning, match=expected):
        inside = jax.jit(lambda o: hessjax.trace(o, params, num_samples=3, key=key))(op)
    np.testing.assert_allclose(inside, outside, rtol=1e-10)
