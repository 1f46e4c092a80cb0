"""`evaluate` end to end on a tiny random checkpoint: records, summaries, resume, judge."""

import json
import os
import signal
import subprocess
import sys
import threading
import time
from http.server import BaseHTTPRequestHandler, HTTPServer

import pytest
from evaluate_fixtures import (
    REPO,
    eval_config,
    shared_checkpoint,
    write_tvg,
    write_videomme,
    write_videommmu,
    write_vstar,
    write_worldsense,
)

from o3video_jax.eval import grounding, letter_parsers, mmmu, vstar
from o3video_jax.evaluate import read_log, runner
from o3video_jax.evaluate.prompts import VSTAR_CALLS
from o3video_jax.evaluate.summary import WHAT_KEYS


@pytest.fixture(scope="module")
def ckpt(tmp_path_factory):
    return shared_checkpoint(tmp_path_factory)


def _ok(recs):
    return [r for r in recs if r["status"] == "ok"]


def _scalars(d):
    return {k: v for k, v in d.items() if not isinstance(v, (dict, list))}


def test_vstar_end_to_end(ckpt, tmp_path):
    data, media = write_vstar(str(tmp_path / "b"), n=2, missing=1)
    wd = str(tmp_path / "wd")
    summary = runner.evaluate(eval_config("vstar", ckpt, data, media), wd)
    recs = read_log(os.path.join(wd, "items.jsonl"))
    assert [r["key"] for r in recs] == ["0", "1", "2"]  # every item once, in file order
    assert recs[2]["status"] == "bad" and recs[2]["reason"] == "missing_video"
    for r in _ok(recs):
        assert list(r["prompts"]) == list(VSTAR_CALLS)  # the five calls
        for field in ("answer_vqa", "answer_temporal_pre", "answer_temporal_pre_2",
                      "answer_spatial_pre", "answer_spatial_pre_2"):  # fmt: skip
            assert isinstance(r[field], str)
        assert r["answer_temporal"] == vstar.parse_temporal_answer(r["answer_temporal_pre"])
        assert "resolution of 64x48" in r["prompts"]["temporal_2"]
    # the summary is the V-STaR metrics of the per-item file; without a judge the What-based
    # figures are named exact-match (JSON keys and table columns) and the summary says how to
    # get judge scores
    again = vstar.metrics(_ok(recs))
    exact = {(k + "_exact_match" if k in WHAT_KEYS or k.startswith("vqa&") else k): v
             for k, v in _scalars(again).items()}  # fmt: skip
    assert "mAM" not in summary and summary["what_scoring"] == "exact_match"
    assert "judge_url" in summary["what_note"]
    assert _scalars(summary) == {**exact, "n_bad": 1, "n_failed": 0,
                                 "what_scoring": "exact_match", "what_note": summary["what_note"]}  # fmt: skip
    assert summary["bad"] == [{"key": "2", "id": "gone0", "reason": "missing_video"}]
    on_disk = json.load(open(os.path.join(wd, "summary.json")))
    assert on_disk["mAM_exact_match"] == pytest.approx(again["mAM"])
    table = open(os.path.join(wd, "summary.md")).read()
    assert "| acc_exact_match |" in table and "| mAM_exact_match |" in table
    assert os.path.exists(os.path.join(wd, "report", "0.png"))
    assert os.path.exists(os.path.join(wd, "report", "0.gif"))
    assert "report/0.png" in open(os.path.join(wd, "report.md")).read()


def test_over_budget_items_are_failures_inside_n(ckpt, tmp_path):
    """An item the budgets cannot hold is not dropped: it is scored as a failure (What wrong,
    IoUs 0) inside n and listed under `failed`; a missing video stays a bad item."""
    data, media = write_vstar(str(tmp_path / "b"), n=2, missing=1)
    wd = str(tmp_path / "wd")
    summary = runner.evaluate(eval_config("vstar", ckpt, data, media, max_patches=32), wd)
    recs = read_log(os.path.join(wd, "items.jsonl"))
    assert [r["status"] for r in recs] == ["failed", "failed", "bad"]
    assert recs[0]["reason"] == "over_budget" and "patches" in recs[0]["detail"]
    assert summary["n"] == 2 and summary["n_failed"] == 2 and summary["n_bad"] == 1
    assert [f["key"] for f in summary["failed"]] == ["0", "1"]
    assert summary["acc_exact_match"] == 0 and summary["tiou_1"] == summary["viou_2"] == 0


@pytest.mark.parametrize("name", ["videomme", "worldsense", "videommmu", "tvg"])
def test_other_benchmarks_end_to_end(ckpt, tmp_path, name):
    writer = {"videomme": write_videomme, "worldsense": write_worldsense,
              "videommmu": write_videommmu, "tvg": write_tvg}[name]  # fmt: skip
    data, media = writer(str(tmp_path / "b"))
    wd = str(tmp_path / "wd")
    summary = runner.evaluate(eval_config(name, ckpt, data, media, think=False), wd)
    recs = _ok(read_log(os.path.join(wd, "items.jsonl")))
    assert len(recs) == 2 and summary["n_bad"] == 0
    if name == "tvg":
        again = grounding.metrics([r["span"] for r in recs], [r["pred_span"] for r in recs])
        assert _scalars(summary) == {**again, "n_bad": 0, "n_failed": 0}
        return
    if name == "videommmu":
        mc, op = recs
        assert mc["pred"] in "ABCDE" and mc["prompt"].count("<|video_pad|>") == 1
        assert op["pred"] is None and op["prompt"].count("<|image_pad|>") == 1
        assert op["correct"] == mmmu.eval_open("4", mmmu.parse_open_response(op["outputs"][0]))
    for r in recs:
        if r.get("pred") is not None:
            # non-think, N=1: the letter upstream's parser reads from the one output
            # (eval.letter_parser="upstream"); unparseable -> A (upstream)
            opts = r["options"] if name != "worldsense" else []
            assert r["pred"] == (letter_parsers.upstream_letter(r["outputs"][0], name, opts)
                                 or "A")  # fmt: skip
            assert r["correct"] == (r["pred"] == r["answer"])
    assert summary["correct"] == sum(r["correct"] for r in recs)
    assert summary["acc"] == sum(r["correct"] for r in recs) / 2


