"""Long training runs that outlive the machine they started on (params.yaml ``long_runs``).

A long run trains one method far past the laptop budget, to its validation plateau, through the
one trainer. Everything it needs to continue travels with the repository, in ``runs/<id>/``:
``checkpoint.pt`` (weights, optimiser, torch RNG, position and history, committed while the run is
unfinished) and ``curve.csv`` (validation CSO-mAP against training windows seen, CPU and wall
seconds). A fresh clone resumes it after regenerating the data (``dvc repro qinit``)::

    python -m pipeline.long_run train derefnet --hours 2   # trains, stops after the epoch past 2 h
    python -m pipeline.long_run status                     # position of every long run
    python -m pipeline.long_run score derefnet             # full test split, then a zoo entry
    python -m pipeline.long_run report                     # reports/tables/converged.md + figure

A finished run is scored on the whole test split (``evaluate.window_stride`` 1) and its best
weights enter the model zoo: ``zoo/<id>-<sha256[:8]>.pt`` (the format of ``models/<id>.pt``)
with an entry in ``zoo/metafile.yml`` (method, architecture, data and Q_init hashes, budget,
commit, device, test scores, sha256). ``methods.<id>.weights: zoo/<file>`` then makes
``train@<id>`` install those weights instead of training, so ``evaluate@<id>`` scores them.
"""
from __future__ import annotations

import argparse
import dataclasses
import platform
import subprocess
import sys
import time
from pathlib import Path
from typing import Any, Mapping

import numpy as np
import pandas as pd
from pipeline.config import ConfigError, build_config, check_choice, check_integer, load_params, require, section
from pipeline.settings import EvaluateConfig
from pipeline.io import DataFileError, atomic_path, file_sha256, read_json, write_json
from pipeline.zoo import add_weights, read_metafile, verified_entry

RUNS = Path("runs")
DATA = {"phi": Path("data/phi.npy"), "qinit": Path("data/qinit.npy"), "frames": Path("data/dataset/frames.parquet"),
        "targets": Path("data/dataset/targets.parquet"), "split": Path("data/split.parquet")}
CURVE_COLUMNS = ["epoch", "windows", "cpu_seconds", "wall_seconds", "lr", "train_loss", "val_cso_map"]
RUN_TABLES = ("converged", "ablations")
EXPERIMENTS, ABLATIONS = Path("experiments.yaml"), "ablations"
FULL_MODEL_ROW = ("I", "A (zeta=1 beta=0.01 gamma=0.01)")  # the published full model (reference/seqcsist_ablations.csv)
FLAT_GAIN = 0.5  # CSO-mAP: a curve has flattened when its last doubling of windows added less


def _check_train(key: str, value: Any) -> Mapping:
    """A mapping with the keys of ``methods.<id>.train`` (checked as a TrainBudget when used)."""
    require(isinstance(value, Mapping), key, value, "a mapping like methods.<id>.train")
    return value


def _check_model(key: str, value: Any) -> Mapping:
    """A mapping of ``methods.<id>.model`` keys (checked by the method's constructor when built)."""
    require(isinstance(value, Mapping), key, value, "a mapping of keys of methods.<method>.model")
    return dict(value)


def _check_ablation(key: str, value: Any) -> str:
    require(isinstance(value, str) and value != "", key, value, f"the id of a row of {EXPERIMENTS}'s {ABLATIONS} group")
    return value


def ablation_row(row_id: str, method: str, key: str):
    """The row ``row_id`` of experiments.yaml's ablations group and its ``methods.<method>.model``
    changes; a row that sets anything else (the data, the sensor) is a ConfigError."""
    from pipeline.experiments import load_group

    group = load_group(EXPERIMENTS, ABLATIONS)
    row = next((r for r in group.rows if r.id == row_id), None)
    require(row is not None, key, row_id, f"a row id of {EXPERIMENTS} {ABLATIONS}: {', '.join(r.id for r in group.rows)}")
    source = next(r for r in group.rows if r.id == row.same_as) if row.same_as else row
    prefix = f"methods.{method}.model."
    other = sorted(k for k in source.set if not k.startswith(prefix))
    require(not other, key, row_id, f"the row changes {', '.join(other)}: long runs train on the committed dataset, so "
                                    "rows that change the data run as DVC experiments (python -m pipeline.experiments)")
    return row, {k[len(prefix):]: v for k, v in source.set.items()}


