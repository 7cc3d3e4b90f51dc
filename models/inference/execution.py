"""How a pipeline runs its networks: speed and memory settings that leave the model's output unchanged up to
float rounding (reduced precision: about 0.06 on images in [0, 1]). Torch-free, so worker and service
settings can build and check one; every sidecar records it, since bytes depend on it."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Literal

from models.errors import SamplingError

Precision = Literal["bf16", "fp16"]


@dataclass(frozen=True)
class Execution:
    """Settings of :class:`models.inference.pipeline.BrainLDMPipeline` that trade speed, memory and float rounding."""

    #: autocast dtype for the UNet and the decoder (``None``: float32, the bundle's setting)
    precision: Precision | None = None
    #: run the UNet and the decoder on channels-last (NDHWC) tensors
    channels_last: bool = False
    #: ``torch.compile`` the UNet and the whole-volume decoder (first batch of each size compiles)
    compile: bool = False
    #: decode this many rows at a time with whole-volume GroupNorm statistics (``None``: whole volume)
    decode_slab: int | None = None
    #: with ``decode_slab``: keep the decoder's full-size tensors in host memory
    decode_offload: bool = False

    def __post_init__(self) -> None:
        if self.precision not in (None, "bf16", "fp16"):
            raise SamplingError(f"precision must be 'bf16', 'fp16' or None (float32), got {self.precision!r}")
        if self.decode_slab is not None and self.decode_slab < 1:
            raise SamplingError(
                f"decode slab (--decode-slab, BRAINSYNTH_DECODE_SLAB) must be at least 1 row, got {self.decode_slab}"
            )
        if self.decode_offload and self.decode_slab is None:
            raise SamplingError(
                "decode offload (--decode-offload, BRAINSYNTH_DECODE_OFFLOAD) needs a decode slab: "
                "set --decode-slab ROWS or BRAINSYNTH_DECODE_SLAB"
            )

    def sidecar(self) -> dict[str, Any]:
        """The BIDS sidecar fields that record it."""
        return {
            "Precision": self.precision or "float32",
            "ChannelsLast": self.channels_last,
            "Compiled": self.compile,
            "DecodeSlab": self.decode_slab,
        }
