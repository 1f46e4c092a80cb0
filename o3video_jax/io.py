"""One path layer for everything a run reads and writes: local paths and `gs://` alike.

Paths stay plain strings (`os.path.join` is fine on `gs://bucket/x`); the reads and writes go
through `etils.epath` (gcsfs for `gs://`, as Orbax's own metadata does), so a workdir, an HF
checkpoint, a data JSON or a media root may live on either. Three things cannot talk to an
object store directly, and get a local file instead:

- **Growing files** (metrics.jsonl, TensorBoard events, profiler traces): GCS objects are
  immutable (no append), so `Mirror` gives a local staging directory whose changed files are
  uploaded whole by a background thread (coalesced, at most one upload per
  `min_interval` seconds, GCS's per-object write rate) and on `close()`.
- **Media decoded by OpenCV** (`cv2.VideoCapture`, `cv2.imread` take a file name):
  `local_file` copies the object into a per-process cache bounded by
  `O3VIDEO_MEDIA_CACHE_BYTES` (default 8 GiB, least recently used first out).
- **HF checkpoints** (memory-mapped safetensors, so each host slices out only its shards):
  `local_dir` mirrors the directory's files into the cache once per process (reused while
  the objects' sizes and modification times are unchanged).

The cache lives under `O3VIDEO_CACHE_DIR` (default `~/.cache/o3video_jax`). Only process 0
writes shared files; that is the callers' business, not this module's.
"""

from __future__ import annotations

import builtins
import hashlib
import json
import os
import shutil
import tempfile
import threading
import time
from collections.abc import Iterator

import fsspec.config
from etils import epath

_DEFAULT_MEDIA_CACHE_BYTES = 8 << 30

# gcsfs caches directory listings per process by default, so a process would not see files
# that another one (or an earlier run) wrote after its first listing: process 0 writes,
# the others check. Listings here are few and small; always ask the server. (Applied when
# the filesystem is first created, which the imports of this module precede.)
for _protocol in ("gcs", "gs"):
    fsspec.config.conf.setdefault(_protocol, {}).setdefault("use_listings_cache", False)


def is_remote(path: str | os.PathLike) -> bool:
    """True for URIs (`gs://...`, `s3://...`), False for local paths."""
    return "://" in os.fspath(path)


def require_local(p: str | os.PathLike, what: str) -> str:
    """`p` as a string; ValueError for a URI (for writers that only work on local files,
    which would otherwise create a folder literally named `gs:`)."""
    p = os.fspath(p)
    if is_remote(p):
        raise ValueError(f"{what} writes local files only, got {p!r}")
    return p


def path(p: str | os.PathLike) -> epath.Path:
    return epath.Path(os.fspath(p))


def abspath(p: str | os.PathLike) -> str:
    """`os.path.abspath` for local paths; URIs unchanged (never `./gs:/bucket/...`)."""
    p = os.fspath(p)
    return p.rstrip("/") if is_remote(p) else os.path.abspath(p)


def exists(p: str | os.PathLike) -> bool:
    return path(p).exists()


def isdir(p: str | os.PathLike) -> bool:
    return path(p).is_dir()


def isfile(p: str | os.PathLike) -> bool:
    q = path(p)
    return q.exists() and not q.is_dir()


def makedirs(p: str | os.PathLike) -> None:
    """Creates a local directory (and parents); a no-op on object stores, which have none."""
    if not is_remote(p):
        os.makedirs(p, exist_ok=True)


def open(p: str | os.PathLike, mode: str = "r", encoding: str | None = None):  # noqa: A001
    """A file object for `p`. Append mode is refused on object stores (no appends there;
    use `Mirror`) instead of silently overwriting, as gcsfs does."""
    if "a" in mode and is_remote(p):
        raise ValueError(f"cannot append to {os.fspath(p)}: object stores have no append")
    if "b" in mode:
        return path(p).open(mode)
    return path(p).open(mode, encoding=encoding or "utf-8")


def read_text(p: str | os.PathLike) -> str:
    return path(p).read_text(encoding="utf-8")


