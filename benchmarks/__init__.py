"""Speed benchmarks of hessjax against PyTorch / PyHessian (not tests; see README.md).

Importing the package sets ``OMP_WAIT_POLICY=PASSIVE`` (unless already set) before PyTorch is
imported: on a shared 2-core machine, PyTorch's OpenMP threads spin at barriers while another
process holds a core, which made a PyHessian HVP up to ~20x slower here (0.1 s -> 2.1 s) at random.
XLA's own thread pool is not affected. Set ``OMP_WAIT_POLICY=ACTIVE`` to measure the default.

It also sets ``XLA_PYTHON_CLIENT_PREALLOCATE=false`` (unless set): on a GPU, JAX would otherwise
reserve 75 % of the memory at its first call and leave PyTorch, which runs in the same process
for the side-by-side comparisons, too little.
"""

import os

os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")
os.environ.setdefault("XLA_PYTHON_CLIENT_PREALLOCATE", "false")
