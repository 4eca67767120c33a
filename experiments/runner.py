"""The one experiment runner: every study (batch sweep, robust training, Table 8) runs through it.

A study is an object that supplies only what is its own (see :class:`Study`): its runs, how one
run trains, what its analysis measures, its summary, table and figures. The runner does the rest,
the same way for every study:

1. validates the config before any work: the common fields (data set, model, limits), the
   study's own checks, the divisibility of every sharded batch by the device count, and the
   workdir (it must not hold another config's run); all problems in one :class:`ConfigError`;
2. loads the data (missing data fails here, before anything is written);
3. builds the device mesh (a 1-D ``Mesh`` over every device, axis ``"data"``, when
   ``config.data_parallel`` and there is more than one device) and hands it to the study;
4. runs every run not finished yet (``--analyze_only``: re-analyses every run from its
   checkpoint), logging elapsed time and an ETA per run and per phase;
5. after every run writes ``<workdir>/<run>/record.json`` and ``<workdir>/results.json``
   atomically, with one schema for every study::

       {"config": {...}, "runs": {name: record}, "summary": {...},
        "environment": {"jax_version", "backend", "devices", "device_count", "process_count",
                        "mesh", "git_revision"}}

   (a ``results.json`` that cannot be read is rebuilt from the per-run records);
6. writes ``table.md`` and ``figures/``.

``python experiments/<study>.py --config=experiments/configs/<name>.py[:scale] [--workdir=DIR]
[--analyze_only]`` runs a study (:func:`main`); a bad config or missing data ends with one message
and exit status 2, never a traceback.
"""

from __future__ import annotations

import contextlib
import dataclasses
import json
import logging
import os
import pathlib
import subprocess
import sys
import time
from collections.abc import Callable, Iterator, Sequence
from typing import Any, Protocol

import jax
import numpy as np
from jax.sharding import Mesh

from experiments import checks
from hessjax import data as hdata
from hessjax import distributed, linearized
from hessjax import models as hmodels
from hessjax import train as htrain

RESULTS = "results.json"
RECORD = "record.json"
#: Fields that may change between invocations on one workdir for every study.
ALWAYS_EXTENSIBLE = ("data_dir", "memory_budget_mb", "train_conv_implementation")


class ConfigError(ValueError):
    """A config, or a config with its workdir, that cannot run; the message lists every problem."""


class MissingCheckpoint(FileNotFoundError):
    """``--analyze_only`` on a run that has no checkpoint."""


@dataclasses.dataclass(frozen=True)
class Run:
    """One unit of a study: a name (its folder and key in ``results.json``), its settings, and
    the names of runs whose trained variables it starts from."""

    name: str
    settings: dict = dataclasses.field(default_factory=dict)
    needs: tuple[str, ...] = ()


class Study(Protocol):
    """What a study hands the runner."""

    name: str  # log prefix, e.g. "batch_sweep"
    extensible: tuple[str, ...]  # config fields that may change on an existing workdir

    def validate(self, config) -> list[str]: ...  # the study's own config problems

    def sharded_sizes(self, config) -> list[tuple[str, int]]: ...  # (what, size) split over mesh

    def runs(self, config) -> list[Run]: ...

    def train(self, ctx: Context, run: Run) -> tuple[Any, dict]: ...  # (variables, record)

    def analyze(self, ctx: Context, run: Run, variables: Any) -> dict: ...

    def summarize(self, config, runs: dict) -> dict: ...

    def table(self, config, results: dict) -> str: ...

    def figures(self, config, results: dict, folder: pathlib.Path) -> list[pathlib.Path]: ...


# ----------------------------------------------------------------------------- progress


def _clock(seconds: float) -> str:
    seconds = int(round(seconds))
    return f"{seconds // 3600:d}:{seconds // 60 % 60:02d}:{seconds % 60:02d}"


