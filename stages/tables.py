"""Stage tables: table7 (Markdown + LaTeX, ours beside the published numbers) and the test-window figure.

Params: train (the method list and epochs), simulate.trajectories (profile), evaluate.window, report.
"""
import argparse
from pathlib import Path

import numpy as np
import pandas as pd

from pipeline.cli import run_stage
from pipeline.config import EvaluateConfig, ReportConfig, load_params, section
from pipeline.data import load_split, make_windows
from pipeline.io import DataFileError, atomic_path, load_array, read_json
from pipeline.coords import Grid
from pipeline.methods import method_info
from pipeline.stage_io import PROPOSAL_PREFIX
from pipeline.reports import build_table7, draw_windows, figure_windows, profile_label, to_latex, to_markdown


def method_label(method: str) -> tuple[str, str]:
    """(family, label) of a train entry or of a physfit_<network> variant."""
    if method.startswith(PROPOSAL_PREFIX) and method != PROPOSAL_PREFIX.rstrip("_"):
        family, label = method_info(PROPOSAL_PREFIX.rstrip("_"))
        return family, f"{label} ← {method_info(method[len(PROPOSAL_PREFIX):])[1]} proposals"
    return method_info(method)


def main(args: argparse.Namespace) -> None:
    params = load_params()
    methods = dict(section(params, "train"))
    evaluated = list(methods) + [PROPOSAL_PREFIX + network for network in params.get("physfit_proposals") or []]
    evaluate = EvaluateConfig.from_section(section(params, "evaluate"))
    report = ReportConfig.from_section(section(params, "report"))
    profile = profile_label(section(params, "simulate")["trajectories"],
                            {m: methods[m].get("epochs", 0) for m in methods})
    results = {m: read_json(Path(args.metrics) / f"{m}.json") for m in evaluated}
    labels = {m: method_label(m) for m in evaluated}
    oracle = read_json(args.oracle)
    devices = sorted({r["device"] for r in results.values()})
    table = build_table7(results, labels, pd.read_csv(args.reference), oracle)
    title = "Table VII: CSO-mAP on the SeqCSIST test split, ours (published)"
    notes = [f"Profile: **{profile}**. Published numbers (in parentheses) are paper scale.",
             f"Scored on the middle frames of {evaluate.window}-frame test windows "
             f"({results[next(iter(results))]['frames']:,} frames); FPS = windows per second on {', '.join(devices)}; "
             "FLOPs per window (torch.utils.flop_counter); Params = trainable parameters.",
             "Grid-oracle rows: the ground truth snapped to the HR grid, the best any HR-map method can score."]
    out = Path(args.tables)
    with atomic_path(out / "table7.md") as tmp:
        tmp.write_text(to_markdown(table, title, notes))
    with atomic_path(out / "table7.tex") as tmp:
        tmp.write_text(to_latex(table, f"{title}. {profile}."))

    grid = Grid.from_phi(load_array(args.phi))
    test = load_split(args.frames, args.targets, args.split, "test")
    windows = make_windows(test, grid, evaluate.window)
    chosen = figure_windows(report.figure_windows, len(windows))
    outputs = {}
    for method in evaluated:
        with np.load(Path(args.predictions) / f"{method}.npz") as saved:
            if not np.array_equal(saved["t"], windows.t):
                raise DataFileError(f"{args.predictions}/{method}.npz: windows differ from the test split")
            outputs[labels[method][1]] = saved["hr"][chosen]
    with atomic_path(Path(args.figures) / "test_windows.png") as tmp:
        draw_windows(tmp, windows.lr[chosen, evaluate.window // 2], windows.hr[chosen], outputs,
                     test.frame_targets(windows.t[chosen], windows.f[chosen]),
                     f"Test windows: LR middle frame, ground truth and HR outputs (+ true positions). {profile}")


if __name__ == "__main__":
    parser = argparse.ArgumentParser(prog="stages/tables.py", description=__doc__)
    parser.add_argument("--phi", required=True, help="Phi .npy (grid)")
    for name in ("frames", "targets", "split"):
        parser.add_argument(f"--{name}", required=True, help=f"{name} Parquet input")
    parser.add_argument("--metrics", required=True, help="folder of per-method metrics JSON")
    parser.add_argument("--oracle", required=True, help="grid-oracle JSON")
    parser.add_argument("--predictions", required=True, help="folder of per-method test HR maps (.npz)")
    parser.add_argument("--reference", required=True, help="published Table VII CSV")
    parser.add_argument("--tables", required=True, help="output folder for table7.md / .tex")
    parser.add_argument("--figures", required=True, help="output folder for figures")
    run_stage(main, parser)
