"""What every study config shares: the scale check, the fields every study has, the weight-Hessian
settings, and applying a scale's reductions (data) to a paper-scale config.

Every ``get_config(arg)`` here builds the paper-scale config, then returns
``at_scale(c, cpu=..., smoke=...)``. A study that reuses another's recipe (C2 and CR use C1's, C3
uses M1's) starts from that file's paper config with :func:`derive` and changes what differs.
"""

from __future__ import annotations

import copy
from collections.abc import Mapping, Sequence
from types import ModuleType
from typing import Any

import ml_collections
from ml_collections.config_dict import placeholder

SCALES = ("paper", "cpu", "smoke")
#: The data of every smoke run (before its own ``smoke`` changes): 256 training and 128 test
#: images, evaluated in one batch.
SMOKE_DATA = dict(train_limit=256, test_limit=128, eval_batch_size=128)

#: Changes to a config: ``{field: value}``, a nested dict for a sub-config (``hessian=dict(k=5)``),
#: or a sequence of such dicts applied in turn.
Changes = Mapping[str, Any] | Sequence[Mapping[str, Any]]


def check_scale(arg: str | None, name: str) -> str:
    """The scale named by ``--config=...py:SCALE`` (default ``paper``); ValueError otherwise."""
    scale = arg or "paper"
    if scale not in SCALES:
        raise ValueError(f"unknown scale {scale!r} for {name}; choose one of {SCALES}")
    return scale


def study_config(
    name: str, arg: str | None, *, dataset: str, model: str, **fields: Any
) -> ml_collections.ConfigDict:
    """The fields every study config has, named ``<name>_<scale>``, then ``fields`` (top level)."""
    scale = check_scale(arg, name)
    c = ml_collections.ConfigDict()
    c.name = f"{name}_{scale}"
    c.scale = scale
    c.dataset = dataset
    c.model = model
    c.data_dir = placeholder(str)  # None: $HESSJAX_DATA_DIR, then tensorflow_datasets
    c.train_limit = placeholder(int)  # None: the whole split
    c.test_limit = placeholder(int)
    c.eval_batch_size = 1000
    # Bytes the Hessian operators' cached linearisations may take, in MiB (speed only; None:
    # hessjax.linearized.MEMORY_FRACTION of the device's free memory).
    c.memory_budget_mb = placeholder(int)
    # How the training steps run convolutions (hessjax.conv; speed only): "auto" = on CPU strided
    # ones as patches + one GEMM (M1 trains ~1.3x faster), else XLA's. Analyses use "xla".
    # m1_robust overrides it (docs/design.md).
    c.train_conv_implementation = "auto"
    for key, value in fields.items():
        c[key] = value
    return c


def hessian(batch_size: int) -> ml_collections.ConfigDict:
    """The paper's weight-Hessian measurement: top-20 eigenvalues of the loss Hessian over the
    whole (train or test) subset, Lanczos to residual tol 1e-4."""
    h = ml_collections.ConfigDict()
    h.num_samples = placeholder(int)  # None: the whole train (test) subset, as in the paper
    h.batch_size = batch_size  # samples per HVP evaluation (memory knob only)
    h.k = 20
    h.method = "lanczos"  # or "power" (the paper's deflated power iteration)
    h.tol = 1e-4
    h.max_matvecs = placeholder(int)  # None: hessjax.eigen.default_max_matvecs
    return h


def curvature() -> ml_collections.ConfigDict:
    """Beyond the paper (experiments/curvature.py): λ_max and trace of every layer's Hessian
    block, and λ_max of the Gauss-Newton matrix beside the Hessian's, on the first
    ``num_samples`` training samples (None: ``hessian.num_samples``); Lanczos k=1 to ``tol``
    within ``max_matvecs``, XTrace with ``trace_matvecs``."""
    c = ml_collections.ConfigDict(dict(enabled=True, tol=1e-2, max_matvecs=40))
    c.num_samples = placeholder(int)
    c.trace_matvecs = 20
    return c


#: The curvature section at smoke scale: a few matvecs.
SMOKE_CURVATURE = dict(max_matvecs=6, trace_matvecs=6)


def override(c: ml_collections.ConfigDict, changes: Changes) -> ml_collections.ConfigDict:
    """Set existing fields of ``c`` from ``changes``; KeyError on a field ``c`` does not have (a
    typo must not add one). Values are copied: the module-level dicts are never shared."""
    if not isinstance(changes, Mapping):
        for part in changes:
            override(c, part)
        return c
    for key, value in changes.items():
        if key not in c:
            raise KeyError(f"{key!r}: no such field in {sorted(c.keys())}")
        if isinstance(value, Mapping):
            override(c[key], value)
        else:
            c[key] = copy.deepcopy(value)
    return c


def at_scale(
    c: ml_collections.ConfigDict, *, cpu: Changes, smoke: Changes
) -> ml_collections.ConfigDict:
    """The paper-scale config ``c`` reduced to ``c.scale``: ``cpu`` applied, or
    :data:`SMOKE_DATA` then ``smoke``."""
    return override(c, {"paper": (), "cpu": cpu, "smoke": (SMOKE_DATA, smoke)}[c.scale])


def derive(
    base: ModuleType, name: str, arg: str | None, **changes: Any
) -> ml_collections.ConfigDict:
    """``base``'s paper config renamed ``<name>_<scale>`` with ``changes``: a study on ``base``'s
    recipe; its ``get_config`` then applies its own reductions with :func:`at_scale`."""
    scale = check_scale(arg, name)
    c = base.get_config("paper")
    c.name, c.scale = f"{name}_{scale}", scale
    return override(c, changes)
