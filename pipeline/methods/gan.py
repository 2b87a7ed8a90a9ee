"""SRGAN, ESRGAN and BSRGAN (docs/methods.md §6, §10 B8): adversarial x c super-resolution of the
middle LR frame.

The method is the generator; its ``discriminator`` submodule is trained by the one trainer with
its own optimiser (pipeline/training.py alternates a generator and a discriminator step). The
generator loss is pixel L1 (weight 1e-2) + VGG19 perceptual L1 at conv5_4 (weight 1) + GAN
term (weight 5e-3): vanilla BCE for SRGAN, relativistic average (RaGAN) for ESRGAN and BSRGAN.

Fixed against the reference (§10 B8): generators take (B, 1, m, m) maps (not flat rows) and
upsample x c natively; the perceptual loss sees (B, 1, c m, c m) maps repeated to 3 channels
(not a broadcast flat tensor) scaled to [0, 1]. No ``faithful`` switch: the shipped code cannot
run these networks unpatched. Without pretrained VGG19 weights (no downloads here) the
perceptual term uses a randomly initialised VGG19 unless ``perceptual_weights`` is given (the
tensors of a torchvision VGG19 state_dict; params.yaml names its file and sha256, the stages
read it); ``perceptual_source`` says which.

Published parameter counts (Table VII) are generator + discriminator + the perceptual VGG19
truncated at conv5_4 (20,024,384), which our counts reproduce exactly; the tables count only
the generator (the network that is evaluated).
"""
from __future__ import annotations

from typing import ClassVar, Mapping

import torch
from torch import nn
from torch.nn import functional as F

from pipeline.methods.base import MethodOutput, PhysicsOperator, UnmixingMethod
from pipeline.methods.blocks.adversarial import (RRDB, LEAK, UNetDiscriminator, VGGPerceptualLoss,
                                                 VGGStyleDiscriminator, bce_logits, frozen,
                                                 relativistic_discriminator_loss,
                                                 relativistic_generator_loss)
from pipeline.methods.blocks.super_resolution import PixelShuffleUpsampler, ResidualBlock, scaled_kaiming_
from pipeline.methods.registry import register_model


class _AdversarialSR(UnmixingMethod):
    """Shared by the three GANs: middle frame in, ``generate`` (subclass), losses.

    ``relativistic``: RaGAN (ESRGAN, BSRGAN) instead of the vanilla GAN loss (SRGAN).
    """

    family = "super_resolution"
    relativistic: ClassVar[bool] = False
    paper_requires = {"perceptual_weights": "a torchvision VGG19 ImageNet state_dict file (vgg19-dcbb9e9d.pth) with its "
                                            "sha256 in perceptual_sha256: the published rows use an ImageNet-trained VGG19"}
    weight_files = {"perceptual_weights": "perceptual_sha256"}

    def __init__(self, physics: PhysicsOperator, discriminator: nn.Module, pixel_weight: float,
                 perceptual_weight: float, adversarial_weight: float, perceptual_layer: int,
                 perceptual_weights: Mapping[str, torch.Tensor] | None, perceptual_scale: float) -> None:
        super().__init__(physics)
        self.discriminator = discriminator
        self.perceptual = VGGPerceptualLoss(perceptual_layer, perceptual_weights, perceptual_scale)
        self.pixel_weight = float(pixel_weight)
        self.perceptual_weight = float(perceptual_weight)
        self.adversarial_weight = float(adversarial_weight)

    @property
    def perceptual_source(self) -> str:
        """Which VGG19 the perceptual loss uses (a weights file or the untrained network)."""
        return self.perceptual.source

    def generate(self, frames: torch.Tensor) -> torch.Tensor:
        """(B, 1, m, m) raw LR frames -> (B, 1, c m, c m) raw HR maps."""
        raise NotImplementedError

    def forward(self, lr: torch.Tensor) -> MethodOutput:
        """(B, W, m, m) raw LR windows -> hr (B, c m, c m) from the middle frame."""
        m = self.grid.size
        frames = self.middle_frame(lr).reshape(-1, 1, m, m)
        return MethodOutput(hr=self.generate(frames).squeeze(1))

    def loss(self, output: MethodOutput, target_hr: torch.Tensor
             ) -> tuple[torch.Tensor, dict[str, float]]:
        """pixel_weight L1 + perceptual_weight VGG + adversarial_weight GAN (discriminator frozen);
        components {"mse", "pixel_l1", "perceptual", "adversarial"} (unweighted)."""
        mse = self.mse(output, target_hr)  # also checks the shapes
        fake = output.hr.unsqueeze(1)
        real = target_hr.to(fake.dtype).unsqueeze(1)
        pixel = F.l1_loss(fake, real)
        perceptual = self.perceptual(fake, real)
        with frozen(self.discriminator):
            fake_logits = self.discriminator(fake)
            if self.relativistic:
                adversarial = relativistic_generator_loss(self.discriminator(real), fake_logits)
            else:
                adversarial = bce_logits(fake_logits, True)
        total = (self.pixel_weight * pixel + self.perceptual_weight * perceptual
                 + self.adversarial_weight * adversarial)
        return total, {"mse": mse.item(), "pixel_l1": pixel.item(), "perceptual": perceptual.item(),
                       "adversarial": adversarial.item()}

    def discriminator_loss(self, output: MethodOutput, target_hr: torch.Tensor
                           ) -> tuple[torch.Tensor, dict[str, float]]:
        """BCE(D(real) -> 1) + BCE(D(fake) -> 0) (SRGAN) or the RaGAN discriminator loss, on
        detached outputs; {"discriminator"}."""
        fake = output.hr.detach().unsqueeze(1)
        real = target_hr.to(fake.dtype).unsqueeze(1)
        real_logits, fake_logits = self.discriminator(real), self.discriminator(fake)
        if self.relativistic:
            total = relativistic_discriminator_loss(real_logits, fake_logits)
        else:
            total = bce_logits(real_logits, True) + bce_logits(fake_logits, False)
        return total, {"discriminator": total.item()}


