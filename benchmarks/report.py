"""Tables and plots of a benchmark results file (the CSV that :mod:`benchmarks.suite` writes).

Only rows with status ``ok`` enter the figures. Means and standard deviations are over seeds:
the standard deviation is the sample one (``ddof=1``) and is left out when a cell has a single
seed.
"""

from __future__ import annotations

import textwrap
from collections.abc import Sequence
from pathlib import Path

import matplotlib

matplotlib.use("Agg")  # the Agg backend writes image files and needs no display

import matplotlib.pyplot as plt  # noqa: E402
import pandas as pd  # noqa: E402

from benchmarks.suite import OK  # noqa: E402

# Columns that identify a cell apart from its seed.
GROUP_COLUMNS = ("method", "dataset", "model", "partition", "num_clients")

PLOT_FILES = {
    "alpha": "accuracy_vs_alpha.png",
    "clients": "accuracy_vs_clients.png",
    "upload": "accuracy_vs_upload.png",
}


def seed_statistics(frame: pd.DataFrame) -> pd.DataFrame:
    """Return one row per cell without its seed: mean, std and count of accuracy, mean upload and time.

    Failed rows are counted in ``failed`` and left out of every other figure.
    """
    frame = frame.copy()
    frame["ok"] = frame["status"] == OK
    grouped = frame.groupby(list(GROUP_COLUMNS), sort=False, dropna=False)
    stats = grouped.apply(_cell_statistics, include_groups=False)
    return stats.reset_index()


def _cell_statistics(rows: pd.DataFrame) -> pd.Series:
    ok = rows[rows["ok"]]
    accuracy = pd.to_numeric(ok["test_accuracy"], errors="coerce")
    return pd.Series(
        {
            "accuracy_mean": accuracy.mean(),
            "accuracy_std": accuracy.std(ddof=1) if len(accuracy) > 1 else float("nan"),
            "seeds": int(accuracy.notna().sum()),
            "failed": int((~rows["ok"]).sum()),
            "upload_bytes_per_client": pd.to_numeric(ok["upload_bytes_per_client"], errors="coerce").mean(),
            "model_bytes": pd.to_numeric(ok["model_bytes"], errors="coerce").mean(),
            "wall_seconds": pd.to_numeric(ok["wall_seconds"], errors="coerce").mean(),
        }
    )


def format_mean_std(mean: float, std: float, seeds: int, expected_seeds: int, failed: int) -> str:
    """Format one table cell: ``0.912 ± 0.013``, with the seed count when seeds are missing."""
    if seeds == 0:
        return "failed" if failed else "-"
    text = f"{mean:.3f}" if pd.isna(std) else f"{mean:.3f} ± {std:.3f}"
    if seeds < expected_seeds:
        text += f" (n={seeds})"
    return text


def markdown_tables(
    frame: pd.DataFrame,
    methods: Sequence[str],
    partitions: Sequence[str],
    expected_seeds: int,
) -> str:
    """Return markdown tables of test accuracy, one per dataset and model, and per client count.

    Rows are `methods`, in that order; columns are `partitions` (alpha values and IID), in
    that order. A grid with a single partition and several client counts gets one table
    per dataset and model instead, with the client counts as columns. Each entry is the
    mean ± sample standard deviation over seeds. A method or partition without rows in
    `frame` is left out.
    """
    stats = seed_statistics(frame)
    present = [p for p in partitions if p in set(stats["partition"])]
    by_clients = len(present) == 1 and stats["num_clients"].nunique() > 1
    sections = []
    if by_clients:
        for (dataset, model), block in stats.groupby(["dataset", "model"], sort=False):
            counts = sorted(int(count) for count in block["num_clients"].unique())
            columns = [(f"{count} clients", block["num_clients"] == count) for count in counts]
            title = f"#### {dataset}, {model}, {present[0]}"
            sections.append(_accuracy_table(title, block, methods, columns, expected_seeds))
    else:
        for (dataset, model, clients), block in stats.groupby(["dataset", "model", "num_clients"], sort=False):
            columns = [(partition, block["partition"] == partition)
                       for partition in partitions if partition in set(block["partition"])]
            title = f"#### {dataset}, {model}, {clients} clients"
            sections.append(_accuracy_table(title, block, methods, columns, expected_seeds))
    return "\n\n".join(sections) + "\n"


def _accuracy_table(
    title: str, block: pd.DataFrame, methods: Sequence[str], columns: Sequence[tuple[str, pd.Series]],
    expected_seeds: int,
) -> str:
    """Format one table: a row per method present in `block`, a column per (header, row mask)."""
    lines = [
        title,
        "",
        "| method | " + " | ".join(header for header, _ in columns) + " |",
        "|---|" + "---|" * len(columns),
    ]
    for method in (m for m in methods if m in set(block["method"])):
        entries = []
        for _, mask in columns:
            match = block[mask & (block["method"] == method)]
            if match.empty:
                entries.append("-")
                continue
            row = match.iloc[0]
            entries.append(
                format_mean_std(row["accuracy_mean"], row["accuracy_std"], int(row["seeds"]), expected_seeds,
                                int(row["failed"]))
            )
        lines.append(f"| {method} | " + " | ".join(entries) + " |")
    return "\n".join(lines)


