"""Qwen2.5-VL tokenizer: HF checkpoint loading, chat rendering, vision-pad expansion, loss masks.

`Tokenizer.from_dir` reads an HF checkpoint directory (tokenizer.json + tokenizer_config.json,
chat template from tokenizer_config.json, chat_template.jinja or chat_template.json) with the
`tokenizers` library and renders chats with jinja2 the way transformers does (reference
docs/qwen2_5_vl.md §6). `tokenize_chat` expands every `<|image_pad|>` / `<|video_pad|>` to
t*h*w/4 copies (§5.4) and builds a per-token loss mask:
  - "assistant" (default): the content of assistant turns and their closing `<|im_end|>`.
  - "original": upstream Open-o3 SFT (docs/open_o3_video.md §4, §7.6): every token except the pad
    token and `<|image_pad|>`; system and user text are trained on too.

`make_tiny_tokenizer` builds the tiny test tokenizer (docs/design.md, "The tiny tokenizer"): byte-level BPE with ordinary
ids < 480 and Qwen's 22 special tokens at 480 + k, in HF layout.
"""

from __future__ import annotations

import dataclasses
import json
import os
import re
from collections.abc import Iterable, Sequence
from typing import Any

import jinja2
import jinja2.sandbox
import numpy as np
import tokenizers
from tokenizers import decoders, models, normalizers, pre_tokenizers, processors, trainers

from o3video_jax import io

SPECIAL_TOKENS = (
    "<|endoftext|>",
    "<|im_start|>",
    "<|im_end|>",
    "<|object_ref_start|>",
    "<|object_ref_end|>",
    "<|box_start|>",
    "<|box_end|>",
    "<|quad_start|>",
    "<|quad_end|>",
    "<|vision_start|>",
    "<|vision_end|>",
    "<|vision_pad|>",
    "<|image_pad|>",
    "<|video_pad|>",
    "<tool_call>",
    "</tool_call>",
    "<|fim_prefix|>",
    "<|fim_middle|>",
    "<|fim_suffix|>",
    "<|fim_pad|>",
    "<|repo_name|>",
    "<|file_sep|>",
)
_NOT_SPECIAL = ("<tool_call>", "</tool_call>")  # Qwen marks these two special=False
TINY_BASE = 480
# assistant: every assistant token (the im_end included); original: every token but padding (the
# Open-o3 SFT script's labels); answer: the assistant's `<answer>...</answer>` contents and closing
# tag only (a perception curriculum: the loss falls on what must be read from the video, not on
# the template and reasoning text a model can predict from the prompt).
LOSS_MASKS = ("assistant", "original", "answer")

# Qwen2-VL / Qwen2.5-VL chat template (tokenizer_config.json of the released checkpoints).
QWEN_VL_CHAT_TEMPLATE = (
    "{% set image_count = namespace(value=0) %}{% set video_count = namespace(value=0) %}"
    "{% for message in messages %}{% if loop.first and message['role'] != 'system' %}"
    "<|im_start|>system\nYou are a helpful assistant.<|im_end|>\n{% endif %}"
    "<|im_start|>{{ message['role'] }}\n{% if message['content'] is string %}"
    "{{ message['content'] }}<|im_end|>\n{% else %}{% for content in message['content'] %}"
    "{% if content['type'] == 'image' or 'image' in content or 'image_url' in content %}"
    "{% set image_count.value = image_count.value + 1 %}{% if add_vision_id %}"
    "Picture {{ image_count.value }}: {% endif %}<|vision_start|><|image_pad|><|vision_end|>"
    "{% elif content['type'] == 'video' or 'video' in content %}"
    "{% set video_count.value = video_count.value + 1 %}{% if add_vision_id %}"
    "Video {{ video_count.value }}: {% endif %}<|vision_start|><|video_pad|><|vision_end|>"
    "{% elif 'text' in content %}{{ content['text'] }}{% endif %}{% endfor %}<|im_end|>\n"
    "{% endif %}{% endfor %}{% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}"
)
# Qwen2's pre-tokenizer split (tokenizer.json of the released checkpoints).
QWEN_SPLIT_PATTERN = (
    r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}| ?[^\s\p{L}\p{N}]+[\r\n]*"
    r"|\s*[\r\n]+|\s+(?!\S)|\s+"
)


@dataclasses.dataclass(frozen=True)
class TokenizedChat:
    """input_ids: int32[L] with vision pads expanded; loss_mask: float32[L], 1 where the token
    is a training target (aligned with input_ids, not yet shifted); text: the rendered chat."""

    input_ids: np.ndarray
    loss_mask: np.ndarray
    text: str


