r"""GSPO clipping ranges x KL weight for the 7B reproduction, each eps pair zipped (4 runs).

  python -m o3video_jax.sweep --config experiments/configs/gspo_qwen2_5_vl.py:size=7b \
    --sweep experiments/sweeps/gspo_clip.py --workdir gs://BUCKET/sweeps/gspo_clip \
    --config.model.hf_checkpoint=gs://BUCKET/runs/sft7b/hf \
    --config.data.train_json=/data/json_data/STGR-RL.json --config.data.media_root=/data/videos \
    --launch print --tpu_names o3v-a,o3v-b,o3v-c,o3v-d
"""

from o3video_jax.sweep import product, sweep, zip


def get_sweep():
    clip = zip({"rl.eps_low": [3e-4, 0.2], "rl.eps_high": [4e-4, 0.2]})
    return product(clip, sweep("rl.beta", [0.0, 0.04]))
