"""Real multi-process training on CPU: 2 JAX processes x 2 devices vs 1 process x 4 devices.

Each run is `tests/multiprocess_worker.py` in subprocesses: with 2 processes, each calls
`jax.distributed.initialize(coordinator_address="localhost:PORT", num_processes=2,
process_id=i)` with gloo CPU collectives (jax 0.10's `jax_cpu_collectives_implementation`)
and 2 fake CPU devices, so the mesh spans 4 devices over 2 processes, as on a 2-host slice.
The single-process reference has 4 fake devices, the same mesh, global batch and seed.

SFT (mesh fsdp=4: every parameter is split over both processes; global batch 4, 2 rows per
process): the 2-process run trains one step, stops, and a second launch resumes it from the
Orbax checkpoint for step 2 (held-out evaluation at step 2); each process must get back its
own data-iterator state. Its logged loss, grad_norm,
eval/* ... and the exported HF weights must match the uninterrupted single-process run.
Data order: `pipeline.make_dataset` gives process p the records p::2 *before* shuffling, so
with `data.shuffle` the batches depend on the process count; unshuffled, the global batch of
step k holds the same 4 records in both runs (in another row order: the loss is a token sum,
so they agree to float rounding, tolerance rel 1e-5).

GSPO (mesh data=2 x tensor=2: 1 prompt per process, global batch 2, so the global row order
equals the single-process one): the rollouts (one global random stream, each process taking
its slice of `split(fold_in(key, step), n_local * process_count)`), the update metrics, the
rollout summaries over the global batch and the exported weights must equal the
single-process run's.

Preemption (fixture `preempted`, after `runs` so that its programs are cached): the SFT run on
2 processes with a far horizon; once step 2 is logged, process 1 alone gets a real SIGTERM.
JAX's preemption sync point makes both processes save the same step k and exit 0; the run
resumed to k + 2 must match an uninterrupted single-process run.

The runs share a persistent compilation cache (the resumed launch compiles nothing) and use
cheaper XLA CPU compile options (same options in every run, so the comparisons are fair).
Everything runs in one module fixture (two phases of concurrent subprocesses; ~95 s on a
2-core CPU).
"""

import json
import os
import re
import signal
import socket
import subprocess
import sys
import time

import numpy as np
import pytest
from loop_fixtures import base_flags

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
WORKER = os.path.join(REPO, "tests", "multiprocess_worker.py")
DEVICES = 4
# Halves XLA:CPU compile time; identical in every run, so the comparisons stay exact-ish.
FAST_COMPILE = "--xla_backend_optimization_level=0 --xla_llvm_disable_expensive_passes=true"
PHASE_TIMEOUT = 420
TIMING = ("step_time", "data_time", "tokens_per_s")
SFT_KEYS = ("loss", "grad_norm", "accuracy", "tokens", "param_norm", "update_norm", "lr")
GSPO_TRAIN_KEYS = ("grad_norm", "kl_mean", "update_norm", "param_norm")
GSPO_ROLLOUT_KEYS = (
    "reward",
    "reward_std",
    "reward/format",
    "reward/total",
    "adv_mean",
    "adv_std",
    "zero_variance_groups",
    "completion_len",
    "completion_len_max",
    "completion_len_min",
    "truncated_frac",
)


# ---- launching -----------------------------------------------------------------------------
def free_port() -> int:
    with socket.socket() as s:
        s.bind(("localhost", 0))
        return s.getsockname()[1]


def launch(stage, workdir, flags, processes, cache, record_dir=None):
    """Starts the worker processes of one run; returns (run dict, Popen list)."""
    env = dict(os.environ)
    env.update(
        JAX_PLATFORMS="cpu",
        XLA_FLAGS=f"--xla_force_host_platform_device_count={DEVICES // processes} " + FAST_COMPILE,
        JAX_COMPILATION_CACHE_DIR=str(cache),
        JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS="0",
        JAX_PERSISTENT_CACHE_MIN_ENTRY_SIZE_BYTES="0",
        PYTHONPATH=REPO + os.pathsep + env.get("PYTHONPATH", ""),
    )
    port = free_port()
    record_dir = str(record_dir or workdir)
    os.makedirs(record_dir, exist_ok=True)
    procs, logs = [], []
    for i in range(processes):
        spec = dict(
            stage=stage,
            workdir=str(workdir),
            flags=flags,
            process_id=i,
            num_processes=processes,
            port=port,
            record_dir=record_dir,
        )
        log = os.path.join(record_dir, f"log_{i}.txt")
        with open(log, "w") as f:
            procs.append(
                subprocess.Popen(
                    [sys.executable, WORKER, json.dumps(spec)],
                    env=env,
                    cwd=REPO,
                    stdout=f,
                    stderr=subprocess.STDOUT,
                )
            )
        logs.append(log)
    return {"workdir": str(workdir), "record_dir": record_dir, "logs": logs}, procs


