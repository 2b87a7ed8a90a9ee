"""Named DVC experiments: queue a group of ``dvc exp run -S ...`` rows and collect their metrics.

A group of ``experiments.yaml`` (an ablation table, a seed sweep) lists rows, each one DVC
experiment: an ``id``, the paper ``table`` and ``row`` it regenerates, and the params it sets;
the group's own ``set`` (a budget, say) applies to every row under the row's own.

    python -m pipeline.experiments queue ablations     # dvc exp run --queue -n ablations-<id> -S ...
    dvc queue start -j 2                              # run them (dvc queue status to follow)
    python -m pipeline.experiments collect ablations  # -> reports/tables/ablations.md

The collector reads ``dvc exp show --json --all-commits`` (experiments of every baseline commit,
so a queue started before a later commit still counts), keeps the newest finished experiment
named ``<group>-<id>`` for each row (finished = listed by ``dvc exp list``; queued and running
ones show their baseline's metrics and are skipped) and writes the group's metric file of each
(``reports/metrics/<method>.json``) beside the published row. Rows not run yet show '—'. The
collected runs are also kept in ``reports/tables/<group>.json`` (metrics, baseline commit, time):
experiments live in the local git refs of one machine, so a later collect elsewhere keeps the
committed rows it cannot see and replaces them only with newer runs. This module is the group
schema and the DVC adapter; the tables and figure are drawn by :mod:`pipeline.reports`.
"""
from __future__ import annotations

import argparse
import copy
import dataclasses
import json
import re
import shlex
import subprocess
import sys
from pathlib import Path
from typing import Any, Mapping, Sequence

import pandas as pd
import yaml

from pipeline.config import (PROFILES, ConfigError, check_number_list, read_params, read_yaml, require, resolve_profile,
                             section, with_overrides)
from pipeline.io import atomic_path
from pipeline.reports import budget_figure, experiments_markdown
from pipeline.settings import score_keys

FIGURES = ("budget",)  # a group's optional figure: CSO-mAP against training windows, one line per method
_ID_PATTERN = re.compile(r"[a-z0-9][a-z0-9_-]*")
_MISSING = object()


@dataclasses.dataclass(frozen=True)
class Row:
    """One experiment: ``id`` (its name is ``<group>-<id>``), the published ``table``/``row`` it
    regenerates and the params it sets (dotted key -> value, as ``dvc exp run -S`` takes them);
    ``same_as``: the id of another row whose experiment it reuses (a baseline shared by tables);
    ``method``/``targets``: the row's own method and stages, where a group mixes methods (a
    learning curve of two networks)."""

    id: str
    table: str
    row: str
    set: dict
    same_as: str | None = None
    method: str | None = None
    targets: tuple[str, ...] | None = None


@dataclasses.dataclass(frozen=True)
class Group:
    """A named list of rows scored on one method's metrics (a row may name its own); ``targets``:
    the stages each experiment reproduces (empty = the whole pipeline); ``set``: params every row
    sets; ``figure``: "budget" plots CSO-mAP against each row method's training windows."""

    name: str
    method: str
    targets: tuple[str, ...]
    rows: tuple[Row, ...]
    set: dict = dataclasses.field(default_factory=dict)
    figure: str | None = None

    def experiment_name(self, row: Row) -> str:
        return f"{self.name}-{row.same_as or row.id}"

    def method_of(self, row: Row) -> str:
        return row.method or self.method

    def overrides(self, row: Row) -> dict:
        """The params the experiment of ``row`` sets: the group's, then the row's own."""
        source = next(r for r in self.rows if r.id == row.same_as) if row.same_as else row
        return {**self.set, **source.set}

    def command(self, row: Row, queue: bool = False, params: Mapping | None = None) -> list[str]:
        """``dvc exp run`` arguments that reproduce ``row``; with ``queue``, as a named queue entry.
        Given ``params`` (params.yaml as written), a plain value set on a key that holds a
        per-profile mapping is written for both profiles (DVC cannot merge a list or a number
        onto a mapping: "Cannot merge DictConfig with ListConfig")."""
        targets = self.targets if row.targets is None else row.targets
        command = ["dvc", "exp", "run", *(["--queue", "-n", self.experiment_name(row)] if queue else []), *targets]
        for key, value in self.overrides(row).items():
            if params is not None and is_profile_mapping(_lookup(params, key)) and not is_profile_mapping(value):
                value = {profile: copy.deepcopy(value) for profile in PROFILES}  # no YAML anchors
            command += ["-S", f"{key}={_flow(value)}"]
        return command


