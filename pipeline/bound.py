"""The Cramér-Rao bound on target positions in one frame, and the CSO-mAP it allows.

For the targets (x_k, y_k, b_k) of one frame, the sensor records every pixel p as
mu_p = sum_k b_k g(p_x - x_k) g(p_y - y_k) (the pixel-integrated Gaussian PSF of
:func:`pipeline.physics.render_batch`) plus noise, rounded and clipped at full scale. The bound
models a pixel as Gaussian with variance ``noise_sigma^2 + 1/12`` (additive noise plus the
uniform rounding error of integer counts; 0 for float frames without noise), right-censored at
full scale when the sensor saturates (a clipped pixel only says "at least full scale": the
Tobit information). The Fisher information of the 3K parameters is then
J = sum_p w_p (d mu_p / d theta)(d mu_p / d theta)^T with w_p the censored-Gaussian
information of pixel p, and any unbiased estimator that uses this frame alone has a position
covariance of at least the (x_k, y_k) block of J^-1. No prior enters: neither the brightness
range, nor the count, nor the neighbouring frames; a method with those can pass the bound.

:func:`crb_cso_map` turns the bounds into an expected score: each target is detected at its
true position plus an error drawn from its bound's Gaussian, ranked perfectly (closest first),
and the detections are scored by the evaluation's own CSO-mAP. A frame whose information
matrix is singular (targets that coincide, or a target hidden in clipped pixels) gives no
unbiased estimate: its targets are counted as missed.
"""
from __future__ import annotations

import math
from typing import Sequence

import numpy as np
from scipy import special

from pipeline.metrics import cso_map, nearest_target_distance
from pipeline.physics import pixel_integral_1d
from pipeline.sensor import Sensor

SINGULAR = 1e-14  # J is singular (numerically rank-deficient) when its smallest eigenvalue is below this times its largest


def pixel_noise_variance(sensor: Sensor) -> float:
    """Variance (counts^2) of one recorded pixel about its mean: additive noise plus rounding."""
    return sensor.noise_sigma ** 2 + (1.0 / 12.0 if sensor.bit_depth else 0.0)


def censored_information(mean: np.ndarray, sensor: Sensor) -> np.ndarray:
    """Fisher information about a pixel's mean per unit of it (1/counts^2), shape of ``mean``.

    Gaussian of variance :func:`pixel_noise_variance`, right-censored at full scale when the
    sensor saturates: (Phi(a) - a phi(a) + phi(a)^2 / (1 - Phi(a))) / sigma^2 with
    a = (full scale - mean) / sigma; 1 / sigma^2 far below full scale, 0 far above.
    """
    variance = pixel_noise_variance(sensor)
    mean = np.asarray(mean, dtype=np.float64)
    if variance == 0.0:
        raise ValueError("a noise-free float sensor has infinite Fisher information: the bound is 0")
    if not (sensor.saturate and sensor.bit_depth):
        return np.full(mean.shape, 1.0 / variance)
    sigma = math.sqrt(variance)
    a = (2.0 ** sensor.bit_depth - 1.0 - mean) / sigma
    log_pdf = -0.5 * a ** 2 - 0.5 * math.log(2.0 * math.pi)
    mills = np.exp(log_pdf - special.log_ndtr(-a))  # phi(a) / (1 - Phi(a)), stable for large a
    below = special.ndtr(a) - a * np.exp(log_pdf)
    return np.clip(below + np.exp(log_pdf) * mills, 0.0, None) / variance


def _pixel_integral_slope(offset: np.ndarray, sigma: float) -> np.ndarray:
    """d g(d) / d d of :func:`pipeline.physics.pixel_integral_1d`: phi(d + 1/2) - phi(d - 1/2)."""
    def pdf(u: np.ndarray) -> np.ndarray:
        return np.exp(-0.5 * (u / sigma) ** 2) / (sigma * math.sqrt(2.0 * math.pi))
    return pdf(offset + 0.5) - pdf(offset - 0.5)


