"""Tests of pipeline.metrics: hand-computed cases and a per-frame reference of the official loop."""
from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from skimage.metrics import peak_signal_noise_ratio, structural_similarity

from pipeline import metrics
from pipeline.config import load_params
from pipeline.coords import Grid
from pipeline.metrics import cso_map, hr_map_to_detections, psnr_ssim, targets_to_hr_maps

EMPTY = np.empty((0, 3))
EVALUATE = load_params()["evaluate"]  # the thresholds come from params.yaml, as in the pipeline
THRESHOLDS = tuple(EVALUATE["distance_thresholds"])
BRIGHTNESS = EVALUATE["brightness_threshold"]


def _map_with_three_cells() -> np.ndarray:
    hr_map = np.zeros((33, 33))
    hr_map[0, 0] = 69.9
    hr_map[4, 7] = 70.0
    hr_map[31, 2] = 200.0
    return hr_map


# ------------------------------------------------------------------ hr_map_to_detections


def test_detections_threshold_inclusive_and_x_is_row():
    (det,) = hr_map_to_detections(_map_with_three_cells(), c=3, threshold=BRIGHTNESS)
    expected = np.array([[(4 - 1) / 3, (7 - 1) / 3, 70.0], [(31 - 1) / 3, (2 - 1) / 3, 200.0]])
    assert det.dtype == np.float64
    np.testing.assert_array_equal(det, expected)
    assert det[0, 0] == 1.0 and det[0, 1] == 2.0  # row 4 -> x = 1, column 7 -> y = 2


def test_detections_batch_flat_torch_and_empty_frames_agree():
    single = hr_map_to_detections(_map_with_three_cells(), c=3, threshold=BRIGHTNESS)[0]
    batch = np.stack([_map_with_three_cells(), np.zeros((33, 33)), _map_with_three_cells()])
    for maps in (batch, batch.reshape(3, 33 * 33), torch.from_numpy(batch)):
        dets = hr_map_to_detections(maps, c=3, threshold=BRIGHTNESS)
        assert len(dets) == 3
        np.testing.assert_array_equal(dets[0], single)
        np.testing.assert_array_equal(dets[2], single)
        assert dets[1].shape == (0, 3)
    np.testing.assert_array_equal(hr_map_to_detections(batch[0].reshape(-1), c=3, threshold=BRIGHTNESS)[0], single)
    assert hr_map_to_detections(np.zeros((33, 33)), c=3, threshold=BRIGHTNESS)[0].shape == (0, 3)


def test_detections_threshold_and_c_parameters():
    hr_map = _map_with_three_cells()
    (det,) = hr_map_to_detections(hr_map, threshold=50.0, c=3)
    assert len(det) == 3 and det[0, 2] == pytest.approx(69.9)
    (det,) = hr_map_to_detections(hr_map[:30, :30], c=5, threshold=BRIGHTNESS)  # size 6, offset 2
    np.testing.assert_array_equal(det, [[(4 - 2) / 5, (7 - 2) / 5, 70.0]])
    with pytest.raises(ValueError, match="multiple of c"):
        hr_map_to_detections(np.zeros((32, 32)), c=3, threshold=BRIGHTNESS)


# ------------------------------------------------------------------------------- cso_map


def test_perfect_detection_scores_100():
    gts = [np.array([[2.0, 3.0, 230.0], [5.0, 5.0, 240.0]])]
    dets = [np.array([[2.0, 3.0, 100.0], [5.0, 5.0, 90.0]])]
    result = cso_map(dets, gts, THRESHOLDS)
    assert list(result) == ["cso_map", "ap05", "ap10", "ap15", "ap20", "ap25"]
    assert result == {key: 100.0 for key in result}


