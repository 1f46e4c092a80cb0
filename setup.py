"""o3video-jax: grounded video reasoning (Open-o3 Video) in JAX/Flax."""

from setuptools import find_packages, setup

# Floors: the oldest release that has what the code uses. tests/test_versions.py holds the
# table "API -> first release" and checks these floors against it and the installed versions.
INSTALL_REQUIRES = [
    "jax>=0.7.1",  # jax.set_mesh (0.7.1); jax >= 0.7 needs Python >= 3.11
    # with_logical_constraint sees a jax.set_mesh mesh from 0.11.2 (before: silently no-op)
    "flax>=0.11.2",
    "optax>=0.2.5",  # optax.tree.norm
    # 0.11.17 imports with jax >= 0.7 (jax.experimental.layout.Layout; older: ImportError)
    "orbax-checkpoint>=0.11.17",
    "grain>=0.2.12",  # top-level grain.MultiprocessingOptions
    "numpy>=1.26",
    "opencv-python-headless>=4.8",
    "ml_collections>=0.1.1",
    "absl-py>=2.0",
    "tokenizers>=0.19",
    "safetensors>=0.4",
    "jinja2>=3.1",
    "rouge-score>=0.1.2",
    "tqdm>=4.66",
    "tensorboardX>=2.6",
    "matplotlib>=3.8",
    # One path layer for local and gs:// (o3video_jax/io.py): etils.epath, with gcsfs as
    # its gs:// backend (Orbax's metadata goes through the same).
    "etils[epath]>=1.7",
    "gcsfs>=2024.2",
]

EVAL = [
    # Benchmark files: VideoMME / VideoMMMU parquet (o3video_jax.evaluate.benchmarks).
    "pyarrow>=14",
    "pillow>=10",  # evidence GIFs (o3video_jax.eval.animate)
]

EXTRAS = {
    "eval": EVAL,
    # Accelerator-neutral: `pip install -e ".[gpu,test]"` on a CUDA host adds no libtpu.
    "test": [
        *EVAL,
        "pytest>=8",
        "pytest-xdist>=3.5",
        "hypothesis>=6.100",
        # A real GCS API server on localhost for the gs:// tests (tests/test_gcs.py).
        "gcp-storage-emulator>=2026.7.19",
        # Live Hugging Face parity (golden fixtures do not need these). torch is pinned:
        # an unpinned torch pulls a multi-GB CUDA build.
        "torch==2.13.0",
        "transformers==5.24.0",
    ],
    # libtpu lets tests/test_aot.py compile the real steps for TPU topologies on a CPU host
    # (wheels for linux x86_64 only; elsewhere, or without this extra, that test is skipped).
    # CI and the README's test set-up install it: pip install -e ".[test,aot]".
    "aot": ['jax[tpu]; sys_platform == "linux" and platform_machine == "x86_64"'],
    "tpu": ["jax[tpu]"],
    # jax's CUDA 12 plugin with the CUDA/cuDNN wheels (driver >= 525); for CUDA 13 drivers
    # (>= 580) use the cuda13 extra instead.
    "gpu": ["jax[cuda12]"],
    "cuda13": ["jax[cuda13]"],
    "dev": ["ruff>=0.6"],
}

setup(
    name="o3video_jax",
    version="0.1.0",
    description="Open-o3 Video (grounded video reasoning) on Qwen2.5-VL in JAX/Flax.",
    packages=find_packages(include=["o3video_jax", "o3video_jax.*"]),
    python_requires=">=3.11",
    install_requires=INSTALL_REQUIRES,
    extras_require=EXTRAS,
)
