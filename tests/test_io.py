import tarfile

import numpy as np
import pandas as pd
import pytest
import torch

from pipeline.settings import SplitConfig
from pipeline.io import (DataFileError, atomic_path, frame_index, read_frame_images, read_frames, read_targets,
                         write_frames, write_table)
from pipeline.official import parse_annotation, read_official_tree, write_official_archive
from pipeline.evaluation import combine_seeds
from pipeline.simulate import simulate
from pipeline.stage_io import load_state, save_model, saved_seeds
from pipeline.split import make_split


@pytest.fixture()
def dataset(small_simulate, params, sensor):
    frames, targets = simulate(small_simulate, sensor)
    split = make_split(frames, SplitConfig.from_section(params["split"]))
    return frames, targets, split


def test_parquet_round_trip(tmp_path, dataset):
    frames, targets, _ = dataset
    write_frames(frames, tmp_path / "frames.parquet")
    write_table(targets, tmp_path / "targets.parquet")
    back = read_frames(tmp_path / "frames.parquet")
    assert np.array_equal(np.stack(back["image"]), np.stack(frames["image"]))
    pd.testing.assert_frame_equal(back.drop(columns="image"), frames.drop(columns="image"))
    pd.testing.assert_frame_equal(read_targets(tmp_path / "targets.parquet"), targets)
    assert read_frame_images(tmp_path / "frames.parquet").shape == (len(frames), 11, 11)
    assert list(frame_index(tmp_path / "frames.parquet").columns) == ["trajectory", "frame", "n_targets"]


def test_same_data_same_file_bytes(tmp_path, dataset):
    frames, targets, split = dataset
    for name in ("a", "b"):
        write_frames(frames, tmp_path / f"{name}.parquet")
        write_official_archive(frames, targets, split, tmp_path / f"{name}.tar.gz", sigma=0.5)
    assert (tmp_path / "a.parquet").read_bytes() == (tmp_path / "b.parquet").read_bytes()
    assert (tmp_path / "a.tar.gz").read_bytes() == (tmp_path / "b.tar.gz").read_bytes()


def test_official_layout_round_trip(tmp_path, dataset, small_simulate):
    frames, targets, split = dataset
    archive = tmp_path / "official.tar.gz"
    write_official_archive(frames, targets, split, archive, sigma=0.5, dataset_dir="track_12_20")
    with tarfile.open(archive) as packed:
        names = packed.getnames()
        packed.extractall(tmp_path / "tree", filter="data")
    n_test = (split["split"] == "test").sum() * small_simulate["frames"]
    assert f"track_12_20/test/image/image_{n_test - 1}.png" in names
    assert f"track_12_20/test/annotation/COS{n_test - 1}.xml" in names

    imported, imported_targets = read_official_tree(tmp_path / "tree", small_simulate["frames"], bit_depth=8)
    # ids restart per split and trajectories are renumbered split by split: map ours the same way
    rank = {"train": 0, "val": 1, "test": 2}
    order = split.assign(rank=split["split"].map(rank)).sort_values(["rank", "trajectory"])
    renumber = dict(zip(order["trajectory"], range(len(order))))
    expected = frames.assign(trajectory=frames["trajectory"].map(renumber))
    expected = expected.sort_values(["trajectory", "frame"], ignore_index=True)
    assert np.array_equal(np.stack(imported["image"]), np.stack(expected["image"]))
    pd.testing.assert_frame_equal(imported[["trajectory", "frame", "n_targets"]],
                                  expected[["trajectory", "frame", "n_targets"]])
    expected_targets = targets.assign(trajectory=targets["trajectory"].map(renumber))
    expected_targets = expected_targets.sort_values(["trajectory", "frame", "target"], ignore_index=True)
    expected_targets["target"] = expected_targets.groupby(["trajectory", "frame"]).cumcount()
    pd.testing.assert_frame_equal(imported_targets, expected_targets)
    # the given split is kept
    given = make_split(imported, SplitConfig(seed=0, fractions=(0.7, 0.15, 0.15)))
    assert given["split"].value_counts().to_dict() == split["split"].value_counts().to_dict()


def test_annotation_schema(tmp_path, dataset):
    frames, targets, split = dataset
    archive = tmp_path / "official.tar.gz"
    write_official_archive(frames, targets, split, archive, sigma=0.5, dataset_dir="d")
    with tarfile.open(archive) as packed:
        xml = packed.extractfile("d/train/annotation/COS0.xml").read()
    text = xml.decode()
    for tag in ("<filename>COS0</filename>", "<width>11</width>", "<depth>1</depth>", "<sigma>0.5</sigma>",
                "<name>Target</name>", "<xc>", "<yc>", "<brightness>"):
        assert tag in text
    rows, size, sigma = parse_annotation(xml, "COS0.xml")
    assert size == 11 and sigma == 0.5 and rows.shape[1] == 3


