"""The demo's pixel-only stages: records whose answer only the frames give, balanced so a
text-only model is at chance, and a small first stage that learns to read them."""

import collections
import dataclasses
import json
import os

import numpy as np
import pytest

from o3video_jax.data import pixel_tasks, synthetic, video

SAMPLING = pixel_tasks.Sampling(fps=2.0, max_frames=8, min_frames=4)


def _seen(root, record):
    """The frames the model is given (the pipeline's sampling) and their labels."""
    clip = video.read_video(
        os.path.join(root, record["video_path"]),
        SAMPLING.fps,
        SAMPLING.max_frames,
        SAMPLING.min_frames,
        sampling="o3",
    )
    return clip.frames.astype(int), [str(round(float(t), 1)) for t in clip.o3_labels]


def _object_mask(frame, color=None):
    """Pixels far from the background (or near `color`), read off the decoded frame."""
    ref = synthetic.BACKGROUND if color is None else synthetic.COLORS[color]
    d = np.abs(frame - np.asarray(ref)).max(-1)
    return d > 80 if color is None else d < 50


@pytest.fixture(scope="module")
def records(tmp_path_factory):
    root = tmp_path_factory.mktemp("pixels")
    kinds = pixel_tasks.KINDS_ONE + pixel_tasks.KINDS_MANY
    paths = pixel_tasks.generate(root, kinds, 24, seed=5, sampling=SAMPLING, seconds=4)
    return root, {k: json.loads(open(paths[k]).read()) for k in kinds}


def test_answers_are_what_the_decoded_frames_show(records):
    root, by_kind = records
    for kind, recs in by_kind.items():
        for r in recs:
            frames, labels = _seen(root, r)
            q, a = r["question"], r["answer"]
            color = q.split("the ")[1].split(" object")[0] if kind.endswith("_m") else None
            masks = [_object_mask(f, color) for f in frames]
            if kind in ("half", "half_m", "visible", "visible_m"):
                t = q.rsplit(" at ", 1)[1].removesuffix("s?")
                m = masks[labels.index(t)]
                if kind.startswith("visible"):
                    assert (m.sum() > 20) == (a == "yes"), (r["id"], m.sum())
                else:  # the centroid's side; the generator keeps it >= width / 8 from the middle
                    xs = np.nonzero(m)[1]
                    assert len(xs) > 20, r["id"]
                    assert (xs.mean() < frames.shape[2] / 2) == (a == "left"), r["id"]
            elif kind.startswith("first"):
                seen = [m.sum() > 20 for m in masks]
                assert str(seen.index(True) + 1) == a, (r["id"], seen)
            elif kind == "color":
                lit = np.concatenate([f[m] for f, m in zip(frames, masks, strict=True)])
                dist = {c: np.abs(lit - np.asarray(v)).sum(-1).mean()
                        for c, v in synthetic.COLORS.items()}  # fmt: skip
                assert min(dist, key=dist.get) == a, r["id"]


def test_answers_are_balanced_and_independent_of_the_question(records):
    _, by_kind = records
    for kind, recs in by_kind.items():
        cands = pixel_tasks.CANDIDATES[kind]
        counts = collections.Counter(r["answer"] for r in recs)
        assert set(counts) == set(cands) and len(set(counts.values())) == 1, (kind, counts)
        # every question text (the named time, the named colour) comes with every answer
        # equally often, or not at all: a text-only model is at chance
        by_q = collections.defaultdict(collections.Counter)
        for r in recs:
            by_q[r["question"].split(" at ")[-1] if "half" in kind or "visible" in kind
                 else "-"][r["answer"]] += 1  # fmt: skip
        if not kind.endswith("_m"):
            for q, c in by_q.items():
                assert len(set(c.values())) == 1 and len(c) == len(cands), (kind, q, c)
    assert pixel_tasks.kind_of("px_half_m_00012-px") == "half_m"
    assert pixel_tasks.chance("color") == pytest.approx(1 / 6)


def test_answer_mask_covers_every_answer_character(loop_data):
    """The pixel stages train the answer tokens alone: every character of every candidate
    answer must lie in a trained token, also when the BPE merges it with the tag's ">"."""
    from o3video_jax.data.tokenizer import Tokenizer, make_tiny_tokenizer

    tok = Tokenizer.from_dir(loop_data.tokenizer_dir)
    for cands in pixel_tasks.CANDIDATES.values():
        for c in cands:
            chat = [
                {"role": "user", "content": "Q?"},
                {"role": "assistant", "content": f"<think>t</think>\n<answer>{c}</answer>"},
            ]
            t = tok.tokenize_chat(chat, loss_mask="answer")
            trained = tok.decode(t.input_ids[t.loss_mask > 0])
            assert trained.endswith(f"{c}</answer>") and len(trained) <= len(c) + 10, (c, trained)
    # A BPE that merges ">s" (as the demo's tokenizer did): "square" is still trained whole.
    corpus = ["<answer>square</answer>"] * 200 + ["<answer>circle</answer>"]
    make_tiny_tokenizer(loop_data.root + "/merge_tok", corpus)
    tok = Tokenizer.from_dir(loop_data.root + "/merge_tok")
    chat = [{"role": "assistant", "content": "<answer>square</answer>"}]
    t = tok.tokenize_chat(chat, loss_mask="answer")
    assert "square" in tok.decode(t.input_ids[t.loss_mask > 0])


