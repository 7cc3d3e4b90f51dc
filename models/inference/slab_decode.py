"""Exact slab-by-slab decoding of the KL autoencoder: the whole-volume result with bounded memory.

A decoder made of 3x3x3 convolutions can run on slabs along x, each with a halo of one row per
convolution. What breaks tiled decoding (separate tiles, blended) is GroupNorm: its statistics are
taken over the whole volume, so tiles normalised on their own statistics disagree and show seams.
Here every intermediate tensor is produced slab by slab while its per-channel sums and sums of
squares are accumulated in float64, and each GroupNorm is applied to the slabs of its input with those
whole-volume statistics (mean and variance from the two moment sums, as a two-pass GroupNorm), fused
into the convolution that follows it. Nearest upsampling is fused into its convolution the same way.
The result equals ``AutoencoderKL.decode`` up to float rounding, so there are no seams to blend.

Peak memory is what a res-block must keep (its input, its first convolution's output and its output)
plus one slab of temporaries, instead of the several full-resolution temporaries of a whole-volume
pass; with ``offload=True`` those kept tensors live in host memory and only slabs visit the accelerator.
Decoders with attention (global by nature) are refused.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from monai.networks.blocks import Convolution
from monai.networks.blocks.upsample import UpSample
from monai.networks.nets import AutoencoderKL
from monai.networks.nets.autoencoderkl import AEKLResBlock
from torch import nn

from models.errors import GenerationStopped, SamplingError


@dataclass
class _Stored:
    """A tensor produced slab by slab, with its per-(sample, channel) moment sums over all voxels."""

    tensor: torch.Tensor
    sums: torch.Tensor
    squares: torch.Tensor

    @classmethod
    def of(cls, tensor: torch.Tensor) -> _Stored:
        return cls(tensor, *_moments(tensor))


@dataclass(frozen=True)
class _Norm:
    """A GroupNorm (and an optional SiLU) to apply to a stored tensor's slabs with whole-volume statistics."""

    module: nn.GroupNorm
    silu: bool


@dataclass(frozen=True)
class _Step:
    """One step of the plan: a convolution (with a fused norm before it, or nearest x2 upsampling), or a res-block."""

    conv: nn.Conv3d | None = None
    pre: _Norm | None = None
    upsample: bool = False
    resblock: AEKLResBlock | None = None


