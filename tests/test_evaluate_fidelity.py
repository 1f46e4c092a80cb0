"""Evaluation settings against upstream's scripts: budgets at the shipped settings, the
native-video time steps, the VideoMMMU image, Charades-STA's native annotations."""

import importlib.util
import os

import cv2
import numpy as np
import pytest
from evaluate_fixtures import REPO, write_video

from o3video_jax.data.tokenizer import make_tiny_tokenizer
from o3video_jax.evaluate import benchmarks, media, prompts, registry, runner
from o3video_jax.evaluate.bench import videommmu
from o3video_jax.evaluate.generate import OverBudget, check_budget


def _config(benchmark):
    spec = importlib.util.spec_from_file_location(
        "eval_config", os.path.join(REPO, "experiments", "configs", "eval.py")
    )
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module.get_config(f"benchmark={benchmark}")


def test_vstar_item_on_a_10s_1080p_clip_fits_the_shipped_budgets(tmp_path):
    """Upstream scores every V-STaR item: frames at qwen_vl_utils' image defaults are near
    native size, 1920x1080 -> 1932x1092 (10,764 patches, 2,691 tokens). A 10 s clip gives 10
    frames at 1 fps: 107,640 patches and ~27k tokens, over the old 81,920 / 24,576 budgets."""
    path = str(tmp_path / "hd.mp4")
    vw = cv2.VideoWriter(path, cv2.VideoWriter_fourcc(*"mp4v"), 1, (1920, 1080))
    for i in range(10):
        vw.write(np.full((1080, 1920, 3), 20 * i, np.uint8))
    vw.release()
    ev = _config("vstar").eval
    item = {
        "vid": "hd", "domain": "Sports", "fps": 1.0, "frame_count": 10, "width": 1920,
        "height": 1080, "question": "What is shown?", "answer": "grey",
        "temporal_question": "When?", "spatial_question": "Where?",
        "spatial_question_2": "Where is it?", "timestamps": [2.0, 6.0],
        "bboxes": [{"timestamp": 3, "xmin": 0, "ymin": 0, "xmax": 100, "ymax": 100}],
        "video": path, "key": "0",
    }  # fmt: skip
    m = registry.get("vstar").media(item, ev)
    assert len(m.items) == 10 and m.times == tuple(float(i) for i in range(10))
    assert {v.grid_thw for v in m.items} == {(1, 78, 138)} and m.size == (1932, 1092)
    tok = make_tiny_tokenizer(tmp_path / "tok", ["Frame 1 at 0.0s: Answer the question"] * 3)
    segs = []
    for p in prompts.vstar_prompts(item, m.times, think=True):
        seg, _ = runner.tokenize_prompt(tok, prompts.render_messages(p, len(m.items)), m.items)
        check_budget(seg, ev.prompt_buckets, ev.max_patches)  # admitted: scored, not dropped
        segs.append(seg)
    assert sum(v.num_patches for v in segs[0].vision) == 10 * 10764
    with pytest.raises(OverBudget):  # the former budgets turned it into over_budget
        check_budget(segs[0], [4096, 8192, 16384, 24576], 16 * 4 * 1280)
    # 16 frames (the most V-STaR samples) of 1080p fit too: 16 * 2,691 image tokens plus the
    # longest text of these prompts (a tiny byte-level tokenizer: more tokens than Qwen's).
    text = max(len(s.input_ids) - 10 * 2691 for s in segs)
    assert ev.max_patches >= 16 * 10764 and max(ev.prompt_buckets) >= 16 * 2691 + text


def test_native_video_second_per_grid_and_videommmu_image_switches(tmp_path):
    """Upstream passes no fps to vLLM: 1.0 s per grid whatever the sampling ("upstream");
    "sampled" gives 2 / sample fps. A 40 s clip at 4 fps: 64 frames at 1.6 fps -> 1.25 s."""
    path = write_video(str(tmp_path / "v.mp4"), seconds=40, fps=4, size=(32, 32))
    ev = _config("videomme").eval
    assert ev.second_per_grid == "upstream" and ev.max_frames == 64
    item = {"video": path}
    assert registry.get("videomme").media(item, ev).items[0].second_per_grid == 1.0
    with ev.unlocked():
        ev.second_per_grid = "sampled"
    m = registry.get("videomme").media(item, ev)
    assert m.sample_fps == pytest.approx(1.6)
    assert m.items[0].second_per_grid == pytest.approx(1.25)
    mmmu = _config("videommmu").eval
    assert mmmu.videommmu_image == "upstream" and mmmu.image_max_pixels == 16384 * 28 * 28
    assert videommmu.image_max_pixels(mmmu) == 16384 * 28 * 28
    with mmmu.unlocked():
        mmmu.videommmu_image = "capped"
    assert videommmu.image_max_pixels(mmmu) == 854 * 480
    # a 1200x900 image: kept near native size upstream (1204x896), 854x480-capped otherwise
    img = cv2.imencode(".png", np.zeros((900, 1200, 3), np.uint8))[1].tobytes()
    up = media.decode_image(img, min_pixels=4 * 784, max_pixels=16384 * 784)
    capped = media.decode_image(img, min_pixels=4 * 784, max_pixels=854 * 480)
    assert up.grid_thw == (1, 64, 86) and capped.grid_thw[1] * capped.grid_thw[2] * 196 <= 854 * 480


def test_think_mode_is_the_default_everywhere():
    for name in benchmarks.BENCHMARKS:
        assert _config(name).eval.think is True  # upstream's eval_all.sh: --think_mode


