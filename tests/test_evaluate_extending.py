"""A new benchmark is one file plus one registration (docs/extending.md §1): the example file
of that page, registered at run time, evaluated end to end on the tiny random checkpoint; and
a multiple-choice benchmark built from `bench.multiple_choice` with test-time scaling."""

import importlib.util
import json
import os
import re

import pytest
from evaluate_fixtures import REPO, eval_config, shared_checkpoint, write_video, write_videomme

from o3video_jax.eval import mcq
from o3video_jax.evaluate import benchmarks, prompts, read_log, readers, registry, runner
from o3video_jax.evaluate.bench import multiple_choice, videomme
from o3video_jax.evaluate.spec import MultipleChoice


@pytest.fixture(scope="module")
def ckpt(tmp_path_factory):
    return shared_checkpoint(tmp_path_factory)


def _doc_example(tmp_path):
    """The benchmark file printed in docs/extending.md §1.2, written out as a module."""
    doc = open(os.path.join(REPO, "docs", "extending.md"), encoding="utf-8").read()
    block = re.search(
        r"<!-- extending.md: yesno.py begins.*?-->\n```python\n(.*?)```\n<!-- extending.md: "
        r"yesno.py ends -->",
        doc,
        re.DOTALL,
    )
    assert block, "docs/extending.md lost its example benchmark"
    path = tmp_path / "yesno.py"
    path.write_text(block.group(1))
    spec = importlib.util.spec_from_file_location("yesno_example", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def _config(benchmark, *args, **overrides):
    """VideoMME's runlocal config (a native video at small budgets) named `benchmark`."""
    cfg = eval_config("videomme", *args, **overrides)
    cfg.eval.benchmark = benchmark
    return cfg


@pytest.fixture
def registered():
    """Registers benchmarks for one test and removes them after it."""
    added = []

    def add(bench):
        added.append(registry.register(bench).name)
        return bench

    yield add
    for name in added:
        registry.unregister(name)
    assert registry.names() == benchmarks.BENCHMARKS


@pytest.mark.slow  # an evaluate run (> 10 s on 2 cores): the full suite's, not the quick lane's
def test_the_docs_example_benchmark_end_to_end(ckpt, tmp_path, registered):
    yesno = _doc_example(tmp_path)
    registered(yesno.BENCHMARK)  # the one line
    root = tmp_path / "data"
    rows = []
    for i, answer in enumerate(["yes", "no"]):
        write_video(str(root / "videos" / f"clip{i}.mp4"), seed=50 + i)
        rows.append({"video": f"clip{i}.mp4", "question": "Does the square move?",
                     "answer": answer, "domain": ["toys", "shapes"][i]})  # fmt: skip
    rows.append({"video": "gone.mp4", "question": "Is it there?", "answer": "no"})
    rows.append({"video": "clip0.mp4", "question": "How many?", "answer": "3"})
    (root / "test.json").write_text(json.dumps(rows))
    # any benchmark's config, named "yesno" (docs/extending.md §1.4)
    cfg = _config("yesno", ckpt, str(root / "test.json"), str(root / "videos"), think=False)
    wd = str(tmp_path / "wd")
    summary = runner.evaluate(cfg, wd)

    recs = read_log(os.path.join(wd, "items.jsonl"))
    assert [(r["key"], r["status"]) for r in recs] == [
        ("0", "ok"), ("1", "ok"), ("2", "bad"), ("3", "bad")
    ]  # fmt: skip
    assert [r["reason"] for r in recs[2:]] == ["missing_video", "record"]
    assert recs[2]["id"] == "gone.mp4"  # id_field="video"
    for r in recs[:2]:
        assert r["prompt"].count("<|video_pad|>") > 0  # one native video before the text
        assert r["prompt"].count("<|vision_start|>") == 1
        assert "Does the square move?\nAnswer with yes or no." in r["prompt"]
        words = re.findall(r"\b(yes|no)\b", r["output"].lower())
        assert r["pred"] == (words[0] if words else None)
        assert r["correct"] == (r["pred"] == r["answer"])
        assert "video" not in r  # records.base drops the media path
    correct = sum(r["correct"] for r in recs[:2])
    assert summary["n"] == 2 and summary["correct"] == correct and summary["acc"] == correct / 2
    assert set(summary["by_domain"]) == {"toys", "shapes"}
    assert summary["n_bad"] == 2 and summary["n_failed"] == 0
    table = open(os.path.join(wd, "summary.md")).read()
    assert "| n | correct | acc |" in table
    assert os.path.exists(os.path.join(wd, "report", "0.png"))  # runlocal draws one item
    assert os.path.exists(os.path.join(wd, "report", "0.gif"))
    assert "# yesno: 2 items, 2 bad" in open(os.path.join(wd, "report.md")).read()
    # the summary is recomputed from the log alone, as for every benchmark
    assert runner.write_summary(cfg, wd) == summary
    # not a multiple-choice benchmark: no test-time scaling
    with pytest.raises(ValueError, match="applies to videomme / worldsense / videommmu"):
        runner.evaluate(_config("yesno", ckpt, "", "", samples=2, temperature=1.0), str(tmp_path))


@pytest.mark.slow
def test_a_multiple_choice_benchmark_gets_voting(ckpt, tmp_path, registered):
    """`multiple_choice.benchmark` with a reader and a prompt: N paths, votes, categories, and
    the word-bounded letter parser when there is no upstream one."""

    def prompt(item, think):
        text = item["question"] + "\n" + "\n".join(item["options"]) + "\nAnswer with a letter."
        return prompts.Prompt("answer", text, "video")

    registered(
        multiple_choice.benchmark(
            "letters",
            read=readers.read_parquet,
            check=videomme.check,
            id_field="question_id",
            prompt=prompt,
            mc=MultipleChoice(
                categories=("duration",),
                letters=mcq.LETTERS_ABCD,
                scorer_question=lambda item: item["question"],
            ),
        )
    )
    assert registry.multiple_choice_names()[-1] == "letters"
    data, media_root = write_videomme(str(tmp_path / "b"), n=2)
    cfg = _config("letters", ckpt, data, media_root, think=False, samples=2, temperature=1.0,
                  render_items=0)  # fmt: skip
    summary = runner.evaluate(cfg, str(tmp_path / "wd"))
    recs = read_log(str(tmp_path / "wd" / "items.jsonl"))
    for r in recs:
        assert len(r["outputs"]) == 2 and r["prompt"].endswith(
            "D. Four.\nAnswer with a letter.<|im_end|>\n<|im_start|>assistant\n"
        )
        # non-think, no upstream parser: each path's letter is mcq.extract_letter's
        assert r["path_letters"] == [mcq.extract_letter(o, "ABCD") for o in r["outputs"]]
        assert r["pred"] in "ABCD" and r["correct"] == (r["pred"] == "A")
    assert summary["n"] == 2 and set(summary["by_duration"]) == {"short"}


def test_the_registry():
    assert registry.names() == benchmarks.BENCHMARKS == (
        "vstar", "videomme", "worldsense", "videommmu", "tvg"
    )  # fmt: skip
    assert registry.multiple_choice_names() == ("videomme", "worldsense", "videommmu")
    assert [registry.get(n).judged for n in registry.names()] == [True] + [False] * 4
    with pytest.raises(ValueError, match="already registered"):
        registry.register(registry.get("tvg"))
    with pytest.raises(ValueError, match="built-in"):
        registry.unregister("vstar")
    with pytest.raises(ValueError, match="unknown benchmark 'mvbench'"):
        registry.get("mvbench")
