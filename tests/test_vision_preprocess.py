"""smart_resize, patch layout and parity with transformers' Qwen2-VL processors."""

import ast
import os
import types
import warnings

import cv2
import numpy as np
import pytest

from o3video_jax.data import video, vision

MEAN = np.array([0.48145466, 0.4578275, 0.40821073], np.float32)
STD = np.array([0.26862954, 0.26130258, 0.27577711], np.float32)


@pytest.mark.parametrize(
    "hw, expected",
    [
        ((100, 150), (112, 140)),
        ((28, 28), (56, 56)),
        ((10, 1000), (28, 560)),
        ((480, 640), (476, 644)),
        ((1080, 1920), (728, 1316)),
        ((2000, 3000), (812, 1204)),
    ],
)
def test_smart_resize_reference_table(hw, expected):
    # docs/qwen2_5_vl.md §5.1, defaults 3136 / 1,003,520.
    assert vision.smart_resize(*hw) == expected


def test_smart_resize_rounds_half_to_even():
    # 70/28 = 2.5 -> 2 and 98/28 = 3.5 -> 4 (Python round); floor(x + 0.5) would give 3 and 4.
    assert vision.smart_resize(70, 98, min_pixels=28 * 28) == (56, 112)
    assert vision.smart_resize(126, 126, min_pixels=28 * 28) == (112, 112)  # 4.5 -> 4


def test_smart_resize_bad_input():
    with pytest.raises(ValueError, match="aspect ratio"):
        vision.smart_resize(10, 2001)
    with pytest.raises(ValueError, match="positive"):
        vision.smart_resize(0, 100)


def _normalised(x):
    return (x.astype(np.float32) / 255.0 - MEAN) / STD


