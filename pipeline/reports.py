"""Paper-style tables (Markdown + LaTeX) and figures from the committed metrics JSON files."""
from __future__ import annotations

import math
from pathlib import Path
from typing import Mapping, Sequence

import numpy as np
import pandas as pd

from pipeline.io import atomic_path

PROFILE_NAMES = {"laptop": "laptop profile", "paper": "paper scale"}


def family_title(family: str) -> str:
    """Display title of a family id: 'deep_unfolding' -> 'Deep unfolding'."""
    return family.replace("_", " ").capitalize()


def profile_name(params: Mapping) -> str:
    """'laptop profile' or 'paper scale', from the top-level ``profile`` switch."""
    profile = params.get("profile", "laptop")
    return PROFILE_NAMES.get(profile, profile)


def profile_label(name: str, trajectories: int, budgets: Mapping[str, str]) -> str:
    """The profile, the data size and each trained method's budget, for table headers."""
    trained = "; ".join(f"{method} {budget}" for method, budget in budgets.items())
    return f"{name}: {trajectories:,} trajectories; training budget (epochs x windows per epoch): {trained or 'none'}"


def noise_sweep_markdown(sweeps: Mapping[str, dict], labels: Mapping[str, str], sensor, profile: str,
                         trajectories: int) -> str:
    """The noise-sweep table: one row per sigma, one CSO-mAP column per method.

    ``sweeps``: method id -> noise_sweep stage JSON (``rows`` of noise_sigma, windows, cso_map).
    """
    columns = {labels[method]: pd.DataFrame(sweep["rows"]).set_index("noise_sigma")["cso_map"]
               for method, sweep in sweeps.items()}
    wide = pd.DataFrame(columns)
    first = next(iter(sweeps.values()))
    recording = f"{sensor.bit_depth}-bit quantisation" if sensor.bit_depth else "float frames"
    lines = ["# Noise sweep: CSO-mAP on the test split against additive Gaussian noise", "",
             f"Additive noise of std sigma (counts), then {recording}; same trajectories for every sigma. "
             "Networks are trained on the default data; every method sees the noisy sensor through the physics object.",
             f"Profile: {profile} ({trajectories:,} trajectories); one test window in {first['window_stride']} "
             f"scored ({first['rows'][0]['windows']:,} windows per sigma).", "",
             "| sigma | " + " | ".join(wide.columns) + " |", "|---|" + "---|" * len(wide.columns)]
    lines += [f"| {sigma:g} | " + " | ".join(f"{v:.2f}" for v in row) + " |" for sigma, row in wide.iterrows()]
    return "\n".join(lines) + "\n"


def perceptual_note(weights: Mapping[str, str | None]) -> str | None:
    """Table note on the VGG19 of the perceptual losses: ``weights`` maps a method's display name
    to its ``perceptual_weights`` file (None = the network as initialised); None when empty."""
    if not weights:
        return None
    described = "; ".join(f"{name}: {'VGG19 as initialised (no pretrained weights)' if path is None else path}"
                          for name, path in weights.items())
    return (f"Perceptual losses: {described}. Pretrained weights are set with methods.<id>.model.perceptual_weights "
            "(a torchvision VGG19 state_dict); Params count the generator only (the published figures add the "
            "discriminator and the VGG19).")


def _si(value: float, unit: str = "") -> str:
    """1234567 -> '1.23M' (K, M, G, T)."""
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return "—"
    for factor, suffix in ((1e12, "T"), (1e9, "G"), (1e6, "M"), (1e3, "K")):
        if abs(value) >= factor:
            return f"{value / factor:.2f}{suffix}{unit}"
    return f"{value:.0f}{unit}"


def score_cell(ours: float | None, paper: float | None, spread: float | None = None) -> str:
    """'ours (paper)' with two decimals, 'mean ± std (paper)' with a ``spread`` over seeds; '—'
    for a missing side."""
    left = "—" if ours is None or pd.isna(ours) else f"{ours:.2f}"
    if spread is not None and not pd.isna(spread) and left != "—":
        left += f" ± {spread:.2f}"
    right = "" if paper is None or pd.isna(paper) else f" ({paper:.2f})"
    return left + right