def position_covariances(x: np.ndarray, y: np.ndarray, brightness: np.ndarray, sensor: Sensor) -> np.ndarray:
    """Cramér-Rao bound on each target's position, (F, K, 2, 2) in LR px^2.

    x, y, brightness: (F, K) arrays in LR px and counts, a target with brightness 0 absent
    (padding); its block, and every block of a frame whose information matrix is singular, is
    +inf. A noise-free float sensor gives zeros.
    """
    x, y, brightness = (np.asarray(a, dtype=np.float64) for a in (x, y, brightness))
    frames, count = brightness.shape
    present = brightness > 0
    if pixel_noise_variance(sensor) == 0.0:
        return np.where(present[..., None, None], 0.0, np.inf) * np.ones((frames, count, 2, 2))
    pixels = np.arange(sensor.frame_size, dtype=np.float64)
    dx, dy = pixels - x[..., None], pixels - y[..., None]  # (F, K, size)
    gx, gy = pixel_integral_1d(dx, sensor.psf_sigma), pixel_integral_1d(dy, sensor.psf_sigma)
    sx, sy = -_pixel_integral_slope(dx, sensor.psf_sigma), -_pixel_integral_slope(dy, sensor.psf_sigma)
    b = brightness[..., None, None]
    jacobian = np.concatenate([b * sx[..., :, None] * gy[..., None, :],   # d mu / d x_k
                               b * gx[..., :, None] * sy[..., None, :],   # d mu / d y_k
                               gx[..., :, None] * gy[..., None, :]],      # d mu / d b_k
                              axis=1).reshape(frames, 3 * count, -1)      # (F, 3K, pixels)
    mean = np.einsum("fk,fkr,fks->frs", brightness, gx, gy).reshape(frames, -1)
    weight = censored_information(mean, sensor)
    information = np.einsum("fap,fp,fbp->fab", jacobian, weight, jacobian)
    absent = np.tile(~present, 3)  # padding: decoupled unit information, its block set to inf below
    information[:, np.arange(3 * count), np.arange(3 * count)] += absent
    eigenvalues = np.linalg.eigvalsh(information)
    singular = eigenvalues[:, 0] <= SINGULAR * eigenvalues[:, -1]
    information[singular] = np.eye(3 * count)
    inverse = np.linalg.inv(information)
    rows = np.stack([np.arange(count), count + np.arange(count)], axis=1)  # (K, 2): x_k, y_k
    covariance = inverse[:, rows[:, :, None], rows[:, None, :]]  # (F, K, 2, 2)
    covariance[singular[:, None] | ~present] = np.inf
    return covariance


def _padded(truths: Sequence[np.ndarray]) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    count = max((len(t) for t in truths), default=0)
    padded = np.zeros((len(truths), count, 3))
    for i, rows in enumerate(truths):
        padded[i, :len(rows)] = np.asarray(rows, dtype=np.float64).reshape(-1, 3)
    return padded[..., 0], padded[..., 1], padded[..., 2]


def crb_cso_map(truths: Sequence[np.ndarray], sensor: Sensor, thresholds: Sequence[float], draws: int,
                seed: int) -> dict:
    """Expected CSO-mAP (percent) of an unbiased single-frame estimator at the Cramér-Rao bound.

    ``truths``: per frame (k, 3) rows (x, y, brightness). Each of ``draws`` passes detects every
    locatable target at its position plus a Gaussian error of its bound's covariance (seeded by
    ``seed``), scores the detections by closeness (perfect ranking); the passes are pooled into
    one CSO-mAP. Also returns the median bound (LR px, root of the covariance trace over 2) and
    the fraction of targets with no finite bound.
    """
    x, y, brightness = _padded(truths)
    covariance = position_covariances(x, y, brightness, sensor)
    finite = np.isfinite(covariance).all(axis=(-2, -1)) & (brightness > 0)
    factor = np.zeros_like(covariance)
    factor[finite] = np.linalg.cholesky(covariance[finite] + 1e-18 * np.eye(2))
    rng = np.random.default_rng(seed)
    noise = rng.standard_normal((draws, *brightness.shape, 2))
    position = np.stack([x, y], axis=-1)[None] + np.einsum("fkij,dfkj->dfki", factor, noise)
    detections = [position[d, i][finite[i]] for d in range(draws) for i in range(len(truths))]
    pooled_truths = list(truths) * draws
    distance = nearest_target_distance([np.column_stack([found, np.zeros(len(found))]) for found in detections],
                                       pooled_truths)
    ranked = [np.column_stack([found, -near]) for found, near in zip(detections, distance)]
    scores = cso_map(ranked, pooled_truths, thresholds)
    spread = np.sqrt(np.trace(covariance[finite], axis1=-2, axis2=-1) / 2.0)
    present = int((brightness > 0).sum())
    return {**scores, "median_bound_px": float(np.median(spread)) if len(spread) else math.inf,
            "unlocatable_fraction": float(1.0 - finite.sum() / present) if present else 0.0,
            "frames": len(truths), "targets": present, "draws": draws}
