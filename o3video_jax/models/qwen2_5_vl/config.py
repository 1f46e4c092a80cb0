"""`Qwen25VLConfig`: the frozen model configuration, its presets and the HF `config.json` bridge.

The tree mirrors Hugging Face's `Qwen2_5_VLConfig`: a root with the special token ids and the
embedding tie flag, a nested `TextConfig` (the Qwen2 decoder) and a nested `VisionConfig` (the
windowed ViT and its merger). The root also carries runtime knobs that HF does not have:
`dtype` (compute), `param_dtype`, `remat`, `attention` and `scan_layers`.

For convenience the root re-exposes the decoder fields that layer code reads all the time
(`config.hidden_size`, `config.head_dim`, ...); they are read-only views of `config.text`.

`from_hf_dict` reads every form a released or saved config.json takes (flat Hub form, nested
5.x form, `rope_scaling` or `rope_parameters`, both vision key spellings); missing keys take
the HF *class* defaults, exactly as transformers would, so a config always means the same
model in both libraries. Presets hold the published checkpoint values (docs/qwen2_5_vl.md §1.4).
"""

from __future__ import annotations

import dataclasses
import json
import os
import warnings
from collections.abc import Mapping
from typing import Any

from o3video_jax import io

DTYPES = ("float32", "bfloat16")
REMAT_POLICIES = ("none", "full", "save_dots")
ATTENTION_IMPLS = ("xla", "pallas", "cudnn")
MODEL_TYPE = "qwen2_5_vl"
ARCHITECTURE = "Qwen2_5_VLForConditionalGeneration"

# Qwen's special tokens sit at `base + k`; see docs/design.md, "The tiny tokenizer".
_ENDOFTEXT, _IM_END, _VISION_START, _VISION_END, _IMAGE_PAD, _VIDEO_PAD = 0, 2, 9, 10, 12, 13


@dataclasses.dataclass(frozen=True)
class TextConfig:
    """The Qwen2 decoder (HF `Qwen2_5_VLTextConfig`). Defaults are the HF class defaults."""

    vocab_size: int = 152064
    hidden_size: int = 8192
    intermediate_size: int = 29568
    num_hidden_layers: int = 80
    num_attention_heads: int = 64
    num_key_value_heads: int = 8
    rms_norm_eps: float = 1e-5
    rope_theta: float = 1e6
    mrope_section: tuple[int, ...] = (16, 24, 24)
    max_position_embeddings: int = 32768
    # Runtime knob, not an HF field: > 0 runs self-attention longer than this in [chunk, chunk]
    # tiles with a running softmax (flash_attention.py `blocked_attention`), so [T, S] scores
    # never exist (long prefills, long training rows); the evaluation sets it (512).
    attention_chunk: int = 0

    def __post_init__(self):
        object.__setattr__(self, "mrope_section", tuple(int(s) for s in self.mrope_section))
        if self.attention_chunk < 0:
            raise ValueError(f"text attention_chunk must be >= 0, got {self.attention_chunk}")
        for name in (
            "vocab_size",
            "hidden_size",
            "intermediate_size",
            "num_hidden_layers",
            "num_attention_heads",
            "num_key_value_heads",
        ):
            if getattr(self, name) <= 0:
                raise ValueError(f"text {name} must be positive, got {getattr(self, name)}")
        if self.hidden_size % self.num_attention_heads:
            raise ValueError(
                f"text hidden_size {self.hidden_size} is not divisible by "
                f"num_attention_heads {self.num_attention_heads}"
            )
        if self.num_attention_heads % self.num_key_value_heads:
            raise ValueError(
                f"text num_attention_heads {self.num_attention_heads} is not divisible by "
                f"num_key_value_heads {self.num_key_value_heads}"
            )
        if len(self.mrope_section) != 3 or sum(self.mrope_section) * 2 != self.head_dim:
            raise ValueError(
                f"mrope_section {self.mrope_section} must have 3 entries summing to "
                f"head_dim / 2 = {self.head_dim // 2}"
            )
        if not self.rms_norm_eps > 0:
            raise ValueError(f"text rms_norm_eps must be positive, got {self.rms_norm_eps}")

    @property
    def head_dim(self) -> int:
        return self.hidden_size // self.num_attention_heads

    @property
    def num_kv_groups(self) -> int:
        """Query heads per kv head (GQA, repeat-interleave mapping)."""
        return self.num_attention_heads // self.num_key_value_heads


