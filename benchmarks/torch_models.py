"""PyTorch twins of hessjax's M1 and C1 (hessjax/models.py), and weight copying from Flax.

Layouts: Flax convs are NHWC with HWIO kernels, PyTorch convs NCHW with OIHW kernels; Flax Dense
kernels are ``(in, out)``, PyTorch Linear weights ``(out, in)``; and the first FC layer sees the
activations flattened in (h, w, c) order in Flax but (c, h, w) in PyTorch, so its input axis is
permuted. BatchNorm: Flax ``scale/bias`` + ``batch_stats.mean/var`` = PyTorch
``weight/bias`` + ``running_mean/running_var``; both use eps 1e-5. Call ``model.eval()`` (done by
:func:`from_flax`) so BatchNorm uses the running statistics, as ``model.apply(variables, x)`` does.

Device: every tensor made here (:func:`from_flax`, :func:`to_nchw`, :func:`labels`,
:func:`tensor`) lives on :data:`DEVICE`, the CPU unless :func:`use_device` chose another (the
benchmarks' ``--torch-device``: ``auto`` = CUDA when PyTorch sees a GPU); :func:`synchronize`
waits for it, so wall-clock timings of CUDA work are complete.
"""

from __future__ import annotations

import contextlib
from typing import Any

import numpy as np
import torch
from torch import nn


class M1(nn.Module):
    """conv5x5/20 s2 p2, ReLU, conv5x5/50 s2 p2, ReLU, FC 2450-500, ReLU, FC 500-10."""

    #: (H, W, C) of the activations flattened before the first FC layer.
    FLATTEN_HWC = (7, 7, 50)

    def __init__(self, num_classes: int = 10):
        super().__init__()
        self.conv1 = nn.Conv2d(1, 20, 5, stride=2, padding=2)
        self.conv2 = nn.Conv2d(20, 50, 5, stride=2, padding=2)
        self.fc1 = nn.Linear(2450, 500)
        self.fc2 = nn.Linear(500, num_classes)

    def forward(self, x):
        x = torch.relu(self.conv1(x))
        x = torch.relu(self.conv2(x))
        x = torch.relu(self.fc1(x.flatten(1)))
        return self.fc2(x)


class C1(nn.Module):
    """2 x [conv5x5/64 s1 p2, ReLU, BN, maxpool3 s2 p1], FC 4096-384-192-10 with ReLUs."""

    FLATTEN_HWC = (8, 8, 64)

    def __init__(self, num_classes: int = 10):
        super().__init__()
        self.conv1 = nn.Conv2d(3, 64, 5, padding=2)
        self.bn1 = nn.BatchNorm2d(64, eps=1e-5, momentum=0.1)
        self.conv2 = nn.Conv2d(64, 64, 5, padding=2)
        self.bn2 = nn.BatchNorm2d(64, eps=1e-5, momentum=0.1)
        self.pool = nn.MaxPool2d(3, stride=2, padding=1)
        self.fc1 = nn.Linear(4096, 384)
        self.fc2 = nn.Linear(384, 192)
        self.fc3 = nn.Linear(192, num_classes)

    def forward(self, x):
        x = self.pool(self.bn1(torch.relu(self.conv1(x))))
        x = self.pool(self.bn2(torch.relu(self.conv2(x))))
        x = torch.relu(self.fc1(x.flatten(1)))
        x = torch.relu(self.fc2(x))
        return self.fc3(x)


TWINS = {"m1": M1, "c1": C1}

#: Where the twins and their inputs live (see :func:`use_device`).
DEVICE = torch.device("cpu")


def use_device(name: str = "auto") -> torch.device:
    """Put every later tensor on ``name`` ("cpu", "cuda", "cuda:1", or "auto": CUDA if
    available, else CPU) and return it. A CUDA name without a visible GPU is an error."""
    global DEVICE
    if name == "auto":
        name = "cuda" if torch.cuda.is_available() else "cpu"
    device = torch.device(name)
    if device.type == "cuda" and not torch.cuda.is_available():
        raise SystemExit(
            f"--torch-device={name}: PyTorch sees no CUDA device (torch {torch.__version__}, "
            "a CPU build?); use --torch-device=cpu or install a CUDA build of torch"
        )
    DEVICE = device
    return device


