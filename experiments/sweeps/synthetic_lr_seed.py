r"""Learning rate x seed on the synthetic demo task (2 x 2 = 4 runs).

  python -m o3video_jax.sweep --config experiments/configs/synthetic.py \
    --sweep experiments/sweeps/synthetic_lr_seed.py --workdir /tmp/sweep_syn \
    --config.total_steps=60
  python -m o3video_jax.sweep.results /tmp/sweep_syn --metric loss

On TPU slices, print one launch command per run instead (each its own VM):
  python -m o3video_jax.sweep ... --workdir gs://BUCKET/sweeps/syn --launch print \
    --tpu_names o3v-a,o3v-b,o3v-c,o3v-d
"""

from o3video_jax.sweep import product


def get_sweep():
    return product({"optim.lr": [1e-3, 3e-3]}, {"seed": [0, 1]})
