"""Pixel-only records: short questions about synthetic videos whose one-word answer only the
frames determine (the demo's first training stages, docs/demo.md).

Every record is an STGR-SFT free-form record (`task` "General video QA Free-form") in the
demo's prompt layout (`Frame j at t s: <image>` lines); its answer is one word from a fixed
candidate list (`CANDIDATES`), and the answers are balanced: the generator cycles through the
candidates, so within a set of `len(candidates) * m` records every candidate is the answer
equally often, and the question text says nothing about which (a text-only model is at
chance, 1 / len(candidates)). Frames are named by the time label the prompt prints for them,
and every answer is computed on the frames the model is given (`video.sample_indices`, the
pipeline's sampling), not on the whole video.

Kinds (one object: `KINDS_ONE`; two or three objects, the object named by its colour:
`KINDS_MANY`):
  color       "What colour is the object?"                      red | green | ... (6)
  shape       "What shape is the object?" / "... the red object?"  circle | square | triangle
  half        "Is the object on the left or the right at 1.5s?"   left | right
  visible     "Is the object visible at 1.5s?"                    yes | no
  first       "At which frame does the object first appear?"      1 | 2 | ... | 6 (its `Frame j`)
The many-object kinds are `shape_m`, `half_m`, `visible_m`, `first_m`.
"""

from __future__ import annotations

import dataclasses
import json
import os

import numpy as np

from o3video_jax.data import synthetic_world as world
from o3video_jax.data.video import sample_indices

FREE_TASK = "General video QA Free-form"
SOURCE = "videor1_synthetic_free"
REASONING = "I look at the frames."  # not trained (the stages train the answer tokens only)
NUMBERS = ("1", "2", "3", "4", "5", "6")  # the `Frame j` numbers of the prompt
SIDES = ("left", "right")
YES_NO = ("yes", "no")
CANDIDATES = {
    "color": tuple(world.COLORS),
    "shape": world.SHAPES,
    "half": SIDES,
    "visible": YES_NO,
    "first": NUMBERS,
    "shape_m": world.SHAPES,
    "half_m": SIDES,
    "visible_m": YES_NO,
    "first_m": NUMBERS,
}
KINDS_ONE = ("color", "shape", "half", "visible", "first")
KINDS_MANY = ("shape_m", "half_m", "visible_m", "first_m")


@dataclasses.dataclass(frozen=True)
class Sampling:
    """What the model is shown of a video: the pipeline's frame sampling (data.fps,
    max_frames, min_frames; "o3" sampling, labels k / fps)."""

    fps: float = 2.0
    max_frames: int = 8
    min_frames: int = 4

    def frames(self, spec: world.VideoSpec) -> tuple[np.ndarray, list[str]]:
        """Video frame indices the model sees and their prompt labels ("1.5")."""
        idx = sample_indices(
            spec.num_frames, spec.fps, self.fps, self.max_frames, self.min_frames, sampling="o3"
        )
        return idx, [str(round(k / self.fps, 1)) for k in range(len(idx))]


def chance(kind: str) -> float:
    return 1.0 / len(CANDIDATES[kind])


def _spec(
    rng: np.random.Generator, n_objects: int, seconds: int, width: int, height: int, fps: int
) -> world.VideoSpec:
    return world.random_spec(rng, width, height, fps, (seconds, seconds), (n_objects, n_objects))


def _with(spec: world.VideoSpec, j: int, **changes) -> world.VideoSpec:
    """`spec` with object j changed; a colour taken from another object is swapped with it."""
    objs = list(spec.objects)
    if "color" in changes:
        for k, o in enumerate(objs):
            if k != j and o.color == changes["color"]:
                objs[k] = dataclasses.replace(o, color=objs[j].color)
    objs[j] = dataclasses.replace(objs[j], **changes)
    return dataclasses.replace(spec, objects=tuple(objs))


def _centre_x(box: np.ndarray) -> float:
    return float(box[0] + box[2]) / 2


def _question(kind: str, name: str) -> str:
    """The question without the frame it names; `name` is "object" or "red object"."""
    return {
        "color": "What colour is the object?",
        "shape": f"What shape is the {name}?",
        "half": f"Is the {name} on the left or the right at {{t}}s?",
        "visible": f"Is the {name} visible at {{t}}s?",
        "first": f"At which frame does the {name} first appear?",
    }[kind.removesuffix("_m")]