def on_cuda() -> bool:
    return DEVICE.type == "cuda"


def synchronize() -> None:
    """Wait for queued work on :data:`DEVICE` (no-op on CPU)."""
    if on_cuda():
        torch.cuda.synchronize(DEVICE)


def device_name() -> str:
    """``"cpu"`` or the GPU's name, for the environment report."""
    return torch.cuda.get_device_name(DEVICE) if on_cuda() else "cpu"


def tensor(a: Any) -> torch.Tensor:
    """A numpy array (float32 values, contiguous) as a tensor on :data:`DEVICE`."""
    return torch.from_numpy(np.ascontiguousarray(np.asarray(a, np.float32))).to(DEVICE)


def labels(y: Any) -> torch.Tensor:
    """Integer class labels as an int64 tensor on :data:`DEVICE`."""
    return torch.from_numpy(np.asarray(y, np.int64)).to(DEVICE)


def to_numpy(t: torch.Tensor) -> np.ndarray:
    """A tensor on any device as a numpy array (detached, copied to the host)."""
    return t.detach().cpu().numpy()


# torch module name -> (flax module name, kind); kind "fc0" marks the first FC layer.
_NAMES = {
    "m1": {
        "conv1": ("Conv_0", "conv"),
        "conv2": ("Conv_1", "conv"),
        "fc1": ("Dense_0", "fc0"),
        "fc2": ("Dense_1", "fc"),
    },
    "c1": {
        "conv1": ("Conv_0", "conv"),
        "bn1": ("BatchNorm_0", "bn"),
        "conv2": ("Conv_1", "conv"),
        "bn2": ("BatchNorm_1", "bn"),
        "fc1": ("Dense_0", "fc0"),
        "fc2": ("Dense_1", "fc"),
        "fc3": ("Dense_2", "fc"),
    },
}


def _fc0_kernel(kernel: np.ndarray, hwc: tuple[int, int, int]) -> np.ndarray:
    """Flax (H*W*C, out) kernel, rows in (h, w, c) order -> torch (out, C*H*W), cols (c, h, w)."""
    h, w, c = hwc
    out = kernel.shape[1]
    return kernel.reshape(h, w, c, out).transpose(3, 2, 0, 1).reshape(out, c * h * w)


def _fc0_kernel_inverse(weight: np.ndarray, hwc: tuple[int, int, int]) -> np.ndarray:
    h, w, c = hwc
    out = weight.shape[0]
    return weight.reshape(out, c, h, w).transpose(2, 3, 1, 0).reshape(h * w * c, out)


def params_to_torch(name: str, params: Any) -> dict[str, np.ndarray]:
    """A Flax ``params`` pytree (weights, or any vector shaped like them) -> torch parameter
    names and arrays in torch layout (float32, contiguous)."""
    hwc = TWINS[name].FLATTEN_HWC
    out = {}
    for tname, (fname, kind) in _NAMES[name].items():
        p = {k: np.asarray(v) for k, v in params[fname].items()}
        if kind == "bn":
            out[f"{tname}.weight"], out[f"{tname}.bias"] = p["scale"], p["bias"]
            continue
        if kind == "conv":
            weight = p["kernel"].transpose(3, 2, 0, 1)  # HWIO -> OIHW
        elif kind == "fc0":
            weight = _fc0_kernel(p["kernel"], hwc)
        else:
            weight = p["kernel"].T
        out[f"{tname}.weight"], out[f"{tname}.bias"] = weight, p["bias"]
    return {k: np.array(v, np.float32, order="C", copy=True) for k, v in out.items()}


