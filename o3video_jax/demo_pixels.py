"""The demo's pixel-only stages: their data, and held-out accuracy per record kind.

The records (`data.pixel_tasks`) are STGR-SFT free-form records whose one-word answer only the
frames determine, balanced so that a text-only model is at chance. A stage trains them with
the SFT loop on the answer tokens alone (`data.loss_mask = "answer"`). `evaluate` scores every
candidate answer of every held-out record teacher-forced (the summed log-probability of the
answer tokens and `</answer>`) and counts a record correct when the true answer scores
highest: a classifier over the candidates, whose chance level is exactly 1 / len(candidates)
for any model that ignores the frames (the held-out sets are exactly balanced). Run on a copy
of the held-out media with every frame blanked (`synthetic.blank_media`), it measures how much
of that accuracy comes from the pixels. See docs/demo.md.
"""

from __future__ import annotations

import dataclasses
import json
import os
from typing import Any

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np

from o3video_jax import io
from o3video_jax.data import pixel_tasks, synthetic
from o3video_jax.data.tokenizer import Tokenizer
from o3video_jax.drivers import experiment
from o3video_jax.models.qwen2_5_vl import Qwen25VL, Qwen25VLConfig
from o3video_jax.train import losses

_DONE = "DONE"


@dataclasses.dataclass(frozen=True)
class PixelData:
    """Paths of the pixel-only records: training files by name ("one": the first stage's kinds
    interleaved; "many": every kind interleaved), held-out files by kind, the media roots."""

    train: dict[str, str]
    heldout: dict[str, str]
    media_root: str
    heldout_media_root: str
    blank_media_root: str


def prepare(
    root: str,
    *,
    train_per_kind: int,
    heldout_per_kind: int,
    seed: int,
    sampling: pixel_tasks.Sampling,
    kinds: tuple[str, ...] = pixel_tasks.KINDS_ONE + pixel_tasks.KINDS_MANY,
    first_kinds: tuple[str, ...] = pixel_tasks.KINDS_ONE,
    **spec_kw,
) -> PixelData:
    """Generates (once) the training and held-out pixel records of `kinds` and a blanked
    held-out copy."""
    root = os.path.abspath(root)
    kinds = tuple(kinds)
    tr, held = os.path.join(root, "train"), os.path.join(root, "heldout")
    spec = dict(
        train_per_kind=train_per_kind,
        heldout_per_kind=heldout_per_kind,
        seed=seed,
        kinds=list(kinds),
        first_kinds=list(first_kinds),
        sampling=dataclasses.asdict(sampling),
        **spec_kw,
    )
    marker = os.path.join(root, _DONE)
    if os.path.exists(marker):
        if json.loads(io.read_text(marker)) != spec:
            raise ValueError(f"{root} holds pixel records made with other settings; use another")
    else:
        a = pixel_tasks.generate(tr, kinds, train_per_kind, seed, sampling=sampling, **spec_kw)
        pixel_tasks.generate(held, kinds, heldout_per_kind, seed + 1, sampling=sampling, **spec_kw)
        recs = {k: json.loads(io.read_text(a[k])) for k in kinds}
        one = tuple(k for k in kinds if k in first_kinds)
        for name, group in (("one", one), ("many", kinds)):
            mixed = [r for rows in zip(*(recs[k] for k in group), strict=True) for r in rows]
            io.write_text(os.path.join(tr, "json_data", f"{name}.json"), json.dumps(mixed))
        synthetic.blank_media(held, os.path.join(root, "heldout_blank"))
        io.write_text(marker, json.dumps(spec))
    return PixelData(
        train={n: os.path.join(tr, "json_data", f"{n}.json") for n in ("one", "many")},
        heldout={k: os.path.join(held, "json_data", f"{k}.json") for k in kinds},
        media_root=tr,
        heldout_media_root=held,
        blank_media_root=os.path.join(root, "heldout_blank"),
    )


def _candidate_records(records: list[dict]) -> list[dict]:
    """Every record once per candidate answer, id "<id>#<candidate>"."""
    out = []
    for r in records:
        for c in pixel_tasks.CANDIDATES[pixel_tasks.kind_of(r["id"])]:
            out.append({**r, "id": f"{r['id']}#{c}", "answer": c})
    return out


def make_scorer(model: Qwen25VL, chunk: int):
    """jitted (params, inputs, targets, mask) -> float32[B]: Σ mask · log p(target)."""

    @jax.jit
    def score(params, inputs, targets, mask):
        variables = {"params": params}
        hidden = model.apply(variables, inputs, method="hidden_states")
        unembed = lambda h: model.apply(variables, h, method="unembed")
        logp, _ = losses.token_logprobs(hidden, targets, unembed, chunk=chunk)
        return (logp * mask).sum(-1)

    return score


def evaluate(
    config: ml_collections.ConfigDict,
    model_config: Qwen25VLConfig,
    params: Any,
    tokenizer: Tokenizer,
    heldout: dict[str, str],
    media_root: str,
    scratch_dir: str,
    *,
    batch_size: int = 32,
    scorer=None,
) -> dict[str, float]:
    """Held-out accuracy per kind ({kind: accuracy}, plus "mean" over kinds and, per kind,
    "<kind>/chance"); `config` is a pixel stage's config (its loss mask "answer")."""
    recs = [r for k in heldout for r in json.loads(io.read_text(heldout[k]))]
    path = os.path.join(scratch_dir, "pixel_candidates.json")
    io.makedirs(scratch_dir)
    io.write_text(path, json.dumps(_candidate_records(recs)))
    c = ml_collections.ConfigDict(config.to_dict())
    c.data.loss_mask = "answer"
    ds = experiment.dataset(
        c, tokenizer, model_config, "sft", path, media_root,
        batch_size=batch_size, shuffle=False, num_epochs=1,
    )  # fmt: skip
    score = scorer or make_scorer(Qwen25VL(model_config), int(config.sft.ce_chunk))
    scores: dict[str, float] = {}
    for batch in ds:
        mask = np.asarray(batch.loss_mask, np.float32)
        s = np.asarray(score(params, batch.inputs, jnp.asarray(batch.targets), jnp.asarray(mask)))
        for ids, v, m in zip(batch.record_ids, s, mask.sum(-1), strict=True):
            if ids and m > 0:
                scores[ids[0]] = float(v)
    out: dict[str, float] = {}
    for kind in heldout:
        right = []
        for r in json.loads(io.read_text(heldout[kind])):
            cands = pixel_tasks.CANDIDATES[kind]
            got = [scores.get(f"{r['id']}#{x}", -np.inf) for x in cands]
            if np.all(np.isneginf(got)):
                raise ValueError(f"pixel evaluation: no scored candidate for {r['id']}")
            right.append(cands[int(np.argmax(got))] == r["answer"])
        out[kind] = float(np.mean(right))
        out[f"{kind}/chance"] = pixel_tasks.chance(kind)
    out["mean"] = float(np.mean([out[k] for k in heldout]))
    out["mean/chance"] = float(np.mean([pixel_tasks.chance(k) for k in heldout]))
    return out
