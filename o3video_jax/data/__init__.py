"""Host-side data: video decoding, pixel preprocessing, synthetic data, records and batches.

Modules are imported as `from o3video_jax.data import video, vision`; the names below are the
few that users call directly. Append new re-exports at the end, one block per module.
"""

from o3video_jax.data import synthetic, video, vision
from o3video_jax.data.synthetic import generate_dataset, make_video, write_corrupt_files
from o3video_jax.data.video import Clip, VideoDecodeError, read_video
from o3video_jax.data.vision import (
    preprocess_image,
    preprocess_video,
    second_per_grid,
    smart_resize,
)

__all__ = [
    "synthetic",
    "video",
    "vision",
    "generate_dataset",
    "make_video",
    "write_corrupt_files",
    "Clip",
    "VideoDecodeError",
    "read_video",
    "preprocess_image",
    "preprocess_video",
    "second_per_grid",
    "smart_resize",
]

# isort: split
# ---- records / pipeline (helper "records"): append imports and `__all__ += [...]` here ----
from o3video_jax.data import examples, packing, pipeline, prompts, records, tokenizer
from o3video_jax.data.examples import Example, ExampleBuilder, ExampleConfig, ExampleError
from o3video_jax.data.packing import pack, pack_stats
from o3video_jax.data.pipeline import (
    DataErrorBudget,
    EvalBatch,
    PipelineConfig,
    RLBatch,
    SFTBatch,
    eval_dataset,
    make_dataset,
    rl_dataset,
    sft_dataset,
)
from o3video_jax.data.prompts import frame_layout, sft_target, system_prompt
from o3video_jax.data.records import (
    MCQRecord,
    RecordError,
    STGRRecord,
    VStarRecord,
    convert_boxes,
    ground_truth,
    load_mcq,
    load_stgr,
    load_vstar,
)
from o3video_jax.data.tokenizer import Tokenizer, make_tiny_tokenizer

__all__ += [
    "examples",
    "packing",
    "pipeline",
    "prompts",
    "records",
    "tokenizer",
    "Example",
    "ExampleBuilder",
    "ExampleConfig",
    "ExampleError",
    "pack",
    "pack_stats",
    "DataErrorBudget",
    "EvalBatch",
    "PipelineConfig",
    "RLBatch",
    "SFTBatch",
    "eval_dataset",
    "make_dataset",
    "rl_dataset",
    "sft_dataset",
    "frame_layout",
    "sft_target",
    "system_prompt",
    "MCQRecord",
    "RecordError",
    "STGRRecord",
    "VStarRecord",
    "convert_boxes",
    "ground_truth",
    "load_mcq",
    "load_stgr",
    "load_vstar",
    "Tokenizer",
    "make_tiny_tokenizer",
]
