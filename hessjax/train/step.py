"""One SGD update on a global batch: micro-batched ("ghost BN"), data parallel, optionally robust.

See :mod:`hessjax.train` for the maths. Two forms of the accumulation share every line of the
per-micro-batch code: ``lax.scan`` over the micro-batches inside one compiled, donated step
(GPU/TPU default), or, when :func:`hessjax.loops.host_loops` is true (the CPU default), a Python
loop calling a compiled, donated ``accumulate`` per micro-batch, then a compiled, donated
``apply_update``.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import flax.struct
import jax
import jax.numpy as jnp
import optax
from jax.sharding import Mesh

from hessjax import loops, tree
from hessjax._internal import ApplyFn, batch_sharding, replicated
from hessjax.adversarial import Adversary
from hessjax.distributed import check_mesh
from hessjax.losses import cross_entropy
from hessjax.train.state import TrainState, variables_of

__all__ = ["TrainStep"]


@flax.struct.dataclass
class _Carry:
    """Sums over the micro-batches done so far (gradients, mean losses, correct predictions)."""

    grad: Any
    loss: jax.Array
    correct: jax.Array


class TrainStep:
    """``state, metrics = step(state, x, y)``: one SGD update on a global batch ``x (B, ...)``,
    ``y (B,)`` integer labels, micro-batched as :mod:`hessjax.train` describes.

    Args:
      apply_fn: Flax ``model.apply``; called as ``apply_fn(vars, x, train=True,
        mutable=["batch_stats"])`` in training mode.
      tx: optax optimiser (e.g. :func:`make_optimizer`).
      micro_batch_size: samples per micro-batch ``m`` (None: the whole batch). ``B % m == 0`` and
        ``m % num_devices == 0`` are required.
      mesh: optional ``Mesh``; micro-batches are sharded over all its devices, state replicated.
      augment: optional ``(key, x) -> x`` applied to every micro-batch (e.g.
        ``hessjax.data.augment_cifar``), key ``fold_in(fold_in(state.key, step), j)``.
      host_loops: force the accumulation form; None asks :func:`hessjax.loops.host_loops` per call.
      adversary: optional :class:`hessjax.adversarial.Adversary` (robust training): after
        ``augment``, the first ``round(fraction · m)`` samples of every micro-batch are replaced by
        adversarial examples made at the current ``params`` and running ``batch_stats`` with BN in
        inference mode (gradient stopped), then the training-mode loss/gradient is taken on the
        result. Works in both accumulation forms and with a mesh.

    ``metrics``: ``loss`` (mean training-mode loss of the batch) and ``accuracy``, device scalars.
    The input ``state`` is donated: use only the returned one.
    """

    def __init__(
        self,
        apply_fn: ApplyFn,
        tx: optax.GradientTransformation,
        *,
        micro_batch_size: int | None = None,
        mesh: Mesh | None = None,
        augment: Callable[[jax.Array, jax.Array], jax.Array] | None = None,
        host_loops: bool | None = None,
        adversary: Adversary | None = None,
    ):
        if adversary is not None and not isinstance(adversary, Adversary):
            raise TypeError(f"adversary must be a hessjax.adversarial.Adversary, got {adversary!r}")
        self.apply_fn, self.tx, self.mesh, self.augment = apply_fn, tx, mesh, augment
        self.micro_batch_size, self.host_loops = micro_batch_size, host_loops
        self.adversary = adversary
        check_mesh(mesh)
        self.num_devices = 1 if mesh is None else mesh.size
        self._scan_step = jax.jit(self._scan_update, donate_argnums=0)
        self._accumulate = jax.jit(self._accumulate_one, donate_argnums=0)
        self._apply = jax.jit(self._apply_update, donate_argnums=0)
        self._zeros = jax.jit(self._zero_carry)
        self._key = jax.jit(self._step_key)

    # -- shared pieces -------------------------------------------------------------------------

    def micro_batches(self, batch_size: int) -> tuple[int, int]:
        """``(M, m)`` for a global batch of ``batch_size``; ValueError naming the fix otherwise."""
        m = self.micro_batch_size or batch_size
        if batch_size % m:
            raise ValueError(
                f"batch size {batch_size} is not divisible by micro_batch_size={m}; choose a "
                f"micro_batch_size that divides it (or a batch size that is a multiple of {m})"
            )
        if m % self.num_devices:
            raise ValueError(
                f"micro-batch of {m} samples cannot be split over the {self.num_devices} devices "
                f"of the mesh; choose a micro_batch_size (and batch size) divisible by "
                f"{self.num_devices}"
            )
        return batch_size // m, m

    def _zero_carry(self, params: Any) -> _Carry:
        zero = jnp.zeros((), jnp.result_type(*jax.tree_util.tree_leaves(params)))
        return _Carry(tree.zeros_like(params), zero, jnp.zeros((), jnp.int32))

    def _accumulate_one(
        self, carry: _Carry, batch_stats: Any, params: Any, x, y, step_key: jax.Array, j
    ) -> tuple[_Carry, Any]:
        """Add micro-batch ``j = (x, y)``'s gradient/loss/correct count; update running BN stats."""
        if self.mesh is not None:
            x, y = jax.lax.with_sharding_constraint((x, y), batch_sharding(self.mesh, 0))
        if self.augment is not None:
            x = self.augment(jax.random.fold_in(step_key, j), x)
        if self.adversary is not None:
            x = self.adversary.perturb(self.apply_fn, params, batch_stats, x, y)
            if self.mesh is not None:
                x = jax.lax.with_sharding_constraint(x, batch_sharding(self.mesh, 0))

        def loss_fn(p):
            logits, new = self.apply_fn(
                variables_of(p, batch_stats), x, train=True, mutable=["batch_stats"]
            )
            return cross_entropy(logits, y), (logits, new.get("batch_stats", batch_stats))

        (loss, (logits, new_stats)), grad = jax.value_and_grad(loss_fn, has_aux=True)(params)
        # Running statistics keep their stored dtype (Flax inits them float32 for any model).
        new_stats = jax.tree_util.tree_map(lambda n, o: n.astype(o.dtype), new_stats, batch_stats)
        correct = jnp.sum(jnp.argmax(logits, -1) == y).astype(jnp.int32)
        carry = _Carry(tree.add(carry.grad, grad), carry.loss + loss, carry.correct + correct)
        return carry, new_stats

    def _apply_update(
        self, state: TrainState, carry: _Carry, batch_stats: Any, num_micro: int, batch: int
    ) -> tuple[TrainState, dict[str, jax.Array]]:
        """``θ ← tx(mean gradient)``, ``step += 1``; metrics of the batch."""
        grad = tree.scale(carry.grad, 1.0 / num_micro)
        updates, opt_state = self.tx.update(grad, state.opt_state, state.params)
        new = state.replace(
            step=state.step + 1,
            params=optax.apply_updates(state.params, updates),
            batch_stats=batch_stats,
            opt_state=opt_state,
        )
        return new, {"loss": carry.loss / num_micro, "accuracy": carry.correct / batch}

    def _step_key(self, state: TrainState) -> jax.Array:
        return jax.random.fold_in(state.key, state.step)

    # -- the two forms ---------------------------------------------------------------------------

    def _scan_update(self, state: TrainState, xs, ys):
        """Whole step in one program; ``xs (M, m, ...)``, ``ys (M, m)``."""
        num_micro, m = ys.shape
        step_key = self._step_key(state)

        def body(c, inp):
            carry, stats = c
            x, y, j = inp
            return self._accumulate_one(carry, stats, state.params, x, y, step_key, j), None

        init = (self._zero_carry(state.params), state.batch_stats)
        (carry, stats), _ = jax.lax.scan(body, init, (xs, ys, jnp.arange(num_micro)))
        return self._apply_update(state, carry, stats, num_micro, num_micro * m)

    def _host_update(self, state: TrainState, x, y):
        """The same step with the loop over micro-batches in Python (see hessjax.loops)."""
        num_micro, m = self.micro_batches(len(y))
        step_key = self._key(state)
        carry, stats = self._zeros(state.params), state.batch_stats
        spec = batch_sharding(self.mesh, 0)
        for j in range(num_micro):
            xy = jax.device_put((x[j * m : (j + 1) * m], y[j * m : (j + 1) * m]), spec)
            carry, stats = self._accumulate(carry, stats, state.params, *xy, step_key, j)
        return self._apply(state, carry, stats, num_micro, num_micro * m)

    def __call__(self, state: TrainState, x, y) -> tuple[TrainState, dict[str, jax.Array]]:
        num_micro, m = self.micro_batches(len(y))
        host = loops.host_loops() if self.host_loops is None else self.host_loops
        if host:
            return self._host_update(state, x, y)
        # (B, ...) -> (M, m, ...): numpy arrays are reshaped on the host, jax arrays on device.
        split = lambda a: a.reshape(num_micro, m, *a.shape[1:])
        xy = jax.device_put((split(x), split(y)), batch_sharding(self.mesh, 1))
        return self._scan_step(state, *xy)

    def replicate(self, state: TrainState) -> TrainState:
        """``state`` placed on the mesh, replicated (a no-op without a mesh)."""
        if self.mesh is None:
            return state
        return jax.device_put(state, replicated(self.mesh))