@dataclasses.dataclass(frozen=True)
class VisionConfig:
    """The windowed ViT + patch merger (HF `Qwen2_5_VLVisionConfig`). HF class defaults."""

    depth: int = 32
    hidden_size: int = 3584
    num_heads: int = 16
    intermediate_size: int = 3420
    patch_size: int = 14
    temporal_patch_size: int = 2
    spatial_merge_size: int = 2
    window_size: int = 112
    fullatt_block_indexes: tuple[int, ...] = (7, 15, 23, 31)
    out_hidden_size: int = 3584
    tokens_per_second: int | float = 4
    in_channels: int = 3
    rope_theta: float = 10000.0
    # Runtime knobs of the blocked XLA attention (local_attention.py; not HF keys, so
    # from_hf_dict leaves the defaults): the query chunk C (0 = always dense), and a static
    # bound on the patches of one frame, i.e. one full-attention segment (0 = unknown: those
    # blocks stay dense). Windows need no bound: window_tokens^2 * merge_unit is one. A safe
    # frame bound is max_pixels // 196 of the preprocessing (smart_resize keeps h * w <=
    # max_pixels, `frame_patches_for`); a frame above the bound gives NaN on the banded path
    # (at the patches it cannot cover), never a silently wrong value. Frames whose bound makes
    # the band wide (or with no bound) take the tiled path (vision.py `frame_attention_path`).
    attention_chunk: int = 128
    max_frame_patches: int = 0

    def __post_init__(self):
        object.__setattr__(
            self, "fullatt_block_indexes", tuple(int(i) for i in self.fullatt_block_indexes)
        )
        for name in ("attention_chunk", "max_frame_patches"):
            if getattr(self, name) < 0:
                raise ValueError(f"vision {name} must be >= 0, got {getattr(self, name)}")
        for name in (
            "depth",
            "hidden_size",
            "num_heads",
            "intermediate_size",
            "patch_size",
            "temporal_patch_size",
            "spatial_merge_size",
            "window_size",
            "out_hidden_size",
            "in_channels",
        ):
            if getattr(self, name) <= 0:
                raise ValueError(f"vision {name} must be positive, got {getattr(self, name)}")
        if self.hidden_size % self.num_heads:
            raise ValueError(
                f"vision hidden_size {self.hidden_size} is not divisible by "
                f"num_heads {self.num_heads}"
            )
        if self.head_dim % 4:
            # The 2D rotary splits half of the head dim evenly between the h and w axes.
            raise ValueError(f"vision head_dim {self.head_dim} must be a multiple of 4")
        bad = [i for i in self.fullatt_block_indexes if not 0 <= i < self.depth]
        if bad:
            raise ValueError(f"fullatt_block_indexes {bad} are outside [0, depth={self.depth})")
        unit = self.patch_size * self.spatial_merge_size
        if self.window_size % unit:
            raise ValueError(
                f"vision window_size {self.window_size} is not a multiple of "
                f"patch_size * spatial_merge_size = {unit}"
            )

    @property
    def head_dim(self) -> int:
        return self.hidden_size // self.num_heads

    @property
    def merge_unit(self) -> int:
        """Patches per merged token (4)."""
        return self.spatial_merge_size**2

    @property
    def window_tokens(self) -> int:
        """Window side in merged tokens (112 / 14 / 2 = 4)."""
        return self.window_size // self.patch_size // self.spatial_merge_size

    @property
    def max_window_patches(self) -> int:
        """Most patches in one attention window (64 at window_size 112)."""
        return self.window_tokens**2 * self.merge_unit

    def frame_patches_for(self, max_pixels: int) -> int:
        """The most patches one frame or image can have when preprocessing keeps h * w <=
        max_pixels (smart_resize does): a safe `max_frame_patches` for those budgets."""
        unit = self.merge_unit
        return max_pixels // self.patch_size**2 // unit * unit

    @property
    def patch_dim(self) -> int:
        """Length of one pixel_values row: C * T * Ph * Pw (1176)."""
        return self.in_channels * self.temporal_patch_size * self.patch_size**2


VISION_TOKEN_FIELDS = (
    "image_token_id",
    "video_token_id",
    "vision_start_token_id",
    "vision_end_token_id",
)
SPECIAL_TOKEN_FIELDS = ("bos_token_id", "eos_token_id", "pad_token_id")


