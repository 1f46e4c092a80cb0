"""`python -m o3video_jax.train.supervise --logs DIR --host H --log FILE -- CMD...`: runs CMD on
one worker of a multi-host run, mirrors its log off the worker, and stops it when another
worker's command failed.

tpu_scripts/launch.sh wraps the run's command in this on every worker (the logs go to
WORKDIR/logs/LAUNCH_ID/, gs:// included). While CMD runs, every `--every` seconds:

- FILE (the worker's log, which launch.sh's run script writes) is copied whole to DIR/H.log,
  so the logs outlive a spot or queued slice (a GCS object cannot be appended to; the copy is
  one write per interval, within GCS's per-object rate);
- DIR/*.exit of the other workers is read: one holding a non-zero status means that worker
  crashed, and the rest of the run would hang in its next collective until a timeout hours
  later; CMD then gets SIGTERM and, `--grace` seconds later, SIGKILL.

When CMD exits its status goes to DIR/H.exit (as a shell reports it: 128 + N for signal N),
the log is copied a last time, and the supervisor exits with that status. The supervisor
ignores SIGTERM and SIGINT: stop.sh and a VM shutdown signal the whole process group, CMD
handles the signal, and this process records how CMD ended.
"""

from __future__ import annotations

import argparse
import os
import signal
import subprocess
import sys
import time

from o3video_jax import io


def shell_status(returncode: int) -> int:
    return 128 - returncode if returncode < 0 else returncode


def mirror(local: str, remote: str) -> None:
    try:
        with open(local, "rb") as f:
            data = f.read()
    except OSError:
        return
    try:
        io.write_bytes(remote, data)
    except Exception as e:  # noqa: BLE001  a failed upload must not stop the run
        print(f"[supervise] log upload to {remote} failed: {e}", flush=True)


def failed_peers(logs: str, host: str) -> dict[str, int]:
    """Other workers' non-zero exit statuses from DIR/*.exit."""
    out = {}
    try:
        names = io.listdir(logs)
    except Exception:  # noqa: BLE001  not created yet, or a transient listing error
        return out
    for name in names:
        name = os.path.basename(name.rstrip("/"))
        if not name.endswith(".exit") or name == f"{host}.exit":
            continue
        try:
            status = int(io.read_text(os.path.join(logs, name)).strip() or "0")
        except (OSError, ValueError):
            continue
        if status != 0:
            out[name[: -len(".exit")]] = status
    return out


def supervise(
    cmd: list[str], logs: str, host: str, log: str | None, every: float, grace: float
) -> int:
    signal.signal(signal.SIGTERM, signal.SIG_IGN)
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    remote_log = os.path.join(logs, f"{host}.log")
    child = subprocess.Popen(
        cmd,
        preexec_fn=lambda: (
            signal.signal(signal.SIGTERM, signal.SIG_DFL),
            signal.signal(signal.SIGINT, signal.SIG_DFL),
        ),
    )
    stop_at, next_check = None, time.monotonic() + every
    while child.poll() is None:
        time.sleep(min(0.5, every))
        now = time.monotonic()
        if stop_at is not None and now >= stop_at:
            print(
                f"[supervise] {host}: still running {grace:g} s after SIGTERM: SIGKILL", flush=True
            )
            child.kill()
            stop_at = None
        if now < next_check:
            continue
        next_check = now + every
        if log:
            mirror(log, remote_log)
        failed = failed_peers(logs, host) if stop_at is None else {}
        if failed and child.poll() is None:
            peers = ", ".join(f"{h} exited {s}" for h, s in sorted(failed.items()))
            print(f"[supervise] {host}: {peers}: stopping this worker (SIGTERM)", flush=True)
            child.terminate()
            stop_at = now + grace
    status = shell_status(child.returncode)
    io.write_text(os.path.join(logs, f"{host}.exit"), f"{status}\n")
    if log:
        mirror(log, remote_log)
    return status


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--logs", required=True, help="folder for HOST.log and HOST.exit (gs:// ok)")
    p.add_argument("--host", default=os.uname().nodename)
    p.add_argument("--log", help="this worker's local log file, mirrored to LOGS/HOST.log")
    p.add_argument("--every", type=float, default=30.0, help="seconds between mirrors/checks")
    p.add_argument("--grace", type=float, default=60.0, help="SIGTERM to SIGKILL, seconds")
    p.add_argument("cmd", nargs=argparse.REMAINDER)
    a = p.parse_args(argv)
    cmd = a.cmd[1:] if a.cmd[:1] == ["--"] else a.cmd
    if not cmd:
        p.error("no command after --")
    sys.exit(supervise(cmd, a.logs, a.host, a.log, a.every, a.grace))


def cli() -> None:
    """`python -m o3video_jax.train.supervise`."""
    main()


if __name__ == "__main__":
    cli()
