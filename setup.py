"""o3video-jax: grounded video reasoning (Open-o3 Video) in JAX/Flax."""

from setuptools import find_packages, setup

INSTALL_REQUIRES = [
    "jax>=0.6",
    "flax>=0.10",
    "optax>=0.2.4",
    "orbax-checkpoint>=0.11",
    "grain>=0.2.10",
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
]

EVAL = [
    # Benchmark files: VideoMME / VideoMMMU parquet (o3video_jax.evaluate.benchmarks).
    "pyarrow>=14",
    "pillow>=10",  # evidence GIFs (o3video_jax.eval.animate)
]

EXTRAS = {
    "eval": EVAL,
    "test": [
        *EVAL,
        "pytest>=8",
        "pytest-xdist>=3.5",
        "hypothesis>=6.100",
        # Live Hugging Face parity (golden fixtures do not need these). torch is pinned:
        # an unpinned torch pulls a multi-GB CUDA build.
        "torch==2.13.0",
        "transformers==5.24.0",
        # libtpu lets tests/test_aot.py compile the real steps for TPU topologies on a CPU
        # host (it has wheels for linux x86_64 only; elsewhere that test is skipped).
        'jax[tpu]; sys_platform == "linux" and platform_machine == "x86_64"',
    ],
    "tpu": ["jax[tpu]"],
    "gpu": ["jax[cuda12]"],
    "dev": ["ruff>=0.6"],
}

setup(
    name="o3video_jax",
    version="0.1.0",
    description="Open-o3 Video (grounded video reasoning) on Qwen2.5-VL in JAX/Flax.",
    packages=find_packages(include=["o3video_jax", "o3video_jax.*"]),
    python_requires=">=3.10",
    install_requires=INSTALL_REQUIRES,
    extras_require=EXTRAS,
)