class Tokenizer:
    """A `tokenizers.Tokenizer` plus Qwen's special tokens and the chat template."""

    def __init__(self, backend: tokenizers.Tokenizer, chat_template: str | None = None):
        self.backend = backend
        self.chat_template = chat_template or QWEN_VL_CHAT_TEMPLATE
        missing = [t for t in SPECIAL_TOKENS[:14] if backend.token_to_id(t) is None]
        if missing:
            raise ValueError(f"tokenizer lacks Qwen special tokens {missing}")
        self.special_ids = {t: backend.token_to_id(t) for t in SPECIAL_TOKENS[:14]}
        env = jinja2.sandbox.ImmutableSandboxedEnvironment(
            trim_blocks=True, lstrip_blocks=True, extensions=["jinja2.ext.loopcontrols"]
        )
        env.globals["raise_exception"] = _raise
        self._template = env.from_string(self.chat_template)

    @classmethod
    def from_dir(cls, path: str | os.PathLike) -> Tokenizer:
        path = os.fspath(path)
        tok_file = os.path.join(path, "tokenizer.json")
        if not io.exists(tok_file):
            raise FileNotFoundError(f"no tokenizer.json in {path}")
        return cls(tokenizers.Tokenizer.from_str(io.read_text(tok_file)), _read_chat_template(path))

    def __reduce__(self):
        # The compiled jinja template does not pickle; grain workers rebuild it.
        return _from_strings, (self.backend.to_str(), self.chat_template)

    # ---- ids -------------------------------------------------------------------------------
    pad_id = property(lambda self: self.special_ids["<|endoftext|>"])
    eos_id = property(lambda self: self.special_ids["<|im_end|>"])
    im_start_id = property(lambda self: self.special_ids["<|im_start|>"])
    im_end_id = property(lambda self: self.special_ids["<|im_end|>"])
    vision_start_id = property(lambda self: self.special_ids["<|vision_start|>"])
    vision_end_id = property(lambda self: self.special_ids["<|vision_end|>"])
    image_pad_id = property(lambda self: self.special_ids["<|image_pad|>"])
    video_pad_id = property(lambda self: self.special_ids["<|video_pad|>"])

    @property
    def vocab_size(self) -> int:
        return self.backend.get_vocab_size(with_added_tokens=True)

    def encode(self, text: str) -> np.ndarray:
        """int32[L]; no BOS is added (Qwen has none)."""
        return np.asarray(self.backend.encode(text, add_special_tokens=False).ids, np.int32)

    def decode(self, ids: Iterable[int], skip_special_tokens: bool = False) -> str:
        return self.backend.decode([int(i) for i in ids], skip_special_tokens=skip_special_tokens)

    # ---- chat ------------------------------------------------------------------------------
    def render(
        self,
        messages: Sequence[dict[str, Any]],
        add_generation_prompt: bool = False,
        add_vision_id: bool = False,
    ) -> str:
        """The chat as text, exactly as `apply_chat_template(..., tokenize=False)`."""
        return self._template.render(
            messages=list(messages),
            add_generation_prompt=add_generation_prompt,
            add_vision_id=add_vision_id,
            bos_token="",
            eos_token="<|im_end|>",
        )

    def tokenize_chat(
        self,
        messages: Sequence[dict[str, Any]],
        image_grids: Sequence[Sequence[int]] = (),
        video_grids: Sequence[Sequence[int]] = (),
        *,
        add_generation_prompt: bool = False,
        loss_mask: str = "assistant",
        merge_size: int = 2,
    ) -> TokenizedChat:
        """Renders, encodes, expands the k-th image (video) pad to t*h*w/merge² copies of
        the k-th grid in `image_grids` (`video_grids`), and builds the loss mask."""
        if loss_mask not in LOSS_MASKS:
            raise ValueError(f"loss_mask must be one of {LOSS_MASKS}, got {loss_mask!r}")
        text = self.render(messages, add_generation_prompt=add_generation_prompt)
        enc = self.backend.encode(text, add_special_tokens=False)
        ids = np.asarray(enc.ids, np.int32)
        if loss_mask in ("assistant", "answer"):
            spans = _assistant_spans(text)
            if loss_mask == "answer":
                spans = _answer_spans(text, spans)
            starts = np.asarray([o[0] for o in enc.offsets], np.int64)
            ends = np.asarray([o[1] for o in enc.offsets], np.int64)
            mask = np.zeros(len(ids), np.float32)
            for a, b in spans:
                mask[(starts >= a) & (starts < b)] = 1.0
                if loss_mask == "answer":
                    # A token that merges the tag's ">" with the answer's first characters
                    # (the tiny BPE's ">s" of "<answer>square") carries the answer: trained.
                    mask[(starts < a) & (ends > a)] = 1.0
        else:
            mask = ((ids != self.pad_id) & (ids != self.image_pad_id)).astype(np.float32)
        ids, mask = self._expand(ids, mask, self.image_pad_id, image_grids, "image", merge_size)
        ids, mask = self._expand(ids, mask, self.video_pad_id, video_grids, "video", merge_size)
        return TokenizedChat(ids, mask, text)

    @staticmethod
    def _expand(ids, mask, pad_id, grids, kind, merge_size):
        where = np.nonzero(ids == pad_id)[0]
        if len(where) != len(grids):
            raise ValueError(
                f"the chat has {len(where)} {kind} placeholders but {len(grids)} {kind} grids"
            )
        if not len(where):
            return ids, mask
        counts = np.ones(len(ids), np.int64)
        for pos, (t, h, w) in zip(where, grids, strict=True):
            if (t * h * w) % merge_size**2:
                raise ValueError(f"{kind} grid {(t, h, w)} is not divisible by {merge_size}^2")
            counts[pos] = t * h * w // merge_size**2
        return np.repeat(ids, counts), np.repeat(mask, counts)