def wait(runs, timeout=PHASE_TIMEOUT, grace=20.0):
    """Waits for every run's processes. When a process fails, its peers (blocked in a
    collective) are killed after `grace` s; everything is killed at `timeout`."""
    deadline, failed_at = time.time() + timeout, {}
    try:
        while True:
            alive = False
            for n, (_, procs) in enumerate(runs):
                codes = [p.poll() for p in procs]
                if any(c not in (None, 0) for c in codes):
                    failed_at.setdefault(n, time.time())
                    if time.time() - failed_at[n] > grace:
                        for p in procs:
                            if p.poll() is None:
                                p.kill()
                alive |= any(c is None for c in codes)
            if not alive or time.time() > deadline:
                break
            time.sleep(0.2)
    finally:
        for _, procs in runs:
            for p in procs:
                if p.poll() is None:
                    p.kill()
                p.wait()
    for run, procs in runs:
        run["returncodes"] = [p.returncode for p in procs]
        run["records"] = [
            read_json(os.path.join(run["record_dir"], f"process_{i}.json"))
            for i in range(len(procs))
        ]
        run["log_tail"] = "\n".join(tail(log) for log in run["logs"])
    return [run for run, _ in runs]


def read_json(path):
    if not os.path.exists(path):
        return None
    with open(path) as f:
        return json.load(f)


def tail(path, n=3000):
    with open(path) as f:
        return f.read()[-n:]


def metrics(run):
    path = os.path.join(run["workdir"], "metrics.jsonl")
    if not os.path.exists(path):
        return []
    with open(path) as f:
        return [json.loads(line) for line in f if line.strip()]


def ok(run) -> bool:
    return run["returncodes"] and all(c == 0 for c in run["returncodes"])


def failure(run) -> str:
    errors = [(r or {}).get("error", "") for r in run["records"]]
    return f"return codes {run['returncodes']}\n" + "\n".join(errors) + run["log_tail"]


def checkpoint_steps(workdir):
    d = os.path.join(workdir, "ckpt")
    return sorted(int(n) for n in os.listdir(d) if n.isdigit()) if os.path.isdir(d) else []


def hf_weights(run):
    from safetensors.numpy import load_file

    return load_file(os.path.join(run["workdir"], "hf", "model.safetensors"))


# ---- fixtures ------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def cache(tmp_path_factory):
    return tmp_path_factory.mktemp("xla_cache")


@pytest.fixture(scope="module")
def collectives(tmp_path_factory, cache):
    """Two processes run a cross-process reduction; skips the module only when jax's CPU
    multi-process collectives do not work here (two tries, in case of a port clash)."""
    for attempt in range(2):
        root = tmp_path_factory.mktemp(f"probe{attempt}")
        (run,) = wait([launch("probe", root, {}, 2, cache)], timeout=120)
        if ok(run):
            return run
    pytest.skip(f"jax multi-process CPU collectives (gloo) unavailable: {failure(run)[-1500:]}")


def common_flags(data, stage):
    # shuffled order depends on the process count (see top)
    return {**base_flags(data, stage), "data.shuffle": False}


