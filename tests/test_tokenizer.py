"""Tiny tokenizer layout, chat rendering, vision-pad expansion and loss masks."""

import pickle

import numpy as np
import pytest

from o3video_jax.data import tokenizer as T
from o3video_jax.models.qwen2_5_vl.config import Qwen25VLConfig

CORPUS = [
    "A conversation between User and Assistant. <think> reasoning </think><answer> a </answer>",
    "Frame 1 at 0.5s: What is the man holding? <obj>cup</obj><box>[1,2,3,4]</box>at<t>2.5</t>s",
]
MESSAGES = [
    {"role": "system", "content": "Be brief."},
    {
        "role": "user",
        "content": [
            {"type": "text", "text": "Frame 1 at 0.0s: "},
            {"type": "image"},
            {"type": "text", "text": "\n"},
            {"type": "video"},
            {"type": "image"},
            {"type": "text", "text": "Why?"},
        ],
    },
    {"role": "assistant", "content": "<think>ok</think>\n<answer>A</answer>"},
]
EXPECTED_TEXT = (
    "<|im_start|>system\nBe brief.<|im_end|>\n"
    "<|im_start|>user\nFrame 1 at 0.0s: <|vision_start|><|image_pad|><|vision_end|>\n"
    "<|vision_start|><|video_pad|><|vision_end|><|vision_start|><|image_pad|><|vision_end|>"
    "Why?<|im_end|>\n"
    "<|im_start|>assistant\n<think>ok</think>\n<answer>A</answer><|im_end|>\n"
)


@pytest.fixture(scope="module")
def tok_dir(tmp_path_factory):
    d = tmp_path_factory.mktemp("tok")
    T.make_tiny_tokenizer(d, CORPUS)
    return d


def test_tiny_layout_matches_tiny_config(tok_dir):
    tok = T.Tokenizer.from_dir(tok_dir)
    cfg = Qwen25VLConfig.preset("tiny")
    assert [tok.backend.token_to_id(t) for t in T.SPECIAL_TOKENS] == list(range(480, 502))
    assert tok.vocab_size == 502 <= cfg.vocab_size
    assert (tok.image_pad_id, tok.video_pad_id) == (cfg.image_token_id, cfg.video_token_id)
    assert (tok.vision_start_id, tok.vision_end_id) == (489, 490)
    assert (tok.eos_id, tok.pad_id) == (cfg.eos_token_id, cfg.pad_token_id)
    ids = tok.encode("Hello wörld! <box>[12,3]</box> 42")
    assert ids.max() < 480 and tok.decode(ids) == "Hello wörld! <box>[12,3]</box> 42"
    assert tok.encode("<|im_start|>x<|im_end|>").tolist()[::2] == [481, 482]


def test_render_follows_qwen_template(tok_dir):
    tok = T.Tokenizer.from_dir(tok_dir)
    assert tok.render(MESSAGES) == EXPECTED_TEXT
    # No system message: Qwen's default one is inserted; generation prompt at the end.
    got = tok.render(MESSAGES[1:2], add_generation_prompt=True)
    assert got.startswith("<|im_start|>system\nYou are a helpful assistant.<|im_end|>\n")
    assert got.endswith("Why?<|im_end|>\n<|im_start|>assistant\n")
    assert "Picture 2: " in tok.render(MESSAGES, add_vision_id=True)


def test_transformers_parity(tok_dir):
    transformers = pytest.importorskip("transformers")
    hf = transformers.AutoTokenizer.from_pretrained(str(tok_dir))
    tok = T.Tokenizer.from_dir(tok_dir)
    text = hf.apply_chat_template(MESSAGES, tokenize=False)
    assert text == tok.render(MESSAGES)
    assert hf(text, add_special_tokens=False)["input_ids"] == tok.encode(text).tolist()
    assert hf.convert_tokens_to_ids("<|video_pad|>") == 493


