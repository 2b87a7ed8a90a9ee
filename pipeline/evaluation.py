"""The evaluation protocol: scoring a method on the middle frames of the test windows, and the
grid-oracle bound."""
from __future__ import annotations

import numpy as np

from pipeline.config import EvaluateConfig
from pipeline.coords import Grid
from pipeline.data import SplitData, scored_positions
from pipeline.metrics import cso_map, hr_map_to_detections, nearest_target_distance, targets_to_hr_maps


def grid_oracle(data: SplitData, grid: Grid, config: EvaluateConfig) -> dict:
    """CSO-mAP of the ground truth snapped to the HR grid, the best any HR-map method can do.

    ``brightness``: the GT maps scored as any method's output (detections scored by the
    brightness they carry). ``perfect_ranking``: the same detections ranked by closeness to
    their target, the ceiling with an ideal score.
    """
    t, f = scored_positions(data, config.window)
    truths = data.frame_targets(t, f)
    maps = targets_to_hr_maps(truths, grid)
    detections = hr_map_to_detections(maps, c=grid.c, threshold=config.brightness_threshold)
    by_brightness = cso_map(detections, truths, config.distance_thresholds)
    distances = nearest_target_distance(detections, truths)
    ranked = [np.column_stack([found[:, :2], -distance]) for found, distance in zip(detections, distances)]
    by_closeness = cso_map(ranked, truths, config.distance_thresholds)
    return {"brightness": by_brightness, "perfect_ranking": by_closeness,
            "frames": int(len(truths)), "targets": int(sum(len(x) for x in truths))}
