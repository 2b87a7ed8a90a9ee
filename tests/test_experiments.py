"""Named experiment groups: definitions, queue commands, and collecting finished DVC experiments."""
from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pandas as pd
import pytest
import yaml

from pipeline.config import ConfigError
from pipeline.experiments import (budget_note, check_keys, collect, finished_experiments, load_group, merge_runs,
                                  published_rows, queue_commands)
from pipeline.reports import budget_figure, experiments_markdown

SCORES = ("cso_map", "ap05", "ap10", "ap15", "ap20", "ap25")

ROOT = Path(__file__).resolve().parents[1]

GROUPS = {
    "ablations": {
        "method": "derefnet",
        "targets": ["evaluate@derefnet"],
        "rows": [
            {"id": "i-a", "table": "I", "row": "A", "set": {"methods.derefnet.model.loss_weights": [1, 0.01, 0.01]}},
            {"id": "v-2", "table": "V", "row": "noise sigma 2", "set": {"sensor.noise_sigma": 2.0}},
            {"id": "v-0", "table": "V", "row": "noise sigma 0", "same_as": "i-a"},
        ],
    }
}


def write_groups(tmp_path: Path, groups: dict) -> Path:
    path = tmp_path / "experiments.yaml"
    path.write_text(yaml.safe_dump(groups, sort_keys=False))
    return path


def exp_show(experiments: list[tuple[str, str, dict | None]]) -> list[dict]:
    """A `dvc exp show --json` document: one baseline with (name, timestamp, metrics) experiments."""
    revs = [{"rev": f"{i:040x}", "name": name, "error": None if metrics is not None else {"msg": "failed"},
             "data": {"timestamp": stamp, "metrics": {path: {"data": values} for path, values in (metrics or {}).items()}}}
            for i, (name, stamp, metrics) in enumerate(experiments)]
    return [{"rev": "workspace", "name": None, "data": {}, "experiments": None},
            {"rev": "f" * 40, "name": "main", "data": {}, "experiments": [{"revs": [rev]} for rev in revs]}]


def test_queue_commands_set_each_row_params(tmp_path):
    group = load_group(write_groups(tmp_path, GROUPS), "ablations")
    commands = queue_commands(group)
    assert commands[0] == ["dvc", "exp", "run", "--queue", "-n", "ablations-i-a", "evaluate@derefnet",
                           "-S", "methods.derefnet.model.loss_weights=[1, 0.01, 0.01]"]
    assert commands[1][-2:] == ["-S", "sensor.noise_sigma=2.0"]
    assert len(commands) == 2  # the shared baseline row is not queued twice
    assert queue_commands(group, skip=["ablations-i-a"]) == commands[1:]  # --missing: collected rows skipped


def test_the_group_set_applies_to_every_row_under_the_rows_own(tmp_path):
    groups = yaml.safe_load(yaml.safe_dump(GROUPS))
    groups["ablations"]["set"] = {"evaluate.window_stride": 16, "sensor.noise_sigma": 0.5}
    group = load_group(write_groups(tmp_path, groups), "ablations")
    first, second = queue_commands(group)
    assert first[-6:-2] == ["-S", "evaluate.window_stride=16", "-S", "sensor.noise_sigma=0.5"]
    assert second[-4:] == ["-S", "evaluate.window_stride=16", "-S", "sensor.noise_sigma=2.0"]
    assert group.command(group.rows[2]) == group.command(group.rows[0])  # same_as: the same run
    params = {"sensor": {"noise_sigma": 0.0}, "methods": {"derefnet": {"model": {"loss_weights": [1, 0, 0]}}}}
    with pytest.raises(ConfigError, match="ablations.set = 'evaluate.window_stride'"):
        check_keys(group, params)


def test_budget_note_states_the_training_budget_and_test_windows_after_the_group_set(tmp_path):
    groups = yaml.safe_load(yaml.safe_dump(GROUPS))
    groups["ablations"]["set"] = {"evaluate.window_stride": {"laptop": 16, "paper": 1}}
    group = load_group(write_groups(tmp_path, groups), "ablations")
    params = {"profile": "laptop", "evaluate": {"window_stride": {"laptop": 8, "paper": 1}},
              "methods": {"derefnet": {"train": {"epochs": {"laptop": 1, "paper": 100}, "batch": 16, "lr": 1e-3,
                                                 "windows_per_epoch": {"laptop": 2048, "paper": None}}}}}
    note = budget_note(group, params)
    assert "1 epoch(s) x 2048 windows, batch 16, draw windows" in note and "one test window in 16" in note
    paper = budget_note(group, {**params, "profile": "paper"})
    assert "100 epoch(s) x all windows" in paper and "every test window scored" in paper
    assert params["evaluate"]["window_stride"] == {"laptop": 8, "paper": 1}  # params are not changed