class Progress:
    """Log lines ``[study h:mm:ss] message`` with the elapsed time, and ETAs from durations seen
    so far: per run (mean of the finished runs of this invocation × runs left) and per phase
    (the same phase's last duration, in this invocation or recorded in an earlier one)."""

    def __init__(self, prefix: str, num_runs: int = 0, phase_seconds: dict | None = None):
        self.prefix, self.num_runs, self.started = prefix, num_runs, time.perf_counter()
        self.run_seconds: list[float] = []
        self.phase_seconds = dict(phase_seconds or {})

    def log(self, msg: str) -> None:
        if distributed.is_primary():  # one log for a run over several processes
            print(f"[{self.prefix} {_clock(time.perf_counter() - self.started)}] {msg}", flush=True)

    def eta(self) -> str:
        if not self.run_seconds:
            return ""
        left = self.num_runs - len(self.run_seconds)
        return f"; study ETA {_clock(np.mean(self.run_seconds) * left)}" if left else ""

    @contextlib.contextmanager
    def phase(self, label: str, timings: dict[str, float]) -> Iterator[None]:
        """Log the start (with the expected duration when known) and the end of a phase; its
        duration goes to ``timings[label]``."""
        known = self.phase_seconds.get(label)
        self.log(f"  {label} ..." + (f" (last time {known:.0f}s)" if known else ""))
        tic = time.perf_counter()
        yield
        timings[label] = seconds = time.perf_counter() - tic
        self.phase_seconds[label] = seconds
        self.log(f"  {label} done in {seconds:.1f}s")


# ----------------------------------------------------------------------------- context


@dataclasses.dataclass
class Context:
    """What a study's ``train`` and ``analyze`` get: the config, the workdir, the mesh (or None),
    the data (``{"train": (x, y), "test": (x, y)}``, numpy), the model, and logging."""

    study: Study
    config: Any
    workdir: pathlib.Path
    mesh: Mesh | None
    data: dict
    analyze_only: bool
    progress: Progress
    runs_by_name: dict[str, Run]
    #: Trained variables of the runs others start from (``Run.needs``), shared by the study's runs.
    dependencies: dict[str, Any] = dataclasses.field(default_factory=dict)
    timings: dict[str, float] = dataclasses.field(default_factory=dict)

    @property
    def model(self):
        """The module the analyses apply (XLA's convolutions: the fastest HVPs)."""
        return get_model(self.config.model)

    @property
    def train_model(self):
        """The same module (same parameters) with the config's ``train_conv_implementation``:
        what the training steps apply (hessjax.conv; docs/design.md)."""
        return get_model(self.config.model, self.config.get("train_conv_implementation", "xla"))

    def run_dir(self, name: str) -> pathlib.Path:
        path = self.workdir / name
        if distributed.is_primary():
            path.mkdir(parents=True, exist_ok=True)
        return path

    def save_array(self, run_name: str, filename: str, array) -> None:
        """``<workdir>/<run_name>/<filename>`` (``.npy``), written by process 0 only."""
        if distributed.is_primary():
            np.save(self.run_dir(run_name) / filename, np.asarray(array))

    def log(self, msg: str) -> None:
        self.progress.log(msg)

    def phase(self, label: str):
        """``with ctx.phase("attacks"): ...`` logs and times one part of a run."""
        return self.progress.phase(label, self.timings)

    def mesh_for(self, size: int) -> Mesh | None:
        """The mesh if ``size`` samples split evenly over it, else None (one device)."""
        return self.mesh if self.mesh is not None and size % self.mesh.size == 0 else None

    def fit_or_restore(self, run_name: str, step, state, **fit_kw):
        """Train run ``run_name`` on the training data with :func:`hessjax.train.fit` (checkpoints
        in ``<run>/ckpt``, per-epoch records in ``<run>/metrics.jsonl``, evaluation batches of
        ``config.eval_batch_size``; a finished run returns at once), or with ``--analyze_only``
        only restore its checkpoint. ``fit_kw``: ``batch_size``, ``num_epochs``, ``seed``, ...
        Returns a ``FitResult``."""
        run_dir = self.run_dir(run_name)
        ckpt = run_dir / "ckpt"
        if self.analyze_only:
            restored = htrain.restore(step, state, ckpt)
            if restored is None:
                raise MissingCheckpoint(f"--analyze_only: no checkpoint in {ckpt}; train it first")
            state, status, epoch = restored
            return htrain.FitResult(state, status, epoch, [])
        fit_kw.setdefault("eval_batch_size", self.config.eval_batch_size)
        x, y = self.data["train"]
        metrics = run_dir / "metrics.jsonl"
        return htrain.fit(step, state, x, y, workdir=ckpt, metrics_file=metrics, **fit_kw)

    def variables_of(self, name: str) -> Any:
        """Trained variables of run ``name`` (this invocation's, else restored: a finished run's
        ``train`` returns at once from its checkpoint)."""
        if name not in self.dependencies:
            self.log(f"  restoring {name} (needed by this run)")
            self.dependencies[name] = self.study.train(self, self.runs_by_name[name])[0]
        return self.dependencies[name]