def read_bytes(p: str | os.PathLike) -> bytes:
    return path(p).read_bytes()


def write_text(p: str | os.PathLike, text: str) -> None:
    """Writes a whole file (parents created locally)."""
    makedirs(os.path.dirname(os.fspath(p)) or ".")
    path(p).write_text(text, encoding="utf-8")


def write_bytes(p: str | os.PathLike, data: bytes) -> None:
    makedirs(os.path.dirname(os.fspath(p)) or ".")
    path(p).write_bytes(data)


def copy(src: str | os.PathLike, dst: str | os.PathLike) -> None:
    """Copies one file between any two places (local or remote, either side)."""
    if not is_remote(src) and not is_remote(dst):
        makedirs(os.path.dirname(os.fspath(dst)) or ".")
        shutil.copyfile(src, dst)
        return
    with open(src, "rb") as fin, open(dst, "wb") as fout:
        shutil.copyfileobj(fin, fout, 16 << 20)


def upload_tree(src: str, dst: str) -> None:
    """Copies the local directory tree `src` to `dst` (local or remote), file by file."""
    for root, _, files in os.walk(src):
        for name in sorted(files):
            rel = os.path.relpath(os.path.join(root, name), src)
            copy(os.path.join(root, name), os.path.join(dst, rel))


def listdir(p: str | os.PathLike) -> list[str]:
    """Names of the entries directly under `p` (sorted)."""
    return sorted(child.name for child in path(p).iterdir())


# ---- a per-process local cache of remote files -----------------------------------------------
def cache_dir() -> str:
    root = os.environ.get("O3VIDEO_CACHE_DIR") or os.path.join(
        os.path.expanduser("~"), ".cache", "o3video_jax"
    )
    os.makedirs(root, exist_ok=True)
    return root


def _stamp(p: epath.Path) -> dict:
    st = p.stat()
    return {"size": int(st.length), "mtime": float(st.mtime or 0.0)}


def _fetch(remote: epath.Path, local: str, stamp: dict) -> None:
    """Downloads `remote` to `local` atomically (a temp name, then rename), with its stamp."""
    os.makedirs(os.path.dirname(local), exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=os.path.dirname(local), prefix=".part-")
    try:
        with os.fdopen(fd, "wb") as fout, remote.open("rb") as fin:
            shutil.copyfileobj(fin, fout, 16 << 20)
        os.replace(tmp, local)
    except BaseException:
        if os.path.exists(tmp):
            os.remove(tmp)
        raise
    with builtins.open(local + ".stamp", "w") as f:
        json.dump(stamp, f)


def _cached(remote: epath.Path, local: str) -> bool:
    """Fetches `remote` into `local` unless an identical copy is there. Returns True when
    it downloaded."""
    stamp = _stamp(remote)
    try:
        with builtins.open(local + ".stamp") as f:
            if json.load(f) == stamp and os.path.getsize(local) == stamp["size"]:
                return False
    except (OSError, ValueError):
        pass
    _fetch(remote, local, stamp)
    return True


def _key(uri: str) -> str:
    return hashlib.sha256(uri.encode()).hexdigest()[:24]


def local_file(p: str | os.PathLike) -> str:
    """A local path with the contents of `p`: `p` itself when local, else a cached copy.

    Raises FileNotFoundError for a missing remote object. The media cache is bounded by
    `O3VIDEO_MEDIA_CACHE_BYTES`; older copies are evicted (least recently used first).
    """
    p = os.fspath(p)
    if not is_remote(p):
        return p
    remote = path(p)
    if not remote.exists() or remote.is_dir():
        raise FileNotFoundError(f"no such object: {p}")
    media = os.path.join(cache_dir(), "media")
    local = os.path.join(media, _key(p) + "-" + os.path.basename(p.rstrip("/")))
    if _cached(remote, local):
        _evict(media, keep=local)
    else:
        os.utime(local)  # recently used
    return local