def _with_published(ours: str, paper, column: str) -> str:
    """'ours (published)' for the cost columns, the published figure as printed (text)."""
    if paper is None or column not in paper or pd.isna(paper[column]) or str(paper[column]).strip() == "":
        return ours
    value = paper[column]
    if isinstance(value, (int, float, np.number)):
        value = f"{value:,.0f}" if abs(value) >= 10 else f"{value:g}"
    return f"{ours} ({value})"


CRB_LABEL = "Cramér-Rao bound, one frame (unbiased, no prior, perfect ranking)"


def build_table7(results: Mapping[str, dict], labels: Mapping[str, tuple[str, str]], published: pd.DataFrame,
                 oracle: dict, scores: Sequence[str], crb: dict | None = None) -> pd.DataFrame:
    """One row per method, ours beside the published numbers, grouped by family in paper order.

    ``results``: method id -> metrics dict (evaluate stage JSON). ``labels``: method id ->
    (family, display name) for our methods. ``published``: the reference Table VII (with
    ``method_id``). Methods in either appear; a missing side shows '—'; a method scored over
    several training seeds shows mean ± std. ``scores``: cso_map and the AP keys
    (``EvaluateConfig.score_keys``; a key the published table lacks shows ours alone). Params, FLOPs and FPS
    carry the published figure as printed in parentheses (FPS on the paper's GPU). The bound
    rows: the grid oracle's two rankings and, given ``crb`` (the crb stage's JSON), the
    Cramér-Rao row.
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
            "params": _with_published(_si(ours["params"]) if ours.get("params") else "—", paper, "params"),
            "flops": _with_published(_si(ours["flops"]) if "flops" in ours else "—", paper, "flops"),
            "fps": _with_published(f"{ours['fps']:,.0f}" if "fps" in ours else "—", paper, "fps"),
        }
        several = ours.get("seeds", 1) > 1
        for key in scores:
            row[key] = score_cell(ours.get(key), None if paper is None or key not in paper.index else float(paper[key]),
                             ours.get(f"{key}_std") if several else None)
        row["psnr"] = f"{ours['psnr']:.2f}" if "psnr" in ours else "—"
        row["ssim"] = f"{ours['ssim']:.4f}" if "ssim" in ours else "—"
        for key, digits in MATCHED_COLUMNS.items():
            row[key] = f"{ours[key]:.{digits}f}" if isinstance(ours.get(key), (int, float)) and math.isfinite(ours[key]) else "—"
        rows.append(row)
    bounds = [("Grid oracle, ranked by true brightness", oracle["brightness"]),
              ("Grid oracle, perfect ranking (ceiling for HR-map methods)", oracle["perfect_ranking"])]
    if crb is not None:
        bounds.append((CRB_LABEL, crb))
    for title, bound in bounds:
        rows.append({"family": "bound", "method": title, "params": "—", "flops": "—", "fps": "—",
                     **{k: f"{bound[k]:.2f}" for k in scores}, "psnr": "—", "ssim": "—",
                     **{k: "—" for k in MATCHED_COLUMNS}})
    table = pd.DataFrame(rows)
    families = list(dict.fromkeys([*published["family"], *table["family"]]))
    families.remove("bound")
    order = {family: i for i, family in enumerate(families + ["bound"])}
    table["_order"] = table["family"].map(order)
    return table.sort_values("_order", kind="stable").drop(columns="_order").reset_index(drop=True)


MATCHED_COLUMNS = {"jaccard": 1, "rmse": 3, "count_accuracy": 1, "efficiency": 1}  # key -> decimals
COLUMN_TITLES = {"method": "Method", "params": "Params", "flops": "FLOPs", "fps": "FPS", "cso_map": "CSO-mAP",
                 "psnr": "PSNR", "ssim": "SSIM", "jaccard": "JI", "rmse": "RMSE (px)", "count_accuracy": "K right",
                 "efficiency": "Eff."}  # an AP key's title is the key in capitals (ap05 -> AP05)


def table_columns(table: pd.DataFrame) -> dict[str, str]:
    """Column key -> title of a table of :func:`build_table7` (every column but ``family``)."""
    return {key: COLUMN_TITLES.get(key, key.upper()) for key in table.columns if key != "family"}


def to_markdown(table: pd.DataFrame, title: str, notes: Sequence[str]) -> str:
    """Markdown: a title, notes, then one section row per family."""
    columns = table_columns(table)
    header = "| " + " | ".join(columns.values()) + " |"
    lines = [f"# {title}", "", *notes, "", header, "|" + "---|" * len(columns)]
    for family, group in table.groupby("family", sort=False):
        lines.append(f"| **{family_title(family)}** |"
                     + " |" * (len(columns) - 1))
        for _, row in group.iterrows():
            lines.append("| " + " | ".join(str(row[c]) for c in columns) + " |")
    return "\n".join(lines) + "\n"


def _latex_escape(text: str) -> str:
    return (str(text).replace("\\", "\\textbackslash{}").replace("&", "\\&").replace("%", "\\%")
            .replace("_", "\\_").replace("#", "\\#").replace("—", "--"))


def to_latex(table: pd.DataFrame, caption: str) -> str:
    """A booktabs LaTeX table with one \\midrule-separated block per family."""
    columns = table_columns(table)
    spec = "l" + "r" * (len(columns) - 1)
    lines = ["\\begin{table*}[t]", "\\centering", f"\\caption{{{_latex_escape(caption)}}}",
             "\\resizebox{\\textwidth}{!}{%", f"\\begin{{tabular}}{{{spec}}}", "\\toprule",
             " & ".join(columns.values()) + " \\\\"]
    for family, group in table.groupby("family", sort=False):
        lines += ["\\midrule",
                  f"\\multicolumn{{{len(columns)}}}{{l}}{{\\textit{{{_latex_escape(family_title(family))}}}}} \\\\"]
        for _, row in group.iterrows():
            lines.append(" & ".join(_latex_escape(row[c]) for c in columns) + " \\\\")
    lines += ["\\bottomrule", "\\end{tabular}}", "\\end{table*}"]
    return "\n".join(lines) + "\n"


def figure_windows(count: int, n_windows: int) -> np.ndarray:
    """Indices of ``count`` test windows spread evenly over the test set."""
    return np.unique(np.linspace(0, n_windows - 1, min(count, n_windows)).round().astype(int))


def draw_windows(path, lr: np.ndarray, gt: np.ndarray, outputs: Mapping[str, tuple[np.ndarray, Sequence]],
                 truths: Sequence[np.ndarray], caption: str, half_width: float = 1.5) -> None:
    """PNG grid, one row per window, cropped to ``half_width`` LR px around the group: the LR
    middle frame, the GT map and each method's HR map, with the true positions (cyan +) and the
    method's detections (white x, continuous for methods that report positions).

    lr: (N, m, m); gt: (N, cm, cm); outputs: label -> ((N, cm, cm) maps, per window (n, 3)
    detections x, y, score); truths: per window (k, 3) targets. Axes are LR px (x = row, down).
    """
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    columns = ["LR input", "ground truth"] + list(outputs)
    n, m = len(lr), lr.shape[1]
    extent = (-0.5, m - 0.5, m - 0.5, -0.5)  # LR pixels and HR cells both tile [-1/2, m - 1/2]
    fig, axes = plt.subplots(n, len(columns), figsize=(1.9 * len(columns), 2.0 * n + 0.6), squeeze=False)
    for i in range(n):
        centre = truths[i][:, :2].mean(axis=0) if len(truths[i]) else np.full(2, (m - 1) / 2)
        panels = [(lr[i], None), (gt[i], None)] + [(maps[i], found[i]) for maps, found in outputs.values()]
        for j, (ax, (image, found)) in enumerate(zip(axes[i], panels)):
            ax.imshow(image, cmap="inferno", interpolation="nearest", extent=extent)
            ax.plot(truths[i][:, 1], truths[i][:, 0], "c+", ms=9, mew=1.4)
            if found is not None and len(found):
                ax.plot(found[:, 1], found[:, 0], "wx", ms=6, mew=1.1)
            ax.set_xlim(centre[1] - half_width, centre[1] + half_width)
            ax.set_ylim(centre[0] + half_width, centre[0] - half_width)
            ax.set_xticks([])
            ax.set_yticks([])
            if i == 0:
                ax.set_title(columns[j], fontsize=8)
    fig.suptitle(caption, fontsize=8)
    fig.tight_layout()
    fig.savefig(path, format="png", dpi=110, metadata={"Software": None})
    plt.close(fig)


def converged_markdown(rows: Sequence[Mapping], flat_gain: float) -> str:
    """reports/tables/converged.md: one row per long run (pipeline.long_run), ours on the whole
    test split beside the published number, with the windows, CPU-hours and plateau verdict."""
    lines = ["# Converged CPU runs (long runs, not the laptop budget)", "",
             "Trained by `python -m pipeline.long_run train <id>` far past the laptop budget, on one CPU thread, "
             "and scored on the whole test split (`evaluate.window_stride` 1). CPU-hours are the training "
             "process's CPU time (validation included). *Flattened*: the last doubling of training windows "
             f"raised the best validation CSO-mAP by less than {flat_gain}.", "",
             "| method | CSO-mAP (test) | published | difference | test windows | training windows | CPU-hours | "
             "best val CSO-mAP | flattened | state |",
             "|---|---|---|---|---|---|---|---|---|---|"]
    for row in rows:
        ours, paper = row.get("ours"), row.get("published")
        difference = f"{ours - paper:+.2f}" if ours is not None and paper is not None else "—"
        flat = {True: "yes", False: "no", None: "too early"}[row.get("flattened")]
        test_windows = "—" if row.get("test_windows") is None else f"{row['test_windows']:,}"
        lines.append(f"| {row['method']} | {'—' if ours is None else f'{ours:.2f}'} | "
                     f"{'—' if paper is None else f'{paper:.2f}'} | {difference} | {test_windows} | "
                     f"{row['windows']:,} | {row['cpu_hours']:.2f} | {row['best_val']:.2f} | {flat} | {row['state']} |")
    return "\n".join(lines) + "\n"


def draw_learning_curves(curves: Mapping[str, pd.DataFrame], path, published: Mapping[str, float] | None = None
                         ) -> None:
    """PNG: validation CSO-mAP against training windows seen (left) and CPU-hours (right), one
    line per run; ``published``: label -> the paper's number, drawn dashed."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, (by_windows, by_hours) = plt.subplots(1, 2, figsize=(10, 4), sharey=True)
    for label, curve in curves.items():
        line, = by_windows.plot(curve["windows"], curve["val_cso_map"], marker="o", ms=3, label=label)
        by_hours.plot(curve["cpu_seconds"] / 3600, curve["val_cso_map"], marker="o", ms=3, color=line.get_color())
        if published and label in published:
            for ax in (by_windows, by_hours):
                ax.axhline(published[label], color=line.get_color(), ls="--", lw=1)
    by_windows.set_xlabel("training windows seen")
    by_hours.set_xlabel("CPU-hours (one thread)")
    by_windows.set_ylabel("validation CSO-mAP")
    for ax in (by_windows, by_hours):
        ax.grid(alpha=0.3)
    if curves:
        by_windows.legend(fontsize=8)
    fig.suptitle("Long runs: validation CSO-mAP (dashed: published, paper scale)", fontsize=9)
    fig.tight_layout()
    with atomic_path(path) as tmp:
        fig.savefig(tmp, format="png", dpi=110, metadata={"Software": None})
    plt.close(fig)