def torch_to_params(name: str, tensors: dict[str, Any]) -> dict:
    """Inverse of :func:`params_to_torch`: torch-layout arrays -> a Flax ``params`` dict."""
    hwc = TWINS[name].FLATTEN_HWC
    t = {k: to_numpy(v) if hasattr(v, "detach") else np.asarray(v) for k, v in tensors.items()}
    params = {}
    for tname, (fname, kind) in _NAMES[name].items():
        w, b = t[f"{tname}.weight"], t[f"{tname}.bias"]
        if kind == "bn":
            params[fname] = {"scale": w, "bias": b}
        elif kind == "conv":
            params[fname] = {"kernel": w.transpose(2, 3, 1, 0), "bias": b}
        elif kind == "fc0":
            params[fname] = {"kernel": _fc0_kernel_inverse(w, hwc), "bias": b}
        else:
            params[fname] = {"kernel": w.T, "bias": b}
    return params


def from_flax(name: str, variables: dict) -> nn.Module:
    """The PyTorch twin of Flax model ``name`` (m1 or c1) holding ``variables``, in eval mode."""
    model = TWINS[name]()
    state = {k: torch.from_numpy(v) for k, v in params_to_torch(name, variables["params"]).items()}
    for tname, (fname, kind) in _NAMES[name].items():
        if kind == "bn":
            stats = variables["batch_stats"][fname]
            state[f"{tname}.running_mean"] = torch.tensor(np.asarray(stats["mean"], np.float32))
            state[f"{tname}.running_var"] = torch.tensor(np.asarray(stats["var"], np.float32))
            state[f"{tname}.num_batches_tracked"] = torch.zeros((), dtype=torch.long)
    model.load_state_dict(state, strict=True)
    return model.to(DEVICE).eval()


def to_nchw(x: np.ndarray) -> torch.Tensor:
    """NHWC numpy images -> contiguous NCHW float32 torch tensor on :data:`DEVICE`."""
    return tensor(np.asarray(x, np.float32).transpose(0, 3, 1, 2))


@contextlib.contextmanager
def tf32(enabled: bool | None):
    """PyTorch's two TF32 switches (``backends.cuda.matmul`` and ``backends.cudnn``) both set to
    ``enabled`` inside the block, restored after (None: PyTorch's defaults, matmul off and cuDNN
    on, left as they are)."""
    if enabled is None:
        yield
        return
    switches = (torch.backends.cuda.matmul, torch.backends.cudnn)
    old = [s.allow_tf32 for s in switches]
    for s in switches:
        s.allow_tf32 = enabled
    try:
        yield
    finally:
        for s, value in zip(switches, old, strict=True):
            s.allow_tf32 = value


def check_twin(name: str, apply_fn, variables: dict, model: nn.Module, x, y) -> dict[str, float]:
    """Max |logit difference| and |loss difference| between the Flax model and its twin, both
    computed in full float32 (on GPUs both frameworks default to TF32 somewhere, whose ~1e-3
    rounding would hide a wrong weight copy: benchmarks/matmul_precision.py)."""
    import jax

    from hessjax import cross_entropy

    with jax.default_matmul_precision("float32"):
        logits_jax = np.asarray(jax.jit(apply_fn)(variables, x))
    with tf32(False), torch.no_grad():
        logits_torch = to_numpy(model(to_nchw(x)))
    loss_jax = float(cross_entropy(logits_jax, np.asarray(y)))
    loss_torch = float(
        nn.functional.cross_entropy(
            torch.from_numpy(logits_torch), torch.from_numpy(np.asarray(y, np.int64))
        )
    )
    scale = float(np.max(np.abs(logits_jax)))
    return {
        "max_abs_logit_diff": float(np.max(np.abs(logits_jax - logits_torch))),
        "max_abs_logit": scale,
        "loss_jax": loss_jax,
        "loss_torch": loss_torch,
        "abs_loss_diff": abs(loss_jax - loss_torch),
    }


