"""PhysFit: continuous sub-pixel unmixing by fitting the imaging physics ("beyond the papers").

Every published CSIST method outputs an HR map, so its positions are quantised to 1/c LR px.
PhysFit instead fits K point sources (x, y, brightness) directly through the exact pixel-integral
model of :mod:`pipeline.physics`, with x the ROW and y the COLUMN in LR px (pixel (i, j) centred at
(i, j); see :mod:`pipeline.coords`). One file per concern:

* :mod:`.settings` -- every number of the fit (:class:`PhysFitSettings`, built from the physics'
  :class:`~pipeline.sensor.Sensor`) and the result record (:class:`FitResult`).
* :mod:`.forward_model` -- rendered frames of a moving group and the analytic Jacobian (the
  derivative of the pixel integral is a difference of two Gaussian densities).
* :mod:`.likelihood` -- residuals whitened by sd = sqrt(noise_sigma^2 + quantum^2 / 12); a pixel at
  full scale only says "truth >= full_scale - quantum/2": one-sided ("hard") or censored-Gaussian
  ("tobit", default) residuals, the mirror image at the floor; the optional group prior (targets
  on distinct compass arms of a common reference point, soft linear residuals).
* :mod:`.solver` -- batched, box-constrained Levenberg-Marquardt (torch float64, batched Cholesky).
* :mod:`.proposals` -- non-negative OMP on the columns of the physics' Phi (saturated pixels
  masked), local peaks of any HR map (a network's output), cross templates around the intensity
  centroid, jittered starts.
* :mod:`.fit` -- multi-start fits per K, distinct local minima ("modes"), K by BIC
  (chi^2 + penalty D ln n, noise known); the joint W-frame fit (rigid group motion, shared
  brightness, middle-frame positions reported); scores = posterior support of each detection
  across the competing solutions (BIC weights), discounted by its Gauss-Newton position sd.
* :mod:`.method` -- the registered ``physfit`` method: grid, Phi and sensor from the physics object.

Everything is a function of arrays; no file I/O.
"""
from pipeline.methods.physfit.fit import calibrate_psf, fit_frames, fit_frames_detailed, fit_windows, fit_windows_detailed
from pipeline.methods.physfit.forward_model import pixel_integral_derivative_1d, render_with_jacobian
from pipeline.methods.physfit.method import PhysFit
from pipeline.methods.physfit.proposals import greedy_pursuit, starts_from_hr_maps
from pipeline.methods.physfit.settings import FitResult, PhysFitSettings

__all__ = [
    "FitResult",
    "calibrate_psf",
    "PhysFit",
    "PhysFitSettings",
    "fit_frames",
    "fit_frames_detailed",
    "fit_windows",
    "fit_windows_detailed",
    "greedy_pursuit",
    "pixel_integral_derivative_1d",
    "render_with_jacobian",
    "starts_from_hr_maps",
]