@register_model("srgan")
class SRGAN(_AdversarialSR):
    """Generator mmagic ``MSRResNet``: conv 1 -> C, LeakyReLU 0.1, ``blocks`` residual blocks
    (conv-ReLU-conv, no BN), conv C -> C c^2 + PixelShuffle(c), LeakyReLU 0.1, conv C -> C,
    LeakyReLU 0.1, conv C -> 1, plus the bilinearly x c upsampled input. Discriminator
    ``VGGStyleDiscriminator`` (mmagic ``ModifiedVGG``), vanilla GAN loss.

    Defaults (C = 64, 16 blocks, discriminator 64): generator 1,552,193 parameters,
    discriminator 13,730,249, perceptual VGG 20,024,384; sum 35,306,826 = published 35.31 M.
    """

    label = "SRGAN"
    smoke_params: ClassVar[dict] = {"channels": 8, "blocks": 1, "discriminator_channels": 4,
                                    "perceptual_layer": 2}

    def __init__(self, physics: PhysicsOperator, channels: int = 64, blocks: int = 16,
                 discriminator_channels: int = 64, pixel_weight: float = 1e-2,
                 perceptual_weight: float = 1.0, adversarial_weight: float = 5e-3,
                 perceptual_layer: int = 34, perceptual_weights: Mapping[str, torch.Tensor] | None = None,
                 perceptual_scale: float = 255.0) -> None:
        super().__init__(physics, VGGStyleDiscriminator(physics.grid.hr_size, discriminator_channels),
                         pixel_weight, perceptual_weight, adversarial_weight, perceptual_layer,
                         perceptual_weights, perceptual_scale)
        c = self.grid.c
        self.conv_first = nn.Conv2d(1, channels, 3, padding=1)
        self.trunk = nn.Sequential(*(ResidualBlock(channels, init_scale=0.1) for _ in range(blocks)))
        self.upsample = PixelShuffleUpsampler(channels, channels, c)
        self.conv_hr = nn.Conv2d(channels, channels, 3, padding=1)
        self.conv_last = nn.Conv2d(channels, 1, 3, padding=1)
        for conv in (self.conv_first, self.conv_hr, self.conv_last):
            scaled_kaiming_(conv, 0.1)

    def generate(self, frames: torch.Tensor) -> torch.Tensor:
        """(B, 1, m, m) -> (B, 1, c m, c m)."""
        features = F.leaky_relu(self.conv_first(frames), 0.1)
        features = F.leaky_relu(self.upsample(self.trunk(features)), 0.1)
        residual = self.conv_last(F.leaky_relu(self.conv_hr(features), 0.1))
        base = F.interpolate(frames, scale_factor=self.grid.c, mode="bilinear", align_corners=False)
        return residual + base


