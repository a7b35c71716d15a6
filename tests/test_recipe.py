"""The data tools (rmlab.data.recipe): decontamination, selection, RM filtering, mixtures, statistics, entry point."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from rmlab.config import ConfigError
from rmlab.data.formats import load_pairs, to_pair
from rmlab.data.recipe.config import InputConfig, SourceConfig
from rmlab.data.recipe.decontaminate import NgramIndex, decontaminate, prompt_turns, words
from rmlab.data.recipe.io import Record
from rmlab.data.recipe.mixture import build_mixture, load_mixture, weighted_quotas
from rmlab.data.recipe.select import kept_count, select
from rmlab.data.recipe.stats import table1, token_counter

EVAL = "alpha beta gamma delta epsilon zeta eta theta iota kappa lambda mu nu xi omicron pi rho"
FILLER = "one two three four five six seven eight nine ten"


def pair_row(prompt: str | list[str], good: str = "a helpful answer", bad: str = "no", **extra) -> dict:
    """A messages-layout row; a list prompt becomes user turns separated by short assistant turns."""
    turns = [prompt] if isinstance(prompt, str) else prompt
    messages = []
    for index, text in enumerate(turns):
        messages += ([{"role": "assistant", "content": "ok"}] if index else []) + [{"role": "user", "content": text}]
    return {"chosen": messages + [{"role": "assistant", "content": good}],
            "rejected": messages + [{"role": "assistant", "content": bad}], **extra}


def records(rows: list[dict], source_key: str = "source", subset_key: str = "subset") -> list[Record]:
    return [Record(row, to_pair(row, "messages", subset_key), str(row.get(source_key, "data")), f"rows[{i}]")
            for i, row in enumerate(rows)]


def write_jsonl(path: Path, rows: list[dict]) -> Path:
    path.write_text("".join(json.dumps(row) + "\n" for row in rows), encoding="utf-8")
    return path


def run_tool(tool: str, run_dir: Path, *overrides: str, cwd: Path) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "rmlab.data", tool, *overrides, f"hydra.run.dir={run_dir}"],
                          cwd=cwd, capture_output=True, text=True, timeout=300, stdin=subprocess.DEVNULL)


def read_jsonl(path: Path) -> list[dict]:
    return [json.loads(line) for line in path.read_text(encoding="utf-8").splitlines()]


# --------------------------------------------------------------------------- decontamination
E = EVAL.split()
TRAIN_PROMPTS = {  # name -> (prompt, contaminated?, longest shared run)
    "six": (f"{FILLER} {' '.join(E[2:8])} {FILLER}", False, 0),  # 6 shared words inside other text
    "seven": (f"{FILLER} {' '.join(E[2:9])} {FILLER}", True, 7),  # 7 shared words
    "exactly_six": (" ".join(E[:6]), False, 0),  # a 6-word prompt equal to the eval's first 6 words
    "exactly_seven": (" ".join(E[:7]), True, 7),  # a 7-word prompt inside the eval prompt
    "split_turns": ([" ".join(E[:6]), " ".join(E[6:12])], False, 0),  # 6 + 6 words in two turns: no spanning
    "normalized": ("ALPHA, Beta; gamma-delta (epsilon) zeta... ETA!", True, 7),  # case and punctuation ignored
    "long": (f"{FILLER} {EVAL}", True, 17),  # 17 shared words: the n-gram is capped at 13
    "clean": (FILLER, False, 0),
}


def test_decontamination_boundaries_and_longest_match():
    index = NgramIndex([[words(EVAL)], [words("short eval prompt")]], 7)
    rows = [pair_row(prompt, name=name) for name, (prompt, _, _) in TRAIN_PROMPTS.items()]
    results = list(decontaminate(records(rows), index, ["user"], 13))
    clean = [record for record, match in results if match is None]
    removed = [(record, match) for record, match in results if match is not None]
    assert sorted(r.row["name"] for r, _ in removed) == sorted(n for n, (_, hit, _) in TRAIN_PROMPTS.items() if hit)
    assert sorted(r.row["name"] for r in clean) == sorted(n for n, (_, hit, _) in TRAIN_PROMPTS.items() if not hit)
    for record, match in removed:
        assert match.shared_words == TRAIN_PROMPTS[record.row["name"]][2], record.row["name"]
        assert match.eval_ids == {0}
        assert len(match.ngram.split()) == min(match.shared_words, 13)
        assert match.ngram in " ".join(words(EVAL))
    # an eval prompt shorter than n_min words can never match, even verbatim
    assert not index.hits(prompt_turns(to_pair(pair_row("short eval prompt"), "messages"), ["user"]))


def test_decontamination_roles_choose_the_turns_compared():
    row = {"chosen": [{"role": "user", "content": "hi"}, {"role": "assistant", "content": EVAL},
                      {"role": "user", "content": "and?"}, {"role": "assistant", "content": "x"}],
           "rejected": [{"role": "user", "content": "hi"}, {"role": "assistant", "content": EVAL},
                        {"role": "user", "content": "and?"}, {"role": "assistant", "content": "y"}]}
    index = NgramIndex([[words(EVAL)]], 7)
    assert [match for _, match in decontaminate(records([row]), index, ["user"], 13)] == [None]
    assert [match.shared_words for _, match in decontaminate(records([row]), index, ["user", "assistant"], 13)] == [17]


@pytest.mark.slow
def test_decontaminate_tool_end_to_end(tmp_path):
    train_rows = [pair_row(prompt, source="a" if i % 2 else "b", name=name)
                  for i, (name, (prompt, _, _)) in enumerate(TRAIN_PROMPTS.items())]
    train_rows.append(pair_row(TRAIN_PROMPTS["seven"][0], source="a", name="seven_again"))  # same prompt twice
    train = write_jsonl(tmp_path / "train.jsonl", train_rows)
    (tmp_path / "evals").mkdir()
    write_jsonl(tmp_path / "evals" / "one.jsonl", [{"prompt": EVAL, "chosen": "x", "rejected": "y", "subset": "s1"},
                                                   {"prompt": EVAL, "chosen": "x", "rejected": "x", "subset": "s1"}])
    write_jsonl(tmp_path / "evals" / "two.jsonl", [{"prompt": "nothing in common here at all, really none", "chosen": "x",
                                                    "rejected": "y", "subset": "s2"}])
    run_dir = tmp_path / "run"
    result = run_tool("decontaminate", run_dir, f"tool.input.path={train}", "tool.input.source_key=source",
                      "tool.eval_sets=[{path:evals/*.jsonl}]", cwd=tmp_path)
    assert result.returncode == 0, result.stderr[-3000:]
    report = json.loads((run_dir / "report.json").read_text())
    hits = [n for n, (_, hit, _) in TRAIN_PROMPTS.items() if hit]
    assert report["totals"] == {"eval_prompts": 2, "eval_prompts_matched": 1, "train_pairs": len(train_rows),
                                "train_prompts": len(train_rows) - 1, "contaminated_pairs": len(hits) + 1,
                                "contaminated_prompts": len(hits)}
    by_subset = {row["eval_subset"]: row for row in report["evaluation"]}
    assert by_subset["evals/one/s1"]["eval_prompts_matched"] == 1 and by_subset["evals/two/s2"]["eval_prompts_matched"] == 0
    assert sum(row["contaminated_pairs"] for row in report["training"]) == len(hits) + 1
    kept = read_jsonl(run_dir / "pairs.jsonl")
    assert kept == [row for row in train_rows if row["name"] not in hits + ["seven_again"]]  # rows unchanged
    removed = read_jsonl(run_dir / "removed.jsonl")
    assert {r["row"]["name"]: r["n"] for r in removed}["long"] == 13 and all(r["ngram"] for r in removed)
    assert "| **Total** | 2 | 1 |" in (run_dir / "report.md").read_text()


# --------------------------------------------------------------------------- selection by score
def test_selection_per_category_fractions_and_source_offsets():
    rows = [pair_row(f"math question {i}", subset="math", source="pro", score=i / 10) for i in range(10)]
    rows += [pair_row(f"chat question {i}", subset="chat", source="air" if i % 2 else "pro", score=1.0 + i / 100)
             for i in range(20)]
    recs = records(rows)
    scores = [row["score"] for row in rows]
    kept, summary = select(recs, scores, {"math": 0.3}, 0.1, {"air": -0.1})
    assert [recs[i].row["score"] for i in kept if recs[i].pair.subset == "math"] == [0.7, 0.8, 0.9]
    chat = [i - 10 for i in kept if recs[i].pair.subset == "chat"]
    assert chat == [16, 18]  # the top two of 20 would be 19 and 18, but 19 (air) drops by 0.1 below 16 and 18
    assert {r["category"]: (r["pairs"], r["kept"]) for r in summary} == {"math": (10, 3), "chat": (20, 2)}
    kept_without_offsets, _ = select(recs, scores, {"math": 0.3}, 0.1, {})
    assert [i - 10 for i in kept_without_offsets if i >= 10] == [18, 19]
    assert [kept_count(f, n) for f, n in [(0.29, 100), (0.3, 10), (0.1, 9), (1.0, 7), (0.0, 5)]] == [29, 3, 0, 7, 0]


@pytest.mark.slow
def test_select_tool_end_to_end(tmp_path):
    rows = [pair_row(f"q{i}", subset="code" if i < 10 else "other", source="s", armo=float(i)) for i in range(30)]
    rows.append(pair_row("unscored", subset="code", source="s"))
    data = write_jsonl(tmp_path / "scored.jsonl", rows)
    result = run_tool("select", tmp_path / "run", f"tool.input.path={data}", "tool.score_key=armo",
                      "+tool.fractions.code=0.3", "tool.default_fraction=0.1", "++tool.offsets.typo=1", cwd=tmp_path)
    assert result.returncode == 0, result.stderr[-3000:]
    kept = read_jsonl(tmp_path / "run" / "pairs.jsonl")
    assert [row["armo"] for row in kept] == [7.0, 8.0, 9.0, 28.0, 29.0]
    report = json.loads((tmp_path / "run" / "report.json").read_text())
    assert report["rows"]["skipped_by_reason"] == {"missing_score": 1, "not_selected": 25}
    assert report["unused"] == {"fractions": [], "offsets": ["typo"]}


MAGPIE_KEPT = {"Math": 3, "Coding & Debugging": 3, "Information seeking": 2}  # 30% of 10, 30% of 10, 10% of 20
MAGPIE_OFFSETS = {"magpie_air": -0.1, "magpie_pro": -0.05}


def magpie_top(rows: list[dict], offsets: dict[str, float]) -> dict[str, list[int]]:
    """Per category, the indices of its top rows by score plus the source's offset (the preset's rule)."""
    return {category: sorted(sorted((i for i, row in enumerate(rows) if row["task_category"] == category),
                                    key=lambda i: rows[i]["score"] + offsets.get(rows[i]["source"], 0.0))[-kept:])
            for category, kept in MAGPIE_KEPT.items()}


@pytest.mark.slow
def test_select_magpie_preset_end_to_end(tmp_path):
    """``tool=select_magpie`` keeps what its preset documents: 30% of math and code, 10% of the rest, offsets."""
    categories = ["Math", "Coding & Debugging", "Information seeking", "Information seeking"]
    sources = ["magpie_air", "magpie_pro", "magpie_ultra"]
    # scores on a 0.011 grid: no two adjusted scores tie (offset gaps are 0.05 and 0.1)
    rows = [pair_row(f"q{i}", task_category=categories[i % 4], source=sources[i % 3],
                     score=round(0.011 * (9 * i % 40), 3)) for i in range(40)]
    expected = magpie_top(rows, MAGPIE_OFFSETS)
    unadjusted = magpie_top(rows, {})
    assert all(unadjusted[category] != expected[category] for category in MAGPIE_KEPT)  # offsets matter everywhere
    assert magpie_top(rows, {"magpie_air": -0.1, "magpie_pro": -0.1}) != expected  # and Pro's differs from Air's
    data = write_jsonl(tmp_path / "magpie.jsonl", rows)
    result = run_tool("tool=select_magpie", tmp_path / "run", f"tool.input.path={data}", cwd=tmp_path)
    assert result.returncode == 0, result.stderr[-3000:]
    kept = read_jsonl(tmp_path / "run" / "pairs.jsonl")
    assert kept == [rows[i] for i in sorted(sum(expected.values(), []))]  # rows unchanged, in file order
    report = json.loads((tmp_path / "run" / "report.json").read_text())
    assert {r["category"]: (r["pairs"], r["fraction"], r["kept"]) for r in report["categories"]} == {
        "Math": (10, 0.3, 3), "Coding & Debugging": (10, 0.3, 3), "Information seeking": (20, 0.1, 2)}
    assert report["unused"] == {"fractions": [], "offsets": []}


# --------------------------------------------------------------------------- mixtures
def mixture_files(tmp_path: Path) -> tuple[Path, Path]:
    """40 rows in the messages layout (1-3 user turns, categories x/y), 30 prompt/chosen/rejected rows (z)."""
    first = [pair_row([f"a{i}"] * (1 + i % 3), good="long enough answer" if i % 4 else "tiny", bad="a worse answer",
                      subset="x" if i % 5 else "y") for i in range(40)]
    second = [{"prompt": f"b{i}", "chosen": "a good answer", "rejected": "bad", "subset": "z"} for i in range(30)]
    return write_jsonl(tmp_path / "first.jsonl", first), write_jsonl(tmp_path / "second.jsonl", second)


def test_mixture_filters_caps_and_determinism(tmp_path):
    first, second = mixture_files(tmp_path)
    sources = [{"path": str(first), "name": "first", "cap": 12, "filters": {"max_turns": 2, "min_response_chars": 5}},
               {"path": str(second), "name": "second", "cap": 100, "filters": {"subsets": ["z"]}}]
    pairs, stats, composition = load_mixture(sources, seed=1)
    # first: 40 rows; 13 have 3 user turns (i % 3 == 2); of the other 27, 7 have the 4-char answer (i % 4 == 0)
    assert composition["first"] | {"skipped": None} == {
        "path": str(first), "rows_read": 40, "pairs": 40, "after_filters": 20, "after_cap": 12, "cap": 12,
        "weight": None, "selected": 12, "fraction": 12 / 42, "skipped": None}
    assert composition["first"]["skipped"] == {"filter_max_turns": 13, "filter_min_response_chars": 7, "over_cap": 8}
    assert composition["second"]["selected"] == 30
    assert len(pairs) == 42 and stats.rows_read == 70 and stats.rows_used == 42
    assert stats.rows_read == stats.rows_used + sum(stats.skipped.values())
    again, _, _ = load_mixture(sources, seed=1)
    other, _, _ = load_mixture(sources, seed=2)
    assert again == pairs and other[:12] != pairs[:12] and other[12:] == pairs[12:]
    assert all(p.chosen[-1]["content"] != "tiny" and sum(t["role"] == "user" for t in p.chosen) <= 2 for p in pairs[:12])


def test_mixture_weights_and_errors(tmp_path):
    first, second = mixture_files(tmp_path)
    sources = [SourceConfig(path=str(first), name="first", weight=3.0), SourceConfig(path=str(second), name="second", weight=1.0)]
    _, _, composition = load_mixture(sources, seed=0)
    assert (composition["first"]["selected"], composition["second"]["selected"]) == (40, 13)  # N = floor(40 / 0.75)
    _, stats, composition = load_mixture(sources, seed=0, total=20)
    assert (composition["first"]["selected"], composition["second"]["selected"]) == (15, 5)
    assert stats.skipped["mixture_weight"] == 25 + 25
    assert weighted_quotas([10, 10, 10], [1, 1, 1], 10) == [4, 3, 3]
    with pytest.raises(ConfigError, match=r"sources\[1\]\.weight"):
        load_mixture([{"path": str(first), "weight": 1.0}, {"path": str(second)}], seed=0)
    with pytest.raises(ConfigError, match=r"sources\[0\]: Key 'capp'"):
        load_mixture([{"path": str(first), "capp": 3}], seed=0)
    with pytest.raises(ConfigError, match=r"sources\[0\]\.cap"):
        build_mixture([{"path": str(first), "cap": 0}], seed=0)


# --------------------------------------------------------------------------- statistics
def test_table1_counts_turns_and_tokens():
    rows = [pair_row(["one two three", "four five"], good="a b c d", bad="e f", source="s1", subset="math"),
            pair_row("one", good="a b", bad="c d e f g h", source="s1", subset="code"),
            pair_row("x y", good="z", bad="w", source="s2")]
    table = table1(records(rows), token_counter(None)[1])
    # s1: turns (2 + 1) / 2; prompt words (3 + 1 ["ok"] + 2 + 1) / 2; response words ((4 + 2) / 2 + (2 + 6) / 2) / 2
    assert table[0] == ["s1", 2, 1.5, 3.5, 3.5, "math 50%, code 50%"]
    assert table[1] == ["s2", 1, 1.0, 2.0, 1.0, ""]
    assert table[2][:5] == ["Total", 3, 1.33, 3.0, 2.7]


@pytest.mark.slow
def test_token_counts_ignore_the_padding_and_truncation_a_tokenizer_json_carries(minilm_path):
    """MiniLM's tokenizer.json pads and truncates to 128: every text counted 128 tokens."""
    from transformers import AutoTokenizer

    texts = ["a short one", "a long one " * 100]
    expected = [len(ids) for ids in AutoTokenizer.from_pretrained(minilm_path)(texts, add_special_tokens=False)[
        "input_ids"]]
    assert expected[0] < 128 < expected[1]
    for tokenizer in (minilm_path, str(Path(minilm_path) / "tokenizer.json")):
        assert token_counter(tokenizer)[1](texts) == expected


