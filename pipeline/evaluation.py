"""The evaluation protocol: scoring a method on the middle frames of the test windows, and the
grid-oracle bound."""
from __future__ import annotations

import platform
import time
from typing import Sequence

import numpy as np
import pandas as pd
import torch
from torch.utils.flop_counter import FlopCounterMode
from tqdm.auto import tqdm

from pipeline.settings import EvaluateConfig
from pipeline.coords import Grid
from pipeline.data import SplitData, Windows, scored_positions
from pipeline.methods import UnmixingMethod
from pipeline.metrics import (cso_map, hr_map_to_detections, matched_metrics, nearest_target_distance, psnr_ssim,
                              targets_to_hr_maps)


def grid_oracle(data: SplitData, grid: Grid, config: EvaluateConfig) -> dict:
    """CSO-mAP of the ground truth snapped to the HR grid, the best any HR-map method can do.

    ``brightness``: the GT maps scored as any method's output (detections scored by the
    brightness they carry). ``perfect_ranking``: the same detections ranked by closeness to
    their target, the ceiling with an ideal score.
    """
    t, f = scored_positions(data, config.window, config.window_stride)
    truths = data.frame_targets(t, f)
    maps = targets_to_hr_maps(truths, grid)
    detections = hr_map_to_detections(maps, c=grid.c, threshold=config.brightness_threshold)
    by_brightness = cso_map(detections, truths, config.distance_thresholds)
    distances = nearest_target_distance(detections, truths)
    ranked = [np.column_stack([found[:, :2], -distance]) for found, distance in zip(detections, distances)]
    by_closeness = cso_map(ranked, truths, config.distance_thresholds)
    return {"brightness": by_brightness, "perfect_ranking": by_closeness,
            "frames": int(len(truths)), "targets": int(sum(len(x) for x in truths))}


def _device_name(device: torch.device) -> str:
    if device.type == "cuda":
        return torch.cuda.get_device_name(device)
    return f"cpu ({platform.processor() or platform.machine()}, {torch.get_num_threads()} threads)"


def _deform_conv_flops(x_shape, weight_shape, *args, out_shape=None, **kwargs) -> int:
    """torchvision's deformable convolution: a multiply-add per kernel tap and input channel of
    each output value, as a plain convolution (the bilinear sampling not counted)."""
    batch, _, height, width = out_shape
    out_channels, in_per_group, kernel_h, kernel_w = weight_shape
    return 2 * batch * out_channels * height * width * in_per_group * kernel_h * kernel_w


def _custom_flops() -> dict:
    """FLOP formulas for the operators FlopCounterMode does not know (torchvision's deform_conv2d,
    which the CUDA path of the deformable methods calls; the CPU path is counted as its einsum)."""
    try:
        import torchvision  # noqa: F401  (registers torch.ops.torchvision)

        return {torch.ops.torchvision.deform_conv2d: _deform_conv_flops}
    except (ImportError, AttributeError, RuntimeError):
        return {}


def count_flops(model: UnmixingMethod, window: np.ndarray, device: torch.device) -> int:
    """FLOPs of one forward pass on one window (torch.utils.flop_counter)."""
    model.eval()
    with torch.no_grad(), FlopCounterMode(display=False, custom_mapping=_custom_flops()) as counter:
        model(torch.from_numpy(window[None]).to(device))
    return int(counter.get_total_flops())


def network_fps(model: UnmixingMethod, lr: np.ndarray, batch: int, device: torch.device,
                windows: int = 2048) -> float:
    """Windows per second of the forward pass alone (no detection extraction, no host copies of
    the output), on up to ``windows`` windows already on the device, after one warm-up batch,
    synchronised on a GPU."""
    model.eval()
    sample = torch.from_numpy(lr[:windows]).to(device)
    sync = torch.cuda.synchronize if device.type == "cuda" else (lambda: None)
    with torch.no_grad():
        model(sample[:batch])
        sync()
        start = time.perf_counter()
        for first in range(0, len(sample), batch):
            model(sample[first:first + batch])
        sync()
    elapsed = time.perf_counter() - start
    return len(sample) / elapsed if elapsed > 0 else float("inf")


def predict(model: UnmixingMethod, lr: np.ndarray, batch: int, device: torch.device,
            threshold: float, progress: bool = False) -> tuple[np.ndarray, list[np.ndarray]]:
    """HR maps (N, c m, c m) and detections (per window (n, 3): x, y, score) for windows lr (N, W, m, m).

    Detections are the thresholded HR cells, unless the method reports continuous detections
    itself (``MethodOutput.detections``). A non-finite output stops prediction with a ValueError
    naming the method and the first bad window.
    """
    model.eval()
    name = model.label or type(model).__name__
    maps, detections = [], []
    with torch.no_grad():
        for start in tqdm(range(0, len(lr), batch), desc="predict", unit="batch", disable=not progress):
            output = model(torch.from_numpy(lr[start:start + batch]).to(device))
            hr = output.hr.float().cpu().numpy()
            own = getattr(output, "detections", None)
            finite = np.isfinite(hr).reshape(len(hr), -1).all(axis=1)
            if own is not None:
                finite &= np.array([np.isfinite(found).all() for found in own], dtype=bool)
            if not finite.all():
                raise ValueError(f"method {name}: non-finite output for test window {start + int(np.argmin(finite))} "
                                 "(NaN or inf in its HR map or detections)")
            maps.append(hr)
            detections.extend(own if own is not None else
                              hr_map_to_detections(hr, c=model.grid.c, threshold=threshold))
    return np.concatenate(maps), detections


