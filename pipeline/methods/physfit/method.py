"""The registered ``physfit`` method: the fit of :mod:`pipeline.methods.physfit` on a physics object.

Not bounded by the HR grid: detections are continuous positions with a fit-quality score. The
HR map it returns (for PSNR/SSIM and figures) puts each fitted brightness in the HR cell of its
position. Proposals come from a greedy sparse pursuit on Phi, or from the HR map of any network
passed as ``proposal`` (the ``physfit_<network>`` variants of the pipeline).
"""
from __future__ import annotations

import dataclasses

import numpy as np
import torch

from pipeline.methods.base import MethodOutput, PhysicsOperator, UnmixingMethod
from pipeline.methods.registry import register_model
from pipeline.methods.physfit.fit import calibrate_psf, fit_frames_detailed, fit_windows_detailed
from pipeline.methods.physfit.proposals import starts_from_hr_maps
from pipeline.methods.physfit.settings import PhysFitSettings
from pipeline.priors import ScenePriors

SETTING_NAMES = frozenset(f.name for f in dataclasses.fields(PhysFitSettings))


@register_model("physfit")
class PhysFit(UnmixingMethod):
    """Least-squares fit of K point sources through the pixel-integral Gaussian model.

    The frame size, PSF, noise, rounding and saturation come from ``physics.sensor``; the sparse
    pursuit searches the columns of ``physics.phi`` (any odd sub-pixel ratio c). ``priors``: the
    scene priors measured on the training split (:mod:`pipeline.priors`; the pipeline always
    passes them, see :meth:`PhysFitSettings.for_scene`); without them the library defaults hold.
    ``multi_frame``: joint fit over the whole window (rigid group motion) instead of the middle
    frame alone. ``proposal``: a method whose HR maps give extra starts. ``brightness_margin``,
    ``brightness_headroom``, ``cross_tolerance``, ``cross_floor``: see
    :meth:`PhysFitSettings.for_scene`. Other keyword arguments are :class:`PhysFitSettings` fields.
    With ``psf_calibration`` the PSF std is checked (and, if the fits reject it, re-estimated) on
    the first batch of windows and then kept (``calibrated_sigma``).
    """

    family = "beyond_the_papers"
    label = "PhysFit"
    trainable = False
    window = 5
    smoke_params = {"lm_iterations": 5, "k_max": 2}
    uses_scene_priors = True

    def __init__(self, physics: PhysicsOperator, priors: ScenePriors | None = None, multi_frame: bool = True,
                 proposal: UnmixingMethod | None = None, brightness_margin: float = 0.0,
                 brightness_headroom: float = 4.0, cross_tolerance: float = 0.1, cross_floor: float = 0.01,
                 **settings) -> None:
        super().__init__(physics)
        unknown = sorted(set(settings) - SETTING_NAMES)
        if unknown:
            raise TypeError(f"physfit got unknown setting(s) {', '.join(unknown)}")
        if priors is None:
            self.settings = PhysFitSettings.for_sensor(physics.sensor, **settings)
        else:
            self.settings = PhysFitSettings.for_scene(physics.sensor, priors, brightness_margin, brightness_headroom,
                                                      cross_tolerance, cross_floor, **settings)
        self.calibrated_sigma: float | None = None
        self.multi_frame = bool(multi_frame)
        self.window = 5 if self.multi_frame else 1
        self.proposal = proposal

    def forward(self, lr: torch.Tensor) -> MethodOutput:
        """(B, W, m, m) raw windows -> continuous detections of the middle frames, and their HR map."""
        windows = lr.detach().to("cpu", torch.float64).numpy()
        phi = self.physics.phi.detach().to("cpu", torch.float64).numpy()
        if self.settings.psf_calibration and self.calibrated_sigma is None:
            self.calibrated_sigma = calibrate_psf(windows, self.settings, phi=phi, multi_frame=self.multi_frame)
            self.settings = dataclasses.replace(self.settings, psf_sigma=self.calibrated_sigma)
        starts = None
        if self.proposal is not None:
            with torch.no_grad():
                maps = self.proposal(lr).hr.float().cpu().numpy()
            starts = starts_from_hr_maps(maps, self.grid, self.settings.k_max)
        if self.multi_frame:
            result = fit_windows_detailed(windows, self.settings, phi=phi, starts=starts)
        else:
            result = fit_frames_detailed(windows[:, windows.shape[1] // 2], self.settings, phi=phi,
                                         starts=starts)
        side = self.grid.hr_size
        counts = np.array([len(found) for found in result.detections], dtype=np.int64)
        frame = np.repeat(np.arange(len(windows)), counts)
        found = np.concatenate(result.detections).reshape(-1, 3)
        brightness = np.concatenate(result.brightness).reshape(-1)
        rows, cols = self.grid.to_hr_index(found[:, 0]), self.grid.to_hr_index(found[:, 1])
        inside = (rows >= 0) & (rows < side) & (cols >= 0) & (cols < side)
        hr = np.zeros((len(windows), side, side), np.float32)
        hr[frame[inside], rows[inside], cols[inside]] = brightness[inside]
        return MethodOutput(hr=torch.from_numpy(hr).to(lr.device, self.physics.phi.dtype),
                            detections=result.detections, extras={"brightness": result.brightness, "k": result.k,
                                                                     "psf_sigma": self.settings.psf_sigma})
