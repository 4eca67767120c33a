"""First- and second-order adversarial attacks on the input (docs/paper.md, "Attacks (Table 5)").

For one sample, ``J(x) = CE(apply_fn(variables, x[None])[0], y)``, ``g = ∇ₓJ`` and ``H = ∇²ₓJ``
(``hessjax.input_hessian``). Every attack returns ``clip(x + Δx)`` elementwise into ``clip = (lo,
hi)`` (``hessjax.data.input_range(name)``; ``None``: no clipping):

========  ============  =====================================================================
key       paper name    perturbation
========  ============  =====================================================================
fgsm      FGSM          ``Δx = ε·sign(g)``
fgsm10    FGSM-10       ``steps`` times ``x ← clip(Π_ε(x + α·sign(∇ₓJ(x))))``, ``α = ε/steps``
l2_grad   GRAD          ``Δx = ε·g/‖g‖₂``
fhsm      FHSM          ``Δx = ε·sign(p)``, ``H p = g`` solved by conjugate gradient from 0
l2_hess   HESS          ``Δx = ε·p/‖p‖₂``, same ``p``
========  ============  =====================================================================

The table is :data:`REGISTRY`: one :class:`AttackSpec` per attack (key, paper name, function,
norm of its ε, keyword options); :func:`spec` and :func:`get` take a key or a paper name.

``Π_ε`` projects onto the L∞ ball of radius ε around the clean ``x``. A zero direction (``g = 0`` or
``p = 0``) gives no perturbation. For ReLU nets ``H = J_zᵀ(diag s − s sᵀ)J_z`` is PSD of rank
≤ c − 1 and ``g`` lies in its range, so CG from 0 reaches the minimum-norm solution ``H⁺g`` in
≤ c − 1 iterations in exact arithmetic; it stops at ``‖r‖ ≤ cg_tol·‖g‖`` or after ``cg_iters``
HVPs, and ``return_info=True`` reports the relative residual ``‖g − Hp‖/‖g‖`` and iteration count.

Shapes: ``x`` (N, ...) float, ``y`` (N,) int. ``eps`` is a scalar (result (N, ...)) or a 1-D
sequence of E values (result (E, N, ...), one ``x_adv`` per ε); for every attack but FGSM-10 the
direction is computed once and shared by all ε, FGSM-10 runs its iterations per ε. ``eps``, the
clip bounds, ``variables`` and ``cg_tol`` are traced arguments: new values do not recompile.
Samples are processed with ``jax.vmap`` in chunks of ``batch_size`` (``jax.lax.map``).
"""

from __future__ import annotations

import dataclasses
import functools
from collections.abc import Callable, Sequence
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
from jax.sharding import Mesh

from hessjax import batching
from hessjax._internal import ApplyFn, check_positive_int
from hessjax.input_hessian import input_gradient, input_hvp

__all__ = [
    "REGISTRY",
    "AttackSpec",
    "CGInfo",
    "CGResult",
    "accuracy",
    "adversarial_accuracy",
    "conjugate_gradient",
    "fgsm",
    "fhsm",
    "get",
    "ifgsm",
    "l2_grad",
    "l2_hess",
    "newton_direction",
    "newton_directions",
    "spec",
]


class CGResult(NamedTuple):
    """Output of ``conjugate_gradient``: solution, ``‖r_k‖/‖b‖`` (CG's recursive residual)
    and the number of matvecs taken."""

    x: jax.Array
    relative_residual: jax.Array
    iterations: jax.Array


class CGInfo(NamedTuple):
    """Per-sample diagnostics of the Newton direction, each (N,): the true relative residual
    ``‖g − H p‖₂ / ‖g‖₂`` (0 where ``g = 0``) and the number of CG iterations (HVPs)."""

    relative_residual: jax.Array
    iterations: jax.Array


# ----------------------------------------------------------------------------- solvers


