"""GridFree-Net (beyond the papers): per-cell detection probability, sub-pixel offset and
brightness with their uncertainties, decoded into continuous detections (no grid snapping).

The idea follows single-molecule localisation microscopy (DECODE, Speiser et al. 2021): a small
CNN reads the 5-frame window and predicts, for every cell of the HR grid (c x c cells per LR
pixel), the probability p that a target sits in it, its offset from the cell centre, its
brightness, and a standard deviation for each of the three. The loss is the negative
log-likelihood of the true targets under the predicted mixture (weights p / sum p, Gaussian
components) plus a Gaussian count term (sum p against the true count), so no assignment of
targets to cells is needed and counts are learned with positions.

It trains on scenes it simulates itself from the physics' sensor (PSF, bit depth, saturation)
inside :meth:`loss`, drawn from a distribution broader than the SeqCSIST rules (any formation
orientation, 1 to ``max_targets`` targets in a disc, wide brightness, motion in any direction,
noise and a background level), so that it does not learn one simulator's layout; the trainer's
own batch sets only how many windows a step sees. All random draws use torch's global
generator, which the trainer seeds and checkpoints.
"""
from __future__ import annotations

import math
from typing import ClassVar

import numpy as np
import torch
from torch import nn
from torch.nn import functional as F

from pipeline.methods.base import MethodOutput, PhysicsOperator, UnmixingMethod
from pipeline.methods.blocks.super_resolution import PixelShuffleUpsampler
from pipeline.methods.registry import register_model

HEADS = 7  # logit p, offset x, offset y, brightness, and the stds of x, y, brightness
MIN_SIGMA = 1e-3  # LR px (and brightness / scale): the smallest predicted std
MAX_SIGMA = 0.5  # LR px (and brightness / scale): the largest; a wider mixture would learn nothing of positions