def test_stats_tool_end_to_end_with_a_tokenizer(tmp_path, tiny_llama_dir, tiny_tokenizer):
    first, second = mixture_files(tmp_path)
    result = run_tool("stats", tmp_path / "run", f"tool.tokenizer={tiny_llama_dir}", "tool.format=parquet",
                      f"tool.sources=[{{path:{first},name:first,cap:10,filters:{{max_turns:1}}}},{{path:{second},name:second}}]",
                      cwd=tmp_path)
    assert result.returncode == 0, result.stderr[-3000:]
    run_dir = tmp_path / "run"
    report = json.loads((run_dir / "report.json").read_text())
    assert report["composition_by_label"] == {"before": {"first": 40, "second": 30}, "after": {"first": 10, "second": 30}}
    assert (run_dir / "composition.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    pairs, _ = load_pairs(str(run_dir / "pairs.parquet"))
    assert len(pairs) == 40
    second_rows = [row for row in report["table1"] if row["Source"] == "second"][0]
    expected = sum(len(tiny_tokenizer(f"b{i}", add_special_tokens=False)["input_ids"]) for i in range(30)) / 30
    assert second_rows["Avg. prompt tokens (" + str(tiny_llama_dir) + ")"] == pytest.approx(expected, abs=0.05)
    assert (run_dir / "table1.csv").read_text().splitlines()[0].startswith("Source,Pairs,Avg. turns")


# --------------------------------------------------------------------------- filtering by a reward model
@pytest.mark.slow
def test_rm_filter_keeps_exactly_the_pairs_the_model_ranks_correctly(tmp_path, tiny_llama_dir):
    import torch
    from transformers import AutoModelForSequenceClassification, AutoTokenizer

    topics = ["tea", "maps", "rust", "bread", "chess", "birds", "clouds", "glue", "jazz", "moss", "kites", "salt"]
    rows = [pair_row(f"tell me about {t}", good=f"{t} is nice {i}", bad=f"no {t}" * (1 + i % 3), subset=f"s{i % 2}")
            for i, t in enumerate(topics)]
    rows.append(pair_row("too long", good="word " * 200, bad="no"))  # does not fit max_length=64
    data = write_jsonl(tmp_path / "pairs.jsonl", rows)
    tokenizer = AutoTokenizer.from_pretrained(tiny_llama_dir)
    model = AutoModelForSequenceClassification.from_pretrained(tiny_llama_dir).eval()

    def reward(messages: list[dict]) -> float:  # rmlab's rule: the template closes with </s>\n: used as is
        text = tokenizer.apply_chat_template(messages, tokenize=False)
        ids = tokenizer(text, add_special_tokens=False)["input_ids"]
        assert len(ids) <= 64
        with torch.no_grad():
            return model(input_ids=torch.tensor([ids])).logits[0, 0].item()

    rewards = [(reward(row["chosen"]), reward(row["rejected"])) for row in rows[:-1]]
    gaps = sorted(good - bad for good, bad in rewards)
    positive = [gap for gap in gaps if gap > 0]
    assert positive and len(positive) < len(gaps), "the tiny model should rank some pairs right and some wrong"
    margin = (positive[0] + positive[1]) / 2 if len(positive) > 1 else positive[0] / 2
    result = run_tool("rm_filter", tmp_path / "run", f"tool.input.path={data}", f"tool.model={tiny_llama_dir}",
                      "tool.max_length=64", "tool.batch_size=4", f"tool.margin={margin}", "tool.device=cpu", cwd=tmp_path)
    assert result.returncode == 0, result.stderr[-3000:]
    kept = read_jsonl(tmp_path / "run" / "pairs.jsonl")
    expected = [row for row, (good, bad) in zip(rows, rewards) if good - bad > margin]
    assert [row["chosen"] for row in kept] == [row["chosen"] for row in expected] and kept
    for row in kept:
        good, bad = rewards[rows.index({k: v for k, v in row.items() if not k.startswith("rm_")})]
        assert row["rm_chosen_reward"] == pytest.approx(good, abs=1e-4)
        assert row["rm_rejected_reward"] == pytest.approx(bad, abs=1e-4)
    report = json.loads((tmp_path / "run" / "report.json").read_text())
    assert report["rows"]["skipped_by_reason"] == {"response_too_long": 1, "rm_misranked": len(rows) - 1 - len(kept)}


# --------------------------------------------------------------------------- entry point and config errors
@pytest.mark.slow
@pytest.mark.parametrize("tool", sorted(p.stem for p in (Path(__file__).parents[1] / "conf" / "tool").glob("*.yaml")))
def test_every_tool_config_composes_and_validates(tool):
    from hydra import compose, initialize_config_module
    from omegaconf import OmegaConf

    from rmlab.data.recipe.config import TOOL_SCHEMAS, register_tool_configs

    register_tool_configs()
    required = {"stats": ["tool.sources=[{path:a.jsonl}]"], "rm_filter": ["tool.input.path=a.jsonl", "tool.model=m"]}
    with initialize_config_module(config_module="rmlab.conf", version_base="1.3"):
        cfg = compose(config_name="data_tools", overrides=[f"tool={tool}", "tool.output_dir=out",
                                                           *required.get(tool, ["tool.input.path=a.jsonl"])])
    assert type(OmegaConf.to_object(cfg.tool)) in TOOL_SCHEMAS.values()


@pytest.mark.slow
def test_entry_point_usage_and_errors_name_the_key(tmp_path):
    usage = subprocess.run([sys.executable, "-m", "rmlab.data"], cwd=tmp_path, capture_output=True, text=True, timeout=60)
    assert usage.returncode == 2 and "decontaminate" in usage.stderr and "rm_filter" in usage.stderr
    shown = run_tool("select_magpie", tmp_path / "r0", "--cfg", "job", cwd=tmp_path)  # the usage's help on one tool
    assert shown.returncode == 0 and not (tmp_path / "r0").exists(), shown.stderr[-3000:]
    tool = yaml.safe_load(shown.stdout)["tool"]
    assert (tool["input"]["path"], tool["input"]["subset_key"], tool["input"]["source_key"]) == (
        "???", "task_category", "source")
    assert tool["default_fraction"] == 0.1 and tool["fractions"] == {"Math": 0.3, "Coding & Debugging": 0.3}
    assert tool["offsets"] == MAGPIE_OFFSETS
    bad = run_tool("select", tmp_path / "r1", "tool.input.path=x.jsonl", "tool.default_fraction=1.5", cwd=tmp_path)
    assert bad.returncode == 2 and "tool.default_fraction=1.5 is invalid" in bad.stderr
    missing = run_tool("select", tmp_path / "r2", "tool.input.path=nope.jsonl", cwd=tmp_path)
    assert missing.returncode == 1 and "tool.input.path='nope.jsonl': no such file" in missing.stderr
    InputConfig(path="x").check("tool.input")
    with pytest.raises(ConfigError, match=r"tool\.input\.layout"):
        InputConfig(path="x", layout="chat").check("tool.input")
