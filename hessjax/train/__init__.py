"""Training engine: momentum SGD, micro-batched ("ghost BN") steps, data parallel, resumable fit.

docs/paper.md, "Training (Tables 1, 2, 7)": every batch size (16 ... 50,000) is trained the same
way until the full training-set loss is ≤ 0.001 or a budget of epochs is spent. A global batch of
``B`` samples is split into ``M = B / m`` micro-batches of ``m = micro_batch_size`` samples (the
authors used ``m = 128``); the update uses the mean gradient

    g = (1/M) Σ_j ∇_θ L_j(θ),   L_j = mean cross-entropy of micro-batch j in training mode,

so BatchNorm normalises with the statistics of each micro-batch ("ghost" BN). The running
statistics are updated **sequentially**, one micro-batch after the other (as PyTorch does when it
accumulates micro-batches): ``r ← 0.9 r + 0.1 stat_j`` for j = 1..M, with ``r`` threaded through
the micro-batches; the gradients of all micro-batches are taken at the same θ.

Two forms of the accumulation (:mod:`hessjax.train.step`) share every line of the per-micro-batch
code:

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

The package, by concern:

* :mod:`~hessjax.train.state`: :class:`TrainState`, :func:`init_state`, :func:`state_variables`;
* :mod:`~hessjax.train.schedules`: :func:`make_schedule` (optax schedules), :func:`make_optimizer`,
  :func:`make_optimizer_for` (from a config section), :func:`epochs_to_steps`,
  :func:`learning_rate`;
* :mod:`~hessjax.train.step`: :class:`TrainStep`;
* :mod:`~hessjax.train.fit`: :func:`fit`, :class:`FitResult`, :func:`restore` (orbax checkpoints).

:func:`evaluate` and :func:`full_gradient_norm` (:mod:`hessjax.evaluation`) and :class:`Adversary`
(:mod:`hessjax.adversarial`) are re-exported here.
"""

from hessjax.adversarial import Adversary
from hessjax.evaluation import evaluate, full_gradient_norm
from hessjax.train.fit import FitResult, fit, restore
from hessjax.train.schedules import (
    epochs_to_steps,
    learning_rate,
    make_optimizer,
    make_optimizer_for,
    make_schedule,
)
from hessjax.train.state import TrainState, init_state, state_variables
from hessjax.train.step import TrainStep

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
    "make_optimizer_for",
    "make_schedule",
    "restore",
    "state_variables",
]
