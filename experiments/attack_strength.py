"""How the attacks' settings set their strength (issue 16; docs/reproductions.md, "Attack
strength"): test accuracy of one trained model under

1. FGSM and GRAD over a range of ε (multiples of the config's ε∞ / ε₂; the ε units question);
2. FGSM-10 with three step rules: α = ε/10 (hessjax's default), α = 2.5ε/10 (Madry et al.'s
   rule) and α = ε (each step may reach the ball's surface; projected);
3. FHSM and HESS with the Newton direction truncated after 1, 2, 3, 5, 9 and 20 CG iterations
   (tolerance 1e-6: the cap decides), and with an inexact-Newton forcing term η (CG stops at
   ``‖g − Hp‖ ≤ η‖g‖``, cap 20; Eisenstat and Walker 1996, the paper's ref. [11]), with the
   mean relative residual and iteration count of each setting.

One CG iteration from 0 gives ``p = (gᵀg / gᵀHg)·g``, a multiple of the gradient: FHSM with
``cg_iters=1`` is FGSM and HESS is GRAD, so the cap moves the second-order attacks from the
first-order direction towards the minimum-norm Newton direction ``H⁺g``.

    python experiments/attack_strength.py --study=adversarial_training \
        --config=experiments/configs/m1_robust.py:cpu --workdir=runs/m1_robust_cpu --run=original \
        [--num_samples=1000] [--out=runs/m1_robust_cpu/attack_strength]

The model is restored from ``<workdir>/<run>`` (the study's own checkpoint; nothing is trained).
The first ``num_samples`` test images are attacked. Writes ``attack_strength.json`` and
``attack_strength.md`` in ``--out`` (default ``<workdir>/attack_strength_<run>``).
"""

from __future__ import annotations

import importlib
import pathlib
import sys
import time

if __package__ in (None, ""):
    sys.path.insert(1, str(pathlib.Path(__file__).resolve().parents[1]))

import numpy as np
from absl import app, flags
from ml_collections import config_flags

from experiments import plots, runner
from hessjax import attacks
from hessjax import data as hdata

MULTIPLES = (0.5, 1.0, 1.5, 2.0, 3.0, 4.0, 5.0)
STEP_RULES = (("ε/10", 0.1), ("2.5ε/10", 0.25), ("ε", 1.0))  # α = factor · ε, 10 steps
CG_CAPS = (1, 2, 3, 5, 9, 20)
FORCING = (0.5, 0.1, 0.01)

_CONFIG = config_flags.DEFINE_config_file("config", None, "the study config the model came from")
flags.DEFINE_string("study", "adversarial_training", "module in experiments/ of that study")
flags.DEFINE_string("workdir", None, "the study's workdir", required=True)
flags.DEFINE_string("run", "original", "the run whose model is attacked")
flags.DEFINE_integer("num_samples", 1000, "test images attacked (the first ones)")
flags.DEFINE_float("eps_linf", None, "base ε∞ (default: the config's)")
flags.DEFINE_float("eps_l2", None, "base ε₂ (default: the config's)")
flags.DEFINE_list(
    "rows",
    [],
    "robust study only: instead of the sweep, Table 3/4 rows (clean + each attack of the config "
    "with its evaluation settings, ε from --eps_linf/--eps_l2 when given) for these runs",
)
flags.DEFINE_bool("newton", True, "also measure FHSM/HESS over the CG truncations")
flags.DEFINE_string("out", None, "output folder (default <workdir>/attack_strength_<run>)")
FLAGS = flags.FLAGS


def base_eps(config) -> tuple[float, float]:
    """The config's (ε∞, ε₂): a robust study's evaluation ε, else a sweep's / Table 8's."""
    if "evaluation" in config:
        return float(config.evaluation.eps_linf), float(config.evaluation.eps_l2)
    if "fgsm_eps" in config:
        e = float(config.fgsm_eps[0])
    else:
        e = float(config.robust.eps)
    return e, e * 25.0  # ε₂ scale: an ε∞ step on a 32x32x3 / 28x28 image is ~25-55x larger in L2


