"""Training engine: momentum SGD, micro-batched ("ghost BN") steps, data parallel, resumable fit.

PAPER.md, "Training": every batch size (16 ... 50,000) is trained the same way until the full
training-set loss is ≤ 0.001 or a budget of epochs is spent. A global batch of ``B`` samples is
split into ``M = B / m`` micro-batches of ``m = micro_batch_size`` samples (the authors used
``m = 128``); the update uses the mean gradient

    g = (1/M) Σ_j ∇_θ L_j(θ),   L_j = mean cross-entropy of micro-batch j in training mode,

so BatchNorm normalises with the statistics of each micro-batch ("ghost" BN). The running
statistics are updated **sequentially**, one micro-batch after the other (as PyTorch does when it
accumulates micro-batches): ``r ← 0.9 r + 0.1 stat_j`` for j = 1..M, with ``r`` threaded through
the micro-batches; the gradients of all micro-batches are taken at the same θ.

Two forms of the accumulation share every line of the per-micro-batch code:

* ``lax.scan`` over the micro-batches inside one compiled, donated step (GPU/TPU default);
* when :func:`hessjax.loops.host_loops` is true (the CPU default: XLA:CPU runs convolutions inside
  loop bodies ~10x slower, jax-ml/jax#12868), a Python loop calls a compiled, donated
  ``accumulate`` per micro-batch, then a compiled, donated ``apply_update``.

With a ``jax.sharding.Mesh``, each micro-batch is split over all the mesh's devices
(``NamedSharding``, sample axis over every mesh axis) and the state is replicated; BatchNorm
statistics stay those of the whole micro-batch, so the numbers equal the 1-device ones.

Randomness: the step's key is ``fold_in(state.key, state.step)`` and micro-batch ``j`` uses
``fold_in(step_key, j)``; :func:`fit` shuffles epoch ``e`` with ``numpy.random.default_rng([seed,
e])``. So a run resumed from a checkpoint reproduces the uninterrupted run exactly.
"""

from __future__ import annotations

import dataclasses
import json
import math
import os
import time
from collections.abc import Callable, Mapping, Sequence
from typing import Any

import flax.struct
import jax
import jax.numpy as jnp
import numpy as np
import optax
from jax.sharding import Mesh, NamedSharding, PartitionSpec

from hessjax import loops, tree
from hessjax._internal import ApplyFn, batch_sharding
from hessjax.adversarial import Adversary
from hessjax.evaluation import evaluate, full_gradient_norm
from hessjax.losses import cross_entropy

__all__ = [
    "Adversary",
    "FitResult",
    "TrainState",
    "TrainStep",
    "epochs_to_steps",
    "evaluate",
    "fit",
    "full_gradient_norm",
    "init_state",
    "learning_rate",
    "make_optimizer",
    "make_schedule",
    "state_variables",
]


# ----------------------------------------------------------------------------- state


@flax.struct.dataclass
class TrainState:
    """Everything that changes during training, as one pytree (saved whole in checkpoints).

    ``step``: int32 scalar, updates done so far. ``params``/``batch_stats``: the Flax collections
    (``batch_stats`` is ``{}`` for a model without BatchNorm). ``opt_state``: optax state.
    ``key``: raw ``uint32`` key data (``jax.random.key_data``), so checkpoints hold plain arrays.
    """

    step: jax.Array
    params: Any
    batch_stats: Any
    opt_state: Any
    key: jax.Array


def init_state(
    variables: Mapping[str, Any], tx: optax.GradientTransformation, key: jax.Array | int
) -> TrainState:
    """A fresh :class:`TrainState` from ``model.init(...)`` variables, an optimiser, a key/seed."""
    key = jax.random.key(key) if isinstance(key, int) else key
    if jnp.issubdtype(key.dtype, jax.dtypes.prng_key):
        key = jax.random.key_data(key)
    # Copies: the step donates the state, which must not delete the caller's ``variables``.
    params = jax.tree_util.tree_map(jnp.array, variables["params"])
    return TrainState(
        step=jnp.zeros((), jnp.int32),
        params=params,
        batch_stats=jax.tree_util.tree_map(jnp.array, dict(variables.get("batch_stats", {}))),
        opt_state=tx.init(params),
        key=jnp.asarray(key),
    )


