"""Evaluation: HR maps to detections, CSO-mAP, PSNR/SSIM, GT maps (docs/methods.md §9, docs/design.md).

Coordinates follow :mod:`pipeline.coords`: (x, y) in LR pixels, **x is the row**. Everything is
vectorised over frames and detections; the official toolkit's per-image process pool is not
needed.
"""
from __future__ import annotations

import math
from typing import Sequence

import numpy as np
from scipy import ndimage

from pipeline.coords import Grid

SSIM_WINDOW = 7
SSIM_BLOCK = 512  # frames per block in psnr_ssim
PSNR_OF_PERFECT_MATCH = 100.0


def _as_square_frames(maps) -> np.ndarray:
    """(N, S, S) view of one map (S, S), a batch (N, S, S), a flat batch (N, S*S) or a flat map.

    A 2-D array with equal sides is one map, so a flat batch of exactly S*S frames must be passed
    as (N, S, S). Torch tensors are detached and moved to the CPU; the dtype is kept.
    """
    if hasattr(maps, "detach"):
        maps = maps.detach().cpu().numpy()
    maps = np.asarray(maps)
    if maps.ndim == 1 or (maps.ndim == 2 and maps.shape[0] == maps.shape[1]):
        maps = maps[None]
    if maps.ndim == 2:
        side = math.isqrt(maps.shape[1])
        if side * side != maps.shape[1]:
            raise ValueError(f"flat maps of shape {maps.shape}: {maps.shape[1]} is not a square")
        maps = maps.reshape(maps.shape[0], side, side)
    if maps.ndim != 3 or maps.shape[1] != maps.shape[2]:
        raise ValueError(f"expected maps of shape (S, S), (N, S, S) or (N, S*S), got {maps.shape}")
    return maps


def _stack_rows(arrays: Sequence, what: str) -> tuple[np.ndarray, np.ndarray]:
    """Concatenate per-frame (k, 3) arrays (empty ones may have shape (0,)) into float64 (K, 3).

    Returns the rows and the (F,) int64 number of rows of each frame. A NaN or infinite value
    raises ValueError naming the frame: it would silently change every score.
    """
    rows = []
    for frame, array in enumerate(arrays):
        array = np.asarray(array, dtype=np.float64)
        if array.size == 0:
            array = array.reshape(0, 3)
        if array.ndim != 2 or array.shape[1] != 3:
            raise ValueError(f"{what} of frame {frame}: expected shape (k, 3), got {array.shape}")
        if not np.isfinite(array).all():
            row, column = np.argwhere(~np.isfinite(array))[0]
            field = ("x", "y", "score" if what == "detections" else "brightness")[column]
            raise ValueError(f"{what} of frame {frame}: row {row} has a non-finite {field} "
                             f"({array[row, column]})")
        rows.append(array)
    counts = np.array([len(array) for array in rows], dtype=np.int64)
    return (np.concatenate(rows) if rows else np.empty((0, 3))), counts