def test_blanked_frames_score_exactly_chance(loop_data, tmp_path):
    """With every frame blanked, the one-object records of a kind differ only in the frame
    they name, and every named frame comes with every answer equally often: whatever the
    model, each kind's held-out accuracy is exactly its chance (here an untrained model)."""
    from o3video_jax import demo, demo_pixels
    from o3video_jax.checkpoints import hf
    from o3video_jax.data import synthetic_runs as synthetic_data

    plan = demo.Plan(size="tiny", pixel_seq_len=256)
    kinds = ("color", "shape", "half", "visible")
    kw = dict(sampling=demo.pixel_sampling(plan), seconds=4, width=56, height=56, fps=4)
    held = pixel_tasks.generate(tmp_path / "held", kinds, 24, seed=2, **kw)
    blank = synthetic.blank_media(tmp_path / "held", tmp_path / "blank")
    pixels = demo_pixels.PixelData(
        train={"one": "", "many": ""}, heldout={k: held[k] for k in kinds}, media_root="",
        heldout_media_root=str(tmp_path / "held"), blank_media_root=blank,
    )  # fmt: skip
    demo.init_model(plan, loop_data, str(tmp_path / "init"))
    cfg = demo.pixel_config(plan, "pixel2", loop_data, pixels, str(tmp_path / "init"), 1)
    mc, params = hf.load(tmp_path / "init", progress=False)
    tok = synthetic_data.load_tokenizer(loop_data)
    acc = demo_pixels.evaluate(cfg, mc, params, tok, pixels.heldout, blank, str(tmp_path))
    for k in kinds:
        assert acc[k] == pytest.approx(pixel_tasks.chance(k)), (k, acc)
    assert acc["mean"] == pytest.approx(acc["mean/chance"])


def test_small_first_stage_reads_the_frames(loop_data, tmp_path):
    """The demo's first stage, small: one-object videos, "What colour is the object?", two
    frames, the demo's model trained by the SFT loop on the answer tokens at the probe's lr.
    With every frame blanked all held-out prompts are identical, so the accuracy is exactly
    chance (1/6, the held-out set being balanced); on the real frames it must be far above
    (0.58 at 100 steps when measured, README)."""
    from o3video_jax import demo, demo_pixels
    from o3video_jax.checkpoints import hf
    from o3video_jax.data import synthetic_runs as synthetic_data
    from o3video_jax.drivers import sft as sft_loop

    plan = demo.Plan(size="demo", pixel_batch=16, pixel_lr=3e-4, max_frames=2, pixel_seq_len=256)
    sampling = demo.pixel_sampling(plan)
    kw = dict(sampling=sampling, seconds=4, width=84, height=56, fps=4)
    tr = pixel_tasks.generate(tmp_path / "train", ("color",), 240, seed=1, **kw)
    held = pixel_tasks.generate(tmp_path / "held", ("color",), 24, seed=2, **kw)
    blank = synthetic.blank_media(tmp_path / "held", tmp_path / "blank")
    pixels = demo_pixels.PixelData(
        train={"one": tr["color"], "many": tr["color"]},
        heldout={"color": held["color"]},
        media_root=str(tmp_path / "train"),
        heldout_media_root=str(tmp_path / "held"),
        blank_media_root=blank,
    )
    demo.init_model(plan, loop_data, str(tmp_path / "init"))
    cfg = demo.pixel_config(plan, "pixel1", loop_data, pixels, str(tmp_path / "init"), 150)
    sft_loop.train(cfg, str(tmp_path / "run"))
    mc, params = hf.load(tmp_path / "run" / "hf", progress=False)
    tok = synthetic_data.load_tokenizer(loop_data)
    acc = {
        name: demo_pixels.evaluate(cfg, mc, params, tok, pixels.heldout, root, str(tmp_path))
        for name, root in (("real", pixels.heldout_media_root), ("blank", blank))
    }
    assert acc["blank"]["color"] == pytest.approx(1 / 6), acc
    assert acc["real"]["color"] >= 1 / 6 + 0.3, acc
    assert dataclasses.asdict(sampling)["max_frames"] == 2
