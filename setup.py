"""hessjax: exact Hessian-based analysis of neural networks in JAX (Yao et al., NeurIPS 2018)."""

from setuptools import find_packages, setup

setup(
    name="hessjax",
    version="0.1.0",
    description=(
        "Exact Hessian spectra, input Hessians, attacks and robust training in JAX: a functional "
        "reimplementation of Yao et al., 'Hessian-based Analysis of Large Batch Training and "
        "Robustness to Adversaries' (NeurIPS 2018)."
    ),
    long_description=open("README.md", encoding="utf-8").read(),
    long_description_content_type="text/markdown",
    packages=find_packages(include=["hessjax", "hessjax.*"]),
    python_requires=">=3.10",
    install_requires=[
        "jax>=0.4.35",
        "jaxlib>=0.4.35",
        "flax>=0.10",
        "optax>=0.2.3",
        "orbax-checkpoint>=0.6",
        "ml-collections>=0.1.1",
        "absl-py>=2.0",
        "chex>=0.1.87",
        "numpy>=1.26",
        "matplotlib>=3.8",
    ],
    extras_require={
        # Fallback data source of hessjax.data.load (about 1.7 GB installed, 1.3 GB of it
        # TensorFlow, which tfds needs: its MNIST/CIFAR builders and gz extraction call
        # tf.io.gfile, and tfds.load returns tf.data). tensorflow-datasets 4.9.x imports
        # importlib_resources but declares it only for Python < 3.9 (tensorflow/datasets#11212).
        # tests/test_fetch.py runs the download path up to its network call.
        "tfds": ["tensorflow-cpu>=2.16", "tensorflow-datasets>=4.9", "importlib_resources>=5.0"],
        "test": [
            "pytest>=8",
            "pytest-xdist>=3.5",
            "hypothesis>=6.100",
            "ruff>=0.6",
            # tests/test_notebooks.py executes notebooks/ (nbclient, python3 kernel = ipykernel)
            "nbclient>=0.10",
            "nbformat>=5.10",
            "ipykernel>=6.29",
            "jupytext>=1.16",
        ],
        "bench": ["torch==2.13.0", "pyhessian==0.1"],
        "notebooks": ["nbclient>=0.10", "nbformat>=5.10", "ipykernel>=6.29", "jupytext>=1.16"],
    },
)