def conjugate_gradient(
    matvec: Callable[[jax.Array], jax.Array], b: jax.Array, *, max_iters: int, tol: float
) -> CGResult:
    """Solve ``A x = b`` for symmetric ``A`` by conjugate gradient from ``x₀ = 0``.

    ``b`` may have any shape (inner products over all elements). Runs in a ``lax.while_loop``
    until ``‖r_k‖₂ ≤ tol·‖b‖₂`` or ``max_iters`` matvecs, stopping early on breakdown
    (``dᵀAd = 0`` or non-finite). Iterates stay in the Krylov space of ``b``, so for a consistent
    PSD system the limit is the minimum-norm solution ``A⁺b``.

    Returns the iterate ``x_k`` (k ≥ 1) with the smallest recursive residual ``‖r_k‖``: in exact
    arithmetic that is the last one, but in floating point CG's residual is not monotone on
    ill-conditioned systems (input Hessians of confident nets) and late iterates can blow up.
    Traceable; works under ``vmap``.
    """
    b_norm = jnp.sqrt(jnp.vdot(b, b).real)
    threshold = tol * b_norm

    def cond(state):
        _, _, _, rr, k, stop, _, _ = state
        return (jnp.sqrt(rr) > threshold) & (k < max_iters) & ~stop

    def body(state):
        x, r, d, rr, k, _, best_x, best_rr = state
        ad = matvec(d)
        dad = jnp.vdot(d, ad).real
        ok = jnp.isfinite(dad) & (dad != 0)
        alpha = jnp.where(ok, rr / jnp.where(ok, dad, 1), 0).astype(b.dtype)
        x_new = x + alpha * d
        r_new = r - alpha * ad
        rr_new = jnp.vdot(r_new, r_new).real
        d_new = r_new + _safe_ratio(rr_new, rr).astype(b.dtype) * d
        better = ok & (rr_new < best_rr)
        return (
            jnp.where(ok, x_new, x),
            jnp.where(ok, r_new, r),
            jnp.where(ok, d_new, d),
            jnp.where(ok, rr_new, rr),
            k + ok.astype(k.dtype),
            ~ok,
            jnp.where(better, x_new, best_x),
            jnp.where(better, rr_new, best_rr),
        )

    zero = jnp.zeros_like(b)
    rr0 = jnp.vdot(b, b).real
    inf = jnp.asarray(jnp.inf, rr0.dtype)
    init = (zero, b, b, rr0, jnp.zeros((), jnp.int32), jnp.zeros((), bool), zero, inf)
    _, _, _, rr, k, _, best_x, best_rr = jax.lax.while_loop(cond, body, init)
    best_rr = jnp.where(k > 0, best_rr, rr)
    return CGResult(best_x, _safe_ratio(jnp.sqrt(best_rr), b_norm), k)


def _safe_ratio(num, den):
    return jnp.where(den > 0, num / jnp.where(den > 0, den, 1), 0)


def newton_direction(
    apply_fn: ApplyFn,
    variables: Any,
    x: jax.Array,
    y: jax.Array,
    *,
    cg_iters: int = 20,
    cg_tol: float = 1e-6,
) -> tuple[jax.Array, jax.Array, jax.Array]:
    """Inexact Newton direction of ONE sample: ``p ≈ H⁻¹g`` (min-norm ``H⁺g`` for ReLU nets).

    CG from 0 on ``H = ∇²ₓJ`` via ``input_hvp``, right-hand side ``g = ∇ₓJ``. Returns ``p``
    (shaped like ``x``), the true relative residual ``‖g − Hp‖/‖g‖`` (one extra HVP; 0 if
    ``g = 0``) and the iteration count. Traceable; ``newton_directions`` is the batched version.
    """
    g = input_gradient(apply_fn, variables, x, y)
    hvp = lambda v: input_hvp(apply_fn, variables, x, y, v)
    p, _, iters = conjugate_gradient(hvp, g, max_iters=cg_iters, tol=cg_tol)
    residual = g - hvp(p)
    return p, _safe_ratio(jnp.linalg.norm(residual), jnp.linalg.norm(g)), iters