@dataclasses.dataclass(frozen=True)
class Qwen25VLConfig:
    """Full Qwen2.5-VL configuration. Derive variants with `dataclasses.replace`."""

    text: TextConfig
    vision: VisionConfig
    tie_word_embeddings: bool = False
    image_token_id: int = 151655
    video_token_id: int = 151656
    vision_start_token_id: int = 151652
    vision_end_token_id: int = 151653
    bos_token_id: int = 151643
    eos_token_id: int = 151645
    pad_token_id: int = 151643  # HF leaves it None; Qwen's tokenizer pads with <|endoftext|>
    # Runtime knobs (not part of the HF config).
    dtype: str = "float32"
    param_dtype: str = "float32"
    remat: str = "none"
    attention: str = "xla"
    # The HF config.json this config was parsed from (JSON text; None when built here). Export
    # writes it back unchanged while it still describes this config, so the exported file
    # keeps exactly the source's keys and values (a pad_token_id absent stays absent).
    hf_source: str | None = dataclasses.field(default=None, compare=False, repr=False)
    # Decoder layers and vision blocks under one scan each, parameters stacked on a leading
    # "layers" axis (model/layers/..., visual/blocks/...): compile time flat in depth. The
    # numerics equal the unrolled layout's; `checkpoints.layout` converts between the two.
    scan_layers: bool = False

    def __post_init__(self):
        if self.vision.out_hidden_size != self.text.hidden_size:
            raise ValueError(
                f"vision out_hidden_size {self.vision.out_hidden_size} must equal text "
                f"hidden_size {self.text.hidden_size} (merger output feeds the decoder)"
            )
        if self.dtype not in DTYPES:
            raise ValueError(f"dtype {self.dtype!r} is not one of {DTYPES}")
        if self.param_dtype not in DTYPES:
            raise ValueError(f"param_dtype {self.param_dtype!r} is not one of {DTYPES}")
        if self.remat not in REMAT_POLICIES:
            raise ValueError(f"remat {self.remat!r} is not one of {REMAT_POLICIES}")
        if self.attention not in ATTENTION_IMPLS:
            raise ValueError(f"attention {self.attention!r} is not one of {ATTENTION_IMPLS}")
        # The vision ids place features in the forward pass, so they must index the vocabulary.
        # bos/eos/pad are bookkeeping (transformers does not check them either; tiny Hub test
        # checkpoints carry Qwen's 151643 with a vocabulary of a few hundred): see `padding_id`.
        for name in VISION_TOKEN_FIELDS:
            value = getattr(self, name)
            if not 0 <= value < self.text.vocab_size:
                raise ValueError(
                    f"{name} {value} is outside the vocabulary [0, {self.text.vocab_size})"
                )
        for name in SPECIAL_TOKEN_FIELDS:
            if getattr(self, name) < 0:
                raise ValueError(f"{name} {getattr(self, name)} is negative")
        if self.image_token_id == self.video_token_id:
            raise ValueError(f"image_token_id and video_token_id are both {self.image_token_id}")

    @property
    def padding_id(self) -> int:
        """The id written into filler positions of fixed-size arrays (masked everywhere).

        `pad_token_id` when it lies inside the vocabulary, else 0: filler ids are never attended
        to or trained on, they only have to index the embedding table.
        """
        return self.pad_token_id if self.pad_token_id < self.text.vocab_size else 0

    def special_ids_outside_vocab(self) -> list[str]:
        """Names of bos/eos/pad ids that do not index the vocabulary (e.g. tiny Hub checkpoints)."""
        return [n for n in SPECIAL_TOKEN_FIELDS if getattr(self, n) >= self.text.vocab_size]

    # ---- read-only views of the decoder fields -------------------------------------------
    @property
    def vocab_size(self) -> int:
        return self.text.vocab_size

    @property
    def hidden_size(self) -> int:
        return self.text.hidden_size

    @property
    def intermediate_size(self) -> int:
        return self.text.intermediate_size

    @property
    def num_hidden_layers(self) -> int:
        return self.text.num_hidden_layers

    @property
    def num_attention_heads(self) -> int:
        return self.text.num_attention_heads

    @property
    def num_key_value_heads(self) -> int:
        return self.text.num_key_value_heads

    @property
    def head_dim(self) -> int:
        return self.text.head_dim

    @property
    def num_kv_groups(self) -> int:
        return self.text.num_kv_groups

    @property
    def rms_norm_eps(self) -> float:
        return self.text.rms_norm_eps

    @property
    def rope_theta(self) -> float:
        return self.text.rope_theta

    @property
    def mrope_section(self) -> tuple[int, ...]:
        return self.text.mrope_section

    def replace(self, **kwargs) -> Qwen25VLConfig:
        return dataclasses.replace(self, **kwargs)

    # ---- presets ---------------------------------------------------------------------------
    @classmethod
    def preset(cls, name: str, **overrides) -> Qwen25VLConfig:
        """'3b', '7b', '32b', '72b' (published checkpoints) or 'tiny' (tests, CPU demos).

        `overrides` replace root fields (e.g. dtype="bfloat16", remat="full").
        """
        if name not in _PRESETS:
            raise ValueError(f"unknown preset {name!r}; known: {sorted(_PRESETS)}")
        return dataclasses.replace(_PRESETS[name](), **overrides)

    # ---- Hugging Face config.json ----------------------------------------------------------
    @classmethod
    def from_hf_json(cls, path: str | os.PathLike, **runtime) -> Qwen25VLConfig:
        """Reads a config.json file, or the config.json inside a checkpoint directory."""
        path = os.fspath(path)
        if io.isdir(path):
            path = os.path.join(path, "config.json")
        return cls.from_hf_dict(json.loads(io.read_text(path)), **runtime)

    @classmethod
    def from_hf_dict(cls, d: Mapping[str, Any], **runtime) -> Qwen25VLConfig:
        """Parses an HF config dict (flat Hub form or nested 5.x form).

        `runtime` sets dtype / param_dtype / remat / attention / scan_layers (defaults: float32,
        none, xla, False).
        Raises ValueError when the dict describes another architecture.
        """
        _check_architecture(d)
        text_d = {k: v for k, v in d.items() if k not in ("text_config", "vision_config")}
        text_d.update(d.get("text_config") or {})
        vision_d = dict(d.get("vision_config") or {})

        rope = dict(text_d.get("rope_scaling") or {})
        rope.update(text_d.get("rope_parameters") or {})
        theta = rope.get("rope_theta", text_d.get("rope_theta", 1e6))
        kv_heads = text_d.get("num_key_value_heads", TextConfig.num_key_value_heads)
        heads = text_d.get("num_attention_heads", TextConfig.num_attention_heads)
        text = TextConfig(
            vocab_size=text_d.get("vocab_size", TextConfig.vocab_size),
            hidden_size=text_d.get("hidden_size", TextConfig.hidden_size),
            intermediate_size=text_d.get("intermediate_size", TextConfig.intermediate_size),
            num_hidden_layers=text_d.get("num_hidden_layers", TextConfig.num_hidden_layers),
            num_attention_heads=heads,
            num_key_value_heads=heads if kv_heads is None else kv_heads,
            rms_norm_eps=float(text_d.get("rms_norm_eps", TextConfig.rms_norm_eps)),
            rope_theta=float(theta),
            mrope_section=tuple(rope.get("mrope_section", TextConfig.mrope_section)),
            max_position_embeddings=text_d.get(
                "max_position_embeddings", TextConfig.max_position_embeddings
            ),
        )

        def pick(*keys, default):
            for k in keys:
                if vision_d.get(k) is not None:
                    return vision_d[k]
            return default

        v_rope = vision_d.get("rope_parameters") or {}
        vision = VisionConfig(
            depth=pick("depth", "num_hidden_layers", default=VisionConfig.depth),
            hidden_size=pick("hidden_size", "embed_dim", default=VisionConfig.hidden_size),
            num_heads=pick("num_heads", "num_attention_heads", default=VisionConfig.num_heads),
            intermediate_size=pick("intermediate_size", default=VisionConfig.intermediate_size),
            patch_size=pick("patch_size", "spatial_patch_size", default=VisionConfig.patch_size),
            temporal_patch_size=pick(
                "temporal_patch_size", default=VisionConfig.temporal_patch_size
            ),
            spatial_merge_size=pick("spatial_merge_size", default=VisionConfig.spatial_merge_size),
            window_size=pick("window_size", default=VisionConfig.window_size),
            fullatt_block_indexes=tuple(
                pick("fullatt_block_indexes", default=VisionConfig.fullatt_block_indexes)
            ),
            out_hidden_size=pick("out_hidden_size", default=VisionConfig.out_hidden_size),
            tokens_per_second=pick("tokens_per_second", default=VisionConfig.tokens_per_second),
            in_channels=pick("in_channels", "in_chans", default=VisionConfig.in_channels),
            rope_theta=float(v_rope.get("rope_theta", VisionConfig.rope_theta)),
        )

        eos = text_d.get("eos_token_id", cls.eos_token_id)
        if isinstance(eos, (list, tuple)):
            eos = eos[0]  # generation stop lists: the first one is <|im_end|>
        bos = text_d.get("bos_token_id")
        bos = cls.bos_token_id if bos is None else bos
        pad = text_d.get("pad_token_id")
        config = cls(
            text=text,
            vision=vision,
            # HF 5 also honours a pre-5 `text_config.tie_word_embeddings`.
            tie_word_embeddings=bool(
                d.get("tie_word_embeddings")
                or (d.get("text_config") or {}).get("tie_word_embeddings")
            ),
            image_token_id=d.get("image_token_id", cls.image_token_id),
            video_token_id=d.get("video_token_id", cls.video_token_id),
            vision_start_token_id=d.get("vision_start_token_id", cls.vision_start_token_id),
            vision_end_token_id=d.get("vision_end_token_id", cls.vision_end_token_id),
            bos_token_id=bos,
            eos_token_id=eos,
            pad_token_id=bos if pad is None else pad,
            hf_source=json.dumps(d),
            **runtime,
        )
        outside = config.special_ids_outside_vocab()
        if outside:
            warnings.warn(
                f"config {', '.join(f'{n}={getattr(config, n)}' for n in outside)} lie outside "
                f"the vocabulary [0, {config.vocab_size}); the forward pass does not use them, "
                f"filler positions use id {config.padding_id} and generation stops at the "
                "tokenizer's end-of-text ids",
                stacklevel=2,
            )
        return config

    def to_hf_dict(self) -> dict[str, Any]:
        """A config.json that transformers 5.x `Qwen2_5_VLConfig` / `from_pretrained` reads.

        A config parsed from a config.json returns that dict unchanged (keys, values, layout)
        as long as it still describes this config (compared in HF form: runtime knobs such as
        scan_layers or remat never count); otherwise (presets, edited configs) a
        nested 5.x dict is generated, with `pad_token_id` only when it indexes the vocabulary
        (transformers refuses a padding index outside the embedding table).
        """
        source = self._source_dict()
        return source if source is not None else self._generated_hf_dict()

    def _generated_hf_dict(self) -> dict[str, Any]:
        t, v = self.text, self.vision
        text_ids = {"bos_token_id": self.bos_token_id, "eos_token_id": self.eos_token_id}
        if self.pad_token_id < t.vocab_size:
            text_ids["pad_token_id"] = self.pad_token_id
        return {
            "architectures": [ARCHITECTURE],
            "model_type": MODEL_TYPE,
            "text_config": {
                "model_type": "qwen2_5_vl_text",
                "vocab_size": t.vocab_size,
                "hidden_size": t.hidden_size,
                "intermediate_size": t.intermediate_size,
                "num_hidden_layers": t.num_hidden_layers,
                "num_attention_heads": t.num_attention_heads,
                "num_key_value_heads": t.num_key_value_heads,
                "hidden_act": "silu",
                "rms_norm_eps": t.rms_norm_eps,
                "max_position_embeddings": t.max_position_embeddings,
                "rope_parameters": {
                    "rope_type": "default",
                    "rope_theta": t.rope_theta,
                    "mrope_section": list(t.mrope_section),
                },
                "use_sliding_window": False,
                "attention_dropout": 0.0,
                **text_ids,
                "tie_word_embeddings": self.tie_word_embeddings,
                "dtype": self.param_dtype,
            },
            "vision_config": {
                "model_type": "qwen2_5_vl_vision",
                "depth": v.depth,
                "hidden_size": v.hidden_size,
                "num_heads": v.num_heads,
                "intermediate_size": v.intermediate_size,
                "hidden_act": "silu",
                "patch_size": v.patch_size,
                "temporal_patch_size": v.temporal_patch_size,
                "spatial_merge_size": v.spatial_merge_size,
                "window_size": v.window_size,
                "fullatt_block_indexes": list(v.fullatt_block_indexes),
                "out_hidden_size": v.out_hidden_size,
                "tokens_per_second": _int_if_integral(v.tokens_per_second),
                "in_channels": v.in_channels,
                "rope_parameters": {"rope_type": "axial", "rope_theta": v.rope_theta},
            },
            "image_token_id": self.image_token_id,
            "video_token_id": self.video_token_id,
            "vision_start_token_id": self.vision_start_token_id,
            "vision_end_token_id": self.vision_end_token_id,
            "tie_word_embeddings": self.tie_word_embeddings,
            "dtype": self.param_dtype,
        }

    def _source_dict(self) -> dict[str, Any] | None:
        if self.hf_source is None:
            return None
        source = json.loads(self.hf_source)
        # Compared in HF form, so runtime knobs (remat, attention, scan_layers, the attention
        # chunks) never decide it; param_dtype does, as the exported "dtype" key.
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            parsed = Qwen25VLConfig.from_hf_dict(source, param_dtype=self.param_dtype)
            still = parsed._generated_hf_dict() == self._generated_hf_dict()
        return source if still else None

    def to_hf_json(self, path: str | os.PathLike) -> None:
        io.write_text(path, json.dumps(self.to_hf_dict(), indent=2))


