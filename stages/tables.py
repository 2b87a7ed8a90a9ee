"""Stage tables: table7 (Markdown + LaTeX, ours beside the published numbers) and the test-window figure.

Also collects the noise sweep of every swept method into reports/tables/noise_sweep.md.
Params: methods and physfit_proposals (what was scored, with budgets), profile, simulate.trajectories,
evaluate.window, report, noise_sweep, sensor.
"""
import argparse
from inspect import signature
from pathlib import Path

import numpy as np
import pandas as pd

from pipeline.cli import DATASET, run_stage, stage_parser
from pipeline.config import load_params, section
from pipeline.settings import EvaluateConfig, NoiseSweepConfig, ReportConfig, TrainerConfig
from pipeline.coords import Grid
from pipeline.data import load_split, make_windows
from pipeline.evaluation import unpack_detections
from pipeline.io import DataFileError, atomic_path, load_array, load_arrays, read_json
from pipeline.methods import method_class
from pipeline.reports import (build_table7, draw_windows, figure_windows, noise_sweep_markdown, perceptual_note,
                              profile_label, profile_name, table7_notes, to_latex, to_markdown)
from pipeline.method_specs import check_proposals, evaluated_ids, method_label, method_spec
from pipeline.sensor import Sensor


def main(args: argparse.Namespace) -> None:
    params = load_params()
    methods = section(params, "methods")
    evaluated = evaluated_ids(methods, check_proposals(params.get("physfit_proposals"), methods))
    evaluate = EvaluateConfig.from_section(section(params, "evaluate"))
    report = ReportConfig.from_section(section(params, "report"))
    specs = [method_spec(methods, m) for m in methods]
    budgets = {s.id: f"{s.train.epochs} x {s.train.windows_per_epoch or 'all'}" for s in specs if s.trainable}
    profile = profile_label(profile_name(params), section(params, "simulate")["trajectories"], budgets)
    results = {m: read_json(Path(args.metrics_dir) / f"{m}.json") for m in evaluated}
    labels = {m: method_label(m, methods) for m in evaluated}
    devices = sorted({r["device"] for r in results.values()})
    crb = read_json(args.crb)
    table = build_table7(results, labels, pd.read_csv(args.reference), read_json(args.oracle), evaluate.score_keys, crb)
    title = "Table VII: CSO-mAP on the SeqCSIST test split, ours (published)"
    seeds = TrainerConfig.from_section(section(params, "trainer")).seeds
    notes = table7_notes(profile, evaluate, results[evaluated[0]]["frames"], devices, seeds, crb)
    perceptual = perceptual_note({labels[s.id][1]: s.model.get("perceptual_weights") for s in specs
                                  if s.id in labels and "perceptual_weights" in signature(method_class(s.name)).parameters})
    if perceptual:
        notes.append(perceptual)
    out = Path(args.tables)
    with atomic_path(out / "table7.md") as tmp:
        tmp.write_text(to_markdown(table, title, notes))
    with atomic_path(out / "table7.tex") as tmp:
        tmp.write_text(to_latex(table, f"{title}. {profile}."))
    swept = NoiseSweepConfig.from_section(section(params, "noise_sweep")).methods
    sweeps = {m: read_json(Path(args.noise_dir) / f"{m}.json") for m in swept}
    with atomic_path(out / "noise_sweep.md") as tmp:
        tmp.write_text(noise_sweep_markdown(sweeps, {m: method_label(m, methods)[1] for m in swept},
                                            Sensor.from_section(section(params, "sensor")), profile_name(params),
                                            section(params, "simulate")["trajectories"]))

    grid = Grid.from_phi(load_array(args.phi))
    test = load_split(args.frames, args.targets, args.split, "test")
    windows = make_windows(test, grid, evaluate.window, evaluate.window_stride)
    chosen = figure_windows(report.figure_windows, len(windows))
    outputs = {}
    for method in evaluated:
        path = Path(args.predictions_dir) / f"{method}.npz"
        saved = load_arrays(path, ("hr", "t", "f", "detections", "detection_window"))
        if not (np.array_equal(saved["t"], windows.t) and np.array_equal(saved["f"], windows.f)):
            raise DataFileError(f"{path}: windows differ from the test split")
        outputs[labels[method][1]] = (saved["hr"][chosen], unpack_detections(saved, chosen))
    with atomic_path(Path(args.figures) / "test_windows.png") as tmp:
        draw_windows(tmp, windows.lr[chosen, evaluate.window // 2], windows.hr[chosen], outputs,
                     test.frame_targets(windows.t[chosen], windows.f[chosen]),
                     "Test windows cropped around the group: true positions (cyan +), detections (white x). "
                     f"{profile_name(params)}")


if __name__ == "__main__":
    run_stage(main, stage_parser(
        __file__, __doc__,
        inputs=("phi", *DATASET, "metrics_dir", "noise_dir", "oracle", "crb", "predictions_dir", "reference"),
        outputs={"tables": "output folder for table7.md / .tex", "figures": "output folder for figures"}))
