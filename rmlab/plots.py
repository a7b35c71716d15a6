"""``table3.png`` of a sweep report (:mod:`rmlab.report`): the Table 3 bars and the paired differences."""

from __future__ import annotations

from pathlib import Path
from typing import Any, Mapping, Protocol, Sequence

from rmlab.significance import COLUMNS, Comparison


class Report(Protocol):
    """What the plot reads of :class:`rmlab.report.Report` (named here, so this module does not import it)."""

    sweep_dir: Path
    rows: Sequence[Any]  # rmlab.report.Row: label, status, stats(column)
    baseline: str
    bootstrap: tuple[int, int]

    @property
    def compared(self) -> list[tuple[str, Comparison]]: ...


def plot_report(report: Report, path: Path) -> None:
    """Top: grouped bars, x = Avg + sections, one bar per row, error bars = sample std over seeds.
    Bottom: paired differences vs the baseline with their bootstrap intervals."""
    import matplotlib
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    plotted = [row for row in report.rows if any(row.stats(c)[0] is not None for c in COLUMNS)]
    notes = len(report.rows) - len(plotted) + 1 if len(plotted) < len(report.rows) or not plotted else 0
    gap = 1.6 + 0.2 * notes  # inches between the panels: tick labels, the "no results" note, the second title
    fig = Figure(figsize=(13, 11 + gap), dpi=120)
    FigureCanvasAgg(fig)
    span = (11 + gap) * (fig.subplotpars.top - fig.subplotpars.bottom)  # inches for both panels and the gap
    ax, diff_ax = fig.subplots(2, 1, gridspec_kw={"height_ratios": [6, 5], "hspace": 2 * gap / (span - gap)})
    width = 0.84 / max(len(plotted), 1)
    colors = matplotlib.colormaps["tab10" if len(plotted) <= 10 else "tab20"]
    lows: list[float] = []
    for i, row in enumerate(plotted):
        stats = [row.stats(column) for column in COLUMNS]
        means = [100 * m if m is not None else float("nan") for m, _, _ in stats]
        errors = [100 * s if s is not None else 0.0 for _, s, _ in stats]
        lows += [m - e for m, e in zip(means, errors) if m == m]
        ax.bar([x + (i - (len(plotted) - 1) / 2) * width for x in range(len(COLUMNS))], means, width,
               yerr=errors, capsize=2, label=f"{row.label} (n={row.count('ok')})", error_kw={"elinewidth": 1},
               color=colors(i % colors.N))
    ax.set_xticks(range(len(COLUMNS)), COLUMNS, fontsize=12)
    ax.set_xlim(-0.5, len(COLUMNS) - 0.5)
    ax.set_ylim(max(0.0, 10 * ((min(lows, default=5.0) - 5) // 10)), 100)
    ax.set_ylabel("accuracy (%)", fontsize=12)
    ax.set_title(f"Table 3 reproduction: {report.sweep_dir.name}\nbars: mean over seeds, error bars: sample std "
                 "(ddof=1)", fontsize=13)
    ax.grid(axis="y", alpha=0.3)
    if plotted:
        ax.legend(loc="upper left", bbox_to_anchor=(1.01, 1.0), fontsize=10, title="loss")
    empty = [f"{row.label}: {row.status}" for row in report.rows if row not in plotted]
    if empty or not plotted:
        ax.text(0.0, -0.08, "no results (not plotted):\n" + "\n".join(empty or ["no finished jobs"]),
                transform=ax.transAxes, va="top", fontsize=10, color="firebrick")
    plot_differences(diff_ax, report.compared, report.baseline, *report.bootstrap,
                     {row.label: colors(i % colors.N) for i, row in enumerate(plotted)})
    fig.savefig(path, bbox_inches="tight")


def plot_differences(ax: Any, rows: Sequence[tuple[str, Comparison]], baseline: str, samples: int, seed: int,
                     colors: Mapping[str, Any]) -> None:
    """Draw on a matplotlib Axes: each (label, comparison)'s differences per column with their intervals as error
    bars; significant ones filled, thick and starred; rows without numbers listed with the reason."""
    shown = [(label, comparison) for label, comparison in rows if comparison.differences]
    width = 0.84 / max(len(shown), 1)
    for i, (label, comparison) in enumerate(shown):
        color = colors.get(label, "gray")
        ax.plot([], [], "o", color=color, label=f"{label} (seeds {','.join(comparison.seeds)})")  # legend entry
        for x, column in enumerate(COLUMNS):
            if (diff := comparison.differences.get(column)) is None:
                continue
            xpos, y, sig = x + (i - (len(shown) - 1) / 2) * width, 100 * diff.estimate, diff.significant
            ax.errorbar(xpos, y, yerr=[[y - 100 * diff.low], [100 * diff.high - y]], fmt="o", color=color,
                        capsize=3, mfc=color if sig else "white", ms=8 if sig else 6, elinewidth=2.5 if sig else 1)
            if sig:
                ax.annotate("*†" if diff.holm_significant else "*", (xpos, 100 * diff.high), ha="center",
                            va="bottom", fontsize=14, fontweight="bold")
    ax.axhline(0.0, color="black", linewidth=1)
    ax.margins(y=0.12)  # room for the stars
    ax.set_xticks(range(len(COLUMNS)), COLUMNS, fontsize=12)
    ax.set_xlim(-0.5, len(COLUMNS) - 0.5)
    ax.set_ylabel(f"difference vs {baseline} (pp)", fontsize=12)
    ax.set_title(f"Paired difference vs {baseline}: mean over shared seeds, 95% bootstrap interval over pairs and "
                 f"seeds ({samples} replicates, seed {seed})\nfilled, thick and * = significant (interval excludes 0); "
                 "† = also after Holm's correction",
                 fontsize=12)
    ax.grid(axis="y", alpha=0.3)
    if shown:
        ax.legend(loc="upper left", bbox_to_anchor=(1.01, 1.0), fontsize=10, title="loss")
    other = [f"{label}: {c.reason}" for label, c in rows if not c.differences and c.reason != "baseline"]
    if other or not shown:
        ax.text(0.0, -0.08, "not compared:\n" + "\n".join(other or ["nothing to compare"]), transform=ax.transAxes,
                va="top", fontsize=10, color="firebrick")