def state_variables(state: TrainState) -> dict[str, Any]:
    """The Flax variables ``{"params", ["batch_stats"]}`` of a state, for ``model.apply``."""
    return _variables(state.params, state.batch_stats)


def _variables(params: Any, batch_stats: Any) -> dict[str, Any]:
    return {"params": params, **({"batch_stats": batch_stats} if batch_stats else {})}


# ----------------------------------------------------------------------------- optimiser


def epochs_to_steps(epochs: Sequence[int], scale: float, steps_per_epoch: int) -> dict[int, float]:
    """``{epoch * steps_per_epoch: scale}``: e.g. C1's ×0.2 at epochs 30, 60, or M1's halving
    every 5 epochs with ``epochs=range(5, 100, 5), scale=0.5``."""
    return {int(e) * int(steps_per_epoch): float(scale) for e in epochs}


def make_schedule(
    lr: float,
    schedule: str = "constant",
    *,
    boundaries_and_scales: Mapping[int, float] | None = None,
    batch_size: int | None = None,
    base_batch_size: int | None = None,
    warmup_steps: int = 0,
) -> Callable[[jax.Array], jax.Array]:
    """``step -> learning rate`` (``step`` = updates done before this one, 0-based).

    * ``"constant"``: ``lr``.
    * ``"step"``: ``lr · Π_{b ≤ step} s_b`` over ``boundaries_and_scales = {b: s_b}`` (steps);
      the scale applies from step ``b`` on (the first step of epoch ``e`` when ``b = e·spe``).
    * ``"goyal"`` (Goyal et al. 2017): peak ``η̂ = lr · batch_size / base_batch_size``, reached by a
      linear ramp from ``lr`` over ``warmup_steps``: ``lr + (η̂ - lr)·step/warmup_steps``; then
      ``η̂ · Π_{b ≤ step} s_b``.
    """
    bounds = sorted((boundaries_and_scales or {}).items())
    if schedule not in ("constant", "step", "goyal"):
        raise ValueError(f"unknown schedule {schedule!r}; use 'constant', 'step' or 'goyal'")
    if schedule == "step" and not bounds:
        raise ValueError("schedule='step' needs boundaries_and_scales, e.g. epochs_to_steps(...)")
    if schedule == "goyal" and not (batch_size and base_batch_size):
        raise ValueError("schedule='goyal' needs batch_size and base_batch_size (e.g. 128)")

    def decay(step):
        return math.prod([jnp.where(step >= b, s, 1.0) for b, s in bounds]) if bounds else 1.0

    if schedule == "constant":
        return lambda step: jnp.asarray(lr, jnp.float32) * jnp.ones_like(step, jnp.float32)
    if schedule == "step":
        return lambda step: lr * decay(step)
    peak = lr * batch_size / base_batch_size

    def goyal(step):
        ramp = lr + (peak - lr) * step / max(warmup_steps, 1)
        return jnp.where(step < warmup_steps, ramp, peak * decay(step))

    return goyal


def make_optimizer(
    lr: float, momentum: float = 0.9, schedule: str = "constant", **schedule_kw
) -> optax.GradientTransformation:
    """SGD with (heavy-ball, PyTorch-style) momentum and no weight decay:
    ``v ← μ v + g``, ``θ ← θ - η_t v`` with ``η_t`` from :func:`make_schedule` (same kwargs).

    Wrapped in ``optax.inject_hyperparams``, so ``learning_rate(opt_state)`` reads the rate the
    last update used.
    """
    sched = make_schedule(lr, schedule, **schedule_kw)
    return optax.inject_hyperparams(optax.sgd)(learning_rate=sched, momentum=momentum)


def learning_rate(opt_state: Any) -> float | None:
    """The learning rate of the last update, from a :func:`make_optimizer` state (else None)."""
    hyper = getattr(opt_state, "hyperparams", None)
    if not hyper or "learning_rate" not in hyper:
        return None
    return float(f"{float(hyper['learning_rate']):.7g}")  # stored as float32


# ----------------------------------------------------------------------------- the step


@flax.struct.dataclass
class _Carry:
    """Sums over the micro-batches done so far (gradients, mean losses, correct predictions)."""

    grad: Any
    loss: jax.Array
    correct: jax.Array


