"""Draws docs/figures/dataflow.png: record -> host plan -> static batch -> jitted step -> metrics
for SFT, GSPO and evaluation, with the module / function at each step.

    python docs/figures/make_dataflow.py        # needs matplotlib only
"""

from __future__ import annotations

import os

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
from matplotlib.patches import FancyBboxPatch  # noqa: E402

HOST = "#dbe9f6"  # numpy on the host
JIT = "#fde2c4"  # one jitted program (fixed shapes)
FILE = "#e6e6e6"  # files on disk / gs://
EDGE = "#555555"

COLS = {"record": 1.7, "plan": 6.3, "batch": 10.9, "jit": 15.5, "metrics": 20.1}
W, H = 3.3, 1.5


def box(ax, x, y, title, body, color, w=W, h=H):
    ax.add_patch(
        FancyBboxPatch(
            (x - w / 2, y - h / 2),
            w,
            h,
            boxstyle="round,pad=0.02,rounding_size=0.12",
            fc=color,
            ec=EDGE,
            lw=1.0,
        )
    )
    ax.text(x, y + h / 2 - 0.2, title, ha="center", va="top", fontsize=9.5, weight="bold")
    ax.text(x, y - 0.2, body, ha="center", va="center", fontsize=7.6, family="monospace",
            linespacing=1.25)


def arrow(ax, x0, y0, x1, y1, label="", dy=0.1, rad=0.0):
    ax.annotate(
        "",
        xy=(x1, y1),
        xytext=(x0, y0),
        arrowprops=dict(arrowstyle="-|>", color=EDGE, lw=1.1, connectionstyle=f"arc3,rad={rad}"),
    )
    if label:
        ax.text((x0 + x1) / 2, (y0 + y1) / 2 + dy, label, ha="center", va="bottom", fontsize=7.5,
                style="italic", color="#333333")


def lane_title(ax, y, text):
    ax.text(-0.35, y, text, ha="center", va="center", rotation=90, fontsize=12, weight="bold")


def right(c, w=W):
    return COLS[c] + w / 2


def left(c, w=W):
    return COLS[c] - w / 2


