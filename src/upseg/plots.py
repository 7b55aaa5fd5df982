"""Figures (matplotlib, written as PNG)."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt
import numpy as np
from matplotlib.colors import ListedColormap
from matplotlib.ticker import FormatStrFormatter, LogLocator, NullFormatter

# background black, then red, green, yellow, blue, magenta, cyan, ...
CLASS_COLOURS = ["#000000", "#e6194b", "#3cb44b", "#ffe119", "#4363d8", "#f032e6", "#42d4f4"]


def mask_colormap(num_classes: int) -> ListedColormap:
    colours = (CLASS_COLOURS * (num_classes // len(CLASS_COLOURS) + 1))[:num_classes]
    return ListedColormap(colours)


def qualitative_grid(
    rows: Sequence[dict[str, np.ndarray]],
    columns: Sequence[str],
    class_names: Sequence[str],
    path: Path,
    title: str = "",
) -> Path:
    """One row per slice; columns name keys of each row dict. Keys starting with 'image'
    are drawn in grey, the rest as label maps. Nearest-neighbour display, so a 16 x 16
    input shows its 16 x 16 pixels."""
    cmap = mask_colormap(len(class_names))
    fig, axes = plt.subplots(
        len(rows),
        len(columns),
        figsize=(2.2 * len(columns), 2.2 * len(rows) + 0.6),
        squeeze=False,
    )
    for r, row in enumerate(rows):
        for c, column in enumerate(columns):
            ax = axes[r][c]
            data = row[column]
            if column.startswith("image"):
                low, high = np.percentile(data, [1, 99])
                ax.imshow(data, cmap="gray", vmin=low, vmax=high, interpolation="nearest")
            else:
                ax.imshow(
                    data, cmap=cmap, vmin=0, vmax=len(class_names) - 1, interpolation="nearest"
                )
            ax.set_xticks([])
            ax.set_yticks([])
            if r == 0:
                ax.set_title(column, fontsize=9)
    handles = [plt.Rectangle((0, 0), 1, 1, color=cmap(i)) for i in range(1, len(class_names))]
    fig.legend(
        handles,
        list(class_names[1:]),
        loc="lower center",
        ncol=len(handles),
        fontsize=8,
        frameon=False,
    )
    if title:
        fig.suptitle(title, fontsize=10)
    fig.tight_layout(rect=(0, 0.04, 1, 1))
    return _save(fig, path)


def tradeoff_plot(
    points: Sequence[dict],
    x: str,
    y: str,
    path: Path,
    xlabel: str,
    ylabel: str,
    title: str = "",
    log_x: bool = False,
) -> Path:
    """One line per method through its points (dicts with 'method', x, y and optional
    y + '_std' error bars), labelled at each point with its input size."""
    fig, ax = plt.subplots(figsize=(6, 4.2))
    for method in dict.fromkeys(p["method"] for p in points):
        mine = sorted((p for p in points if p["method"] == method), key=lambda p: p[x])
        xs, ys = [p[x] for p in mine], [p[y] for p in mine]
        errors = [p.get(f"{y}_std", 0.0) or 0.0 for p in mine]
        ax.errorbar(xs, ys, yerr=errors, marker="o", capsize=3, label=method)
        for p in mine:
            ax.annotate(
                str(p["input"]),
                (p[x], p[y]),
                textcoords="offset points",
                xytext=(4, -10),
                fontsize=7,
            )
    if log_x:
        ax.set_xscale("log")
        values = sorted({p[x] for p in points})
        if all(float(v).is_integer() for v in values) and len(values) <= 8:
            ax.set_xticks(values, [f"{v:g}" for v in values])  # e.g. input sizes
        else:
            ax.xaxis.set_major_locator(LogLocator(subs=(1.0, 2.0, 5.0)))
            ax.xaxis.set_major_formatter(FormatStrFormatter("%g"))
        ax.xaxis.set_minor_formatter(NullFormatter())
    ax.set_xlabel(xlabel)
    ax.set_ylabel(ylabel)
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)
    return _finish(fig, ax, path, title)


def curves_plot(rows: Sequence[dict], path: Path, ylabel: str, title: str = "") -> Path:
    """A value after every epoch (row["curve"], epochs counted from 1): one colour per
    row["method"], one line style per row["input"]; row["curves"] (optional), the runs that
    row["curve"] averages, are drawn thin behind it."""
    fig, ax = plt.subplots(figsize=(7, 4.5))
    methods = list(dict.fromkeys(row["method"] for row in rows))
    sizes = sorted({row["input"] for row in rows})
    styles = ["-", "--", ":", "-."]
    for row in rows:
        if not len(row["curve"]):
            continue
        colour = f"C{methods.index(row['method']) % 10}"
        style = styles[sizes.index(row["input"]) % len(styles)]
        for run in row.get("curves", []):  # each run thin, so the spread shows
            ax.plot(range(1, len(run) + 1), run, color=colour, linestyle=style, lw=0.6, alpha=0.35)
        ax.plot(
            range(1, len(row["curve"]) + 1),
            row["curve"],
            color=colour,
            linestyle=style,
            marker=".",
            label=f"{row['method']} @ {row['input']}",
        )
    ax.set_xlabel("epoch")
    ax.set_ylabel(ylabel)
    ax.grid(alpha=0.3)
    ax.legend(fontsize=7, ncol=2)
    return _finish(fig, ax, path, title)


VERDICT_COLOURS = {"ahead": "#2a9d3f", "behind": "#d62728"}  # anything else: grey


def paired_plot(rows: Sequence[dict], path: Path, title: str = "") -> Path:
    """Forest plot of paired comparisons (upseg.metrics.compare_patients rows with method,
    input, against, against_input, group, metric): one panel per metric, one line per
    comparison and group, the mean difference with its 95% interval, coloured by verdict.
    Dice and NSD in points of 100, HD95 in pixels."""

    def label(row: dict) -> str:
        return (
            f"{row['method']} @ {row['input']} vs {row['against']} @ {row['against_input']}"
            f" · {row['group']}"
        )

    metrics = list(dict.fromkeys(row["metric"] for row in rows))
    labels = list(dict.fromkeys(label(row) for row in rows))
    fig, axes = plt.subplots(
        1, len(metrics), figsize=(4 + 3 * len(metrics), 1.2 + 0.32 * len(labels)), sharey=True
    )
    axes = np.atleast_1d(axes)
    for ax, metric in zip(axes, metrics, strict=True):
        scale = 1.0 if metric == "hd95" else 100.0
        for row in (r for r in rows if r["metric"] == metric):
            y = len(labels) - 1 - labels.index(label(row))
            mean, low, high = (scale * row[k] for k in ("mean", "low", "high"))
            if np.isnan(mean):
                continue
            colour = VERDICT_COLOURS.get(row["verdict"], "#7f7f7f")
            ax.errorbar(
                mean, y, xerr=[[mean - low], [high - mean]], fmt="o", color=colour, capsize=3
            )
        ax.axvline(0.0, color="black", lw=0.8)
        better = "lower is better" if metric == "hd95" else "higher is better"
        unit = "pixels" if metric == "hd95" else "points"
        ax.set_xlabel(f"{metric} difference, {unit} ({better})")
        ax.grid(alpha=0.3, axis="x")
    axes[0].set_yticks(range(len(labels)), list(reversed(labels)), fontsize=7)
    if title:
        fig.suptitle(title, fontsize=10)
    fig.tight_layout()
    return _save(fig, path)


def _finish(fig: plt.Figure, ax: plt.Axes, path: Path, title: str) -> Path:
    if title:
        ax.set_title(title, fontsize=10)
    fig.tight_layout()
    return _save(fig, path)


def _save(fig: plt.Figure, path: Path) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


def latency_figure(rows: Sequence[dict], path: Path, title: str = "") -> Path:
    """Paper Fig. 6 for `upseg bench` rows: left, batch-1 latency (ms, log scale) against the
    input side r, one colour per method and runtime, end to end solid and forward dashed;
    right, end-to-end throughput (images/s) at the largest batch measured."""
    fig, (left, right) = plt.subplots(1, 2, figsize=(11, 4.2))
    largest = max(r["batch"] for r in rows)
    series = list(dict.fromkeys((r["method"], r["runtime"]) for r in rows))
    colours = plt.rcParams["axes.prop_cycle"].by_key()["color"]
    for i, (method, runtime) in enumerate(series):
        colour = colours[i % len(colours)]
        mine = [r for r in rows if (r["method"], r["runtime"]) == (method, runtime)]
        for mode, style in (("e2e", "-"), ("forward", "--")):
            points = sorted(
                (r["input"], r["median_ms"]) for r in mine if r["batch"] == 1 and r["mode"] == mode
            )
            if points:
                left.plot(
                    *zip(*points, strict=True),
                    style,
                    marker="o",
                    color=colour,
                    label=f"{method} · {runtime}" if mode == "e2e" else None,
                )
        points = sorted(
            (r["input"], r["images_per_s"])
            for r in mine
            if r["batch"] == largest and r["mode"] == "e2e"
        )
        if points:
            right.plot(
                *zip(*points, strict=True),
                "-",
                marker="o",
                color=colour,
                label=f"{method} · {runtime}",
            )
    sides = sorted({r["input"] for r in rows})
    for ax, ylabel in (
        (left, "batch 1 latency (ms; solid end-to-end, dashed forward)"),
        (right, f"end-to-end throughput at batch {largest} (images/s)"),
    ):
        ax.set_xscale("log", base=2)
        ax.set_yscale("log")
        ax.set_xticks(sides, [f"{s}x{s}" for s in sides])
        ax.minorticks_off()
        ax.set_xlabel("input resolution r")
        ax.set_ylabel(ylabel)
        ax.grid(alpha=0.3)
    left.legend(fontsize=7)
    right.legend(fontsize=7)
    if title:
        fig.suptitle(title, fontsize=10)
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path