class TrainStep:
    """``state, metrics = step(state, x, y)``: one SGD update on a global batch ``x (B, ...)``,
    ``y (B,)`` integer labels, micro-batched as the module docstring describes.

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
                _variables(p, batch_stats), x, train=True, mutable=["batch_stats"]
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
        return jax.device_put(state, NamedSharding(self.mesh, PartitionSpec()))


# ----------------------------------------------------------------------------- fit


@dataclasses.dataclass
class FitResult:
    """``status``: "converged" (full train loss ≤ target_loss), "diverged" (NaN/inf or loss >
    divergence_factor × initial loss) or "max_epochs"; ``history``: the per-epoch records."""

    state: TrainState
    status: str
    epoch: int
    history: list[dict[str, Any]]


_STATUS = ("running", "converged", "diverged", "max_epochs")


class _Checkpoints:
    """Orbax ``CheckpointManager`` in ``workdir``: step = epoch; item = state + bookkeeping."""

    def __init__(self, workdir: str | os.PathLike, max_to_keep: int):
        import orbax.checkpoint as ocp

        self.ocp = ocp
        options = ocp.CheckpointManagerOptions(
            max_to_keep=max_to_keep, create=True, enable_async_checkpointing=False
        )
        self.manager = ocp.CheckpointManager(os.path.abspath(workdir), options=options)

    def restore(self, like: dict) -> dict | None:
        epoch = self.manager.latest_step()
        if epoch is None:
            return None
        abstract = jax.tree_util.tree_map(
            lambda a: jax.ShapeDtypeStruct(a.shape, a.dtype, sharding=a.sharding), like
        )
        return self.manager.restore(epoch, args=self.ocp.args.StandardRestore(abstract))

    def save(self, epoch: int, item: dict) -> None:
        self.manager.save(epoch, args=self.ocp.args.StandardSave(item), force=True)
        self.manager.wait_until_finished()


def _bookkeeping(state: TrainState, epoch: int, status: int, initial_loss: float) -> dict:
    """The checkpointed item: the state plus fit's counters, all as arrays."""
    return {
        "state": state,
        "epoch": jnp.asarray(epoch, jnp.int32),
        "status": jnp.asarray(status, jnp.int32),
        "initial_loss": jnp.asarray(initial_loss, jnp.float32),
    }


def _epoch_batches(x, y, batch_size: int, seed: int, epoch: int, max_steps: int | None = None):
    """Shuffled full batches of epoch ``epoch`` (the last partial batch is dropped); at most
    ``max_steps`` of them (the first ones of the same shuffle) when given."""
    perm = np.random.default_rng([seed, epoch]).permutation(len(y))
    steps = len(y) // batch_size
    for s in range(steps if max_steps is None else min(steps, max_steps)):
        idx = np.sort(perm[s * batch_size : (s + 1) * batch_size])
        yield x[idx], y[idx]


def _log(verbose: bool, msg: str) -> None:
    if verbose:
        print(f"[hessjax.train] {msg}", flush=True)


