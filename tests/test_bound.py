"""The Cramér-Rao reference: Fisher information of the sensor model and the CSO-mAP it allows."""
import numpy as np
import pytest

from pipeline.bound import censored_information, crb_cso_map, pixel_noise_variance, position_covariances
from pipeline.physics import render_batch
from pipeline.sensor import Sensor

THRESHOLDS = [0.05, 0.10, 0.15, 0.20, 0.25]


def _finite_difference_covariance(targets: np.ndarray, sensor: Sensor, step: float = 1e-6) -> np.ndarray:
    """Inverse of J^T J / variance with J from central differences of render_batch (no clipping)."""
    def frame(values):
        rows = values.reshape(-1, 3)
        return render_batch(rows[None, :, 0], rows[None, :, 1], rows[None, :, 2], sensor.frame_size, sensor.psf_sigma).ravel()

    flat = targets.ravel()
    columns = []
    for i in range(len(flat)):
        up, down = flat.copy(), flat.copy()
        up[i] += step
        down[i] -= step
        columns.append((frame(up) - frame(down)) / (2 * step))
    jacobian = np.stack(columns, axis=1)
    return np.linalg.inv(jacobian.T @ jacobian / pixel_noise_variance(sensor))


def test_bound_matches_finite_differences_of_the_forward_model():
    sensor = Sensor(noise_sigma=2.0, saturate=False)
    targets = np.array([[5.1, 4.9, 235.0], [5.3, 5.2, 228.0]])  # 0.36 px apart
    covariance = position_covariances(targets[None, :, 0], targets[None, :, 1], targets[None, :, 2], sensor)
    reference = _finite_difference_covariance(targets, sensor)  # parameter order x1 y1 b1 x2 y2 b2
    for k in range(2):
        np.testing.assert_allclose(covariance[0, k], reference[3 * k:3 * k + 2, 3 * k:3 * k + 2], rtol=1e-5)


def test_censored_pixels_carry_less_information():
    sensor = Sensor()  # 8-bit, saturating, no added noise: rounding alone, variance 1/12
    info = censored_information(np.array([100.0, 250.0, 255.0, 256.0, 300.0]), sensor)
    assert info[0] == pytest.approx(12.0) and info[1] == pytest.approx(12.0, rel=1e-6)
    assert np.all(np.diff(info[1:]) < 0) and info[-1] == 0.0
    unclipped = censored_information(np.array([300.0]), Sensor(saturate=False))
    assert unclipped[0] == pytest.approx(12.0)


def test_bound_scales_with_noise_and_marks_what_cannot_be_located():
    x, y, b = np.array([[5.0, 5.2, 0.0]]), np.array([[5.0, 5.1, 0.0]]), np.array([[230.0, 240.0, 0.0]])
    low = position_covariances(x, y, b, Sensor(noise_sigma=1.0, saturate=False))
    high = position_covariances(x, y, b, Sensor(noise_sigma=3.0, saturate=False))
    ratio = (9.0 + 1 / 12) / (1.0 + 1 / 12)
    np.testing.assert_allclose(high[0, :2], low[0, :2] * ratio, rtol=1e-9)
    assert np.isinf(low[0, 2]).all()  # padding
    same = position_covariances(np.array([[5.0, 5.0]]), np.array([[5.0, 5.0]]), np.array([[230.0, 230.0]]),
                                Sensor(noise_sigma=1.0))
    assert np.isinf(same).all()  # two targets on one spot: no unbiased estimate of either
    x3, y3, b3 = np.array([[5.0, 5.25, 4.8]]), np.array([[5.0, 5.1, 5.2]]), np.array([[250.0, 245.0, 240.0]])
    assert render_batch(x3, y3, b3).max() > 255  # the group's centre pixel clips
    clipped = position_covariances(x3, y3, b3, Sensor())
    unclipped = position_covariances(x3, y3, b3, Sensor(saturate=False))
    assert all(np.all(np.diag(clipped[0, k]) > np.diag(unclipped[0, k])) for k in range(3))  # clipped pixels tell less
    exact = position_covariances(x, y, b, Sensor(bit_depth=0))
    assert np.all(exact[0, :2] == 0.0)


def test_expected_score_at_the_bound():
    rng = np.random.default_rng(0)
    truths = [np.column_stack([5 + rng.uniform(-0.3, 0.3, 3), 5 + rng.uniform(-0.3, 0.3, 3), rng.uniform(220, 250, 3)])
              for _ in range(40)]
    exact = crb_cso_map(truths, Sensor(bit_depth=0), THRESHOLDS, draws=2, seed=0)
    assert exact["cso_map"] == pytest.approx(100.0) and exact["median_bound_px"] == 0.0
    eight_bit = crb_cso_map(truths, Sensor(), THRESHOLDS, draws=4, seed=0)
    noisy = crb_cso_map(truths, Sensor(noise_sigma=5.0), THRESHOLDS, draws=4, seed=0)
    assert 0 < noisy["cso_map"] < eight_bit["cso_map"] < 100
    assert eight_bit["ap05"] <= eight_bit["ap25"] and noisy["median_bound_px"] > eight_bit["median_bound_px"]
    assert crb_cso_map(truths, Sensor(), THRESHOLDS, draws=4, seed=0) == eight_bit  # seeded
    assert eight_bit["targets"] == 120 and eight_bit["frames"] == 40