def _evict(directory: str, keep: str) -> None:
    limit = int(os.environ.get("O3VIDEO_MEDIA_CACHE_BYTES", _DEFAULT_MEDIA_CACHE_BYTES))
    entries = []
    for name in os.listdir(directory):
        full = os.path.join(directory, name)
        if name.endswith(".stamp") or name.startswith(".part-"):
            continue
        try:
            st = os.stat(full)
        except FileNotFoundError:  # another worker evicted it
            continue
        entries.append((st.st_mtime, st.st_size, full))
    total = sum(size for _, size, _ in entries)
    for _, size, full in sorted(entries):
        if total <= limit:
            break
        if full == keep:
            continue
        for f in (full, full + ".stamp"):
            try:
                os.remove(f)
            except FileNotFoundError:
                pass
        total -= size


def local_dir(p: str | os.PathLike) -> str:
    """A local directory with the files directly under `p` (an HF checkpoint, a tokenizer):
    `p` itself when local, else a per-process cached mirror (not size-bounded: it is what the
    run loads). Raises FileNotFoundError when `p` holds no files."""
    p = os.fspath(p)
    if not is_remote(p):
        return p
    remote = path(p)
    children = [c for c in remote.iterdir() if not c.is_dir()] if remote.exists() else []
    if not children:
        raise FileNotFoundError(f"no files under {p}")
    local = os.path.join(cache_dir(), "dirs", _key(abspath(p)))
    for child in children:
        _cached(child, os.path.join(local, child.name))
    return local


# ---- growing files under a possibly remote directory -----------------------------------------
class Mirror:
    """A local directory whose files are mirrored to `target` (local or remote).

    Local target: `local` is `target` itself and sync() does nothing. Remote target: files are
    written under a private temp directory; `sync()` asks a background thread to upload every
    file that changed since its last upload (at most once per `min_interval` seconds; the
    caller never waits on the network), `close()` uploads what is left and waits. A process
    killed hard loses at most the last `min_interval` seconds of writes.
    """

    def __init__(self, target: str, min_interval: float = 2.0):
        self.target = os.fspath(target)
        self.remote = is_remote(self.target)
        self.min_interval = float(min_interval)
        if not self.remote:
            makedirs(self.target)
            self.local = self.target
            return
        self.local = tempfile.mkdtemp(prefix="o3video-mirror-")
        self._uploaded: dict[str, tuple[int, float]] = {}
        self._wake = threading.Event()
        self._stop = False
        self._error: BaseException | None = None
        self._lock = threading.Lock()
        self._thread = threading.Thread(target=self._run, name="o3video-mirror", daemon=True)
        self._thread.start()

    def _files(self) -> Iterator[tuple[str, str]]:
        for root, _, files in os.walk(self.local):
            for name in files:
                full = os.path.join(root, name)
                yield full, os.path.relpath(full, self.local)

    def _upload_changed(self) -> None:
        with self._lock:
            for full, rel in list(self._files()):
                try:
                    st = os.stat(full)
                except FileNotFoundError:
                    continue
                sig = (st.st_size, st.st_mtime)
                if self._uploaded.get(rel) != sig:
                    copy(full, os.path.join(self.target, rel))
                    self._uploaded[rel] = sig

    def _run(self) -> None:
        while not self._stop:
            self._wake.wait()
            self._wake.clear()
            if self._stop:
                return
            started = time.monotonic()
            try:
                self._upload_changed()
            except BaseException as e:  # noqa: BLE001 - reported by close()
                self._error = e
            time.sleep(max(0.0, self.min_interval - (time.monotonic() - started)))

    def sync(self) -> None:
        """Uploads changed files soon (non-blocking)."""
        if self.remote:
            self._wake.set()

    def flush(self) -> None:
        """Uploads every changed file now and waits (e.g. the metrics up to a checkpoint)."""
        if self.remote and not self._stop:
            self._upload_changed()

    def close(self) -> None:
        """Uploads every changed file and waits; raises an upload error seen on the way."""
        if not self.remote or self._stop:
            return
        self._stop = True
        self._wake.set()
        self._thread.join()
        self._upload_changed()
        shutil.rmtree(self.local, ignore_errors=True)
        if self._error is not None:
            raise OSError(f"uploading to {self.target} failed: {self._error}") from self._error
