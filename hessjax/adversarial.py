"""Adversarial (robust) training examples for :class:`hessjax.train.TrainStep` (PAPER.md, "Robust
training"; Yao et al. 2018 §3.1, Eq. 3).

Robust training solves ``min_θ E max_{Δx ∈ U} J(θ, x + Δx, y)`` approximately: every micro-batch,
the inner maximum is replaced by one of the paper's attacks (:mod:`hessjax.attacks`: FGSM, FGSM-10,
GRAD, FHSM, HESS) made at the current ``θ``, then the usual SGD step is taken on the perturbed
batch. An :class:`Adversary` describes the attack:

* ``attack``: a registry key (``"fgsm"``, ``"fgsm10"``, ``"l2_grad"``, ``"fhsm"``, ``"l2_hess"``) or
  a paper name (``"FGSM-10"``, ``"HESS"``, any case);
* ``eps``: the perturbation radius (L∞ for fgsm/fgsm10/fhsm, L2 for l2_grad/l2_hess: see
  :data:`NORMS`), in the units the model sees;
* ``fraction``: the first ``round(fraction · m)`` samples of each micro-batch of ``m`` are replaced
  by their adversarial versions, the rest stay clean (PAPER.md default 1.0: all adversarial);
* ``clip``: valid input range ``(lo, hi)`` (``hessjax.data.input_range(name)``) or ``None``;
* ``**attack_kwargs``: passed to the attack (``steps`` for FGSM-10, ``cg_iters``/``cg_tol`` for
  FHSM/HESS).

The adversarial examples are made with BatchNorm in **inference mode** (PAPER.md): variables =
current ``params`` + current running ``batch_stats`` (those threaded through the micro-batches of
the step), with the gradient stopped with respect to both, so the update is
``∇_θ L(θ; x_adv)`` at fixed ``x_adv`` (Danskin's theorem; the attacks are deterministic, so no
key is needed and a resumed run reproduces an uninterrupted one exactly).
"""

from __future__ import annotations

import math
from collections.abc import Callable
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

from hessjax import attacks

__all__ = ["NORMS", "Adversary", "adversary_errors", "attack_key"]

#: The norm of each attack's perturbation ball: which ε (L∞ or L2) it takes.
NORMS: dict[str, str] = {
    "fgsm": "linf",
    "fgsm10": "linf",
    "l2_grad": "l2",
    "fhsm": "linf",
    "l2_hess": "l2",
}


def attack_key(name: str) -> str:
    """Registry key of an attack given its key or paper name (``"FGSM-10"`` -> ``"fgsm10"``)."""
    fn = attacks.get(name)  # ValueError listing the valid names
    return next(k for k, v in attacks.ATTACKS.items() if v is fn)


def adversary_errors(attack: Any, eps: Any, fraction: Any, clip: Any = None) -> list[str]:
    """Every problem with these adversary settings, as messages (empty: valid)."""
    errors = []
    try:
        attack_key(attack)
    except (ValueError, TypeError) as e:
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
    return errors


class Adversary:
    """How :class:`hessjax.train.TrainStep` perturbs each micro-batch (module docstring).

    ``Adversary(attack="fgsm", eps=0.2, fraction=1.0, clip=(lo, hi), **attack_kwargs)``; invalid
    settings raise one ``ValueError`` listing every problem. Immutable and hashable.
    """

    __slots__ = ("attack", "eps", "fraction", "clip", "attack_kwargs")

    def __init__(
        self,
        attack: str = "fgsm",
        eps: float = 0.1,
        fraction: float = 1.0,
        clip: tuple[float, float] | None = None,
        **attack_kwargs,
    ):
        errors = adversary_errors(attack, eps, fraction, clip)
        if errors:
            raise ValueError("invalid adversary:\n  - " + "\n  - ".join(errors))
        set_ = lambda k, v: object.__setattr__(self, k, v)
        set_("attack", attack_key(attack))
        set_("eps", float(eps))
        set_("fraction", float(fraction))
        set_("clip", None if clip is None else (float(clip[0]), float(clip[1])))
        set_("attack_kwargs", tuple(sorted(attack_kwargs.items())))

    def __setattr__(self, name, value):
        raise AttributeError("Adversary is immutable")

    def _key(self):
        return (self.attack, self.eps, self.fraction, self.clip, self.attack_kwargs)

    def __eq__(self, other):
        return isinstance(other, Adversary) and self._key() == other._key()

    def __hash__(self):
        return hash(self._key())

    def __repr__(self):
        kw = "".join(f", {k}={v!r}" for k, v in self.attack_kwargs)
        return (
            f"Adversary(attack={self.attack!r}, eps={self.eps}, fraction={self.fraction}, "
            f"clip={self.clip}{kw})"
        )

    @property
    def norm(self) -> str:
        """``"linf"`` or ``"l2"``: the ball ``eps`` is the radius of."""
        return NORMS[self.attack]

    def num_adversarial(self, m: int) -> int:
        """Samples replaced in a micro-batch of ``m``: ``round(fraction · m)`` (halves up)."""
        return min(m, int(math.floor(self.fraction * m + 0.5)))

    def examples(self, apply_fn: Callable, variables: Any, x, y) -> jax.Array:
        """``attack(apply_fn, variables, x, y, eps, clip=clip, **attack_kwargs)`` for all of
        ``x (n, ...)`` (one chunk), gradient stopped. ``variables`` in inference mode."""
        fn = attacks.ATTACKS[self.attack]
        x_adv = fn(
            apply_fn,
            variables,
            x,
            y,
            self.eps,
            clip=self.clip,
            batch_size=max(int(x.shape[0]), 1),
            **dict(self.attack_kwargs),
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
        return {
            "attack": self.attack,
            "eps": self.eps,
            "fraction": self.fraction,
            "clip": None if self.clip is None else list(self.clip),
            **{k: (v.item() if isinstance(v, np.generic) else v) for k, v in self.attack_kwargs},
        }
