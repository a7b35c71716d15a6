"""RewardBench 2 scores by the official code, PyPI ``rewardbench==0.1.4``, for rewards given in a file.

Runs only in the venv that ``tests/rb2_official/build_venv.sh`` builds (rewardbench pins transformers 4.51).

Usage: ``official_scores.py FILE.jsonl [FILE.jsonl ...]``. Each file holds rows in the hub dataset's layout
(see ``make_synthetic.py``) with a ``rewards`` list per row (chosen first, then rejected). For each file,
one line of JSON is printed: ``{subset: score, ..., "final": mean of the subset scores}``.

All the scoring is rewardbench's own code (``rewardbench/utils.py`` of the 0.1.4 wheel); this file is only
the glue of the official v2 flow, ``scripts/run_v2.py`` of the same wheel, with the reward model replaced by
a lookup of each completion's given reward:

- ``load_bon_dataset_v2(dataset=FILE, custom_dialogue_formatting=True, logger=...)`` reads the JSONL with
  pandas and unrolls every row into one row per completion, ``chosen`` then ``rejected`` (run_v2.py lines
  174-180; ``custom_dialogue_formatting=True`` is the official path for models without a chat template,
  and gives each row ``text`` = [user: prompt, assistant: completion]).
- run_v2.py lines 183-184: ``ids = dataset["id"]``, then the ``id`` column is removed.
- The reward model (run_v2.py lines 280-297) is replaced by ``scores`` = the given reward of each unrolled
  row's (prompt, completion), in the unrolled order.
- run_v2.py lines 303-312: ``add_column`` ``subset``, ``id``, ``scores``; then
  ``reroll_and_score_dataset(out_dataset, total_completions, cols_to_combine=["text", "scores"])``, which
  gives each prompt ``results`` = 1/k when its first completion's score equals the group's maximum (k = how
  many completions share that maximum), else 0; then ``add_column("num_correct", num_correct)``.
- run_v2.py lines 323-344: for each subset in ``np.unique(subsets)``, ``filter`` its rows; "Ties" (matched
  with ``subset.lower() == "ties"``) scores ``process_single_model(subset_dataset)[1]`` (which calls
  ``sample_stats`` per ref/tied prompt); any other subset scores ``sum(results) / len(results)``.
  (Lines 331-336 would copy per-prompt Ties results back into ``out_dataset``; they touch no score, and
  they match ``s == "ties"`` in lower case, so for the dataset's "Ties" they copy nothing.)

The final score is not computed by the package: the dataset card ("The RewardBench 2 leaderboard averages
over these six subsets") and the paper (Section 3: "the final score is an unweighted average across all six
domains") define it. Here it is ``sum(subset scores) / number of subsets``, over the subsets present.
"""

import json
import logging
import os
import sys

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("HF_DATASETS_OFFLINE", "1")

import datasets  # noqa: E402
import numpy as np  # noqa: E402
from rewardbench import load_bon_dataset_v2, process_single_model, reroll_and_score_dataset  # noqa: E402

LOGGER = logging.getLogger("rb2-official")


def reward_lookup(path):
    """(prompt, completion) -> the given reward, from the file's rows."""
    lookup = {}
    with open(path) as f:
        for line in f:
            row = json.loads(line)
            completions, rewards = row["chosen"] + row["rejected"], row["rewards"]
            if len(completions) != len(rewards):
                raise ValueError(f"{path}: row {row['id']}: {len(completions)} completions, {len(rewards)} rewards")
            for completion, reward in zip(completions, rewards):
                key = (row["prompt"], completion)
                if key in lookup:
                    raise ValueError(f"{path}: completion {completion!r} appears twice; make texts unique")
                lookup[key] = reward
    return lookup


def official_scores(path):
    lookup = reward_lookup(path)
    # run_v2.py 174-184
    dataset, subsets, total_completions, num_correct = load_bon_dataset_v2(
        dataset=path, custom_dialogue_formatting=True, logger=LOGGER
    )
    ids = dataset["id"]
    dataset = dataset.remove_columns("id")
    # the reward model, run_v2.py 280-297
    scores = [lookup[(text[0]["content"], text[1]["content"])] for text in dataset["text"]]
    # run_v2.py 303-312
    out_dataset = dataset.add_column("subset", subsets)
    out_dataset = out_dataset.add_column("id", ids)
    out_dataset = out_dataset.add_column("scores", scores)
    out_dataset = reroll_and_score_dataset(out_dataset, total_completions, cols_to_combine=["text", "scores"])
    out_dataset = out_dataset.add_column("num_correct", num_correct)
    # run_v2.py 323-344
    results = {}
    for subset in np.unique(subsets):
        subset_dataset = out_dataset.filter(lambda example: example["subset"] == subset)
        if subset.lower() == "ties":
            _, overall_score = process_single_model(subset_dataset)
            results[str(subset)] = float(overall_score)
        else:
            results[str(subset)] = float(sum(subset_dataset["results"]) / len(subset_dataset["results"]))
    results["final"] = sum(results.values()) / len(results)
    return results


def main(paths):
    datasets.disable_progress_bars()
    logging.basicConfig(level=logging.WARNING)
    for path in paths:
        print(json.dumps(official_scores(path)), flush=True)


if __name__ == "__main__":
    main(sys.argv[1:])