EXP_SHOW_TIMEOUT = 300  # s: collect reports the unfinished experiments instead of waiting on a busy queue
QUEUE_STATUS_TIMEOUT = 60


def load_group(path: str | Path, name: str) -> Group:
    """The group ``name`` of an experiments file; a bad entry is a ConfigError naming its key."""
    path = Path(path)
    try:
        groups = read_yaml(path, "experiments file")
    except OSError as error:
        raise ConfigError(f"{path}: cannot read the experiments file ({error})") from error
    if not isinstance(groups, Mapping) or name not in groups:
        raise ConfigError(f"{path}: no experiment group {name!r} (groups: "
                          f"{', '.join(groups) if isinstance(groups, Mapping) else 'none'})")
    entry = groups[name]
    require(isinstance(entry, Mapping) and set(entry) <= {"method", "targets", "set", "rows", "figure"}, name, entry,
            "a mapping with method, targets, rows and optionally set and figure")
    require(isinstance(entry.get("method"), str), f"{name}.method", entry.get("method"), "a method id")
    targets = _stage_names(entry.get("targets") or [], f"{name}.targets")
    require(entry.get("figure") in (None, *FIGURES), f"{name}.figure", entry.get("figure"), f"one of {list(FIGURES)}")
    rows, seen = [], set()
    for index, row in enumerate(entry.get("rows") or []):
        key = f"{name}.rows.{index}"
        require(isinstance(row, Mapping) and set(row) <= {"id", "table", "row", "set", "same_as", "method", "targets"},
                key, row, "a mapping with id, table, row and set (or same_as), optionally method and targets")
        require(row.get("method") is None or isinstance(row["method"], str), f"{key}.method", row.get("method"),
                "a method id")
        require(isinstance(row.get("id"), str) and _ID_PATTERN.fullmatch(row["id"]) is not None,
                f"{key}.id", row.get("id"), "lower-case letters, digits, '_' and '-'")
        require(row["id"] not in seen, f"{key}.id", row["id"], "must be unique in the group")
        seen.add(row["id"])
        overrides = row.get("set") or {}
        require(isinstance(overrides, Mapping), f"{key}.set", overrides, "a mapping of dotted params")
        same_as = row.get("same_as")
        require(same_as is None or (same_as in seen and not overrides), f"{key}.same_as", same_as,
                "the id of an earlier row, without a set of its own")
        row_targets = None if row.get("targets") is None else _stage_names(row["targets"], f"{key}.targets")
        rows.append(Row(row["id"], str(row.get("table", "")), str(row.get("row", row["id"])), dict(overrides), same_as,
                        row.get("method"), row_targets))
    require(bool(rows), f"{name}.rows", None, "must list at least one experiment")
    common = entry.get("set") or {}
    require(isinstance(common, Mapping), f"{name}.set", common, "a mapping of dotted params")
    return Group(name, entry["method"], targets, tuple(rows), dict(common), entry.get("figure"))


def _stage_names(targets: Any, key: str) -> tuple[str, ...]:
    require(isinstance(targets, list) and all(isinstance(t, str) for t in targets), key, targets,
            "a list of stage names")
    return tuple(targets)


def check_keys(group: Group, params: Mapping) -> None:
    """Every key a row or the group sets exists in ``params`` (``-S`` cannot add keys):
    ConfigError naming it."""
    where = [(f"{group.name}.set", group.set)] + [(f"{group.name}.rows.{i}.set", row.set)
                                                  for i, row in enumerate(group.rows)]
    for name, overrides in where:
        for key in overrides:
            node: Any = params
            for part in key.split("."):
                node = node.get(part, _MISSING) if isinstance(node, Mapping) else _MISSING
            require(node is not _MISSING, name, key, "is not a key of params.yaml")


def is_profile_mapping(value: Any) -> bool:
    """Whether ``value`` is a per-profile value ``{laptop: a, paper: b}``."""
    return isinstance(value, Mapping) and bool(value) and set(value) == set(PROFILES)


def _lookup(params: Mapping, key: str) -> Any:
    node: Any = params
    for part in key.split("."):
        node = node.get(part, _MISSING) if isinstance(node, Mapping) else _MISSING
    return node