# ----------------------------------------------------------------------------- pieces


_MODELS: dict[tuple[str, str], Any] = {}


def get_model(name: str, conv_implementation: str = "xla"):
    """One module object per model name and convolution kernel (:mod:`hessjax.conv`), so jitted
    analyses and training steps (static ``apply_fn``) compile once for all runs of a study."""
    key = (name, conv_implementation)
    if key not in _MODELS:
        _MODELS[key] = hmodels.get(name, conv_implementation=conv_implementation)
    return _MODELS[key]


def config_dict(config) -> dict:
    """The config as plain JSON types."""
    raw = config.to_dict() if hasattr(config, "to_dict") else dict(config)
    return json.loads(json.dumps(raw))


def make_mesh(config) -> Mesh | None:
    """A 1-D ``Mesh`` over every device (axis ``"data"``) when ``config.data_parallel`` (default
    True) and there is more than one device; else None."""
    devices = jax.devices()
    if not config.get("data_parallel", True) or len(devices) == 1:
        return None
    return Mesh(np.array(devices), ("data",))


def num_devices(config) -> int:
    return jax.device_count() if config.get("data_parallel", True) else 1


def load_data(config) -> dict[str, tuple[np.ndarray, np.ndarray]]:
    """``{"train": (x, y), "test": (x, y)}``; unreadable files become a :class:`ConfigError`
    (missing ones raise ``hessjax.data.DataNotFoundError``, naming the fixes)."""
    try:
        return {
            split: hdata.load(config.dataset, split, config.data_dir, limit=config.get(limit))
            for split, limit in (("train", "train_limit"), ("test", "test_limit"))
        }
    except ValueError as e:
        raise ConfigError(f"cannot read the {config.dataset} data: {e}") from e


def _git_revision() -> str | None:
    try:
        out = subprocess.run(
            ["git", "rev-parse", "--short", "HEAD"],
            cwd=pathlib.Path(__file__).resolve().parent,
            capture_output=True,
            text=True,
            timeout=10,
        )
    except (OSError, subprocess.SubprocessError):
        return None
    return out.stdout.strip() or None if out.returncode == 0 else None


def environment(mesh: Mesh | None) -> dict:
    return {
        "jax_version": jax.__version__,
        "backend": jax.default_backend(),
        "devices": [str(d) for d in jax.devices()],
        "device_count": jax.device_count(),
        "process_count": jax.process_count(),
        "mesh": None if mesh is None else dict(mesh.shape),
        "git_revision": _git_revision(),
    }


def write_json(path: str | os.PathLike, obj: Any) -> None:
    """Atomic: write ``path.tmp`` then ``os.replace``; process 0 only (see ``write_text``)."""
    if not distributed.is_primary():
        return
    path = pathlib.Path(path)
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(json.dumps(obj, indent=1, allow_nan=True))
    os.replace(tmp, path)


def _read_records(workdir: pathlib.Path, log: Callable[[str], None]) -> dict[str, dict]:
    runs = {}
    for rec in sorted(workdir.glob(f"*/{RECORD}")):
        try:
            runs[rec.parent.name] = json.loads(rec.read_text())
        except (json.JSONDecodeError, UnicodeDecodeError):
            log(f"  {rec} is unreadable: that run will be redone")
    return runs


def load_results(workdir: pathlib.Path, log: Callable[[str], None]) -> dict:
    """``results.json`` of ``workdir``, completed by the per-run ``*/record.json`` it lacks (a
    run killed between writing its record and the results); if ``results.json`` cannot be read,
    it is rebuilt from those records."""
    path = workdir / RESULTS
    results = {"runs": {}}
    if path.exists():
        problem = None
        try:
            results = json.loads(path.read_text())
            if not isinstance(results, dict) or not isinstance(results.get("runs"), dict):
                problem, results = "it has no 'runs' object", {"runs": {}}
        except (json.JSONDecodeError, UnicodeDecodeError) as e:
            problem = f"{type(e).__name__}: {e}"
        if problem:
            log(
                f"{path} is unreadable ({problem}); rebuilding it from the per-run records "
                f"({workdir}/<run>/{RECORD})"
            )
    for name, record in _read_records(workdir, log).items():
        results["runs"].setdefault(name, record)
    return results


