"""Paper-style tables (Markdown + LaTeX) and figures from the committed metrics JSON files."""
from __future__ import annotations

import math
from typing import Mapping, Sequence

import numpy as np
import pandas as pd

FAMILY_ORDER = ("traditional", "super_resolution", "multi_frame", "deep_unfolding", "beyond_the_papers")
FAMILY_TITLES = {
    "traditional": "Traditional",
    "super_resolution": "Super-resolution",
    "multi_frame": "Multi-frame",
    "deep_unfolding": "Deep unfolding",
    "beyond_the_papers": "Beyond the papers (continuous positions)",
}
AP_KEYS = ("ap05", "ap10", "ap15", "ap20", "ap25")
PAPER_TRAJECTORIES = 5000


def profile_label(trajectories: int, epochs: Mapping[str, int]) -> str:
    """'paper scale' or 'laptop profile', with the counts that decide it."""
    name = "paper scale" if trajectories >= PAPER_TRAJECTORIES else "laptop profile"
    trained = ", ".join(f"{method} {n}" for method, n in epochs.items() if n)
    return f"{name}: {trajectories:,} trajectories; epochs {trained or 'none'}"


def _si(value: float, unit: str = "") -> str:
    """1234567 -> '1.23M' (K, M, G, T)."""
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return "—"
    for factor, suffix in ((1e12, "T"), (1e9, "G"), (1e6, "M"), (1e3, "K")):
        if abs(value) >= factor:
            return f"{value / factor:.2f}{suffix}{unit}"
    return f"{value:.0f}{unit}"


def _pair(ours: float | None, paper: float | None) -> str:
    """'ours (paper)' with two decimals; '—' for a missing side."""
    left = "—" if ours is None or pd.isna(ours) else f"{ours:.2f}"
    right = "" if paper is None or pd.isna(paper) else f" ({paper:.2f})"
    return left + right


def build_table7(results: Mapping[str, dict], labels: Mapping[str, tuple[str, str]], published: pd.DataFrame,
                 oracle: dict) -> pd.DataFrame:
    """One row per method, ours beside the published numbers, grouped by family in paper order.

    ``results``: method id -> metrics dict (evaluate stage JSON). ``labels``: method id ->
    (family, display name) for our methods. ``published``: the reference Table VII (with
    ``method_id``). Methods in either appear; a missing side shows '—'.
    """
    published = published.set_index("method_id")
    ids = list(dict.fromkeys(list(published.index) + list(results)))
    rows = []
    for method in ids:
        ours = results.get(method, {})
        paper = published.loc[method] if method in published.index else None
        family, name = labels.get(method, (paper["family"], paper["method"]) if paper is not None else ("other", method))
        row = {
            "family": family,
            "method": name,
            "params": _si(ours["params"]) if ours.get("params") else "—",
            "flops": _si(ours["flops"]) if "flops" in ours else "—",
            "fps": f"{ours['fps']:,.0f}" if "fps" in ours else "—",
        }
        for key in ("cso_map",) + AP_KEYS:
            row[key] = _pair(ours.get(key), None if paper is None else float(paper[key]))
        row["psnr"] = f"{ours['psnr']:.2f}" if "psnr" in ours else "—"
        row["ssim"] = f"{ours['ssim']:.4f}" if "ssim" in ours else "—"
        rows.append(row)
    for title, key in (("Grid oracle, brightness-ranked (bound for HR-map methods)", "brightness"),
                       ("Grid oracle, perfect ranking", "perfect_ranking")):
        bound = oracle[key]
        rows.append({"family": "bound", "method": title, "params": "—", "flops": "—", "fps": "—",
                     **{k: f"{bound[k]:.2f}" for k in ("cso_map",) + AP_KEYS}, "psnr": "—", "ssim": "—"})
    table = pd.DataFrame(rows)
    order = {family: i for i, family in enumerate(FAMILY_ORDER + ("other", "bound"))}
    table["_order"] = table["family"].map(lambda f: order.get(f, len(order)))
    return table.sort_values("_order", kind="stable").drop(columns="_order").reset_index(drop=True)