def test_image_patch_layout_by_hand():
    rng = np.random.default_rng(0)
    img = rng.integers(0, 256, (56, 112, 3), dtype=np.uint8)  # grid (1, 4, 8), no resize
    pv, grid = vision.preprocess_image(img, min_pixels=28 * 28)
    assert grid.tolist() == [1, 4, 8]
    assert pv.shape == (32, 1176) and pv.dtype == np.float32
    # Row of patch (h, w): ((h//2 * 4 + w//2) * 2 + h%2) * 2 + w%2 (merge blocks of 2x2, 4 per
    # block row); element (c, t, ph, pw) = pixel (14h + ph, 14w + pw, c) for both t.
    norm = _normalised(img)
    for h in range(4):
        for w in range(8):
            row = ((h // 2 * 4 + w // 2) * 2 + h % 2) * 2 + w % 2
            patch = norm[14 * h : 14 * h + 14, 14 * w : 14 * w + 14].transpose(2, 0, 1)
            got = pv[row].reshape(3, 2, 14, 14)
            np.testing.assert_allclose(got[:, 0], patch, atol=1e-5)
            np.testing.assert_array_equal(got[:, 1], got[:, 0])


def test_normalisation_value_by_hand():
    img = np.zeros((28, 28, 3), np.uint8)
    img[..., 0] = 255
    pv, _ = vision.preprocess_image(img, min_pixels=28 * 28)
    red = pv[0].reshape(3, 2, 14, 14)
    assert red[0, 0, 0, 0] == pytest.approx((1 - 0.48145466) / 0.26862954, abs=1e-6)
    assert red[1, 0, 0, 0] == pytest.approx(-0.4578275 / 0.26130258, abs=1e-6)


def test_video_layout_pairs_frames_and_repeats_last():
    frames = np.stack([np.full((28, 56, 3), 10 * (i + 1), np.uint8) for i in range(3)])
    pv, grid = vision.preprocess_video(frames, min_pixels=28 * 28)
    assert grid.tolist() == [2, 2, 4]
    got = pv.reshape(2, 8, 3, 2, 14, 14)  # (t, patch, c, T, ph, pw)
    # Temporal slot T of grid step t holds frame 2t + T; frame 3 is repeated into slot 1.
    for t, pair in enumerate([(10, 20), (30, 30)]):
        for slot, v in enumerate(pair):
            want = _normalised(np.full((3,), v, np.uint8))
            want = np.broadcast_to(want[None, :, None, None], (8, 3, 14, 14))
            np.testing.assert_allclose(got[t, :, :, slot], want, atol=1e-5)


def test_preprocess_rejects_bad_arrays():
    with pytest.raises(ValueError, match="uint8"):
        vision.preprocess_image(np.zeros((28, 28, 3), np.float32))
    with pytest.raises(ValueError, match="RGB"):
        vision.preprocess_video(np.zeros((2, 28, 28), np.uint8))
    with pytest.raises(ValueError, match="resample"):
        vision.resize(np.zeros((30, 30, 3), np.uint8), 28, 28, "nearest")


def test_second_per_grid():
    assert vision.second_per_grid(2.0) == 1.0
    assert vision.second_per_grid(24.0) == pytest.approx(2 / 24)
    with pytest.raises(ValueError):
        vision.second_per_grid(0.0)


def _scene(h, w, seed=0):
    """A smooth natural-ish frame: gradients plus filled shapes (real video content)."""
    rng = np.random.default_rng(seed)
    y, x = np.mgrid[0:h, 0:w]
    img = np.stack([x * 255 // w, y * 255 // h, (x + y) * 127 // (h + w)], -1).astype(np.uint8)
    for _ in range(8):
        c = tuple(int(v) for v in rng.integers(0, 256, 3))
        cv2.circle(
            img, tuple(int(v) for v in rng.integers(0, [w, h])), int(rng.integers(5, 60)), c, -1
        )
    return cv2.GaussianBlur(img, (3, 3), 0)


def _hf_image_processor(**kw):
    pytest.importorskip("torch")
    transformers = pytest.importorskip("transformers")
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        # Without torchvision, Qwen2VLImageProcessor falls back to this PIL/numpy backend.
        return transformers.Qwen2VLImageProcessorPil(**kw)


@pytest.mark.live_hf
@pytest.mark.parametrize("shape", [(56, 84), (112, 140), (224, 420)])
def test_image_parity_with_transformers_no_resize(shape):
    hf = _hf_image_processor(min_pixels=28 * 28, max_pixels=200704)
    img = np.random.default_rng(1).integers(0, 256, (*shape, 3), dtype=np.uint8)
    want = hf(images=[img], return_tensors="np")
    pv, grid = vision.preprocess_image(img, min_pixels=28 * 28, max_pixels=200704)
    np.testing.assert_array_equal(grid[None], want["image_grid_thw"])
    np.testing.assert_allclose(pv, want["pixel_values"], atol=1e-5, rtol=0)


@pytest.mark.live_hf
@pytest.mark.parametrize("shape", [(100, 150), (360, 640), (480, 640)])
def test_image_parity_with_transformers_resized(shape):
    hf = _hf_image_processor(min_pixels=3136, max_pixels=vision.O3_FRAME_MAX_PIXELS)
    img = _scene(*shape)
    want = hf(images=[img], return_tensors="np")
    kw = dict(min_pixels=3136, max_pixels=vision.O3_FRAME_MAX_PIXELS)
    pv, grid = vision.preprocess_image(img, **kw)
    np.testing.assert_array_equal(grid[None], want["image_grid_thw"])
    # "pil" runs the same PIL bicubic as transformers' backend: equal up to float rounding.
    np.testing.assert_allclose(pv, want["pixel_values"], atol=1e-5, rtol=0)
    # "fast" approximates it: stated tolerance, mean |diff| <= 1 grey level, max <= 16 levels.
    fast, grid_fast = vision.preprocess_image(img, resample="fast", **kw)
    np.testing.assert_array_equal(grid_fast, grid)
    grey = np.abs(fast - want["pixel_values"]).reshape(-1, 3, 2 * 14 * 14) * (255 * STD[:, None])
    assert grey.mean() <= 1.0 and grey.max() <= 16.0, (grey.mean(), grey.max())


def _hf_video_functions():
    """transformers' video `patchify` and `sample_frames`, run from their source.

    `Qwen2VLVideoProcessor` needs torchvision (not installed) to import, but these two methods
    only use torch and math, so they are compiled from the installed file without it.
    """
    torch = pytest.importorskip("torch")
    transformers = pytest.importorskip("transformers")
    path = os.path.join(
        os.path.dirname(transformers.__file__), "models", "qwen2_vl", "video_processing_qwen2_vl.py"
    )
    with open(path) as f:
        tree = ast.parse(f.read())
    cls = next(
        n for n in tree.body if isinstance(n, ast.ClassDef) and n.name == "Qwen2VLVideoProcessor"
    )
    fns = [
        n
        for n in cls.body
        if isinstance(n, ast.FunctionDef) and n.name in ("patchify", "sample_frames")
    ]
    for fn in fns:  # annotations name torchvision types: drop them
        fn.returns = None
        for arg in fn.args.args + fn.args.kwonlyargs:
            arg.annotation = None
    ns = {"torch": torch, "math": __import__("math")}
    exec(compile(ast.Module(body=fns, type_ignores=[]), path, "exec"), ns)
    return torch, ns["patchify"], ns["sample_frames"]


@pytest.mark.live_hf
@pytest.mark.parametrize("num_frames", [4, 5])
def test_video_parity_with_transformers(num_frames):
    torch, hf_patchify, _ = _hf_video_functions()
    frames = np.stack([_scene(120, 160, seed=i) for i in range(num_frames)])
    kw = dict(min_pixels=3136, max_pixels=28 * 28 * 16)
    pv, grid = vision.preprocess_video(frames, **kw)
    # Reference: per-frame resize by transformers' PIL image backend (checked above), then
    # transformers' video rescale/normalise and patchify.
    h, w = vision.smart_resize(120, 160, **kw)
    resized = np.stack([vision.resize(f, h, w, "pil") for f in frames]).astype(np.float32)
    normed = (resized / 255.0 - MEAN) / STD
    x = torch.from_numpy(np.ascontiguousarray(normed.transpose(0, 3, 1, 2)))[None]
    want, gt, gh, gw = hf_patchify(None, x, 14, 2, 2)
    assert grid.tolist() == [gt, gh, gw]
    np.testing.assert_allclose(pv, want[0].numpy(), atol=1e-5, rtol=0)


@pytest.mark.live_hf
@pytest.mark.parametrize("total, fps", [(40, 4.0), (300, 29.97), (30, 30.0), (1000, 24.0)])
def test_uniform_sampling_matches_transformers(total, fps):
    _, _, hf_sample = _hf_video_functions()
    me = types.SimpleNamespace(
        num_frames=None, fps=None, temporal_patch_size=2, min_frames=4, max_frames=16
    )
    meta = types.SimpleNamespace(total_num_frames=total, fps=fps)
    want = hf_sample(me, meta, fps=2.0).numpy()
    got = video.sample_indices(total, fps, 2.0, max_frames=16, min_frames=4)
    np.testing.assert_array_equal(got, want)
