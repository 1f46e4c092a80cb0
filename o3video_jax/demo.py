r"""End-to-end demo on CPU: synthetic videos -> tiny Qwen2.5-VL -> SFT -> GSPO -> report.

  python -m o3video_jax.demo --workdir /tmp/o3demo          # ~11 min on a 2-core CPU
  python -m o3video_jax.demo --workdir /tmp/o3demo --fast   # ~2 min smoke run

Steps (each through the library functions the CLI uses, with experiments/configs/synthetic.py):
  1. synthetic videos, STGR-SFT/RL records and a held-out split; a tiny BPE tokenizer;
  2. a tiny model, randomly initialised and saved in HF layout (WORKDIR/model_init);
  3. held-out evaluation (greedy; mean reward terms, V-STAR-style What/When/Where);
  4. SFT (`train.loop.train`, WORKDIR/sft, exported to WORKDIR/sft/hf), evaluation;
  5. GSPO from the SFT export (`rl.loop.train`, WORKDIR/gspo -> WORKDIR/gspo/hf), evaluation;
  6. WORKDIR/report.md (before/after table), curves.png, example.png (one held-out answer
     drawn on its frames), heldout_<stage>.jsonl (every completion and its scores).
"""

from __future__ import annotations

import dataclasses
import importlib.util
import json
import os
import time

import flax.linen as nn
import jax
import ml_collections
import numpy as np

from o3video_jax import io
from o3video_jax.checkpoints import hf
from o3video_jax.data import synthetic, video, vision
from o3video_jax.data import synthetic_runs as synthetic_data
from o3video_jax.drivers import experiment, heldout
from o3video_jax.drivers import gspo as rl_loop
from o3video_jax.drivers import sft as sft_loop
from o3video_jax.eval import results as eval_results
from o3video_jax.eval.visualize import render_example
from o3video_jax.models.qwen2_5_vl import Qwen25VL
from o3video_jax.rewards import parse_completion
from o3video_jax.train.metrics_log import read_metrics

CONFIG_FILE = os.path.join(
    os.path.dirname(os.path.dirname(os.path.abspath(__file__))),
    "experiments",
    "configs",
    "synthetic.py",
)
TABLE_COLUMNS = (
    ("total", "reward"),
    ("format", "format"),
    ("ans_acc", "ans_acc"),
    ("ans_tiou", "ans_tIoU"),
    ("thk_temporal_point", "thk_t_point"),
    ("thk_temporal_segment", "thk_t_seg"),
    ("thk_spatial", "thk_spatial"),
    ("acc", "What acc"),
    ("tiou", "When mIoU"),
    ("r1@0.5", "When R1@0.5"),
    ("viou", "Where vIoU"),
    ("mAM", "mAM"),
)


@dataclasses.dataclass(frozen=True)
class Plan:
    """Sizes of a demo run (the full one, or `fast` for tests)."""

    videos: int = 128
    eval_videos: int = 128
    sft_steps: int = 240
    gspo_steps: int = 40
    size: str = "demo"
    eval_points: int = 4  # held-out evaluations inside each training stage (the curves)
    sft_lr: float = 0.0  # > 0: replaces the config's SFT learning rate
    perception: bool = False  # dense one-hop SFT records (synthetic_questions.perception_records)
    gspo_lr: float = 0.0  # > 0: replaces the config's GSPO learning rate
    objects: tuple[int, int] = (2, 3)  # objects per synthetic video (min, max)
    # > 0: a perception stage before SFT, on the dense one-hop records of every training video
    # (`synthetic_questions.inventory_record` + `perception_records`); SFT starts from its export
    perception_steps: int = 0
    perception_lr: float = 1e-3
    # The perception stage's loss mask (tokenizer.LOSS_MASKS): "answer" trains only the answer
    # tokens (object names, times), which must be read from the video.
    perception_loss: str = "assistant"
    # Video length range (s) of the synthetic world, and (> 0) the frames sampled per video.
    # At data.fps=2 a video longer than max_frames / 2 s is subsampled, and an object visible
    # for 1.5 s can fall between the sampled frames: its answers cannot be read from the input.
    seconds: tuple[int, int] = (4, 6)
    max_frames: int = 0
    extra_seq_len: int = 0  # added to every stage's data.max_seq_len and prompt buckets
    max_patches: int = 0  # > 0: every stage's data.max_patches
    max_new_tokens: int = 0  # > 0: GSPO rollout and evaluation length (rl.max_new_tokens)


