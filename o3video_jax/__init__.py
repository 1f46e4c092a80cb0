"""o3video-jax: grounded video reasoning (Open-o3 Video) on Qwen2.5-VL in JAX/Flax."""