@dataclasses.dataclass(frozen=True)
class LongRun:
    """One ``long_runs.<id>`` entry: the ``methods`` entry whose architecture is trained
    (``method``, default the id), its ``train`` budget (the keys of ``methods.<id>.train``),
    the training ``seed``, CPU ``threads``, ``val_windows`` scored after every epoch and
    ``model``: keys of ``methods.<method>.model`` changed for this run; ``ablation``: the id of a
    row of experiments.yaml's ``ablations`` group whose model changes this run trains (a row that
    changes the data is refused: long runs train on the committed dataset); ``table``: the report
    it belongs to, ``converged`` (Table VII at its plateau) or ``ablations`` (the ablation budget's
    seeds and rows, reports/tables/ablations_cpu.md)."""

    id: str
    method: str
    train: Mapping
    seed: int = 0
    threads: int = 1
    val_windows: int = 512
    model: Mapping = dataclasses.field(default_factory=dict)
    ablation: str | None = None
    table: str = "converged"

    @classmethod
    def from_section(cls, runs: Mapping, run_id: str) -> "LongRun":
        key = f"long_runs.{run_id}"
        if run_id not in runs:
            raise ConfigError(f"{run_id!r} is not a key of params.yaml long_runs (known: {', '.join(runs)})")
        entry = dict(runs[run_id] or {})
        entry.setdefault("method", run_id)
        return build_config(cls, key, {"id": run_id, **entry}, {
            "id": lambda k, v: v,
            "method": lambda k, v: v,
            "train": _check_train,
            "seed": lambda k, v: check_integer(k, v, 0),
            "threads": lambda k, v: check_integer(k, v, 0),
            "val_windows": lambda k, v: check_integer(k, v, 1),
            "model": _check_model,
            "ablation": lambda k, v: v if v is None else _check_ablation(k, v),
            "table": lambda k, v: check_choice(k, v, RUN_TABLES),
        })

    @property
    def folder(self) -> Path:
        return RUNS / self.id

    @property
    def checkpoint(self) -> Path:
        return self.folder / "checkpoint.pt"

    @property
    def curve(self) -> Path:
        return self.folder / "curve.csv"

    @property
    def best(self) -> Path:
        return self.folder / "best.pt"

    @property
    def test(self) -> Path:
        return self.folder / "test.json"


def flattened(curve: pd.DataFrame, gain: float = FLAT_GAIN) -> bool | None:
    """Whether the last doubling of training windows raised the best validation CSO-mAP by less
    than ``gain`` (None while the run has not yet seen twice its first epoch's windows)."""
    if curve.empty or curve["windows"].iloc[-1] < 2 * curve["windows"].iloc[0]:
        return None
    half = curve["windows"].iloc[-1] / 2
    before = curve.loc[curve["windows"] <= half, "val_cso_map"].max()
    return bool(curve["val_cso_map"].max() - before < gain)


def _spec(run: LongRun, methods: Mapping):
    from pipeline.method_specs import method_spec
    from pipeline.settings import TrainBudget

    require(run.method in methods, f"long_runs.{run.id}.method", run.method, "a key of params.yaml methods")
    entry = dict(methods[run.method])
    changes = dict(run.model)
    if run.ablation is not None:
        changes = {**ablation_row(run.ablation, run.method, f"long_runs.{run.id}.ablation")[1], **changes}
    if changes:  # checked by method_spec like the entry's own model keys
        entry["model"] = {**(entry.get("model") or {}), **changes}
    base = method_spec({**methods, run.method: entry}, run.method)
    require(base.trainable, f"long_runs.{run.id}.method", run.method, "a trainable method of params.yaml methods")
    budget = TrainBudget.from_section(run.train, f"long_runs.{run.id}.train")
    return dataclasses.replace(base, train=budget)


def _trainer(run: LongRun, params: Mapping):
    from pipeline.settings import TrainerConfig

    trainer = TrainerConfig.from_section(section(params, "trainer"))
    return dataclasses.replace(trainer, seeds=(run.seed,), threads=run.threads, val_windows=run.val_windows)


