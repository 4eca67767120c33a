"""hessjax.linalg: the same factorisations as numpy's, and no hang under vmap on a small CPU pool.

The hang (hessjax/linalg.py) needs two batched LAPACK calls at once on a pool of two threads; the
subprocess below pins the pool to two threads (``PJRT_NPROC=2``, read by XLA's CPU client) so the
check means the same on any machine. With ``jnp.linalg`` / ``jax.scipy.linalg`` in place of
``hessjax.linalg`` that script hung within 5-120 iterations of its loop in every try (jax/jaxlib
0.10.2, float32 and float64).
"""

import os
import subprocess
import sys

import jax
import jax.numpy as jnp
import numpy as np

from hessjax import linalg


def _symmetric(rng, *shape):
    a = rng.normal(size=shape)
    return a + np.swapaxes(a, -1, -2)


def test_factorisations_match_numpy_batched_nested_and_single():
    rng = np.random.default_rng(0)
    a = _symmetric(rng, 6, 5, 7, 7)  # two batch axes: nested vmap
    w = jax.vmap(jax.vmap(linalg.eigvalsh))(a)
    np.testing.assert_allclose(w, np.linalg.eigvalsh(a), rtol=1e-10, atol=1e-12)
    vals, vecs = jax.vmap(linalg.eigh)(a[0])
    np.testing.assert_allclose(vals, np.linalg.eigvalsh(a[0]), rtol=1e-10, atol=1e-12)
    recon = np.einsum("bij,bj,bkj->bik", vecs, vals, vecs)
    np.testing.assert_allclose(recon, a[0], atol=1e-10)
    np.testing.assert_allclose(linalg.eigvalsh(a[0, 0]), np.linalg.eigvalsh(a[0, 0]), atol=1e-12)

    tall = rng.normal(size=(4, 9, 5))
    q, r = jax.vmap(linalg.qr)(tall)
    np.testing.assert_allclose(q @ r, tall, atol=1e-12)
    np.testing.assert_allclose(
        np.swapaxes(q, 1, 2) @ q, np.broadcast_to(np.eye(5), (4, 5, 5)), atol=1e-12
    )
    np.testing.assert_allclose(jax.vmap(linalg.qr_r)(tall), r, atol=1e-12)

    # batched right-hand sides against one shared R (an unbatched argument is broadcast)
    upper = np.triu(rng.normal(size=(5, 5))) + 5 * np.eye(5)
    rhs = rng.normal(size=(3, 5, 2))
    x = jax.vmap(linalg.solve_upper_triangular, in_axes=(None, 0))(jnp.asarray(upper), rhs)
    np.testing.assert_allclose(upper @ x, rhs, atol=1e-12)


_SCRIPT = """
import jax, jax.numpy as jnp
from jax.sharding import Mesh, NamedSharding, PartitionSpec
from hessjax import linalg

@jax.jit
def two_at_once(a, b):  # two independent batched factorisations in one program
    one = lambda a, b: linalg.eigh(a)[0].sum() + linalg.solve_upper_triangular(b, b).sum()
    return jax.vmap(one)(a, b)

sharded = jax.jit(jax.vmap(linalg.eigvalsh))  # one batched call per device, two devices
a = jax.random.normal(jax.random.key(0), (200, 24, 24))
a = a + a.mT
b = jnp.triu(jax.random.normal(jax.random.key(1), (200, 24, 24))) + 30 * jnp.eye(24)
mesh = Mesh(jax.devices(), "d")
a2 = jax.device_put(jnp.concatenate([a, a]), NamedSharding(mesh, PartitionSpec("d")))
for _ in range(300):
    two_at_once(a, b).block_until_ready()
    sharded(a2).block_until_ready()
print("FINISHED", len(jax.devices()))
"""


def test_batched_factorisations_do_not_hang_on_a_two_thread_pool():
    env = dict(os.environ, PJRT_NPROC="2", JAX_NUM_CPU_DEVICES="2", JAX_PLATFORMS="cpu")
    env.pop("XLA_FLAGS", None)
    root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    env["PYTHONPATH"] = os.pathsep.join([root, env.get("PYTHONPATH", "")])
    out = subprocess.run(
        [sys.executable, "-c", _SCRIPT], env=env, capture_output=True, text=True, timeout=180
    )
    assert out.returncode == 0, out.stderr[-3000:]
    assert "FINISHED 2" in out.stdout