def fit(
    step: TrainStep,
    state: TrainState,
    x,
    y,
    *,
    batch_size: int,
    num_epochs: int,
    seed: int = 0,
    target_loss: float | None = None,
    divergence_factor: float = 10.0,
    eval_batch_size: int = 1000,
    workdir: str | os.PathLike | None = None,
    max_to_keep: int = 2,
    metrics_file: str | os.PathLike | None = None,
    callback: Callable[[int, TrainState, dict], Mapping | None] | None = None,
    verbose: bool = True,
    max_steps_per_epoch: int | None = None,
    eval_limit: int | None = None,
) -> FitResult:
    """Train for up to ``num_epochs`` epochs of ``len(y) // batch_size`` steps each.

    After every epoch: the full training-set loss/accuracy (inference mode, :func:`evaluate`)
    decides convergence (``≤ target_loss``) and divergence (non-finite, or ``> divergence_factor``
    × the loss at the start); a record ``{epoch, step, train_loss, train_accuracy, running_loss,
    lr, seconds, examples_per_s, ...callback(epoch, state, record)}`` is appended to
    ``metrics_file`` (JSON lines); the state is checkpointed in ``workdir``. A ``workdir`` holding
    checkpoints is resumed from its latest one (a finished run returns at once). Epoch ``e``'s
    shuffle is ``default_rng([seed, e])``, so resuming gives the uninterrupted run's numbers.
    ``x``/``y`` are host (numpy) arrays; only the batches move to the device.

    Budget knobs for expensive runs (defaults: off): ``max_steps_per_epoch`` caps the updates of
    every epoch (the first batches of that epoch's shuffle); ``eval_limit`` measures the
    per-epoch training loss/accuracy (convergence, divergence, records) on the first
    ``eval_limit`` training samples only.
    """
    if not 0 < batch_size <= len(y):
        raise ValueError(f"batch_size={batch_size} must be in [1, N={len(y)}]")
    if max_steps_per_epoch is not None and max_steps_per_epoch < 1:
        raise ValueError(f"max_steps_per_epoch must be >= 1 or None, got {max_steps_per_epoch}")
    if eval_limit is not None and eval_limit < 1:
        raise ValueError(f"eval_limit must be >= 1 or None, got {eval_limit}")
    step.micro_batches(batch_size)  # fail before any work
    ckpt = _Checkpoints(workdir, max_to_keep) if workdir is not None else None
    apply_fn, mesh = step.apply_fn, step.mesh
    xe, ye = (x, y) if eval_limit is None else (x[:eval_limit], y[:eval_limit])
    measure = lambda s: evaluate(apply_fn, state_variables(s), xe, ye, eval_batch_size, mesh=mesh)

    state = step.replicate(state)
    item = _bookkeeping(state, 0, 0, 0.0)
    restored = ckpt.restore(item) if ckpt is not None else None
    if restored is not None:
        item = restored
        _log(verbose, f"resumed from {workdir} at epoch {int(item['epoch'])}")
    else:
        item = _bookkeeping(state, 0, 0, measure(state)[0])
    state, epoch = step.replicate(item["state"]), int(item["epoch"])
    initial = float(item["initial_loss"])
    status, history = _STATUS[int(item["status"])], []
    if status in ("converged", "diverged"):
        return FitResult(state, status, epoch, history)
    status = "running"  # a run that stopped at its epoch budget goes on to the new one
    if target_loss is not None and epoch == 0 and initial <= target_loss:
        return FitResult(state, "converged", 0, history)

    steps_per_epoch, started = len(y) // batch_size, time.perf_counter()
    if max_steps_per_epoch is not None:
        steps_per_epoch = min(steps_per_epoch, max_steps_per_epoch)
    first_epoch = epoch
    while epoch < num_epochs:
        tic, losses = time.perf_counter(), []
        for xb, yb in _epoch_batches(x, y, batch_size, seed, epoch, max_steps_per_epoch):
            state, metrics = step(state, xb, yb)
            losses.append(metrics["loss"])
        epoch += 1
        train_loss, train_acc = measure(state)
        seconds = time.perf_counter() - tic
        record = {
            "epoch": epoch,
            "step": int(state.step),
            "train_loss": train_loss,
            "train_accuracy": train_acc,
            "running_loss": float(jnp.mean(jnp.stack(losses))),
            "lr": learning_rate(state.opt_state),
            "seconds": seconds,
            "examples_per_s": steps_per_epoch * batch_size / seconds,
        }
        if callback is not None:
            record.update(callback(epoch, state, record) or {})
        history.append(record)
        if metrics_file is not None:
            with open(metrics_file, "a") as f:
                f.write(json.dumps(record) + "\n")
        if not math.isfinite(train_loss) or train_loss > divergence_factor * initial:
            status = "diverged"
        elif target_loss is not None and train_loss <= target_loss:
            status = "converged"
        elif epoch == num_epochs:
            status = "max_epochs"
        per_epoch = (time.perf_counter() - started) / (epoch - first_epoch)
        _log(
            verbose,
            f"epoch {epoch}/{num_epochs} loss {train_loss:.4g} acc {train_acc:.4f} "
            f"lr {record['lr']} {seconds:.1f}s {record['examples_per_s']:.0f} ex/s "
            f"ETA {per_epoch * (num_epochs - epoch):.0f}s",
        )
        if ckpt is not None:
            ckpt.save(epoch, _bookkeeping(state, epoch, _STATUS.index(status), initial))
        if status != "running":
            break
    if status == "running":
        status = "max_epochs"
    _log(verbose, f"finished: {status} after {epoch} epochs")
    return FitResult(state, status, epoch, history)
