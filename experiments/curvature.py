"""Curvature beyond the paper, shared by the batch sweep and the robust-training study: per layer
λ_max and trace of the Hessian block of that layer's parameters (``hessjax.layer_curvature``), and
λ_max of the whole Hessian beside the generalised Gauss-Newton matrix's on the same samples
(``hessjax.gauss_newton_operator``; README.md and docs/design.md, "Curvature beyond the
paper").

A study records :func:`measure`'s dict per model, averages seeds with :func:`summary`, and shows
one row per model (batch size, or training method) with :func:`table_lines` and
:func:`figure`; its config holds the ``curvature`` section of
``experiments/configs/common.py:curvature``.
"""

from __future__ import annotations

import pathlib

import jax
import numpy as np

import hessjax
from experiments import checks, plots


def config_errors(cc) -> list[str]:
    """What is wrong with a ``curvature`` config section (see configs/common.py:curvature)."""
    errors = checks.positive("curvature.tol", cc.tol)
    errors += checks.positive_int("curvature.max_matvecs", cc.max_matvecs)
    errors += checks.positive_int("curvature.num_samples", cc.num_samples, optional=True)
    if not checks.is_positive_int(cc.trace_matvecs) or cc.trace_matvecs < 4:
        errors.append(f"curvature.trace_matvecs must be >= 4 (XTrace), got {cc.trace_matvecs}")
    return errors


def measure(ctx, variables, data, key, *, batch_size: int) -> dict:
    """λ_max and trace (XTrace) of every layer's Hessian block, and λ_max of the Hessian and of
    the GGN (Lanczos k=1, ``config.curvature``'s tol and budget), on ``data = (x, y)``: the
    study's first ``curvature.num_samples`` training samples. Returns ``{"samples", "layers":
    [LayerCurvature.as_dict()], "trace", "hessian_lambda_max", "ggn_lambda_max",
    "hessian_converged", "ggn_converged"}``."""
    cc, apply_fn = ctx.config.curvature, ctx.model.apply
    n = len(data[1])
    batch = min(batch_size, n)
    mesh = ctx.mesh_for(batch)
    params = variables["params"]
    loss_fn = hessjax.make_loss_fn(apply_fn, variables)
    solve = dict(k=1, tol=cc.tol, max_matvecs=cc.max_matvecs)
    out = {"samples": n}
    with ctx.phase(f"train: per-layer Hessian blocks on {n} samples"):
        rows = hessjax.layer_curvature(
            loss_fn, params, data, batch_size=batch, key=key,
            trace_matvecs=cc.trace_matvecs, mesh=mesh, **solve,
        )  # fmt: skip
        out["layers"] = [r.as_dict() for r in rows]
    with ctx.phase(f"train: λ_max of the Hessian and the GGN on {n} samples"):
        operators = (
            ("hessian", hessjax.hessian_operator(loss_fn, params, data, batch_size=batch,
                                                 mesh=mesh)),
            ("ggn", hessjax.gauss_newton_operator(apply_fn, variables, data, batch_size=batch,
                                                  mesh=mesh)),
        )  # fmt: skip
        for name, op in operators:
            eig = hessjax.eigenvalues(op, params, key=jax.random.fold_in(key, 1), **solve)
            out[f"{name}_lambda_max"] = float(eig.values[0])
            out[f"{name}_converged"] = bool(eig.converged)
    out["trace"] = float(sum(r.trace for r in rows))
    ctx.log(
        f"  curvature: λ_max H {out['hessian_lambda_max']:.4g}, GGN {out['ggn_lambda_max']:.4g}"
        f"; layers' λ_max {', '.join(f'{r.layer} {r.lambda_max:.3g}' for r in rows)}"
    )
    return out


def summary(records: list[dict]) -> dict:
    """Means over seeds of one model's :func:`measure` records: per layer λ_max and trace, λ_max
    of the Hessian and the GGN, and ``ggn_fraction`` = λ_max(GGN) / λ_max(H) (how much of the
    sharpness the Gauss-Newton part carries)."""
    mean = lambda vals: float(np.mean(vals))
    layers = {}
    for name in [row["layer"] for row in records[0]["layers"]]:
        rows = [next(x for x in r["layers"] if x["layer"] == name) for r in records]
        layers[name] = {
            "lambda_max": mean([x["lambda_max"] for x in rows]),
            "trace": mean([x["trace"] for x in rows]),
            "num_params": rows[0]["num_params"],
        }
    keys = ("hessian_lambda_max", "ggn_lambda_max", "trace")
    out = {key: mean([r[key] for r in records]) for key in keys}
    out.update(layers=layers, samples=records[0]["samples"])
    out["ggn_fraction"] = out["ggn_lambda_max"] / out["hessian_lambda_max"]
    return out