def main(out: str) -> None:
    fig, ax = plt.subplots(figsize=(20, 12))
    ax.set_xlim(-0.8, 22.0)
    ax.set_ylim(-0.6, 11.2)
    ax.axis("off")

    heads = {
        "record": "record",
        "plan": "host plan (numpy)",
        "batch": "static batch",
        "jit": "jitted step",
        "metrics": "metrics",
    }
    for c, t in heads.items():
        ax.text(COLS[c], 10.85, t, ha="center", va="center", fontsize=12.5, weight="bold",
                color="#1f3b5a")
    ax.plot([-0.6, 21.9], [10.55, 10.55], color="#999999", lw=0.8)

    # ---- SFT ------------------------------------------------------------------------------
    y = 9.5
    lane_title(ax, y, "SFT")
    box(ax, COLS["record"], y, "STGR-SFT record", "data/records.py\nparse_stgr -> STGRRecord", FILE)
    box(ax, COLS["plan"], y, "example + packing",
        "data/examples.py ExampleBuilder\nvideo.read_video, vision.*\nprompts, tokenizer\n"
        "data/packing.py pack", HOST)
    box(ax, COLS["batch"], y, "SFTBatch",
        "data/model_inputs.py\nbuild_model_inputs -> ModelInputs\n(positions, vision_layout)\n"
        "targets, loss_mask", HOST)
    box(ax, COLS["jit"], y, "SFT train step",
        "train/steps.py make_sft_step\nQwen25VL + losses.cross_entropy\nAdamW (train/state.py)", JIT)
    box(ax, COLS["metrics"], y, "metrics + checkpoint",
        "train/metrics_log.py MetricsWriter\n-> metrics.jsonl, TensorBoard\ncheckpoints/orbax.py", FILE)
    arrow(ax, right("record"), y, left("plan"), y, "pipeline.sft_dataset")
    arrow(ax, right("plan"), y, left("batch"), y, "grain iterator")
    arrow(ax, right("batch"), y, left("jit"), y, "sharding.shard_batch")
    arrow(ax, right("jit"), y, left("metrics"), y, "device_get")

    # ---- GSPO -----------------------------------------------------------------------------
    y = 6.9
    lane_title(ax, 5.6, "GSPO")
    box(ax, COLS["record"], y, "STGR-RL record", "data/records.py\n+ key_frames, key_items", FILE)
    box(ax, COLS["plan"], y, "example (prompt only)",
        "ExampleBuilder (RL prompts)\nframes, key frames, tokens", HOST)
    box(ax, COLS["batch"], y, "RLBatch (prompts)",
        "left padded ModelInputs\nrollouts.trim_left\n-> rl.prompt_buckets", HOST)
    box(ax, COLS["jit"], y, "rollout step (below)",
        "drivers/gspo.py train\nsample -> score -> update", JIT)
    box(ax, COLS["metrics"], y, "metrics + checkpoint",
        "rewards, KL, clip fractions\nMetricsWriter, Orbax", FILE)
    arrow(ax, right("record"), y, left("plan"), y, "pipeline.rl_dataset")
    arrow(ax, right("plan"), y, left("batch"), y, "grain iterator")
    arrow(ax, right("batch"), y, left("jit"), y, "fill_padding_rows")
    arrow(ax, right("jit"), y, left("metrics"), y, "device_get")

    # rollout sub-chain (one GSPO step), two rows
    sw, sh = 3.3, 1.3
    ys1, ys2 = 5.0, 3.25
    xs = [COLS["plan"], COLS["batch"], COLS["jit"], COLS["metrics"]]
    sub1 = [
        ("1 prefill + decode", "rl/sampler.py make_sampler\nprefill once per prompt,\n"
         "KV cache -> G rows, while_loop", JIT),
        ("2 text + parse", "rollouts.decode_completions\nrewards/scan.py parse_batch\n"
         "targets.build_targets", HOST),
        ("3 reward scoring", "rewards/scoring.py score_batch\n(+ ans_acc on host)\n"
         "rewards.compute_rewards", JIT),
        ("4 advantages + rows", "gspo.group_advantages\nrollouts.training_rows\n"
         "(pixels once per prompt)", HOST),
    ]
    sub2 = [
        ("5 log-probs", "rollouts.make_logprob_fn\nold (rollout policy) and\nref (frozen) log-probs",
         JIT),
        ("6 GSPO update(s)", "gspo.make_gspo_update\nnum_updates x minibatches\n"
         "rollouts.group_minibatches", JIT),
    ]
    for (t, b, c), x in zip(sub1, xs, strict=False):
        box(ax, x, ys1, t, b, c, w=sw, h=sh)
    for i in range(3):
        arrow(ax, xs[i] + sw / 2, ys1, xs[i + 1] - sw / 2, ys1)
    for (t, b, c), x in zip(sub2, [COLS["jit"], COLS["metrics"]], strict=True):
        box(ax, x, ys2, t, b, c, w=sw, h=sh)
    arrow(ax, xs[3] - 0.4, ys1 - sh / 2, xs[2] + 0.4, ys2 + sh / 2)
    ax.text((xs[2] + xs[3]) / 2 + 0.55, (ys1 + ys2) / 2 + 0.02, "sharding.shard_batch", fontsize=7.5,
            style="italic", color="#333333")
    arrow(ax, xs[2] + sw / 2, ys2, xs[3] - sw / 2, ys2)
    # from the rollout box to step 1
    arrow(ax, COLS["jit"] - 1.2, y - H / 2, xs[0] + 0.6, ys1 + sh / 2, "", rad=0.0)
    ax.text((COLS["plan"] + COLS["batch"]) / 2, 3.25, "one GSPO step: jitted programs (orange) alternate with host work "
            "(blue)", fontsize=8.5, ha="center", style="italic", color="#333333")

    # ---- evaluation -----------------------------------------------------------------------
    y = 1.35
    lane_title(ax, y, "evaluation")
    box(ax, COLS["record"], y, "benchmark item",
        "evaluate/benchmarks.py\nread_benchmark\n(V-STaR, VideoMME, ...)", FILE)
    box(ax, COLS["plan"], y, "media + prompts",
        "evaluate/media.py (frames)\nevaluate/prompts.py (verbatim)\nrunner.tokenize_prompt",
        HOST)
    box(ax, COLS["batch"], y, "request batch",
        "evaluate/generate.py Generator\nbuild_model_inputs, prompt +\npatch buckets", HOST)
    box(ax, COLS["jit"], y, "sampler",
        "rl/sampler.py make_sampler\n(the training sampler)\nprefill + decode", JIT)
    box(ax, COLS["metrics"], y, "items.jsonl + summary",
        "eval/vstar_parse, eval/tts.vote\nsummary.summarize\n-> eval/vstar.metrics, mcq", FILE)
    arrow(ax, right("record"), y, left("plan"), y, "runner.evaluate")
    arrow(ax, right("plan"), y, left("batch"), y, "Request")
    arrow(ax, right("batch"), y, left("jit"), y, "Generator.__call__")
    arrow(ax, right("jit"), y, left("metrics"), y, "decode_completions")

    # legend
    for i, (c, t) in enumerate([(FILE, "file / record / result"), (HOST, "host, numpy"),
                                (JIT, "jitted, fixed shapes")]):
        x0 = 1.0 + i * 5.0
        ax.add_patch(FancyBboxPatch((x0, -0.45), 0.5, 0.3, boxstyle="round,pad=0.01",
                                    fc=c, ec=EDGE))
        ax.text(x0 + 0.7, -0.3, t, va="center", fontsize=9)

    fig.savefig(out, dpi=110, bbox_inches="tight")
    plt.close(fig)


if __name__ == "__main__":
    main(os.path.join(os.path.dirname(os.path.abspath(__file__)), "dataflow.png"))
