"""Benchmark readers on files in each benchmark's real format: items, fields, bad items."""

import json
import os

import pytest
from evaluate_fixtures import (
    write_tvg,
    write_videomme,
    write_videommmu,
    write_vstar,
    write_worldsense,
)

from o3video_jax.evaluate import benchmarks


def test_vstar_reader_finds_videos_below_root_and_lists_missing(tmp_path):
    data, media = write_vstar(str(tmp_path), n=2, missing=1)
    got = benchmarks.read_benchmark("vstar", data, media)
    assert [it["key"] for it in got.items] == ["0", "1"]
    assert got.items[0]["video"] == os.path.join(media, "sub", "v0.mp4")
    assert [(b.key, b.id, b.reason) for b in got.bad] == [("2", "gone0", "missing_video")]


def test_vstar_reader_counts_malformed_items(tmp_path):
    data, media = write_vstar(str(tmp_path), n=3)
    items = json.load(open(data))
    del items[0]["temporal_question"]
    items[1]["timestamps"] = [5.0, 1.0]
    items[2]["bboxes"] = [{"timestamp": 1, "xmin": 0}]
    items.append("not a dict")
    json.dump(items, open(data, "w"))
    got = benchmarks.read_benchmark("vstar", data, media)
    assert got.items == []
    reasons = {b.key: (b.reason, b.detail) for b in got.bad}
    assert reasons["0"][0] == "record" and "temporal_question" in reasons["0"][1]
    assert "start <= end" in reasons["1"][1]
    assert "xmax" in reasons["2"][1]
    assert reasons["3"][0] == "record"


def test_videomme_parquet(tmp_path):
    data, media = write_videomme(str(tmp_path), n=2)
    os.remove(os.path.join(media, "data", "vid1.mp4"))
    os.rename(os.path.join(media, "data", "vid0.mp4"), os.path.join(media, "data", "vid0.mkv"))
    got = benchmarks.read_benchmark("videomme", data, media)
    assert len(got.items) == 1 and got.items[0]["video"].endswith("vid0.mkv")
    assert got.items[0]["options"] == ["A. One.", "B. Two.", "C. Three.", "D. Four."]
    assert got.items[0]["id"] == "000-1"
    assert [(b.key, b.reason) for b in got.bad] == [("1", "missing_video")]


def test_worldsense_tsv_parses_candidate_literals(tmp_path):
    data, media = write_worldsense(str(tmp_path), n=2)
    got = benchmarks.read_benchmark("worldsense", data, media, limit=1)
    assert len(got.items) == 1 and not got.bad
    assert got.items[0]["candidates"] == ["A. Red.", "B. Green.", "C. Blue.", "D. White."]
    assert got.items[0]["answer"] == "B"


def test_videommmu_directory_of_categories(tmp_path):
    data, media = write_videommmu(str(tmp_path))
    got = benchmarks.read_benchmark("videommmu", data, media)
    assert [(it["category"], it["question_type"]) for it in got.items] == [
        ("Perception", "multiple-choice"),
        ("Adaptation", "open"),
    ]
    assert got.items[0]["video"].endswith(os.path.join("Science", "validation_Physics_1.mp4"))
    assert got.items[1]["image_bytes"][:4] == b"\x89PNG"
    assert benchmarks.videommmu_subject_dir("test_Clinical_Medicine_12") == "Medicine"


def test_tvg_json_with_aliases(tmp_path):
    data, media = write_tvg(str(tmp_path), n=2)
    rows = json.load(open(data))
    rows[1] = {"vid": "c1", "sentence": "a query", "timestamps": "[1, 2.5]"}
    rows.append({"video": "c0", "query": "q"})  # no span
    json.dump(rows, open(data, "w"))
    got = benchmarks.read_benchmark("tvg", data, media)
    assert [it["span"] for it in got.items] == [[0.5, 2.0], [1.0, 2.5]]
    assert got.items[1]["query"] == "a query"
    assert [(b.key, b.reason) for b in got.bad] == [("2", "record")]


def test_unreadable_benchmark_file_is_a_clear_error(tmp_path):
    with pytest.raises(FileNotFoundError, match="eval.data"):
        benchmarks.read_benchmark("vstar", str(tmp_path / "nope.json"), str(tmp_path))
    with pytest.raises(ValueError, match="unknown benchmark"):
        benchmarks.read_benchmark("mvbench", str(tmp_path), str(tmp_path))
    (tmp_path / "d.json").write_text('{"a": 1}')
    with pytest.raises(ValueError, match="JSON list"):
        benchmarks.read_benchmark("vstar", str(tmp_path / "d.json"), str(tmp_path))