def _moments(tensor: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    dims = tuple(range(2, tensor.dim()))
    values = tensor.float()
    return values.sum(dim=dims, dtype=torch.float64), (values * values).sum(dim=dims, dtype=torch.float64)


def _affine(norm: _Norm, source: _Stored) -> tuple[torch.Tensor, torch.Tensor]:
    """Per-(sample, channel) scale and shift that GroupNorm applies, from the source's moment sums."""
    module = norm.module
    batch, channels = source.sums.shape
    groups = module.num_groups
    count = source.tensor[0, 0].numel() * (channels // groups)
    mean = source.sums.view(batch, groups, -1).sum(-1) / count
    variance = (source.squares.view(batch, groups, -1).sum(-1) / count - mean * mean).clamp_min(0.0)
    inv_std = torch.rsqrt(variance + module.eps)
    inv_std = inv_std.repeat_interleave(channels // groups, dim=1)
    mean = mean.repeat_interleave(channels // groups, dim=1)
    weight = module.weight.double() if module.weight is not None else torch.ones(channels, dtype=torch.float64)
    bias = module.bias.double() if module.bias is not None else torch.zeros(channels, dtype=torch.float64)
    scale = weight.to(inv_std.device) * inv_std
    shift = bias.to(inv_std.device) - mean * scale
    return scale.float(), shift.float()


class SlabDecoder:
    """Decode latents through an ``AutoencoderKL`` ``slab`` rows (along x) at a time, exactly.

    ``slab`` counts rows at each level's own resolution. ``offload`` keeps the full intermediate
    tensors on the CPU (host memory) while slabs run on the autoencoder's device.
    """

    def __init__(self, autoencoder: AutoencoderKL, slab: int = 16, offload: bool = False) -> None:
        if slab < 1:
            raise SamplingError(f"decode slab must be at least 1 row, got {slab}")
        self.autoencoder = autoencoder
        self.slab = slab
        self.compute = next(autoencoder.parameters()).device
        self.store = torch.device("cpu") if offload else self.compute
        self.plan = list(self._ops())  # checked now, so an unsupported decoder fails before any sampling

    def _ops(self) -> Iterator[_Step]:
        yield _Step(conv=_conv3d(self.autoencoder.post_quant_conv))
        pending: _Norm | None = None
        for block in self.autoencoder.decoder.blocks:
            if isinstance(block, AEKLResBlock):
                if pending is not None:
                    raise SamplingError("slab decode: a GroupNorm directly before a res-block is not supported")
                _conv3d(block.conv1), _conv3d(block.conv2)  # checked here, used when decoding
                if not isinstance(block.nin_shortcut, nn.Identity):
                    _conv3d(block.nin_shortcut)
                yield _Step(resblock=block)
            elif isinstance(block, UpSample):
                yield _Step(conv=_nearest_upsample_conv(block), pre=pending, upsample=True)
                pending = None
            elif isinstance(block, nn.GroupNorm):
                pending = _Norm(block, silu=False)
            elif isinstance(block, (Convolution, nn.Conv3d)):
                yield _Step(conv=_conv3d(block), pre=pending)
                pending = None
            else:
                raise SamplingError(
                    f"slab decode does not support {type(block).__name__} in the decoder (attention is global); "
                    "decode this model whole (no --decode-slab)"
                )
        if pending is not None:
            raise SamplingError("slab decode: the decoder ends with a GroupNorm, which has no convolution to fuse into")

    def __call__(self, latent: torch.Tensor, should_stop: Callable[[], bool] | None = None) -> torch.Tensor:
        """Same as ``autoencoder.decode(latent)``; the result is on the store device (CPU with offload).
        ``should_stop`` is checked before each layer; true raises :class:`GenerationStopped`."""
        current = _Stored.of(latent.to(self.store))
        for step in self.plan:
            if should_stop is not None and should_stop():
                raise GenerationStopped("decoding was stopped on request")
            if step.resblock is None:
                current = self._conv(current, step.conv, pre=step.pre, upsample=step.upsample)
            else:
                block = step.resblock
                hidden = self._conv(current, _conv3d(block.conv1), pre=_Norm(block.norm1, silu=True))
                current = self._conv(
                    hidden, _conv3d(block.conv2), pre=_Norm(block.norm2, silu=True),
                    residual=(current, block.nin_shortcut),
                )  # fmt: skip
        return current.tensor

    def _conv(
        self,
        source: _Stored,
        conv: nn.Conv3d,
        pre: _Norm | None = None,
        upsample: bool = False,
        residual: tuple[_Stored, nn.Module] | None = None,
    ) -> _Stored:
        """``conv(upsample(pre(source))) [+ shortcut(residual)]``, computed ``slab`` output rows at a time."""
        halo = conv.kernel_size[0] // 2
        batch, _, rows, *rest = source.tensor.shape
        rows_out = rows * 2 if upsample else rows
        if upsample:
            rest = [2 * n for n in rest]
        scale = shift = None
        if pre is not None:
            scale, shift = (t.to(self.compute)[:, :, None, None, None] for t in _affine(pre, source))
        out: torch.Tensor | None = None
        sums = squares = None
        for start in range(0, rows_out, self.slab):
            stop = min(start + self.slab, rows_out)
            lo, hi = max(start - halo, 0), min(stop + halo, rows_out)
            src_lo, src_hi = (lo // 2, (hi - 1) // 2 + 1) if upsample else (lo, hi)
            piece = source.tensor[:, :, src_lo:src_hi].to(self.compute)
            if scale is not None:
                piece = piece.float() * scale + shift
                if pre.silu:
                    piece = F.silu(piece)
            if upsample:
                piece = F.interpolate(piece, scale_factor=2.0, mode="nearest")
                piece = piece[:, :, lo - 2 * src_lo : hi - 2 * src_lo]
            piece = F.pad(piece, (0, 0, 0, 0, lo - (start - halo), (stop + halo) - hi))
            result = F.conv3d(piece, conv.weight, conv.bias, padding=(0, halo, halo))
            if residual is not None:
                stored, shortcut = residual
                result = result + shortcut(stored.tensor[:, :, start:stop].to(self.compute))
            slab_sums, slab_squares = _moments(result)
            sums = slab_sums if sums is None else sums + slab_sums
            squares = slab_squares if squares is None else squares + slab_squares
            if out is None:
                out = torch.empty((batch, result.shape[1], rows_out, *rest), dtype=result.dtype, device=self.store)
            out[:, :, start:stop] = result.to(self.store)
        return _Stored(out, sums.to(self.store), squares.to(self.store))


def _conv3d(module: nn.Module) -> nn.Conv3d:
    conv = module.conv if isinstance(module, Convolution) else module
    if not isinstance(conv, nn.Conv3d):
        raise SamplingError(f"slab decode expects 3D convolutions, found {type(conv).__name__}")
    k = conv.kernel_size
    same_padding = conv.padding == tuple(n // 2 for n in k) and conv.padding_mode == "zeros"
    if len(set(k)) != 1 or k[0] % 2 == 0 or conv.stride != (1, 1, 1) or conv.dilation != (1, 1, 1) or not same_padding:
        raise SamplingError(f"slab decode expects stride-1 'same' convolutions with odd cubic kernels, found {conv}")
    return conv


def _nearest_upsample_conv(block: UpSample) -> nn.Conv3d:
    names = [name for name, _ in block.named_children()]
    upsample = getattr(block, "upsample_non_trainable", None)
    if names != ["upsample_non_trainable", "postconv"] or upsample.mode != "nearest" or upsample.size is not None:
        raise SamplingError(f"slab decode supports nearest x2 upsampling followed by a convolution, found {names}")
    factors = upsample.scale_factor if isinstance(upsample.scale_factor, tuple) else (upsample.scale_factor,) * 3
    if any(float(f) != 2.0 for f in factors):
        raise SamplingError(f"slab decode supports a x2 upsampling factor, found {upsample.scale_factor}")
    return _conv3d(block.postconv)
