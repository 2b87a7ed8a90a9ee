"""Pieces of the GAN super-resolution baselines (docs/methods.md §6): RRDB, the two discriminators,
the VGG19 perceptual loss and the (relativistic) GAN objectives.

Every map here is a (B, 1, H, W) raw-brightness image (HR side H = W = c m); nothing is
normalised except inside the perceptual loss, which rescales for the VGG only.
"""
from __future__ import annotations

import contextlib
from typing import Iterator, Mapping

import torch
from torch import nn
from torch.nn import functional as F
from torch.nn.utils.parametrizations import spectral_norm

from pipeline.methods.blocks.super_resolution import scaled_kaiming_

LEAK = 0.2  # LeakyReLU slope of RRDB and both discriminators


# ---------------------------------------------------------------------------------- generator


class ResidualDenseBlock(nn.Module):
    """Five densely connected 3x3 convolutions (growth ``growth``), LeakyReLU 0.2 between them;
    out = x + 0.2 conv5(...). Kaiming-normal x 0.1 weights. 239,808 parameters at (64, 32)."""

    def __init__(self, channels: int, growth: int) -> None:
        super().__init__()
        widths = [channels + index * growth for index in range(5)]
        self.convs = nn.ModuleList(nn.Conv2d(width, growth, 3, padding=1) for width in widths[:4])
        self.fuse = nn.Conv2d(widths[4], channels, 3, padding=1)
        scaled_kaiming_(self, 0.1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """(B, C, H, W) -> (B, C, H, W)."""
        features = [x]
        for conv in self.convs:
            features.append(F.leaky_relu(conv(torch.cat(features, dim=1)), LEAK))
        return x + 0.2 * self.fuse(torch.cat(features, dim=1))


class RRDB(nn.Module):
    """Residual-in-residual dense block: x + 0.2 (three ResidualDenseBlocks)(x).
    719,424 parameters at (64, 32)."""

    def __init__(self, channels: int, growth: int) -> None:
        super().__init__()
        self.blocks = nn.Sequential(*(ResidualDenseBlock(channels, growth) for _ in range(3)))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """(B, C, H, W) -> (B, C, H, W)."""
        return x + 0.2 * self.blocks(x)


# ----------------------------------------------------------------------------- discriminators


class VGGStyleDiscriminator(nn.Module):
    """mmagic's ``ModifiedVGG`` for (B, 1, side, side) maps -> (B, 1) logits.

    Five stages [conv3x3 s1, conv4x4 s2 p1] with widths C, 2C, 4C, 8C, 8C (batch norm after every
    convolution but the first, which alone has a bias; LeakyReLU 0.2), then Linear -> ``hidden``
    -> 1. Each stride-2 conv halves the side (floor): 33 -> 16 -> 8 -> 4 -> 2 -> 1 and
    55 -> 27 -> 13 -> 6 -> 3 -> 1, so the first Linear sees 8C (side / 32)^2 features (512 at
    C = 64 and c = 3 or 5; the original's 128 x 128 input gave 8C x 16). PyTorch default init.
    13,730,249 parameters at C = 64, side 33.
    """

    def __init__(self, side: int, channels: int = 64, hidden: int = 100) -> None:
        super().__init__()
        widths = [channels, channels, 2 * channels, 4 * channels, 8 * channels, 8 * channels]
        layers: list[nn.Module] = [nn.Conv2d(1, channels, 3, padding=1), nn.LeakyReLU(LEAK)]
        for stage in range(5):
            if stage:
                layers += [nn.Conv2d(widths[stage], widths[stage + 1], 3, padding=1, bias=False),
                           nn.BatchNorm2d(widths[stage + 1]), nn.LeakyReLU(LEAK)]
            layers += [nn.Conv2d(widths[stage + 1], widths[stage + 1], 4, stride=2, padding=1, bias=False),
                       nn.BatchNorm2d(widths[stage + 1]), nn.LeakyReLU(LEAK)]
            side //= 2
        if side < 1:
            raise ValueError("VGGStyleDiscriminator needs maps of side >= 32")
        self.features = nn.Sequential(*layers)
        self.head = nn.Sequential(nn.Flatten(), nn.Linear(widths[-1] * side * side, hidden),
                                  nn.LeakyReLU(LEAK), nn.Linear(hidden, 1))

    def forward(self, maps: torch.Tensor) -> torch.Tensor:
        """(B, 1, side, side) -> (B, 1) logits."""
        return self.head(self.features(maps))


class UNetDiscriminator(nn.Module):
    """mmagic's ``UNetDiscriminatorWithSpectralNorm`` (BSRGAN): (B, 1, H, W) -> (B, 1, H, W)
    per-pixel logits.

    conv0 3x3 1 -> C; three spectral-normed 4x4 stride-2 convs C -> 2C -> 4C -> 8C (33 -> 16 -> 8
    -> 4); three [bilinear resize to the matching encoder map, spectral-normed 3x3 conv, LeakyReLU,
    add that encoder map] 8C -> 4C -> 2C -> C (the resizes are x2 except the last, 16 -> 33);
    two more spectral-normed 3x3 convs C -> C; conv9 3x3 C -> 1. Only conv0 and conv9 have
    biases; PyTorch default init. 4,375,745 parameters at C = 64 (spectral norm adds buffers,
    no parameters).
    """

    def __init__(self, channels: int = 64) -> None:
        super().__init__()
        widths = [channels, 2 * channels, 4 * channels, 8 * channels]
        self.conv0 = nn.Conv2d(1, channels, 3, padding=1)
        self.down = nn.ModuleList(
            spectral_norm(nn.Conv2d(widths[i], widths[i + 1], 4, stride=2, padding=1, bias=False))
            for i in range(3))
        self.up = nn.ModuleList(
            spectral_norm(nn.Conv2d(widths[i + 1], widths[i], 3, padding=1, bias=False))
            for i in reversed(range(3)))
        self.refine = nn.ModuleList(
            spectral_norm(nn.Conv2d(channels, channels, 3, padding=1, bias=False)) for _ in range(2))
        self.conv9 = nn.Conv2d(channels, 1, 3, padding=1)

    def forward(self, maps: torch.Tensor) -> torch.Tensor:
        """(B, 1, H, W) -> (B, 1, H, W) logits."""
        skips = [F.leaky_relu(self.conv0(maps), LEAK)]
        for conv in self.down:
            skips.append(F.leaky_relu(conv(skips[-1]), LEAK))
        features = skips.pop()
        for conv in self.up:
            skip = skips.pop()
            features = F.interpolate(features, size=skip.shape[-2:], mode="bilinear", align_corners=False)
            features = F.leaky_relu(conv(features), LEAK) + skip
        for conv in self.refine:
            features = F.leaky_relu(conv(features), LEAK)
        return self.conv9(features)


@contextlib.contextmanager
def frozen(module: nn.Module) -> Iterator[nn.Module]:
    """Switch off ``requires_grad`` of ``module``'s parameters inside the block (the generator
    step then computes no discriminator weight gradients), restoring the flags afterwards."""
    parameters = list(module.parameters())
    flags = [p.requires_grad for p in parameters]
    for p in parameters:
        p.requires_grad_(False)
    try:
        yield module
    finally:
        for p, flag in zip(parameters, flags):
            p.requires_grad_(flag)


def bce_logits(logits: torch.Tensor, real: bool) -> torch.Tensor:
    """Element-mean binary cross-entropy of ``logits`` against all-1 (real) or all-0 labels."""
    labels = torch.ones_like(logits) if real else torch.zeros_like(logits)
    return F.binary_cross_entropy_with_logits(logits, labels)


def relativistic_generator_loss(real_logits: torch.Tensor, fake_logits: torch.Tensor) -> torch.Tensor:
    """RaGAN, generator side (ESRGAN): mean of BCE(D(fake) - mean D(real) -> real) and
    BCE(D(real) - mean D(fake) -> fake), D(real) detached."""
    real_logits = real_logits.detach()
    return 0.5 * (bce_logits(fake_logits - real_logits.mean(), True)
                  + bce_logits(real_logits - fake_logits.mean(), False))


def relativistic_discriminator_loss(real_logits: torch.Tensor, fake_logits: torch.Tensor) -> torch.Tensor:
    """RaGAN, discriminator side: 0.5 BCE(D(real) - mean D(fake) -> real) + 0.5 BCE(D(fake) -
    mean D(real) -> fake); D(fake) comes from detached outputs and mean D(real) is detached in
    the second term, as in mmagic's two-pass update."""
    return (0.5 * bce_logits(real_logits - fake_logits.mean(), True)
            + 0.5 * bce_logits(fake_logits - real_logits.detach().mean(), False))


# --------------------------------------------------------------------------- perceptual loss

def vgg19_layers() -> list:
    """torchvision's VGG19 layer list: widths and "M" (max-pool); imported when a perceptual
    loss is built, so stages of other methods do not pay torchvision's import."""
    from torchvision.models.vgg import cfgs

    return list(cfgs["E"])


IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)


