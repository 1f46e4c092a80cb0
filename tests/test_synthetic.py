"""Synthetic videos: ground truth agrees with the decoded pixels; records follow the formats."""

import json
import math
import os
import re

import cv2
import numpy as np
import pytest

from o3video_jax.data import synthetic, video

SQUARE = synthetic.ObjectSpec("red", "square", 20, 2, 9, (30.0, 20.0), (100.0, 20.0))
CIRCLE = synthetic.ObjectSpec("blue", "circle", 24, 0, 5, (80.0, 70.0), (80.0, 70.0))
SPEC = synthetic.VideoSpec(160, 120, 4, 12, (SQUARE, CIRCLE))


def test_ground_truth_by_hand():
    _, gt = synthetic.render(SPEC)
    # Square of side 20 centred at x = 30 + a * 70 (a = (i - 2) / 7), y = 20: pixels
    # [cx - 10, cx + 10) x [10, 30).
    np.testing.assert_array_equal(gt.boxes["red square"][2], [20, 10, 40, 30])
    np.testing.assert_array_equal(gt.boxes["red square"][9], [90, 10, 110, 30])
    assert gt.visible["red square"].tolist() == [False] * 2 + [True] * 8 + [False] * 2
    assert gt.intervals["red square"] == (0.5, 2.5)  # frames 2..9 at 4 fps
    assert np.isnan(gt.boxes["red square"][0]).all()
    # Circle of radius 12 at (80, 70): 25 pixels across, [68, 93).
    np.testing.assert_array_equal(gt.boxes["blue circle"][0], [68, 58, 93, 83])
    assert gt.intervals["blue circle"] == (0.0, 1.5)


@pytest.mark.parametrize("seed", [None, 0, 1])
def test_decoded_pixels_match_ground_truth(tmp_path, seed):
    spec = SPEC if seed is None else synthetic.random_spec(np.random.default_rng(seed))
    path = tmp_path / "v.mp4"
    gt = synthetic.make_video(path, spec)
    clip = video.read_video(path, fps=spec.fps, max_frames=spec.num_frames)
    assert clip.frame_indices.tolist() == list(range(spec.num_frames))
    bg = np.array(synthetic.BACKGROUND, float)
    h, w = spec.height, spec.width
    for i, frame in enumerate(clip.frames.astype(float)):
        outside = np.ones(frame.shape[:2], bool)
        for name, boxes in gt.boxes.items():
            if not gt.visible[name][i]:
                continue
            x1, y1, x2, y2 = boxes[i].astype(int)
            outside[max(y1 - 2, 0) : y2 + 2, max(x1 - 2, 0) : x2 + 2] = False
            # The central part of the box is inside every shape; colour survives mp4v.
            cx, cy, r = (x1 + x2) // 2, (y1 + y2) // 2, (x2 - x1) // 5
            mean = frame[cy - r : cy + r, cx - r : cx + r].reshape(-1, 3).mean(0)
            color = np.array(synthetic.COLORS[name.split()[0]], float)
            assert np.abs(mean - color).max() < 20, (i, name, mean)
            # The box is tight: the object-coloured pixels near it span it to within 2 pixels
            # (mp4v's 4:2:0 chroma and DCT blur edges by about that much).
            near = np.zeros((h, w), bool)
            near[max(y1 - 4, 0) : y2 + 4, max(x1 - 4, 0) : x2 + 4] = True
            ys, xs = np.nonzero(near & (np.abs(frame - color).max(-1) < 60))
            found = [xs.min(), ys.min(), xs.max() + 1, ys.max() + 1]
            assert np.abs(np.array(found) - boxes[i]).max() <= 2, (i, name, found, boxes[i])
        assert np.abs(frame[outside].mean(0) - bg).max() < 6, i  # YUV round trip: ~4


def test_random_spec_lanes_do_not_overlap():
    for seed in range(20):
        spec = synthetic.random_spec(np.random.default_rng(seed))
        _, gt = synthetic.render(spec)
        names = list(gt.boxes)
        starts = sorted(iv[0] for iv in gt.intervals.values())
        assert len(set(starts)) == len(starts)  # "which appears first" has one answer
        for i in range(spec.num_frames):
            vis = [gt.boxes[n][i] for n in names if gt.visible[n][i]]
            for a in range(len(vis)):
                for b in range(a + 1, len(vis)):
                    assert vis[a][3] <= vis[b][1] or vis[b][3] <= vis[a][1]  # disjoint rows
        for a, b in gt.intervals.values():
            assert (a * 2).is_integer() and (b * 2).is_integer() and b - a >= 1.5


SFT_FIELDS = {"id", "task", "source", "question", "answer", "reasoning_process", "video_path"}
RL_FIELDS = SFT_FIELDS - {"reasoning_process"}
VSTAR_FIELDS = {
    "vid", "domain", "fps", "frame_count", "width", "height", "question", "answer",
    "temporal_question", "spatial_question", "spatial_question_2", "timestamps", "bboxes",
}  # fmt: skip
GROUNDED = re.compile(r"<obj>([a-z ]+)</obj><box>\[([0-9., ]+)\]</box>at<t>([0-9.]+)</t>s")