@pytest.fixture(scope="module")
def runs(collectives, loop_data, cache, tmp_path_factory):
    """Phase 1: the SFT reference (1 process), SFT on 2 processes to step 1, GSPO on 2
    processes. Phase 2: the 2-process SFT resumed to step 2, the GSPO reference."""
    data = loop_data
    root = tmp_path_factory.mktemp("runs")
    sft = {
        **common_flags(data, "sft"),
        "data.eval_json": data.heldout_sft_json,  # 3 records: process 0 gets 2, process 1 one
        "data.eval_media_root": data.heldout_media_root,
        "data.batch_size": 4,
        "mesh.data": 1,
        "mesh.fsdp": 4,
        "mesh.tensor": 1,
        "ckpt.save_every": 1,
        "log.eval_every": 2,
        "total_steps": 2,
    }
    gspo = {
        **common_flags(data, "gspo"),
        "data.batch_size": 2,
        "mesh.data": 2,
        "mesh.fsdp": 1,
        "mesh.tensor": 2,
        "optim.lr": 0.01,
        "rl.beta": 0.04,
        "total_steps": 2,
        # Greedy held-out eval at step 2 of the first prompt only: process 1's share is empty.
        "data.eval_json": data.heldout_rl_json,
        "data.eval_media_root": data.heldout_media_root,
        "log.eval_every": 2,
        "log.eval_prompts": 1,
    }
    t0 = time.time()
    sft_ref, sft_first, gspo_two = wait(
        [
            launch("sft", root / "sft1", sft, 1, cache),
            launch("sft", root / "sft2", {**sft, "total_steps": 1}, 2, cache, root / "sft2_a"),
            launch("gspo", root / "gspo2", gspo, 2, cache),
        ]
    )
    t1 = time.time()
    # The GSPO reference only matters once the 2-process run works (the GSPO tests check
    # that first): no 25 s reference run while it crashes.
    phase2 = [launch("sft", root / "sft2", sft, 2, cache, root / "sft2_b")]
    if ok(gspo_two):
        phase2.append(launch("gspo", root / "gspo1", gspo, 1, cache))
    sft_resumed, *rest = wait(phase2)
    gspo_ref = rest[0] if rest else None
    print(f"multiprocess runs: phase 1 {t1 - t0:.0f} s, phase 2 {time.time() - t1:.0f} s")
    return {
        "sft_ref": sft_ref,
        "sft_first": sft_first,
        "sft_resumed": sft_resumed,
        "gspo_ref": gspo_ref,
        "gspo_two": gspo_two,
    }


# ---- tests ---------------------------------------------------------------------------------
def test_cpu_collectives_span_both_processes(collectives):
    for i, rec in enumerate(collectives["records"]):
        assert (rec["process_index"], rec["process_count"]) == (i, 2)
        assert (rec["device_count"], rec["local_device_count"]) == (4, 2)
        # process 0 holds [0, 1], process 1 [10, 11]: the sum needs both.
        assert rec["probe"] == {"sum": 22.0, "gathered": [0.0, 1.0, 10.0, 11.0]}


def test_sft_two_processes_resumed_match_one_process(runs):
    ref, first, resumed = runs["sft_ref"], runs["sft_first"], runs["sft_resumed"]
    for run in (ref, first, resumed):
        assert ok(run), failure(run)
    for rec in first["records"] + resumed["records"]:
        assert (rec["process_count"], rec["device_count"], rec["local_device_count"]) == (2, 4, 2)
        assert rec["mesh"] == {"data": 1, "fsdp": 4, "tensor": 1}
    assert ref["records"][0]["mesh"] == {"data": 1, "fsdp": 4, "tensor": 1}
    assert [r["start_step"] for r in resumed["records"]] == [1, 1]  # resumed on both

    want, got = metrics(ref), metrics(resumed)
    assert [m["step"] for m in want] == [m["step"] for m in got] == [1, 2]
    for w, g in zip(want, got, strict=True):
        for k in SFT_KEYS:
            assert g[k] == pytest.approx(w[k], rel=1e-5), (w["step"], k)
        assert g["skipped"] == w["skipped"] == 0
    # The held-out evaluation (3 records over 2 processes, one padding row) at step 2.
    assert want[1]["eval/tokens"] == got[1]["eval/tokens"] > 0
    for k in ("eval/loss", "eval/accuracy"):
        assert got[1][k] == pytest.approx(want[1][k], rel=1e-5), k
    # Every process saw the same (global) step metrics.
    last = [{k: r["last"][k] for k in SFT_KEYS} for r in resumed["records"]]
    assert last[0] == last[1]


def test_sft_two_processes_export_the_same_weights(runs):
    ref, resumed = runs["sft_ref"], runs["sft_resumed"]
    assert ok(ref) and ok(resumed), failure(resumed)
    want, got = hf_weights(ref), hf_weights(resumed)
    assert sorted(got) == sorted(want)
    for name in want:
        np.testing.assert_allclose(got[name], want[name], rtol=0, atol=5e-5, err_msg=name)
    # Only process 0 writes the export, tokenizer files included.
    assert os.path.exists(os.path.join(resumed["workdir"], "hf", "tokenizer.json"))
    # Both processes wrote their own shards of the fsdp-split state.
    state = os.path.join(resumed["workdir"], "ckpt", "2", "state")
    assert {"ocdbt.process_0", "ocdbt.process_1"} <= set(os.listdir(state))


def test_sft_resume_restores_process_0_data_state(runs):
    first, resumed = runs["sft_first"], runs["sft_resumed"]
    assert ok(first) and ok(resumed), failure(resumed)
    saved = [r["data_states"][-1] for r in first["records"]]  # each process after step 1
    assert resumed["records"][0]["restored_data_state"] == saved[0]
    # The processes read different records, so their iterator states differ: restoring
    # process 0's state on process 1 is not a no-op (test below).
    assert saved[0] != saved[1]


