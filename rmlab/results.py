"""The tables a run prints when it ends (``python -m rmlab`` and ``python -m rmlab.evaluate``): each evaluation set's
sections and subsets, RewardBench 2's subsets and final score, and the row counts. rich only (no torch)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from rich.console import Console
from rich.table import Table

from rmlab.rewardbench import SECTIONS
from rmlab.rewardbench2 import FINAL
from rmlab.rewardbench2 import NAME as RB2
from rmlab.rewardbench2 import SUBSETS as RB2_SUBSETS


def rewardbench2_table(block: dict[str, Any]) -> Table:
    """RewardBench 2's block of metrics.json: each subset's score and prompts, then the final score."""
    truncated = f", {block['truncated_completions']} truncated" if block.get("truncated_completions") else ""
    table = Table(title=f"rewardbench2: {sum(block['prompts'].values())} prompts, {block['completions']} "
                        f"completions{truncated}")
    for name, justify in (("subset", "left"), ("score", "right"), ("prompts", "right")):
        table.add_column(name, justify=justify)
    for subset in RB2_SUBSETS:
        if subset in block["prompts"]:
            table.add_row(subset, f"{block[subset]:.3f}", str(block["prompts"][subset]))
    missing = f" (without {', '.join(block['missing_subsets'])})" if block.get("missing_subsets") else ""
    table.add_row(f"[bold]{FINAL}[/bold]{missing}", f"{block[FINAL]:.3f}", "", end_section=True)
    return table


def print_results(metrics: dict[str, Any], output_dir: Path | str) -> None:
    """Print each evaluation set's sections and subsets, RewardBench 2's block, and the row counts."""
    console = Console()
    for name, report in metrics["eval"].items():
        table = Table(title=f"{name}: {report['pairs']} pairs, accuracy {report['accuracy']:.3f}")
        table.add_column("section / subset")
        table.add_column("accuracy", justify="right")
        table.add_column("pairs", justify="right")
        sections = report.get("sections", {})
        for section in SECTIONS:
            if section in sections:
                table.add_row(f"[bold]{section}[/bold]", f"{sections[section]:.3f}", "")
        if "Avg" in report:
            table.add_row("[bold]Avg[/bold]", f"{report['Avg']:.3f}", "", end_section=True)
        for subset, accuracy in sorted(report["subsets"].items()):
            table.add_row(subset, f"{accuracy:.3f}", str(report["subset_counts"][subset]))
        console.print(table)
    if RB2 in metrics:
        console.print(rewardbench2_table(metrics[RB2]))
    data = metrics["data"]
    console.print(f"rows read {data['rows_read']} = used {data['rows_used']} + skipped {data['rows_skipped']} "
                  f"{data['skipped_by_reason'] or ''}")
    console.print(f"outputs: {output_dir}")
