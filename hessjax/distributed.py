"""Runs over several processes (``jax.distributed``): start-up, checks and gathering.

JAX runs one process per host (a multi-GPU node, several nodes under SLURM, a TPU pod slice); each
process sees its own devices, and a ``Mesh`` over ``jax.devices()`` spans all of them. hessjax's
contract on such a mesh (docs/design.md, "Several processes"):

* **Host (numpy) arrays are the global data, the same on every process** (every process reads
  the data set). Each process places only the rows of every batch that belong to its own devices
  (``jax.device_put`` to a global sharding), so no data moves between processes and the numbers
  equal a one-process run on the same number of devices.
* **Global ``jax.Array`` s** (e.g. from :func:`from_process_shards`, when each process has read
  only its own shard) are accepted as well; XLA moves rows where a batch needs them.
* Scalars, eigenvalues, traces, Hessian-vector products and per-sample results (input-gradient
  norms, input-Hessian eigenvalues, accuracies) come back complete and identical on every process.
* A mesh must span every process (a mesh of one process's devices is an error); ``mesh=None``
  means "this process alone" and works as on one machine.

:func:`initialize` starts the runtime with bounded time-outs; :func:`initialize_from_env` reads
what ``python -m hessjax.launch`` (:mod:`hessjax.launch`) sets.
"""

from __future__ import annotations

import os
import socket
import time
from typing import Any

import jax
import numpy as np
from jax.sharding import Mesh

#: Environment variables set by ``python -m hessjax.launch`` for each process it starts.
ENV_COORDINATOR = "HESSJAX_COORDINATOR_ADDRESS"
ENV_NUM_PROCESSES = "HESSJAX_NUM_PROCESSES"
ENV_PROCESS_ID = "HESSJAX_PROCESS_ID"

#: Seconds a process waits for the others at start-up, and without a peer's heartbeat, before it
#: stops with an error (JAX's defaults, 300 and 100, make a dead peer a long wait).
INITIALIZATION_TIMEOUT = 120
HEARTBEAT_TIMEOUT = 30


class StartupError(RuntimeError):
    """The processes could not start together (bad arguments, unreachable coordinator)."""


def initialize(
    coordinator_address: str | None,
    num_processes: int | None = None,
    process_id: int | None = None,
    *,
    initialization_timeout: int = INITIALIZATION_TIMEOUT,
    heartbeat_timeout: int = HEARTBEAT_TIMEOUT,
) -> None:
    """``jax.distributed.initialize`` with bounded time-outs; call before anything uses JAX.

    ``coordinator_address``: ``"host:port"`` of process 0, or ``"auto"`` for JAX's cluster
    detection (SLURM, Open MPI, TPU pods: ``num_processes`` and ``process_id`` then come from the
    cluster), or None to do nothing (one process). On CPU the collectives are gloo's.
    Raises :class:`StartupError` naming the address and the time-out if the processes cannot meet.
    """
    if coordinator_address is None:
        return
    if coordinator_address != "auto" and (num_processes is None or process_id is None):
        raise StartupError(
            f"coordinator_address={coordinator_address!r} needs num_processes and process_id "
            "(or use coordinator_address='auto' on a cluster JAX detects: SLURM, Open MPI, TPU)"
        )
    if num_processes is not None and process_id is not None:
        if not 0 <= process_id < num_processes:
            raise StartupError(f"process_id must be in [0, {num_processes}), got {process_id}")
    if coordinator_address != "auto" and process_id != 0:
        _wait_for_coordinator(coordinator_address, initialization_timeout)
    if os.environ.get("JAX_CPU_COLLECTIVES_IMPLEMENTATION") is None:
        jax.config.update("jax_cpu_collectives_implementation", "gloo")
    kw = dict(
        initialization_timeout=initialization_timeout, heartbeat_timeout_seconds=heartbeat_timeout
    )
    try:
        if coordinator_address == "auto":
            jax.distributed.initialize(**kw)
        else:
            jax.distributed.initialize(coordinator_address, num_processes, process_id, **kw)
    except Exception as e:  # jax raises XlaRuntimeError / RuntimeError / ValueError here
        raise StartupError(
            f"jax.distributed.initialize({coordinator_address!r}, num_processes={num_processes}, "
            f"process_id={process_id}) failed within {initialization_timeout} s: {e}. Check that "
            "every process was started with the same address and process count and that process "
            "0 is reachable at that address"
        ) from e


