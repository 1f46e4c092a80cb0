"""Mesh construction and the logical-axis -> mesh-axis rule table (DESIGN decision 4).

Weights and block-boundary activations carry logical axis names (below); one rule table maps
them to the mesh axes `data`, `fsdp`, `tensor`. The table lives in the experiment config
(`config.sharding.rules`); `DEFAULT_RULES` is the FSDP + tensor-parallel layout.

Logical axis names used by the model:
  activations: "batch", "length", "act_embed", "act_heads", "act_kv_heads", "act_mlp",
               "act_vocab", "patches"
  text weights: "vocab", "embed", "mlp", "heads", "kv_heads", "head_dim"
  vision weights: "vision_embed", "vision_mlp", "vision_qkv", "patch_dim", "merger_in"
  scalars/norms: "norm"
"""

from __future__ import annotations

from collections.abc import Sequence

MeshAxes = str | tuple[str, ...] | None

DEFAULT_RULES: tuple[tuple[str, MeshAxes], ...] = (
    ("batch", ("data", "fsdp")),
    ("length", None),
    ("act_embed", None),
    ("act_heads", "tensor"),
    ("act_kv_heads", "tensor"),
    ("act_mlp", "tensor"),
    ("act_vocab", "tensor"),
    ("patches", None),
    ("vocab", "tensor"),
    ("embed", "fsdp"),
    ("mlp", "tensor"),
    ("heads", "tensor"),
    ("kv_heads", "tensor"),
    ("head_dim", None),
    ("vision_embed", "fsdp"),
    ("vision_mlp", "tensor"),
    ("vision_qkv", "tensor"),
    ("patch_dim", None),
    ("merger_in", "tensor"),
    ("norm", None),
)


def validate_rules(rules: Sequence[tuple[str, MeshAxes]]) -> None:
    """Raises ValueError when a logical axis is assigned twice (a silent override otherwise)."""
    seen: dict[str, MeshAxes] = {}
    for name, axes in rules:
        if name in seen and seen[name] != axes:
            raise ValueError(
                f"logical axis {name!r} is mapped twice: to {seen[name]!r} and to {axes!r}"
            )
        seen[name] = axes