def test_only_the_nearest_gt_can_be_matched():
    # GTs G0 = (0, 0), G1 = (0, 0.375). A (score 10) sits on G0. B (score 5) at (0, 0.125) has
    # G0 nearest (0.125, already taken) although G1 is exactly 0.25 <= thr away: B is FP.
    gts = [np.array([[0.0, 0.0, 1.0], [0.0, 0.375, 1.0]])]
    dets = [np.array([[0.0, 0.0, 10.0], [0.0, 0.125, 5.0]])]
    # recall [1/2, 1/2], precision [1, 1/2] -> AP = 1/2 * 1
    assert cso_map(dets, gts, thresholds=(0.25,)) == {"cso_map": 50.0, "ap25": 50.0}
    # B ranked first takes G0 instead; A is then the FP -> same AP.
    dets_swapped = [np.array([[0.0, 0.0, 5.0], [0.0, 0.125, 10.0]])]
    assert cso_map(dets_swapped, gts, thresholds=(0.25,))["ap25"] == 50.0


def test_second_detection_of_a_taken_target_is_fp():
    gts = [np.array([[0.0, 0.0, 1.0], [5.0, 5.0, 1.0]])]
    dets = [np.array([[0.0, 0.0, 9.0], [0.0, 0.0625, 8.0], [5.0, 5.0, 7.0]])]
    result = cso_map(dets, gts, thresholds=(0.25,), return_curves=True)
    curve = result["curves"]["ap25"]
    np.testing.assert_allclose(curve["recall"], [0.5, 0.5, 1.0])
    np.testing.assert_allclose(curve["precision"], [1.0, 0.5, 2 / 3])
    np.testing.assert_array_equal(curve["score"], [9.0, 8.0, 7.0])
    assert result["ap25"] == pytest.approx(100 * (0.5 * 1 + 0.5 * 2 / 3), rel=1e-12)


def test_distance_thresholds_are_inclusive():
    gts = [np.array([[2.0, 2.0, 1.0]])]
    for det in ([2.0, 2.25, 1.0], [2.25, 2.0, 1.0], [1.75, 2.0, 1.0]):  # exactly 0.25 away
        assert cso_map([np.array([det])], gts, thresholds=(0.25,))["ap25"] == 100.0
    just_outside = [np.array([[2.0, 2.25 + 2.0 ** -30, 1.0]])]
    assert cso_map(just_outside, gts, thresholds=(0.25,))["ap25"] == 0.0
    result = cso_map([np.array([[2.0, 2.25, 1.0]])], gts, THRESHOLDS)
    assert result == {"cso_map": 20.0, "ap05": 0.0, "ap10": 0.0, "ap15": 0.0, "ap20": 0.0,
                      "ap25": 100.0}


def test_voc_area_ap_pooled_over_frames():
    # 3 GTs in 2 frames; pooled ranking TP (0.9), FP (0.8), TP (0.7).
    gts = [np.array([[1.0, 1.0, 1.0], [3.0, 3.0, 1.0]]), np.array([[6.0, 6.0, 1.0]])]
    dets = [np.array([[8.0, 8.0, 0.8], [1.0, 1.0, 0.9]]), np.array([[6.0, 6.0, 0.7]])]
    result = cso_map(dets, gts, thresholds=(0.05,), return_curves=True)
    curve = result["curves"]["ap05"]
    np.testing.assert_allclose(curve["recall"], [1 / 3, 1 / 3, 2 / 3])
    np.testing.assert_allclose(curve["precision"], [1.0, 0.5, 2 / 3])
    # envelope [1, 1, 2/3]: AP = 1/3 * 1 + 1/3 * 2/3 = 5/9
    assert result["ap05"] == pytest.approx(100 * 5 / 9, rel=1e-12)
    assert result["cso_map"] == result["ap05"]


def test_frame_without_gt_makes_its_detections_fp():
    gts = [np.array([[1.0, 1.0, 1.0]]), EMPTY]
    dets = [np.array([[1.0, 1.0, 5.0]]), np.array([[1.0, 1.0, 9.0]])]
    # ranking FP, TP: recall [0, 1], precision [0, 1/2] -> AP 1/2
    assert cso_map(dets, gts, THRESHOLDS)["cso_map"] == 50.0


def test_frames_without_detections_count_their_gts():
    gts = [np.array([[1.0, 1.0, 1.0]]), np.array([[4.0, 4.0, 1.0]])]
    for empty in (EMPTY, np.array([]), []):
        assert cso_map([np.array([[1.0, 1.0, 5.0]]), empty], gts, THRESHOLDS)["cso_map"] == 50.0


