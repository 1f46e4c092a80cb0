r"""Runs variants of the synthetic demo side by side and prints their held-out tables.

  python experiments/demo_sweep.py --workdir /tmp/sweep [--variants base,v1k] [--jobs 4]
      [--timeout 900] [--sft-only]

Each variant is a `demo.Plan` (below) run as its own process (`demo.run`, or SFT and its
evaluations only with --sft-only), so variants run in parallel on a many-core host or share
one GPU. Every held-out evaluation is appended to WORKDIR/NAME/evals.jsonl as soon as it
finishes, so a variant stopped by --timeout still reports what it measured. The table has,
per variant and stage, the held-out reward, What accuracy, When mIoU, Where vIoU and mAM, and
the change under frame blanking (a model that reads the video loses accuracy).

This is how the demo's recipe (`demo.FULL`) was chosen; the figures are in README "Demo".
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import os
import subprocess
import sys
import time

from o3video_jax import demo

VARIANTS = {
    "fast": demo.FAST,  # a smoke test of this script
    # The demo before issue 12: 128 videos, lr 3e-3, 240 steps.
    "base": demo.Plan(sft_lr=3e-3),
    "v1k_lr1e3_600": demo.Plan(videos=1024, sft_steps=600, sft_lr=1e-3),
    "v1k_lr5e4_900": demo.Plan(videos=1024, sft_steps=900, sft_lr=5e-4),
    "v1k_lr5e4_900_pc": demo.Plan(videos=1024, sft_steps=900, sft_lr=5e-4, perception=True),
    "v1k_lr1e3_900_pc": demo.Plan(videos=1024, sft_steps=900, sft_lr=1e-3, perception=True),
    "v1k_lr5e4_900_pc_2obj": demo.Plan(
        videos=1024, sft_steps=900, sft_lr=5e-4, perception=True, objects=(2, 2)
    ),
    "v2k_lr5e4_1800_pc": demo.Plan(videos=2048, sft_steps=1800, sft_lr=5e-4, perception=True),
    "v128_lr5e4_900_pc": demo.Plan(videos=128, sft_steps=900, sft_lr=5e-4, perception=True),
    "v2k_lr1e3_1800_pc": demo.Plan(videos=2048, sft_steps=1800, sft_lr=1e-3, perception=True),
    "v1k_lr5e4_900_pc_g80": demo.Plan(
        videos=1024, sft_steps=900, sft_lr=5e-4, perception=True, gspo_steps=80
    ),
    # CPU screening (48 held-out videos, 144 prompts; run with --sft-only)
    "s_v1k_lr5e4_900_pc": demo.Plan(
        videos=1024, eval_videos=48, sft_steps=900, sft_lr=5e-4, perception=True
    ),
    "s_v1k_lr1e3_600": demo.Plan(videos=1024, eval_videos=48, sft_steps=600, sft_lr=1e-3),
    "fast_p": dataclasses.replace(demo.FAST, perception_steps=6),
    # a perception stage (dense one-hop records) before SFT
    "s_p300_s400": demo.Plan(
        videos=1024, eval_videos=48, perception_steps=300, sft_steps=400, sft_lr=5e-4
    ),
    "s_p600_s300": demo.Plan(
        videos=1024, eval_videos=48, perception_steps=600, sft_steps=300, sft_lr=5e-4
    ),
    # the perception loss on the answer tokens alone (what must be read), probe's lr
    "s_pa600_s300": demo.Plan(
        videos=1024,
        eval_videos=48,
        perception_steps=600,
        perception_lr=3e-4,
        perception_loss="answer",
        sft_steps=300,
        sft_lr=3e-4,
    ),
}
# The same on short videos whose every 0.5 s frame is sampled (3-4 s at 2 fps, up to 8 frames):
# each object's visible span covers a whole frame, so every answer can be read.
VARIANTS["s_short_pa600_s300"] = dataclasses.replace(
    VARIANTS["s_pa600_s300"], seconds=(3, 4), max_frames=8, extra_seq_len=64, max_patches=288
)
KEYS = (("total", "reward"), ("acc", "What"), ("tiou", "When"), ("viou", "Where"), ("mAM", "mAM"))


def run_one(name: str, workdir: str, sft_only: bool) -> None:
    plan = VARIANTS[name]
    log = os.path.join(workdir, "evals.jsonl")
    evaluate = demo.evaluate

    def logged(plan, data, checkpoint, wd, stage, media_root=None):
        out = evaluate(plan, data, checkpoint, wd, stage, media_root)
        with open(log, "a") as f:
            f.write(json.dumps({"stage": stage, "time": time.time(), **out["summary"]}) + "\n")
        return out

    demo.evaluate = logged
    try:
        import matplotlib  # noqa: F401
    except ImportError:  # a bare GPU host: the tables matter, not the pictures
        demo.plot_curves = lambda *a, **k: None
        demo.render = lambda *a, **k: ""
    if sft_only:

        def stop(*a, **k):
            raise _SftDone

        demo.rl_loop.train = stop
    try:
        demo.run(workdir, plan)
    except _SftDone:
        pass


class _SftDone(Exception):
    """Raised in place of GSPO with --sft-only."""


def table(root: str, names: list[str]) -> str:
    head = "| variant | stage | " + " | ".join(label for _, label in KEYS) + " |"
    lines = [head, "|---" * (len(KEYS) + 2) + "|"]
    for name in names:
        path = os.path.join(root, name, "evals.jsonl")
        rows = {}
        if os.path.exists(path):
            for line in open(path):
                r = json.loads(line)
                rows[r["stage"]] = r
        if not rows:
            lines.append(f"| {name} | (no evaluation finished) |" + " |" * len(KEYS))
        for stage, r in rows.items():
            if stage.endswith("_blank"):
                ref = rows.get(stage[: -len("_blank")])
                cells = [
                    f"{r[k]:.3f} ({r[k] - ref[k]:+.3f})" if ref else f"{r[k]:.3f}" for k, _ in KEYS
                ]
            else:
                cells = [f"{r[k]:.3f}" for k, _ in KEYS]
            lines.append(f"| {name} | {stage} | " + " | ".join(cells) + " |")
    return "\n".join(lines)


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--workdir", required=True)
    p.add_argument("--variants", default=",".join(VARIANTS))
    p.add_argument("--jobs", type=int, default=len(VARIANTS))
    p.add_argument("--timeout", type=float, default=3600.0, help="seconds per variant")
    p.add_argument("--sft-only", action="store_true")
    p.add_argument("--one", help=argparse.SUPPRESS)
    a = p.parse_args()
    if a.one:
        run_one(a.one, os.path.join(a.workdir, a.one), a.sft_only)
        return 0
    names = a.variants.split(",")
    unknown = [n for n in names if n not in VARIANTS]
    if unknown:
        raise SystemExit(f"unknown variants {unknown}; known: {', '.join(VARIANTS)}")
    os.makedirs(a.workdir, exist_ok=True)
    pending, running = list(names), {}
    while pending or running:
        while pending and len(running) < a.jobs:
            name = pending.pop(0)
            os.makedirs(os.path.join(a.workdir, name), exist_ok=True)
            cmd = [sys.executable, __file__, "--workdir", a.workdir, "--one", name]
            cmd += ["--sft-only"] if a.sft_only else []
            logf = open(os.path.join(a.workdir, name, "log.txt"), "w")
            proc = subprocess.Popen(cmd, stdout=logf, stderr=subprocess.STDOUT)
            running[name] = (proc, time.time(), logf)
        for name, (proc, t0, logf) in list(running.items()):
            if proc.poll() is not None or time.time() - t0 > a.timeout:
                if proc.poll() is None:
                    proc.kill()
                    proc.wait()
                logf.close()
                print(f"{name}: rc={proc.returncode} after {time.time() - t0:.0f} s", flush=True)
                del running[name]
        time.sleep(2)
    text = table(a.workdir, names)
    print(text)
    with open(os.path.join(a.workdir, "sweep.md"), "w") as f:
        f.write(text + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
