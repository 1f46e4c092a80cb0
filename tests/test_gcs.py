"""gs:// workdirs, checkpoints, data and media against a real GCS API server on localhost.

The `gcp-storage-emulator` package (a test dependency) serves the GCS JSON/XML API from a
subprocess (tests/gcs_emulator.py: plus the generation header of downloads that TensorStore
needs and the emulator omits); gcsfs (etils.epath's gs:// backend: our files, Orbax's metadata) reads
`STORAGE_EMULATOR_HOST`, TensorStore (Orbax's arrays) reads `TENSORSTORE_GCS_HTTP_URL` and
`GOOGLE_AUTH_TOKEN_FOR_TESTING`. Nothing here mocks our own code.
"""

import json
import os
import socket
import subprocess
import sys
import time

import numpy as np
import pytest
from loop_fixtures import REPO

CONFIG = os.path.join(REPO, "experiments", "configs", "synthetic.py")
BUCKET = "bucket"
TIMING = ("step_time", "data_time", "tokens_per_s")


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture(scope="module")
def gcs(tmp_path_factory):
    """A GCS emulator with bucket `bucket`; yields the env vars that point clients at it (also
    set in this process, so the test reads the bucket through the same path layer)."""
    port = _free_port()
    log = open(tmp_path_factory.mktemp("gcs") / "emulator.log", "w")  # noqa: SIM115
    proc = subprocess.Popen(
        [sys.executable, os.path.join(REPO, "tests", "gcs_emulator.py"), str(port), BUCKET],
        stdout=log,
        stderr=subprocess.STDOUT,
    )
    url = f"http://127.0.0.1:{port}"
    deadline = time.time() + 30
    while True:
        assert proc.poll() is None, "gcp-storage-emulator exited at start"
        try:
            socket.create_connection(("127.0.0.1", port), 0.2).close()
            break
        except OSError:
            assert time.time() < deadline, "gcp-storage-emulator did not start in 30 s"
            time.sleep(0.1)
    env = {
        "STORAGE_EMULATOR_HOST": url,  # gcsfs, google-cloud-storage
        "TENSORSTORE_GCS_HTTP_URL": url,  # TensorStore (Orbax array data)
        "GOOGLE_AUTH_TOKEN_FOR_TESTING": "test",  # TensorStore: no credential lookup
        "GCSFS_EXPERIMENTAL_ZB_HNS_SUPPORT": "false",  # no storage-control (gRPC) probe
        "GOOGLE_CLOUD_PROJECT": "test",
        "O3VIDEO_CACHE_DIR": str(tmp_path_factory.mktemp("o3video_cache")),
    }
    with pytest.MonkeyPatch.context() as mp:
        for k, v in env.items():
            mp.setenv(k, v)
        yield env
    proc.terminate()
    proc.wait(timeout=10)
    log.close()


def _put_behind_our_back(gcs, name: str, data: bytes) -> None:
    """Uploads an object with plain HTTP, as another process would."""
    import urllib.request

    url = f"{gcs['STORAGE_EMULATOR_HOST']}/upload/storage/v1/b/{BUCKET}/o?uploadType=media"
    req = urllib.request.Request(f"{url}&name={name}", data=data, method="POST")
    with urllib.request.urlopen(req, timeout=10) as r:
        assert r.status == 200


def _gs_ls(uri: str) -> list[str]:
    from o3video_jax import io

    return io.listdir(uri) if io.exists(uri) else []


def _metrics(workdir: str) -> list[dict]:
    from o3video_jax.train.metrics_log import read_metrics

    return read_metrics(workdir)


def _strip(rows):
    return [
        {k: v for k, v in r.items() if k not in TIMING and not k.startswith("time/")} for r in rows
    ]


def _no_gs_folder(*roots) -> list[str]:
    """Any directory named like a URI scheme (`gs:`) under `roots`."""
    bad = []
    for root in roots:
        for dirpath, dirnames, _ in os.walk(root):
            bad += [os.path.join(dirpath, d) for d in dirnames if d.endswith(":")]
    return bad


# ---- the path layer itself ---------------------------------------------------------------------
def test_io_roundtrip_and_no_append(gcs):
    from o3video_jax import io

    uri = f"gs://{BUCKET}/io/a/b.json"
    io.write_text(uri, '{"x": 1}')
    assert io.exists(uri) and io.isfile(uri) and io.isdir(f"gs://{BUCKET}/io/a")
    assert json.loads(io.read_text(uri)) == {"x": 1}
    assert io.abspath(f"gs://{BUCKET}/io/") == f"gs://{BUCKET}/io"
    with pytest.raises(ValueError, match="no append"):
        io.open(uri, "a")
    io.copy(uri, f"gs://{BUCKET}/io/c.json")
    assert io.listdir(f"gs://{BUCKET}/io") == ["a", "c.json"]
    assert not io.exists(f"gs://{BUCKET}/io/missing")
    # Another process's writes are seen (no stale per-process listing cache).
    _put_behind_our_back(gcs, "io/d.json", b"{}")
    assert io.listdir(f"gs://{BUCKET}/io") == ["a", "c.json", "d.json"]
    assert io.exists(f"gs://{BUCKET}/io/d.json")


