"""The demo end to end in its --fast form: data, tiny model, SFT, GSPO, evaluations, report."""

import json
import os
import re
import subprocess
import sys

import cv2
import jax
import numpy as np

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def test_fast_demo_writes_report_curves_example_and_exports(tmp_path):
    env = dict(os.environ)
    env.update(
        JAX_PLATFORMS="cpu",
        XLA_FLAGS="--xla_force_host_platform_device_count=1",
        PYTHONPATH=REPO + os.pathsep + env.get("PYTHONPATH", ""),
    )
    wd = tmp_path / "demo"
    p = subprocess.run(
        [sys.executable, "-m", "o3video_jax.demo", f"--workdir={wd}", "--fast"],
        env=env,
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=1200,
    )
    assert p.returncode == 0, p.stderr[-3000:]
    assert "held-out init" in p.stdout and "held-out gspo" in p.stdout

    report = (wd / "report.md").read_text()
    rows = {}
    for line in report.splitlines():
        m = re.match(r"\| (init|sft|gspo) \| (.*) \|$", line)
        if m:
            rows[m.group(1)] = [float(x) for x in m.group(2).split(" | ")]
    assert list(rows) == ["init", "sft", "gspo"]
    assert "| sft (frames blanked) |" in report and "| gspo (frames blanked) |" in report
    assert "frame blanking after SFT lowers What acc by" in report
    assert all(len(v) == 12 and all(0.0 <= x <= 7.0 for x in v) for v in rows.values())

    summary = json.loads((wd / "summary.json").read_text())
    for stage, values in rows.items():
        assert values[0] == round(summary[stage]["total"], 3)  # the table is the summary
    n_prompts = summary["init"]["n"]
    assert n_prompts == 6  # 2 held-out videos x 3 RL tasks
    for stage in ("init", "sft", "gspo"):
        lines = (wd / f"heldout_{stage}.jsonl").read_text().splitlines()
        assert len(lines) == n_prompts

    # Pixel-only accuracy of every stage, real and blanked. With every frame blanked the
    # one-object prompts of a kind differ only in the frame they name, and the held-out set
    # pairs every named frame with every answer equally often: exactly chance, any model.
    pixel = summary["pixel_accuracy"]
    assert list(pixel) == ["init", "pixel", "sft", "gspo"]
    for stage, ev in pixel.items():
        for kind in ("color", "half", "visible"):
            assert abs(ev["blank"][kind] - ev["blank"][f"{kind}/chance"]) < 1e-9, (stage, kind, ev)
            assert 0.0 <= ev["real"][kind] <= 1.0
    assert set(summary["criteria"]) >= {"lines", "pixel", "sft_blank_drop", "gspo_gains"}
    assert "| pixel (frames blanked) |" in report

    for png in ("curves.png", "example.png", "reading.png"):
        img = cv2.imread(str(wd / png))
        assert img is not None and img.shape[0] > 50 and img.shape[1] > 50, png

    from o3video_jax.checkpoints import hf
    from o3video_jax.train.metrics_log import read_metrics

    _, init = hf.load(wd / "model_init", progress=False)
    for stage in ("sft", "gspo"):
        for name in ("config.json", "model.safetensors", "tokenizer.json", "tokenizer_config.json"):
            assert (wd / stage / "hf" / name).exists(), (stage, name)
    _, sft = hf.load(wd / "sft" / "hf", progress=False)
    _, gspo = hf.load(wd / "gspo" / "hf", progress=False)
    emb = ("model", "embed_tokens", "embedding")
    get = lambda t: np.asarray(t[emb[0]][emb[1]][emb[2]])
    assert get(sft).shape == get(init).shape == get(gspo).shape
    assert not np.array_equal(get(sft), get(init))  # SFT trained the model
    # GSPO changed the model: its updates moved the weights of the SFT export it started from
    # (a GSPO stage that updates nothing, e.g. zero advantages, fails here).
    moved = [
        float(np.abs(np.asarray(a) - np.asarray(b)).max())
        for a, b in zip(jax.tree.leaves(gspo), jax.tree.leaves(sft), strict=True)
    ]
    rewards = [(m["reward"], m["reward_std"]) for m in read_metrics(str(wd / "gspo"))]
    # no weight decay: zero gradients (every rollout's reward equal) move nothing
    assert max(moved) > 0, f"GSPO moved nothing; (reward, reward_std) per step: {rewards}"
    rl_rows = [
        json.loads(line) for line in (wd / "gspo" / "metrics.jsonl").read_text().splitlines()
    ]
    assert all(m["update_norm"] > 0 for m in rl_rows if "update_norm" in m)


def test_blank_media_keeps_geometry_and_removes_every_object(tmp_path):
    from o3video_jax.data import synthetic, video

    data = synthetic.generate_dataset(tmp_path / "src", 2, seed=3, width=56, height=56)
    assert data["sft"]
    out = synthetic.blank_media(tmp_path / "src", tmp_path / "blank")
    src_names = sorted(os.listdir(tmp_path / "src" / "videos"))
    assert sorted(os.listdir(tmp_path / "blank" / "videos")) == src_names
    for name in src_names:
        a = video.read_video(tmp_path / "src" / "videos" / name, fps=4.0, max_frames=64)
        b = video.read_video(os.path.join(out, "videos", name), fps=4.0, max_frames=64)
        assert b.frames.shape == a.frames.shape and np.allclose(b.timestamps, a.timestamps)
        assert np.abs(a.frames.astype(int) - synthetic.BACKGROUND).max() > 100  # objects
        assert np.abs(b.frames.astype(int) - synthetic.BACKGROUND).max() <= 8  # codec noise
    for name in os.listdir(tmp_path / "src" / "kfs"):
        img = cv2.imread(os.path.join(out, "kfs", name))[..., ::-1]
        assert img.shape == cv2.imread(str(tmp_path / "src" / "kfs" / name)).shape
        assert np.abs(img.astype(int) - synthetic.BACKGROUND).max() <= 8


def test_stage_configs_take_the_plans_perception_loss_and_lrs():
    import types

    from o3video_jax import demo

    data = types.SimpleNamespace(
        **{f: f"/d/{f}" for f in (
            "perception_json", "heldout_perception_json", "sft_json", "heldout_sft_json",
            "rl_json", "heldout_rl_json", "heldout_media_root", "media_root", "tokenizer_dir",
        )}
    )  # fmt: skip
    plan = demo.Plan(perception_steps=8, perception_lr=3e-4, perception_loss="answer", sft_lr=5e-4)
    p = demo.stage_config(plan, "perception", data, "/ckpt")
    assert (p.data.loss_mask, p.optim.lr, p.total_steps) == ("answer", 3e-4, 8)
    assert p.data.train_json == "/d/perception_json"
    s = demo.stage_config(plan, "sft", data, "/ckpt")
    assert (s.data.loss_mask, s.optim.lr) == ("assistant", 5e-4)  # SFT keeps its own mask
    # A longer rollout grows the GSPO rows by the extra tokens and leaves the SFT rows alone.
    base = demo.stage_config(demo.Plan(), "gspo", data, "/ckpt")
    longer = demo.Plan(max_new_tokens=base.rl.max_new_tokens + 40)
    g = demo.stage_config(longer, "gspo", data, "/ckpt")
    assert g.rl.max_new_tokens == base.rl.max_new_tokens + 40
    assert g.data.max_seq_len == base.data.max_seq_len + 40
    assert demo.stage_config(longer, "sft", data, "/ckpt").data.max_seq_len == s.data.max_seq_len
