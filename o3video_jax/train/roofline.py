"""Per-chip TPU numbers and a roofline estimate of a compiled program.

A program's time on one chip is at least max(FLOPs / peak FLOP/s, bytes accessed / HBM
bandwidth), both counts being XLA's own (`compiled.cost_analysis()` of the SPMD-partitioned,
per-chip program). The estimate ignores collectives (ICI), overlap losses and the gap between
peak and achievable throughput, so real steps are slower: it is a floor, useful to see which
programs are compute- and which memory-bound and how far a config is from the chip's peak.
"""

from __future__ import annotations

import dataclasses
import re


@dataclasses.dataclass(frozen=True)
class Chip:
    """peak_flops: dense bf16 FLOP/s; hbm_bytes: HBM per chip; hbm_bw: HBM bytes/s."""

    name: str
    peak_flops: float
    hbm_bytes: float
    hbm_bw: float


GIB, GB = 2**30, 1e9

# Google Cloud's published per-chip specifications ("Peak compute per chip (bf16)",
# "HBM capacity and bandwidth"):
CHIPS = {
    # https://cloud.google.com/tpu/docs/v4: 275 TFLOPs, 32 GiB HBM2, 1200 GBps.
    "v4": Chip("v4", 275e12, 32 * GIB, 1200 * GB),
    # https://cloud.google.com/tpu/docs/v5e: 197 TFLOPs, 16 GiB HBM2, 819 GBps.
    "v5e": Chip("v5e", 197e12, 16 * GIB, 819 * GB),
    # https://cloud.google.com/tpu/docs/v5p: 459 TFLOPs, 95 GB HBM2e, 2765 GBps.
    "v5p": Chip("v5p", 459e12, 95 * GB, 2765 * GB),
    # https://cloud.google.com/tpu/docs/v6e: 918 TFLOPs, 32 GB HBM, 1640 GBps.
    "v6e": Chip("v6e", 918e12, 32 * GB, 1640 * GB),
}
_ALIASES = {"v5litepod": "v5e", "v5lite": "v5e", "v6lite": "v6e"}


def chip(generation: str) -> Chip:
    """The table entry of a topology's generation ('v5p' of 'v5p:4x4x4'); ValueError else."""
    g = _ALIASES.get(generation, generation)
    if g not in CHIPS:
        raise ValueError(f"no chip numbers for TPU {generation!r}; known: {sorted(CHIPS)}")
    return CHIPS[g]


@dataclasses.dataclass(frozen=True)
class Roofline:
    """flops, bytes: per chip, as counted by XLA; model_flops: the useful FLOPs per chip
    (6 N T training, 2 N T forward; see `model_flops`) for the MFU estimate."""

    flops: float
    bytes: float
    model_flops: float
    chip: Chip

    @property
    def compute_s(self) -> float:
        return self.flops / self.chip.peak_flops

    @property
    def memory_s(self) -> float:
        return self.bytes / self.chip.hbm_bw

    @property
    def seconds(self) -> float:
        return max(self.compute_s, self.memory_s)

    @property
    def bound(self) -> str:
        return "compute" if self.compute_s >= self.memory_s else "memory"

    @property
    def mfu(self) -> float:
        """Model FLOP utilisation if the program ran at its roofline time."""
        return self.model_flops / (self.seconds * self.chip.peak_flops) if self.seconds else 0.0


def cost(compiled) -> tuple[float, float]:
    """(flops, bytes accessed) of a compiled executable, per chip (0 when XLA gives none)."""
    ca = compiled.cost_analysis()
    if isinstance(ca, (list, tuple)):  # older jax: one dict per partition
        ca = ca[0] if ca else {}
    ca = ca or {}
    return float(ca.get("flops", 0.0)), float(ca.get("bytes accessed", 0.0))


def matmul_params(shapes: dict[str, tuple[int, ...]], pattern: str) -> int:
    """Parameters of the 2-D kernels whose path matches `pattern` (embedding tables, norms
    and biases do no matmul FLOPs per token)."""
    rx = re.compile(pattern)
    n = 0
    for path, shape in shapes.items():
        if rx.search(path) and path.endswith("kernel") and len(shape) >= 2:
            size = 1
            for s in shape:
                size *= s
            n += size
    return n


def model_flops(
    text_params: int, vision_params: int, tokens: int, patches: int, passes: int
) -> float:
    """Useful FLOPs: 2 per parameter per token (patch for the vision tower) per pass;
    passes = 3 for a training step (forward + 2x backward), 1 for a forward. Attention score
    FLOPs and the recomputation of remat are not useful FLOPs and are left out (PaLM's MFU
    convention without the attention term)."""
    return 2.0 * passes * (text_params * tokens + vision_params * patches)