def _physics(params: Mapping):
    from pipeline.sensor import Sensor
    from pipeline.stage_io import load_physics

    return load_physics(DATA["phi"], DATA["qinit"], Sensor.from_section(section(params, "sensor")))


def write_curve(history: list[dict], path: Path) -> None:
    with atomic_path(path) as tmp:
        pd.DataFrame(history, columns=CURVE_COLUMNS).to_csv(tmp, index=False)


def train(run_id: str, hours: float | None, accept_inputs: bool) -> bool:
    """Train (or resume) long run ``run_id``; stop after the first epoch that ends past ``hours``
    of wall time in this call. True when the budget is complete (best weights in runs/<id>/best.pt)."""
    import torch

    from pipeline import distributed
    from pipeline.evaluation import validation_scorer
    from pipeline.stage_io import load_training_windows, save_model
    from pipeline.training import train_method

    params = load_params()
    run = LongRun.from_section(section(params, "long_runs"), run_id)
    spec = _spec(run, section(params, "methods"))
    trainer = _trainer(run, params)
    evaluate = EvaluateConfig.from_section(section(params, "evaluate"))
    physics = _physics(params)
    train_windows, val, val_truths = load_training_windows(DATA["frames"], DATA["targets"], DATA["split"], physics,
                                                           evaluate.window, trainer.val_windows)
    device = torch.device("cpu")
    distributed.start(device)

    validate = validation_scorer(val, val_truths, evaluate, trainer.eval_batch, device)
    started = time.perf_counter()

    def after_epoch(history: list[dict]) -> bool:
        write_curve(history, run.curve)
        return hours is not None and time.perf_counter() - started > hours * 3600

    run.folder.mkdir(parents=True, exist_ok=True)
    result = train_method(spec, trainer, physics, train_windows, validate, run.checkpoint, device, seed=run.seed,
                          after_epoch=after_epoch, accept_inputs=accept_inputs)
    write_curve(result.history, run.curve)
    if not result.finished:
        last = result.history[-1]
        print(f"long run {run_id}: stopped after epoch {last['epoch'] + 1} of {spec.train.epochs} "
              f"({last['windows']:,} windows, {last['cpu_seconds'] / 3600:.2f} CPU-h); the checkpoint "
              f"{run.checkpoint} is kept: commit it, and continue on any machine with "
              f"`python -m pipeline.long_run train {run_id}`")
        return False
    save_model({run.seed: result.best_state}, spec.id, dataclasses.asdict(spec), run.best)
    run.checkpoint.unlink(missing_ok=True)
    print(f"long run {run_id}: budget complete; best weights in {run.best}; next: "
          f"`python -m pipeline.long_run score {run_id}`")
    return True


def score(run_id: str) -> dict:
    """Score a finished run's best weights on the whole test split and enter them in the zoo."""
    import torch

    from pipeline.evaluation import evaluate_method
    from pipeline.method_specs import build_method
    from pipeline.stage_io import load_state, load_windows

    params = load_params()
    run = LongRun.from_section(section(params, "long_runs"), run_id)
    weights = run.best if run.best.is_file() else _zoo_file(run_id)
    if weights is None:
        raise DataFileError(f"{run.best}: not found and no zoo entry of {run_id}; the run is unfinished "
                            f"(`python -m pipeline.long_run train {run_id}`)")
    spec = _spec(run, section(params, "methods"))
    trainer = _trainer(run, params)
    if trainer.threads:
        torch.set_num_threads(trainer.threads)
    evaluate = dataclasses.replace(EvaluateConfig.from_section(section(params, "evaluate")), window_stride=1)
    physics = _physics(params)
    device = torch.device("cpu")
    model = load_state(build_method(spec, physics, device, weight_files=False), spec.id, weights, run.seed)
    test, truths = load_windows(DATA["frames"], DATA["targets"], DATA["split"], "test", physics, evaluate.window)
    metrics = evaluate_method(model, test, truths, evaluate, device, trainer.eval_batch, progress=True)[0]
    metrics = {"method": spec.id, "test_windows": len(test), **metrics}
    write_json(metrics, run.test)
    entry = zoo_entry(run, spec, metrics, pd.read_csv(run.curve), weights)
    print(f"long run {run_id}: CSO-mAP {metrics['cso_map']:.2f} on {len(test):,} test windows; "
          f"zoo entry {entry['file']}; score it through the pipeline with "
          f"`dvc exp run -S methods.{spec.id}.weights={entry['file']} -S evaluate.window_stride.laptop=1`")
    return metrics