def write_text(path: pathlib.Path, text: str) -> None:
    """``path.write_text(text)`` on process 0 only: in a run over several processes every
    process computes the same results and only the first writes them."""
    if distributed.is_primary():
        path.write_text(text)


def _fingerprint(config: dict, extensible: Sequence[str]) -> dict:
    return {k: v for k, v in config.items() if k not in extensible}


def workdir_errors(config, workdir: pathlib.Path, extensible: Sequence[str]) -> list[str]:
    """A workdir whose ``config.json`` differs from ``config`` outside ``extensible`` fields."""
    path = workdir / "config.json"
    if not path.exists():
        return []
    try:
        old = json.loads(path.read_text())
    except json.JSONDecodeError as e:
        return [f"{path} is unreadable ({e}); delete it (the config is rewritten) or the workdir"]
    new = config_dict(config)
    keep = tuple(extensible) + ALWAYS_EXTENSIBLE
    if _fingerprint(old, keep) == _fingerprint(new, keep):
        return []
    diff = sorted(k for k in set(old) | set(new) if k not in keep and old.get(k) != new.get(k))
    return [
        f"workdir {workdir} holds the run of another config (config {old.get('name')!r}; fields "
        f"differing: {', '.join(diff)}); pass a fresh --workdir or delete that one"
    ]


def validate(study: Study, config, workdir: pathlib.Path | None = None) -> None:
    """Raise one :class:`ConfigError` listing every problem of ``config`` for ``study``."""
    errors = checks.common_errors(config) + list(study.validate(config))
    devices = num_devices(config)
    if devices > 1:
        for what, size in study.sharded_sizes(config):
            if isinstance(size, int) and size % devices:
                errors.append(
                    f"{what}: {size} samples cannot be split over {devices} devices; use a "
                    f"multiple of {devices} (or data_parallel=False)"
                )
    if jax.process_count() > 1 and not config.get("data_parallel", True):
        errors.append(
            f"data_parallel=False with {jax.process_count()} processes would run every process "
            "alone on the same work; keep data_parallel=True or run one process"
        )
    if workdir is not None:
        errors += workdir_errors(config, workdir, study.extensible)
    if errors:
        raise ConfigError(f"invalid config {config.get('name')!r}:\n  - " + "\n  - ".join(errors))


# ----------------------------------------------------------------------------- the loop


def _previous_phase_seconds(runs: dict) -> dict[str, float]:
    out: dict[str, float] = {}
    for record in runs.values():
        out.update(record.get("seconds", {}))
    return out


def run(study: Study, config, workdir: str | os.PathLike | None = None, analyze_only=False):
    """Run ``study`` on ``config`` in ``workdir`` (default ``runs/<config.name>``); returns the
    results dict (also in ``<workdir>/results.json``). Finished runs are skipped;
    ``analyze_only`` re-analyses every run that has a checkpoint, without training."""
    workdir = pathlib.Path(workdir or os.path.join("runs", config.name))
    validate(study, config, workdir)
    all_runs = study.runs(config)
    progress = Progress(study.name)
    results = load_results(workdir, progress.log)
    done = results["runs"]
    pending = [r for r in all_runs if analyze_only or r.name not in done]
    data = load_data(config) if pending else None  # missing data fails here, before any write
    if distributed.is_primary():
        workdir.mkdir(parents=True, exist_ok=True)
    write_json(workdir / "config.json", config_dict(config))
    mesh = make_mesh(config)
    results.update(config=config_dict(config), environment=environment(mesh))
    progress.num_runs = len(pending)
    progress.phase_seconds = _previous_phase_seconds(done)
    devices = "1 device" if mesh is None else f"a mesh of {mesh.size} devices"
    if jax.process_count() > 1:
        devices += f" over {jax.process_count()} processes"
    progress.log(
        f"{config.name}: {len(all_runs)} runs, {len(all_runs) - len(pending)} already done, "
        f"in {workdir}, on {devices}"
    )
    runs_by_name = {r.name: r for r in all_runs}
    needed = {name for r in all_runs for name in r.needs}
    budget_mb = config.get("memory_budget_mb")
    budget = linearized.memory_budget_scope(None if budget_mb is None else budget_mb * 2**20)
    dependencies: dict[str, Any] = {}  # kept in memory only for the runs others start from
    with budget, _library_log(progress):
        for i, item in enumerate(pending, 1):
            ctx = Context(
                study,
                config,
                workdir,
                mesh,
                data,
                analyze_only,
                progress,
                runs_by_name,
                dependencies,
            )
            verb = "restoring" if analyze_only else "training"
            progress.log(f"[{i}/{len(pending)}] {item.name}: {verb}{progress.eta()}")
            tic = time.perf_counter()
            try:
                with ctx.phase("training" if not analyze_only else "restoring"):
                    variables, trained = study.train(ctx, item)
            except MissingCheckpoint as e:
                progress.log(f"  skipped: {e}")
                progress.run_seconds.append(time.perf_counter() - tic)
                continue
            if item.name in needed:
                dependencies[item.name] = variables
            record = dict(done.get(item.name, {}), **trained)
            if record.get("status") == "diverged":
                progress.log(f"  {item.name} diverged; recorded, not analysed")
            else:
                record.update(study.analyze(ctx, item, variables))
            record["seconds"] = dict(record.get("seconds", {}), **ctx.timings)
            write_json(ctx.run_dir(item.name) / RECORD, record)
            done[item.name] = record
            results["summary"] = study.summarize(config, done)
            write_json(workdir / RESULTS, results)
            progress.run_seconds.append(time.perf_counter() - tic)
            progress.log(f"  {item.name} finished in {_clock(progress.run_seconds[-1])}")
    results["runs"] = {r.name: done[r.name] for r in all_runs if r.name in done}
    results["summary"] = study.summarize(config, results["runs"])
    write_json(workdir / RESULTS, results)
    write_text(workdir / "table.md", study.table(config, results))
    figures = []
    if distributed.is_primary():
        figures = study.figures(config, results, workdir / "figures")
    progress.log(f"wrote {workdir / RESULTS}, {workdir / 'table.md'} and {len(figures)} figures")
    return results