@functools.partial(jax.jit, static_argnames=("apply_fn", "cg_iters", "batch_size"))
def newton_directions(apply_fn, variables, x, y, *, cg_iters=20, cg_tol=1e-6, batch_size=500):
    """``newton_direction`` per sample: x (N, ...), y (N,) -> p (N, ...), residual (N,), iters
    (N,); ``batch_size`` samples vmapped at a time."""
    one = lambda s: newton_direction(apply_fn, variables, *s, cg_iters=cg_iters, cg_tol=cg_tol)
    return jax.lax.map(one, (x, y), batch_size=batch_size)


# ----------------------------------------------------------------------------- argument checks


def _as_inputs(x, y):
    x, y = jnp.asarray(x), jnp.asarray(y)
    if not jnp.issubdtype(x.dtype, jnp.floating):
        raise TypeError(f"x must be a floating-point array, got dtype {x.dtype}")
    if x.ndim < 1 or y.shape != x.shape[:1]:
        raise ValueError(f"need x (N, ...) and y (N,); got x {x.shape}, y {y.shape}")
    return x, y


def _as_eps(eps, dtype) -> tuple[jax.Array, bool]:
    """eps -> ((E,) array of ``dtype``, whether eps was a scalar). Raises on ε < 0."""
    if isinstance(eps, jax.core.Tracer):  # inside a user's jit: cannot be checked
        arr = jnp.asarray(eps, dtype)
    else:
        values = np.asarray(eps, dtype=np.float64)
        if values.ndim > 1 or values.size == 0:
            raise ValueError(f"eps must be a scalar or a non-empty 1-D sequence, got {eps!r}")
        if not np.all(np.isfinite(values)) or np.any(values < 0):
            raise ValueError(f"eps must be finite and >= 0, got {eps!r}")
        arr = jnp.asarray(values, dtype)
    if arr.ndim > 1:
        raise ValueError(f"eps must be a scalar or a 1-D sequence, got shape {arr.shape}")
    return jnp.atleast_1d(arr), arr.ndim == 0


def _as_clip(clip, dtype) -> tuple[jax.Array, jax.Array]:
    if clip is None:
        return jnp.asarray(-jnp.inf, dtype), jnp.asarray(jnp.inf, dtype)
    try:
        lo, hi = clip
    except (TypeError, ValueError):
        raise ValueError(f"clip must be (lo, hi) or None, got {clip!r}") from None
    lo, hi = jnp.asarray(lo, dtype), jnp.asarray(hi, dtype)
    if not isinstance(lo, jax.core.Tracer) and not isinstance(hi, jax.core.Tracer):
        if np.any(np.asarray(lo) > np.asarray(hi)):
            raise ValueError(f"clip needs lo <= hi, got {clip!r}")
    return lo, hi


def _finish(x_adv, scalar):
    return x_adv[0] if scalar else x_adv


# ----------------------------------------------------------------------------- one-step attacks


def _unit(v, norm):
    """``sign(v)`` (norm="linf") or ``v/‖v‖₂`` (norm="l2", 0 for v = 0)."""
    if norm == "linf":
        return jnp.sign(v)
    n = jnp.linalg.norm(v)
    return jnp.where(n > 0, v / jnp.where(n > 0, n, 1), 0)


@functools.partial(
    jax.jit, static_argnames=("apply_fn", "source", "norm", "info", "cg_iters", "batch_size")
)
def _one_step(
    apply_fn, variables, x, y, eps, lo, hi, cg_tol, *, source, norm, info, cg_iters, batch_size
):
    """(E, N, ...) ``clip(x + ε·unit(direction))`` for every ε; direction computed once."""

    def per_sample(sample):
        xi, yi = sample
        if source == "grad":
            return _unit(input_gradient(apply_fn, variables, xi, yi), norm)
        p, res, iters = newton_direction(
            apply_fn, variables, xi, yi, cg_iters=cg_iters, cg_tol=cg_tol
        )
        return (_unit(p, norm), res, iters) if info else _unit(p, norm)

    out = jax.lax.map(per_sample, (x, y), batch_size=batch_size)
    direction = out[0] if info else out
    scale = eps.reshape((-1,) + (1,) * x.ndim)
    x_adv = jnp.clip(x[None] + scale * direction[None], lo, hi)
    return (x_adv, CGInfo(out[1], out[2])) if info else x_adv