def _leave_out_frozen_layers(module: nn.Module, state: dict, prefix: str, metadata) -> None:
    """state_dict hook: drop the frozen VGG's entries (``<prefix>layers.*``)."""
    for key in [key for key in state if key.startswith(f"{prefix}layers.")]:
        del state[key]


def _keep_frozen_layers(module: nn.Module, state: dict, prefix: str, *args) -> None:
    """load_state_dict pre-hook: a state_dict without the VGG (as saved) keeps the built VGG;
    one with it (older files) loads it, and their fixed ImageNet statistics are ignored."""
    for key, value in module.layers.state_dict(prefix=f"{prefix}layers.").items():
        state.setdefault(key, value)
    for name in ("mean", "std"):
        state.pop(f"{prefix}{name}", None)


class VGGPerceptualLoss(nn.Module):
    """L1 distance between VGG19 features of two (B, 1, H, W) raw-brightness maps (mean over
    elements), taken after ``torchvision.models.vgg19().features[layer]`` (default 34 = conv5_4
    before its ReLU, "VGG54"; layer indices and weight names are torchvision's).

    How 1-channel raw maps reach the VGG: divided by ``scale`` (default 255, the 8-bit full
    scale, so targets of 220-250 land near the [0, 1] range the network expects), repeated to 3
    channels, then normalised with the ImageNet mean and std. The reference fed raw values.

    Weights: ``weights`` is a torchvision VGG19 state_dict (``features.<i>.*`` keys; the
    classifier is ignored) or a state_dict of these layers alone (``<i>.*``), as tensors (the
    stages read the file). Without one, the network keeps torchvision's VGG initialisation
    (Kaiming-normal fan-out, zero bias): a random-feature loss. ``source`` says which. The VGG is frozen (its
    parameters have requires_grad False and are never optimised); 20,024,384 of them at 34.
    Being a fixed input rather than something trained, it is left out of every state_dict
    (checkpoints, best weights, the model file: 80 MB less each) and kept as built when a
    state_dict without it is loaded.
    """

    def __init__(self, layer: int = 34, weights: Mapping[str, torch.Tensor] | None = None, scale: float = 255.0) -> None:
        super().__init__()
        configuration = vgg19_layers()
        depth = sum(1 if entry == "M" else 2 for entry in configuration)
        if not 0 <= layer < depth:
            raise ValueError(f"perceptual layer must index torchvision's VGG19 features "
                             f"(0..{depth - 1}), got {layer}")
        if scale <= 0:
            raise ValueError(f"perceptual scale must be positive, got {scale}")
        layers: list[nn.Module] = []
        width = 3
        for entry in configuration:
            if entry == "M":
                layers.append(nn.MaxPool2d(2, 2))
            else:
                layers += [nn.Conv2d(width, entry, 3, padding=1), nn.ReLU()]
                width = entry
            if len(layers) > layer:
                break
        self.layers = nn.Sequential(*layers[:layer + 1])
        for module in self.layers:
            if isinstance(module, nn.Conv2d):
                nn.init.kaiming_normal_(module.weight, mode="fan_out", nonlinearity="relu")
                nn.init.zeros_(module.bias)
        if weights is not None:
            self.layers.load_state_dict(self._layers_of(weights, layer))
        self.layers.requires_grad_(False)
        self.scale = float(scale)
        self.source = "pretrained VGG19 weights" if weights is not None else "untrained VGG19"
        self.register_buffer("mean", torch.tensor(IMAGENET_MEAN).reshape(1, 3, 1, 1), persistent=False)
        self.register_buffer("std", torch.tensor(IMAGENET_STD).reshape(1, 3, 1, 1), persistent=False)
        self._register_state_dict_hook(_leave_out_frozen_layers)
        self.register_load_state_dict_pre_hook(_keep_frozen_layers)

    @staticmethod
    def _layers_of(state: Mapping[str, torch.Tensor], layer: int) -> dict:
        """The entries of layers 0..layer of a VGG19 state_dict (either key style)."""
        kept = {}
        for key, value in state.items():
            name = key.removeprefix("features.")
            index = name.split(".")[0]
            if index.isdigit() and int(index) <= layer and name.count(".") == 1:
                kept[name] = value
        return kept

    def features(self, maps: torch.Tensor) -> torch.Tensor:
        """(B, 1, H, W) raw maps -> VGG features at the chosen layer."""
        images = maps.expand(-1, 3, -1, -1) / self.scale
        return self.layers((images - self.mean) / self.std)

    def forward(self, output: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        """Mean |phi(output) - phi(target)| with phi the frozen VGG; gradient flows to output only."""
        with torch.no_grad():
            reference = self.features(target)
        return F.l1_loss(self.features(output), reference)