def restore(study_name: str, config, workdir: pathlib.Path, run_name: str):
    study = importlib.import_module(f"experiments.{study_name}").STUDY
    data = runner.load_data(config)
    runs = {r.name: r for r in study.runs(config)}
    ctx = runner.Context(
        study=study,
        config=config,
        workdir=workdir,
        mesh=None,
        data=data,
        analyze_only=True,
        progress=runner.Progress("attack_strength"),
        runs_by_name=runs,
    )
    variables, _ = study.train(ctx, runs[run_name])
    return runner.get_model(config.model).apply, variables, data


def measure(apply_fn, variables, x, y, config, log=print, newton=True, eps=(None, None)) -> dict:
    clip = hdata.input_range(config.dataset)
    e_inf, e_2 = (given or default for given, default in zip(eps, base_eps(config), strict=True))
    eps_inf = [m * e_inf for m in MULTIPLES]
    eps_2 = [m * e_2 for m in MULTIPLES]
    bs = min(500, len(y))
    kw = dict(clip=clip, batch_size=bs)
    out = {"eps_linf": eps_inf, "eps_l2": eps_2, "samples": len(y)}
    out["clean"] = attacks.accuracy(apply_fn, variables, x, y, bs)

    def timed(label, fn):
        tic = time.perf_counter()
        value = fn()
        log(f"  {label}: {np.round(np.atleast_1d(value), 4).tolist()} "
            f"({time.perf_counter() - tic:.0f}s)")  # fmt: skip
        return np.atleast_1d(value).tolist()

    acc = lambda attack, eps, **o: attacks.adversarial_accuracy(  # noqa: E731
        apply_fn, variables, x, y, attack, eps, **kw, **o
    )
    out["fgsm"] = timed("FGSM over ε∞", lambda: acc("fgsm", eps_inf))
    out["l2_grad"] = timed("GRAD over ε₂", lambda: acc("l2_grad", eps_2))
    out["fgsm10"] = {}
    for name, factor in STEP_RULES:
        out["fgsm10"][name] = []
        for e in eps_inf[:4]:
            step = dict(step_size=factor * e)
            run = lambda e=e, step=step: acc("fgsm10", e, **step)  # noqa: E731
            out["fgsm10"][name] += timed(f"FGSM-10 α={name} ε∞={e:g}", run)
    out["newton"] = []
    settings = [(k, 1e-6) for k in CG_CAPS] + [(20, eta) for eta in FORCING] if newton else []
    for cg_iters, cg_tol in settings:
        p, res, iters = attacks.newton_directions(
            apply_fn, variables, x, y, cg_iters=cg_iters, cg_tol=cg_tol, batch_size=bs
        )
        row = {
            "cg_iters": cg_iters,
            "cg_tol": cg_tol,
            "mean_relative_residual": float(np.mean(res)),
            "median_relative_residual": float(np.median(res)),
            "mean_iterations": float(np.mean(iters)),
        }
        o = dict(cg_iters=cg_iters, cg_tol=cg_tol)
        label = f"cap {cg_iters} tol {cg_tol:g}"
        row["fhsm"] = timed(f"FHSM {label}", lambda o=o: acc("fhsm", eps_inf, **o))
        row["l2_hess"] = timed(f"HESS {label}", lambda o=o: acc("l2_hess", eps_2, **o))
        out["newton"].append(row)
    return out


def table(result: dict, title: str) -> str:
    pct = lambda v: f"{100 * v:.1f}"  # noqa: E731
    ei, e2 = result["eps_linf"], result["eps_l2"]
    lines = [f"# {title}", "", f"Clean accuracy {pct(result['clean'])} % on "
             f"{result['samples']} test images; accuracies in %.", ""]  # fmt: skip
    lines += ["FGSM and FGSM-10 over ε∞:", ""]
    rows = [["FGSM"] + [pct(v) for v in result["fgsm"]]]
    for name, vals in result["fgsm10"].items():
        rows.append(
            [f"FGSM-10, α = {name}"] + [pct(v) for v in vals] + ["–"] * (len(ei) - len(vals))
        )
    lines += plots.markdown_table(["ε∞"] + [f"{e:.4g}" for e in ei], rows)
    lines += ["", "GRAD over ε₂:", ""]
    lines += plots.markdown_table(
        ["ε₂"] + [f"{e:.4g}" for e in e2], [["GRAD"] + [pct(v) for v in result["l2_grad"]]]
    )
    if not result["newton"]:
        return "\n".join(lines) + "\n"
    lines += ["", "FHSM (over ε∞) and HESS (over ε₂) by CG truncation:", ""]
    rows = []
    for r in result["newton"]:
        rule = f"cap {r['cg_iters']}" + (f", η = {r['cg_tol']:g}" if r["cg_tol"] > 1e-5 else "")
        diag = (
            f"{r['mean_iterations']:.1f} / {r['mean_relative_residual']:.2g} / "
            f"{r['median_relative_residual']:.2g}"
        )
        rows.append([rule, diag, " ".join(pct(v) for v in r["fhsm"]),
                     " ".join(pct(v) for v in r["l2_hess"])])  # fmt: skip
    lines += plots.markdown_table(
        ["CG rule", "iterations / residual mean / median", "FHSM at each ε∞", "HESS at each ε₂"],
        rows,
    )
    return "\n".join(lines) + "\n"