class TrainLoop:
    """The PyTorch twin of ``hessjax.train.TrainStep``: micro-batch gradient accumulation, then
    SGD + momentum. ``loop(x, y)`` (NCHW tensors, ``len(y)`` a multiple of ``micro``) makes one
    update and returns the (mean loss, accuracy) tensors of the batch."""

    def __init__(self, name: str, variables: dict, lr: float, micro: int):
        self.model = from_flax(name, variables).train()
        self.opt = torch.optim.SGD(self.model.parameters(), lr=lr, momentum=0.9)
        self.micro = micro
        self.name = name

    def __call__(self, x: torch.Tensor, y: torch.Tensor):
        f = nn.functional
        num_micro, m = len(y) // self.micro, self.micro
        self.opt.zero_grad(set_to_none=True)
        loss_sum = torch.zeros((), device=DEVICE)
        correct = torch.zeros((), dtype=torch.long, device=DEVICE)
        for j in range(num_micro):
            xm, ym = x[j * m : (j + 1) * m], y[j * m : (j + 1) * m]
            logits = self.model(xm)
            loss = f.cross_entropy(logits, ym)
            (loss / num_micro).backward()
            loss_sum += loss.detach()
            correct += (logits.detach().argmax(1) == ym).sum()
        self.opt.step()
        return loss_sum / num_micro, correct.double() / len(y)

    def momentum_buffers(self) -> dict:
        """The momentum buffers (after the first step: the mean gradient) in Flax layout."""
        named = dict(self.model.named_parameters())
        bufs = {n: self.opt.state[p]["momentum_buffer"] for n, p in named.items()}
        return torch_to_params(self.name, bufs)

    def params(self) -> dict:
        return torch_to_params(self.name, dict(self.model.named_parameters()))

    def batch_stats(self) -> dict:
        """Running statistics in Flax naming (C1: BatchNorm_0/1), {} for M1."""
        out = {}
        for i, bn in enumerate(m for m in self.model.modules() if hasattr(m, "running_var")):
            out[f"BatchNorm_{i}"] = {
                "mean": to_numpy(bn.running_mean).copy(),
                "var": to_numpy(bn.running_var).copy(),
            }
        return out


def dataset_hvp_and_grad(name: str, variables: dict, x, y, v, batch_size: int):
    """PyTorch double backward over a data set, as PyHessian computes it: ``(hvp, grad,
    as_params)`` where ``hvp()`` and ``grad()`` return the mean-loss HVP with the flax tree ``v``
    and the gradient, both summed over chunks of ``batch_size`` rows of ``(x, y)`` with weights
    ``n_b / N``, as lists of tensors; ``as_params`` turns such a list back into a flax tree."""
    import torch.nn.functional as F

    model = from_flax(name, variables)
    params = [p for _, p in model.named_parameters()]
    names = [n for n, _ in model.named_parameters()]
    v_np = params_to_torch(name, v)
    vt = [tensor(v_np[n]) for n in names]
    n = len(y)
    chunks = [
        (to_nchw(x[s : s + batch_size]), labels(y[s : s + batch_size]))
        for s in range(0, n, batch_size)
    ]

    def hvp():
        total = [torch.zeros_like(p) for p in params]
        for xt, yt in chunks:
            g = torch.autograd.grad(F.cross_entropy(model(xt), yt), params, create_graph=True)
            hv = torch.autograd.grad(g, params, grad_outputs=vt)
            total = [t + h * (len(yt) / n) for t, h in zip(total, hv, strict=True)]
        return total

    def grad():
        total = [torch.zeros_like(p) for p in params]
        for xt, yt in chunks:
            g = torch.autograd.grad(F.cross_entropy(model(xt), yt), params)
            total = [t + h * (len(yt) / n) for t, h in zip(total, g, strict=True)]
        return total

    def as_params(ts):
        return torch_to_params(name, dict(zip(names, ts, strict=True)))

    return hvp, grad, as_params