def table_lines(config, rows: dict, label: str) -> list[str]:
    """The per-layer table: one row per model (``rows``: ``{row label: summary(...)}``, the
    first column headed ``label``), or no lines when ``rows`` is empty."""
    if not rows:
        return []
    first = next(iter(rows.values()))
    names = list(first["layers"])
    head = [label, *(f"{n} ({first['layers'][n]['num_params']:,})" for n in names)]
    head += ["Σ layers tr", "λ_max H", "λ_max GGN", "GGN / H"]
    body = [
        [row_label]
        + [f"{c['layers'][n]['lambda_max']:.3g} / {c['layers'][n]['trace']:.3g}" for n in names]
        + [
            f"{c['trace']:.4g}",
            f"{c['hessian_lambda_max']:.4g}",
            f"{c['ggn_lambda_max']:.4g}",
            f"{c['ggn_fraction']:.3f}",
        ]  # fmt: skip
        for row_label, c in rows.items()
    ]
    cc = config.curvature
    return [
        "",
        f"## Per-layer curvature (train, first {first['samples']} samples)",
        "",
        "Each layer's Hessian block (that layer's parameters, the others fixed): λ_max / trace "
        f"(Lanczos to tol {cc.tol}, XTrace with {cc.trace_matvecs} matvecs; exact for layers with "
        "no more parameters). λ_max of the whole Hessian and of the generalised Gauss-Newton "
        "matrix on the same samples; the layers' traces sum to tr H.",
        "",
        *plots.markdown_table(head, body),
    ]


def figure(config, rows: dict, path: pathlib.Path, *, xlabel: str) -> pathlib.Path:
    """Per-layer λ_max and trace of the Hessian blocks, and λ_max of the Hessian beside the GGN's,
    against the models of ``rows`` (``{label: summary(...)}``): a log₂ axis when every label is
    a number (batch sizes), else one tick per label (training methods)."""
    plt = plots.pyplot()
    labels = list(rows)
    numeric = all(str(b).isdigit() for b in labels)
    xs = [int(b) for b in labels] if numeric else list(range(len(labels)))
    names = list(rows[labels[0]]["layers"])
    # One distinct colour per layer (tab10 repeats after 10 layers; C2 has 11 blocks).
    palette = plt.cm.tab10 if len(names) <= 10 else plt.cm.tab20
    colors = palette(np.arange(len(names)) % palette.N)
    fig, axes = plt.subplots(1, 3, figsize=(15, 5.0))
    for ax, key, ylabel in (
        (axes[0], "lambda_max", r"$\lambda_{max}$ of the layer's Hessian block"),
        (axes[1], "trace", "trace of the layer's Hessian block"),
    ):
        values = []
        for name, col in zip(names, colors, strict=True):
            ys = [rows[b]["layers"][name][key] for b in labels]
            values += ys
            ax.plot(xs, ys, "o-", color=col, label=name)
        plots.value_scale(ax, values)
        ax.set(xlabel=xlabel, ylabel=ylabel)
    values = []
    for key, name, style in (
        ("hessian_lambda_max", r"Hessian $\lambda_{max}$", "o-"),
        ("ggn_lambda_max", r"Gauss-Newton $\lambda_{max}$", "s--"),
    ):
        ys = [rows[b][key] for b in labels]
        values += ys
        axes[2].plot(xs, ys, style, label=name)
    plots.value_scale(axes[2], values)
    axes[2].set(xlabel=xlabel, ylabel=r"$\lambda_{max}$ (whole model)")
    for ax in axes:
        if numeric:
            ax.set_xscale("log", base=2)
        ax.set_xticks(xs, [str(b) for b in labels])
        ax.grid(True, which="both", alpha=0.3)
    axes[2].legend(fontsize=8)
    n = rows[labels[0]]["samples"]
    fig.suptitle(
        f"{config.name}: curvature per layer and Gauss-Newton vs Hessian ({n} train samples)"
    )
    fig.tight_layout(rect=(0, 0.16, 1, 1))  # the layer legend goes below, off the curves
    handles, names_shown = axes[0].get_legend_handles_labels()
    fig.legend(
        handles, names_shown, loc="lower center", ncol=min(len(names), 6), fontsize=8,
        title="layer", title_fontsize=8,
    )  # fmt: skip
    return plots.save(fig, path)