def _commit() -> str:
    try:
        return subprocess.run(["git", "rev-parse", "HEAD"], capture_output=True, text=True, check=True).stdout.strip()
    except (OSError, subprocess.CalledProcessError):
        return "unknown"


def _zoo_file(run_id: str) -> Path | None:
    """The zoo file of a scored run (a fresh clone has no runs/<id>/best.pt), None if none."""
    entry = next((e for e in read_metafile() if e.get("id") == run_id), None)
    return None if entry is None else Path(verified_entry(entry["file"])["file"])


def zoo_entry(run: LongRun, spec, metrics: Mapping, curve: pd.DataFrame, weights: Path) -> dict:
    """Enter the run's best weights (``weights``) in the zoo with what made them and how they score."""
    best = curve.loc[curve["val_cso_map"].idxmax()]
    return add_weights(weights, run.id, {
        "method": spec.name,
        "architecture": dict(spec.model),
        "training": {**dataclasses.asdict(spec.train), "seed": run.seed, "threads": run.threads,
                     "windows_seen": int(curve["windows"].iloc[-1]), "best_epoch": int(best["epoch"]),
                     "best_val_cso_map": round(float(best["val_cso_map"]), 2),
                     "cpu_hours": round(float(curve["cpu_seconds"].iloc[-1]) / 3600, 2),
                     "wall_hours": round(float(curve["wall_seconds"].iloc[-1]) / 3600, 2),
                     "flattened": flattened(curve)},
        "data": {name: file_sha256(path) for name, path in DATA.items()},
        "scored_at_commit": _commit(),  # the code that scored it; the training code is the one of the run's start
        "device": f"cpu ({platform.processor() or platform.machine()}, {run.threads} thread(s))",
        "test": {"windows": int(metrics["test_windows"]),
                 **{k: round(float(v), 2) for k, v in metrics.items() if k == "cso_map" or k.startswith("ap")}},
    })


def status() -> list[dict]:
    params = load_params()
    rows = []
    for run_id in section(params, "long_runs"):
        run = LongRun.from_section(section(params, "long_runs"), run_id)
        spec = _spec(run, section(params, "methods"))
        curve = pd.read_csv(run.curve) if run.curve.is_file() else pd.DataFrame(columns=CURVE_COLUMNS)
        state = ("scored" if run.test.is_file() else "finished" if run.best.is_file()
                 else "unfinished" if run.checkpoint.is_file() else "not started")
        rows.append({"id": run_id, "state": state, "epochs": f"{len(curve)}/{spec.train.epochs}",
                     "windows": int(curve["windows"].iloc[-1]) if len(curve) else 0,
                     "cpu_hours": round(float(curve["cpu_seconds"].iloc[-1]) / 3600, 2) if len(curve) else 0.0,
                     "best_val": round(float(curve["val_cso_map"].max()), 2) if len(curve) else None})
    return rows


def report(tables: Path = Path("reports/tables"), figures: Path = Path("reports/figures"),
           reference: Path = Path("reference/seqcsist_table7.csv")) -> None:
    """reports/tables/converged.md and reports/figures/long_runs.png from every scored long run."""
    from pipeline.methods import method_class
    from pipeline.reports import converged_markdown, draw_learning_curves

    params = load_params()
    published = pd.read_csv(reference)
    rows, curves = [], {}
    for run_id in section(params, "long_runs"):
        run = LongRun.from_section(section(params, "long_runs"), run_id)
        if run.table != "converged" or not run.curve.is_file():
            continue
        curve = pd.read_csv(run.curve)
        spec = _spec(run, section(params, "methods"))
        label = method_class(spec.name).label or run_id
        curves[label] = curve
        test = read_json(run.test) if run.test.is_file() else None
        paper = published.loc[published["method_id"] == run.method, "cso_map"]
        rows.append({"method": label, "published": float(paper.iloc[0]) if len(paper) else None,
                     "ours": test["cso_map"] if test else None,
                     "test_windows": test["test_windows"] if test else None,
                     "windows": int(curve["windows"].iloc[-1]), "cpu_hours": float(curve["cpu_seconds"].iloc[-1]) / 3600,
                     "best_val": float(curve["val_cso_map"].max()), "flattened": flattened(curve),
                     "state": "scored" if test else ("finished" if run.best.is_file() else "unfinished")})
    with atomic_path(tables / "converged.md") as tmp:
        tmp.write_text(converged_markdown(rows, FLAT_GAIN))
    draw_learning_curves(curves, figures / "long_runs.png",
                         {row["method"]: row["published"] for row in rows if row["published"] is not None})
    ablations_report(params, tables / "ablations_cpu.md")


