"""Adversarial (robust) training examples for :class:`hessjax.train.TrainStep` (docs/paper.md,
"Robust training (Tables 3, 4, 8)"; Yao et al. 2018 §3.1, Eq. 3).

Robust training solves ``min_θ E max_{Δx ∈ U} J(θ, x + Δx, y)`` approximately: every micro-batch,
the inner maximum is replaced by one of the paper's attacks (:data:`hessjax.attacks.REGISTRY`:
FGSM, FGSM-10, GRAD, FHSM, HESS) made at the current ``θ``, then the usual SGD step is taken on the
perturbed batch. An :class:`Adversary` (a frozen dataclass) describes the attack:

* ``attack``: a registry key (``"fgsm"``, ``"fgsm10"``, ``"l2_grad"``, ``"fhsm"``, ``"l2_hess"``) or
  a paper name (``"FGSM-10"``, ``"HESS"``, any case); stored as the key;
* ``eps``: the perturbation radius, in the units the model sees, of the attack's ball
  (``AttackSpec.norm``: L∞ for fgsm/fgsm10/fhsm, L2 for l2_grad/l2_hess; :attr:`Adversary.norm`);
* ``fraction``: the first ``round(fraction · m)`` samples of each micro-batch of ``m`` are replaced
  by their adversarial versions, the rest stay clean (docs/paper.md default 1.0: all adversarial);
* ``clip``: valid input range ``(lo, hi)`` (``hessjax.data.input_range(name)``) or ``None``;
* ``options``: the attack's own keyword options (``AttackSpec.options``: ``steps``/``step_size``
  for FGSM-10, ``cg_iters``/``cg_tol`` for FHSM/HESS), a dict or sorted ``(name, value)`` pairs;
  ``AttackSpec.pick_options`` selects them from a config.

The adversarial examples are made with BatchNorm in **inference mode** (docs/paper.md): variables =
current ``params`` + current running ``batch_stats`` (those threaded through the micro-batches of
the step), with the gradient stopped with respect to both, so the update is
``∇_θ L(θ; x_adv)`` at fixed ``x_adv`` (Danskin's theorem; the attacks are deterministic, so no
key is needed and a resumed run reproduces an uninterrupted one exactly).
"""

from __future__ import annotations

import dataclasses
import math
import numbers
from collections.abc import Callable, Mapping
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

from hessjax import attacks

__all__ = ["Adversary", "adversary_errors"]


def _plain(value: Any) -> Any:
    """numpy scalars as Python scalars (hashable, JSON-serialisable, equal to their Python twin)."""
    return value.item() if isinstance(value, np.generic) else value


def _option_pairs(options: Any) -> tuple[tuple[str, Any], ...]:
    """A dict or ``(name, value)`` pairs as sorted pairs, ``None`` values dropped. TypeError or
    ValueError when ``options`` is neither."""
    if options is None:
        return ()
    items = options.items() if isinstance(options, Mapping) else options
    pairs = []
    for item in items:
        name, value = item  # ValueError/TypeError for anything but pairs
        if not isinstance(name, str):
            raise TypeError(f"option names must be strings, got {name!r}")
        if value is not None:
            pairs.append((name, _plain(value)))
    names = [n for n, _ in pairs]
    if len(set(names)) != len(names):
        raise ValueError(f"options name an option twice: {names}")
    return tuple(sorted(pairs))


def _option_value_errors(name: str, value: Any) -> list[str]:
    if name in ("steps", "cg_iters"):
        ok = isinstance(value, numbers.Integral) and not isinstance(value, bool) and value >= 1
        return [] if ok else [f"option {name} must be an int >= 1, got {value!r}"]
    if name in ("cg_tol", "step_size"):
        ok = isinstance(value, numbers.Real) and not isinstance(value, bool)
        ok = ok and math.isfinite(value) and (value >= 0 if name == "cg_tol" else value > 0)
        bound = ">= 0" if name == "cg_tol" else "> 0"
        return [] if ok else [f"option {name} must be a finite number {bound}, got {value!r}"]
    return []