def test_no_detections_give_zero_and_no_ground_truth_is_an_error():
    zero = {"cso_map": 0.0, "ap05": 0.0, "ap10": 0.0, "ap15": 0.0, "ap20": 0.0, "ap25": 0.0}
    assert cso_map([EMPTY, np.array([])], [np.array([[1.0, 1.0, 1.0]]), EMPTY], THRESHOLDS) == zero
    with pytest.raises(ValueError, match="holds no target: CSO-mAP is undefined"):
        cso_map([np.array([[1.0, 1.0, 1.0]])], [np.array([])], THRESHOLDS)
    with pytest.raises(ValueError, match="holds no target"):
        cso_map([EMPTY], [EMPTY], THRESHOLDS)
    with pytest.raises(ValueError, match="no frames to score"):
        cso_map([], [], THRESHOLDS)


def test_invalid_inputs_raise():
    with pytest.raises(ValueError, match="same length"):
        cso_map([EMPTY, EMPTY], [EMPTY], THRESHOLDS)
    with pytest.raises(ValueError, match="frame 1"):
        cso_map([EMPTY, np.zeros((2, 2))], [EMPTY, EMPTY], THRESHOLDS)
    with pytest.raises(ValueError, match="distinct keys"):
        cso_map([EMPTY], [EMPTY], thresholds=(0.1, 0.1001))


def _reference_cso_map(detections, ground_truths, thresholds):
    """The official per-frame loop (CSO_tpfp + eval_map), with stable sorts."""
    result = {}
    num_gts = sum(len(g) for g in ground_truths)
    for thr in thresholds:
        tps, scores = [], []
        for det, gt in zip(detections, ground_truths):
            tp = np.zeros(len(det))
            covered = np.zeros(len(gt), dtype=bool)
            for i in np.argsort(-det[:, 2], kind="stable"):
                if len(gt) == 0:
                    continue
                distance = np.linalg.norm(det[i, None, :2] - gt[:, :2], axis=1)
                nearest = int(np.argmin(distance))
                if distance[nearest] <= thr and not covered[nearest]:
                    covered[nearest] = True
                    tp[i] = 1.0
            tps.append(tp)
            scores.append(det[:, 2])
        tp = np.concatenate(tps)
        order = np.argsort(-np.concatenate(scores), kind="stable")
        cum_tp = np.cumsum(tp[order])
        cum_fp = np.cumsum(1.0 - tp[order])
        recall = list(cum_tp / num_gts)
        precision = list(cum_tp / np.maximum(cum_tp + cum_fp, np.finfo(np.float32).eps))
        mrec, mpre = [0.0] + recall + [1.0], [0.0] + precision + [0.0]
        for i in range(len(mpre) - 1, 0, -1):
            mpre[i - 1] = max(mpre[i - 1], mpre[i])
        ap = sum((mrec[i + 1] - mrec[i]) * mpre[i + 1] for i in range(len(mrec) - 1)
                 if mrec[i + 1] != mrec[i])
        result[f"ap{round(thr * 100):02d}"] = 100.0 * ap
    return {"cso_map": float(np.mean(list(result.values()))), **result}


def test_matches_the_per_frame_reference_on_random_frames():
    rng = np.random.default_rng(20240611)
    grid = Grid()
    detections, ground_truths = [], []
    for _ in range(200):
        n_gt = int(rng.integers(0, 5))
        gt = np.column_stack([rng.uniform(1, 9, (n_gt, 2)), rng.uniform(220, 250, n_gt)])
        if n_gt >= 2 and rng.random() < 0.2:
            gt[1, :2] = gt[0, :2]  # two targets at one position: distance ties go to the first
        n_det = int(rng.integers(0, 11))
        if n_gt:
            anchor = gt[rng.integers(0, n_gt, n_det), :2]
        else:
            anchor = rng.uniform(1, 9, (n_det, 2))
        xy = anchor + rng.normal(0.0, 0.15, (n_det, 2))
        on_grid = rng.random(n_det) < 0.5  # as detections read from HR maps
        xy[on_grid] = grid.snap(xy[on_grid])
        score = rng.integers(70, 80, n_det).astype(float)  # many ties: exercises the stable order
        detections.append(np.column_stack([xy, score]))
        ground_truths.append(gt)
    expected = _reference_cso_map(detections, ground_truths, THRESHOLDS)
    result = cso_map(detections, ground_truths, THRESHOLDS)
    assert result.keys() == expected.keys()
    for key in expected:
        assert result[key] == pytest.approx(expected[key], abs=1e-9)
    assert 0.0 < result["ap05"] < result["ap25"] < 100.0


