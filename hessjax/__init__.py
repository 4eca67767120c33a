"""hessjax: exact Hessian-based analysis of neural networks in JAX.

A functional reimplementation of Yao, Gholami, Lei, Keutzer & Mahoney, "Hessian-based Analysis of
Large Batch Training and Robustness to Adversaries" (NeurIPS 2018).
"""

from hessjax import (
    adversarial,
    attacks,
    blocks,
    data,
    distributed,
    estimators,
    evaluation,
    landscape,
    layers,
    models,
    train,
)
from hessjax.blocks import block_operator
from hessjax.eigen import EigenResult, NonFiniteError, eigenvalues
from hessjax.estimators import (
    DiagonalEstimate,
    TraceEstimate,
    diagonal,
    hutchinson,
    hutchpp,
    xnystrace,
    xtrace,
)
from hessjax.gauss_newton import GaussNewtonOperator, gauss_newton_operator
from hessjax.hessian import (
    HessianOperator,
    dense_hessian,
    hessian_operator,
    hvp,
    subsample,
    subsampled_hessian_operator,
)
from hessjax.input_hessian import (
    input_gradient_norms,
    input_gradients,
    input_hessian_eigenvalues,
    input_hessian_spectrum,
)
from hessjax.layers import LayerCurvature, layer_curvature
from hessjax.linearized import LinearizedHessianOperator, linearization_bytes
from hessjax.losses import cross_entropy, make_loss_fn, split_variables
from hessjax.spectral import (
    Quadrature,
    density,
    smooth_density,
    spectral_quadrature,
    trace,
    trace_samples,
)

__version__ = "0.1.0"

__all__ = [
    "DiagonalEstimate",
    "GaussNewtonOperator",
    "LayerCurvature",
    "TraceEstimate",
    "adversarial",
    "attacks",
    "block_operator",
    "blocks",
    "diagonal",
    "estimators",
    "gauss_newton_operator",
    "hutchinson",
    "hutchpp",
    "layer_curvature",
    "layers",
    "xnystrace",
    "xtrace",
    "EigenResult",
    "NonFiniteError",
    "Quadrature",
    "HessianOperator",
    "LinearizedHessianOperator",
    "cross_entropy",
    "data",
    "distributed",
    "dense_hessian",
    "density",
    "eigenvalues",
    "evaluation",
    "hessian_operator",
    "hvp",
    "input_gradient_norms",
    "input_gradients",
    "input_hessian_eigenvalues",
    "input_hessian_spectrum",
    "landscape",
    "linearization_bytes",
    "make_loss_fn",
    "models",
    "smooth_density",
    "spectral_quadrature",
    "split_variables",
    "subsample",
    "subsampled_hessian_operator",
    "trace",
    "trace_samples",
    "train",
]