def _from_strings(backend_json: str, chat_template: str) -> Tokenizer:
    return Tokenizer(tokenizers.Tokenizer.from_str(backend_json), chat_template)


def _raise(message: str):
    raise jinja2.TemplateError(message)


def _assistant_spans(text: str) -> list[tuple[int, int]]:
    """Character spans [content start, end of `<|im_end|>`) of the closed assistant turns."""
    spans = []
    for m in re.finditer(re.escape("<|im_start|>assistant\n"), text):
        end = text.find("<|im_end|>", m.end())
        if end >= 0:
            spans.append((m.end(), end + len("<|im_end|>")))
    return spans


def _answer_spans(text: str, assistant: list[tuple[int, int]]) -> list[tuple[int, int]]:
    """Character spans [answer content start, end of `</answer>`) inside the assistant spans."""
    spans = []
    for a, b in assistant:
        for m in re.finditer(r"<answer>(.*?)</answer>", text[a:b], re.S):
            spans.append((a + m.start(1), a + m.end()))
    return spans


def _read_chat_template(path: str) -> str | None:
    jinja_file = os.path.join(path, "chat_template.jinja")
    if io.exists(jinja_file):
        return io.read_text(jinja_file)
    for name in ("tokenizer_config.json", "chat_template.json"):
        file = os.path.join(path, name)
        if io.exists(file):
            template = json.loads(io.read_text(file)).get("chat_template")
            if isinstance(template, str):
                return template
    return None


# ---- tiny tokenizer ----------------------------------------------------------------------


def make_tiny_tokenizer(
    out_dir: str | os.PathLike, corpus_texts: Iterable[str], base: int = TINY_BASE
) -> Tokenizer:
    """Trains a byte-level BPE on `corpus_texts` with exactly `base` ordinary tokens (ids <
    base; unused filler entries pad a small corpus) and puts the 22 special tokens at base + k.
    Writes tokenizer.json and tokenizer_config.json (with the chat template) to `out_dir`."""
    specials = re.compile("|".join(re.escape(t) for t in SPECIAL_TOKENS))
    tok = tokenizers.Tokenizer(models.BPE())
    tok.normalizer = normalizers.NFC()
    tok.pre_tokenizer = pre_tokenizers.Sequence(
        [
            pre_tokenizers.Split(tokenizers.Regex(QWEN_SPLIT_PATTERN), "isolated"),
            pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=False),
        ]
    )
    tok.decoder = decoders.ByteLevel()
    tok.post_processor = processors.ByteLevel(trim_offsets=False)
    trainer = trainers.BpeTrainer(
        vocab_size=base,
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        special_tokens=[],
        show_progress=False,
    )
    tok.train_from_iterator((specials.sub(" ", t) for t in corpus_texts), trainer)
    spec = json.loads(tok.to_str())
    vocab = spec["model"]["vocab"]
    if len(vocab) > base:
        raise ValueError(f"trained vocab has {len(vocab)} > {base} tokens")
    for n in range(base - len(vocab)):
        vocab[f"<|tiny_unused_{n}|>"] = len(vocab)
    spec["added_tokens"] = [
        {
            "id": base + k,
            "content": t,
            "single_word": False,
            "lstrip": False,
            "rstrip": False,
            "normalized": False,
            "special": t not in _NOT_SPECIAL,
        }
        for k, t in enumerate(SPECIAL_TOKENS)
    ]
    backend = tokenizers.Tokenizer.from_str(json.dumps(spec))
    got = [backend.token_to_id(t) for t in SPECIAL_TOKENS]
    if got != list(range(base, base + len(SPECIAL_TOKENS))):
        raise RuntimeError(f"special tokens landed at {got}, expected {base}..")

    out_dir = io.require_local(out_dir, "make_tiny_tokenizer")
    os.makedirs(out_dir, exist_ok=True)
    backend.save(os.path.join(out_dir, "tokenizer.json"))
    config = {
        "tokenizer_class": "Qwen2Tokenizer",
        "bos_token": None,
        "eos_token": "<|im_end|>",
        "pad_token": "<|endoftext|>",
        "unk_token": None,
        "errors": "replace",
        "model_max_length": 32768,
        "split_special_tokens": False,
        "clean_up_tokenization_spaces": False,
        "add_prefix_space": False,
        "added_tokens_decoder": {
            str(t["id"]): {k: v for k, v in t.items() if k != "id"} for t in spec["added_tokens"]
        },
        "chat_template": QWEN_VL_CHAT_TEMPLATE,
    }
    with open(os.path.join(out_dir, "tokenizer_config.json"), "w", encoding="utf-8") as f:
        json.dump(config, f, indent=2, ensure_ascii=False)
    return Tokenizer(backend, QWEN_VL_CHAT_TEMPLATE)