def ablations_report(params: Mapping, out: Path, reference: Path = Path("reference/seqcsist_ablations.csv")) -> None:
    """reports/tables/ablations_cpu.md from the scored long runs of table ``ablations``: the full
    model's seeds (no ablation row, no model change) and one line per ablation row."""
    from pipeline.reports import ablations_cpu_markdown

    published = pd.read_csv(reference).set_index(["table", "row"])["cso_map"] if reference.is_file() else pd.Series()
    runs = [LongRun.from_section(section(params, "long_runs"), run_id) for run_id in section(params, "long_runs")]
    runs = [run for run in runs if run.table == "ablations"]
    if not runs:
        return
    scored = {run.id: read_json(run.test)["cso_map"] for run in runs if run.test.is_file()}
    full = [scored[run.id] for run in runs if run.ablation is None and not run.model and run.id in scored]
    by_row: dict[str, list[float]] = {}
    for run in runs:
        if run.ablation is not None:
            by_row.setdefault(run.ablation, []).extend([scored[run.id]] if run.id in scored else [])
    rows = []
    for row_id, values in by_row.items():
        row, _ = ablation_row(row_id, runs[0].method, "long_runs.*.ablation")
        rows.append({"table": row.table, "row": row.row, "ours": float(np.mean(values)) if values else None,
                     "seeds": len(values), "published": published.get((row.table, row.row))})
    budget = runs[0].train
    words = (f"{budget['epochs']} x {budget['windows_per_epoch']:,} windows, batch {budget['batch']}, "
             f"{budget.get('schedule', 'constant')} lr from {budget['lr']:g}, one CPU thread")
    with atomic_path(out) as tmp:
        tmp.write_text(ablations_cpu_markdown(full, rows, words, published.get(FULL_MODEL_ROW)))


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m pipeline.long_run", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    commands = parser.add_subparsers(dest="command", required=True)
    trainer = commands.add_parser("train", help="train or resume a long run")
    trainer.add_argument("run", help="a key of params.yaml long_runs")
    trainer.add_argument("--hours", type=float, default=None, help="stop after the epoch that ends past this")
    trainer.add_argument("--accept-inputs", action="store_true",
                         help="resume although this machine's data, Phi or Q_init hash differently")
    scorer = commands.add_parser("score", help="score a finished run on the whole test split; zoo entry")
    scorer.add_argument("run")
    commands.add_parser("status", help="where every long run stands")
    commands.add_parser("report", help="reports/tables/converged.md and reports/figures/long_runs.png")
    args = parser.parse_args(argv)
    try:
        if args.command == "train":
            if train(args.run, args.hours, args.accept_inputs):
                score(args.run)
                report()
        elif args.command == "score":
            score(args.run)
            report()
        elif args.command == "status":
            print(pd.DataFrame(status()).to_string(index=False))
        else:
            report()
    except (ConfigError, DataFileError, ValueError) as exc:
        print(f"{parser.prog}: error: {' '.join(str(exc).split())}", file=sys.stderr)
        sys.exit(2)
    except KeyboardInterrupt:
        print(f"{parser.prog}: interrupted; the checkpoint of the last completed epoch is kept: continue with "
              f"`python -m pipeline.long_run {args.command} {getattr(args, 'run', '')}`", file=sys.stderr)
        sys.exit(130)


if __name__ == "__main__":
    main()