class SceneSampler:
    """Broadened training scenes: (B, W, m, m) recorded windows and the middle frame's targets.

    Per window: K ~ U{1..max_targets} targets uniform in a disc of radius U(0.1, 1) ``spread`` px around
    a centre uniform within ``margin`` px of the frame edge; brightness U(``brightness``) each;
    the group moves by a common velocity (any direction, speed U(0, ``speed``) px/frame) plus a
    small per-target drift; a constant background U(0, ``background``) counts and additive noise
    of std U(0, ``noise``) counts, then the sensor's rounding and saturation.
    """

    def __init__(self, physics: PhysicsOperator, window: int, max_targets: int, spread: float, speed: float,
                 brightness: tuple[float, float], noise: float, background: float, margin: float = 2.5) -> None:
        self.size, self.window, self.max_targets = physics.grid.size, window, max_targets
        self.spread, self.speed, self.noise, self.background, self.margin = spread, speed, noise, background, margin
        self.brightness = tuple(float(b) for b in brightness)
        sensor = physics.sensor
        self.sigma = sensor.psf_sigma
        self.quantised, self.clip_high = sensor.quantised, sensor.clip_high

    def _pixel_integral(self, offset: torch.Tensor) -> torch.Tensor:
        scale = self.sigma * math.sqrt(2.0)
        return 0.5 * (torch.special.erf((offset + 0.5) / scale) - torch.special.erf((offset - 0.5) / scale))

    def sample(self, batch: int, device: torch.device) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """(lr (B, W, m, m), targets (B, K_max, 3) x, y, brightness of the middle frame, mask (B, K_max))."""
        b, w, k, m = batch, self.window, self.max_targets, self.size
        rand = lambda *shape: torch.rand(*shape, device=device)  # noqa: E731  (the trainer's seeded generator)
        count = 1 + (rand(b) * k).long().clamp_max(k - 1)
        mask = torch.arange(k, device=device)[None, :] < count[:, None]
        centre = self.margin + rand(b, 1, 2) * (m - 1 - 2 * self.margin)
        radius = self.spread * (0.1 + 0.9 * rand(b, 1, 1)) * rand(b, k, 1).sqrt()  # uniform in a disc of radius R
        angle = 2 * math.pi * rand(b, k, 1)
        start = centre + radius * torch.cat([angle.cos(), angle.sin()], dim=-1)  # (B, K, 2)
        heading = 2 * math.pi * rand(b, 1, 1)
        velocity = self.speed * rand(b, 1, 1) * torch.cat([heading.cos(), heading.sin()], dim=-1)  # (B, 1, 2)
        drift = 0.002 * (rand(b, k, 2) - 0.5)
        steps = (torch.arange(w, device=device, dtype=torch.float32) - w // 2)[None, :, None, None]
        positions = start[:, None] + steps * (velocity + drift)[:, None]  # (B, W, K, 2)
        low, high = self.brightness
        flux = (low + (high - low) * rand(b, k)) * mask  # (B, K); absent targets 0
        pixels = torch.arange(m, device=device, dtype=torch.float32)
        gx = self._pixel_integral(pixels - positions[..., 0:1])  # (B, W, K, m)
        gy = self._pixel_integral(pixels - positions[..., 1:2])
        frames = torch.einsum("bk,bwkr,bwks->bwrs", flux, gx, gy)
        frames = frames + self.background * rand(b, 1, 1, 1) + self.noise * rand(b, 1, 1, 1) * torch.randn_like(frames)
        if self.quantised:
            frames = frames.round().clamp(0.0, self.clip_high if self.clip_high is not None else float("inf"))
        middle = positions[:, w // 2]
        return frames, torch.cat([middle, flux[..., None]], dim=-1), mask


@register_model("gridfree")
class GridFreeNet(UnmixingMethod):
    """A CNN from the 5-frame window to per-HR-cell (p, offset, brightness, their stds), decoded to
    continuous (x, y, score) detections.

    Body: conv 3x3 W -> ``channels`` and ``blocks`` residual 3x3 blocks at LR resolution, a x c
    pixel-shuffle up-sampler to ``hr_channels``, one 3x3 conv and a 1x1 head with 7 outputs per
    HR cell (every size from the physics' grid). Offsets are ``tanh`` bounded to ``reach`` cells
    from the cell centre; brightness and its std are in units of ``scale`` counts. Decoding: a
    cell is a detection where its p, summed with the p of its 3x3 neighbours when it is their
    local maximum (the probability of one target spread over adjacent cells), exceeds
    ``detect_threshold``; the score is that (capped at 1), the position the cell centre plus its
    offset. ``count_weight`` weighs the count term of the loss. Training scenes:
    :class:`SceneSampler` with ``max_targets``, ``spread``, ``speed``, ``brightness``, ``noise``,
    ``background``.
    """

    family = "beyond_the_papers"
    label = "GridFree-Net"
    window = 5
    smoke_params: ClassVar[dict] = {"channels": 8, "blocks": 1, "hr_channels": 8}

    def __init__(self, physics: PhysicsOperator, channels: int = 32, blocks: int = 4, hr_channels: int = 16,
                 reach: float = 1.0, scale: float = 255.0, detect_threshold: float = 0.1, count_weight: float = 1.0,
                 max_targets: int = 6, spread: float = 0.6, speed: float = 0.25,
                 brightness: tuple[float, float] = (60.0, 255.0), noise: float = 3.0, background: float = 20.0
                 ) -> None:
        super().__init__(physics)
        if min(channels, blocks, hr_channels, max_targets) < 1 or reach <= 0 or scale <= 0:
            raise ValueError("gridfree needs channels, blocks, hr_channels, max_targets >= 1 and reach, scale > 0")
        if not 0 < detect_threshold < 1:
            raise ValueError(f"detect_threshold must lie in (0, 1), got {detect_threshold}")
        c = self.grid.c
        self.stem = nn.Conv2d(self.window, channels, 3, padding=1)
        self.body = nn.ModuleList(nn.Sequential(nn.Conv2d(channels, channels, 3, padding=1), nn.ReLU(),
                                                nn.Conv2d(channels, channels, 3, padding=1)) for _ in range(blocks))
        self.upsample = PixelShuffleUpsampler(channels, hr_channels, c)
        self.refine = nn.Conv2d(hr_channels, hr_channels, 3, padding=1)
        self.head = nn.Conv2d(hr_channels, HEADS, 1)
        with torch.no_grad():  # start with sum p near the mean training count, not n / 2
            prior = (max_targets + 1) / 2 / self.grid.n_hr
            self.head.bias[0] = math.log(prior / (1 - prior))
        self.reach, self.scale = float(reach), float(scale)
        self.detect_threshold, self.count_weight = float(detect_threshold), float(count_weight)
        self.sampler = SceneSampler(physics, self.window, max_targets, spread, speed, tuple(brightness), noise,
                                    background)
        side = self.grid.hr_size
        centres = (torch.arange(side, dtype=torch.float32) - (c - 1) / 2) / c  # HR cell centres in LR px
        self.register_buffer("centre_x", centres[:, None].expand(side, side).clone(), persistent=False)
        self.register_buffer("centre_y", centres[None, :].expand(side, side).clone(), persistent=False)

    def fields(self, lr: torch.Tensor) -> dict[str, torch.Tensor]:
        """(B, W, m, m) raw windows -> per-cell maps (B, c m, c m): p, x, y (LR px), brightness
        (counts) and sx, sy (LR px), sb (counts)."""
        m = self.grid.size
        if lr.ndim != 4 or lr.shape[2:] != (m, m) or lr.shape[1] != self.window:
            raise ValueError(f"lr must have shape (B, {self.window}, {m}, {m}), got {tuple(lr.shape)}")
        features = F.relu(self.stem(lr.to(self.centre_x.dtype) / self.scale))
        for block in self.body:
            features = F.relu(features + block(features))
        out = self.head(F.relu(self.refine(F.relu(self.upsample(features)))))
        cell = 1.0 / self.grid.c
        sigma = MIN_SIGMA + (MAX_SIGMA - MIN_SIGMA) * torch.sigmoid(out[:, 4:7])
        return {"p": torch.sigmoid(out[:, 0]),
                "x": self.centre_x + self.reach * cell * torch.tanh(out[:, 1]),
                "y": self.centre_y + self.reach * cell * torch.tanh(out[:, 2]),
                "brightness": self.scale * F.softplus(out[:, 3]),
                "sx": sigma[:, 0], "sy": sigma[:, 1], "sb": self.scale * sigma[:, 2]}

    def decode(self, fields: dict[str, torch.Tensor]) -> list[np.ndarray]:
        """Per window a float64 (n, 3) array of detections (x, y, score), no grid snapping."""
        p = fields["p"]
        neighbours = F.avg_pool2d(p[:, None], 3, stride=1, padding=1, count_include_pad=True)[:, 0] * 9
        peak = p == F.max_pool2d(p[:, None], 3, stride=1, padding=1)[:, 0]
        score = torch.where(peak, neighbours.clamp_max(1.0), p)
        keep = (score > self.detect_threshold) & (peak | (p > 0.5))
        window, row, column = keep.nonzero(as_tuple=True)
        found = torch.stack([fields["x"][window, row, column], fields["y"][window, row, column],
                             score[window, row, column]], dim=1).double().cpu().numpy()
        counts = np.bincount(window.cpu().numpy(), minlength=p.shape[0])
        return np.split(found, np.cumsum(counts)[:-1])

    def forward(self, lr: torch.Tensor) -> MethodOutput:
        """(B, W, m, m) raw windows -> HR map (each detection's brightness in its cell) and detections."""
        fields = self.fields(lr)
        detections = None if torch.is_grad_enabled() else self.decode(fields)
        hr = fields["p"] * fields["brightness"]
        return MethodOutput(hr=hr, extras={"fields": fields}, detections=detections)

    def loss(self, output: MethodOutput, target_hr: torch.Tensor) -> tuple[torch.Tensor, dict[str, float]]:
        """Mixture NLL of freshly simulated targets plus the count term, on a batch of
        simulated scenes the size of the trainer's (``output`` and ``target_hr`` set only that)."""
        lr, targets, mask = self.sampler.sample(len(target_hr), target_hr.device)
        fields = self.fields(lr)
        p = fields["p"].flatten(1)  # (B, N)
        expected = p.sum(1)
        variance = (p * (1 - p)).sum(1).clamp_min(1e-6)
        count = mask.sum(1).to(p.dtype)
        count_nll = 0.5 * (count - expected) ** 2 / variance + 0.5 * torch.log(2 * math.pi * variance)
        means = torch.stack([fields["x"].flatten(1), fields["y"].flatten(1), fields["brightness"].flatten(1) / self.scale], -1)
        stds = torch.stack([fields["sx"].flatten(1), fields["sy"].flatten(1), fields["sb"].flatten(1) / self.scale], -1)
        truth = torch.cat([targets[..., :2], targets[..., 2:] / self.scale], -1)  # (B, K, 3)
        z = (truth[:, :, None, :] - means[:, None]) / stds[:, None]  # (B, K, N, 3)
        component = -0.5 * (z ** 2).sum(-1) - torch.log(stds).sum(-1)[:, None] - 1.5 * math.log(2 * math.pi)
        weights = torch.log(p / expected.clamp_min(1e-6)[:, None] + 1e-12)[:, None]
        target_nll = -torch.logsumexp(component + weights, dim=2)  # (B, K)
        location = (target_nll * mask).sum(1) / count.clamp_min(1)
        total = (location + self.count_weight * count_nll).mean()
        return total, {"location_nll": location.mean().item(), "count_nll": count_nll.mean().item()}