def test_sft_resume_restores_process_1_own_data_state(runs):
    first, resumed = runs["sft_first"], runs["sft_resumed"]
    assert ok(first) and ok(resumed), failure(resumed)
    own = first["records"][1]["data_states"][-1]
    assert resumed["records"][1]["restored_data_state"] == own


def test_sft_tokens_per_s_counts_the_global_batch(runs):
    ref, resumed = runs["sft_ref"], runs["sft_resumed"]
    assert ok(ref) and ok(resumed), failure(resumed)
    for w, g in zip(metrics(ref), metrics(resumed), strict=True):
        # tokens_per_s = non-padding positions of the batch / step_time.
        tokens = lambda m: m["tokens_per_s"] * m["step_time"]
        assert tokens(g) == pytest.approx(tokens(w), rel=1e-6)


def test_gspo_runs_on_two_processes(runs):
    two = runs["gspo_two"]
    assert ok(two), failure(two)
    assert [r["mesh"] for r in two["records"]] == [{"data": 2, "fsdp": 1, "tensor": 2}] * 2
    assert [m["step"] for m in metrics(two)] == [1, 2]
    assert ok(runs["gspo_ref"]), failure(runs["gspo_ref"])


def test_gspo_rollouts_do_not_depend_on_the_process_count(runs):
    ref, two = runs["gspo_ref"], runs["gspo_two"]
    assert ok(two), failure(two)
    assert ok(ref), failure(ref)
    # Row r of the global batch (prompt r // G, process r // (G * prompts per process)) is
    # sampled with the same key, params and prompt in both runs: the same text.
    ref_rows = ref["records"][0]["completions"]
    mine = [r["completions"] for r in two["records"]]
    for step in range(2):
        assert mine[0][step] + mine[1][step] == ref_rows[step], step


def test_gspo_two_processes_match_one_process(runs):
    ref, two = runs["gspo_ref"], runs["gspo_two"]
    assert ok(two), failure(two)
    assert ok(ref), failure(ref)
    want, got = metrics(ref), metrics(two)
    assert [m["step"] for m in got] == [1, 2]
    for w, g in zip(want, got, strict=True):
        for k in GSPO_TRAIN_KEYS:
            assert g[k] == pytest.approx(w[k], rel=1e-5, abs=1e-7), (w["step"], k)
        # The GSPO loss is ~0 at the first step (centred advantages, ratio 1): absolute.
        assert g["loss"] == pytest.approx(w["loss"], rel=1e-4, abs=1e-6), w["step"]
        for k in ("ratio_min", "ratio_mean", "ratio_max", "clip_frac"):
            assert g[k] == pytest.approx(w[k], abs=1e-6), (w["step"], k)
        for k in GSPO_ROLLOUT_KEYS:  # host-side summaries of the whole global batch
            assert g[k] == pytest.approx(w[k], abs=1e-6), (w["step"], k)
    assert want[1]["eval/n"] == got[1]["eval/n"] == 1
    for k in ("eval/total", "eval/format", "eval/mAM"):
        assert got[1][k] == pytest.approx(want[1][k], abs=1e-6), k
    want_w, got_w = hf_weights(ref), hf_weights(two)
    for name in want_w:
        np.testing.assert_allclose(got_w[name], want_w[name], rtol=0, atol=1e-4, err_msg=name)


# ---- preemption ----------------------------------------------------------------------------
PREEMPT_TIMEOUT = 150  # a process that acts alone on its SIGTERM hangs the other: no hang here


def logged_steps(workdir) -> list[int]:
    path = os.path.join(workdir, "metrics.jsonl")
    if not os.path.exists(path):
        return []
    with open(path) as f:  # a line being written is skipped
        return [json.loads(s)["step"] for s in f.read().splitlines() if s.endswith("}")]


def preempted_step(run) -> list[int]:
    """The step each process reported stopping at ("preempted at step k" in its log)."""
    steps = []
    for log in run["logs"]:
        with open(log) as f:
            found = re.findall(r"preempted at step (\d+): checkpoint saved", f.read())
        steps.append(int(found[0]) if len(found) == 1 else None)
    return steps