# ----------------------------------------------------------------------------- psnr_ssim


def _reference_psnr_ssim(pred, gt):
    psnrs, ssims = [], []
    for p, g in zip(pred.reshape(len(pred), 33, 33), gt.reshape(len(gt), 33, 33)):
        if p.max() <= 1:
            p, g = np.clip(p, 0, 1) * 255, np.clip(g, 0, 1) * 255
        else:
            p, g = np.clip(p, 0, 255), np.clip(g, 0, 255)
        p, g = p.astype(np.uint8), g.astype(np.uint8)
        with np.errstate(divide="ignore"):
            psnr = peak_signal_noise_ratio(g, p, data_range=255)
        psnrs.append(100.0 if np.isinf(psnr) else psnr)
        ssims.append(structural_similarity(g, p, data_range=255))
    return float(np.mean(psnrs)), float(np.mean(ssims))


def test_identical_maps_give_psnr_100_and_ssim_1():
    maps = np.random.default_rng(0).uniform(0, 250, (3, 33, 33))
    assert psnr_ssim(maps, maps) == (100.0, 1.0)


def test_psnr_of_a_hand_case_with_unit_range_prediction():
    pred = np.full((1, 33, 33), 0.5, dtype=np.float32)  # <= 1: both scaled, 127.5 -> 127
    gt = np.full((1, 33, 33), 200.0, dtype=np.float32)  # clipped to 1 -> 255
    psnr, _ = psnr_ssim(pred, gt)
    assert psnr == pytest.approx(10 * np.log10(255.0 ** 2 / 128.0 ** 2), rel=1e-12)


def test_psnr_ssim_match_skimage_per_frame(monkeypatch):
    monkeypatch.setattr(metrics, "SSIM_BLOCK", 4)  # 6 frames: one full and one partial block
    rng = np.random.default_rng(1)
    gt = np.zeros((6, 33, 33), dtype=np.float32)
    gt[:, 10:20, 12:22] = rng.uniform(0, 250, (6, 10, 10))
    pred = (gt + rng.normal(0, 30, gt.shape)).astype(np.float32)
    pred[4] = rng.uniform(-0.2, 1.0, (33, 33))  # a unit-range prediction: scaled by 255
    pred[5] = gt[5]  # a perfect frame: 100 dB
    expected = _reference_psnr_ssim(pred, gt)
    for p, g in ((pred, gt), (pred.reshape(6, -1), gt.reshape(6, -1)),
                 (torch.from_numpy(pred), torch.from_numpy(gt))):
        psnr, ssim = psnr_ssim(p, g)
        assert psnr == pytest.approx(expected[0], abs=1e-9)
        assert ssim == pytest.approx(expected[1], abs=1e-9)
    with pytest.raises(ValueError, match="differ in shape"):
        psnr_ssim(pred, gt[:5])


# -------------------------------------------------------------------- targets_to_hr_maps


def test_gt_maps_cells_collisions_and_rounding():
    grid = Grid(11, 3)
    targets = [
        np.array([[1.0, 2.0, 230.0], [1.1, 2.0, 240.0], [0.9, 1.95, 250.0]]),  # all cell (4, 7)
        np.array([]),
        # 3x + 1 = 2.5 -> 2, 5.5 -> 6 (half to even); 32.5 -> 32 and -0.5 -> 0 stay inside
        np.array([[0.5, 1.5, 221.0], [10.5, -0.5, 222.0]]),
    ]
    maps = targets_to_hr_maps(targets, grid)
    assert maps.shape == (3, 33, 33) and maps.dtype == np.float32
    assert maps[0, 4, 7] == 250.0 and np.count_nonzero(maps[0]) == 1  # the last target wins
    assert np.count_nonzero(maps[1]) == 0
    assert maps[2, 2, 6] == 221.0 and maps[2, 32, 0] == 222.0 and np.count_nonzero(maps[2]) == 2