def make_example(
    kind: str,
    answer: str,
    rng: np.random.Generator,
    *,
    sampling: Sampling,
    seconds: int = 4,
    width: int = 84,
    height: int = 56,
    fps: int = 4,
    frame: int = 0,
    tries: int = 2000,
) -> tuple[world.VideoSpec, str, str]:
    """A video spec and the question of one `kind` record whose answer is `answer`; `half`
    and `visible` ask about sampled frame `frame` (modulo the number of sampled frames)."""
    if answer not in CANDIDATES[kind]:
        raise ValueError(f"{kind}: answer {answer!r} not in {CANDIDATES[kind]}")
    many = kind.endswith("_m")
    base = kind.removesuffix("_m")
    for _ in range(tries):
        n = int(rng.integers(2, 4)) if many else 1
        spec = _spec(rng, n, seconds, width, height, fps)
        j = int(rng.integers(n))  # the object asked about
        idx, labels = sampling.frames(spec)
        if base in ("color", "shape") and not many:  # the one object on every frame
            spec = _with(spec, j, first_frame=0, last_frame=spec.num_frames - 1)
        if base == "color":
            spec = _with(spec, j, color=answer)
        elif base == "shape":
            spec = _with(spec, j, shape=answer)
        elif base == "first":
            k = NUMBERS.index(answer)  # appears first on sampled frame k (frames counted from 1)
            if k >= len(idx):
                raise ValueError(f"first: {len(idx)} sampled frames, answer {answer!r}")
            lo = 0 if k == 0 else int(idx[k - 1]) + 1
            o = spec.objects[j]
            length = o.last_frame - o.first_frame
            first = int(rng.integers(lo, int(idx[k]) + 1))
            last = min(first + length, spec.num_frames - 1)
            if last < int(idx[min(k + 1, len(idx) - 1)]):  # visible on >= 2 sampled frames
                continue
            spec = _with(spec, j, first_frame=first, last_frame=last)
        _, gt = world.render(spec)
        obj = spec.objects[j]
        name = "object" if not many else f"{obj.color} object"
        vis = gt.visible[obj.name][idx]
        if base in ("color", "shape"):
            if vis.any():  # on at least one frame the model sees
                return spec, _question(kind, name), answer
            continue
        if base == "first":
            if NUMBERS[int(np.argmax(vis))] == answer and vis.any():
                return spec, _question(kind, name), answer
            continue
        # The named frame is given (`generate` cycles it independently of the answer) and
        # the video kept only when its answer there is `answer`: the time in the question
        # says nothing about the answer.
        k = frame % len(idx)
        if base == "visible":
            ok = bool(vis[k]) == (answer == "yes")
        else:  # half: the centre at least width / 8 from the middle
            cx = _centre_x(gt.boxes[obj.name][idx[k]]) if vis[k] else np.nan
            ok = bool(vis[k]) and abs(cx - width / 2) >= width / 8
            ok = ok and (cx < width / 2) == (answer == "left")
        if ok:
            return spec, _question(kind, name).format(t=labels[k]), answer
    raise RuntimeError(f"no {kind} example with answer {answer!r} in {tries} tries")


def generate(
    out_dir: str | os.PathLike,
    kinds: tuple[str, ...],
    per_kind: int,
    seed: int,
    *,
    sampling: Sampling,
    **spec_kw,
) -> dict[str, str]:
    """Writes `per_kind` records of every kind and their videos under `out_dir`. Answers
    cycle through the candidates and, for `half` / `visible`, the named frame through the
    sampled frames one step slower, so a multiple of len(candidates) x frames is exactly
    balanced and the frame named is independent of the answer. Files:
    videos/px_<kind>_<i>.mp4 and json_data/<kind>.json (STGR-SFT free-form records), plus
    json_data/all.json (every kind, interleaved). Deterministic for a seed; returns
    {kind | "all": json path}.
    """
    out_dir = os.fspath(out_dir)
    for sub in ("videos", "json_data"):
        os.makedirs(os.path.join(out_dir, sub), exist_ok=True)
    paths, by_kind = {}, {}
    for kind in kinds:
        cands = CANDIDATES[kind]
        recs = []
        for i in range(per_kind):
            rng = np.random.default_rng([seed, list(CANDIDATES).index(kind), i])
            spec, question, answer = make_example(
                kind,
                cands[i % len(cands)],
                rng,
                sampling=sampling,
                frame=i // len(cands),
                **spec_kw,
            )
            vid = f"px_{kind}_{i:05d}"
            world.make_video(os.path.join(out_dir, "videos", vid + ".mp4"), spec)
            recs.append(
                {
                    "id": f"{vid}-px",
                    "task": FREE_TASK,
                    "source": SOURCE,
                    "question": question,
                    "answer": answer,
                    "reasoning_process": REASONING,
                    "video_path": f"videos/{vid}.mp4",
                }
            )
        by_kind[kind] = recs
        paths[kind] = os.path.join(out_dir, "json_data", f"{kind}.json")
    mixed = [r for group in zip(*by_kind.values(), strict=True) for r in group]
    paths["all"] = os.path.join(out_dir, "json_data", "all.json")
    for key, recs in [*by_kind.items(), ("all", mixed)]:
        with open(paths[key], "w") as f:
            json.dump(recs, f, indent=1)
    return paths


def kind_of(record_id: str) -> str:
    """The kind of a record written by `generate` (its id is px_<kind>_<i>-px)."""
    return record_id.split("-")[0].removeprefix("px_").rsplit("_", 1)[0]
