"""Gauss-Newton and Fisher matrices of softmax cross-entropy over whole data sets, matrix-free.

With ``z = f(θ, x)`` the logits of a sample, ``p = softmax(z)``, ``J = ∂z/∂θ`` (c × P) and
``ℓ = CE(z, y)``, three PSD curvature matrices (means over the ``N`` samples):

* ``"ggn"``, the generalised Gauss-Newton ``G = (1/N) Σᵢ Jᵢᵀ H_ℓ,ᵢ Jᵢ`` with
  ``H_ℓ = ∇²_z ℓ = diag p − ppᵀ`` (computed as the Hessian-vector product of the loss w.r.t. the
  logits): the Hessian without the term ``Σ_k ∂ℓ/∂z_k ∇²_θ z_k``. Equal to the Hessian for a
  model linear in θ (softmax regression).
* ``"fisher"``, the true Fisher ``F = (1/N) Σᵢ E_{y~p(·|xᵢ)} ∇_θ log p(y|xᵢ) ∇_θ log p(y|xᵢ)ᵀ
  = (1/N) Σᵢ Jᵢᵀ [Σ_c p_c (e_c − p)(e_c − p)ᵀ] Jᵢ``, the expectation taken exactly over the c
  classes from the Jacobian of ``log_softmax``. For softmax cross-entropy ``F = G``.
* ``"empirical_fisher"``, ``E = (1/N) Σᵢ gᵢgᵢᵀ`` with ``gᵢ = ∇_θ ℓ(θ, xᵢ, yᵢ)`` the per-sample
  gradients at the *data* labels.

A matvec never forms J: per batch, ``jax.linearize`` of the model's outputs gives ``v -> J v``
(one forward pass plus its tangent), the output-space matrix is applied to ``J v`` (B × c), and
``jax.linear_transpose`` of the same linear map gives ``Jᵀ u``. For the empirical Fisher the
"outputs" are the B per-sample losses: ``E v = (1/B) Σᵢ gᵢ (gᵢᵀv)`` with ``gᵢᵀv`` from one
JVP. Batching, exact tail weights, meshes and ``.linearize()`` are those of
:func:`hessjax.hessian_operator`; every solver applies (the matrices are PSD).

``select=`` (as :func:`hessjax.block_operator`'s, hessjax/blocks.py) gives the diagonal block
``C_SS`` for a subset ``S`` of the parameters: ``J`` becomes ``∂z/∂θ_S`` with the other
parameters fixed, so ``G_SS = (1/N) Σᵢ J_{S,i}ᵀ H_ℓ,ᵢ J_{S,i}`` is exactly the ``S × S`` block
of ``G`` (and likewise for the Fisher matrices).
"""

from __future__ import annotations

import dataclasses
import functools
from collections.abc import Mapping
from typing import Any

import jax
import jax.numpy as jnp
import optax
from jax.sharding import Mesh

from hessjax import batching, blocks, loops, tree
from hessjax import precision as precision_
from hessjax._internal import ApplyFn, Partial, check_positive_int, replicated
from hessjax.hessian import _check_data, _constrain_batch
from hessjax.losses import cross_entropy, split_variables

KINDS = ("ggn", "fisher", "empirical_fisher")

__all__ = ["KINDS", "GaussNewtonOperator", "gauss_newton_operator"]


def _apply_params(apply_fn: ApplyFn, state: dict, params: Any, x: jax.Array) -> jax.Array:
    return apply_fn({"params": params, **state}, x)


def _block_model(model: Partial, params: Any, sub: dict[str, Any], x: jax.Array) -> jax.Array:
    """The logits with the selected leaves ``sub`` put into the fixed ``params``."""
    return model(blocks.merge(params, sub), x)


@functools.lru_cache(maxsize=64)
def _model_for(apply_fn: ApplyFn):
    # One function object per apply_fn, so operators of every checkpoint share compilations.
    return functools.partial(_apply_params, apply_fn)


@jax.tree_util.register_dataclass
@dataclasses.dataclass(frozen=True)
class GaussNewtonOperator:
    """``v -> C v`` for ``C`` the GGN, true Fisher or empirical Fisher (``kind``) over a data set.

    Built by :func:`gauss_newton_operator`; a pytree like :class:`~hessjax.HessianOperator`
    (``model(params, x) -> logits`` a ``Partial`` holding the BatchNorm statistics; data stored
    as ``full`` batches and a short ``tail``). Call it like a function: ``cv = op(v)``.
    """

    model: Partial
    params: Any
    full: Any
    tail: Any
    num_samples: int = dataclasses.field(metadata=dict(static=True))
    kind: str = dataclasses.field(default="ggn", metadata=dict(static=True))
    mesh: Mesh | None = dataclasses.field(default=None, metadata=dict(static=True))

    def __call__(self, v: Any) -> Any:
        return batching.batch_mean(
            _batch_matvec,
            (self, v),
            self.full,
            self.tail,
            batch_size=tree.leading_dim(self.full, axis=1),
            tail_size=tree.leading_dim(self.tail),
            init=tree.zeros_like(v),
            host=loops.host_loops() and not loops.is_traced((self, v)),
        )

    def linearize(self, *, max_bytes: int | None = None):
        """The same operator with each batch's ``v -> J v`` linearisation (and outputs) cached:
        later matvecs skip the primal forward pass; memory as :func:`hessjax.linearization_bytes`
        reports for a Hessian operator, roughly. Returns a
        :class:`~hessjax.LinearizedHessianOperator` (the class applies any cached per-batch
        linear map)."""
        from hessjax import linearized

        return linearized.linearize_batches(self, _linearized_batch, max_bytes=max_bytes)