def _flow(value: Any) -> str:
    """A param value as ``-S`` takes it (YAML flow style: 0.01, true, null, [1, 0.01])."""
    return yaml.safe_dump(value, default_flow_style=True, width=10_000).strip().removesuffix("\n...").strip()


def queue_commands(group: Group, skip: Sequence[str] = (), params: Mapping | None = None) -> list[list[str]]:
    """One ``dvc exp run --queue`` command per row, except rows reusing another's run and the
    experiments named in ``skip`` (``params``: see :meth:`Group.command`)."""
    return [group.command(row, queue=True, params=params) for row in group.rows
            if not row.same_as and group.experiment_name(row) not in skip]


def queue_all(commands: Sequence[list[str]], run=subprocess.run) -> list[str]:
    """Queue every command or none: when one fails, the experiments this call queued are removed
    again (``dvc queue remove``) and the error names the row that failed. Returns the names."""
    queued = []
    for command in commands:
        name = command[command.index("-n") + 1]
        done = run(command, capture_output=True, text=True)
        if done.returncode != 0:
            if queued:
                run(["dvc", "queue", "remove", *queued], capture_output=True, text=True)
            reason = " ".join((done.stderr or done.stdout or "").split())[-300:]
            raise ConfigError(f"queueing {name} failed ({reason}); the {len(queued)} experiments queued before it "
                              "were removed again, so nothing of the group is queued")
        queued.append(name)
    return queued


def unfinished(group: Group, run=subprocess.run) -> list[str]:
    """The group's experiments that `dvc queue status` lists as queued or running."""
    try:
        done = run(["dvc", "queue", "status"], capture_output=True, text=True, timeout=QUEUE_STATUS_TIMEOUT)
    except subprocess.TimeoutExpired:
        return []
    names = {group.experiment_name(row) for row in group.rows}
    waiting = []
    for line in (done.stdout or "").splitlines():
        fields = line.split()
        if len(fields) >= 3 and fields[1] in names and any(word in line for word in ("Queued", "Running")):
            waiting.append(fields[1])
    return sorted(set(waiting))


def finished_experiments(exp_show: Sequence[Mapping], done: set[str] | None = None) -> dict[str, dict]:
    """Experiment name -> {"metrics": file path -> metrics dict, "timestamp", "baseline": the
    commit it ran on}, from ``dvc exp show --json``; the newest of experiments sharing a name
    wins. Failed ones are skipped, and, when ``done`` (the names ``dvc exp list`` gives) is
    given, every name not in it."""
    found: dict[str, dict] = {}
    for baseline in exp_show:
        for experiment in baseline.get("experiments") or []:
            for revision in experiment.get("revs") or []:
                data, name = revision.get("data") or {}, revision.get("name")
                if not name or revision.get("error") or not data.get("metrics") or (done is not None and name not in done):
                    continue
                stamp = data.get("timestamp") or ""
                if name not in found or stamp > found[name]["timestamp"]:
                    metrics = {path: (entry or {}).get("data") or {} for path, entry in data["metrics"].items()}
                    found[name] = {"metrics": metrics, "timestamp": stamp, "baseline": str(baseline.get("rev", ""))}
    return found


def merge_runs(kept: Mapping[str, dict], finished: Mapping[str, dict]) -> dict[str, dict]:
    """The runs of ``kept`` (a committed record) updated with ``finished`` where those are newer."""
    merged = dict(kept)
    for name, run in finished.items():
        if name not in merged or run["timestamp"] >= merged[name].get("timestamp", ""):
            merged[name] = run
    return dict(sorted(merged.items()))