def hr_map_to_detections(hr_map, c: int, threshold: float) -> list[np.ndarray]:
    """Official CSO detections: every HR cell with value >= ``threshold`` (no NMS, no peaks).

    ``hr_map``: (S, S), (N, S, S), (N, S*S) or (S*S,), S = c * size, numpy or torch, brightness
    units; ``threshold``: ``evaluate.brightness_threshold``. A NaN or infinite cell raises
    ValueError naming the frame (it is neither a detection nor a non-detection). Returns one float64 (n, 3) array (x, y, score) per frame: x, y the LR coordinates of
    the cell centre ((row - (c-1)/2)/c, (col - (c-1)/2)/c), score the cell value.
    """
    frames = _as_square_frames(hr_map)
    if frames.shape[1] % c:
        raise ValueError(f"HR map side {frames.shape[1]} is not a multiple of c={c}")
    grid = Grid(frames.shape[1] // c, c)
    if len(frames) == 0:
        return []
    finite = np.isfinite(frames.reshape(len(frames), -1)).all(axis=1)
    if not finite.all():
        raise ValueError(f"HR map of frame {int(np.flatnonzero(~finite)[0])} holds NaN or inf values")
    frame, row, col = np.nonzero(frames >= threshold)
    detections = np.column_stack([grid.to_lr_coordinate(row), grid.to_lr_coordinate(col),
                                  frames[frame, row, col].astype(np.float64)])
    return np.split(detections, np.searchsorted(frame, np.arange(1, len(frames))))


def _nearest_gt(det_xy: np.ndarray, det_frame: np.ndarray, gt_xy: np.ndarray,
                gt_counts: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Distance (LR px) from each detection to the nearest GT of its frame and that GT's global id.

    Frames without GT give distance +inf. Ties go to the first GT of the frame, as ``argmin``
    in the official toolkit. Memory is O(detections x max GTs per frame).
    """
    n_frames = len(gt_counts)
    gt_start = np.cumsum(gt_counts) - gt_counts
    gt_frame = np.repeat(np.arange(n_frames), gt_counts)
    padded = np.full((n_frames, int(gt_counts.max()), 2), np.inf)
    padded[gt_frame, np.arange(len(gt_xy)) - gt_start[gt_frame]] = gt_xy
    diff = padded[det_frame] - det_xy[:, None, :]
    # sqrt(dx^2 + dy^2) in float64, the same operations as np.linalg.norm in the official toolkit,
    # so detections exactly at a threshold distance are decided the same way.
    distance = np.sqrt((diff * diff).sum(axis=-1))
    nearest = distance.argmin(axis=1)
    return distance[np.arange(len(det_xy)), nearest], gt_start[det_frame] + nearest


def nearest_target_distance(detections: Sequence, ground_truths: Sequence) -> list[np.ndarray]:
    """Per frame, the distance (LR px) from each detection to its nearest GT (+inf without GT)."""
    det, det_counts = _stack_rows(detections, "detections")
    gt, gt_counts = _stack_rows(ground_truths, "ground_truths")
    if len(det) == 0 or len(gt) == 0:
        distance = np.full(len(det), np.inf)
    else:
        det_frame = np.repeat(np.arange(len(det_counts)), det_counts)
        distance, _ = _nearest_gt(det[:, :2], det_frame, gt[:, :2], gt_counts)
    return np.split(distance, np.cumsum(det_counts)[:-1])


def _voc_area_ap(recall: np.ndarray, precision: np.ndarray) -> float:
    """VOC 'area' AP: area under the right-to-left running maximum of precision over recall."""
    mrec = np.concatenate([[0.0], recall, [1.0]])
    mpre = np.maximum.accumulate(np.concatenate([[0.0], precision, [0.0]])[::-1])[::-1]
    step = np.flatnonzero(mrec[1:] != mrec[:-1])
    return float(np.sum((mrec[step + 1] - mrec[step]) * mpre[step + 1]))


def cso_map(detections: Sequence, ground_truths: Sequence, thresholds: Sequence[float],
            return_curves: bool = False) -> dict:
    """CSO-mAP with the official toolkit's semantics (docs/methods.md §9.2), in percent.

    ``detections``: per frame (n, 3) arrays (x, y, score); ``ground_truths``: per frame (m, 3)
    arrays (x, y, brightness), brightness ignored; empty frames may be (0, 3) or (0,); a NaN or
    infinite value raises ValueError naming the frame. ``thresholds``: distances in LR px
    (``evaluate.distance_thresholds``); each must be finite and >= 0. Per frame, detections in descending score are TP iff their *nearest* GT is within
    the threshold (inclusive) and not yet taken. All detections are then pooled and sorted by
    score, and AP is the VOC 'area' AP with recall over all GT targets.

    Ties in score are broken by input order (frame order, then order within the frame): the sort
    is stable, whereas the official ``np.argsort(-score)`` is not, so the official result on tied
    scores is implementation-defined. No detections give AP 0; no frames, or no GT target in any
    frame (recall undefined), raise ValueError.

    Returns ``cso_map`` (mean AP) and ``apXX`` per threshold (XX = round(100 thr), two digits),
    floats in percent. With ``return_curves``, also ``curves``: apXX -> {"precision", "recall",
    "score"}, the pooled score-sorted PR curve.
    """
    if len(detections) != len(ground_truths):
        raise ValueError(f"detections cover {len(detections)} frames but ground_truths cover "
                         f"{len(ground_truths)}: the lists must have the same length")
    thresholds = tuple(float(thr) for thr in thresholds)
    if not all(math.isfinite(thr) and thr >= 0 for thr in thresholds):
        raise ValueError(f"thresholds {thresholds} must be finite distances >= 0 (LR px)")
    keys = [f"ap{round(thr * 100):02d}" for thr in thresholds]
    if not keys or len(set(keys)) != len(keys):
        raise ValueError(f"thresholds {tuple(thresholds)} must be non-empty and give distinct "
                         f"keys, got {keys}")
    if len(ground_truths) == 0:
        raise ValueError("no frames to score: CSO-mAP needs at least one frame with ground truth")
    det, det_counts = _stack_rows(detections, "detections")
    gt, gt_counts = _stack_rows(ground_truths, "ground_truths")
    num_gts = len(gt)
    if num_gts == 0:
        raise ValueError(f"the ground truth of the {len(ground_truths)} frames holds no target: CSO-mAP is "
                         "undefined (recall has no denominator)")

    order = np.argsort(-det[:, 2], kind="stable")
    score = det[order, 2]
    if num_gts and len(det):
        det_frame = np.repeat(np.arange(len(detections)), det_counts)
        distance, gt_id = _nearest_gt(det[:, :2], det_frame, gt[:, :2], gt_counts)
        distance, gt_id = distance[order], gt_id[order]
    else:
        distance, gt_id = np.full(len(det), np.inf), np.zeros(len(det), dtype=np.int64)

    result, curves = {}, {}
    eps = np.finfo(np.float32).eps
    for key, thr in zip(keys, thresholds):
        # Greedy per-frame matching == among the candidates sharing a nearest GT, the first in
        # descending-score order is the TP; np.unique(return_index=True) gives first occurrences.
        candidate = np.flatnonzero(distance <= thr)
        _, first = np.unique(gt_id[candidate], return_index=True)
        tp = np.zeros(len(det))
        tp[candidate[first]] = 1.0
        cum_tp = np.cumsum(tp)
        cum_fp = np.arange(1, len(det) + 1) - cum_tp
        recall = cum_tp / max(num_gts, 1)
        precision = cum_tp / np.maximum(cum_tp + cum_fp, eps)
        ap = _voc_area_ap(recall, precision) if num_gts and len(det) else 0.0
        result[key] = 100.0 * ap
        curves[key] = {"precision": precision, "recall": recall, "score": score}
    result = {"cso_map": float(np.mean(list(result.values()))), **result}
    if return_curves:
        result["curves"] = curves
    return result


EFFICIENCY_ALPHA = 100.0  # efficiency points lost per LR px of RMSE (the SMLM Challenge's 1 %/nm, in LR px)


def matched_metrics(detections: Sequence, ground_truths: Sequence, radius: float,
                    alpha: float = EFFICIENCY_ALPHA) -> dict:
    """Localisation metrics past CSO-mAP's saturation (the SMLM Challenge 2016 protocol).

    Per frame, detections and true targets are paired by the Hungarian assignment that minimises
    the total distance among pairs closer than ``radius`` (LR px); paired = TP, unpaired
    detections = FP, unpaired targets = FN, pooled over frames. Returns, in percent unless said:
    ``jaccard`` = TP/(TP+FP+FN), ``precision``, ``recall``, ``count_accuracy`` (frames whose
    number of detections equals their number of targets), ``rmse`` (LR px, of the paired
    positions), ``efficiency`` = 100 - sqrt((100 - jaccard)^2 + (alpha rmse)^2), and the counts.
    The detections are those the method reports (for an HR map: every cell above the threshold).
    """
    from scipy.optimize import linear_sum_assignment

    if not math.isfinite(radius) or radius <= 0:
        raise ValueError(f"radius {radius} must be a finite distance > 0 (LR px)")
    if len(detections) != len(ground_truths):
        raise ValueError(f"detections cover {len(detections)} frames but ground_truths cover "
                         f"{len(ground_truths)}: the lists must have the same length")
    det, det_counts = _stack_rows(detections, "detections")
    gt, gt_counts = _stack_rows(ground_truths, "ground_truths")
    if len(ground_truths) == 0 or len(gt) == 0:
        raise ValueError("no ground-truth target to match: the matched metrics are undefined")
    det_start, gt_start = np.cumsum(det_counts) - det_counts, np.cumsum(gt_counts) - gt_counts
    squared = []
    # One assignment per frame (its own small cost matrix): no array operation pairs them all at once.
    for frame in np.flatnonzero((det_counts > 0) & (gt_counts > 0)):
        found = det[det_start[frame]:det_start[frame] + det_counts[frame], :2]
        truth = gt[gt_start[frame]:gt_start[frame] + gt_counts[frame], :2]
        distance = np.linalg.norm(found[:, None] - truth[None], axis=-1)
        rows, cols = linear_sum_assignment(np.where(distance <= radius, distance, radius * 1e6))
        kept = distance[rows, cols] <= radius
        squared.append(distance[rows[kept], cols[kept]] ** 2)
    squared = np.concatenate(squared) if squared else np.empty(0)
    tp = len(squared)
    fp, fn = len(det) - tp, len(gt) - tp
    jaccard = 100.0 * tp / (tp + fp + fn)
    rmse = float(np.sqrt(squared.mean())) if tp else float("nan")
    efficiency = 100.0 - math.sqrt((100.0 - jaccard) ** 2 + (alpha * rmse) ** 2) if tp else 0.0
    return {"jaccard": jaccard, "precision": 100.0 * tp / max(tp + fp, 1), "recall": 100.0 * tp / (tp + fn),
            "count_accuracy": 100.0 * float(np.mean(det_counts == gt_counts)), "rmse": rmse,
            "efficiency": efficiency, "matched": tp, "false_positives": fp, "missed": fn}


def _to_uint8_official(maps: np.ndarray, unit_range: np.ndarray) -> np.ndarray:
    """Clip to [0, 1] and scale by 255 where ``unit_range`` (per frame), else clip to [0, 255];
    then truncate to uint8. Arithmetic stays in the input dtype, as the official toolkit."""
    shape = (-1, 1, 1)
    upper = np.where(unit_range, 1, 255).astype(maps.dtype).reshape(shape)
    scale = np.where(unit_range, 255, 1).astype(maps.dtype).reshape(shape)
    return (np.clip(maps, 0, upper) * scale).astype(np.uint8)


def _psnr_ssim_per_frame(x: np.ndarray, y: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """PSNR (dB, 100 for a perfect match) and mean SSIM of each frame of float64 (N, S, S) maps
    holding uint8 values, with skimage's formulas (data_range 255, 7x7 uniform window)."""
    mse = np.mean((x - y) ** 2, axis=(1, 2))
    with np.errstate(divide="ignore"):
        psnr = 10.0 * np.log10(255.0 ** 2 / mse)
    psnr[mse == 0] = PSNR_OF_PERFECT_MATCH

    def window_mean(a: np.ndarray) -> np.ndarray:
        return ndimage.uniform_filter(a, size=(1, SSIM_WINDOW, SSIM_WINDOW))

    cov_norm = SSIM_WINDOW ** 2 / (SSIM_WINDOW ** 2 - 1)
    ux, uy = window_mean(x), window_mean(y)
    vx = cov_norm * (window_mean(x * x) - ux * ux)
    vy = cov_norm * (window_mean(y * y) - uy * uy)
    vxy = cov_norm * (window_mean(x * y) - ux * uy)
    c1, c2 = (0.01 * 255) ** 2, (0.03 * 255) ** 2
    ssim_map = ((2 * ux * uy + c1) * (2 * vxy + c2)) / ((ux ** 2 + uy ** 2 + c1) * (vx + vy + c2))
    pad = SSIM_WINDOW // 2
    return psnr, ssim_map[:, pad:-pad, pad:-pad].mean(axis=(1, 2))


def psnr_ssim(pred_maps, gt_maps) -> tuple[float, float]:
    """Mean PSNR (dB) and mean SSIM over frames, as GROK ``Similarity`` (docs/methods.md §9.3).

    ``pred_maps``, ``gt_maps``: (N, S, S) or (N, S*S), numpy or torch. Per frame: if pred.max()
    <= 1 both maps are clipped to [0, 1] and scaled by 255, else clipped to [0, 255]; both are
    truncated to uint8. PSNR and SSIM equal skimage ``peak_signal_noise_ratio`` and
    ``structural_similarity`` with data_range=255 and defaults (7x7 uniform window, sample
    covariance, K1=0.01, K2=0.03, border of 3 cropped); a perfect match scores 100 dB.
    Frames are processed in cache-sized blocks of ``SSIM_BLOCK`` (about 3x faster than at once).
    """
    pred, gt = _as_square_frames(pred_maps), _as_square_frames(gt_maps)
    if pred.shape != gt.shape:
        raise ValueError(f"pred maps {pred.shape} and gt maps {gt.shape} differ in shape")
    if len(pred) == 0 or pred.shape[1] < SSIM_WINDOW:
        raise ValueError(f"need at least one frame of side >= {SSIM_WINDOW}, got {pred.shape}")
    unit_range = pred.reshape(len(pred), -1).max(axis=1) <= 1
    x = _to_uint8_official(gt, unit_range)
    y = _to_uint8_official(pred, unit_range)
    psnr, ssim = zip(*(_psnr_ssim_per_frame(x[i:i + SSIM_BLOCK].astype(np.float64),
                                            y[i:i + SSIM_BLOCK].astype(np.float64))
                       for i in range(0, len(x), SSIM_BLOCK)))
    return float(np.concatenate(psnr).mean()), float(np.concatenate(ssim).mean())


def targets_to_hr_maps(targets_per_frame: Sequence, grid: Grid) -> np.ndarray:
    """GT HR maps, float32 (N, c size, c size): each target's brightness at its HR cell.

    ``targets_per_frame``: per frame (m, 3) arrays (x, y, brightness) in LR px. The cell is
    ``grid.to_hr_index`` (round-half-to-even). Targets sharing a cell overwrite, the later one in
    list order winning (the official GT map); a target outside the map raises ValueError.
    """
    targets, counts = _stack_rows(targets_per_frame, "targets")
    frame = np.repeat(np.arange(len(counts)), counts)
    row, col = grid.to_hr_index(targets[:, 0]), grid.to_hr_index(targets[:, 1])
    outside = np.flatnonzero((row < 0) | (row >= grid.hr_size) | (col < 0) | (col >= grid.hr_size))
    if len(outside):
        k = outside[0]
        raise ValueError(f"target (x={targets[k, 0]}, y={targets[k, 1]}) of frame {frame[k]} falls "
                         f"outside the {grid.hr_size}x{grid.hr_size} HR map")
    cell = (frame * grid.hr_size + row) * grid.hr_size + col
    # numpy leaves the winner of repeated fancy-index assignments unspecified: keep the last
    # target of each cell explicitly (first occurrence in the reversed order).
    _, first_reversed = np.unique(cell[::-1], return_index=True)
    last = len(cell) - 1 - first_reversed
    maps = np.zeros((len(counts), grid.hr_size, grid.hr_size), dtype=np.float32)
    maps.reshape(-1)[cell[last]] = targets[last, 2]
    return maps