def _int_if_integral(x: int | float) -> int | float:
    return int(x) if float(x).is_integer() else x


def _check_architecture(d: Mapping[str, Any]) -> None:
    model_type = d.get("model_type")
    if model_type is not None and model_type != MODEL_TYPE:
        raise ValueError(f"config model_type is {model_type!r}, expected {MODEL_TYPE!r}")
    archs = d.get("architectures") or []
    if model_type is None and archs and not any("Qwen2_5_VL" in a for a in archs):
        raise ValueError(f"config architectures {archs} are not Qwen2.5-VL")


# ---- presets (docs/qwen2_5_vl.md §1.4) --------------------------------------------------------
# 3B: full config.json seen (third-party copy). 7B/32B/72B dims, vocab, tie flag and vision
# intermediate/out sizes from torchtune builders. UNVERIFIED against the Hub files:
# rms_norm_eps 1e-6, max_position_embeddings 128000 and tokens_per_second 2 for 7B/32B/72B.


def _published(hidden, layers, heads, kv_heads, inter, vocab, tie, v_inter) -> Qwen25VLConfig:
    return Qwen25VLConfig(
        text=TextConfig(
            vocab_size=vocab,
            hidden_size=hidden,
            intermediate_size=inter,
            num_hidden_layers=layers,
            num_attention_heads=heads,
            num_key_value_heads=kv_heads,
            rms_norm_eps=1e-6,
            rope_theta=1e6,
            mrope_section=(16, 24, 24),
            max_position_embeddings=128000,
        ),
        vision=VisionConfig(
            depth=32,
            hidden_size=1280,
            num_heads=16,
            intermediate_size=v_inter,
            window_size=112,
            fullatt_block_indexes=(7, 15, 23, 31),
            out_hidden_size=hidden,
            tokens_per_second=2,
        ),
        tie_word_embeddings=tie,
    )