def test_eval_outputs_on_gs(gcs):
    from o3video_jax.eval import results

    out = f"gs://{BUCKET}/eval"
    rows = [{"id": "a", "score": np.float32(0.5)}, {"id": "b", "text": "é"}]
    assert results.write_jsonl(f"{out}/items.jsonl", rows) == 2
    assert results.read_jsonl(f"{out}/items.jsonl") == [
        {"id": "a", "score": 0.5},
        {"id": "b", "text": "é"},
    ]
    md, js = results.write_summary(out, "summary", {"acc": 0.25}, echo=False)
    assert md == f"{out}/summary.md" and json.loads(_read(js)) == {"acc": 0.25}
    assert "acc" in _read(md)


def _read(uri):
    from o3video_jax import io

    return io.read_text(uri)


def test_local_only_writers_refuse_uris(tmp_path):
    from o3video_jax.data.synthetic import generate_dataset
    from o3video_jax.data.tokenizer import make_tiny_tokenizer

    with pytest.raises(ValueError, match="writes local files only"):
        generate_dataset("gs://bucket/x", 1, 0)
    with pytest.raises(ValueError, match="writes local files only"):
        make_tiny_tokenizer("gs://bucket/tok", ["a b"])
    assert _no_gs_folder(os.getcwd()) == []


def test_mirror_uploads_growing_files(gcs, tmp_path):
    from o3video_jax import io

    target = f"gs://{BUCKET}/mirror"
    m = io.Mirror(target, min_interval=0.0)
    assert not m.local.startswith(target)
    with open(os.path.join(m.local, "log.txt"), "a") as f:
        f.write("1\n")
        f.flush()
        m.sync()
        deadline = time.time() + 20
        while _gs_ls(target) != ["log.txt"]:
            assert time.time() < deadline, "sync() uploaded nothing"
            time.sleep(0.05)
        f.write("2\n")
    os.makedirs(os.path.join(m.local, "tb"))
    with open(os.path.join(m.local, "tb", "events"), "wb") as f:
        f.write(b"\x00\x01")
    m.close()  # uploads what is left and waits
    assert io.read_text(f"{target}/log.txt") == "1\n2\n"
    assert io.read_bytes(f"{target}/tb/events") == b"\x00\x01"
    assert not os.path.exists(m.local)  # staging removed

    local = io.Mirror(str(tmp_path / "here"))
    assert local.local == str(tmp_path / "here") and os.path.isdir(local.local)
    local.close()


def test_media_cache_is_bounded_and_refreshed(gcs, monkeypatch):
    from o3video_jax import io

    monkeypatch.setenv("O3VIDEO_MEDIA_CACHE_BYTES", "250")
    uris = [f"gs://{BUCKET}/media/v{i}.bin" for i in range(3)]
    for i, uri in enumerate(uris):
        io.write_bytes(uri, bytes([i]) * 100)
    copies = [io.local_file(u) for u in uris]
    for i, c in enumerate(copies[1:], 1):
        assert open(c, "rb").read() == bytes([i]) * 100
    assert not os.path.exists(copies[0])  # 300 bytes > 250: the least recent copy went
    io.write_bytes(uris[2], b"new")  # a changed object is fetched again
    assert open(io.local_file(uris[2]), "rb").read() == b"new"
    with pytest.raises(FileNotFoundError, match="no such object"):
        io.local_file(f"gs://{BUCKET}/media/absent.mp4")
    assert io.local_file("/x/y.mp4") == "/x/y.mp4"  # local paths pass through


def test_read_video_from_gs_equals_local(gcs, loop_data):
    from o3video_jax import io
    from o3video_jax.data.records import read_json_records
    from o3video_jax.data.video import VideoDecodeError, read_video

    rec = read_json_records(loop_data.sft_json)[0]
    local = os.path.join(loop_data.media_root, rec["video_path"])
    uri = f"gs://{BUCKET}/videos/{os.path.basename(local)}"
    io.copy(local, uri)
    a, b = read_video(local, fps=2.0, max_frames=8), read_video(uri, fps=2.0, max_frames=8)
    np.testing.assert_array_equal(a.frames, b.frames)
    np.testing.assert_array_equal(a.timestamps, b.timestamps)
    with pytest.raises(VideoDecodeError, match="file not found"):
        read_video(f"gs://{BUCKET}/videos/absent.mp4")


def test_hf_save_load_on_gs(gcs):
    import flax.linen as nn
    import jax

    from o3video_jax.checkpoints import hf
    from o3video_jax.models.qwen2_5_vl import Qwen25VLConfig

    config = Qwen25VLConfig.preset("tiny")
    rng = np.random.default_rng(0)
    shapes = nn.unbox(hf.abstract_params(config))  # no model init: random leaves of its shapes
    params = jax.tree.map(lambda s: rng.standard_normal(s.shape).astype(s.dtype), shapes)
    uri = f"gs://{BUCKET}/hf_roundtrip"
    hf.save(uri, config, params, progress=False)
    assert {"config.json", "model.safetensors"} <= set(_gs_ls(uri))
    config2, params2 = hf.load(uri, progress=False)
    assert config2.to_hf_dict() == config.to_hf_dict()
    for x, y in zip(jax.tree.leaves(params), jax.tree.leaves(params2), strict=True):
        np.testing.assert_array_equal(np.asarray(x), np.asarray(y))