def test_tvg_reads_charades_sta_native_annotations(tmp_path):
    root = tmp_path / "charades"
    for vid in ("3MSZA", "KTOG1"):
        write_video(str(root / "videos" / f"{vid}.mp4"))
    ann = root / "charades_sta_test.txt"
    ann.write_text(
        "3MSZA 24.3 30.4##person turn a light on.\n"
        "KTOG1 0.0 6.1##person is putting a book on a shelf.\n"
        "\n"
        "BROKEN line without a sentence\n"
        "NOVID 1.0 2.0##nobody filmed this.\n"
    )
    got = benchmarks.read_benchmark("tvg", str(ann), str(root / "videos"))
    assert [(i["query"], i["span"]) for i in got.items] == [
        ("person turn a light on.", [24.3, 30.4]),
        ("person is putting a book on a shelf.", [0.0, 6.1]),
    ]
    assert got.items[0]["video"].endswith("3MSZA.mp4") and got.items[0]["id"] == "3MSZA"
    assert [(b.key, b.reason) for b in got.bad] == [("2", "record"), ("3", "missing_video")]


def test_tvg_prompt_is_upstreams_temporal_qa_prompt():
    from o3video_jax.data import prompts as train_prompts

    p = prompts.tvg_prompt({"query": "person sits down."}, (), 2.0, 4)
    assert p.system == train_prompts.RL_SYSTEM_PROMPTS["temporal QA"]
    assert p.system.startswith("A conversation between user and assistant. The user provides")
    assert p.text.endswith("The video is in total 2 seconds.\nperson sits down.")


def test_relevance_scorer_questions_per_benchmark():
    """test_videomme.py: q + "\\n" + options; test_worldsense.py: 'Question: {}\\n'.format(q +
    "\\n" + candidates); test_videommmu.py: q + "\\n" + parse_options(options) (letters added
    when missing)."""

    def q(name, item):
        return registry.get(name).mcq.scorer_question(item)

    assert q("videomme", {"question": "Q?", "options": ["A. x", "B. y"]}) == "Q?\nA. x\nB. y"
    assert q("worldsense", {"question": "Q?", "candidates": ["A. x", "B. y"]}) == (
        "Question: Q?\nA. x\nB. y\n"
    )
    assert q("videommmu", {"question": "Q?", "options": ["x", "y"]}) == "Q?\nA. x\nB. y"
    text = prompts.relevance_messages(
        q("worldsense", {"question": "Q?", "candidates": ["A. x"]}), 1
    )
    assert text[1]["content"][0]["text"].endswith("Question: Question: Q?\nA. x\n")


def test_videommmu_missing_question_type_is_open_as_upstream(tmp_path):
    pa = pytest.importorskip("pyarrow")
    import pyarrow.parquet as pq

    write_video(str(tmp_path / "Art" / "test_Art_1.mp4"))
    d = tmp_path / "Perception"
    d.mkdir()
    rows = [{"id": "test_Art_1", "question": "Q?", "options": ["x"], "answer": "4"}]
    pq.write_table(pa.Table.from_pylist(rows), d / "test-00000-of-00001.parquet")
    got = benchmarks.read_benchmark("videommmu", str(tmp_path), str(tmp_path))
    assert [it["question_type"] for it in got.items] == ["None"]  # doc.get(..., "None")
    assert prompts.videommmu_prompt(got.items[0], think=True).text.endswith(
        "In the answer part, respond with only the final answer."
    )


def test_relevance_reply_must_be_exactly_one_digit():
    from o3video_jax.eval import tts

    # model_vllm.py run_images_scorer: `text in ["0", "1", "2"]`, else -1 (weight 0.2)
    assert [tts.parse_relevance_reply(r) for r in ("2", "1", "0", " 2", "2\n", "2.", "3")] == [
        2, 1, 0, -1, -1, -1, -1
    ]  # fmt: skip
    assert tts.relevance_weight(" 2") == 0.2 and tts.relevance_weight("2") == 1.0


@pytest.mark.parametrize(
    "reply, bench, options, expected",
    [
        # "DNA." -> "DNA" after stripping, padded " ... DNA ": holds "A " -> A (ours: none)
        ("The answer is DNA.", "videomme", ["A. x", "B. y", "C. z", "D. w"], "A"),
        # "A:" at 1 and "B:" at 8 (padded): the later one wins
        ("A: no, B: yes", "videomme", ["A. x", "B. y", "C. z", "D. w"], "B"),
        ("", "videomme", ["A. x", "B. y"], None),
        # > 5 words, no letter piece: the option text that occurs ("b. yellow" is option B)
        ("i think it is b. yellow here", "videomme", ["A. red", "B. yellow"], "B"),
        ("i cannot tell at all", "videomme", ["A. red", "B. yellow"], None),
        # WorldSense: no candidate -> random.choice after random.seed(42) = "A"
        ("i cannot tell at all", "worldsense", [], "A"),
        ("", "worldsense", [], None),
        ("**C**", "worldsense", [], "C"),
        # VideoMMMU: "C." found first, so "(B)" is never looked at
        ("(B) because C. is wrong", "videommmu", ["p", "q", "r"], "C"),
        ("(B) is it", "videommmu", ["p", "q", "r"], "B"),
        # letters A-J follow the options: E is not a choice with 3 options
        ("E.", "videommmu", ["p", "q", "r"], None),
    ],
)
def test_upstream_letter_parsers(reply, bench, options, expected):
    from o3video_jax.eval import letter_parsers, mcq

    assert letter_parsers.upstream_letter(reply, bench, options) == expected
    if reply == "The answer is DNA.":
        assert mcq.extract_letter(reply, "ABCD") is None  # ours: no letter inside a word