@pytest.fixture(scope="module")
def dataset(tmp_path_factory):
    root = tmp_path_factory.mktemp("syn")
    return str(root), synthetic.generate_dataset(root, 6, seed=3)


def _gt(root):
    with open(os.path.join(root, "ground_truth.json")) as f:
        return json.load(f)


def test_records_follow_formats(dataset):
    root, out = dataset
    gts = _gt(root)
    assert len(out["sft"]) == len(out["rl"]) == 18 and len(out["vstar"]) == 6
    for rec in out["sft"] + out["rl"]:
        sft = "reasoning_process" in rec
        base = SFT_FIELDS if sft else RL_FIELDS
        st = rec["task"] == "temporal-spatial free-form QA"
        assert set(rec) == base | ({"key_frames", "key_items"} if st else set())
        assert os.path.isfile(os.path.join(root, rec["video_path"]))
        vid = rec["video_path"].split("/")[-1][:-4]
        gt = gts[vid]
        if rec["task"] == "temporal QA":
            name = re.search(r"is the (.+) visible", rec["question"]).group(1)
            span = gt[name]["interval"]
            if sft:
                assert rec["answer"] == f"From <t>{span[0]:.1f}</t>s to <t>{span[1]:.1f}</t>s"
            else:
                assert json.loads(rec["answer"]) == span
        elif rec["task"] == "General video QA MCQ":
            options = dict(re.findall(r"^([A-D])\. (.+)$", rec["question"], re.M))
            picked = options[rec["answer"]]
            first = min(gt, key=lambda n: gt[n]["interval"][0])
            assert picked == first if "first" in rec["question"] else picked not in gt
        else:
            assert st and rec["source"].startswith("STR")
            _check_key_frames(root, rec, gt)
            if sft:
                _check_reasoning(rec["reasoning_process"], gt)


def _check_key_frames(root, rec, gt):
    for kf in rec["key_frames"]:
        img = cv2.imread(os.path.join(root, kf["path"]))
        assert img is not None and img.shape == (120, 160, 3)
        frame = round(kf["time"] * 4)
        for name, boxes in rec["key_items"][str(kf["idx"])].items():
            want = np.array(gt[name]["boxes"][frame]) / [160, 120, 160, 120]
            np.testing.assert_allclose(boxes[0], want, atol=1e-4)
            x1, y1, x2, y2 = np.array(gt[name]["boxes"][frame], int)
            centre = img[(y1 + y2) // 2, (x1 + x2) // 2][::-1].astype(float)
            assert np.abs(centre - synthetic.COLORS[name.split()[0]]).max() < 30


def _check_reasoning(text, gt):
    mentions = GROUNDED.findall(text)
    assert len(mentions) == 2
    for name, box, t in mentions:
        frame = round(float(t) * 4)
        want = np.array(gt[name]["boxes"][frame]) / [160, 120, 160, 120]
        np.testing.assert_allclose([float(v) for v in box.split(", ")], want, atol=0.005)


def test_vstar_records(dataset):
    root, out = dataset
    gts = _gt(root)
    for rec in out["vstar"]:
        assert set(rec) == VSTAR_FIELDS
        gt = gts[rec["vid"]]
        name = re.search(r"the (.+) visible", rec["temporal_question"]).group(1)
        assert rec["timestamps"] == gt[name]["interval"]
        a, b = rec["timestamps"]
        assert [x["timestamp"] for x in rec["bboxes"]] == [
            s for s in range(math.ceil(a), math.floor(b) + 1) if s < b
        ]
        for x in rec["bboxes"]:
            box = gt[name]["boxes"][x["timestamp"] * 4]
            assert [x["xmin"], x["ymin"], x["xmax"], x["ymax"]] == box


def test_deterministic_per_seed(tmp_path, dataset):
    _, out = dataset
    again = synthetic.generate_dataset(tmp_path / "a", 6, seed=3)
    other = synthetic.generate_dataset(tmp_path / "b", 6, seed=4)
    for key in ("sft", "rl", "vstar"):
        assert json.dumps(again[key]) == json.dumps(out[key])
    assert json.dumps(other["sft"]) != json.dumps(out["sft"])


def test_perception_records_dense_one_hop(dataset):
    """perception.json: per video one inventory (every object in order of appearance, with
    its span from the ground truth) and one span record per object; loadable as SFT records."""
    from o3video_jax.data.records import read_json_records

    _, ds = dataset
    gt = json.load(open(ds["paths"]["ground_truth"]))
    dense = ds["perception"]
    assert dense == json.load(open(ds["paths"]["perception"]))
    for vid, objects in gt.items():
        mine = [r for r in dense if r["id"].startswith(vid + "-")]
        inv = [r for r in mine if r["id"].endswith("-sft-inv")]
        assert len(inv) == 1 and len(mine) == 1 + len(objects)
        order = sorted(objects, key=lambda n: objects[n]["interval"][0])
        assert inv[0]["answer"] == ", then ".join(f"the {n}" for n in order).capitalize() + "."
        for n in order:
            a, b = objects[n]["interval"]
            assert (
                f"<obj>{n}</obj> from <t>{a:.1f}</t>s to <t>{b:.1f}</t>s"
                in (inv[0]["reasoning_process"])
            )
    assert len(read_json_records(ds["paths"]["perception"])) == len(dense)
