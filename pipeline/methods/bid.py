"""BID (docs/methods.md §7.2): the untrained fixed-PSF deconvolution baseline of the SeqCSIST toolkit."""
from __future__ import annotations

import torch
from torch.nn import functional as F

from pipeline.methods.base import MethodOutput, PhysicsOperator, UnmixingMethod
from pipeline.methods.registry import register_model


def gaussian_profile(size: int, sigma: float, faithful_grid: bool = False) -> torch.Tensor:
    """(size,) Gaussian of std ``sigma`` (HR px) sampled on a centred grid, summing to 1.

    The PSF is its outer product with itself. ``faithful_grid``: the shipped grid
    linspace(-size // 2, size // 2, size), which Python's floor division makes [-2, -0.5, 1] for
    size 3 (off-centre, docs/methods.md B19).
    """
    start = -size // 2 if faithful_grid else -(size // 2)
    grid = torch.linspace(start, size // 2, size, dtype=torch.float64)
    profile = torch.exp(-grid ** 2 / (2 * sigma ** 2))
    return profile / profile.sum()


def convolution_matrix(profile: torch.Tensor, length: int) -> torch.Tensor:
    """(length, length) T with T x = 'same' convolution of x with the centred odd ``profile``
    (zero border); a separable 2-D convolution of a map X is then T X T^T."""
    half = profile.shape[0] // 2
    index = torch.arange(length)
    offset = index[:, None] - index[None, :] + half
    inside = (offset >= 0) & (offset < profile.shape[0])
    taps = profile[offset.clamp(0, profile.shape[0] - 1)]
    return torch.where(inside, taps, torch.zeros((), dtype=profile.dtype))


@register_model("bid")
class BID(UnmixingMethod):
    """Fixed-PSF Landweber-type deconvolution on the HR grid, batched over frames; single-frame.

    u = bilinear c-times upsampling of the LR frame (align_corners False); x_0 = u; then at most
    ``iterations`` times: d = psf * x - u ('same' convolution, zero border, applied as the
    separable T x T^T), x <- x - step d; a
    frame stops (and stays frozen) after the first update whose max |d| < ``tol``. Despite the
    name nothing blind happens: the PSF is never re-estimated (as shipped, docs/methods.md B19). The
    PSF is the shipped 3x3 Gaussian of std 0.5 *HR* px (the sensor's 0.5 LR px would be 1.5 HR px).

    Shipped bugs (B19), off by default: ``faithful_psf_grid`` samples the PSF off-centre;
    ``faithful_column_input`` reproduces cv2.resize of the 121x1 column to 11x11, which reads
    source row m i + (m - 1) / 2 for output row i, i.e. every row becomes the frame's middle-column
    pixel of that row.
    """

    family = "traditional"
    label = "BID"

    trainable = False
    smoke_params = {"iterations": 20}

    def __init__(self, physics: PhysicsOperator, iterations: int = 1000, step: float = 1e-3,
                 tol: float = 0.1, psf_size: int = 3, psf_sigma: float = 0.5,
                 faithful_psf_grid: bool = False, faithful_column_input: bool = False) -> None:
        super().__init__(physics)
        if iterations < 1:
            raise ValueError(f"iterations must be >= 1, got {iterations}")
        if step <= 0 or tol < 0 or psf_sigma <= 0:
            raise ValueError(f"step and psf_sigma must be > 0 and tol >= 0, got step={step}, "
                             f"psf_sigma={psf_sigma}, tol={tol}")
        if psf_size < 1 or psf_size % 2 == 0:
            raise ValueError(f"psf_size must be odd and >= 1, got {psf_size}")
        self.iterations = int(iterations)
        self.step = float(step)
        self.tol = float(tol)
        self.faithful_column_input = bool(faithful_column_input)
        blur = convolution_matrix(gaussian_profile(psf_size, psf_sigma, faithful_psf_grid),
                                  self.grid.hr_size)
        # (c m, c m), derived from params: moved with the module but not checkpointed.
        self.register_buffer("blur", blur.to(physics.phi.dtype), persistent=False)

    def forward(self, lr: torch.Tensor) -> MethodOutput:
        """(B, W, m, m) raw LR windows -> hr (B, c m, c m); extras["iterations"]: (B,) steps run."""
        m, side = self.grid.size, self.grid.hr_size
        frames = self.middle_frame(lr).reshape(-1, 1, m, m)
        if self.faithful_column_input:
            frames = frames[..., m // 2:m // 2 + 1].expand(-1, -1, m, m)
        upsampled = F.interpolate(frames, size=(side, side), mode="bilinear", align_corners=False)[:, 0]
        x = upsampled
        active = torch.ones(x.shape[0], dtype=torch.bool, device=x.device)
        steps = torch.zeros(x.shape[0], dtype=torch.int64, device=x.device)
        for _ in range(self.iterations):
            deviation = self.blur @ x @ self.blur.T - upsampled
            x = torch.where(active[:, None, None], x - self.step * deviation, x)
            steps += active
            active &= deviation.abs().amax(dim=(1, 2)) >= self.tol
            if not bool(active.any()):
                break
        return MethodOutput(hr=x, extras={"iterations": steps})