def _cli(wd, ckpt, data, media, env):
    return [
        sys.executable, "-m", "o3video_jax.evaluate",
        "--config", os.path.join(REPO, "experiments/configs/eval.py") + ":benchmark=vstar,runlocal",
        f"--workdir={wd}", f"--config.model.hf_checkpoint={ckpt}",
        f"--config.eval.data={data}", f"--config.eval.media_root={media}",
        "--config.eval.batch_size=2", "--config.eval.chunk_items=1", "--config.log.progress=false",
    ]  # fmt: skip


def test_sigkill_and_resume_gives_the_uninterrupted_file(ckpt, tmp_path, loop_env):
    data, media = write_vstar(str(tmp_path / "b"), n=4, missing=1)
    full, killed = str(tmp_path / "full"), str(tmp_path / "killed")
    subprocess.run(_cli(full, ckpt, data, media, loop_env), env=loop_env, check=True,
                   capture_output=True, timeout=600)  # fmt: skip
    log = os.path.join(killed, "items.jsonl")
    proc = subprocess.Popen(_cli(killed, ckpt, data, media, loop_env), env=loop_env,
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)  # fmt: skip
    deadline = time.time() + 300
    while time.time() < deadline and proc.poll() is None:
        if os.path.exists(log) and open(log, "rb").read().count(b"\n") >= 1:
            break
        time.sleep(0.05)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    n_before = open(log, "rb").read().count(b"\n")
    assert 1 <= n_before < 5, "the kill must land mid-run"
    with open(log, "ab") as f:  # a kill mid-write leaves half a line
        f.write(b'{"key": "4", "status": "o')
    subprocess.run(_cli(killed, ckpt, data, media, loop_env), env=loop_env, check=True,
                   capture_output=True, timeout=600)  # fmt: skip
    got = open(log, encoding="utf-8").read()
    want = open(os.path.join(full, "items.jsonl"), encoding="utf-8").read()
    assert [json.loads(x)["key"] for x in got.splitlines()] == ["0", "1", "2", "3", "4"]
    assert got == want  # same records, same greedy outputs, each item once
    assert (
        open(os.path.join(killed, "summary.json")).read()
        == open(os.path.join(full, "summary.json")).read()
    )


class _JudgeHandler(BaseHTTPRequestHandler):
    requests: list = []

    def do_POST(self):  # noqa: N802 (http.server API)
        body = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
        type(self).requests.append((self.path, self.headers.get("Authorization"), body))
        reply = {"choices": [{"message": {"role": "assistant", "content": "3"}}]}
        data = json.dumps(reply).encode()
        self.send_response(200)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)

    def log_message(self, *args):
        pass


def test_openai_compatible_judge_rates_what(ckpt, tmp_path, monkeypatch):
    server = HTTPServer(("127.0.0.1", 0), _JudgeHandler)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    monkeypatch.setenv("JUDGE_KEY", "sk-test")
    try:
        data, media = write_vstar(str(tmp_path / "b"), n=2)
        url = f"http://127.0.0.1:{server.server_port}/v1"
        cfg = eval_config("vstar", ckpt, data, media, judge_url=url, judge_model="qwen-72b",
                          judge_api_key_env="JUDGE_KEY", render_items=0)  # fmt: skip
        summary = runner.evaluate(cfg, str(tmp_path / "wd"))
    finally:
        server.shutdown()
    recs = read_log(str(tmp_path / "wd" / "items.jsonl"))
    assert [r["vqa_score"] for r in recs] == [3, 3]
    assert summary["acc"] == 1.0  # score 3 >= 2 counts as correct (exact match would give 0)
    path, auth, body = _JudgeHandler.requests[0]
    assert path == "/v1/chat/completions" and auth == "Bearer sk-test"
    assert body["model"] == "qwen-72b" and body["temperature"] == 0.0
    assert body["max_tokens"] == 512
    assert body["messages"][1]["content"] == (
        "Question: What moves across the video?\nGroundtruth answer: a square\n"
        f"Candidate answer: {recs[0]['answer_vqa']}\nYour response: "
    )
    assert "single integer from 0, 1, 2, or 3" in body["messages"][0]["content"]


def test_bad_config_is_a_clear_error(ckpt, tmp_path):
    data, media = write_vstar(str(tmp_path / "b"), n=1)
    with pytest.raises(ValueError, match="identical greedy paths"):
        runner.evaluate(eval_config("videomme", ckpt, data, media, samples=4), str(tmp_path))
    with pytest.raises(ValueError, match="applies to videomme"):
        runner.evaluate(eval_config("vstar", ckpt, data, media, samples=2, temperature=1.0),
                        str(tmp_path))  # fmt: skip
    # The per-item resume log is appended to: a gs:// workdir is refused up front, before any
    # folder (least of all a local one named "gs:") is made.
    with pytest.raises(ValueError, match="local files only"):
        runner.evaluate(eval_config("vstar", ckpt, data, media), "gs://bucket/eval")
    assert not os.path.exists("gs:")
