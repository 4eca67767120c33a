"""Library calls on a mesh over every device of every process; prints one JSON line of results.

Run by tests/test_multiprocess.py once as 1 process with 4 fake CPU devices and once as 2
processes x 2 CPU devices (``python -m hessjax.launch``); the two outputs must agree. Argument:
the output file prefix (each process writes ``<prefix>.p<process id>``, to check that every
process gets the same values).
"""

import json
import sys

import jax

from hessjax import distributed

distributed.initialize_from_env()
jax.config.update("jax_enable_x64", True)

import jax.numpy as jnp  # noqa: E402
import numpy as np  # noqa: E402
from nets import SmallCNN, init_with_random_bn, random_data  # noqa: E402

import hessjax  # noqa: E402
from hessjax import attacks, evaluation  # noqa: E402
from hessjax import train as htrain  # noqa: E402

mesh = jax.make_mesh((jax.device_count(),), ("data",))  # Explicit axes: must work too
model = SmallCNN()
x, y = random_data(0, 36, (6, 6, 1), 3)  # every process holds the whole (small) data set
variables = init_with_random_bn(model, jax.random.key(0), jnp.asarray(x[:2]))
loss_fn = hessjax.make_loss_fn(model.apply, variables)
params = variables["params"]

out = {}
op = hessjax.hessian_operator(loss_fn, params, (x, y), batch_size=8, mesh=mesh)
v = jax.tree_util.tree_map(lambda p: jnp.ones_like(p) / p.size, params)
out["hvp"] = np.asarray(jax.flatten_util.ravel_pytree(op(v))[0]).tolist()
top = hessjax.eigenvalues(op, params, k=3, key=jax.random.key(1), tol=1e-8)
out["top3"] = np.asarray(top.values).tolist()
out["trace"] = float(hessjax.trace(op, params, num_samples=4, key=jax.random.key(2)))
grid, dens = hessjax.density(op, params, num_steps=8, num_runs=2, key=jax.random.key(3))
out["density"] = np.asarray(dens).tolist()
out["evaluate"] = list(evaluation.evaluate(model.apply, variables, x, y, 8, mesh=mesh))
lam = hessjax.input_hessian_eigenvalues(model.apply, variables, x, y, batch_size=8, mesh=mesh)
out["input_lambda_max"] = np.asarray(lam).tolist()
out["fgsm_accuracy"] = attacks.adversarial_accuracy(
    model.apply, variables, x, y, "fgsm", [0.05, 0.2], clip=(-3.0, 3.0), batch_size=8, mesh=mesh
).tolist()
tx = htrain.make_optimizer(0.05)
step = htrain.TrainStep(model.apply, tx, micro_batch_size=4, mesh=mesh)
state = step.replicate(htrain.init_state(variables, tx, 0))
state, metrics = step(state, x[:8], y[:8])
out["train_loss"] = float(metrics["loss"])
out["trained"] = np.asarray(jax.flatten_util.ravel_pytree(state.params)[0][:20]).tolist()
# Each process holding only its own rows (a contiguous block), as global arrays.
rows = len(y) // jax.process_count()
mine = slice(jax.process_index() * rows, (jax.process_index() + 1) * rows)
shards = hessjax.distributed.from_process_shards((x[mine], y[mine]), mesh)
op_shards = hessjax.hessian_operator(loss_fn, params, shards, batch_size=8, mesh=mesh)
out["hvp_from_shards"] = np.asarray(jax.flatten_util.ravel_pytree(op_shards(v))[0]).tolist()
out["evaluate_from_shards"] = list(
    evaluation.evaluate(model.apply, variables, *shards, 8, mesh=mesh)
)
try:
    local = jax.make_mesh((jax.local_device_count(),), ("data",), devices=jax.local_devices())
    hessjax.hessian_operator(loss_fn, params, (x, y), batch_size=8, mesh=local)
    out["local_mesh_error"] = ""  # a mesh of this process's devices is fine on one process
except ValueError as e:
    out["local_mesh_error"] = str(e)
out["process_count"] = jax.process_count()
with open(f"{sys.argv[1]}.p{jax.process_index()}", "w") as f:  # every process's own view
    json.dump(out, f)
print("WORKER_OK", jax.process_index(), flush=True)