@pytest.mark.parametrize("damage, message", [
    (lambda g: g["ablations"].update(rows=[]), "ablations.rows"),
    (lambda g: g["ablations"]["rows"][1].update(id="i-a"), "must be unique"),
    (lambda g: g["ablations"]["rows"][0].update(id="Bad Id"), "ablations.rows.0.id"),
    (lambda g: g["ablations"]["rows"][0].update(extra=1), "ablations.rows.0"),
    (lambda g: g["ablations"].pop("method"), "ablations.method"),
    (lambda g: g.update(ablations=[1]), "ablations"),
    (lambda g: g["ablations"]["rows"][2].update(same_as="nope"), "ablations.rows.2.same_as"),
    (lambda g: g["ablations"].update(figure="pie"), "ablations.figure"),
    (lambda g: g["ablations"]["rows"][0].update(targets="evaluate@x"), "ablations.rows.0.targets"),
    (lambda g: g["ablations"]["rows"][2].update(set={"sensor.noise_sigma": 1.0}), "ablations.rows.2.same_as"),
])
def test_bad_groups_name_the_key(tmp_path, damage, message):
    groups = yaml.safe_load(yaml.safe_dump(GROUPS))
    damage(groups)
    with pytest.raises(ConfigError, match=message):
        load_group(write_groups(tmp_path, groups), "ablations")


def test_unknown_group_and_unknown_param_key(tmp_path):
    path = write_groups(tmp_path, GROUPS)
    with pytest.raises(ConfigError, match="no experiment group 'seeds'.*ablations"):
        load_group(path, "seeds")
    group = load_group(path, "ablations")
    params = {"sensor": {"noise_sigma": 0.0}, "methods": {"derefnet": {"model": {"loss_weights": [1, 0, 0]}}}}
    check_keys(group, params)
    del params["sensor"]
    with pytest.raises(ConfigError, match="ablations.rows.1.set = 'sensor.noise_sigma'"):
        check_keys(group, params)


def test_collect_keeps_the_newest_finished_run_and_the_published_row(tmp_path):
    group = load_group(write_groups(tmp_path, GROUPS), "ablations")
    path = "reports/metrics/derefnet.json"
    scores = {"cso_map": 50.0, "ap05": 1.0, "ap10": 10.0, "ap15": 50.0, "ap20": 90.0, "ap25": 99.0}
    shown = exp_show([("ablations-i-a", "2026-01-01T00:00:00", {path: dict(scores, cso_map=40.0)}),
                      ("ablations-i-a", "2026-01-02T00:00:00", {path: scores}),
                      ("ablations-v-2", "2026-01-03T00:00:00", None)])
    finished = finished_experiments(shown)
    assert set(finished) == {"ablations-i-a"}
    assert finished_experiments(shown, done={"ablations-v-2"}) == {}  # running: its baseline's metrics
    published = pd.DataFrame([{"table": "I", "row": "A", **{k: 51.55 for k in scores}}])
    table = collect(group, finished, published, "reports/metrics", SCORES)
    assert table.loc[0, "cso_map"] == 50.0 and table.loc[0, "cso_map_published"] == 51.55
    assert pd.isna(table.loc[1, "cso_map"]) and pd.isna(table.loc[1, "cso_map_published"])
    text = experiments_markdown(table, "Ablations", ["note"], SCORES)
    assert "| I | A | 50.00 (51.55) |" in text
    assert "| V | noise sigma 2 | — |" in text
    assert table.loc[2, "cso_map"] == 50.0 and table.loc[2, "experiment"] == "ablations-i-a"
    assert "`dvc exp run evaluate@derefnet -S sensor.noise_sigma=2.0`" in text
    assert "| " + "f" * 7 + " |" in text  # the baseline commit the row ran on