def _direction_attack(source, norm, apply_fn, variables, x, y, eps, clip, batch_size, **cg):
    """Check the arguments, run ``_one_step``, drop the ε axis for a scalar ε. ``cg``: cg_iters,
    cg_tol, return_info (second-order attacks only)."""
    check_positive_int("batch_size", batch_size)
    cg_iters, cg_tol, info = cg.get("cg_iters", 1), cg.get("cg_tol", 0.0), cg.get("return_info")
    check_positive_int("cg_iters", cg_iters)
    x, y = _as_inputs(x, y)
    eps, scalar = _as_eps(eps, x.dtype)
    lo, hi = _as_clip(clip, x.dtype)
    static = dict(source=source, norm=norm, info=bool(info), cg_iters=cg_iters)
    out = _one_step(apply_fn, variables, x, y, eps, lo, hi, cg_tol, batch_size=batch_size, **static)
    return (_finish(out[0], scalar), out[1]) if info else _finish(out, scalar)


def fgsm(apply_fn: ApplyFn, variables: Any, x, y, eps, *, clip, batch_size: int = 500):
    """FGSM: ``clip(x + ε·sign(∇ₓJ))``. x (N, ...) -> (N, ...), or (E, N, ...) for E values of ε.

    ``clip=(lo, hi)`` (scalars or arrays broadcasting to one sample) or ``None``.
    """
    return _direction_attack("grad", "linf", apply_fn, variables, x, y, eps, clip, batch_size)


def l2_grad(apply_fn: ApplyFn, variables: Any, x, y, eps, *, clip, batch_size: int = 500):
    """GRAD (L2 gradient attack): ``clip(x + ε·g/‖g‖₂)``, ``g = ∇ₓJ`` per sample (g = 0: x)."""
    return _direction_attack("grad", "l2", apply_fn, variables, x, y, eps, clip, batch_size)


def _newton_attack(name: str, norm: str, doc: str) -> Callable:
    """The second-order attack ``name`` (same CG direction ``p``, ``norm`` of the step)."""

    def attack(
        apply_fn: ApplyFn,
        variables: Any,
        x,
        y,
        eps,
        *,
        clip,
        cg_iters: int = 20,
        cg_tol: float = 1e-6,
        batch_size: int = 500,
        return_info: bool = False,
    ):
        cg = dict(cg_iters=cg_iters, cg_tol=cg_tol, return_info=return_info)
        return _direction_attack(
            "hess", norm, apply_fn, variables, x, y, eps, clip, batch_size, **cg
        )

    attack.__name__ = attack.__qualname__ = name
    attack.__doc__ = doc
    return attack


fhsm = _newton_attack(
    "fhsm",
    "linf",
    """FHSM: ``clip(x + ε·sign(p))`` with ``H p = g`` solved by CG (``newton_direction``).

    Returns ``x_adv`` ((N, ...) or (E, N, ...)); with ``return_info=True`` the pair
    ``(x_adv, CGInfo(relative_residual (N,), iterations (N,)))``.
    """,
)
l2_hess = _newton_attack(
    "l2_hess",
    "l2",
    """HESS (L2 Hessian attack): ``clip(x + ε·p/‖p‖₂)``, same ``p``, arguments and return values
    as :func:`fhsm`.""",
)


# ----------------------------------------------------------------------------- FGSM-10