def test_pad_expansion_counts(tok_dir):
    tok = T.Tokenizer.from_dir(tok_dir)
    out = tok.tokenize_chat(MESSAGES, image_grids=[(1, 4, 4), (1, 2, 4)], video_grids=[(2, 4, 6)])
    ids = out.input_ids
    assert (ids == 492).sum() == 16 // 4 + 8 // 4 and (ids == 493).sum() == 48 // 4
    # Runs in order: first image (4), video (12), second image (2).
    runs = [(int(ids[i]), n) for i, n in _runs(ids) if ids[i] in (492, 493)]
    assert runs == [(492, 4), (493, 12), (492, 2)]
    base = tok.encode(EXPECTED_TEXT)
    assert len(ids) == len(base) - 3 + 4 + 12 + 2
    with pytest.raises(ValueError, match="2 image placeholders but 1"):
        tok.tokenize_chat(MESSAGES, image_grids=[(1, 4, 4)], video_grids=[(2, 4, 6)])
    with pytest.raises(ValueError, match="not divisible"):
        tok.tokenize_chat(MESSAGES, [(1, 3, 3), (1, 2, 2)], [(2, 4, 6)])


def _runs(ids):
    i = 0
    while i < len(ids):
        j = i
        while j < len(ids) and ids[j] == ids[i]:
            j += 1
        yield i, j - i
        i = j


def test_loss_masks(tok_dir):
    tok = T.Tokenizer.from_dir(tok_dir)
    grids = dict(image_grids=[(1, 4, 4), (1, 2, 4)], video_grids=[(2, 4, 6)])
    a = tok.tokenize_chat(MESSAGES, **grids)
    kept = a.input_ids[a.loss_mask > 0]
    assert tok.decode(kept) == "<think>ok</think>\n<answer>A</answer><|im_end|>"
    assert np.all(np.flatnonzero(a.loss_mask) == np.arange(len(kept)) + np.argmax(a.loss_mask))
    o = tok.tokenize_chat(MESSAGES, loss_mask="original", **grids)
    np.testing.assert_array_equal(o.input_ids, a.input_ids)
    # Upstream: everything but <|endoftext|> and <|image_pad|> (video pads and prompt are trained).
    np.testing.assert_array_equal(o.loss_mask == 0, o.input_ids == 492)
    assert o.loss_mask[o.input_ids == 493].all() and o.loss_mask[0] == 1
    with_pad = [MESSAGES[0], {"role": "user", "content": "x<|endoftext|>y"}, MESSAGES[2]]
    p = tok.tokenize_chat(with_pad, loss_mask="original")
    assert (p.input_ids == 480).sum() == 1
    np.testing.assert_array_equal(p.loss_mask == 0, p.input_ids == 480)
    gen = tok.tokenize_chat(MESSAGES[:2], add_generation_prompt=True, **grids)
    assert gen.loss_mask.sum() == 0 and gen.text.endswith("<|im_start|>assistant\n")
    # answer: the assistant's answer and its closing tag only (the <answer> in the user's text
    # and the assistant's think and template stay untrained).
    two = [MESSAGES[0], {"role": "user", "content": "<answer>Q</answer>"}, MESSAGES[2]]
    ans = tok.tokenize_chat(two, loss_mask="answer")
    assert tok.decode(ans.input_ids[ans.loss_mask > 0]) == "A</answer>"
    long_answer = [
        *two[:2],
        {"role": "assistant", "content": "<think>t</think><answer>B\nC</answer>"},
    ]
    ans = tok.tokenize_chat(long_answer, loss_mask="answer")
    assert tok.decode(ans.input_ids[ans.loss_mask > 0]) == "B\nC</answer>"
    with pytest.raises(ValueError, match="loss_mask"):
        tok.tokenize_chat(MESSAGES, loss_mask="all", **grids)


def test_pickle_round_trip(tok_dir):
    tok = T.Tokenizer.from_dir(tok_dir)
    again = pickle.loads(pickle.dumps(tok))
    assert again.render(MESSAGES) == EXPECTED_TEXT
    assert again.encode(EXPECTED_TEXT).tolist() == tok.encode(EXPECTED_TEXT).tolist()
