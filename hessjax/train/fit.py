"""``fit``: epochs of :class:`hessjax.train.TrainStep` with per-epoch evaluation, convergence and
divergence checks, JSON-lines records and resumable orbax checkpoints; ``restore``: a
checkpoint's state without training.

Epoch ``e`` is shuffled with ``numpy.random.default_rng([seed, e])`` and the step's randomness
comes from the state's key, so a run resumed from a checkpoint reproduces the uninterrupted run
exactly.
"""

from __future__ import annotations

import dataclasses
import json
import math
import os
import shutil
import time
from collections.abc import Callable, Mapping
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

from hessjax import distributed
from hessjax.evaluation import evaluate
from hessjax.train.schedules import learning_rate
from hessjax.train.state import TrainState, state_variables
from hessjax.train.step import TrainStep

__all__ = ["FitResult", "fit", "restore"]


@dataclasses.dataclass
class FitResult:
    """``status``: "converged" (full train loss ≤ target_loss), "diverged" (NaN/inf or loss >
    divergence_factor × initial loss) or "max_epochs"; ``history``: the per-epoch records."""

    state: TrainState
    status: str
    epoch: int
    history: list[dict[str, Any]]


_STATUS = ("running", "converged", "diverged", "max_epochs")


#: What orbax appends to the name of a directory it is still writing (``<step>`` + this while a
#: save is under way; ``orbax.checkpoint._src.path.atomicity_types.TMP_DIR_SUFFIX``).
_ORBAX_TMP = ".orbax-checkpoint-tmp"


def _discard_unfinished_saves(workdir: str, verbose: bool) -> None:
    """Remove the temporary directories a killed save left in ``workdir``, with one line of log
    (orbax would otherwise remove them itself, logging a raw warning, at the next save)."""
    if jax.process_index() != 0 or not os.path.isdir(workdir):
        return
    unfinished = [n for n in sorted(os.listdir(workdir)) if _ORBAX_TMP in n]
    if not unfinished:
        return
    _log(verbose, f"discarding an unfinished checkpoint save in {workdir} (interrupted run)")
    for name in unfinished:
        path = os.path.join(workdir, name)
        if os.path.isdir(path) and not os.path.islink(path):
            shutil.rmtree(path)
        else:
            os.remove(path)


class _Checkpoints:
    """Orbax ``CheckpointManager`` in ``workdir``: step = epoch; item = state + bookkeeping.
    ``read_only``: only restore (nothing is created, cleaned or written)."""

    def __init__(
        self,
        workdir: str | os.PathLike,
        max_to_keep: int = 1,
        *,
        read_only: bool = False,
        verbose: bool = True,
    ):
        import orbax.checkpoint as ocp

        self.ocp = ocp
        workdir = os.path.abspath(workdir)
        if not read_only:
            _discard_unfinished_saves(workdir, verbose)
            distributed.barrier("hessjax.fit: unfinished saves discarded")
        options = ocp.CheckpointManagerOptions(
            max_to_keep=max_to_keep,
            create=not read_only,
            read_only=read_only,
            enable_async_checkpointing=False,
        )
        self.manager = ocp.CheckpointManager(workdir, options=options)

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

    def close(self) -> None:
        self.manager.close()


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
    if verbose and distributed.is_primary():
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
    ckpt = None if workdir is None else _Checkpoints(workdir, max_to_keep, verbose=verbose)
    apply_fn, mesh = step.apply_fn, step.mesh
    xe, ye = (x, y) if eval_limit is None else (x[:eval_limit], y[:eval_limit])
    measure = lambda s: evaluate(apply_fn, state_variables(s), xe, ye, eval_batch_size, mesh=mesh)

    state = step.replicate(state)
    item = step.replicate(_bookkeeping(state, 0, 0, 0.0))
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
        if metrics_file is not None and distributed.is_primary():
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
            item = _bookkeeping(state, epoch, _STATUS.index(status), initial)
            ckpt.save(epoch, step.replicate(item))  # collective: every process saves
        if status != "running":
            break
    if status == "running":
        status = "max_epochs"
    if epoch > first_epoch:  # only a call that trained reports its end (not num_epochs=0)
        _log(verbose, f"finished: {status} after {epoch} epochs")
    return FitResult(state, status, epoch, history)


def restore(
    step: TrainStep, state: TrainState, workdir: str | os.PathLike, *, verbose: bool = True
) -> tuple[TrainState, str, int] | None:
    """The latest checkpoint :func:`fit` wrote in ``workdir``, without training: ``(state,
    status, epoch)``, or None when ``workdir`` holds no finished checkpoint.

    ``state``: a state of the same structure (e.g. ``init_state(...)``), the template of shapes and
    dtypes; the restored one is placed like ``step.replicate``. ``status``: "converged",
    "diverged", "max_epochs" (the run ended at its epoch budget) or "running" (it was stopped
    before; ``fit`` with the same ``workdir`` resumes it). Read-only: nothing in ``workdir`` is
    created or removed. Logs one line (``verbose``).
    """
    if workdir is None or not os.path.isdir(workdir):
        return None
    ckpt = _Checkpoints(workdir, read_only=True)
    try:
        item = ckpt.restore(step.replicate(_bookkeeping(state, 0, 0, 0.0)))
    finally:
        ckpt.close()
    if item is None:
        return None
    status, epoch = _STATUS[int(item["status"])], int(item["epoch"])
    _log(verbose, f"restored {workdir} at epoch {epoch} ({status})")
    return step.replicate(item["state"]), status, epoch
