"""The report's PNG plots (matplotlib, imported when a plot is drawn): one style per series across every plot."""

from __future__ import annotations

import math
import textwrap
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from ropext.errors import RopextError
from ropext.lengths import format_length
from ropext.report.labels import SeriesKey, base_method, short_model
from ropext.report.sections import Section
from ropext.report.tables import passkey_depths, scored_task_count, scored_tasks

LINESTYLES = ("-", "--", ":", "-.")
MARKERS = ("o", "s", "^", "D", "v", "P")
OTHER_MODEL_MARKERS = ("*", "X", "h", "p")
"""Markers of the series of models other than the main one, larger, so that they stand out as a group."""


@dataclass(frozen=True)
class Style:
    color: Any
    linestyle: str
    marker: str
    markersize: float = 5


def series_styles(
    order: Sequence[SeriesKey], labels: dict[SeriesKey, str], targets: dict[SeriesKey, int], main: str
) -> dict[SeriesKey, Style]:
    """One colour per method, and one per other model run unscaled (a fine-tuned checkpoint: no method to share);
    a line style per target length when the label names it; a marker per variant of the same colour and target,
    from OTHER_MODEL_MARKERS for models other than the main one. Keyed by series, not by label (labels differ
    between sections), so a series looks the same in every plot."""
    groups = {key: _colour_group(key, labels[key], main) for key in order}
    colours = list(dict.fromkeys(groups.values()))
    palette = _palette(len(colours))
    named_targets = sorted({targets[key] for key in order if "@" in labels[key] and key in targets})
    variants: dict[tuple[str, int, bool], int] = {}
    styles = {}
    for key in order:
        group, other = groups[key], key[0] != main
        target = targets.get(key, 0) if "@" in labels[key] else 0
        variant = variants.get((group, target, other), 0)
        variants[(group, target, other)] = variant + 1
        line = LINESTYLES[named_targets.index(target) % len(LINESTYLES)] if target in named_targets else "-"
        markers = OTHER_MODEL_MARKERS if other else MARKERS
        colour = palette[colours.index(group) % len(palette)]
        styles[key] = Style(colour, line, markers[variant % len(markers)], 8 if other else 5)
    return styles


def _colour_group(key: SeriesKey, label: str, main: str) -> str:
    model, scaling = key
    return f"model {model}" if scaling == "original" and model != main else base_method(label)


def _palette(count: int) -> list[Any]:
    """tab10, then its lighter shades (tab20's odd entries) when more than ten colours are needed."""
    plt = pyplot()
    colours = list(plt.get_cmap("tab10").colors)
    return colours if count <= len(colours) else colours + list(plt.get_cmap("tab20").colors[1::2])


def pyplot():
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        raise RopextError("ropext report needs matplotlib: pip install 'ropext[plot]'") from None
    return plt


def _length_axis(ax: Any, lengths: Sequence[int]) -> None:
    """Log2 x axis with one tick per length, labelled like 8k."""
    from matplotlib.ticker import FixedLocator, NullLocator

    ax.set_xscale("log", base=2)
    ax.xaxis.set_major_locator(FixedLocator(list(lengths)))
    ax.xaxis.set_minor_locator(NullLocator())
    ax.set_xticklabels([format_length(length) for length in lengths])
    if len(lengths) == 1:
        ax.set_xlim(lengths[0] / 1.5, lengths[0] * 1.5)
    else:
        ax.set_xlim(min(lengths) / 1.25, max(lengths) * 1.25)
    ax.set_xlabel("length (tokens)")


def _figure_title(fig: Any, text: str, fontsize: str | float = "medium") -> None:
    """The title over the whole figure, broken into lines where it would be wider than the figure. A title
    naming several models, corpus paths and options is often wider than the plot; drawn as the axes' title,
    centred over axes that a legend pushes to the left, it was cut off at the figure's edge."""
    title = fig.suptitle(text, fontsize=fontsize)
    renderer = fig.canvas.get_renderer()
    room = fig.bbox.width * 0.96
    width = title.get_window_extent(renderer).width
    columns = int(len(text) * room / width) if width > room else 0
    while columns > 10 and title.get_window_extent(renderer).width > room:
        title.set_text(textwrap.fill(text, columns))
        columns -= 4


def _save(fig: Any, path: Path) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=120)
    pyplot().close(fig)


def _legend(ax: Any, count: int) -> None:
    if count > 6:
        ax.legend(loc="upper left", bbox_to_anchor=(1.01, 1.0), fontsize="small", frameon=False)
    else:
        ax.legend(fontsize="small")


def _line_figsize(count: int, height: float) -> tuple[float, float]:
    """Wider when the legend moves outside (``_legend``); taller with many series, whose lines crowd together
    (fine-tuned checkpoints beside a base model's scalings)."""
    return (9 if count > 6 else 7, height if count <= 10 else height + 1.6)