# ----------------------------------------------------------------------------- command line


@contextlib.contextmanager
def _library_log(progress: Progress) -> Iterator[None]:
    """The library's INFO lines (logger ``"hessjax"``: e.g. which Hessian operator it chose) as
    progress lines while a study runs."""
    logger = logging.getLogger("hessjax")

    class ToProgress(logging.Handler):
        def emit(self, record):
            progress.log(f"  [hessjax] {record.getMessage()}")

    handler, level, propagate = ToProgress(logging.INFO), logger.level, logger.propagate
    logger.addHandler(handler)
    logger.setLevel(logging.INFO)
    logger.propagate = False  # not twice (absl's handler on the root logger)
    try:
        yield
    finally:
        logger.removeHandler(handler)
        logger.setLevel(level)
        logger.propagate = propagate


def _env_int(name: str) -> int | None:
    value = os.environ.get(name)
    return int(value) if value else None


def main(study: Study) -> None:
    """``python experiments/<study>.py --config=... [--workdir=...] [--analyze_only]``."""
    from absl import app, flags, logging
    from ml_collections import config_flags

    config_flags.DEFINE_config_file("config", None, "experiments/configs/<name>.py[:scale]")
    flags.DEFINE_string("workdir", None, "output folder (default runs/<config.name>)")
    flags.DEFINE_bool("analyze_only", False, "re-run the analyses on the saved checkpoints only")
    flags.DEFINE_string(
        "coordinator_address",
        os.environ.get(distributed.ENV_COORDINATOR),
        "several processes: host:port of process 0, or 'auto' (SLURM, Open MPI, TPU pods)",
    )
    flags.DEFINE_integer(
        "num_processes", _env_int(distributed.ENV_NUM_PROCESSES), "several processes: how many"
    )
    flags.DEFINE_integer(
        "process_id", _env_int(distributed.ENV_PROCESS_ID), "several processes: this one's id"
    )
    flags.mark_flags_as_required(["config"])

    def _main(argv):
        if len(argv) > 1:
            raise app.UsageError(f"unexpected arguments: {argv[1:]}")
        logging.set_verbosity(logging.WARNING)  # orbax logs every checkpoint step at INFO
        f = flags.FLAGS
        try:
            # Before anything uses JAX: the processes meet here (bounded time-outs).
            distributed.initialize(f.coordinator_address, f.num_processes, f.process_id)
            run(study, f.config, f.workdir, analyze_only=f.analyze_only)
        except (ConfigError, hdata.DataNotFoundError, distributed.StartupError) as e:
            print(f"[{study.name}] error: {e}", file=sys.stderr, flush=True)
            sys.exit(2)

    app.run(_main)
