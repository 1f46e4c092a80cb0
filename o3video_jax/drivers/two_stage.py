"""`stage="sft+gspo"`: SFT, its Hugging Face export, then GSPO from that export, one command.

    python -m o3video_jax.train --config experiments/configs/synthetic.py:stage=sft+gspo \
        --workdir DIR [--config.gspo_stage.total_steps=40 ...]

The config is the SFT run's config plus `gspo_stage`: a config subtree holding only the leaves
the GSPO run changes (`stage_overrides` builds it from the two single-stage configs, so every
one of them stays overridable on the command line, e.g. `--config.gspo_stage.optim.lr=1e-4`).
Layout of DIR:
  DIR/sft   the SFT run (checkpoints, metrics, export DIR/sft/hf)
  DIR/gspo  the GSPO run, `model.hf_checkpoint = DIR/sft/hf` (also its frozen KL reference)
  DIR/synthetic  generated data shared by both stages (synthetic configs only)
Rerunning the command resumes: a stage that wrote its completion marker (DIR/sft/COMPLETE.json,
after its final checkpoint and export) is skipped; otherwise SFT resumes from its checkpoint, and GSPO (which starts
only after SFT finished) resumes from its own. A preempted SFT stage returns without GSPO.
DIR/COMPLETE.json is written once GSPO has finished too.
"""

from __future__ import annotations

import copy
import os
from typing import Any

import ml_collections

from o3video_jax.drivers import experiment
from o3video_jax.train import completion

STAGE = "sft+gspo"


# Leaves a GSPO stage is usually given on the command line: always present in `gspo_stage`
# (a locked config cannot gain fields), even when they equal the SFT run's.
ALWAYS = (
    "total_steps",
    "optim.lr",
    "optim.warmup_steps",
    "data.batch_size",
    "data.train_json",
    "data.eval_json",
    "ckpt.save_every",
    "log.eval_every",
)


def stage_overrides(
    sft: ml_collections.ConfigDict, gspo: ml_collections.ConfigDict, always=ALWAYS
) -> ml_collections.ConfigDict:
    """The leaves of `gspo` that differ from `sft` (same tree), plus the dotted paths of
    `always`, as a nested ConfigDict.

    `stage` is left out; a key that exists only in `gspo` is kept. Both configs come from the
    same `get_config`, so the trees agree.
    """
    out = _diff(sft, gspo)
    for path in always:
        *parents, leaf = path.split(".")
        src, dst = gspo, out
        for p in parents:
            src = src[p]
            if p not in dst:
                dst[p] = ml_collections.ConfigDict()
            dst = dst[p]
        dst[leaf] = src[leaf]
    return out


def _diff(sft: ml_collections.ConfigDict, gspo: ml_collections.ConfigDict):
    out = ml_collections.ConfigDict()
    for key, value in gspo.items():
        if key == "stage":
            continue
        if isinstance(value, ml_collections.ConfigDict):
            if key not in sft or not isinstance(sft[key], ml_collections.ConfigDict):
                out[key] = value
                continue
            sub = _diff(sft[key], value)
            if sub:
                out[key] = sub
        elif key not in sft or sft[key] != value:
            out[key] = value
    return out


def _apply(config: ml_collections.ConfigDict, overrides: ml_collections.ConfigDict, where=""):
    for key, value in overrides.items():
        if key not in config:
            raise ValueError(f"gspo_stage.{where}{key} is not a config field")
        if isinstance(value, ml_collections.ConfigDict):
            _apply(config[key], value, f"{where}{key}.")
        else:
            config[key] = value


def split(config: ml_collections.ConfigDict):
    """(sft_config, gspo_config) of a `stage="sft+gspo"` config (copies; unlocked)."""
    if config.stage != STAGE:
        raise ValueError(f"two_stage.split needs config.stage == {STAGE!r}, got {config.stage!r}")
    if "gspo_stage" not in config:
        raise ValueError("a stage='sft+gspo' config needs a `gspo_stage` subtree of overrides")
    base = config.to_dict()  # a deep copy: the two stages share no subtree
    del base["gspo_stage"]
    sft, gspo = ml_collections.ConfigDict(base), ml_collections.ConfigDict(copy.deepcopy(base))
    sft.stage, gspo.stage = "sft", "gspo"
    _apply(gspo, config.gspo_stage)
    if not sft.ckpt.export_hf:
        raise ValueError("stage='sft+gspo' starts GSPO from the SFT export: ckpt.export_hf=True")
    return sft, gspo


def finished(run_dir: str, total_steps: int) -> bool:
    """True when the run in `run_dir` wrote its completion marker (`train.completion`: after its
    final checkpoint and export), for this `total_steps` when that is fixed (> 0)."""
    marker = completion.read(run_dir)
    if marker is None:
        return False
    return int(total_steps) <= 0 or int(marker["total_steps"]) == int(total_steps)


def train(config: ml_collections.ConfigDict, workdir: str) -> dict[str, Any]:
    """Runs (or resumes) SFT in WORKDIR/sft, then GSPO from WORKDIR/sft/hf in WORKDIR/gspo.

    Returns {"sft": last SFT metrics, "gspo": last GSPO metrics} ({} for a stage that had
    already finished) or, when the SFT stage was preempted, {"sft": ..., "gspo": None}.
    """
    from o3video_jax.drivers import gspo as gspo_loop
    from o3video_jax.drivers import sft as sft_loop

    sft, gspo = split(config)
    os.makedirs(workdir, exist_ok=True)
    data = experiment.prepare_synthetic(sft, workdir)  # once, shared by both stages
    if data is not None:
        gspo.data.synthetic.videos = 0
        if not gspo.data.train_json or gspo.data.train_json == sft.data.train_json:
            gspo.data.train_json = data.rl_json
        gspo.data.media_root = data.media_root
        gspo.data.layout = "flat"
        gspo.data.tokenizer_dir = gspo.data.tokenizer_dir or data.tokenizer_dir
        if not gspo.data.eval_json or gspo.data.eval_json == data.heldout_sft_json:
            gspo.data.eval_json = data.heldout_rl_json
            gspo.data.eval_media_root = data.heldout_media_root
    if not gspo.data.train_json or gspo.data.train_json == sft.data.train_json:
        raise ValueError(
            "the GSPO stage needs its own prompts: set --config.gspo_stage.data.train_json "
            f"(got {gspo.data.train_json!r}, the SFT data is {sft.data.train_json!r})"
        )
    sft_dir, gspo_dir = os.path.join(workdir, "sft"), os.path.join(workdir, "gspo")
    out: dict[str, Any] = {"sft": {}, "gspo": None}
    if finished(sft_dir, sft.total_steps):
        print(f"SFT already finished in {sft_dir}: starting GSPO from its export", flush=True)
    else:
        out["sft"] = sft_loop.train(sft, sft_dir)
        if not finished(sft_dir, sft.total_steps):
            print("SFT stage stopped before its last step: rerun the command to resume", flush=True)
            return out
    if finished(gspo_dir, gspo.total_steps):
        print(f"GSPO already finished in {gspo_dir}: nothing to do", flush=True)
        out["gspo"] = {}
    else:
        gspo.model.hf_checkpoint = os.path.join(sft_dir, "hf")
        out["gspo"] = gspo_loop.train(gspo, gspo_dir)
    marker = completion.read(gspo_dir)
    if marker is not None:  # both stages done: the whole run's marker (run_until_done.sh)
        completion.mark(workdir, marker["step"], marker["total_steps"], marker["hf_export"])
    return out