def plot_ppl(section: Section, order: list[str], styles: dict[str, Style], path: Path) -> None:
    """Perplexity against length, one line per method; log-scale y, log2-scale x."""
    plt = pyplot()
    fig, ax = plt.subplots(figsize=_line_figsize(len(order), 4.8), layout="constrained")
    values = []
    for label in order:
        points = sorted((length, r["ppl"]) for length, r in section.series[label].results.items() if "ppl" in r)
        if not points:
            continue
        values += [p for _, p in points]
        _plot_series(ax, points, label, styles[label])
    _log10_axis(ax, values)
    _length_axis(ax, section.lengths)
    ax.set_ylabel("perplexity (log scale)")
    _figure_title(fig, section.plot_title)
    ax.grid(True, which="both", alpha=0.3)
    _legend(ax, len(order))
    _save(fig, path)


def _plot_series(ax: Any, points: Sequence[tuple[int, float]], label: str, style: Style) -> None:
    """One series' values against length, in the series' report-wide style."""
    ax.plot(
        *zip(*points, strict=True),
        label=label,
        color=style.color,
        linestyle=style.linestyle,
        marker=style.marker,
        markersize=style.markersize,
    )


def _log10_axis(ax: Any, values: Sequence[float]) -> None:
    """Log y axis labelled with plain numbers (30, 40, 60, 100, ...): as many labelled ticks as the range allows."""
    from matplotlib.ticker import FuncFormatter, LogLocator

    ax.set_yscale("log")
    if not values:
        return
    decades = math.log10(max(values) / min(values))
    subs = (1, 2, 3, 4, 5, 6, 7, 8, 9) if decades <= 1 else (1, 2, 3, 4, 6) if decades <= 2.5 else (1, 2, 5)
    ax.yaxis.set_major_locator(LogLocator(base=10, subs=subs))
    ax.yaxis.set_minor_locator(LogLocator(base=10, subs=tuple(range(1, 10))))
    ax.yaxis.set_major_formatter(FuncFormatter(lambda value, _: f"{value:g}"))
    ax.yaxis.set_minor_formatter(FuncFormatter(lambda value, _: ""))


