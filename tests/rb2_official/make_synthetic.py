"""Synthetic RewardBench 2 rows, in the hub dataset's layout, with seeded rewards full of deliberate ties.

A row is one prompt, as in ``allenai/reward-bench-2`` (split ``test``): ``id``, ``prompt``, ``chosen`` (a list),
``rejected`` (a list), ``num_correct``, ``num_incorrect``, ``total_completions`` and ``subset``, plus ``rewards``:
one reward per completion, the chosen ones first, in order, then the rejected ones (the order in which
rewardbench's ``load_bon_dataset_v2`` unrolls a row). Every completion text is unique across the file, so a
reward can be looked up from the (prompt, completion) text alone, as a reward model would compute it.

Layout, from rewardbench 0.1.4 and the dataset card / paper (arXiv 2506.01937, Table 2):
- ``Factuality``, ``Precise IF``, ``Math``, ``Safety``, ``Focus``: 1 chosen + 3 rejected; ids are numbers
  (as strings), counting on across those five subsets.
- ``Ties``: ids ``ref:N`` and ``tied:N``; the same N pairs a tied prompt (several correct answers) with its
  reference prompt (one correct answer: the docstring of ``process_single_model`` in rewardbench's later
  main branch). Most N here have both, some only one of the two (which ``process_single_model`` allows:
  it pairs them by N; accuracy counts every ref and every tied prompt, the margin terms only the pairs).

Rewards mix four kinds of group, so that exact ties are common and sometimes exact in binary:
continuous floats, floats rounded to 1 decimal, multiples of 0.25, and constructed cases (the chosen
tying the best rejected 2-, 3- or 4-way; Ties groups with zero spread among the correct answers, a worst
correct equal to the best incorrect, or a correct-incorrect margin exactly equal to the spread).

Run as a script to write a file: ``python tests/rb2_official/make_synthetic.py OUT.jsonl [SEED]``.
"""

from __future__ import annotations

import json
import random
import sys
from pathlib import Path

BEST_OF_4 = ("Factuality", "Precise IF", "Math", "Safety", "Focus")
SUBSETS = (*BEST_OF_4, "Ties")
# Prompts per best-of-4 subset in the real test split (paper, Table 2); Ties has 102 prompts in all.
REAL_COUNTS = {"Factuality": 475, "Precise IF": 160, "Math": 183, "Safety": 450, "Focus": 495}


def _draw(rng: random.Random, n: int) -> list[float]:
    """n rewards of one randomly chosen kind (continuous, 1 decimal, or multiples of 0.25)."""
    kind = rng.randrange(3)
    if kind == 0:
        return [rng.gauss(0.0, 1.0) for _ in range(n)]
    if kind == 1:
        return [round(rng.gauss(0.0, 1.0), 1) for _ in range(n)]
    return [rng.randint(-4, 4) / 4 for _ in range(n)]


def _best_of_4_rewards(rng: random.Random) -> list[float]:
    rewards = _draw(rng, 4)
    case = rng.randrange(6)
    if case in (1, 2, 3):  # the chosen ties the best rejected, at least (case + 1)-way
        top = max(rewards[1:])
        rejected = [top] * case + rewards[case + 1 :]
        rng.shuffle(rejected)
        rewards = [top, *rejected]
    elif case == 4:  # a rejected completion ties the chosen below the best: the chosen loses
        rewards[0] = rewards[1] = min(rewards)
        rewards[2] = rewards[0] + 1.0
    return rewards


def _ties_rewards(rng: random.Random, num_correct: int, num_incorrect: int) -> list[float]:
    lift = rng.choice((0.0, 2.0, 4.0, 8.0))  # how far the correct answers stand above the incorrect ones
    correct = [r + lift for r in _draw(rng, num_correct)]
    incorrect = _draw(rng, num_incorrect)
    case = rng.randrange(7)
    if case == 1:  # zero spread among the correct answers
        correct = [correct[0]] * num_correct
    elif case == 2:  # the worst correct answer ties the best incorrect one: not accurate
        incorrect[rng.randrange(num_incorrect)] = min(correct)
    elif case == 3:  # margin exactly equal to the spread (binary-exact values)
        correct = [rng.randint(1, 3) / 2 + 1.0] * (num_correct - 1) + [1.0]
        spread = max(correct) - 1.0
        incorrect = [1.0 - spread - rng.randint(0, 4) / 4 for _ in range(num_incorrect)]
        incorrect[0] = 1.0 - spread
    elif case == 4:  # zero spread and a correct-incorrect margin of exactly zero
        correct = [0.5] * num_correct
        incorrect[0] = 0.5
    rng.shuffle(correct)
    rng.shuffle(incorrect)
    return correct + incorrect


def _row(id_: str, subset: str, rewards: list[float], num_correct: int) -> dict:
    prompt = f"[{subset} {id_}] prompt"
    completions = [f"[{subset} {id_}] completion {i}" for i in range(len(rewards))]
    return {
        "id": id_,
        "prompt": prompt,
        "chosen": completions[:num_correct],
        "rejected": completions[num_correct:],
        "num_correct": num_correct,
        "num_incorrect": len(rewards) - num_correct,
        "total_completions": len(rewards),
        "subset": subset,
        "rewards": rewards,
    }


def synthetic_rows(seed: int = 0, scale: float = 1.0) -> list[dict]:
    """Rows for all six subsets: ``scale`` times the real best-of-4 counts, and ``scale`` * 51 Ties ids."""
    rng = random.Random(seed)
    rows = []
    next_id = 0
    for subset in BEST_OF_4:
        for _ in range(max(1, round(scale * REAL_COUNTS[subset]))):
            rows.append(_row(str(next_id), subset, _best_of_4_rewards(rng), 1))
            next_id += 1
    for n in range(max(3, round(scale * 51))):
        kinds = ("ref", "tied") if n % 5 else (("ref",), ("tied",))[n % 2]  # every fifth N lacks a twin
        for kind in kinds:
            num_correct = 1 if kind == "ref" else rng.randint(2, 7)
            num_incorrect = rng.randint(3, 15)
            rewards = _ties_rewards(rng, num_correct, num_incorrect)
            rows.append(_row(f"{kind}:{n}", "Ties", rewards, num_correct))
    return rows


def hand_row(id_: str, subset: str, num_correct: int, rewards: list[float]) -> dict:
    """One row with the given rewards (chosen first), for hand-built cases."""
    return _row(id_, subset, list(rewards), num_correct)


def to_groups(rows: list[dict]) -> list[dict]:
    """Rows as rmlab's ``rb2_scores`` takes them: id, subset, num_correct, rewards (chosen first)."""
    return [{k: row[k] for k in ("id", "subset", "num_correct", "rewards")} for row in rows]


def write_jsonl(rows: list[dict], path: Path) -> Path:
    path = Path(path)
    path.write_text("".join(json.dumps(row) + "\n" for row in rows))
    return path


if __name__ == "__main__":
    out = Path(sys.argv[1])
    write_jsonl(synthetic_rows(seed=int(sys.argv[2]) if len(sys.argv) > 2 else 0), out)
    print(out)