FULL = Plan()
# SFT long enough that some tiny-model rollouts earn a reward and GSPO's gradient is not zero
# (test_demo checks that GSPO moves the weights). 40 steps with 32 new tokens sufficed on one
# CPU and not on another (AMD EPYC, 2026-12-06: every completion cut at 32 tokens, every
# reward 0, 80 and 120 steps too); 200 steps with 128 new tokens give reward std 0.33 there.
FAST = Plan(
    videos=8,
    eval_videos=2,
    sft_steps=200,
    gspo_steps=2,
    size="tiny",
    eval_points=2,
    max_new_tokens=128,
)


def load_config(arg: str) -> ml_collections.ConfigDict:
    if not os.path.exists(CONFIG_FILE):
        raise FileNotFoundError(
            f"{CONFIG_FILE} not found: the demo runs from a source checkout (pip install -e .)"
        )
    spec = importlib.util.spec_from_file_location("_o3_synthetic_config", CONFIG_FILE)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module.get_config(arg)


def stage_config(plan: Plan, stage: str, data, checkpoint: str) -> ml_collections.ConfigDict:
    """The config of one demo stage: "perception", "sft" or "gspo"."""
    c = load_config(f"stage={'gspo' if stage == 'gspo' else 'sft'},size={plan.size}")
    c.model.hf_checkpoint = checkpoint
    c.data.synthetic.videos = 0  # data prepared once by the demo, shared by the stages
    c.data.train_json, c.data.eval_json = {
        "perception": (data.perception_json, data.heldout_perception_json),
        "sft": (data.sft_json, data.heldout_sft_json),
        "gspo": (data.rl_json, data.heldout_rl_json),
    }[stage]
    c.data.eval_media_root = data.heldout_media_root
    c.data.media_root = data.media_root
    c.data.tokenizer_dir = data.tokenizer_dir
    c.total_steps = {
        "perception": plan.perception_steps,
        "sft": plan.sft_steps,
        "gspo": plan.gspo_steps,
    }[stage]
    lr = {"perception": plan.perception_lr, "sft": plan.sft_lr, "gspo": plan.gspo_lr}[stage]
    c.optim.lr = lr or c.optim.lr
    if stage == "perception":
        c.data.loss_mask = plan.perception_loss
    if plan.max_frames:
        c.data.max_frames = plan.max_frames
    c.data.max_seq_len += plan.extra_seq_len
    c.rl.prompt_buckets = [int(x) + plan.extra_seq_len for x in c.rl.prompt_buckets]
    if plan.max_patches:
        c.data.max_patches = plan.max_patches
    if plan.max_new_tokens and stage == "gspo":  # SFT rows would only gain padding
        c.data.max_seq_len += plan.max_new_tokens - c.rl.max_new_tokens
        c.rl.max_new_tokens = plan.max_new_tokens
    c.optim.warmup_steps = min(c.optim.warmup_steps, c.total_steps)
    c.ckpt.save_every = max(c.total_steps // 2, 1)
    # Held-out curves: SFT loss on held-out SFT records, greedy GSPO rewards on RL prompts.
    c.log.eval_every = max(c.total_steps // plan.eval_points, 1)
    c.log.eval_prompts = 64
    return c


def _say(msg: str) -> None:
    print(f"[demo {time.strftime('%H:%M:%S')}] {msg}", flush=True)


def init_model(plan: Plan, data, out_dir: str) -> None:
    """A randomly initialised model in HF layout, with the tokenizer files."""
    c = load_config(f"stage=sft,size={plan.size}")
    mc = experiment.model_config(c)
    params = Qwen25VL(mc).init(jax.random.PRNGKey(c.seed), experiment.init_inputs(mc))["params"]
    params = jax.tree.map(np.asarray, nn.unbox(params))
    hf.save(out_dir, mc, params, progress=False)
    for name in ("tokenizer.json", "tokenizer_config.json"):
        io.copy(os.path.join(data.tokenizer_dir, name), os.path.join(out_dir, name))
    n = sum(x.size for x in jax.tree.leaves(params))
    _say(
        f"model: {n / 1e6:.2f}M parameters (hidden {mc.hidden_size}, {mc.num_hidden_layers} layers)"
    )


def evaluate(
    plan: Plan, data, checkpoint: str, workdir: str, name: str, media_root: str | None = None
) -> dict:
    """Greedy held-out evaluation of `checkpoint`; `media_root` replaces the held-out media
    (the frame-blanking ablation passes `blank_media`'s copy)."""
    config = stage_config(plan, "gspo", data, checkpoint)
    mc, params = hf.load(checkpoint, progress=False)
    tok = synthetic_data.load_tokenizer(data)
    t = time.perf_counter()
    summary, items = heldout.evaluate(
        config, mc, params, tok, data.heldout_rl_json, media_root or data.heldout_media_root
    )
    eval_results.write_jsonl(os.path.join(workdir, f"heldout_{name}.jsonl"), items)
    _say(
        f"held-out {name}: reward {summary['total']:.3f}, format {summary['format']:.2f}, "
        f"acc {summary['acc']:.2f}, tIoU {summary['tiou']:.3f}, vIoU {summary['viou']:.3f} "
        f"({len(items)} prompts, {time.perf_counter() - t:.0f}s)"
    )
    return {"summary": summary, "items": items}


def plot_curves(workdir: str, out_png: str) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    sft = read_metrics(os.path.join(workdir, "sft"))
    rl = read_metrics(os.path.join(workdir, "gspo"))
    fig, axes = plt.subplots(1, 3, figsize=(15, 4))
    steps = [m["step"] for m in sft]
    axes[0].plot(steps, [m["loss"] for m in sft], label="train")
    ev = [m for m in sft if "eval/loss" in m]
    axes[0].plot([m["step"] for m in ev], [m["eval/loss"] for m in ev], "o-", label="held-out")
    axes[0].set(title="SFT cross-entropy", xlabel="step", yscale="log")
    axes[0].legend(fontsize=7)
    axes[1].plot(steps, [m["accuracy"] for m in sft], label="token accuracy", color="C1")
    axes[1].set(title="SFT token accuracy", xlabel="step")
    rsteps = [m["step"] for m in rl]
    for k in rl_loop.REWARD_TERMS:
        axes[2].plot(rsteps, [m[f"reward/{k}"] for m in rl], label=k, lw=2 if k == "total" else 1)
    ev = [m for m in rl if "eval/total" in m]
    axes[2].plot(
        [m["step"] for m in ev], [m["eval/total"] for m in ev], "ko-", label="total (held-out)"
    )
    axes[2].set(title="GSPO rewards (train rollouts; held-out greedy)", xlabel="step")
    axes[2].legend(fontsize=7)
    fig.tight_layout()
    with io.open(out_png, "wb") as f:  # local or gs://
        fig.savefig(f, format="png", dpi=90)
    plt.close(fig)


def render(plan: Plan, data, items: list[dict], out_png: str) -> str:
    """Draws the first held-out spatio-temporal answer on the frames the model saw."""
    from o3video_jax.data.records import read_json_records

    records = {r["id"]: r for r in read_json_records(data.heldout_rl_json)}
    pick = next((it for it in items if "viou" in it), items[0])
    rec = records[pick["id"]]
    c = stage_config(plan, "gspo", data, "").data  # the frames the model saw
    clip = video.read_video(
        os.path.join(data.heldout_media_root, rec["video_path"]),
        c.fps,
        c.max_frames,
        c.min_frames,
        sampling="o3",
    )
    h, w = vision.smart_resize(
        *clip.frames.shape[1:3], min_pixels=c.frame_min_pixels, max_pixels=c.frame_max_pixels
    )
    frames = np.stack([vision.resize(f, h, w) for f in clip.frames])
    render_example(frames, clip.o3_labels, pick["completion"], out_png)
    return pick["completion"]


def answer_diversity(items: list[dict]) -> dict[str, int]:
    """Distinct greedy answers per task over the held-out prompts: a model that reads its
    inputs gives many; one that answers every prompt alike gives one or two per task."""
    out = {}
    for it in items:
        answer = parse_completion(it["completion"]).answer
        out.setdefault(it["task"], set()).add(answer)
    return {task: len(answers) for task, answers in sorted(out.items())}


ABLATION_KEYS = (("acc", "What acc"), ("tiou", "When mIoU"), ("viou", "Where vIoU"), ("mAM", "mAM"))
BLANK = " (frames blanked)"
GSPO_GAINS = (
    ("total", "held-out reward"),
    ("acc", "What acc"),
    ("tiou", "When mIoU"),
    ("mAM", "mAM"),
)


def criteria(s: dict) -> list[str]:
    """The demo's claims, checked on the measured numbers (summaries by stage name)."""
    out = []
    if "sft" + BLANK in s:
        drop = {k: s["sft"][k] - s["sft" + BLANK][k] for k in ("acc", "tiou")}
        ok = max(drop.values()) >= 0.10
        out.append(
            f"- frame blanking after SFT lowers What acc by {drop['acc']:+.3f} and When mIoU by "
            f"{drop['tiou']:+.3f} (reads the video: >= 0.10 on one of them): "
            + ("yes" if ok else "no")
        )
    gains = {k: s["gspo"][k] - s["sft"][k] for k, _ in GSPO_GAINS}
    rose = [label for k, label in GSPO_GAINS if gains[k] > 0]
    out.append(
        "- SFT -> GSPO: "
        + ", ".join(f"{label} {gains[k]:+.3f}" for k, label in GSPO_GAINS)
        + (": all rise" if len(rose) == len(GSPO_GAINS) else f": {len(rose)} of 4 rise")
    )
    return out


def write_report(workdir: str, evals: dict, example: str, timings: dict) -> str:
    head = "| stage | " + " | ".join(label for _, label in TABLE_COLUMNS) + " |"
    sep = "|---" * (len(TABLE_COLUMNS) + 1) + "|"
    rows = [
        f"| {name} | " + " | ".join(f"{ev['summary'][k]:.3f}" for k, _ in TABLE_COLUMNS) + " |"
        for name, ev in evals.items()
        if not name.endswith(BLANK)
    ]
    ablation = [
        f"| {name} | "
        + " | ".join(
            f"{ev['summary'][k]:.3f} ({ev['summary'][k] - evals[name[: -len(BLANK)]]['summary'][k]:+.3f})"
            for k, _ in ABLATION_KEYS
        )
        + " |"
        for name, ev in evals.items()
        if name.endswith(BLANK)
    ]
    s = {k: v["summary"] for k, v in evals.items()}
    checks = [
        f"- {a} -> {b}: reward {s[a]['total']:.3f} -> {s[b]['total']:.3f}, "
        f"mAM {s[a]['mAM']:.3f} -> {s[b]['mAM']:.3f}"
        for a, b in (("init", "sft"), ("sft", "gspo"))
    ]
    diversity = [
        f"- {name}: "
        + ", ".join(f"{task} {n}" for task, n in answer_diversity(ev["items"]).items())
        for name, ev in evals.items()
        if not name.endswith(BLANK)
    ]
    text = "\n".join(
        [
            "# o3video-jax synthetic demo",
            "",
            f"Held-out synthetic STGR-RL prompts ({s['init']['n']:.0f}), greedy decoding. Reward "
            "terms are the training rewards (sigma at its final value); What/When/Where are "
            "V-STAR-style: answer accuracy, temporal IoU of the answered span (R1@0.5), and the "
            "box IoU of grounded claims on spatio-temporal questions; mAM = their mean.",
            "",
            head,
            sep,
            *rows,
            "",
            *checks,
            "",
            "Frame-blanking ablation: the same held-out prompts with every frame (and key frame) "
            "replaced by the background colour; in brackets the change from the model's score on "
            "the real frames. A model that reads the video loses accuracy; one that guesses "
            "does not.",
            "",
            "| model | " + " | ".join(label for _, label in ABLATION_KEYS) + " |",
            "|---" * (len(ABLATION_KEYS) + 1) + "|",
            *ablation,
            "",
            "Criteria:",
            "",
            *criteria(s),
            "",
            "Distinct greedy answers per task on the held-out prompts (a policy that reads the "
            "video answers each prompt differently; a handful means it answers from priors):",
            "",
            *diversity,
            "",
            "Timings (s): " + ", ".join(f"{k} {v:.0f}" for k, v in timings.items()),
            "",
            "![curves](curves.png)",
            "",
            "Example (GSPO model, held-out video):",
            "",
            "```",
            example,
            "```",
            "",
            "![example](example.png)",
            "",
        ]
    )
    io.write_text(os.path.join(workdir, "report.md"), text)
    return text


def run(workdir: str, plan: Plan = FULL) -> dict:
    """The whole demo; returns {"init"|"sft"|"gspo": {"summary", "items"}}."""
    workdir = io.abspath(workdir)
    io.makedirs(workdir)
    t0 = time.perf_counter()
    timings = {}
    _say(f"generating {plan.videos} synthetic videos (+{plan.eval_videos} held out)")
    data = synthetic_data.prepare(
        os.path.join(workdir, "synthetic"),
        videos=plan.videos,
        eval_videos=plan.eval_videos,
        **_data_kw(plan),
    )
    init_dir = os.path.join(workdir, "model_init")
    if not io.exists(os.path.join(init_dir, "config.json")):
        init_model(plan, data, init_dir)
    timings["setup"] = time.perf_counter() - t0
    evals = {}
    t = time.perf_counter()
    evals["init"] = evaluate(plan, data, init_dir, workdir, "init")

    sft_init = init_dir
    if plan.perception_steps:
        _say(f"perception stage for {plan.perception_steps} steps")
        sft_loop.train(
            stage_config(plan, "perception", data, init_dir), os.path.join(workdir, "perception")
        )
        sft_init = os.path.join(workdir, "perception", "hf")
    _say(f"SFT for {plan.sft_steps} steps")
    sft_cfg = stage_config(plan, "sft", data, sft_init)
    sft_loop.train(sft_cfg, os.path.join(workdir, "sft"))
    timings["sft"] = time.perf_counter() - t
    t = time.perf_counter()
    sft_hf = os.path.join(workdir, "sft", "hf")
    evals["sft"] = evaluate(plan, data, sft_hf, workdir, "sft")
    blank = synthetic.blank_media(data.heldout_media_root, os.path.join(workdir, "blank_media"))
    evals["sft" + BLANK] = evaluate(plan, data, sft_hf, workdir, "sft_blank", blank)

    _say(f"GSPO for {plan.gspo_steps} steps")
    rl_cfg = stage_config(plan, "gspo", data, sft_hf)
    rl_loop.train(rl_cfg, os.path.join(workdir, "gspo"))
    timings["gspo"] = time.perf_counter() - t
    gspo_hf = os.path.join(workdir, "gspo", "hf")
    evals["gspo"] = evaluate(plan, data, gspo_hf, workdir, "gspo")
    evals["gspo" + BLANK] = evaluate(plan, data, gspo_hf, workdir, "gspo_blank", blank)

    plot_curves(workdir, os.path.join(workdir, "curves.png"))
    example = render(plan, data, evals["gspo"]["items"], os.path.join(workdir, "example.png"))
    timings["total"] = time.perf_counter() - t0
    write_report(workdir, evals, example, timings)
    summary = {k: v["summary"] for k, v in evals.items()}
    io.write_text(os.path.join(workdir, "summary.json"), json.dumps(summary, indent=1))
    _say(f"done in {timings['total']:.0f}s: {os.path.join(workdir, 'report.md')}")
    return evals


def _data_kw(plan: Plan) -> dict:
    c = load_config(f"stage=sft,size={plan.size}").data.synthetic
    return dict(
        seed=c.seed,
        width=c.width,
        height=c.height,
        fps=c.fps,
        perception=plan.perception,
        objects=plan.objects,
        seconds=plan.seconds,
    )


def main(argv):
    del argv
    from absl import logging

    logging.set_verbosity(logging.WARNING)  # keep Orbax's per-save INFO lines off the console
    from absl import flags

    run(flags.FLAGS.workdir, FAST if flags.FLAGS.fast else FULL)


if __name__ == "__main__":
    from absl import app, flags

    flags.DEFINE_string("workdir", None, "output directory", required=True)
    flags.DEFINE_bool("fast", False, "a ~2 minute smoke run (tiny sizes, few steps)")
    app.run(main)