COLUMNS = {"method": "Method", "params": "Params", "flops": "FLOPs", "fps": "FPS", "cso_map": "CSO-mAP",
           "ap05": "AP05", "ap10": "AP10", "ap15": "AP15", "ap20": "AP20", "ap25": "AP25",
           "psnr": "PSNR", "ssim": "SSIM"}


def to_markdown(table: pd.DataFrame, title: str, notes: Sequence[str]) -> str:
    """Markdown: a title, notes, then one section row per family."""
    header = "| " + " | ".join(COLUMNS.values()) + " |"
    lines = [f"# {title}", "", *notes, "", header, "|" + "---|" * len(COLUMNS)]
    for family, group in table.groupby("family", sort=False):
        lines.append(f"| **{FAMILY_TITLES.get(family, family.replace('_', ' ').capitalize())}** |"
                     + " |" * (len(COLUMNS) - 1))
        for _, row in group.iterrows():
            lines.append("| " + " | ".join(str(row[c]) for c in COLUMNS) + " |")
    return "\n".join(lines) + "\n"


def _latex_escape(text: str) -> str:
    return (str(text).replace("\\", "\\textbackslash{}").replace("&", "\\&").replace("%", "\\%")
            .replace("_", "\\_").replace("#", "\\#").replace("—", "--"))


def to_latex(table: pd.DataFrame, caption: str) -> str:
    """A booktabs LaTeX table with one \\midrule-separated block per family."""
    spec = "l" + "r" * (len(COLUMNS) - 1)
    lines = ["\\begin{table*}[t]", "\\centering", f"\\caption{{{_latex_escape(caption)}}}",
             "\\resizebox{\\textwidth}{!}{%", f"\\begin{{tabular}}{{{spec}}}", "\\toprule",
             " & ".join(COLUMNS.values()) + " \\\\"]
    for family, group in table.groupby("family", sort=False):
        lines += ["\\midrule",
                  f"\\multicolumn{{{len(COLUMNS)}}}{{l}}{{\\textit{{{_latex_escape(FAMILY_TITLES.get(family, family))}}}}} \\\\"]
        for _, row in group.iterrows():
            lines.append(" & ".join(_latex_escape(row[c]) for c in COLUMNS) + " \\\\")
    lines += ["\\bottomrule", "\\end{tabular}}", "\\end{table*}"]
    return "\n".join(lines) + "\n"


def figure_windows(count: int, n_windows: int) -> np.ndarray:
    """Indices of ``count`` test windows spread evenly over the test set."""
    return np.unique(np.linspace(0, n_windows - 1, min(count, n_windows)).round().astype(int))


def draw_windows(path, lr: np.ndarray, gt: np.ndarray, outputs: Mapping[str, np.ndarray],
                 truths: Sequence[np.ndarray], caption: str) -> None:
    """PNG grid: one row per window; columns LR middle frame, GT map, each method's HR map.

    lr: (N, m, m); gt: (N, cm, cm); outputs: method label -> (N, cm, cm); truths: per window
    (k, 3) true targets, drawn as crosses in HR pixel coordinates on every HR panel.
    """
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    columns = ["LR input", "ground truth"] + list(outputs)
    n, c = len(lr), gt.shape[1] // lr.shape[1]
    fig, axes = plt.subplots(n, len(columns), figsize=(2.1 * len(columns), 2.2 * n + 0.6), squeeze=False)
    for i in range(n):
        panels = [lr[i], gt[i]] + [out[i] for out in outputs.values()]
        for j, (ax, image) in enumerate(zip(axes[i], panels)):
            ax.imshow(image, cmap="inferno", interpolation="nearest")
            if j > 0:  # HR panels: true positions at c x + (c-1)/2
                ax.plot(c * truths[i][:, 1] + (c - 1) / 2, c * truths[i][:, 0] + (c - 1) / 2, "c+", ms=6, mew=1)
            ax.set_xticks([])
            ax.set_yticks([])
            if i == 0:
                ax.set_title(columns[j], fontsize=8)
    fig.suptitle(caption, fontsize=9)
    fig.tight_layout()
    fig.savefig(path, format="png", dpi=110, metadata={"Software": None})
    plt.close(fig)
