"""The paper's published Table 3, shown beside a sweep's as a labelled reference (never mixed with its numbers)."""

from __future__ import annotations

from rmlab.significance import COLUMNS

# The paper's own Table 3 (Skywork-Reward, arXiv 2410.18451, Table 3: "Ablation studies of loss functions that
# optimize the margin between chosen and rejected responses on Gemma-2-27B"), RewardBench accuracy in %, one run
# per loss as published. Transcribed from the paper's text as reproduced offline (deep-diver/ai-paper-reviewer,
# content/posts/2410.18451); cross-checked: the Bradley-Terry row equals Table 2's Skywork-Reward-Gemma-2-27B row
# and every Avg is the mean of its four sections to within 0.1 (rounding of the printed sections).
PAPER_TITLE = "Paper's numbers (reference, not this sweep): Skywork-Reward, arXiv 2410.18451, Table 3 (Gemma-2-27B, " \
    "RewardBench)"
PAPER_TABLE3: dict[str, tuple[str, tuple[float, ...]]] = {  # loss -> (paper's name, values in COLUMNS order)
    "bt": ("Bradley-Terry", (93.8, 95.8, 91.4, 92.0, 96.1)),
    "bt_temperature": ("Temperature-adjusted Bradley-Terry", (93.7, 94.3, 91.7, 92.7, 96.3)),
    "focal": ("Focal", (93.6, 94.3, 91.8, 92.0, 96.5)),
    "focal_penalty": ("Focal with penalty", (93.4, 93.9, 91.5, 92.0, 96.5)),
    "hinge": ("Hinge", (93.3, 94.1, 90.2, 92.6, 96.3)),
    "margin_mse": ("MarginMSE", (92.3, 90.2, 89.0, 93.3, 96.7)),
    "cross_entropy": ("Cross-entropy", (87.6, 74.9, 87.3, 94.0, 94.5)),
    "tempered_log": ("Tempered log", (92.9, 96.4, 87.4, 91.8, 96.2)),
}
PAPER_HEADER = ("loss", *COLUMNS, "paper's name")


def paper_rows() -> list[list[str]]:
    """The reference block's cells: loss, the five values with one decimal, the paper's name for the loss."""
    return [[loss, *(f"{value:.1f}" for value in values), name] for loss, (name, values) in PAPER_TABLE3.items()]