@functools.partial(jax.jit, static_argnames=("apply_fn", "steps", "batch_size"))
def _iterative(apply_fn, variables, x, y, eps, alpha, lo, hi, *, steps, batch_size):
    """(E, N, ...): for each (ε, α) in turn, ``steps`` projected sign-gradient steps per sample."""

    def per_eps(eps_alpha):
        e, a = eps_alpha

        def per_sample(sample):
            x0, yi = sample

            def step(_, xa):
                xa = xa + a * jnp.sign(input_gradient(apply_fn, variables, xa, yi))
                return jnp.clip(jnp.clip(xa, x0 - e, x0 + e), lo, hi)

            return jax.lax.fori_loop(0, steps, step, x0)

        return jax.lax.map(per_sample, (x, y), batch_size=batch_size)

    return jax.lax.map(per_eps, (eps, alpha))


def ifgsm(
    apply_fn: ApplyFn,
    variables: Any,
    x,
    y,
    eps,
    *,
    clip,
    steps: int = 10,
    step_size=None,
    batch_size: int = 500,
):
    """Iterative FGSM (FGSM-10 for ``steps=10``) without random start.

    From ``x₀ = x``: ``x_{k+1} = clip(Π_ε(x_k + α·sign(∇ₓJ(x_k))))``, ``Π_ε`` the projection onto
    ``‖x' − x‖_∞ ≤ ε``, ``α = step_size`` (default ``ε/steps``), in a ``lax.fori_loop``. Several ε
    are attacked one after another (``lax.map``). x (N, ...) -> (N, ...) or (E, N, ...).
    """
    check_positive_int("batch_size", batch_size)
    check_positive_int("steps", steps)
    x, y = _as_inputs(x, y)
    eps, scalar = _as_eps(eps, x.dtype)
    lo, hi = _as_clip(clip, x.dtype)
    if step_size is None:
        alpha = eps / steps
    else:
        if not isinstance(step_size, jax.core.Tracer) and not float(step_size) > 0:
            raise ValueError(f"step_size must be > 0 (or None for eps/steps), got {step_size!r}")
        alpha = jnp.broadcast_to(jnp.asarray(step_size, x.dtype), eps.shape)
    x_adv = _iterative(
        apply_fn, variables, x, y, eps, alpha, lo, hi, steps=steps, batch_size=batch_size
    )
    return _finish(x_adv, scalar)


# ----------------------------------------------------------------------------- registry


@dataclasses.dataclass(frozen=True)
class AttackSpec:
    """One attack of the registry: everything the rest of hessjax needs to know about it.

    ``key``: the registry key (``"fgsm10"``); ``display``: the paper's name (``"FGSM-10"``);
    ``fn``: the attack function; ``norm``: the ball ``eps`` is the radius of (``"linf"`` or
    ``"l2"``); ``options``: the keyword options the attack takes beyond the common ones
    (``clip``, ``batch_size``), e.g. ``("steps", "step_size")`` for FGSM-10.
    """

    key: str
    display: str
    fn: Callable
    norm: str
    options: tuple[str, ...] = ()

    def __post_init__(self):
        if self.norm not in ("linf", "l2"):
            raise ValueError(f"norm must be 'linf' or 'l2', got {self.norm!r}")

    def pick_options(self, **available: Any) -> dict[str, Any]:
        """The entries of ``available`` this attack takes, without those whose value is None:
        ``spec("fhsm").pick_options(steps=10, cg_iters=20) == {"cg_iters": 20}``."""
        return {k: v for k, v in available.items() if k in self.options and v is not None}


_CG = ("cg_iters", "cg_tol")

#: The paper's five attacks, by registry key, in the paper's order (Table 5).
REGISTRY: dict[str, AttackSpec] = {
    s.key: s
    for s in (
        AttackSpec("fgsm", "FGSM", fgsm, "linf"),
        AttackSpec("fgsm10", "FGSM-10", ifgsm, "linf", ("steps", "step_size")),
        AttackSpec("l2_grad", "GRAD", l2_grad, "l2"),
        AttackSpec("fhsm", "FHSM", fhsm, "linf", _CG),
        AttackSpec("l2_hess", "HESS", l2_hess, "l2", _CG),
    )
}


