"""read_video: hand-derived sampling, windows, pixel budget, bad files, broken metadata."""

import struct

import cv2
import numpy as np
import pytest

from o3video_jax.data import synthetic, video


def _indexed_frame(i: int, w: int, h: int) -> np.ndarray:
    """Frame i shows its index as 8 vertical stripes, white for a set bit (robust to lossy
    coding and to resizing)."""
    bits = (i >> np.arange(8)) & 1
    return (
        np.repeat(np.repeat(bits * 255, -(-w // 8))[:w][None, :, None], h, 0)
        .repeat(3, 2)
        .astype(np.uint8)
    )


def _write_indexed(path, num_frames, fps, size=(64, 48), fourcc="mp4v"):
    w, h = size
    writer = cv2.VideoWriter(str(path), cv2.VideoWriter_fourcc(*fourcc), fps, (w, h))
    assert writer.isOpened()
    for i in range(num_frames):
        writer.write(_indexed_frame(i, w, h))
    writer.release()
    return str(path)


def _decoded_index(frames):
    """Frame index read back from the stripes of each decoded frame."""
    t, h, w, _ = frames.shape
    centres = ((np.arange(8) + 0.5) * w / 8).astype(int)
    bits = frames[:, h // 2, centres].mean(-1) > 127
    return (bits * (1 << np.arange(8))).sum(1)


@pytest.fixture(scope="module")
def clip40(tmp_path_factory):
    """40 frames at 4 fps = 10 s."""
    return _write_indexed(tmp_path_factory.mktemp("v") / "c40.mp4", 40, 4.0)


def test_uniform_sampling_by_hand(clip40):
    c = video.read_video(clip40, fps=2.0, max_frames=16)
    # n = 10 s * 2 fps = 20 -> capped at 16; idx = floor(k * 40 / 16) = floor(2.5 k).
    want = [0, 2, 5, 7, 10, 12, 15, 17, 20, 22, 25, 27, 30, 32, 35, 37]
    assert c.frame_indices.tolist() == want
    np.testing.assert_allclose(c.timestamps, np.array(want) / 4.0)
    assert c.sample_fps == pytest.approx(1.6) and c.duration == 10.0 and c.source_fps == 4.0
    assert c.frames.shape == (16, 48, 64, 3) and c.frames.dtype == np.uint8 and c.skipped == 0
    assert _decoded_index(c.frames).tolist() == want


def test_o3_sampling_and_labels_by_hand(clip40):
    c = video.read_video(clip40, fps=2.0, max_frames=16, sampling="o3")
    # round(linspace(0, 39, 16)) = round(2.6 k), half to even.
    want = [0, 3, 5, 8, 10, 13, 16, 18, 21, 23, 26, 29, 31, 34, 36, 39]
    assert c.frame_indices.tolist() == want
    assert _decoded_index(c.frames).tolist() == want
    # Open-o3 labels frame k with k / sample_fps = k / 1.6, not its true time.
    np.testing.assert_allclose(c.o3_labels, np.arange(16) / 1.6)
    assert c.timestamps[-1] == pytest.approx(9.75) and c.o3_labels[-1] == pytest.approx(9.375)


def test_window(clip40):
    c = video.read_video(clip40, fps=2.0, start=2.0, end=6.0)
    # frames 8..23 (16 frames, 4 s) -> n = 8 -> 8 + floor(k * 16 / 8)
    assert c.frame_indices.tolist() == [8, 10, 12, 14, 16, 18, 20, 22]
    np.testing.assert_allclose(c.timestamps, np.arange(2.0, 6.0, 0.5))
    assert c.sample_fps == pytest.approx(2.0) and c.duration == 10.0
    assert _decoded_index(c.frames).tolist() == c.frame_indices.tolist()
    with pytest.raises(ValueError, match="window"):
        video.read_video(clip40, start=11.0)


def test_min_frames_and_even(clip40):
    # fps 0.1 -> n = 1 -> raised to min_frames 4: floor(k * 40 / 4)
    assert video.read_video(clip40, fps=0.1).frame_indices.tolist() == [0, 10, 20, 30]
    # fps 0.5 -> n = 5: even floors to 4; even=False keeps 5 (floor(k * 8)).
    assert len(video.read_video(clip40, fps=0.5).frame_indices) == 4
    odd = video.read_video(clip40, fps=0.5, even=False)
    assert odd.frame_indices.tolist() == [0, 8, 16, 24, 32]


def test_pixel_budget(clip40, tmp_path):
    path = _write_indexed(tmp_path / "big.mp4", 8, 4.0, size=(160, 120))
    c = video.read_video(path, fps=4.0, max_pixels=3136)
    # smart_resize(120, 160, max 3136): beta = sqrt(19200 / 3136) = 2.474 -> 28 x 56
    assert c.frames.shape == (8, 28, 56, 3)
    assert _decoded_index(c.frames).tolist() == list(range(8))


def test_seek_and_sequential_agree(tmp_path):
    path = _write_indexed(tmp_path / "long.mp4", 200, 10.0)
    # o3 rule, 4 frames of 200: gaps of ~66 frames > SEEK_MIN_GAP, so "auto" seeks.
    clips = {
        m: video.read_video(path, fps=0.1, sampling="o3", method=m)
        for m in ("seek", "sequential", "auto")
    }
    assert clips["auto"].frame_indices.tolist() == [0, 66, 133, 199]
    for c in clips.values():
        np.testing.assert_array_equal(c.frames, clips["sequential"].frames)
        assert _decoded_index(c.frames).tolist() == [0, 66, 133, 199]


@pytest.mark.parametrize("kind", ["truncated", "random", "empty"])
def test_corrupt_files_raise(tmp_path, kind):
    path = synthetic.write_corrupt_files(tmp_path)[kind]
    with pytest.raises(video.VideoDecodeError) as err:
        video.read_video(path)
    assert path in str(err.value) and err.value.path == path


def test_missing_file_raises(tmp_path):
    with pytest.raises(video.VideoDecodeError, match="not found"):
        video.read_video(tmp_path / "nope.mp4")


def test_frame_failing_mid_file_is_skipped(tmp_path):
    path = _write_indexed(tmp_path / "m.avi", 10, 5.0, fourcc="MJPG")
    data = bytearray(open(path, "rb").read())
    starts = [i for i in range(len(data) - 1) if data[i] == 0xFF and data[i + 1] == 0xD8]
    assert len(starts) == 10  # one JPEG per frame
    data[starts[4] : starts[5] - 16] = bytes(starts[5] - 16 - starts[4])  # wipe frame 4
    open(path, "wb").write(data)
    c = video.read_video(path, fps=5.0, max_frames=16, even=False)
    assert c.skipped == 1
    assert c.frame_indices.tolist() == [0, 1, 2, 3, 5, 6, 7, 8, 9]
    assert c.sample_positions.tolist() == [0, 1, 2, 3, 5, 6, 7, 8, 9]
    assert _decoded_index(c.frames).tolist() == [0, 1, 2, 3, 5, 6, 7, 8, 9]


def test_broken_fps_falls_back_to_count_and_duration(tmp_path):
    path = _write_indexed(tmp_path / "z.mp4", 20, 5.0)
    data = bytearray(open(path, "rb").read())
    stts = data.find(b"stts")
    entries = struct.unpack(">I", data[stts + 8 : stts + 12])[0]
    for e in range(entries):  # zero every sample duration: OpenCV then reports 0.25 fps
        struct.pack_into(">I", data, stts + 12 + 8 * e + 4, 0)
    open(path, "wb").write(data)
    assert cv2.VideoCapture(path).get(cv2.CAP_PROP_FPS) < 1
    c = video.read_video(path, fps=2.0)
    # 20 decodable frames over the 4.0 s of the container's mvhd -> 5 fps.
    assert c.source_fps == pytest.approx(5.0) and c.duration == pytest.approx(4.0)
    assert c.frame_indices.tolist() == [0, 2, 5, 7, 10, 12, 15, 17]
    assert _decoded_index(c.frames).tolist() == c.frame_indices.tolist()


def test_missing_frame_count_is_counted(tmp_path):
    path = tmp_path / "raw.mjpeg"  # a bare MJPEG stream has no frame count
    with open(path, "wb") as f:
        for i in range(10):
            f.write(cv2.imencode(".jpg", _indexed_frame(i, 64, 48))[1].tobytes())
    assert cv2.VideoCapture(str(path)).get(cv2.CAP_PROP_FRAME_COUNT) <= 0
    c = video.read_video(path, fps=25.0, max_frames=16)
    assert c.source_fps == pytest.approx(25.0) and c.duration == pytest.approx(0.4)
    assert c.frame_indices.tolist() == list(range(10))
    assert _decoded_index(c.frames).tolist() == list(range(10))


def test_bad_arguments(clip40):
    with pytest.raises(ValueError, match="sampling"):
        video.read_video(clip40, sampling="random")
    with pytest.raises(ValueError, match="method"):
        video.read_video(clip40, method="fastest")