def test_corrupt_files_are_named(tmp_path):
    bad = tmp_path / "frames.parquet"
    bad.write_bytes(b"not parquet")
    with pytest.raises(DataFileError, match="frames.parquet: not a readable Parquet file"):
        read_frames(bad)
    with pytest.raises(DataFileError, match="missing.parquet: file not found"):
        read_targets(tmp_path / "missing.parquet")
    with pytest.raises(DataFileError, match="COS3.xml: not a valid SeqCSIST annotation"):
        parse_annotation(b"<annotation><object>", "COS3.xml")


def test_interrupted_write_leaves_no_output(tmp_path):
    target = tmp_path / "out.npy"
    with pytest.raises(RuntimeError):
        with atomic_path(target) as tmp:
            tmp.write_bytes(b"half")
            raise RuntimeError("killed")
    assert not target.exists()
    assert list(tmp_path.iterdir()) == []


def test_writes_use_a_fixed_temporary_name_and_clear_stale_ones(tmp_path):
    target = tmp_path / "out.npy"
    stale = [tmp_path / ".out.npy.tmp", tmp_path / ".out.npy.k3x9q.tmp"]  # a killed run's leftovers
    for path in stale:
        path.write_bytes(b"half")
    with atomic_path(target) as tmp:
        assert tmp == tmp_path / ".out.npy.tmp" and not any(path.exists() for path in stale)
        tmp.write_bytes(b"done")
    assert [p.name for p in tmp_path.iterdir()] == ["out.npy"] and target.read_bytes() == b"done"


def test_strided_windows_are_a_subset_of_all_windows(tmp_path, dataset):
    """evaluate.window_stride: one window in k of each trajectory, the same as thinning all, with
    an offset that rotates over the trajectories so that no frame position is favoured."""
    from pipeline.coords import Grid
    from pipeline.data import load_split_tables, make_windows

    frames, targets, split = dataset
    data = load_split_tables(frames, targets, split, None)
    every = make_windows(data, Grid(11, 3), 5)
    strided = make_windows(data, Grid(11, 3), 5, stride=4)
    thinned = every.every(4)
    for name in ("lr", "hr", "t", "f"):
        np.testing.assert_array_equal(getattr(strided, name), getattr(thinned, name))
    assert len(strided) == len(np.unique(frames["trajectory"])) * 4
    for trajectory in np.unique(strided.t):
        positions = strided.f[strided.t == trajectory]
        assert positions[0] == 2 + trajectory % 4 and np.all(np.diff(positions) == 4)
    np.testing.assert_array_equal(strided.lr[:, 2], data.images[strided.t, strided.f])


def test_a_model_file_holds_each_seeds_weights(tmp_path):
    model = torch.nn.Linear(3, 2)
    states = {}
    for seed in (4, 1):
        torch.manual_seed(seed)
        states[seed] = torch.nn.Linear(3, 2).state_dict()
    save_model(states, "toy", {"id": "toy"}, tmp_path / "toy.pt")
    assert saved_seeds(tmp_path / "toy.pt", "toy") == [4, 1]  # training order
    load_state(model, "toy", tmp_path / "toy.pt")
    assert torch.equal(model.weight, states[4]["weight"])  # default: the first seed trained
    load_state(model, "toy", tmp_path / "toy.pt", seed=1)
    assert torch.equal(model.weight, states[1]["weight"])
    with pytest.raises(DataFileError, match=r"toy.pt: holds the seeds \[4, 1\] of toy, not seed 7"):
        load_state(model, "toy", tmp_path / "toy.pt", seed=7)
    with pytest.raises(DataFileError, match="holds method 'toy', expected 'other'"):
        saved_seeds(tmp_path / "toy.pt", "other")


def test_metrics_of_several_seeds_are_their_mean_with_the_std_beside():
    runs = [{"cso_map": 10.0, "ap05": 1.0, "ap10": 2.0, "ap15": 3.0, "ap20": 4.0, "ap25": 5.0, "psnr": 30.0,
             "ssim": 0.5, "fps": 100.0, "params": 7, "device": "cpu"},
            {"cso_map": 14.0, "ap05": 3.0, "ap10": 2.0, "ap15": 3.0, "ap20": 4.0, "ap25": 5.0, "psnr": 32.0,
             "ssim": 0.7, "fps": 300.0, "params": 7, "device": "cpu"}]
    combined = combine_seeds(runs, [0, 1], ("cso_map", "ap05", "ap10", "ap15", "ap20", "ap25"))
    assert combined["cso_map"] == 12.0 and combined["cso_map_std"] == pytest.approx(2.0 ** 0.5 * 2.0)
    assert combined["ap10_std"] == 0.0 and combined["params"] == 7 and combined["seeds"] == 2
    assert combined["per_seed"]["1"]["cso_map"] == 14.0 and "psnr" not in combined["per_seed"]["1"]
    assert combine_seeds(runs[:1], [0], ("cso_map",)) == runs[0]  # one seed: the metrics as they were