def _wait_for_coordinator(address: str, timeout: float) -> None:
    """Until ``timeout`` s: try to connect to process 0's coordinator at ``host:port``; a
    :class:`StartupError` if it never answers (JAX itself would abort the process)."""
    host, _, port = address.rpartition(":")
    if not host or not port.isdigit():
        raise StartupError(f"coordinator_address must be host:port, got {address!r}")
    deadline = time.monotonic() + timeout
    while True:
        try:
            with socket.create_connection((host.strip("[]"), int(port)), timeout=1.0):
                return
        except OSError as e:
            if time.monotonic() >= deadline:
                raise StartupError(
                    f"no coordinator answered at {address} within {timeout:g} s ({e}); start "
                    "process 0 with the same --coordinator_address (it listens there), or check "
                    "the host name and port"
                ) from e
            time.sleep(0.5)


def initialize_from_env() -> None:
    """:func:`initialize` from the variables ``python -m hessjax.launch`` sets (a no-op when
    they are absent)."""
    address = os.environ.get(ENV_COORDINATOR)
    if address:
        initialize(address, int(os.environ[ENV_NUM_PROCESSES]), int(os.environ[ENV_PROCESS_ID]))


def is_primary() -> bool:
    """True on the process that writes files (process 0)."""
    return jax.process_index() == 0


def spans_processes(mesh: Mesh | None) -> bool:
    """Whether ``mesh`` holds devices of more than one process."""
    if mesh is None:
        return False
    return len({d.process_index for d in mesh.devices.flat}) > 1


def check_mesh(mesh: Mesh | None) -> None:
    """ValueError if, with several processes, ``mesh`` leaves out some process's devices."""
    if mesh is None or jax.process_count() == 1:
        return
    covered = {d.process_index for d in mesh.devices.flat}
    if len(covered) != jax.process_count():
        missing = sorted(set(range(jax.process_count())) - covered)
        raise ValueError(
            f"the mesh holds devices of processes {sorted(covered)} but not of {missing}: with "
            f"{jax.process_count()} processes a mesh must span all of them, e.g. "
            "jax.make_mesh((jax.device_count(),), ('data',)); or pass mesh=None to compute on "
            "this process alone"
        )


def from_process_shards(local: Any, mesh: Mesh) -> Any:
    """Global arrays from each process's own rows (numpy, the same number on every process):
    the global data are the processes' rows in process order, split over ``mesh``'s devices."""
    from hessjax._internal import batch_sharding

    check_mesh(mesh)
    sizes = all_processes(np.array([_rows(local)]))
    if len(set(sizes.tolist())) > 1:
        raise ValueError(
            f"every process must hold the same number of rows; got {sizes.tolist()} (process "
            "order). Give each process N / num_processes rows"
        )
    sharding = batch_sharding(mesh)
    return jax.tree_util.tree_map(
        lambda a: jax.make_array_from_process_local_data(sharding, np.asarray(a)), local
    )


def gather(tree: Any) -> Any:
    """Every leaf complete on every process (numpy): a no-op on arrays every process already
    holds whole; others are gathered (``multihost_utils.process_allgather``)."""
    from jax.experimental import multihost_utils

    def whole(a):
        if not isinstance(a, jax.Array) or a.is_fully_addressable or a.is_fully_replicated:
            return np.asarray(a)
        return np.asarray(multihost_utils.process_allgather(a, tiled=True))

    return jax.tree_util.tree_map(whole, tree)


def _rows(tree: Any) -> int:
    return int(np.shape(jax.tree_util.tree_leaves(tree)[0])[0])


def all_processes(a: np.ndarray) -> np.ndarray:
    """``a`` of every process, stacked along axis 0 in process order (one small collective)."""
    if jax.process_count() == 1:
        return a
    from jax.experimental import multihost_utils

    return np.asarray(multihost_utils.process_allgather(a, tiled=True))


def barrier(name: str) -> None:
    """Wait until every process reaches ``name`` (no-op on one process)."""
    if jax.process_count() > 1:
        from jax.experimental import multihost_utils

        multihost_utils.sync_global_devices(name)


__all__ = [
    "all_processes",
    "barrier",
    "check_mesh",
    "from_process_shards",
    "gather",
    "initialize",
    "StartupError",
    "initialize_from_env",
    "is_primary",
    "spans_processes",
]
