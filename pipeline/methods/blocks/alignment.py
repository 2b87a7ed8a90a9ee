"""Temporal pieces of multi-frame methods: frame-index gate, selective attention and flow alignment
(the deformable convolution is blocks/deformable.py).

Feature maps are (N, C, H, W) batches; multi-frame callers fold their frames into N.
"""
from __future__ import annotations

import torch
from torch import nn
from torch.nn import functional as F

from pipeline.methods.blocks import full_precision


def frame_index_encoding(frames: int, width: int, dtype: torch.dtype | None = None,
                         device: torch.device | None = None) -> torch.Tensor:
    """(frames, width) encoding whose row t is the constant t / frames (t = 0 .. frames-1)."""
    if frames < 1 or width < 1:
        raise ValueError(f"frames and width must be >= 1, got {frames} and {width}")
    index = torch.arange(frames, dtype=dtype or torch.get_default_dtype(), device=device) / frames
    return index[:, None].expand(frames, width)


class TemporalGate(nn.Module):
    """gate = sigmoid(Linear_{width->width}(frame_index_encoding)): one multiplicative weight per
    frame position and feature (SeqCSIST Eq. 16-17), default Linear initialisation.

    ``forward`` multiplies (B, frames, width) features by the (frames, width) gate.
    """

    def __init__(self, width: int) -> None:
        super().__init__()
        self.mlp = nn.Linear(width, width)

    def gate(self, frames: int) -> torch.Tensor:
        """(frames, width) gate values in (0, 1)."""
        weight = self.mlp.weight
        return torch.sigmoid(self.mlp(frame_index_encoding(frames, weight.shape[1], weight.dtype,
                                                            weight.device)))

    def forward(self, features: torch.Tensor) -> torch.Tensor:
        """(B, frames, width) -> (B, frames, width) gated features."""
        return features * self.gate(features.shape[1])


def bilinear_sample(features: torch.Tensor, rows: torch.Tensor, cols: torch.Tensor) -> torch.Tensor:
    """features (N, C, H, W) read bilinearly at pixel positions rows, cols (N, H', W') ->
    (N, C, H', W'); pixel centres at integers, zeros outside the map. The sampling grid and the
    interpolation stay fp32 under bf16 autocast (a bf16 grid moves a sample by up to 0.1 px)."""
    height, width = features.shape[-2:]
    with torch.autocast(features.device.type, enabled=False):
        rows, cols = full_precision(rows), full_precision(cols)
        grid = torch.stack([2.0 * cols / max(width - 1, 1) - 1.0, 2.0 * rows / max(height - 1, 1) - 1.0], dim=-1)
        return F.grid_sample(full_precision(features), grid, mode="bilinear", padding_mode="zeros", align_corners=True)


class SelectiveAttention(nn.Module):
    """Spatial selective attention of a reference against a centre feature map (SeqCSIST Eq. 18).

    a_c = conv1x1(centre), a_r = conv1x1(reference), each to C/2 channels; s = sigmoid(conv3x3 of
    the channel mean and max of [a_c, a_r]) with 2 channels; output [a_c s_0, a_r s_1], C channels.
    """

    def __init__(self, channels: int) -> None:
        super().__init__()
        if channels < 2 or channels % 2:
            raise ValueError(f"channels must be even and >= 2, got {channels}")
        self.reduce_centre = nn.Conv2d(channels, channels // 2, 1)
        self.reduce_reference = nn.Conv2d(channels, channels // 2, 1)
        self.squeeze = nn.Conv2d(2, 2, 3, padding=1)

    def forward(self, centre: torch.Tensor, reference: torch.Tensor) -> torch.Tensor:
        """Two (N, C, H, W) maps -> (N, C, H, W) aggregated map."""
        a_c, a_r = self.reduce_centre(centre), self.reduce_reference(reference)
        both = torch.cat([a_c, a_r], dim=1)
        pooled = torch.cat([both.mean(dim=1, keepdim=True), both.amax(dim=1, keepdim=True)], dim=1)
        weights = torch.sigmoid(self.squeeze(pooled))
        return torch.cat([a_c * weights[:, :1], a_r * weights[:, 1:]], dim=1)


def warp(features: torch.Tensor, flow: torch.Tensor) -> torch.Tensor:
    """Bilinear backward warp: out(p) = features(p + flow(p)), zeros outside.

    features (N, C, H, W); flow (N, 2, H, W) as (dy, dx) in pixels.
    """
    height, width = features.shape[-2:]
    rows = torch.arange(height, dtype=flow.dtype, device=flow.device)[:, None] + flow[:, 0]
    cols = torch.arange(width, dtype=flow.dtype, device=flow.device) + flow[:, 1]
    return bilinear_sample(features, rows, cols)


class FlowAlignment(nn.Module):
    """Optical-flow alignment: a small estimator (conv3x3 2C->C, ReLU, conv3x3 C->2, the last
    zero-initialised so it starts at zero flow) reads [centre, reference] and the reference is
    warped by the estimated flow."""

    def __init__(self, channels: int) -> None:
        super().__init__()
        self.estimator = nn.Sequential(nn.Conv2d(2 * channels, channels, 3, padding=1), nn.ReLU(),
                                       nn.Conv2d(channels, 2, 3, padding=1))
        nn.init.zeros_(self.estimator[-1].weight)
        nn.init.zeros_(self.estimator[-1].bias)

    def forward(self, centre: torch.Tensor, reference: torch.Tensor) -> torch.Tensor:
        """Two (N, C, H, W) maps -> (N, C, H, W) reference warped onto the centre."""
        return warp(reference, self.estimator(torch.cat([centre, reference], dim=1)))