def collect(group: Group, finished: Mapping[str, dict], published: pd.DataFrame, metrics_dir: str,
            scores: Sequence[str], params: Mapping | None = None) -> pd.DataFrame:
    """One row per experiment of the group: ours beside the published CSO-mAP and APs.

    ``finished``: from :func:`finished_experiments` (or :func:`merge_runs`); ``published``: rows
    with ``table``, ``row`` and the score columns; ``metrics_dir``: where each row method's metrics
    file lives; ``scores``: cso_map and the AP keys (:func:`score_keys_of`). A metric averaged over several seeds comes with its ``<metric>_std``. With
    ``params`` (params.yaml), each row's training windows (epochs x windows per epoch, the row's
    overrides and profile applied) are added.
    """
    paper = published.set_index(["table", "row"]) if len(published) else None
    out = []
    for row in group.rows:
        run = finished.get(group.experiment_name(row), {})
        method = group.method_of(row)
        ours = run.get("metrics", {}).get(f"{metrics_dir}/{method}.json", {})
        reference = paper.loc[(row.table, row.row)] if paper is not None and (row.table, row.row) in paper.index else None
        record = {"table": row.table, "row": row.row, "method": method, "experiment": group.experiment_name(row),
                  "command": shlex.join(group.command(row)), "commit": run.get("baseline", "")[:7],
                  "seeds": int(ours.get("seeds", 1 if ours else 0))}
        if params is not None:
            record["train_windows"] = training_windows(params, {**group.set, **row.set}, method)
        for column in scores:
            record[column] = ours.get(column)
            record[f"{column}_std"] = ours.get(f"{column}_std")
            known = reference is not None and column in reference.index and not pd.isna(reference[column])
            record[f"{column}_published"] = float(reference[column]) if known else None
        out.append(record)
    return pd.DataFrame(out)


def training_windows(params: Mapping, overrides: Mapping[str, Any], method: str) -> int | None:
    """Windows a method trains on (epochs x windows_per_epoch) with ``overrides`` and the active
    profile applied; None when untrainable or every window is drawn (the count depends on the data)."""
    train = (resolve_profile(with_overrides(params, overrides)).get("methods", {}).get(method) or {}).get("train")
    if not train or train.get("windows_per_epoch") is None:
        return None
    return int(train["epochs"]) * int(train["windows_per_epoch"])


def budget_note(group: Group, params: Mapping) -> str:
    """The training budget and test windows every row of ``group`` runs with (the group's set
    applied to params.yaml, the active profile resolved); rows may change more."""
    resolved = resolve_profile(with_overrides(params, group.set))
    stride = resolved.get("evaluate", {}).get("window_stride")
    parts = [f"Profile **{resolved.get('profile', 'laptop')}**"]
    for method in dict.fromkeys(group.method_of(row) for row in group.rows):
        train = (resolved.get("methods", {}).get(method) or {}).get("train")
        if train:
            parts.append(f"{method} trained {train['epochs']} epoch(s) x {train['windows_per_epoch'] or 'all'} "
                         f"windows, batch {train['batch']}, draw {train.get('draw', 'windows')}, Adam lr {train['lr']:g}")
    seeds = resolved.get("trainer", {}).get("seeds")
    if seeds and len(seeds) > 1:
        parts.append(f"mean ± std over seeds {seeds}")
    if stride:
        parts.append(f"one test window in {stride} of each trajectory scored" if stride > 1 else "every test window scored")
    return "; ".join(parts) + "."


def score_keys_of(params: Mapping) -> tuple[str, ...]:
    """cso_map and the AP keys of params.yaml's ``evaluate.distance_thresholds`` (active profile)."""
    thresholds = section(resolve_profile(params), "evaluate").get("distance_thresholds")
    return score_keys(check_number_list("evaluate.distance_thresholds", thresholds, 0.0, strict=True))


def published_rows(ablations: Path, table7: Path, scores: Sequence[str]) -> pd.DataFrame:
    """The published rows a group can cite: the ablation tables (I-VI) and Table VII, whose rows
    are named by the method's label (table "VII", row "SRCNN"); a missing file gives no rows, a
    score the published tables lack is empty."""
    frames = [pd.read_csv(ablations)] if ablations.is_file() else []
    if table7.is_file():
        frames.append(pd.read_csv(table7).rename(columns={"method": "row"}).assign(table="VII"))
    columns = ["table", "row", *scores]
    frames = [frame.reindex(columns=columns) for frame in frames]
    return pd.concat([frame[columns] for frame in frames], ignore_index=True) if frames else pd.DataFrame(columns=columns)


