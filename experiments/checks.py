"""Config checks shared by the studies: each returns a list of messages (empty: valid), so a
study collects every problem of a config and the runner reports them in one message."""

from __future__ import annotations

import math
from typing import Any

from hessjax import attacks
from hessjax import conv as hconv
from hessjax import data as hdata
from hessjax import models as hmodels
from hessjax.adversarial import adversary_errors

_PAIRS = "pair m1 with mnist, c1/c2/c3 with cifar10, cr with cifar100"


def is_positive_int(v: Any) -> bool:
    return isinstance(v, int) and not isinstance(v, bool) and v >= 1


def positive_int(name: str, v: Any, *, optional: bool = False) -> list[str]:
    if optional and v is None:
        return []
    if is_positive_int(v):
        return []
    kind = "a positive int or None" if optional else "a positive int"
    return [f"{name} must be {kind}, got {v!r}"]


def positive(name: str, v: Any) -> list[str]:
    try:
        if math.isfinite(float(v)) and float(v) > 0:
            return []
    except (TypeError, ValueError):
        pass
    return [f"{name} must be a finite number > 0, got {v!r}"]


def common_errors(config) -> list[str]:
    """Data set, model, their pairing and the data limits (every study has these fields)."""
    errors = []
    if config.dataset not in hdata.DATASETS:
        errors.append(f"unknown dataset {config.dataset!r}; valid: {', '.join(hdata.DATASETS)}")
    try:
        shape = hmodels.input_shape(config.model)
    except ValueError as e:
        errors.append(str(e))
        shape = None
    if shape is not None and config.dataset in hdata.DATASETS and config.dataset != "synthetic":
        if tuple(shape) != tuple(hdata.image_shape(config.dataset)):
            errors.append(
                f"model {config.model!r} takes inputs {shape} but {config.dataset!r} images are "
                f"{hdata.image_shape(config.dataset)}; {_PAIRS}"
            )
    for field in ("train_limit", "test_limit"):
        errors += positive_int(field, config.get(field), optional=True)
    impl = config.get("train_conv_implementation", "xla")
    if impl not in hconv.IMPLEMENTATIONS:
        errors.append(
            f"train_conv_implementation must be one of {', '.join(hconv.IMPLEMENTATIONS)}, "
            f"got {impl!r}"
        )
    return errors


def optimizer_errors(prefix: str, section) -> list[str]:
    """``lr > 0``, ``momentum`` in [0, 1), ``num_epochs`` an int >= 0, decay epochs/factor."""
    errors = positive(f"{prefix}.lr" if prefix else "lr", section.lr)
    p = f"{prefix}." if prefix else ""
    if not 0 <= section.momentum < 1:
        errors.append(f"{p}momentum must be in [0, 1), got {section.momentum}")
    n = section.num_epochs
    if not isinstance(n, int) or isinstance(n, bool) or n < 0:
        errors.append(f"{p}num_epochs must be an int >= 0, got {n!r}")
    if any(not isinstance(e, int) or e < 1 for e in section.lr_decay_epochs):
        errors.append(
            f"{p}lr_decay_epochs must be positive ints, got {list(section.lr_decay_epochs)}"
        )
    errors += positive(f"{p}lr_decay_factor", section.lr_decay_factor)
    return errors


def micro_batch(config, batch_size: int) -> int:
    """Batches smaller than ``micro_batch_size`` are a single micro-batch."""
    return min(int(batch_size), int(config.micro_batch_size or batch_size))


def batch_errors(config, batch_size: Any, what: str = "batch size") -> list[str]:
    """A positive int, divisible by the micro-batch, not above ``train_limit``."""
    if not is_positive_int(batch_size):
        return [f"{what} {batch_size!r} must be a positive integer"]
    m = config.micro_batch_size
    if m is not None and not is_positive_int(m):
        return [f"micro_batch_size must be a positive integer or None, got {m!r}"]
    errors = []
    if batch_size % micro_batch(config, batch_size):
        errors.append(
            f"{what} {batch_size} is not divisible by micro_batch_size={m}; use a multiple of "
            f"{m} (or a micro_batch_size that divides {batch_size})"
        )
    limit = config.get("train_limit")
    if limit is not None and batch_size > limit:
        errors.append(f"{what} {batch_size} exceeds train_limit={limit}")
    return errors


def attack_errors(name: str, section, *, eps_fields: tuple[str, ...], fraction=None) -> list[str]:
    """Every ε field of ``section`` (and ``fraction`` when given) as the library's
    :func:`hessjax.adversarial.adversary_errors` checks them, prefixed with the field."""
    errors = [
        f"{name}.{field}: {m}"
        for field in eps_fields
        for m in adversary_errors("fgsm", section[field], 1.0)
    ]
    if fraction is not None:
        errors += [f"{name}.fraction: {m}" for m in adversary_errors("fgsm", 0.0, fraction)]
    return errors


def attack_name_errors(names, field: str) -> list[str]:
    errors = []
    for a in names:
        try:
            attacks.spec(a)
        except ValueError as e:
            errors.append(f"{field}: {e}")
    if len(set(names)) != len(names):
        errors.append(f"{field} has duplicates: {list(names)}")
    return errors