def experiments_markdown(table: pd.DataFrame, title: str, notes: Sequence[str], scores: Sequence[str]) -> str:
    """An experiment group's table (``pipeline.experiments.collect``): ours (published) per score of
    ``scores`` (cso_map and the APs), mean ± std where several seeds ran, then the commit and
    command that made the row; the method and training windows when the table has them."""
    def cell(row, column) -> str:
        spread = row.get(f"{column}_std") if row.get("seeds", 1) > 1 else None
        return score_cell(row[column], row[f"{column}_published"], spread)

    budget = "train_windows" in table.columns
    header = ["Table", "Row", *(["Method", "Training windows"] if budget else []),
              *(COLUMN_TITLES.get(key, key.upper()) for key in scores), "Commit", "Command"]
    lines = [f"# {title}", "", *notes, "", "| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    for _, row in table.iterrows():
        windows = row.get("train_windows")
        extra = [row["method"], "all" if windows is None or pd.isna(windows) else f"{int(windows):,}"] if budget else []
        cells = [row["table"], row["row"], *extra, *[cell(row, c) for c in scores],
                 row.get("commit") or "—", f"`{row['command']}`"]
        lines.append("| " + " | ".join(str(c) for c in cells) + " |")
    return "\n".join(lines) + "\n"


def budget_figure(table: pd.DataFrame, published: Mapping[str, float], path: Path, title: str = "") -> None:
    """CSO-mAP against training windows (log scale), a line per method, each method's published
    Table VII value dashed: ``table`` from ``pipeline.experiments.collect`` with ``params``."""
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    figure, axes = plt.subplots(figsize=(6.0, 4.0))
    done = table.dropna(subset=["cso_map", "train_windows"])
    for index, (method, rows) in enumerate(done.groupby("method", sort=False)):
        rows = rows.sort_values("train_windows")
        color = f"C{index}"
        spread = pd.to_numeric(rows["cso_map_std"], errors="coerce").fillna(0.0) if "cso_map_std" in rows else 0.0
        axes.errorbar(rows["train_windows"], rows["cso_map"], yerr=spread, marker="o", color=color, label=method)
        if method in published:
            axes.axhline(published[method], color=color, linestyle="--", linewidth=1,
                         label=f"{method} published (paper scale)")
    axes.set_xscale("log")
    axes.set_xlabel("training windows seen (epochs x windows per epoch)")
    axes.set_ylabel("test CSO-mAP")
    axes.set_title(title, fontsize=10)
    axes.grid(True, alpha=0.3)
    axes.legend(fontsize=8)
    figure.tight_layout()
    with atomic_path(path) as tmp:
        figure.savefig(tmp, format="png", dpi=120, metadata={"Software": None})
    plt.close(figure)


def stress_markdown(rows: Sequence[Mapping], labels: Mapping[str, str], profile: str, stress) -> str:
    """The stress table (stage stress): one row per shift, CSO-mAP of the grid oracle and of each method;
    ``stress`` the StressConfig it ran with."""
    head = ["Shift", "Windows", "Grid oracle"] + [labels[m] for m in labels] + ["PhysFit PSF σ"]
    lines = ["# Stress: CSO-mAP on shifted scenes", "",
             f"Profile: {profile} profile; {stress.trajectories} test trajectories simulated per shift (seed "
             f"{stress.seed}), one window in {stress.window_stride} of each scored. The methods were trained, or "
             "(PhysFit) given their scene priors, on the default data, and see the default sensor; the grid oracle "
             "(ground truth on the HR grid, ranked by true brightness) is computed on each shift's own targets. "
             "Regenerate with `dvc repro stress`.", "",
             "| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for row in rows:
        cells = [row["shift"], str(row["windows"]), f"{row['grid_oracle']:.2f}"]
        cells += [f"{row['methods'][m]['cso_map']:.2f}" for m in labels]
        sigma = row.get("physfit_psf_sigma")
        cells.append("" if sigma is None else f"{sigma:.3f}")
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines) + "\n"


def seeds_note(seeds: Sequence[int]) -> str:
    """What a trained method's scores are: one training run, or mean ± std over several seeds."""
    if len(seeds) == 1:
        return (f"Trained methods: one training run each (trainer.seeds = [{seeds[0]}]); the seed-to-seed spread "
                "is measured in README.")
    return f"Trained methods: mean ± std (sample, ddof 1) over {len(seeds)} training runs, trainer.seeds = {list(seeds)}."


def table7_notes(profile: str, evaluate, frames: int, devices: Sequence[str], seeds: Sequence[int],
                 crb: Mapping) -> list[str]:
    """The notes above Table VII: profile, scored windows (``evaluate``: the EvaluateConfig;
    ``frames`` scored), devices, seeds, and what the bound rows are (``crb``: the crb stage's JSON)."""
    scored = ("all" if evaluate.window_stride == 1 else
              f"one in {evaluate.window_stride} of each trajectory, the offset rotating over the trajectories")
    return [f"Profile: **{profile}**. Published numbers (in parentheses) are paper scale.",
            f"Scored on the middle frames of {evaluate.window}-frame test windows ({scored}: {frames:,} frames); "
            f"FPS = windows per second on {', '.join(devices)}; FLOPs per window (torch.utils.flop_counter); "
            "Params = trainable parameters; the published Params/FLOPs/FPS in parentheses are as printed (FPS on the "
            "paper's GPU).",
            seeds_note(seeds),
            "Grid-oracle rows: the ground truth snapped to the HR grid. Ranked by its true brightness it is a "
            "reference a network can pass by ranking its cells better; with perfect ranking it is the ceiling "
            "of any HR-map method.",
            f"Cramér-Rao row: every target found at its true position plus an error drawn from the bound of an "
            f"unbiased estimator that sees the middle frame alone (known PSF and sensor, no brightness, count or "
            f"motion prior; clipped pixels censored), ranked perfectly; median bound {crb['median_bound_px']:.3f} px, "
            f"{100 * crb['unlocatable_fraction']:.1f}% of targets without a finite bound (counted as missed). "
            "Methods that use priors or several frames can pass it; see README."]


def ablations_cpu_markdown(full: Sequence[float], rows: Sequence[Mapping], budget: str, published_full: float | None
                           ) -> str:
    """reports/tables/ablations_cpu.md: the ablation rows trained as long runs at one CPU budget.

    ``full``: the full model's test CSO-mAP, one per seed; ``rows``: per ablation row its
    ``table``, ``row``, ``ours`` (test CSO-mAP, mean over its seeds), ``seeds`` and ``published``;
    ``budget``: the training budget in words. A row's effect is its difference from the full
    model's mean; it is resolved when larger than twice the full model's seed std (sample, ddof 1;
    two or more seeds needed), and its sign is compared with the paper's effect (the published
    row minus the published full model, ``published_full``)."""
    mean = float(np.mean(full)) if len(full) else None
    spread = float(np.std(full, ddof=1)) if len(full) > 1 else None
    lines = ["# Ablations at the CPU ablation budget (long runs)", "",
             f"Budget: {budget}. Scored on the whole test split. Full model (Table I A): "
             + ("not run yet" if mean is None else
                f"{', '.join(f'{v:.2f}' for v in full)} over {len(full)} seed(s), mean {mean:.2f}"
                + ("" if spread is None else f" ± {spread:.2f} (sample std)"))
             + (f"; published {published_full:.2f}." if published_full is not None else "."),
             "Resolved: |ours - full mean| > 2 x the full model's seed std. Regenerate with "
             "`python -m pipeline.long_run report`.", "",
             "| table | row | ours | seeds | effect (ours) | published | effect (paper) | resolved | paper's sign |",
             "|---|---|---|---|---|---|---|---|---|"]
    for row in rows:
        ours, paper = row.get("ours"), row.get("published")
        effect = None if ours is None or mean is None else ours - mean
        paper_effect = None if paper is None or published_full is None else paper - published_full
        resolved = "—" if effect is None or spread is None else ("yes" if abs(effect) > 2 * spread else "no")
        sign = ("—" if effect is None or paper_effect is None else
                "yes" if (effect > 0) == (paper_effect > 0) else "no")
        cell = lambda v, signed=False: "—" if v is None else (f"{v:+.2f}" if signed else f"{v:.2f}")  # noqa: E731
        lines.append(f"| {row['table']} | {row['row']} | {cell(ours)} | {row.get('seeds', 0)} | {cell(effect, True)} | "
                     f"{cell(paper)} | {cell(paper_effect, True)} | {resolved} | {sign} |")
    return "\n".join(lines) + "\n"