def _outputs_fn(op: GaussNewtonOperator, batch: Any):
    """``θ -> outputs`` of one batch: logits (B, c), or per-sample losses (B,) for the
    empirical Fisher."""
    x, y = batch
    if op.kind == "empirical_fisher":
        return lambda p: optax.softmax_cross_entropy_with_integer_labels(op.model(p, x), y)
    return lambda p: op.model(p, x)


def _output_matrix(kind: str, outputs: jax.Array, labels: jax.Array, u: jax.Array) -> jax.Array:
    """The batch's output-space matrix applied to ``u = J v`` (already divided by B: the batch's
    quantities are means, as for the Hessian)."""
    b = outputs.shape[0]
    if kind == "ggn":  # ∇²_z of the mean cross-entropy, by forward-over-reverse on the logits
        grad = lambda z: jax.grad(cross_entropy)(z, labels)
        return jax.jvp(grad, (outputs,), (u,))[1]
    if kind == "fisher":  # Σ_c p_c s_c s_cᵀ u, s_c = ∇_z log p_c (rows of the log_softmax Jacobian)
        p = jax.nn.softmax(outputs)
        scores = jax.vmap(jax.jacobian(jax.nn.log_softmax))(outputs)  # (B, c, c): [i, c, :] = s_c
        return jnp.einsum("ic,icj,ick,ik->ij", p, scores, scores, u) / b
    return u / b  # empirical Fisher: Σᵢ gᵢ (gᵢᵀv) / B


def _batch_matvec(op_and_v: tuple[GaussNewtonOperator, Any], batch: Any) -> Any:
    op, v = op_and_v
    batch = _constrain_batch(op, batch)
    outputs, jvp = jax.linearize(_outputs_fn(op, batch), op.params)
    u = _output_matrix(op.kind, outputs, batch[1], jvp(v))
    return jax.linear_transpose(jvp, op.params)(u)[0]


def _cached_matvec(kind: str, jvp: Partial, outputs: jax.Array, labels: jax.Array, v: Any):
    u = _output_matrix(kind, outputs, labels, jvp(v))
    return jax.linear_transpose(jvp, v)(u)[0]


def _linearized_batch(op: GaussNewtonOperator, batch: Any) -> Partial:
    """One batch's ``v -> C_b v`` as a ``Partial`` holding the linearisation (jit-returnable)."""
    batch = _constrain_batch(op, batch)
    outputs, jvp = jax.linearize(_outputs_fn(op, batch), op.params)
    return Partial(functools.partial(_cached_matvec, op.kind), jvp, outputs, batch[1])


def gauss_newton_operator(
    apply_fn: ApplyFn,
    variables: Mapping[str, Any],
    data: tuple[Any, Any],
    *,
    batch_size: int,
    kind: str = "ggn",
    mesh: Mesh | None = None,
    select: blocks.Selector | None = None,
    precision: str | None = precision_.CURVATURE_PRECISION,
) -> GaussNewtonOperator:
    """The GGN / true Fisher / empirical Fisher of mean softmax cross-entropy, as ``v -> C v``.

    Args:
      apply_fn: ``apply_fn(variables, x) -> logits`` (B, c), e.g. a Flax ``model.apply``
        (BatchNorm in inference mode, as :func:`hessjax.make_loss_fn`).
      variables: ``{"params": θ, ...}``; ``C`` is taken w.r.t. ``variables["params"]``.
      data: ``(x, y)`` with integer labels, sharing the leading axis ``N``.
      batch_size: the most samples one matvec evaluation holds (a memory bound; on CPU batches
        are at most 128 per device, see hessjax.batching.fast_batch_size); an int or numpy int.
      kind: ``"ggn"`` (default), ``"fisher"`` or ``"empirical_fisher"`` (module docstring).
      mesh: optional ``Mesh``: batches split over its devices, params replicated
        (``batch_size`` divisible by ``mesh.size``).
      select: optional parameter selector (a module name or path prefix, a ``re.Pattern``, a
        ``(path, leaf) -> bool`` or a list of these; hessjax/blocks.py): the operator is then
        the block ``C_SS`` over ``blocks.restrict(params, select)``, the others fixed.
      precision: ``jax.default_matmul_precision`` the model is traced under (default "float32",
        not TF32 on GPUs; None: the caller's; hessjax/precision.py).

    Returns:
      A :class:`GaussNewtonOperator` over ``variables["params"]`` (with ``select``: over the
      selected sub-params, ``op.params``): ``C v = Σ_b (n_b / N) C_b v``, exact for any ``N``.
    """
    if kind not in KINDS:
        raise ValueError(f"kind must be one of {KINDS}, got {kind!r}")
    if not (isinstance(data, tuple | list) and len(data) == 2):
        raise ValueError("data must be (x, y): inputs and integer labels, one leading axis N")
    n = _check_data(data)
    batch_size = min(check_positive_int("batch_size", batch_size), n)
    batching.check_mesh_divides(batch_size, mesh)
    batch_size = batching.fast_batch_size(batch_size, mesh, n)  # a memory bound (as the Hessian's)
    params, state = split_variables(variables)
    model = Partial(
        _model_for(precision_.at(apply_fn, precision)), jax.tree_util.tree_map(jnp.asarray, state)
    )
    if select is not None:
        model = Partial(_block_model, model, params)
        params = blocks.restrict(params, select)
    full, tail = batching.device_batches(tuple(data), batch_size, mesh)
    if mesh is not None:
        params, model = jax.device_put((params, model), replicated(mesh))
    return GaussNewtonOperator(model, params, full, tail, n, kind, mesh)
