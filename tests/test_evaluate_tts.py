"""Test-time scaling: confidence voting with the relevance calls batched (§5.4)."""

import jax.numpy as jnp
import ml_collections
import numpy as np
import pytest
from evaluate_fixtures import eval_config, shared_checkpoint, write_videomme

from o3video_jax.checkpoints import hf
from o3video_jax.data.tokenizer import Tokenizer
from o3video_jax.evaluate import media, read_log, runner
from o3video_jax.evaluate.generate import Generator
from o3video_jax.evaluate.spec import Prepared


@pytest.fixture(scope="module")
def ckpt(tmp_path_factory):
    return shared_checkpoint(tmp_path_factory)


OPTIONS = ["A. One.", "B. Two.", "C. Three.", "D. Four."]


def _claim(t, box="[0,0,20,20]"):
    return f"<obj>cup</obj><box>{box}</box>at<t>{t}</t>s"


# item 0: B relevance 2 (1.0); A relevance 1 (0.6), relevance 0 (0.2), no claim (0.2)
#   -> A 1.0 vs B 1.0: a tie goes to the first letter, A.
# item 1: no <think> (C, weight 0); D relevance 2 (1.0); claim past the frames (C, 0.2);
#   letter E is not an option (NA) -> D.
COMPLETIONS = [
    [
        f"<think>see {_claim(1)}</think><answer>B</answer>",
        f"<think>{_claim(2, '[5,5,30,30]')}</think><answer>A</answer>",
        f"<think>{_claim(0, '[0,0,10,10]')}</think><answer>A</answer>",
        "<think>no evidence</think><answer>A</answer>",
    ],
    [
        "<answer>C</answer>",
        f"<think>{_claim(1)}</think><answer>D</answer>",
        f"<think>{_claim(99)}</think><answer>C</answer>",
        f"<think>{_claim(1)}</think><answer>E</answer>",
    ],
]


def _preps():
    frames = np.random.default_rng(0).integers(0, 255, (3, 56, 56, 3), dtype=np.uint8)
    m = media.Media(frames, (0.0, 1.0, 2.0), 1.0, (), (56, 56))
    out = []
    for k in range(2):
        item = {"key": str(k), "id": str(k), "question": "How many?", "options": OPTIONS,
                "answer": "A", "duration": "short"}  # fmt: skip
        out.append(Prepared(item, m, [], [f"prompt {k}"], []))
    return out


def _ev():
    return ml_collections.ConfigDict({"vote": "confidence"})


def test_confidence_vote_with_a_stub_scorer_is_one_batched_call():
    calls = []

    def scorer(entries):
        calls.append(entries)
        return ["2", "1", "0", "2"]

    outputs = [[c] for c in COMPLETIONS]  # one request per item, its 4 samples
    recs = runner._records("videomme", _preps(), outputs, _ev(), True, scorer, None)
    assert len(calls) == 1 and len(calls[0]) == 4  # all scored paths of both items, once
    for crops, question in calls[0]:
        assert len(crops) == 1 and crops[0].shape == (56, 56, 3)
        assert question == "How many?\n" + "\n".join(OPTIONS)
    r0, r1 = recs
    assert r0["path_weights"] == [1.0, 0.6, 0.2, 0.2]
    assert r0["letter_weights"] == {"A": 1.0, "B": 1.0, "C": 0.0, "D": 0.0}
    assert r0["pred"] == "A" and r0["correct"]
    assert r1["path_letters"] == ["C", "D", "C", None]
    assert r1["path_weights"] == [0.0, 1.0, 0.2, 0.0]
    assert r1["pred"] == "D" and r0["relevance_replies"] == ["2", "1", "0"]


def test_majority_vote_needs_no_scorer():
    outputs = [[c] for c in COMPLETIONS]
    ev = ml_collections.ConfigDict({"vote": "majority"})
    r0, r1 = runner._records("videomme", _preps(), outputs, ev, True, None, None)
    assert r0["pred"] == "A" and r0["letter_weights"]["A"] == 3.0
    assert r1["path_weights"] == [0.0, 1.0, 1.0, 0.0] and r1["pred"] == "C"


def test_confidence_vote_with_the_model_batches_the_relevance_calls(ckpt):
    _, params = hf.load(ckpt, jnp.float32, progress=False)
    from o3video_jax.drivers import experiment

    config = eval_config("videomme", ckpt, "", "")
    mc = experiment.model_config(config)
    tok = Tokenizer.from_dir(ckpt)
    # the budgets of the runlocal config: the compiles are shared with the other tests
    sampling = runner._sampling(config.eval, tok, 1, config.eval.max_new_tokens, greedy=True)
    gen = Generator(mc, params, tok, sampling, batch_size=8, buckets=config.eval.prompt_buckets,
                    max_patches=config.eval.max_patches)  # fmt: skip
    recs = runner._records(
        "videomme", _preps(), [[c] for c in COMPLETIONS], _ev(), True,
        runner.model_scorer(tok, gen), None,
    )  # fmt: skip
    assert gen.calls == 1  # 4 relevance requests (3 + 1 crops... one per path) in one call
    replies = recs[0]["relevance_replies"] + recs[1]["relevance_replies"]
    assert len(replies) == 4 and all(isinstance(r, str) for r in replies)
    weight = {"0": 0.2, "1": 0.6, "2": 1.0}
    scored = [w for w in recs[0]["path_weights"][:3]] + [recs[1]["path_weights"][1]]
    assert scored == [weight.get(r.strip(), 0.2) for r in replies]


def test_tts_end_to_end_n4(ckpt, tmp_path):
    data, media_root = write_videomme(str(tmp_path / "b"), n=2)
    cfg = eval_config("videomme", ckpt, data, media_root, samples=4, vote="confidence",
                      temperature=1.0, think=True, render_items=0)  # fmt: skip
    summary = runner.evaluate(cfg, str(tmp_path / "wd"))
    recs = read_log(str(tmp_path / "wd" / "items.jsonl"))
    assert [len(r["outputs"]) for r in recs] == [4, 4]
    assert len({o for r in recs for o in r["outputs"]}) > 2  # sampled, not 4 greedy copies
    for r in recs:
        assert r["pred"] in "ABCD" and len(r["path_weights"]) == 4
    assert summary["n"] == 2
