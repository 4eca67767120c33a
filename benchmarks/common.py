"""Shared helpers of the benchmarks: command line, environment report, timing, a partly trained
M1, results.

Run the benchmarks from the repository root as modules (``python -m benchmarks.<name>``) so that
both ``hessjax`` and ``benchmarks`` import without installing anything.
"""

from __future__ import annotations

import argparse
import json
import os
import pathlib
import platform
import shlex
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Sequence
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
import optax

import hessjax
from hessjax import models

RESULTS_DIR = pathlib.Path(__file__).resolve().parent / "results"
_REPO_ROOT = pathlib.Path(__file__).resolve().parents[1]
DEFAULT_DATA_DIR = os.environ.get(hessjax.data.ENV_VAR) or str(
    _REPO_ROOT.parent / "shared" / "data"
)


# ----------------------------------------------------------------------------- command line


def argument_parser(doc: str) -> argparse.ArgumentParser:
    """A parser whose ``--help`` shows the benchmark's docstring ``doc`` as written."""
    return argparse.ArgumentParser(
        description=doc, formatter_class=argparse.RawDescriptionHelpFormatter
    )


def add_run_args(
    p: argparse.ArgumentParser, out: str, *, torch: bool = False, trains_m1: bool = False
) -> None:
    """The options of a benchmark that reads data and writes results: ``--train-images`` and
    ``--train-epochs`` (``trains_m1``: see :func:`trained_m1`), ``--torch-threads`` and
    ``--torch-device`` (``torch``), ``--data-dir``, ``--seed`` and ``--out`` (default ``out``)."""
    if trains_m1:
        p.add_argument("--train-images", type=int, default=10_000)
        p.add_argument("--train-epochs", type=int, default=1)
    if torch:
        p.add_argument("--torch-threads", type=int, default=None, help="default: all cores")
        p.add_argument(
            "--torch-device",
            default="auto",
            help="where PyTorch runs: cpu, cuda, cuda:N, or auto (CUDA if visible, else CPU)",
        )
    p.add_argument("--data-dir", default=DEFAULT_DATA_DIR)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--out", default=out, help="results/<out>.{json,md}")


#: The models the timing benchmarks run (``--models``) and the data set each is timed on.
DATASETS = {"m1": "mnist", "c1": "cifar10"}


def model_names(spec: str) -> list[str]:
    """The ``--models`` list (``"m1,c1"``), lower-cased; SystemExit on an unknown name."""
    names = [name.strip().lower() for name in spec.split(",")]
    for name in names:
        if name not in DATASETS:
            raise SystemExit(f"unknown model {name!r}; choose from {', '.join(DATASETS)}")
    return names


def log(*a: Any) -> None:
    """Print a progress line, stamped with the wall-clock time."""
    print(f"[{time.strftime('%H:%M:%S')}]", *a, flush=True)


# ----------------------------------------------------------------------------- environment


def set_torch_threads(num_threads: int | None) -> int:
    """Pin PyTorch's intra-op pool to ``num_threads`` (default: every core, like XLA's pool)."""
    import torch

    n = num_threads or os.cpu_count() or 1
    torch.set_num_threads(n)
    return n


def environment(torch_threads: int | None = None) -> dict[str, Any]:
    """What the numbers were measured on: cores, devices, thread settings, versions, load."""
    env = {
        "cpu_count": os.cpu_count(),
        "cpu_model": _cpu_model(),
        "load_average_1_5_15": list(os.getloadavg()),
        "python": platform.python_version(),
        "jax": jax.__version__,
        "jax_backend": jax.default_backend(),
        "jax_devices": [str(d) for d in jax.devices()],
        "XLA_FLAGS": os.environ.get("XLA_FLAGS", ""),
        "OMP_WAIT_POLICY": os.environ.get("OMP_WAIT_POLICY", ""),
        "xla_threads": f"XLA default intra-op pool = all {os.cpu_count()} cores",
        "HESSJAX_HOST_LOOPS": os.environ.get("HESSJAX_HOST_LOOPS", ""),
        "hessjax_host_loops": _host_loops(),
        "git": _git_state(),
    }
    if torch_threads is not None:
        import torch

        from benchmarks import torch_models

        env.update(
            torch=torch.__version__,
            torch_threads=torch.get_num_threads(),
            torch_interop_threads=torch.get_num_interop_threads(),
            torch_device=str(torch_models.DEVICE),
            torch_device_name=torch_models.device_name(),
        )
    return env


