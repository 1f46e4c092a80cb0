"""`python -m o3video_jax.infer`: grounded answer + evidence PNG/GIF on a tiny checkpoint."""

import cv2
import numpy as np
import pytest
from evaluate_fixtures import shared_checkpoint, write_video
from PIL import Image

from o3video_jax import infer


@pytest.fixture(scope="module")
def ckpt(tmp_path_factory):
    return shared_checkpoint(tmp_path_factory)


def test_infer_writes_the_evidence(ckpt, tmp_path, capsys):
    video = write_video(str(tmp_path / "clip.mp4"), seconds=3.0, fps=4)
    out = tmp_path / "out"
    infer.main([
        "--checkpoint", ckpt, "--video", video, "--question", "What moves?", "--out", str(out),
        "--max_new_tokens", "8", "--frame_max_pixels", str(56 * 56), "--max_frames", "4",
    ])  # fmt: skip
    printed = capsys.readouterr().out
    assert "Answer:" in printed and "evidence.png" in printed
    png = cv2.imread(str(out / "evidence.png"))
    assert png is not None and png.shape[0] >= 56  # the frame strip plus the answer panel
    gif = Image.open(out / "evidence.gif")
    assert gif.n_frames == 4 + 1  # every frame fed, then the answer held


def test_grounded_prompt_is_the_training_layout():
    p = infer.grounded_prompt("What moves?", 3, 2.0)
    assert p.text.splitlines() == [
        "Frame 1 at 0.0s: <|vision_start|><|image_pad|><|vision_end|>",
        "Frame 2 at 0.5s: <|vision_start|><|image_pad|><|vision_end|>",
        "Frame 3 at 1.0s: <|vision_start|><|image_pad|><|vision_end|>",
        "The video is in total 1 seconds.",
        "What moves?",
    ]
    assert "<obj>object_name</obj><box>bounding_box</box>at<t>time_in_seconds</t>s" in p.system


def test_evidence_drawing_of_known_claims(tmp_path):
    from o3video_jax.eval import animate, visualize

    frames = np.zeros((3, 48, 64, 3), np.uint8)
    text = "<think><obj>cup</obj><box>[4,4,30,30]</box>at<t>1.0</t>s</think><answer>a cup</answer>"
    img = visualize.render_example(frames, [0.0, 1.0, 2.0], text, str(tmp_path / "e.png"))
    # the box is drawn on the middle tile only (its time is 1.0 s)
    assert img[4, 68:94].any() and not img[4, 4:30].any()
    seq = animate.animation_frames(frames, [0.0, 1.0, 2.0], text)
    assert [d for _, d in seq] == [250, 1500, 250, 4000]  # the cited frame is held
    assert animate.write_gif(frames, [0.0, 1.0, 2.0], text, str(tmp_path / "e.gif")) == 4
    with pytest.raises(FileNotFoundError):
        infer.infer("x", str(tmp_path / "missing.mp4"), "q", str(tmp_path))
