"""Learning-rate schedules (optax) and the momentum-SGD optimiser of every experiment.

docs/paper.md, "Training (Tables 1, 2, 7)": SGD with momentum, no weight decay, the rate
multiplied by a factor at given epochs (C1: ×0.2 at epochs 30 and 60; M1: halved every 5 epochs);
Table 8's "FB" method uses Goyal et al.'s linear scaling with warm-up. Schedules are optax's
(``constant_schedule``, ``piecewise_constant_schedule``, ``linear_schedule``, ``join_schedules``);
:func:`make_schedule` documents the exact formulas.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from typing import Any

import jax
import optax

__all__ = [
    "epochs_to_steps",
    "learning_rate",
    "make_optimizer",
    "make_optimizer_for",
    "make_schedule",
]


def epochs_to_steps(epochs: Sequence[int], scale: float, steps_per_epoch: int) -> dict[int, float]:
    """``{epoch * steps_per_epoch: scale}``: e.g. C1's ×0.2 at epochs 30, 60, or M1's halving
    every 5 epochs with ``epochs=range(5, 100, 5), scale=0.5``."""
    return {int(e) * int(steps_per_epoch): float(scale) for e in epochs}


def _merge(bounds: Mapping[int, float], shift: int = 0) -> dict[int, float]:
    """``{max(b - shift, 0): s}``; scales landing on the same step multiply."""
    merged: dict[int, float] = {}
    for b, s in sorted(bounds.items()):
        at = max(int(b) - shift, 0)
        merged[at] = merged.get(at, 1.0) * float(s)
    return merged


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

    Built from optax schedules: ``constant_schedule``; ``piecewise_constant_schedule`` (whose
    scale ``s_b`` applies for ``step >= b``); for "goyal", ``join_schedules`` of a
    ``linear_schedule`` and a ``piecewise_constant_schedule(η̂, {max(b - warmup_steps, 0): s_b})``
    (the later schedule sees ``step - warmup_steps``), so a boundary inside the warm-up applies
    from its end on. Values equal the formulas above up to float rounding.
    """
    bounds = dict(boundaries_and_scales or {})
    if schedule not in ("constant", "step", "goyal"):
        raise ValueError(f"unknown schedule {schedule!r}; use 'constant', 'step' or 'goyal'")
    if schedule == "step" and not bounds:
        raise ValueError("schedule='step' needs boundaries_and_scales, e.g. epochs_to_steps(...)")
    if schedule == "goyal" and not (batch_size and base_batch_size):
        raise ValueError("schedule='goyal' needs batch_size and base_batch_size (e.g. 128)")
    if any(not float(s) >= 0 for s in bounds.values()):
        raise ValueError(f"boundaries_and_scales needs scales >= 0, got {bounds}")

    if schedule == "constant":
        return optax.constant_schedule(lr)
    if schedule == "step":
        return optax.piecewise_constant_schedule(lr, _merge(bounds))
    peak = lr * batch_size / base_batch_size
    warmup_steps = int(warmup_steps)
    if warmup_steps <= 0:
        return optax.piecewise_constant_schedule(peak, _merge(bounds))
    return optax.join_schedules(
        [
            optax.linear_schedule(lr, peak, warmup_steps),
            optax.piecewise_constant_schedule(peak, _merge(bounds, warmup_steps)),
        ],
        [warmup_steps],
    )


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


def _field(section: Any, name: str, default: Any = ...) -> Any:
    """``section.name`` (a ConfigDict, dataclass, namespace) or ``section[name]`` (a mapping)."""
    if isinstance(section, Mapping):
        value = section.get(name, default)
    else:
        value = getattr(section, name, default)
    if value is ...:
        raise ValueError(f"the optimiser's config section has no field {name!r}")
    return value


def make_optimizer_for(
    section: Any,
    steps_per_epoch: int,
    *,
    schedule: str | None = None,
    batch_size: int | None = None,
    base_batch_size: int | None = None,
    warmup_epochs: float = 0,
) -> optax.GradientTransformation:
    """:func:`make_optimizer` from a config section with fields ``lr``, ``momentum`` (default
    0.9), ``lr_decay_epochs`` (default none) and ``lr_decay_factor``: the rate is multiplied by
    ``lr_decay_factor`` at the first step of each epoch in ``lr_decay_epochs``
    (:func:`epochs_to_steps` with ``steps_per_epoch``).

    ``schedule=None``: "step" when there are decay epochs, else "constant". ``schedule="goyal"``:
    Goyal et al.'s warm-up to ``lr · batch_size / base_batch_size`` over
    ``int(warmup_epochs · steps_per_epoch)`` steps, then the same decay.
    """
    epochs = list(_field(section, "lr_decay_epochs", ()) or ())
    bounds = {}
    if epochs:
        factor = _field(section, "lr_decay_factor")
        bounds = epochs_to_steps(epochs, factor, steps_per_epoch)
    if schedule is None:
        schedule = "step" if bounds else "constant"
    if schedule == "constant" and bounds:
        raise ValueError(
            f"schedule='constant' but lr_decay_epochs={epochs}; use schedule=None for a step "
            "schedule or empty lr_decay_epochs"
        )
    kw: dict[str, Any] = {}
    if bounds:
        kw["boundaries_and_scales"] = bounds
    if schedule == "goyal":
        kw.update(
            batch_size=batch_size,
            base_batch_size=base_batch_size,
            warmup_steps=int(warmup_epochs * steps_per_epoch),
        )
    lr, momentum = float(_field(section, "lr")), float(_field(section, "momentum", 0.9))
    return make_optimizer(lr, momentum, schedule, **kw)


def learning_rate(opt_state: Any) -> float | None:
    """The learning rate of the last update, from a :func:`make_optimizer` state (else None)."""
    hyper = getattr(opt_state, "hyperparams", None)
    if not hyper or "learning_rate" not in hyper:
        return None
    return float(f"{float(hyper['learning_rate']):.7g}")  # the rate may be float32: 7 digits