def spec(name: str) -> AttackSpec:
    """The :class:`AttackSpec` of a registry key (``"fgsm10"``) or a paper name (``"FGSM-10"``,
    ``"hess"``: any case). ValueError listing the valid names otherwise."""
    if isinstance(name, str):
        lowered = name.lower()
        for s in REGISTRY.values():
            if lowered in (s.key, s.display.lower()):
                return s
    valid = ", ".join(f"{s.key!r} ({s.display})" for s in REGISTRY.values())
    raise ValueError(f"unknown attack {name!r}; valid names: {valid}")


def get(name: str) -> Callable:
    """The attack function of a registry key or paper name: ``spec(name).fn``."""
    return spec(name).fn


# ----------------------------------------------------------------------------- accuracy


@functools.partial(jax.jit, static_argnames=("apply_fn",))
def _correct(apply_fn, variables, x, y):
    """(B, E) bool: ``argmax apply_fn(x[e]) == y`` for x (E, B, ...)."""
    hits = jax.lax.map(lambda xe: jnp.argmax(apply_fn(variables, xe), axis=-1) == y, x)
    return hits.T


def _accuracies(apply_fn, variables, x, y, batch_size, make_inputs, mesh):
    """(E,) accuracies of ``apply_fn`` on ``make_inputs(xb, yb)`` (E, B, ...) over all chunks of
    ``batch_size`` samples (:func:`hessjax.batching.map_chunks`; split over ``mesh``)."""
    check_positive_int("batch_size", batch_size)
    n = len(y)
    if n == 0 or len(x) != n:
        raise ValueError(f"need x (N, ...) and y (N,) with N > 0; got {len(x)} and {n} samples")
    chunk_rows = batching.chunk_size(n, batch_size, mesh)

    def correct(shared, chunk):
        xb, yb = chunk
        return _correct(apply_fn, shared, make_inputs(shared, xb, yb, chunk_rows), yb)

    hits = batching.map_chunks(correct, variables, (x, y), batch_size, mesh=mesh)
    return np.asarray(hits).mean(axis=0, dtype=np.float64)


def accuracy(
    apply_fn: ApplyFn, variables: Any, x, y, batch_size: int = 500, *, mesh: Mesh | None = None
) -> float:
    """Clean accuracy ``mean_i [argmax apply_fn(variables, x)_i = y_i]`` over the whole set,
    ``batch_size`` samples per compiled call."""
    inputs = lambda shared, xb, yb, rows: xb[None]
    return float(_accuracies(apply_fn, variables, x, np.asarray(y), batch_size, inputs, mesh)[0])


def adversarial_accuracy(
    apply_fn: ApplyFn,
    variables: Any,
    x,
    y,
    attack: str | Callable,
    eps: float | Sequence[float],
    *,
    clip,
    batch_size: int = 500,
    mesh: Mesh | None = None,
    **attack_kw,
) -> float | np.ndarray:
    """Accuracy on ``attack(apply_fn, variables, x, y, eps, clip=clip, **attack_kw)``.

    ``attack``: a registry name (``get``) or a function with the attacks' signature. The data set
    is attacked ``batch_size`` samples at a time (a Python loop over chunks, each chunk one
    compiled call; with ``mesh``, each chunk split over its devices). Returns a float for scalar
    ``eps``, else an (E,) array, one accuracy per ε.
    """
    attack_fn = get(attack) if isinstance(attack, str) else attack
    x = np.asarray(x) if not hasattr(x, "shape") else x
    eps_arr, scalar = _as_eps(eps, x.dtype)
    inputs = lambda shared, xb, yb, rows: attack_fn(
        apply_fn, shared, xb, yb, eps_arr, clip=clip, batch_size=rows, **attack_kw
    )
    acc = _accuracies(apply_fn, variables, x, np.asarray(y), batch_size, inputs, mesh)
    return float(acc[0]) if scalar else acc