# ---- whole runs -----------------------------------------------------------------------------------
def _cli(workdir, stage="sft", **flags):
    base = {
        "data.synthetic.videos": 4,
        "data.synthetic.eval_videos": 1,
        "optim.schedule": "constant",
        "log.progress": False,
        "ckpt.save_every": 2,
    }
    return [
        sys.executable,
        "-m",
        "o3video_jax.train",
        f"--config={CONFIG}:size=tiny,stage={stage}",
        f"--workdir={workdir}",
        *[f"--config.{k}={v}" for k, v in {**base, **flags}.items()],
    ]


def _run(args, env, cwd):
    p = subprocess.run(args, env=env, cwd=cwd, capture_output=True, text=True, timeout=300)
    assert p.returncode == 0, p.stderr[-4000:]
    return p


def _committed_steps(run: str) -> list[int]:
    from o3video_jax import io

    steps = [int(n) for n in _gs_ls(f"{run}/ckpt") if n.isdigit()]
    return sorted(s for s in steps if io.exists(f"{run}/ckpt/{s}/commit_success.txt"))


def test_sft_kill_resume_and_gspo_on_gs_workdirs(gcs, loop_env, tmp_path):
    """SFT on gs://bucket/run (synthetic data generated there) is SIGKILLed once a checkpoint
    is committed there, and resumes from it; its metrics equal an uninterrupted local run's.
    GSPO then starts from the gs:// HF export with gs:// data and media. Nothing lands in a
    local `gs:` folder (cwd, TMPDIR, the repo)."""
    from o3video_jax import io

    cwd, tmp = tmp_path / "cwd", tmp_path / "tmp"
    cwd.mkdir(), tmp.mkdir()
    env = {**loop_env, **gcs, "TMPDIR": str(tmp)}
    run, total = f"gs://{BUCKET}/run", 8

    _run(_cli(tmp_path / "ref", total_steps=total), env, cwd)
    ref = _metrics(str(tmp_path / "ref"))
    assert [m["step"] for m in ref] == list(range(1, total + 1))

    # A far horizon (constant schedule: the same steps), killed once a checkpoint landed.
    proc = subprocess.Popen(
        _cli(run, total_steps=10_000),
        env=env,
        cwd=cwd,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
    )
    deadline = time.time() + 240
    while not _committed_steps(run):
        assert proc.poll() is None, proc.stderr.read().decode()[-3000:]
        assert time.time() < deadline, "no checkpoint on gs:// within 240 s"
        time.sleep(0.05)
    proc.kill()
    proc.wait()
    proc.stderr.close()
    saved = _committed_steps(run)[-1]
    assert 2 <= saved < total, f"checkpoint {saved} leaves nothing to compare"
    assert [m["step"] for m in _metrics(run)][:saved] == list(range(1, saved + 1))

    _run(_cli(run, total_steps=total), env, cwd)  # resumes from gs://
    got = _metrics(run)
    assert [m["step"] for m in got] == list(range(1, total + 1))
    assert _strip(got) == _strip(ref)  # gs://, killed and resumed == local, uninterrupted
    assert total in _committed_steps(run)
    listing = set(_gs_ls(run))
    assert {"metrics.jsonl", "tb", "ckpt", "hf", "synthetic"} <= listing, listing
    events = _gs_ls(f"{run}/tb")  # one file per run (the killed one flushed at its checkpoint)
    assert len(events) == 2 and all(e.startswith("events.out.tfevents") for e in events)
    assert all(len(io.read_bytes(f"{run}/tb/{e}")) > 0 for e in events)
    hf_files = set(_gs_ls(f"{run}/hf"))
    assert {"config.json", "model.safetensors", "tokenizer.json"} <= hf_files, hf_files

    # GSPO from the gs:// HF export, on data and media read from gs://.
    syn = f"{run}/synthetic/train"
    gspo = f"gs://{BUCKET}/gspo"
    flags = {
        "data.synthetic.videos": 0,
        "data.train_json": f"{syn}/json_data/STGR-RL.json",
        "data.media_root": syn,
        "data.tokenizer_dir": f"{run}/hf",
        "model.hf_checkpoint": f"{run}/hf",
        "total_steps": 2,
    }
    _run(_cli(gspo, "gspo", **flags), env, cwd)
    rows = _metrics(gspo)
    assert [m["step"] for m in rows] == [1, 2] and all(np.isfinite(m["loss"]) for m in rows)
    assert {"config.json", "model.safetensors", "tokenizer.json"} <= set(_gs_ls(f"{gspo}/hf"))
    assert "2" in _gs_ls(f"{gspo}/ckpt")

    assert _no_gs_folder(cwd, tmp, REPO) == []
    assert not os.path.exists(os.path.join(REPO, "gs:"))