def test_a_mixed_group_scores_each_row_on_its_own_method_with_seed_spread_and_budget(tmp_path):
    groups = {"curve": {"method": "srcnn", "targets": ["evaluate@srcnn"], "figure": "budget", "rows": [
        {"id": "srcnn-2", "table": "VII", "row": "SRCNN", "set": {"methods.srcnn.train.epochs": 2}},
        {"id": "ista-1", "table": "VII", "row": "ISTA-Net", "method": "ista_net", "targets": ["evaluate@ista_net"],
         "set": {}}]}}
    group = load_group(write_groups(tmp_path, groups), "curve")
    assert group.command(group.rows[1]) == ["dvc", "exp", "run", "evaluate@ista_net"]
    params = {"profile": "laptop", "trainer": {"seeds": [0, 1]}, "methods": {
        "srcnn": {"train": {"epochs": {"laptop": 7, "paper": 100}, "windows_per_epoch": 100, "batch": 4, "lr": 1e-3}},
        "ista_net": {"train": {"epochs": 1, "windows_per_epoch": {"laptop": 64, "paper": None}, "batch": 4, "lr": 1e-3}}}}
    scores = {c: 10.0 for c in ("cso_map", "ap05", "ap10", "ap15", "ap20", "ap25")}
    finished = {"curve-srcnn-2": {"metrics": {"m/srcnn.json": {**scores, "cso_map_std": 1.5, "seeds": 2},
                                              "m/ista_net.json": {"cso_map": 99.0}}, "timestamp": "t", "baseline": "a" * 40},
                "curve-ista-1": {"metrics": {"m/ista_net.json": dict(scores, cso_map=20.0)}, "timestamp": "t",
                                 "baseline": "b" * 40}}
    published = published_rows(ROOT / "reference/seqcsist_ablations.csv", ROOT / "reference/seqcsist_table7.csv", SCORES)
    table = collect(group, finished, published, "m", SCORES, params)
    assert list(table["method"]) == ["srcnn", "ista_net"] and list(table["cso_map"]) == [10.0, 20.0]
    assert list(table["train_windows"]) == [200, 64]  # the row's epochs, the profile's windows per epoch
    text = experiments_markdown(table, "Curve", [], SCORES)
    assert "| VII | SRCNN | srcnn | 200 | 10.00 ± 1.50 (49.64) |" in text  # two seeds: mean ± std
    assert "| VII | ISTA-Net | ista_net | 64 | 20.00 (48.95) |" in text  # one seed: no spread
    assert "ista_net trained 1 epoch(s) x 64 windows" in budget_note(group, params)
    assert "mean ± std over seeds [0, 1]" in budget_note(group, params)
    budget_figure(table, {"srcnn": 49.64}, tmp_path / "curve.png")
    assert (tmp_path / "curve.png").read_bytes()[:4] == b"\x89PNG"


def test_committed_runs_are_kept_until_a_newer_run_replaces_them():
    path = "reports/metrics/derefnet.json"
    kept = {"ablations-v-2": {"metrics": {path: {"cso_map": 30.0}}, "timestamp": "2026-01-05T00:00:00", "baseline": "a" * 40},
            "ablations-i-a": {"metrics": {path: {"cso_map": 10.0}}, "timestamp": "2026-01-01T00:00:00", "baseline": "a" * 40}}
    finished = {"ablations-i-a": {"metrics": {path: {"cso_map": 20.0}}, "timestamp": "2026-01-02T00:00:00", "baseline": "b" * 40},
                "ablations-v-2": {"metrics": {path: {"cso_map": 5.0}}, "timestamp": "2026-01-03T00:00:00", "baseline": "b" * 40}}
    merged = merge_runs(kept, finished)
    assert merged["ablations-i-a"]["metrics"][path]["cso_map"] == 20.0  # newer run
    assert merged["ablations-v-2"]["metrics"][path]["cso_map"] == 30.0  # the kept one is newer
    assert merge_runs({}, finished) == dict(sorted(finished.items()))


TOY_STAGE = """import json, sys
from pathlib import Path
from ruamel.yaml import YAML
params = YAML(typ="safe").load(Path("params.yaml"))
Path("reports/metrics").mkdir(parents=True, exist_ok=True)
score = params["methods"]["toy"]["gain"] * 10.0
Path("reports/metrics/toy.json").write_text(json.dumps({k: score for k in
    ("cso_map", "ap05", "ap10", "ap15", "ap20", "ap25")}))
"""


@pytest.mark.slow
def test_queue_two_experiments_run_them_and_collect(tmp_path):
    """`queue` puts two named experiments in DVC's queue, `dvc queue start` runs them, and
    `collect` turns the finished ones into the markdown table."""
    env = {**os.environ, "DVC_NO_ANALYTICS": "1", "PYTHONPATH": str(ROOT),
           "PATH": f"{Path(sys.executable).parent}{os.pathsep}{os.environ.get('PATH', '')}"}

    def run(*command: str) -> str:
        done = subprocess.run(command, cwd=tmp_path, env=env, capture_output=True, text=True)
        assert done.returncode == 0, f"{command} failed:\n{done.stdout}\n{done.stderr}"
        return done.stdout

    (tmp_path / "stage.py").write_text(TOY_STAGE)
    (tmp_path / "params.yaml").write_text("methods:\n  toy:\n    gain: 1.0\n"
                                          "evaluate:\n  distance_thresholds: [0.05, 0.1, 0.15, 0.2, 0.25]\n")
    (tmp_path / "dvc.yaml").write_text(yaml.safe_dump({"vars": [{"paths": {"metrics": "reports/metrics"}}], "stages": {
        "toy": {"cmd": "python stage.py", "deps": ["stage.py"], "params": ["methods.toy"],
                "metrics": [{"reports/metrics/toy.json": {"cache": False}}]}}}))
    write_groups(tmp_path, {"gains": {"method": "toy", "targets": ["toy"], "rows": [
        {"id": "two", "table": "T", "row": "gain 2", "set": {"methods.toy.gain": 2.0}},
        {"id": "three", "table": "T", "row": "gain 3", "set": {"methods.toy.gain": 3.0}}]}})
    (tmp_path / "published.csv").write_text("table,row,cso_map,ap05,ap10,ap15,ap20,ap25\nT,gain 2,21,0,0,0,0,0\n")
    run("git", "init", "-q")
    run(sys.executable, "-m", "dvc", "init", "-q")
    run(sys.executable, "-m", "dvc", "repro", "-q")
    run("git", "add", "-A")
    run("git", "-c", "user.name=ci", "-c", "user.email=ci@localhost", "commit", "-qm", "toy")
    run(sys.executable, "-m", "pipeline.experiments", "queue", "gains")
    run(sys.executable, "-m", "dvc", "queue", "start", "-j", "1")
    run(sys.executable, "-m", "dvc", "queue", "logs", "gains-three", "--follow")
    out = run(sys.executable, "-m", "pipeline.experiments", "collect", "gains", "--reference", "published.csv")
    assert "2 of 2 rows" in out
    table = (tmp_path / "reports/tables/gains.md").read_text()
    assert "| T | gain 2 | 20.00 (21.00) |" in table and "| T | gain 3 | 30.00 |" in table