def _host_loops() -> bool | None:
    """Whether hessjax runs solver loops in Python here (``hessjax.loops``; None if absent)."""
    try:
        from hessjax import loops
    except ImportError:
        return None
    return bool(loops.host_loops())


def _git_state() -> str:
    """``<commit>`` of the checkout, ``+dirty`` when hessjax/ has uncommitted changes."""
    try:
        run = lambda *a: subprocess.run(
            ["git", *a], cwd=_REPO_ROOT, capture_output=True, text=True, check=True
        ).stdout.strip()
        dirty = run("status", "--porcelain", "--", "hessjax")
        return run("rev-parse", "--short", "HEAD") + ("+dirty" if dirty else "")
    except (OSError, subprocess.CalledProcessError):
        return "unknown"


def _cpu_model() -> str:
    try:
        for line in pathlib.Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or "unknown"


def start(args: argparse.Namespace, *, torch: bool) -> dict[str, Any]:
    """With ``torch``: pin PyTorch's threads to ``args.torch_threads`` and put its tensors on
    ``args.torch_device``; then log and return :func:`environment`."""
    threads = None
    if torch:
        from benchmarks import torch_models

        torch_models.use_device(getattr(args, "torch_device", "cpu"))
        threads = set_torch_threads(args.torch_threads)
    env = environment(threads)
    log(environment_line(env))
    return env


def environment_line(env: dict[str, Any]) -> str:
    torch_part = (
        f"; torch {env['torch']} on {env.get('torch_device', 'cpu')} "
        f"({env.get('torch_device_name', 'cpu')}) with "
        f"torch.set_num_threads({env['torch_threads']}), "
        f"OMP_WAIT_POLICY={env['OMP_WAIT_POLICY'] or '(unset)'}"
        if "torch" in env
        else ""
    )
    load = ", ".join(f"{v:.1f}" for v in env["load_average_1_5_15"])
    return (
        f"hessjax at git {env['git']} (host solver loops: {env['hessjax_host_loops']}). "
        f"CPU: {env['cpu_count']} cores ({env['cpu_model']}); jax {env['jax']} "
        f"({env['jax_backend']}: {', '.join(env['jax_devices'])}), {env['xla_threads']}, "
        f"XLA_FLAGS={env['XLA_FLAGS'] or '(unset)'}{torch_part}; load average at start {load} "
        "(the machine is shared)."
    )


# ----------------------------------------------------------------------------- timing


def block(tree: Any) -> Any:
    """Wait for every JAX array in ``tree`` and, when PyTorch runs on a GPU, for its queue."""
    out = jax.block_until_ready(tree)
    torch_models = sys.modules.get("benchmarks.torch_models")
    if torch_models is not None:
        torch_models.synchronize()
    return out


def timed(fn: Callable[[], Any]) -> tuple[float, Any]:
    """Wall seconds of one call of ``fn`` (JAX results are waited for) and its result."""
    start = time.perf_counter()
    out = block(fn())
    return time.perf_counter() - start, out


def per_call(fn: Callable[[], Any], number: int) -> float:
    """Mean wall seconds per call over ``number`` back-to-back calls."""
    start = time.perf_counter()
    for _ in range(number):
        block(fn())
    return (time.perf_counter() - start) / number


def median(xs: Sequence[float]) -> float:
    return float(statistics.median(xs))


# ----------------------------------------------------------------------------- trees


def tree_vdot(a: Any, b: Any) -> jax.Array:
    leaves = jax.tree_util.tree_leaves(jax.tree_util.tree_map(lambda x, y: jnp.vdot(x, y), a, b))
    return sum(leaves)


def tree_random_normal(key: jax.Array, like: Any) -> Any:
    leaves, treedef = jax.tree_util.tree_flatten(like)
    keys = jax.random.split(key, len(leaves))
    new = [jax.random.normal(k, x.shape, x.dtype) for k, x in zip(keys, leaves, strict=True)]
    return jax.tree_util.tree_unflatten(treedef, new)


def rel_diff(a: Any, b: Any) -> float:
    """``‖a − b‖ / ‖b‖`` over whole (flattened) arrays or pytrees."""
    fa = np.concatenate([np.ravel(np.asarray(x, np.float64)) for x in jax.tree_util.tree_leaves(a)])
    fb = np.concatenate([np.ravel(np.asarray(x, np.float64)) for x in jax.tree_util.tree_leaves(b)])
    return float(np.linalg.norm(fa - fb) / np.linalg.norm(fb))