def _metrics_dir(dvc_yaml: Path) -> str:
    """``vars.paths.metrics`` of dvc.yaml: where every method's metrics JSON lives."""
    for entry in read_yaml(dvc_yaml, "pipeline file").get("vars", []):
        if isinstance(entry, Mapping) and "metrics" in entry.get("paths", {}):
            return entry["paths"]["metrics"]
    raise ConfigError(f"{dvc_yaml}: vars.paths.metrics is missing")


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m pipeline.experiments", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("action", choices=("queue", "collect", "commands"),
                        help="queue the group, collect finished experiments, or print the commands")
    parser.add_argument("group", help="a group of the experiments file, e.g. ablations")
    parser.add_argument("--file", type=Path, default=Path("experiments.yaml"))
    parser.add_argument("--reference", type=Path, default=Path("reference/seqcsist_ablations.csv"),
                        help="published ablation rows (table, row, cso_map, ap05..ap25)")
    parser.add_argument("--table7", type=Path, default=Path("reference/seqcsist_table7.csv"),
                        help="published Table VII (rows cited as table VII, row <method label>)")
    parser.add_argument("--out", type=Path, help="markdown table (default reports/tables/<group>.md)")
    parser.add_argument("--missing", action="store_true",
                        help="queue only the rows the collected record (<out>.json) does not hold yet")
    args = parser.parse_args(argv)
    try:
        group = load_group(args.file, args.group)
        params = read_params(Path("params.yaml"))
        check_keys(group, params)
        if args.action == "commands":
            print("\n".join(shlex.join(command) for command in queue_commands(group)))
        elif args.action == "queue":
            record = (args.out or Path("reports/tables") / f"{group.name}.md").with_suffix(".json")
            skip = json.loads(record.read_text()) if args.missing and record.is_file() else {}
            names = queue_all(queue_commands(group, skip=list(skip), params=params))
            print(f"queued {len(names)} experiments of {group.name}: {', '.join(names) or 'none'}; "
                  "run them with `dvc queue start -j <workers>`")
        else:
            waiting = unfinished(group)
            try:
                shown = subprocess.run(["dvc", "exp", "show", "--json", "--all-commits"], check=True,
                                       capture_output=True, text=True, timeout=EXP_SHOW_TIMEOUT)
            except subprocess.TimeoutExpired:
                raise ConfigError(f"`dvc exp show` did not answer within {EXP_SHOW_TIMEOUT} s (a queue worker holds "
                                  f"the repository?); unfinished: {', '.join(waiting) or 'none listed'}; "
                                  "collect again when `dvc queue status` shows them done") from None
            listed = subprocess.run(["dvc", "exp", "list", "--all-commits", "--name-only"], check=True,
                                    capture_output=True, text=True)
            done = {line.strip() for line in listed.stdout.splitlines() if line.strip()}
            metrics_dir = _metrics_dir(Path("dvc.yaml"))
            scores = score_keys_of(params)
            published = published_rows(args.reference, args.table7, scores)
            out = args.out or Path("reports/tables") / f"{group.name}.md"
            record = out.with_suffix(".json")
            kept = json.loads(record.read_text()) if record.is_file() else {}
            runs = merge_runs(kept, finished_experiments(json.loads(shown.stdout), done))
            table = collect(group, runs, published, metrics_dir, scores, params if group.figure else None)
            done = int(table["cso_map"].notna().sum())
            files = ", ".join(f"`{metrics_dir}/{method}.json`" for method in dict.fromkeys(table["method"]))
            notes = [budget_note(group, params),
                     f"{done} of {len(table)} experiments finished; metrics of {files}; published "
                     "numbers in parentheses (paper scale). Regenerate with "
                     f"`python -m pipeline.experiments collect {group.name}`."]
            out.parent.mkdir(parents=True, exist_ok=True)
            with atomic_path(record) as tmp:
                tmp.write_text(json.dumps(runs, indent=1, sort_keys=True) + "\n")
            with atomic_path(out) as tmp:
                tmp.write_text(experiments_markdown(table, f"Experiments: {group.name}", notes, scores))
            print(f"{out}: {done} of {len(table)} rows"
                  + (f"; still queued or running: {', '.join(waiting)}" if waiting else ""))
            if group.figure == "budget":
                paper = (pd.read_csv(args.table7).set_index("method_id")["cso_map"].to_dict()
                         if args.table7.is_file() else {})
                figure = Path("reports/figures") / f"{group.name}.png"
                profile = resolve_profile(params).get("profile", "laptop")
                budget_figure(table, paper, figure, f"{group.name}: CSO-mAP against training budget ({profile} profile)")
                print(f"{figure}: CSO-mAP against training windows")
    except ConfigError as error:
        print(f"error: {error}", file=sys.stderr)
        return 2
    except subprocess.CalledProcessError as error:
        print(f"error: {' '.join(error.cmd)} failed with exit code {error.returncode}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
