"""Several JAX processes on this machine (``python -m hessjax.launch``, gloo collectives):
the library on 2 processes x 2 CPU devices equals 1 process with 4 devices; the launcher stops
every process when one fails; bad start-up arguments and meshes are clear errors."""

import json
import os
import pathlib
import re
import subprocess
import sys
import time

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from nets import MLP, random_data

import hessjax
from hessjax import distributed

TESTS = pathlib.Path(__file__).resolve().parent
WORKER = TESTS / "multiprocess_worker.py"


def _env(**extra) -> dict:
    env = dict(os.environ, JAX_PLATFORMS="cpu", **extra)
    env["PYTHONPATH"] = os.pathsep.join([str(TESTS), str(TESTS.parent)])
    return env


@pytest.mark.slow
def test_library_on_two_processes_equals_one_process_with_four_devices(tmp_path):
    one, two = tmp_path / "one.json", tmp_path / "two.json"
    single = subprocess.run(
        [sys.executable, str(WORKER), str(one)],
        env=_env(XLA_FLAGS="--xla_force_host_platform_device_count=4"),
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert single.returncode == 0, single.stderr[-3000:]
    launch = [sys.executable, "-m", "hessjax.launch", "-n", "2", "--devices-per-process", "2"]
    multi = subprocess.run(
        [*launch, "--", sys.executable, str(WORKER), str(two)],
        env=_env(),
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert multi.returncode == 0, (multi.stdout + multi.stderr)[-3000:]
    assert "[p0] WORKER_OK 0" in multi.stdout and "[p1] WORKER_OK 1" in multi.stdout
    a, b = (
        json.loads(pathlib.Path(f"{one}.p0").read_text()),
        json.loads(pathlib.Path(f"{two}.p0").read_text()),
    )
    b1 = json.loads(pathlib.Path(f"{two}.p1").read_text())
    b1.pop("local_mesh_error")
    assert b1 == {k: v for k, v in b.items() if k != "local_mesh_error"}  # same on every process
    assert (a.pop("process_count"), b.pop("process_count")) == (1, 2)
    assert a.pop("local_mesh_error") == ""  # one process: a mesh of its devices is fine
    assert "must span all of them" in b.pop("local_mesh_error")
    assert set(a) == set(b)
    for key in a:  # HVP, top-3, trace, density, evaluation, input Hessian, FGSM, training step
        np.testing.assert_allclose(b[key], a[key], rtol=1e-5, atol=1e-12, err_msg=key)
    # The same operator built from each process's own rows equals the one from the full data.
    np.testing.assert_allclose(b["hvp_from_shards"], a["hvp"], rtol=1e-5, atol=1e-12)
    np.testing.assert_allclose(b["evaluate_from_shards"], a["evaluate"], rtol=1e-5)


def test_launcher_stops_the_others_when_one_process_fails():
    script = (
        "import os, sys, time\n"
        "pid = os.environ['HESSJAX_PROCESS_ID']\n"
        "print('started', pid, os.environ['JAX_NUM_CPU_DEVICES'], flush=True)\n"
        "if pid == '1':\n"
        "    sys.exit('process 1 cannot go on')\n"
        "time.sleep(120)\n"
    )
    tic = time.time()
    out = subprocess.run(
        [sys.executable, "-m", "hessjax.launch", "-n", "2", "--devices-per-process", "3", "--"]
        + [sys.executable, "-c", script],
        env=_env(),
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert time.time() - tic < 30  # process 0 would sleep 120 s if it were not stopped
    assert out.returncode == 1
    assert "[p0] started 0 3" in out.stdout and "[p1] started 1 3" in out.stdout
    assert "process 1 of 2 failed (exit 1)" in out.stderr
    assert "process 1 cannot go on" in out.stderr  # the failing process's last lines


def test_launcher_without_a_command_is_a_usage_error():
    out = subprocess.run(
        [sys.executable, "-m", "hessjax.launch", "-n", "2"],
        env=_env(),
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert out.returncode == 2 and "give the command after --" in out.stderr


@pytest.mark.parametrize(
    "args, message",
    [
        (("127.0.0.1:1234", None, 0), "needs num_processes and process_id"),
        (("127.0.0.1:1234", 2, 2), "process_id must be in [0, 2)"),
    ],
)
def test_bad_start_up_arguments_are_clear_errors(args, message):
    with pytest.raises(distributed.StartupError, match=re.escape(message)):
        distributed.initialize(*args)


def test_one_process_start_up_is_a_no_op_and_everything_is_primary():
    distributed.initialize(None)
    assert distributed.is_primary()
    distributed.check_mesh(jax.make_mesh((1,), ("data",)))  # one process: any mesh spans it
    assert not distributed.spans_processes(jax.make_mesh((1,), ("data",)))


def test_a_mesh_from_jax_make_mesh_with_explicit_axes_works():
    """jax.make_mesh gives Explicit axes; the operator used to fail at its first HVP."""
    model = MLP()
    x, y = random_data(0, 12, (4,), 3)
    variables = model.init(jax.random.key(0), jnp.asarray(x[:1]))
    loss_fn = hessjax.make_loss_fn(model.apply, variables)
    params = variables["params"]
    mesh = jax.make_mesh((1,), ("data",))
    assert all(t == jax.sharding.AxisType.Explicit for t in mesh.axis_types)
    v = jax.tree_util.tree_map(jnp.ones_like, params)
    plain = hessjax.hessian_operator(loss_fn, params, (x, y), batch_size=5)(v)
    meshed = hessjax.hessian_operator(loss_fn, params, (x, y), batch_size=5, mesh=mesh)(v)
    flat = lambda t: np.asarray(jax.flatten_util.ravel_pytree(t)[0])
    np.testing.assert_allclose(flat(meshed), flat(plain), rtol=1e-12)
    acc = hessjax.evaluation.evaluate(model.apply, variables, x, y, 5, mesh=mesh)
    np.testing.assert_allclose(acc, hessjax.evaluation.evaluate(model.apply, variables, x, y, 5))


def test_an_unreachable_coordinator_is_a_clear_error_within_the_time_out():
    tic = time.time()
    with pytest.raises(distributed.StartupError, match="no coordinator answered at 127.0.0.1:1"):
        distributed.initialize("127.0.0.1:1", 2, 1, initialization_timeout=3)
    assert time.time() - tic < 10


DIES = """
import os, sys, time
import numpy as np
from hessjax import distributed
pid = int(sys.argv[1])
distributed.initialize(f"127.0.0.1:{sys.argv[2]}", 2, pid)
from jax.experimental import multihost_utils
print(pid, "up", flush=True)
if pid == 1:
    os._exit(9)  # dies without a word while process 0 goes on with collectives
for i in range(3000):
    multihost_utils.process_allgather(np.array([i]))
    time.sleep(0.1)
"""


@pytest.mark.slow
def test_a_dead_process_stops_the_others_within_the_heartbeat_time_out(tmp_path):
    """Without the launcher: process 0 ends with JAX's message naming the dead task."""
    from hessjax.launch import free_port

    script = tmp_path / "dies.py"
    script.write_text(DIES)
    port = str(free_port())
    env = _env(JAX_NUM_CPU_DEVICES="1")
    other = subprocess.Popen([sys.executable, str(script), "1", port], env=env)
    tic = time.time()
    out = subprocess.run(
        [sys.executable, str(script), "0", port],
        env=env,
        capture_output=True,
        text=True,
        timeout=distributed.HEARTBEAT_TIMEOUT + 90,
    )
    other.wait(timeout=30)
    assert out.returncode != 0
    assert time.time() - tic < distributed.HEARTBEAT_TIMEOUT + 60
    assert "stopped sending heartbeats" in out.stderr, out.stderr[-2000:]