def validation_scorer(windows: Windows, truths: list[np.ndarray], config: EvaluateConfig, batch: int,
                      device: torch.device):
    """The trainer's ``validate(model) -> CSO-mAP`` on the validation windows (the protocol of
    ``config``: brightness threshold and distance thresholds)."""
    def validate(model: UnmixingMethod) -> float:
        _, detections = predict(model, windows.lr, batch, device, config.brightness_threshold)
        return cso_map(detections, truths, config.distance_thresholds)["cso_map"]

    return validate


def pr_curve_table(curves: dict, points: int) -> pd.DataFrame:
    """The PR curve of each distance threshold, resampled to ``points`` recall values.

    Precision is the monotone envelope (the one AP integrates) at each recall level; rows
    (threshold key, recall, precision) for ``dvc plots`` and the report figures.
    """
    rows = []
    grid = np.linspace(0.0, 1.0, points)
    for key, curve in curves.items():
        recall, precision = curve["recall"], curve["precision"]
        envelope = np.maximum.accumulate(precision[::-1])[::-1] if len(precision) else precision
        at = np.searchsorted(recall, grid, side="left")
        value = np.where(at < len(envelope), envelope[np.minimum(at, len(envelope) - 1)], 0.0) \
            if len(envelope) else np.zeros_like(grid)
        rows.append(pd.DataFrame({"threshold": key, "recall": grid, "precision": value}))
    return pd.concat(rows, ignore_index=True)


def evaluate_method(model: UnmixingMethod, windows: Windows, truths: list[np.ndarray], config: EvaluateConfig,
                    device: torch.device, batch: int, curve_points: int = 101,
                    progress: bool = False) -> tuple[dict, pd.DataFrame, np.ndarray, list[np.ndarray]]:
    """Score a method on the middle frames of ``windows``.

    Returns (metrics, PR-curve table, HR maps, detections per window (n, 3): x, y, score): metrics holds cso_map and ap05..ap25 (percent),
    psnr (dB) and ssim of the HR maps, params (trainable count), flops (one window), fps (windows
    per second over the whole set, prediction and detection included), the matched metrics of
    :func:`pipeline.metrics.matched_metrics` (Jaccard, precision, recall, count accuracy, RMSE,
    efficiency within ``config.match_radius``), network_fps (the forward
    pass alone, :func:`network_fps`), the device (with its CPU threads) and the batch.
    """
    model = model.to(device)
    start = time.perf_counter()
    maps, detections = predict(model, windows.lr, batch, device, config.brightness_threshold, progress)
    elapsed = time.perf_counter() - start
    scores = cso_map(detections, truths, config.distance_thresholds, return_curves=True)
    matched = matched_metrics(detections, truths, config.match_radius)
    curves = pr_curve_table(scores.pop("curves"), curve_points)
    psnr, ssim = psnr_ssim(maps, windows.hr)
    metrics = {
        **scores,
        **matched,
        "psnr": psnr,
        "ssim": ssim,
        "params": int(sum(p.numel() for p in model.generator_parameters())),
        "flops": count_flops(model, windows.lr[0], device),
        "fps": len(windows) / elapsed if elapsed > 0 else float("inf"),
        "network_fps": network_fps(model, windows.lr, batch, device),
        "device": _device_name(device),
        "batch": batch,
        "frames": len(windows),
        "targets": int(sum(len(t) for t in truths)),
    }
    return metrics, curves, maps, detections


SEED_AVERAGED = ("psnr", "ssim", "fps", "network_fps", "jaccard", "precision", "recall", "count_accuracy", "rmse",
                 "efficiency")  # besides the score keys (cso_map and the APs)


def combine_seeds(per_seed: list[dict], seeds: list, scores: Sequence[str]) -> dict:
    """The metrics of one method trained on several ``seeds`` (one dict each, from
    :func:`evaluate_method`): the first seed's, with the mean of each of ``scores`` (cso_map and
    the APs: ``EvaluateConfig.score_keys``) and of ``SEED_AVERAGED`` (those all hold) and beside it
    ``<score>_std`` (sample std, ddof 1), ``seeds`` (how many) and ``per_seed`` (seed -> its
    scores). One seed's metrics come back unchanged."""
    if len(per_seed) == 1:
        return dict(per_seed[0])
    combined = dict(per_seed[0])
    for key in (key for key in (*scores, *SEED_AVERAGED) if all(key in metrics for metrics in per_seed)):
        values = np.array([metrics[key] for metrics in per_seed], dtype=np.float64)
        combined[key], combined[f"{key}_std"] = float(values.mean()), float(values.std(ddof=1))
    combined["seeds"] = len(per_seed)
    combined["per_seed"] = {str(seed): {key: metrics[key] for key in scores}
                            for seed, metrics in zip(seeds, per_seed)}
    return combined


def pack_detections(detections: list[np.ndarray]) -> dict[str, np.ndarray]:
    """Per-window detections as two arrays for an .npz: ``detections`` (n, 3) x, y, score and
    ``detection_window`` (n,) the window each belongs to."""
    counts = np.array([len(found) for found in detections], dtype=np.int64)
    rows = np.concatenate([np.asarray(found, np.float64).reshape(-1, 3) for found in detections]) \
        if detections else np.zeros((0, 3))
    return {"detections": rows, "detection_window": np.repeat(np.arange(len(detections)), counts)}


def unpack_detections(saved, windows: np.ndarray) -> list[np.ndarray]:
    """The detections of the chosen ``windows`` (indices) from :func:`pack_detections` arrays."""
    rows, owner = saved["detections"], saved["detection_window"]
    return [rows[owner == index] for index in windows]