def cost_table(frame: pd.DataFrame, methods: Sequence[str]) -> str:
    """Return a markdown table of traffic per client and wall time per method and dataset.

    Upload and download are the means over successful runs of ``upload_bytes_per_client``
    and ``download_bytes_per_client`` in kilobytes (1 KB = 1000 bytes). Rows written before
    downloads were recorded leave the download empty (``-``). The wall time is the mean time
    of one whole `fedlab run`.
    """
    ok = frame[frame["status"] == OK].copy()
    if "download_bytes_per_client" not in ok.columns:
        ok["download_bytes_per_client"] = float("nan")
    for column in ("upload_bytes_per_client", "download_bytes_per_client", "model_bytes", "wall_seconds"):
        ok[column] = pd.to_numeric(ok[column], errors="coerce")
    lines = [
        "| method | dataset | upload per client (KB) | upload / model | download per client (KB) "
        "| wall time per run (s) | runs | failed |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for method in methods:
        for dataset in dict.fromkeys(frame["dataset"]):
            rows = ok[(ok["method"] == method) & (ok["dataset"] == dataset)]
            failed = int(((frame["method"] == method) & (frame["dataset"] == dataset) & (frame["status"] != OK)).sum())
            if rows.empty and not failed:
                continue
            if rows.empty:
                lines.append(f"| {method} | {dataset} | - | - | - | - | 0 | {failed} |")
                continue
            upload = rows["upload_bytes_per_client"].mean()
            ratio = upload / rows["model_bytes"].mean()
            download = rows["download_bytes_per_client"].mean()
            download_text = "-" if pd.isna(download) else f"{download / 1000:.1f}"
            lines.append(
                f"| {method} | {dataset} | {upload / 1000:.1f} | {ratio:.3f} | {download_text} | "
                f"{rows['wall_seconds'].mean():.0f} | {len(rows)} | {failed} |"
            )
    return "\n".join(lines) + "\n"


# ---------------------------------------------------------------------------
# Plots
# ---------------------------------------------------------------------------


def write_plots(
    frame: pd.DataFrame, out_dir: Path, methods: Sequence[str], partitions: Sequence[str]
) -> dict[str, Path]:
    """Write the three plots as PNG files into `out_dir` and return their paths by kind."""
    out_dir.mkdir(parents=True, exist_ok=True)
    stats = seed_statistics(frame)
    stats = stats[stats["seeds"] > 0]
    methods = [m for m in methods if m in set(stats["method"])]
    partitions = [p for p in partitions if p in set(stats["partition"])]
    # One colour per method across every panel and plot, in the grid's method order.
    colours = {method: f"C{i % 10}" for i, method in enumerate(methods)}
    paths = {kind: out_dir / name for kind, name in PLOT_FILES.items()}
    _plot_against_partition(stats, colours, partitions, paths["alpha"])
    _plot_against_clients(stats, colours, partitions, paths["clients"])
    _plot_against_upload(stats, colours, paths["upload"])
    return paths


def _facets(stats: pd.DataFrame) -> list[tuple[str, pd.DataFrame]]:
    """Split the statistics by dataset, and by model when the grid has several models."""
    by_model = stats["model"].nunique() > 1
    keys = ["dataset", "model"] if by_model else ["dataset"]
    return [(" / ".join(map(str, key if isinstance(key, tuple) else (key,))), block)
            for key, block in stats.groupby(keys, sort=False)]


def _subplots(count: int, columns: int = 3, panel_width: float = 4.8) -> tuple[plt.Figure, list[plt.Axes]]:
    columns = max(1, min(columns, count))
    rows = -(-count // columns)
    figure, axes = plt.subplots(rows, columns, figsize=(panel_width * columns, 3.6 * rows), squeeze=False)
    flat = list(axes.flat)
    for unused in flat[count:]:
        unused.set_visible(False)
    return figure, flat[:count]


def is_alpha_axis(partitions: Sequence[str]) -> bool:
    """Return whether the partitions are Dirichlet alpha values and IID, an ordered axis."""
    return all(label == "IID" or label.startswith("alpha=") for label in partitions)


def _plot_against_partition(stats: pd.DataFrame, colours: dict[str, str], partitions: Sequence[str], path: Path) -> None:
    """Plot accuracy against the partition at the most common client count.

    Alpha values and IID form an ordered axis and are joined by lines; other partitions
    (quantity or feature skew) are categories, drawn as points only.
    """
    ordered = is_alpha_axis(partitions)
    # Long partition names are wrapped onto lines of 16 characters and get about 1.2 inch each.
    ticks = [textwrap.fill(partition, 16) for partition in partitions]
    long_names = any("\n" in tick for tick in ticks)
    facets = _facets(stats)
    figure, axes = _subplots(max(len(facets), 1), panel_width=max(4.8, 1.2 * len(partitions)) if long_names else 4.8)
    positions = {partition: i for i, partition in enumerate(partitions)}
    for axis, (title, block) in zip(axes, facets, strict=False):
        clients = int(block["num_clients"].mode().iloc[0])
        block = block[block["num_clients"] == clients]
        for index, (method, colour) in enumerate(colours.items()):
            rows = block[block["method"] == method].copy()
            if rows.empty:
                continue
            # Points of unordered partitions are spread a little so that methods do not hide each other.
            offset = 0.0 if ordered else 0.08 * (index - (len(colours) - 1) / 2)
            rows["x"] = rows["partition"].map(positions) + offset
            rows = rows.sort_values("x")
            axis.errorbar(rows["x"], rows["accuracy_mean"], yerr=rows["accuracy_std"].fillna(0.0),
                          marker="o", capsize=3, label=method, color=colour,
                          linestyle="-" if ordered else "none")
        if long_names:
            axis.set_xticks(range(len(partitions)), ticks, fontsize="small")
        else:
            axis.set_xticks(range(len(partitions)), partitions, rotation=30, ha="right")
        axis.set_title(f"{title}, {clients} clients")
        axis.set_xlabel("label skew (Dirichlet alpha) or IID" if ordered else "partition")
        axis.set_ylabel("test accuracy")
        axis.grid(alpha=0.3)
    _finish(figure, axes, path, list(colours))


def _plot_against_clients(stats: pd.DataFrame, colours: dict[str, str], partitions: Sequence[str], path: Path) -> None:
    """Plot accuracy against the client count, one panel per dataset and partition."""
    panels = [(f"{title}, {partition}", block[block["partition"] == partition])
              for title, block in _facets(stats) for partition in partitions
              if (block["partition"] == partition).any()]
    figure, axes = _subplots(max(len(panels), 1))
    for axis, (title, block) in zip(axes, panels, strict=False):
        for method, colour in colours.items():
            rows = block[block["method"] == method].sort_values("num_clients")
            if rows.empty:
                continue
            axis.errorbar(rows["num_clients"], rows["accuracy_mean"], yerr=rows["accuracy_std"].fillna(0.0),
                          marker="o", capsize=3, label=method, color=colour)
        counts = sorted(block["num_clients"].unique())
        axis.set_xticks(counts)
        axis.set_title(title if len(counts) > 1 else f"{title} (one client count)")
        axis.set_xlabel("clients")
        axis.set_ylabel("test accuracy")
        axis.grid(alpha=0.3)
    _finish(figure, axes, path, list(colours))


def _plot_against_upload(stats: pd.DataFrame, colours: dict[str, str], path: Path) -> None:
    """Plot accuracy against upload bytes per client (log scale), one point per cell mean over seeds."""
    facets = _facets(stats)
    figure, axes = _subplots(max(len(facets), 1))
    for axis, (title, block) in zip(axes, facets, strict=False):
        for method, colour in colours.items():
            rows = block[block["method"] == method]
            if rows.empty:
                continue
            axis.scatter(rows["upload_bytes_per_client"], rows["accuracy_mean"], label=method, alpha=0.8, color=colour)
        model_bytes = block["model_bytes"].dropna()
        if not model_bytes.empty:
            axis.axvline(model_bytes.mean(), color="grey", linestyle=":", linewidth=1, label="one model upload")
        axis.set_xscale("log")
        axis.set_title(title)
        axis.set_xlabel("upload per client (bytes, log scale)")
        axis.set_ylabel("test accuracy")
        axis.grid(alpha=0.3, which="both")
    _finish(figure, axes, path, list(colours))


def _finish(figure: plt.Figure, axes: Sequence[plt.Axes], path: Path, order: Sequence[str]) -> None:
    """Add one legend for all panels, methods in `order` first, and save the figure."""
    handles = {}
    for axis in axes:
        for handle, label in zip(*axis.get_legend_handles_labels(), strict=True):
            handles.setdefault(label, handle)
    labels = [label for label in order if label in handles] + [label for label in handles if label not in order]
    bottom = 0.0
    if handles:
        # At most 4 columns, and about 1.6 inch per column so that a one-panel figure fits its legend.
        columns = min(len(labels), 4, max(1, int(figure.get_figwidth() // 1.6)))
        figure.legend([handles[label] for label in labels], labels, loc="lower center",
                      ncol=columns, frameon=False)
        # Room for the legend: about 0.3 inch per legend row plus a margin.
        legend_rows = -(-len(labels) // columns)
        bottom = min(0.5, (0.3 * legend_rows + 0.15) / figure.get_figheight())
    figure.tight_layout(rect=(0, bottom, 1, 1))
    figure.savefig(path, dpi=110, bbox_inches="tight")
    plt.close(figure)