class _RRDBGenerator(_AdversarialSR):
    """Generator mmagic ``RRDBNet`` at x c: conv 1 -> C, ``blocks`` RRDBs (growth G), conv C -> C
    added to the first features; nearest x c, conv C -> C, LeakyReLU 0.2, conv C -> C, LeakyReLU
    0.2 (mmagic's two up-convolutions, kept at one x c interpolation so that the count matches
    the published one), conv C -> C, LeakyReLU 0.2, conv C -> 1. No input residual.
    """

    relativistic = True

    def __init__(self, physics: PhysicsOperator, discriminator: nn.Module, channels: int,
                 blocks: int, growth: int, pixel_weight: float, perceptual_weight: float,
                 adversarial_weight: float, perceptual_layer: int, perceptual_weights: Mapping[str, torch.Tensor] | None,
                 perceptual_scale: float) -> None:
        super().__init__(physics, discriminator, pixel_weight, perceptual_weight, adversarial_weight,
                         perceptual_layer, perceptual_weights, perceptual_scale)
        self.conv_first = nn.Conv2d(1, channels, 3, padding=1)
        self.body = nn.Sequential(*(RRDB(channels, growth) for _ in range(blocks)))
        self.conv_body = nn.Conv2d(channels, channels, 3, padding=1)
        self.conv_up = nn.ModuleList(nn.Conv2d(channels, channels, 3, padding=1) for _ in range(2))
        self.conv_hr = nn.Conv2d(channels, channels, 3, padding=1)
        self.conv_last = nn.Conv2d(channels, 1, 3, padding=1)
        for conv in (self.conv_first, self.conv_body, *self.conv_up, self.conv_hr, self.conv_last):
            scaled_kaiming_(conv, 0.1)

    def generate(self, frames: torch.Tensor) -> torch.Tensor:
        """(B, 1, m, m) -> (B, 1, c m, c m)."""
        features = self.conv_first(frames)
        features = features + self.conv_body(self.body(features))
        features = F.interpolate(features, scale_factor=self.grid.c, mode="nearest")
        for conv in self.conv_up:
            features = F.leaky_relu(conv(features), LEAK)
        return self.conv_last(F.leaky_relu(self.conv_hr(features), LEAK))


@register_model("esrgan")
class ESRGAN(_RRDBGenerator):
    """RRDB generator (C = 64, 23 RRDBs, growth 32), ``VGGStyleDiscriminator``, RaGAN loss.

    Defaults: generator 16,695,681 parameters, discriminator 13,730,249, perceptual VGG
    20,024,384; sum 50,450,314 = published 50.45 M. The reference's x4 RGB DIV2K checkpoint
    cannot load into a 1-channel x3 network (§10 B8): training starts from scratch.
    """

    label = "ESRGAN"
    smoke_params: ClassVar[dict] = {"channels": 8, "blocks": 1, "growth": 4,
                                    "discriminator_channels": 4, "perceptual_layer": 2}

    def __init__(self, physics: PhysicsOperator, channels: int = 64, blocks: int = 23,
                 growth: int = 32, discriminator_channels: int = 64, pixel_weight: float = 1e-2,
                 perceptual_weight: float = 1.0, adversarial_weight: float = 5e-3,
                 perceptual_layer: int = 34, perceptual_weights: Mapping[str, torch.Tensor] | None = None,
                 perceptual_scale: float = 255.0) -> None:
        super().__init__(physics, VGGStyleDiscriminator(physics.grid.hr_size, discriminator_channels),
                         channels, blocks, growth, pixel_weight, perceptual_weight,
                         adversarial_weight, perceptual_layer, perceptual_weights, perceptual_scale)


@register_model("bsrgan")
class BSRGAN(_RRDBGenerator):
    """RRDB generator (C = 64, 16 RRDBs, growth 32), spectral-norm ``UNetDiscriminator``
    (per-pixel logits), RaGAN loss: as shipped, ESRGAN with a U-Net discriminator; there is no
    BSRGAN degradation synthesis (§10 B8), and the frames already come from our sensor model.

    A zero map is a stationary point of the pixel L1 + perceptual terms on sparse targets (an
    RRDB generator starts near it, having no input residual): early progress comes from the
    adversarial term. Defaults: generator 11,659,713 parameters, discriminator 4,375,745, perceptual VGG
    20,024,384; sum 36,059,842 = published 36.06 M.
    """

    label = "BSRGAN"
    smoke_params: ClassVar[dict] = {"channels": 8, "blocks": 1, "growth": 4,
                                    "discriminator_channels": 16, "perceptual_layer": 2}

    def __init__(self, physics: PhysicsOperator, channels: int = 64, blocks: int = 16,
                 growth: int = 32, discriminator_channels: int = 64, pixel_weight: float = 1e-2,
                 perceptual_weight: float = 1.0, adversarial_weight: float = 5e-3,
                 perceptual_layer: int = 34, perceptual_weights: Mapping[str, torch.Tensor] | None = None,
                 perceptual_scale: float = 255.0) -> None:
        super().__init__(physics, UNetDiscriminator(discriminator_channels), channels, blocks,
                         growth, pixel_weight, perceptual_weight, adversarial_weight,
                         perceptual_layer, perceptual_weights, perceptual_scale)