def test_gt_maps_roundtrip_to_snapped_detections():
    grid = Grid(11, 3)
    targets = [np.array([[3.3, 7.1, 230.0], [6.0, 2.4, 240.0]])]
    (det,) = hr_map_to_detections(targets_to_hr_maps(targets, grid), c=3, threshold=BRIGHTNESS)
    order = np.argsort(det[:, 2])
    np.testing.assert_allclose(det[order, :2], grid.snap(targets[0][:, :2]), atol=1e-15)
    np.testing.assert_array_equal(det[order, 2], [230.0, 240.0])


def test_gt_maps_reject_targets_outside_the_map():
    grid = Grid(11, 3)
    with pytest.raises(ValueError, match=r"frame 1"):
        targets_to_hr_maps([np.array([[1.0, 1.0, 1.0]]), np.array([[-0.51, 3.0, 1.0]])], grid)
    with pytest.raises(ValueError, match=r"y=10.6"):
        targets_to_hr_maps([np.array([[1.0, 10.6, 1.0]])], grid)


def test_matched_metrics_on_a_hand_worked_case():
    """Frame 0: targets at (1, 1) and (1, 2); detections at (1.1, 1) (0.1 px off), (1, 2.2)
    (0.2 px off) and a stray one at (5, 5). Frame 1: one target at (3, 3), missed.
    TP 2, FP 1, FN 1: Jaccard 2/4, precision 2/3, recall 2/3; RMSE sqrt((0.01 + 0.04) / 2);
    the counts agree in neither frame (3 vs 2, 0 vs 1)."""
    from pipeline.metrics import matched_metrics

    detections = [np.array([[1.1, 1.0, 9.0], [1.0, 2.2, 8.0], [5.0, 5.0, 7.0]]), EMPTY]
    truths = [np.array([[1.0, 1.0, 230.0], [1.0, 2.0, 230.0]]), np.array([[3.0, 3.0, 230.0]])]
    result = matched_metrics(detections, truths, radius=0.25)
    rmse = math.sqrt((0.01 + 0.04) / 2)
    assert result["matched"] == 2 and result["false_positives"] == 1 and result["missed"] == 1
    assert result["jaccard"] == pytest.approx(50.0)
    assert result["precision"] == pytest.approx(200 / 3) and result["recall"] == pytest.approx(200 / 3)
    assert result["rmse"] == pytest.approx(rmse) and result["count_accuracy"] == 0.0
    assert result["efficiency"] == pytest.approx(100 - math.sqrt(50.0 ** 2 + (100 * rmse) ** 2))


def test_hungarian_matching_beats_greedy_and_respects_the_radius():
    """Greedy nearest-first would pair the detection at 1.12 with the target at 1.2 (0.08 px) and
    leave the target at 1.0 unmatched (0.2 + 0.12 > radius for the other detection); the optimal
    assignment pairs both. A detection beyond the radius is never paired."""
    from pipeline.metrics import matched_metrics

    truths = [np.array([[1.0, 0.0, 1.0], [1.2, 0.0, 1.0]])]
    found = [np.array([[1.12, 0.0, 1.0], [1.32, 0.0, 1.0]])]
    assert matched_metrics(found, truths, radius=0.15)["matched"] == 2
    assert matched_metrics([np.array([[1.5, 0.0, 1.0]])], [np.array([[1.0, 0.0, 1.0]])], 0.25)["matched"] == 0
    perfect = matched_metrics([truths[0]], truths, radius=0.25)
    assert perfect["jaccard"] == 100.0 and perfect["rmse"] == 0.0 and perfect["efficiency"] == 100.0
    assert perfect["count_accuracy"] == 100.0
    with pytest.raises(ValueError, match="no ground-truth target"):
        matched_metrics([EMPTY], [EMPTY], radius=0.25)