def attack_rows(config, workdir: pathlib.Path, names, n: int) -> str:
    """Table 3/4 rows of the robust study's runs ``names`` at ``config.evaluation``'s settings."""
    at = importlib.import_module("experiments.adversarial_training")  # the study, by name

    ec = config.evaluation
    rows, tic = [], time.perf_counter()
    for name in names:
        apply_fn, variables, data = restore("adversarial_training", config, workdir, name)
        x, y = data["test"]
        x, y = x[:n], y[:n]
        accs = [attacks.accuracy(apply_fn, variables, x, y, min(ec.batch_size, n))]
        for attack in config.robust.attacks:
            a = at.adversary_for(config, attack, ec)
            accs.append(
                attacks.adversarial_accuracy(
                    apply_fn,
                    variables,
                    x,
                    y,
                    a.attack,
                    a.eps,
                    clip=a.clip,
                    batch_size=min(ec.batch_size, n),
                    **dict(a.options),
                )  # fmt: skip
            )
            print(f"  {name} {attack}: {accs[-1]:.4f}", flush=True)
        mean = float(np.mean(accs[1:]))
        rows.append([name] + [f"{100 * v:.2f}" for v in accs] + [f"{100 * mean:.2f}"])
    heads = ["Training", "Clean"] + [at._display(a) for a in config.robust.attacks] + ["Mean"]
    lines = [
        f"# {config.name}: attacks at ε∞ = {ec.eps_linf:g}, ε₂ = {ec.eps_l2:g} (CG cap "
        f"{ec.cg_iters}, tol {ec.cg_tol:g}; FGSM-10 step factor {ec.ifgsm_step_factor}) on "
        f"{n} test images",
        "",
        *plots.markdown_table(heads, rows),
        "",
        f"wall {time.perf_counter() - tic:.0f}s",
    ]
    return "\n".join(lines) + "\n"


def main(argv):
    del argv
    config = _CONFIG.value
    workdir = pathlib.Path(FLAGS.workdir)
    if FLAGS.rows:
        if FLAGS.eps_linf is not None:
            config.evaluation.eps_linf = FLAGS.eps_linf
        if FLAGS.eps_l2 is not None:
            config.evaluation.eps_l2 = FLAGS.eps_l2
        md = attack_rows(config, workdir, FLAGS.rows, FLAGS.num_samples)
        out = pathlib.Path(FLAGS.out or workdir / "attack_rows")
        out.mkdir(parents=True, exist_ok=True)
        (out / "attack_rows.md").write_text(md)
        print(md)
        return
    out = pathlib.Path(FLAGS.out or workdir / f"attack_strength_{FLAGS.run}")
    out.mkdir(parents=True, exist_ok=True)
    tic = time.perf_counter()
    apply_fn, variables, data = restore(FLAGS.study, config, workdir, FLAGS.run)
    x, y = data["test"]
    n = min(FLAGS.num_samples, len(y))
    eps = (FLAGS.eps_linf, FLAGS.eps_l2)
    result = measure(apply_fn, variables, x[:n], y[:n], config, newton=FLAGS.newton, eps=eps)
    result.update(config=config.name, run=FLAGS.run, seconds=time.perf_counter() - tic)
    runner.write_json(out / "attack_strength.json", result)
    md = table(result, f"Attack strength: {config.name}, run {FLAGS.run}")
    (out / "attack_strength.md").write_text(md)
    print(md)
    print(f"wall {result['seconds']:.0f}s; wrote {out}")


if __name__ == "__main__":
    app.run(main)
