import numpy as np
import pandas as pd
import pytest

from pipeline.evaluation import pr_curve_table
from pipeline.reports import build_table7, figure_windows, profile_label, profile_name, to_latex, to_markdown

PUBLISHED = pd.DataFrame({
    "method_id": ["ista", "srcnn", "derefnet"], "family": ["traditional", "super_resolution", "multi_frame"],
    "method": ["ISTA", "SRCNN", "DeRefNet"], "cso_map": [10.72, 49.64, 51.55], "ap05": [0.14, 1.4, 1.0],
    "ap10": [1.97, 16.3, 14.4], "ap15": [8.74, 51.2, 54.9], "ap20": [18.22, 85.0, 90.4], "ap25": [24.53, 94.3, 97.1],
    "params": [None, "15.84K", "0.89M"], "flops": ["398.57M", "0.35G", "15.70G"], "fps": [0.1, 102961, 367]})
SCORES = ("cso_map", "ap05", "ap10", "ap15", "ap20", "ap25")
ORACLE = {key: {"cso_map": 47.8, "ap05": 0.6, "ap10": 7.9, "ap15": 41.8, "ap20": 89.3, "ap25": 99.3}
          for key in ("brightness", "perfect_ranking")}


def _result(value):
    return {"cso_map": value, "ap05": 1.0, "ap10": 2.0, "ap15": 3.0, "ap20": 4.0, "ap25": 5.0, "psnr": 30.0,
            "ssim": 0.9, "params": 15841, "flops": 3.5e8, "fps": 1234.0, "device": "cpu"}


def test_table7_puts_ours_beside_published_grouped_by_family():
    results = {"srcnn": _result(40.123), "physfit": _result(95.5)}
    labels = {"srcnn": ("super_resolution", "SRCNN"), "physfit": ("beyond_the_papers", "PhysFit")}
    crb = {"cso_map": 65.7, "ap05": 46.9, "ap10": 60.8, "ap15": 68.1, "ap20": 74.1, "ap25": 78.5}
    table = build_table7(results, labels, PUBLISHED, ORACLE, SCORES, crb)
    assert list(table["family"]) == ["traditional", "super_resolution", "multi_frame", "beyond_the_papers",
                                     "bound", "bound", "bound"]
    assert table.iloc[-1]["method"].startswith("Cramér-Rao bound") and table.iloc[-1]["cso_map"] == "65.70"
    srcnn = table[table["method"] == "SRCNN"].iloc[0]
    assert srcnn["cso_map"] == "40.12 (49.64)" and srcnn["params"] == "15.84K (15.84K)"
    assert srcnn["flops"] == "350.00M (0.35G)" and srcnn["fps"] == "1,234 (102,961)"
    assert table[table["method"] == "PhysFit"].iloc[0]["params"] == "15.84K"  # no published figure
    assert table[table["method"] == "DeRefNet"].iloc[0]["cso_map"] == "— (51.55)"  # published only
    assert table[table["method"] == "PhysFit"].iloc[0]["cso_map"] == "95.50"  # ours only
    markdown = to_markdown(table, "Table VII", ["Profile: laptop"])
    assert "| **Super resolution** |" in markdown and "| SRCNN | 15.84K (15.84K) |" in markdown
    assert "Grid oracle" in markdown
    latex = to_latex(table, "Table VII")
    assert "\\toprule" in latex and "40.12 (49.64)" in latex and "--" in latex


def test_table7_shows_mean_and_std_over_several_seeds_only():
    several = {**_result(40.0), "cso_map_std": 1.234, "ap05_std": 0.5, "seeds": 3}
    single = {**_result(30.0), "cso_map_std": 9.9}  # a std without several seeds is not shown
    table = build_table7({"srcnn": several, "ista": single}, {"srcnn": ("super_resolution", "SRCNN"),
                                                             "ista": ("traditional", "ISTA")}, PUBLISHED, ORACLE, SCORES)
    srcnn = table[table["method"] == "SRCNN"].iloc[0]
    assert srcnn["cso_map"] == "40.00 ± 1.23 (49.64)" and srcnn["ap05"] == "1.00 ± 0.50 (1.40)"
    assert table[table["method"] == "ISTA"].iloc[0]["cso_map"] == "30.00 (10.72)"


def test_profile_label_names_profile_data_and_budgets():
    label = profile_label(profile_name({"profile": "laptop"}), 5000, {"srcnn": "8 x 8192"})
    assert label.startswith("laptop profile: 5,000 trajectories") and "srcnn 8 x 8192" in label
    assert profile_name({"profile": "paper"}) == "paper scale"


def test_a_new_family_needs_no_table_edit():
    results = {"toy": _result(12.0)}
    table = build_table7(results, {"toy": ("brand_new_family", "Toy")}, PUBLISHED, ORACLE, SCORES)
    assert list(table["family"])[-3:] == ["brand_new_family", "bound", "bound"]
    assert "| **Brand new family** |" in to_markdown(table, "T", [])


def test_figure_windows_are_spread_and_unique():
    assert list(figure_windows(4, 960)) == [0, 320, 639, 959]
    assert list(figure_windows(10, 3)) == [0, 1, 2]


def test_pr_curve_table_resamples_the_envelope():
    curves = {"ap05": {"recall": np.array([0.25, 0.25, 0.5]), "precision": np.array([1.0, 0.5, 2 / 3]),
                       "score": np.array([3.0, 2.0, 1.0])}}
    table = pr_curve_table(curves, 5)
    assert list(table["recall"]) == [0.0, 0.25, 0.5, 0.75, 1.0]
    assert table["precision"].tolist() == pytest.approx([1.0, 1.0, 2 / 3, 0.0, 0.0])


def test_perceptual_note_says_which_weights():
    from pipeline.reports import perceptual_note

    assert perceptual_note({}) is None
    note = perceptual_note({"SRGAN": None, "ESRGAN": "vgg19.pth"})
    assert "SRGAN: VGG19 as initialised" in note and "ESRGAN: vgg19.pth" in note
