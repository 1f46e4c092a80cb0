"""Bin packing of variable-length examples into fixed-budget rows.

Every example costs (tokens, patches); a row holds at most `max_tokens` tokens and
`max_patches` vision patches (both budgets of `ModelInputs`), and optionally at most
`max_segments` examples. Packing is offline over a window of examples and deterministic:
the same sizes in the same order give the same rows, which the checkpointable pipeline relies
on to restore a half-consumed window.

  first_fit: each example goes to the first open row with room (rows in creation order).
  best_fit:  each example goes to the open row it fills most tightly, tokens first, then
             patches (ties: the earliest row).
Both optionally sort the window by decreasing tokens first ("decreasing" variants, better
efficiency, still deterministic).

RL keeps prompt groups intact: `group_rows` never splits a prompt from its G samples.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Sequence

STRATEGIES = ("first_fit", "best_fit")


@dataclasses.dataclass(frozen=True)
class PackStats:
    rows: int
    token_efficiency: float  # real tokens / (rows * max_tokens)
    patch_efficiency: float  # real patches / (rows * max_patches); 0 when max_patches is 0


def pack(
    sizes: Sequence[tuple[int, int]],
    max_tokens: int,
    max_patches: int,
    *,
    strategy: str = "first_fit",
    max_segments: int | None = None,
    sort: bool = False,
) -> list[list[int]]:
    """Rows of example indices. sizes[i] = (tokens, patches). Within a row the indices keep
    their window order. Raises ValueError when one example alone exceeds a budget."""
    if strategy not in STRATEGIES:
        raise ValueError(f"strategy must be one of {STRATEGIES}, got {strategy!r}")
    for i, (t, p) in enumerate(sizes):
        if t > max_tokens or p > max_patches:
            raise ValueError(
                f"example {i} ({t} tokens, {p} patches) exceeds the row budget "
                f"({max_tokens} tokens, {max_patches} patches)"
            )
    order = list(range(len(sizes)))
    if sort:
        order.sort(key=lambda i: (-sizes[i][0], -sizes[i][1], i))
    rows: list[list[int]] = []
    room: list[list[int]] = []  # [tokens left, patches left] per row
    for i in order:
        t, p = sizes[i]
        fits = [
            r
            for r in range(len(rows))
            if room[r][0] >= t
            and room[r][1] >= p
            and (max_segments is None or len(rows[r]) < max_segments)
        ]
        if not fits:
            rows.append([])
            room.append([max_tokens, max_patches])
            r = len(rows) - 1
        elif strategy == "first_fit":
            r = fits[0]
        else:
            r = min(fits, key=lambda r: (room[r][0] - t, room[r][1] - p, r))
        rows[r].append(i)
        room[r][0] -= t
        room[r][1] -= p
    return [sorted(row) for row in rows]


def pack_stats(
    rows: Sequence[Sequence[int]],
    sizes: Sequence[tuple[int, int]],
    max_tokens: int,
    max_patches: int,
) -> PackStats:
    n = len(rows)
    tokens = sum(sizes[i][0] for row in rows for i in row)
    patches = sum(sizes[i][1] for row in rows for i in row)
    return PackStats(
        rows=n,
        token_efficiency=tokens / (n * max_tokens) if n else 0.0,
        patch_efficiency=patches / (n * max_patches) if n and max_patches else 0.0,
    )


def group_rows(num_prompts: int, group_size: int) -> list[list[int]]:
    """RL rollout layout: row r of the P*G completion rows belongs to prompt r // G.

    Returns, per prompt, its completion row indices (consecutive, `jnp.repeat` order, which
    is how `KVCache.repeat` broadcasts a prompt's cache to its G samples)."""
    if num_prompts < 0 or group_size < 1:
        raise ValueError(
            f"need num_prompts >= 0 and group_size >= 1, got {num_prompts}, {group_size}"
        )
    return [list(range(p * group_size, (p + 1) * group_size)) for p in range(num_prompts)]