def plot_passkey(section: Section, order: list[str], path: Path) -> None:
    """One heatmap per method: depth of the key (rows) × length (columns), each cell annotated with its
    accuracy; every panel has the section's lengths, so columns line up (grey: not measured)."""
    import numpy as np

    plt = pyplot()
    depths, lengths = passkey_depths(section), section.lengths
    columns = min(4, len(order))
    rows = math.ceil(len(order) / columns)
    panel_width, panel_height = 0.62 * len(lengths) + 0.9, 0.3 * len(depths) + 0.75
    fig, axes = plt.subplots(
        rows,
        columns,
        figsize=(panel_width * columns + 1.3, panel_height * rows + 0.5),
        layout="constrained",
        squeeze=False,
        sharey=True,
    )
    cmap = plt.get_cmap("YlGn").with_extremes(bad="#dddddd")
    image = None
    for ax, label in zip(axes.flat, order, strict=False):
        results = section.series[label].results
        grid = np.array(
            [[results.get(length, {}).get("depths", {}).get(d, np.nan) for length in lengths] for d in depths],
            dtype=float,
        )
        image = ax.imshow(np.ma.masked_invalid(grid), cmap=cmap, vmin=0, vmax=1, aspect="auto")
        for row, col in np.ndindex(grid.shape):
            value = grid[row, col]
            text, color = ("–", "grey") if np.isnan(value) else (f"{value:.2f}", "white" if value > 0.6 else "black")
            ax.text(col, row, text, ha="center", va="center", fontsize=8, color=color)
        ax.set_title(label, fontsize=9)
        ax.set_xticks(range(len(lengths)), [format_length(length) for length in lengths])
        ax.tick_params(labelsize=8, length=0)
    for ax in axes[:, 0]:
        ax.set_yticks(range(len(depths)), depths)
        ax.set_ylabel("depth", fontsize=8)
    for column in range(columns):  # the lowest panel of each column names the x axis
        axes[(len(order) - 1 - column) // columns, column].set_xlabel("length", fontsize=8)
    for ax in list(axes.flat)[len(order) :]:
        ax.axis("off")
    if image is not None:
        fig.colorbar(image, ax=axes, fraction=0.04, pad=0.01, label="accuracy")
    _figure_title(fig, f"{section.plot_title}: accuracy by depth of the key and length", fontsize=10)
    _save(fig, path)


def plot_ruler(section: Section, order: list[str], styles: dict[str, Style], path: Path) -> None:
    """RULER's average score against length, one line per method."""
    plt = pyplot()
    fig, ax = plt.subplots(figsize=_line_figsize(len(order), 4.5), layout="constrained")
    for label in order:
        points = ruler_plot_points(section, label)
        if points:
            _plot_series(ax, points, label, styles[label])
    _length_axis(ax, section.lengths)
    ax.set_ylim(-0.03, 1.03)
    ax.set_ylabel(f"average score ({scored_task_count(section)} tasks)")
    _figure_title(fig, section.plot_title)
    ax.grid(True, alpha=0.3)
    _legend(ax, len(order))
    _save(fig, path)


def ruler_plot_points(section: Section, label: str) -> list[tuple[int, float]]:
    """(length, average) of one series. A length with tasks still to run averages fewer tasks than the
    others, so it is not comparable and is left out (the table shows it, marked)."""
    total = scored_task_count(section)
    return sorted(
        (length, r["average"])
        for length, r in section.series[label].results.items()
        if r.get("average") is not None and scored_tasks(r) == total
    )


def plot_factors(
    scalings: dict[str, dict[str, Any]], order: list[str], styles: dict[str, Style], model: str, path: Path
) -> None:
    """λ_i against pair index for every scaling in one plot, the original wavelength 2π·θ^(2i/d) of each
    pair on the top axis, and a line where that wavelength reaches L0 (pairs to its right never complete
    a turn within the trained context)."""
    plt = pyplot()
    first = scalings[order[0]]
    theta, dim, l0 = first["rope_theta"], first["rotary_dim"], first["original_max_position_embeddings"]
    pairs = list(range(dim // 2))
    wavelength = [2 * math.pi * theta ** (2 * i / dim) for i in pairs]
    fig, ax = plt.subplots(figsize=(11 if len(order) > 6 else 9, 5.6), layout="constrained")
    for label in order:
        scaling, style = scalings[label], styles[label]
        ax.plot(
            pairs,
            scaling["factors"],
            label=label,
            color=style.color,
            linestyle=style.linestyle,
            marker=style.marker,
            markersize=3.5,
            linewidth=1.4,
        )
        if scaling.get("short_factors"):
            ax.plot(
                pairs, scaling["short_factors"], label=f"{label} (short)", color=style.color, linestyle=":", linewidth=1
            )
    _log2_axis(ax, [f for label in order for f in scalings[label]["factors"]])
    critical = (dim / 2) * math.log(l0 / (2 * math.pi)) / math.log(theta)  # where the wavelength reaches L0
    if 0 <= critical <= pairs[-1]:
        ax.axvline(critical, color="grey", linestyle="--", linewidth=1)
        ax.text(
            critical,
            0.99,
            f" wavelength = L0 ({format_length(l0)})",
            color="dimgrey",
            fontsize="small",
            va="top",
            transform=ax.get_xaxis_transform(),
        )
    ax.set_xlim(-0.5, pairs[-1] + 0.5)
    ax.set_xlabel("pair index i (0 rotates fastest)")
    ax.set_ylabel("factor λ_i (log scale)")
    ax.grid(True, which="major", alpha=0.3)
    layout = f"θ = {theta:g}, d = {dim}, L0 = {format_length(l0)}"
    _figure_title(fig, f"{short_model(model)}: per-pair factors of every scaling ({layout})")
    _wavelength_axis(ax, theta, dim, wavelength)
    _legend(ax, len(order))
    _save(fig, path)


def _log2_axis(ax: Any, values: Sequence[float]) -> None:
    """Log y axis with ticks at powers of two (1, 2, 4, 8), labelled as plain numbers."""
    from matplotlib.ticker import FixedLocator, NullLocator

    low, high = min(values), max(values)
    ax.set_yscale("log", base=2)
    ticks = [2.0**k for k in range(math.floor(math.log2(low)), math.ceil(math.log2(high)) + 1)]
    ax.yaxis.set_major_locator(FixedLocator(ticks))
    ax.yaxis.set_minor_locator(NullLocator())
    ax.set_yticklabels([f"{t:g}" for t in ticks])
    ax.set_ylim(low / 1.15, high * 1.15)


def _wavelength_axis(ax: Any, theta: float, dim: int, wavelength: list[float]) -> None:
    """A top axis giving the original wavelength 2π·θ^(2i/d) of pair i, at powers of ten."""

    def to_wavelength(i):
        import numpy as np

        return 2 * math.pi * np.power(theta, 2 * np.asarray(i, dtype=float) / dim)

    def to_index(w):
        import numpy as np

        return (dim / 2) * np.log(np.maximum(np.asarray(w, dtype=float), 1e-12) / (2 * math.pi)) / math.log(theta)

    axis = ax.secondary_xaxis("top", functions=(to_wavelength, to_index))
    ticks = [10**k for k in range(1, 12) if wavelength[0] <= 10**k <= wavelength[-1]]
    axis.set_xticks(ticks, [_tokens(t) for t in ticks])
    axis.set_xlabel("original wavelength of pair i (tokens)")


def _tokens(value: float) -> str:
    for size, suffix in ((10**9, "G"), (10**6, "M"), (10**3, "k")):
        if value >= size:
            return f"{value / size:g}{suffix}"
    return f"{value:g}"