def _tiny() -> Qwen25VLConfig:
    base = 480  # tiny tokenizer: special tokens at base + k (see BRIEF)
    return Qwen25VLConfig(
        text=TextConfig(
            vocab_size=512,
            hidden_size=64,
            intermediate_size=128,
            num_hidden_layers=2,
            num_attention_heads=4,
            num_key_value_heads=2,
            rms_norm_eps=1e-6,
            rope_theta=1e6,
            mrope_section=(2, 3, 3),
            max_position_embeddings=4096,
        ),
        vision=VisionConfig(
            depth=2,
            hidden_size=32,
            num_heads=2,
            intermediate_size=64,
            window_size=112,
            fullatt_block_indexes=(1,),
            out_hidden_size=64,
            tokens_per_second=2,
        ),
        tie_word_embeddings=False,
        image_token_id=base + _IMAGE_PAD,
        video_token_id=base + _VIDEO_PAD,
        vision_start_token_id=base + _VISION_START,
        vision_end_token_id=base + _VISION_END,
        bos_token_id=base + _ENDOFTEXT,
        eos_token_id=base + _IM_END,
        pad_token_id=base + _ENDOFTEXT,
    )


_PRESETS = {
    "3b": lambda: _published(2048, 36, 16, 2, 11008, 151936, True, 3420),
    "7b": lambda: _published(3584, 28, 28, 4, 18944, 152064, False, 3420),
    "32b": lambda: _published(5120, 64, 40, 8, 27648, 152064, False, 3456),
    "72b": lambda: _published(8192, 80, 64, 8, 29568, 152064, False, 3456),
    "tiny": _tiny,
}