def adversary_errors(
    attack: Any, eps: Any, fraction: Any, clip: Any = None, options: Any = ()
) -> list[str]:
    """Every problem with these adversary settings, as messages (empty: valid)."""
    errors = []
    try:
        spec = attacks.spec(attack)
    except (ValueError, TypeError) as e:
        spec = None
        errors.append(str(e))
    try:
        e = float(eps)
        if not math.isfinite(e) or e < 0:
            raise ValueError
    except (TypeError, ValueError):
        errors.append(f"adversarial eps must be a finite number >= 0, got {eps!r}")
    try:
        f = float(fraction)
        if not 0.0 <= f <= 1.0:
            raise ValueError
    except (TypeError, ValueError):
        errors.append(f"adversarial fraction must be in [0, 1], got {fraction!r}")
    if clip is not None:
        try:
            lo, hi = (float(c) for c in clip)
            if lo > hi:
                raise ValueError
        except (TypeError, ValueError):
            errors.append(f"clip must be None or (lo, hi) with lo <= hi, got {clip!r}")
    try:
        pairs = _option_pairs(options)
    except (TypeError, ValueError) as e:
        errors.append(f"options must be a dict or (name, value) pairs ({e}), got {options!r}")
        pairs = ()
    for name, value in pairs:
        if spec is not None and name not in spec.options:
            takes = ", ".join(spec.options) if spec.options else "none"
            errors.append(
                f"attack {spec.key} ({spec.display}) does not take option {name!r}; "
                f"its options: {takes}"
            )
        else:
            errors += _option_value_errors(name, value)
    return errors


@dataclasses.dataclass(frozen=True)
class Adversary:
    """How :class:`hessjax.train.TrainStep` perturbs each micro-batch (module docstring).

    ``Adversary("FGSM-10", 0.3, 0.5, (0, 1), options={"steps": 3})``. Invalid settings raise one
    ``ValueError`` listing every problem (an unknown attack, ε < 0, a fraction outside [0, 1], a
    bad clip, an option the attack does not take). The fields are normalised: ``attack`` to its
    registry key, ``eps``/``fraction``/``clip`` to floats, ``options`` to sorted ``(name,
    value)`` pairs. Immutable and hashable; ``Adversary(**a.to_dict()) == a``.
    """

    attack: str = "fgsm"
    eps: float = 0.1
    fraction: float = 1.0
    clip: tuple[float, float] | None = None
    options: tuple[tuple[str, Any], ...] = ()

    def __post_init__(self):
        errors = adversary_errors(self.attack, self.eps, self.fraction, self.clip, self.options)
        if errors:
            raise ValueError("invalid adversary:\n  - " + "\n  - ".join(errors))
        set_ = lambda k, v: object.__setattr__(self, k, v)
        set_("attack", attacks.spec(self.attack).key)
        set_("eps", float(self.eps))
        set_("fraction", float(self.fraction))
        set_("clip", None if self.clip is None else (float(self.clip[0]), float(self.clip[1])))
        set_("options", _option_pairs(self.options))

    @property
    def spec(self) -> attacks.AttackSpec:
        """The attack's registry entry."""
        return attacks.REGISTRY[self.attack]

    @property
    def norm(self) -> str:
        """``"linf"`` or ``"l2"``: the ball ``eps`` is the radius of."""
        return self.spec.norm

    def num_adversarial(self, m: int) -> int:
        """Samples replaced in a micro-batch of ``m``: ``round(fraction · m)`` (halves up)."""
        return min(m, int(math.floor(self.fraction * m + 0.5)))

    def examples(self, apply_fn: Callable, variables: Any, x, y) -> jax.Array:
        """``attack(apply_fn, variables, x, y, eps, clip=clip, **options)`` for all of
        ``x (n, ...)`` (one chunk), gradient stopped. ``variables`` in inference mode."""
        x_adv = self.spec.fn(
            apply_fn,
            variables,
            x,
            y,
            self.eps,
            clip=self.clip,
            batch_size=max(int(x.shape[0]), 1),
            **dict(self.options),
        )
        return jax.lax.stop_gradient(x_adv).astype(x.dtype)

    def perturb(self, apply_fn: Callable, params: Any, batch_stats: Any, x, y) -> jax.Array:
        """The micro-batch ``x (m, ...)`` with its first ``num_adversarial(m)`` samples replaced by
        adversarial examples of ``apply_fn({"params": params, "batch_stats": batch_stats}, ·)``
        (BN in inference mode, no gradient w.r.t. params/batch_stats). Traceable."""
        m = int(x.shape[0])
        k = self.num_adversarial(m)
        if k == 0 or self.eps == 0.0:
            return x
        stats = {"batch_stats": batch_stats} if batch_stats else {}
        variables = jax.lax.stop_gradient({"params": params, **stats})
        x_adv = self.examples(apply_fn, variables, x[:k], y[:k])
        return x_adv if k == m else jnp.concatenate([x_adv, x[k:]], axis=0)

    def to_dict(self) -> dict:
        """JSON-ready ``{"attack", "eps", "fraction", "clip", "options": {name: value}}``."""
        return {
            "attack": self.attack,
            "eps": self.eps,
            "fraction": self.fraction,
            "clip": None if self.clip is None else list(self.clip),
            "options": dict(self.options),
        }