def test_the_repository_groups_are_valid():
    """experiments.yaml: every group loads, sets only keys params.yaml has (the method's included)
    and names published rows that exist in the reference file (a method the paper's Table VII
    does not hold, DISTA-Net, cites none)."""
    import pandas as pd

    from pipeline.config import read_params

    groups = yaml.safe_load((ROOT / "experiments.yaml").read_text())
    params = read_params(ROOT / "params.yaml")
    published = published_rows(ROOT / "reference/seqcsist_ablations.csv", ROOT / "reference/seqcsist_table7.csv", SCORES)
    known = set(zip(published["table"], published["row"]))
    in_table7 = set(pd.read_csv(ROOT / "reference/seqcsist_table7.csv")["method_id"])
    for name in groups:
        group = load_group(ROOT / "experiments.yaml", name)
        check_keys(group, params)
        assert all(group.method_of(row) in params["methods"] for row in group.rows)
        missing = [(row.table, row.row) for row in group.rows if (row.table, row.row) not in known
                   and not (row.table == "VII" and group.method_of(row) not in in_table7)]
        assert not missing, missing


def test_stages_run_the_code_of_the_workspace_dvc_runs_them_in():
    """`python -m stages.<name>` puts the working directory first on the import path: a queued
    experiment's temporary copy runs its own pipeline package, not the editable install's tree
    (whose later edits would otherwise leak into queued runs)."""
    stages = yaml.safe_load((ROOT / "dvc.yaml").read_text())["stages"]
    commands = [(stage.get("do") or stage)["cmd"] for stage in stages.values()]
    assert commands and all(" ".join(c.split()).startswith("python -m stages.") for c in commands), commands


def test_a_plain_value_on_a_per_profile_key_is_written_for_both_profiles(tmp_path):
    """DVC cannot merge a list onto a {laptop, paper} mapping ("Cannot merge DictConfig with
    ListConfig"): the tool writes such a value for both profiles."""
    path = tmp_path / "experiments.yaml"
    path.write_text("seeds:\n  method: srcnn\n  targets: [evaluate@srcnn]\n  rows:\n"
                    "    - {id: s, table: VII, row: SRCNN, set: {trainer.seeds: [0, 1, 2], methods.srcnn.train.batch: 8}}\n")
    group = load_group(path, "seeds")
    params = {"trainer": {"seeds": {"laptop": [0], "paper": [0, 1, 2]}}, "methods": {"srcnn": {"train": {"batch": 32}}}}
    command = group.command(group.rows[0], queue=True, params=params)
    assert "trainer.seeds={laptop: [0, 1, 2], paper: [0, 1, 2]}" in command
    assert "methods.srcnn.train.batch=8" in command  # a plain key stays plain


def test_a_queue_is_all_or_nothing():
    from pipeline.experiments import queue_all

    calls = []

    class Done:
        def __init__(self, code):
            self.returncode, self.stdout, self.stderr = code, "", "ERROR: bad -S value"

    def fake_run(command, **kwargs):
        calls.append(command)
        return Done(1 if "g-b" in command else 0)

    commands = [["dvc", "exp", "run", "--queue", "-n", f"g-{x}", "evaluate@srcnn"] for x in "abc"]
    with pytest.raises(ConfigError, match="queueing g-b failed .* nothing of the group is queued"):
        queue_all(commands, run=fake_run)
    assert calls[-1] == ["dvc", "queue", "remove", "g-a"] and len(calls) == 3  # g-c was never queued
