"""NaN/inf in params, data or the operator: every solver raises NonFiniteError at the first bad
matvec (host loops and one XLA program), and returns NaN under an outer jit."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from jax.experimental import io_callback
from jax.flatten_util import ravel_pytree
from nets import MLP, random_data

import hessjax
from hessjax.eigen import NonFiniteError

SOLVERS = {
    "lanczos": lambda mv, p, key: hessjax.eigenvalues(mv, p, k=2, key=key),
    "power": lambda mv, p, key: hessjax.eigenvalues(mv, p, k=2, method="power", key=key),
    "trace": lambda mv, p, key: hessjax.trace(mv, p, num_samples=50, key=key),
    "density": lambda mv, p, key: hessjax.density(mv, p, num_steps=8, num_runs=4, key=key),
}


class Counting:
    """``matvec`` with a count of the times it really ran (also inside compiled loops); from call
    ``nan_from`` on (1-based) it returns NaN."""

    def __init__(self, matvec, nan_from=None):
        self.matvec, self.nan_from, self.calls = matvec, nan_from, 0

    def _tick(self):
        self.calls += 1
        return np.asarray(self.nan_from is not None and self.calls >= self.nan_from)

    def __call__(self, v):
        out = self.matvec(v)
        poison = io_callback(self._tick, jax.ShapeDtypeStruct((), bool), ordered=False)
        return jax.tree.map(lambda a: jnp.where(poison, jnp.nan, a), out)

    def count(self):
        jax.effects_barrier()
        return self.calls


def _problem(nan_in=None):
    model = MLP((6, 5, 3), act=jnp.tanh)
    x, y = random_data(0, 20, (4,), 3)
    variables = model.init(jax.random.key(0), jnp.asarray(x[:1]))
    params = variables["params"]
    if nan_in == "params":  # one weight of a diverged model
        flat, unravel = ravel_pytree(params)
        params = unravel(flat.at[7].set(jnp.nan))
    if nan_in == "data":
        x = np.array(x)
        x[13, 2] = np.inf  # one pixel of one sample, in the second batch
    loss_fn = hessjax.make_loss_fn(model.apply, variables)
    return hessjax.hessian_operator(loss_fn, params, (x, y), batch_size=8), params


def _check(info, num_matvecs):
    err = info.value
    assert isinstance(err, FloatingPointError) and err.num_matvecs == num_matvecs
    msg = str(err)
    for cause in ("NaN/inf in params", "NaN/inf in the data", "diverged", "returns NaN", "Fix:"):
        assert cause in msg


@pytest.mark.parametrize("nan_in", ["params", "data"])
@pytest.mark.parametrize("solver", sorted(SOLVERS))
def test_nan_params_or_data_stop_at_the_first_hvp(solver, nan_in, loop_mode):
    op, params = _problem(nan_in)
    counted = Counting(op)
    with pytest.raises(NonFiniteError) as info:
        SOLVERS[solver](counted, params, jax.random.key(0))
    assert counted.count() == 1  # power would otherwise spend 200 HVPs on NaN
    _check(info, 1)
    assert solver in str(info.value)
    with pytest.raises(NonFiniteError) as info:  # a HessianOperator: the culprit is named
        SOLVERS[solver](op, params, jax.random.key(0))
    expected = {"params": "params['Dense_0']['kernel']", "data": "data[0]"}  # data = (x, y)
    assert f"Found NaN/inf in {expected[nan_in]}. " in str(info.value)


@pytest.mark.parametrize("solver", sorted(SOLVERS))
def test_operator_turning_nan_stops_right_there(solver, loop_mode):
    rng = np.random.default_rng(0)
    a = rng.standard_normal((12, 12))
    dense = jnp.asarray(a + a.T)
    counted = Counting(lambda v: dense @ v, nan_from=4)
    with pytest.raises(NonFiniteError) as info:
        SOLVERS[solver](counted, jnp.zeros(12), jax.random.key(1))
    assert counted.count() == 4
    _check(info, 4)


def test_finite_operator_is_unaffected(loop_mode):
    dense = jnp.diag(jnp.arange(1.0, 13.0))
    counted = Counting(lambda v: dense @ v)
    res = hessjax.eigenvalues(counted, jnp.zeros(12), k=2, tol=1e-10, key=jax.random.key(0))
    assert bool(res.converged) and counted.count() == int(res.num_matvecs)
    np.testing.assert_allclose(res.values, [12.0, 11.0], rtol=1e-9)


@pytest.mark.parametrize("solver", sorted(SOLVERS))
@pytest.mark.filterwarnings("ignore::hessjax.loops.CompiledLoopWarning")  # jit on purpose
def test_under_an_outer_jit_results_are_nan(solver):
    """Nothing can be raised while tracing: the loop still stops, the results are NaN. (Traced,
    every solver runs as one XLA program, whatever the loop mode.)"""
    op, params = _problem("params")
    counted = Counting(op)
    out = jax.jit(lambda p: SOLVERS[solver](counted, p, jax.random.key(0)))(params)
    assert counted.count() == 1
    if solver in ("lanczos", "power"):
        assert np.all(np.isnan(out.values)) and np.all(np.isnan(out.residuals))
        assert not bool(out.converged) and int(out.num_matvecs) == 1
    else:
        assert np.all(np.isnan(jnp.asarray(out[1] if solver == "density" else out)))