@pytest.fixture(scope="module")
def preempted(collectives, loop_data, cache, tmp_path_factory):
    """2-process SFT (the mesh of `runs`, fsdp=4 over both processes) with a far horizon and
    no periodic saves; once step 2 is logged, process 1 alone gets a real SIGTERM. Then,
    concurrently: the run resumed to k + 2 (k: the step it stopped at) and an uninterrupted
    single-process run to k + 2 (4 devices, the same mesh)."""
    root = tmp_path_factory.mktemp("preempt")
    flags = {
        **common_flags(loop_data, "sft"),
        "data.batch_size": 4,
        "mesh.data": 1,
        "mesh.fsdp": 4,
        "mesh.tensor": 1,
        "ckpt.save_every": 0,
        "log.every": 1,
        "total_steps": 10_000,  # constant schedule: the horizon changes nothing else
    }
    t0 = time.time()
    run, procs = launch("sft", root / "run", flags, 2, cache, root / "run_a")
    deadline = time.time() + PHASE_TIMEOUT
    while len(logged_steps(run["workdir"])) < 2:
        if any(p.poll() is not None for p in procs) or time.time() > deadline:
            break
        time.sleep(0.05)
    sent_after = logged_steps(run["workdir"])
    if procs[1].poll() is None:
        procs[1].send_signal(signal.SIGTERM)
    (first,) = wait([(run, procs)], timeout=PREEMPT_TIMEOUT)
    first["sent_after"] = sent_after
    # Before the resumed run adds to them:
    first["ckpt_steps"] = checkpoint_steps(first["workdir"])
    first["logged"] = logged_steps(first["workdir"])
    if first["ckpt_steps"]:
        step_dir = os.path.join(first["workdir"], "ckpt", str(first["ckpt_steps"][-1]))
        first["state_files"] = sorted(os.listdir(os.path.join(step_dir, "state")))
    out = {"first": first}
    steps = preempted_step(first)
    if ok(first) and steps[0] is not None and steps == [steps[0]] * 2:
        total = steps[0] + 2
        # One after the other: gloo gives a peer 30 s to join a collective, which a process
        # competing for 2 loaded cores with a concurrent run can miss. The reference is one
        # process with the same 4-device mesh (as `sft_ref`).
        (out["resumed"],) = wait(
            [launch("sft", root / "run", {**flags, "total_steps": total}, 2, cache, root / "b")]
        )
        if ok(out["resumed"]):
            (out["ref"],) = wait(
                [launch("sft", root / "ref", {**flags, "total_steps": total}, 1, cache)]
            )
    print(f"preemption runs: {time.time() - t0:.0f} s")
    return out


def test_sigterm_on_one_process_stops_both_at_the_same_step(preempted):
    first = preempted["first"]
    assert ok(first), failure(first)  # both exit 0 (none hangs, none is killed)
    assert len(first["sent_after"]) >= 2, first["sent_after"]  # the signal came mid-run
    k = preempted_step(first)[0]
    assert preempted_step(first) == [k, k], failure(first)
    assert k >= 2
    # The only checkpoint (no periodic saves) is step k, complete, with both processes' shards.
    assert first["ckpt_steps"] == [k]
    assert {"ocdbt.process_0", "ocdbt.process_1"} <= set(first["state_files"])
    assert first["logged"] == list(range(1, k + 1))
    losses = [r["last"]["loss"] for r in first["records"]]  # both ran the same steps
    assert losses[0] == losses[1]


def test_sigterm_resumed_run_matches_uninterrupted(preempted):
    first = preempted["first"]
    assert ok(first), failure(first)
    assert "resumed" in preempted, failure(first)  # both stopped at the same step
    resumed = preempted["resumed"]
    assert ok(resumed), failure(resumed)
    ref = preempted["ref"]
    assert ok(ref), failure(ref)
    k = preempted_step(first)[0]
    assert [r["start_step"] for r in resumed["records"]] == [k, k]
    assert preempted_step(resumed) == [None, None]
    want, got = metrics(ref), metrics(resumed)
    assert [m["step"] for m in got] == [m["step"] for m in want] == list(range(1, k + 3))
    # As in test_sft_two_processes_resumed_match_one_process: the same records per global
    # batch in another row order, so equal up to float rounding.
    for w, g in zip(want, got, strict=True):
        for name in SFT_KEYS:
            assert g[name] == pytest.approx(w[name], rel=1e-5), (w["step"], name)
        assert g["skipped"] == w["skipped"] == 0
    want_w, got_w = hf_weights(ref), hf_weights(resumed)
    assert sorted(got_w) == sorted(want_w)
    for name in want_w:
        np.testing.assert_allclose(got_w[name], want_w[name], rtol=0, atol=5e-5, err_msg=name)