def fingerprint(params: Any) -> str:
    """A short checksum of the weights (sum of squares, 9 digits) to match runs across scripts."""
    total = sum(np.sum(np.asarray(x, np.float64) ** 2) for x in jax.tree.leaves(params))
    return f"{float(total):.9g}"


# ----------------------------------------------------------------------------- M1 training


def train_m1(
    data_dir: str,
    *,
    num_train: int = 10_000,
    epochs: int = 1,
    batch_size: int = 128,
    lr: float = 0.02,
    momentum: float = 0.9,
    seed: int = 0,
) -> tuple[dict, dict[str, Any]]:
    """A partly trained M1: SGD + momentum on the first ``num_train`` MNIST training images.

    Deterministic in ``seed`` (init key and shuffling), so every benchmark that calls it with the
    same arguments gets the same weights (compare ``info["fingerprint"]``). Takes ~10-30 s here.
    """
    x, y = hessjax.data.load("mnist", "train", data_dir=data_dir, limit=num_train)
    model = models.get("m1")
    variables = models.init(model, jax.random.key(seed))
    params = variables["params"]
    opt = optax.sgd(lr, momentum=momentum)
    loss_fn = hessjax.make_loss_fn(model.apply, variables)

    @jax.jit
    def step(params, opt_state, batch):
        loss, grads = jax.value_and_grad(loss_fn)(params, batch)
        updates, opt_state = opt.update(grads, opt_state, params)
        return optax.apply_updates(params, updates), opt_state, loss

    opt_state = opt.init(params)
    rng = np.random.default_rng(seed)
    start = time.perf_counter()
    losses = []
    for _ in range(epochs):
        order = rng.permutation(len(x))
        for i in range(0, len(x) - batch_size + 1, batch_size):
            idx = order[i : i + batch_size]
            params, opt_state, loss = step(params, opt_state, (x[idx], y[idx]))
            losses.append(float(loss))
    train_s = time.perf_counter() - start
    x_test, y_test = hessjax.data.load("mnist", "test", data_dir=data_dir)
    logits = jax.jit(model.apply)({"params": params}, x_test)
    info = {
        "recipe": (
            f"M1, seed {seed}, optax.sgd(lr={lr}, momentum={momentum}), batch {batch_size}, "
            f"{epochs} epoch(s) on the first {num_train} MNIST training images"
        ),
        "steps": len(losses),
        "final_train_loss": float(np.mean(losses[-10:])),
        "test_accuracy": float(np.mean(np.argmax(np.asarray(logits), -1) == y_test)),
        "train_seconds": train_s,
        "fingerprint": fingerprint(params),
    }
    return {"params": params}, info


def trained_m1(args: argparse.Namespace) -> tuple[dict, dict[str, Any]]:
    """:func:`train_m1` as the options of ``add_run_args(..., trains_m1=True)`` say, logged."""
    log("training M1 ...")
    variables, info = train_m1(
        args.data_dir, num_train=args.train_images, epochs=args.train_epochs, seed=args.seed
    )
    log("trained:", info)
    return variables, info


# ----------------------------------------------------------------------------- training steps


class JaxLoop:
    """hessjax's ``TrainStep`` with its state threaded through calls (the step donates the
    state): ``loop(x, y)`` makes one update and returns ``(state, metrics)``."""

    def __init__(self, model, variables, tx, micro, seed, host_loops):
        self.step = hessjax.train.TrainStep(
            model.apply, tx, micro_batch_size=micro, host_loops=host_loops
        )
        self.state = hessjax.train.init_state(variables, tx, seed)

    def __call__(self, x, y):
        self.state, metrics = self.step(self.state, x, y)
        return self.state, metrics


def host_copy(tree: Any) -> Any:
    """A float64 host copy (a donating step invalidates views of its input buffers)."""
    return jax.tree_util.tree_map(lambda a: np.array(a, np.float64, copy=True), tree)


def momentum_trace(opt_state: Any) -> Any:
    """The momentum buffer of a ``hessjax.train.make_optimizer`` state (after step 1: the mean
    gradient)."""
    return opt_state.inner_state[0].trace


# ----------------------------------------------------------------------------- results


