"""hessjax: exact Hessian-based analysis of neural networks in JAX.

A functional reimplementation of Yao, Gholami, Lei, Keutzer & Mahoney, "Hessian-based Analysis of
Large Batch Training and Robustness to Adversaries" (NeurIPS 2018).
"""

from hessjax import adversarial, attacks, data, evaluation, landscape, models, train
from hessjax.eigen import EigenResult, NonFiniteError, eigenvalues
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
    "adversarial",
    "attacks",
    "EigenResult",
    "NonFiniteError",
    "Quadrature",
    "HessianOperator",
    "LinearizedHessianOperator",
    "cross_entropy",
    "data",
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
