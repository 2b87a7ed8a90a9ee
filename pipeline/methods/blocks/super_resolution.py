"""Building blocks of the super-resolution networks (docs/methods.md §6).

Every network here maps the LR middle frame (B, 1, m, m) to an HR map (B, 1, c m, c m) with a
learned up-sampler for the odd factor c of the physics grid: residual blocks without batch norm
(EDSR), residual dense blocks (RDN, GMFN), a pixel-shuffle up-sampler, a transposed-convolution
up-sampler and the back-projection units built from it (DBPN). Raw intensities in and out.
"""
from __future__ import annotations

from typing import Callable

import torch
from torch import nn

from pipeline.methods.base import MethodOutput, UnmixingMethod

PRELU_INIT = 0.2  # negative slope PReLUs start from (DBPN, GMFN)


def same_conv(in_channels: int, out_channels: int, kernel_size: int = 3) -> nn.Conv2d:
    """Stride-1 convolution with bias that keeps the map size (odd ``kernel_size``)."""
    if kernel_size < 1 or kernel_size % 2 == 0:
        raise ValueError(f"kernel_size must be odd and >= 1, got {kernel_size}")
    return nn.Conv2d(in_channels, out_channels, kernel_size, padding=kernel_size // 2)


def scaled_kaiming_(module: nn.Module, scale: float) -> None:
    """Kaiming-normal (fan-in, ReLU gain) weights times ``scale`` and zero biases for every
    convolution and linear layer in ``module`` (mmagic's ``default_init_weights``)."""
    for layer in module.modules():
        if isinstance(layer, (nn.Conv2d, nn.Linear)):
            nn.init.kaiming_normal_(layer.weight, mode="fan_in", nonlinearity="relu")
            with torch.no_grad():
                layer.weight.mul_(scale)
            if layer.bias is not None:
                nn.init.zeros_(layer.bias)


def prelu() -> nn.PReLU:
    """One shared negative slope, initialised to 0.2."""
    return nn.PReLU(num_parameters=1, init=PRELU_INIT)


class ResidualBlock(nn.Module):
    """x + res_scale * conv(ReLU(conv(x))), 3x3 convolutions with bias, no batch norm (EDSR,
    MSRResNet, TDAN).

    ``init_scale``: Kaiming-normal weights times this (0.1 lets a deep stack start close to the
    identity, mmagic's convention); None keeps torch's default. (B, C, H, W) -> (B, C, H, W);
    2 (9 C^2 + C) parameters.
    """

    def __init__(self, channels: int, res_scale: float = 1.0, init_scale: float | None = None) -> None:
        super().__init__()
        self.body = nn.Sequential(same_conv(channels, channels), nn.ReLU(),
                                  same_conv(channels, channels))
        self.res_scale = float(res_scale)
        if init_scale is not None:
            scaled_kaiming_(self, init_scale)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x + self.res_scale * self.body(x)


class ResidualDenseBlock(nn.Module):
    """Dense block of ``layers`` 3x3 conv + activation layers, each reading the concatenation of
    the input and every earlier layer's ``growth`` new channels, then a 1x1 local fusion back to
    ``channels`` and x + res_scale * fused (RDN's RDB; GMFN's RDB with PReLU and 0.2).

    (B, channels, H, W) -> (B, channels, H, W).
    """

    def __init__(self, channels: int, growth: int, layers: int,
                 activation: Callable[[], nn.Module] = nn.ReLU, res_scale: float = 1.0) -> None:
        super().__init__()
        if layers < 1:
            raise ValueError(f"a dense block needs at least one layer, got {layers}")
        self.layers = nn.ModuleList(
            nn.Sequential(same_conv(channels + index * growth, growth), activation())
            for index in range(layers))
        self.fusion = same_conv(channels + layers * growth, channels, 1)
        self.res_scale = float(res_scale)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        stack = x
        for layer in self.layers:
            stack = torch.cat((stack, layer(stack)), dim=1)
        return x + self.res_scale * self.fusion(stack)


class PixelShuffleUpsampler(nn.Sequential):
    """Convolution to ``out_channels`` x factor^2 channels, then PixelShuffle(factor):
    (B, in_channels, H, W) -> (B, out_channels, factor H, factor W)."""

    def __init__(self, in_channels: int, out_channels: int, factor: int,
                 kernel_size: int = 3) -> None:
        super().__init__(same_conv(in_channels, out_channels * factor * factor, kernel_size),
                         nn.PixelShuffle(factor))


def projection_kernel(factor: int) -> tuple[int, int, int]:
    """(kernel, stride, padding) = (factor + 4, factor, 2) of a (transposed) convolution that maps
    m <-> factor m exactly and centres each LR pixel on its middle HR cell (7, 3, 2 for factor 3)."""
    if factor < 1 or factor % 2 == 0:
        raise ValueError(f"the up-sampling factor must be odd and >= 1, got {factor}")
    return factor + 4, factor, 2


def deconv_upsampler(in_channels: int, out_channels: int, factor: int) -> nn.Sequential:
    """Transposed convolution (factor + 4, stride factor, padding 2) and PReLU:
    (B, in_channels, H, W) -> (B, out_channels, factor H, factor W)."""
    kernel, stride, padding = projection_kernel(factor)
    return nn.Sequential(nn.ConvTranspose2d(in_channels, out_channels, kernel, stride, padding),
                         prelu())


def strided_downsampler(in_channels: int, out_channels: int, factor: int) -> nn.Sequential:
    """Convolution (factor + 4, stride factor, padding 2) and PReLU, the mirror of
    :func:`deconv_upsampler`: (B, in, factor H, factor W) -> (B, out, H, W)."""
    kernel, stride, padding = projection_kernel(factor)
    return nn.Sequential(nn.Conv2d(in_channels, out_channels, kernel, stride, padding), prelu())


class UpProjection(nn.Module):
    """DBPN up-projection: H0 = up(L), L0 = down(H0), H1 = up(L0 - L), out H0 + H1.

    (B, C, H, W) -> (B, C, factor H, factor W); 3 (C^2 (factor + 4)^2 + C + 1) parameters.
    """

    def __init__(self, channels: int, factor: int) -> None:
        super().__init__()
        self.up = deconv_upsampler(channels, channels, factor)
        self.down = strided_downsampler(channels, channels, factor)
        self.up_residual = deconv_upsampler(channels, channels, factor)

    def forward(self, low: torch.Tensor) -> torch.Tensor:
        high = self.up(low)
        return high + self.up_residual(self.down(high) - low)


class DownProjection(nn.Module):
    """DBPN down-projection: L0 = down(H), H0 = up(L0), L1 = down(H0 - H), out L0 + L1.

    (B, C, factor H, factor W) -> (B, C, H, W); as many parameters as :class:`UpProjection`.
    """

    def __init__(self, channels: int, factor: int) -> None:
        super().__init__()
        self.down = strided_downsampler(channels, channels, factor)
        self.up = deconv_upsampler(channels, channels, factor)
        self.down_residual = strided_downsampler(channels, channels, factor)

    def forward(self, high: torch.Tensor) -> torch.Tensor:
        low = self.down(high)
        return low + self.down_residual(self.up(low) - high)


class LowResolutionNetwork(UnmixingMethod):
    """Base of the single-frame networks that super-resolve the LR middle frame itself (no Q_init):
    subclasses implement :meth:`super_resolve` on (B, 1, m, m) raw images."""

    family = "super_resolution"

    def lr_image(self, lr: torch.Tensor) -> torch.Tensor:
        """Middle frame of (B, W, m, m) windows as a (B, 1, m, m) image in the physics' dtype."""
        m = self.grid.size
        return self.middle_frame(lr).reshape(-1, 1, m, m)

    def super_resolve(self, image: torch.Tensor) -> torch.Tensor:
        """(B, 1, m, m) raw LR image -> (B, 1, c m, c m) HR map in raw brightness units."""
        raise NotImplementedError(f"{type(self).__name__} does not implement super_resolve")

    def forward(self, lr: torch.Tensor) -> MethodOutput:
        """(B, W, m, m) raw LR windows -> hr (B, c m, c m)."""
        return MethodOutput(hr=self.super_resolve(self.lr_image(lr)).squeeze(1))