def portable(value: Any) -> Any:
    """``value`` with this checkout's absolute paths written relative to the repository root
    (``<root>/x`` -> ``x``, ``<root>/../shared/data`` -> ``../shared/data``), so recorded results
    name no path of the machine they ran on; non-strings unchanged."""
    if not isinstance(value, str):
        return value
    return value.replace(f"{_REPO_ROOT}/", "").replace(f"{_REPO_ROOT.parent}/", "../")


def command_line(module: str) -> str:
    """The command that reproduces this run (from the repository root)."""
    return portable(shlex.join(["python", "-m", module, *sys.argv[1:]]))


def run_module(
    name: str,
    argv: Sequence[str],
    *,
    env: dict[str, str] | None = None,
    timeout: float | None = None,
) -> dict[str, Any]:
    """Run ``python -m benchmarks.<name> *argv`` from the repository root (output streamed),
    with ``env`` added to the environment. Returns the command, ``status`` ("ok", "failed (exit
    N)" or "timed out after S s"), the wall seconds and, when it wrote one, the JSON of
    ``results/<--out>.json`` under ``"results"``."""
    cmd = [sys.executable, "-m", f"benchmarks.{name}", *argv]
    command = portable(shlex.join(["python", *cmd[1:]]))
    log(f"[{name}]", " ".join(f"{k}={v}" for k, v in (env or {}).items()), command)
    start = time.perf_counter()
    try:
        proc = subprocess.run(
            cmd, cwd=_REPO_ROOT, env={**os.environ, **(env or {})}, timeout=timeout, check=False
        )
        status = "ok" if proc.returncode == 0 else f"failed (exit {proc.returncode})"
    except subprocess.TimeoutExpired:
        status = f"timed out after {timeout:.0f} s"
    out = {"command": command, "status": status, "wall_seconds": time.perf_counter() - start}
    if status == "ok" and "--out" in argv:
        json_path = _results_path(argv[list(argv).index("--out") + 1]).with_suffix(".json")
        if json_path.exists():
            out["results"] = json.loads(json_path.read_text())
    return out


def footer(env: dict[str, Any], module: str) -> list[str]:
    """The last lines of every report: the environment and the command that reproduces it."""
    return ["", environment_line(env), "", f"Command: `{command_line(module)}`"]


def markdown_table(headers: Sequence[str], rows: Sequence[Sequence[Any]]) -> str:
    def cell(v):
        if isinstance(v, float):
            return f"{v:.4g}"
        return str(v)

    lines = ["| " + " | ".join(headers) + " |", "|" + "---|" * len(headers)]
    lines += ["| " + " | ".join(cell(v) for v in row) + " |" for row in rows]
    return "\n".join(lines)


def _atomic_write(path: pathlib.Path, text: str) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.")
    with os.fdopen(fd, "w") as f:
        f.write(text)
    os.replace(tmp, path)


def _results_path(stem: str) -> pathlib.Path:
    """``--out``: a bare name goes to ``results/``, a path is taken as given."""
    out = pathlib.Path(stem)
    return RESULTS_DIR / out if not out.is_absolute() and out.parent == pathlib.Path(".") else out


def write_results(stem: str, payload: dict[str, Any], markdown: str) -> tuple[str, str]:
    """``results/<stem>.json`` and ``results/<stem>.md``, written atomically."""
    out = _results_path(stem)
    json_path, md_path = out.with_suffix(".json"), out.with_suffix(".md")
    _atomic_write(json_path, json.dumps(payload, indent=2, default=_jsonable) + "\n")
    _atomic_write(md_path, markdown.rstrip() + "\n")
    return str(json_path), str(md_path)


def finish(
    module: str,
    args: argparse.Namespace,
    env: dict[str, Any],
    markdown: str,
    results: dict[str, Any],
    *,
    load_at_end: bool = False,
) -> None:
    """Write ``results/<args.out>.{json,md}`` (JSON: the command, the environment, with
    ``load_at_end`` the load average now, the arguments, then ``results``) and print the report."""
    payload: dict[str, Any] = {"command": command_line(module), "environment": env}
    if load_at_end:
        payload["environment_at_end"] = {"load_average_1_5_15": list(os.getloadavg())}
    payload.update(args={k: portable(v) for k, v in vars(args).items()}, **results)
    paths = write_results(args.out, payload, markdown)
    print(markdown)
    log("wrote", *paths)


def _jsonable(o: Any) -> Any:
    if isinstance(o, np.generic | jax.Array):
        return np.asarray(o).tolist()
    if isinstance(o, np.ndarray):
        return o.tolist()
    raise TypeError(f"not JSON serialisable: {type(o)}")
