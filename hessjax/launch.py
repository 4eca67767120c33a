"""Start a command as several JAX processes on this machine (CPU collectives), for trying and
testing multi-process runs::

    python -m hessjax.launch -n 2 --devices-per-process 2 -- \\
        python experiments/batch_sweep.py --config=experiments/configs/m1.py:smoke

Each process gets ``JAX_NUM_CPU_DEVICES``, gloo collectives and the coordinator address, process
count and id (``HESSJAX_*`` variables, read by :func:`hessjax.distributed.initialize_from_env`
and by the experiments). Every output line is prefixed with ``[p<id>]``. If a process fails, the
others are stopped and the launcher exits with the failing process's exit code after repeating
its last lines; Ctrl-C stops them all. On a real cluster use its own launcher (srun, mpirun, the
TPU runtime) with ``--coordinator_address``; see README, "Several processes".
"""

from __future__ import annotations

import argparse
import collections
import os
import signal
import socket
import subprocess
import sys
import threading
import time

from hessjax import distributed

#: Seconds the other processes get to exit after SIGTERM before they are killed.
GRACE_SECONDS = 5.0


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def process_env(process_id: int, num_processes: int, port: int, devices: int) -> dict[str, str]:
    env = dict(os.environ)
    env.update(
        {
            distributed.ENV_COORDINATOR: f"127.0.0.1:{port}",
            distributed.ENV_NUM_PROCESSES: str(num_processes),
            distributed.ENV_PROCESS_ID: str(process_id),
            "JAX_NUM_CPU_DEVICES": str(devices),
            "JAX_PLATFORMS": env.get("JAX_PLATFORMS", "cpu"),
            "JAX_CPU_COLLECTIVES_IMPLEMENTATION": "gloo",
            "PYTHONUNBUFFERED": "1",
        }
    )
    # A forced host device count would override JAX_NUM_CPU_DEVICES.
    flags = [f for f in env.get("XLA_FLAGS", "").split() if "host_platform_device_count" not in f]
    env["XLA_FLAGS"] = " ".join(flags)
    return env


def _relay(proc: subprocess.Popen, prefix: str, tail: collections.deque, lock: threading.Lock):
    for line in proc.stdout:
        tail.append(line)
        with lock:
            sys.stdout.write(f"{prefix} {line}")
            sys.stdout.flush()


def _stop(procs: list[subprocess.Popen]) -> None:
    for p in procs:
        if p.poll() is None:
            p.send_signal(signal.SIGTERM)
    deadline = time.monotonic() + GRACE_SECONDS
    for p in procs:
        try:
            p.wait(max(0.0, deadline - time.monotonic()))
        except subprocess.TimeoutExpired:
            p.kill()
            p.wait()


def launch(command: list[str], num_processes: int, devices_per_process: int) -> int:
    """Run ``command`` as ``num_processes`` processes; the exit code of the first to fail, else
    0."""
    port = free_port()
    lock = threading.Lock()
    procs, tails, relays = [], [], []
    for i in range(num_processes):
        env = process_env(i, num_processes, port, devices_per_process)
        p = subprocess.Popen(
            command, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True
        )
        tail = collections.deque(maxlen=30)
        t = threading.Thread(target=_relay, args=(p, f"[p{i}]", tail, lock), daemon=True)
        t.start()
        procs.append(p)
        tails.append(tail)
        relays.append(t)
    failed = None
    try:
        while failed is None and any(p.poll() is None for p in procs):
            for i, p in enumerate(procs):
                if p.poll() not in (None, 0):
                    failed = i
                    break
            time.sleep(0.2)
        if failed is None:
            failed = next((i for i, p in enumerate(procs) if p.returncode), None)
    except KeyboardInterrupt:
        _stop(procs)
        print("hessjax.launch: interrupted; stopped every process", file=sys.stderr)
        return 130
    if failed is not None:
        _stop(procs)
    for t in relays:
        t.join(timeout=2)
    if failed is None:
        return 0
    code = procs[failed].returncode
    others = [i for i in range(num_processes) if i != failed]
    msg = (
        f"hessjax.launch: process {failed} of {num_processes} failed (exit {code}); stopped "
        f"processes {others}. Last lines of process {failed}:\n" + "".join(tails[failed])
    )
    print(msg, file=sys.stderr)
    return code if code and code > 0 else 1


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m hessjax.launch",
        description="Run COMMAND as several JAX processes on this machine (CPU devices).",
    )
    parser.add_argument("-n", "--num-processes", type=int, default=2)
    parser.add_argument("--devices-per-process", type=int, default=1)
    parser.add_argument("command", nargs=argparse.REMAINDER, help="-- COMMAND [ARGS...]")
    args = parser.parse_args(argv)
    command = args.command[1:] if args.command[:1] == ["--"] else args.command
    if not command:
        parser.error("give the command after --, e.g. -- python experiments/batch_sweep.py ...")
    if args.num_processes < 1 or args.devices_per_process < 1:
        parser.error("-n and --devices-per-process must be >= 1")
    return launch(command, args.num_processes, args.devices_per_process)


if __name__ == "__main__":
    sys.exit(main())
