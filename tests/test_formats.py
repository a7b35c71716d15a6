"""rmlab.data.formats: layouts → PreferencePair, bad rows counted by reason, readers."""

from __future__ import annotations

import json

import pytest

from rmlab.data.formats import BadRow, DataError, PreferencePair, RowStats, load_pairs, read_rows, to_pair


def user(text):
    return {"role": "user", "content": text}


def assistant(text):
    return {"role": "assistant", "content": text}


def system(text):
    return {"role": "system", "content": text}


def check_bookkeeping(stats: RowStats, pairs=None):
    d = stats.as_dict()
    assert d["rows_read"] == d["rows_used"] + d["rows_skipped"]
    assert d["rows_skipped"] == sum(d["skipped_by_reason"].values())
    if pairs is not None:
        assert d["rows_used"] == len(pairs)
    return d


MULTI_TURN = [user("first question"), assistant("first answer"), user("second question"),
              assistant("second answer"), user("third question")]


# --------------------------------------------------------------------------- layouts
def test_messages_layout_multi_turn_kept_whole():
    row = {"chosen": MULTI_TURN + [assistant("good")], "rejected": MULTI_TURN + [assistant("bad")],
           "subset": "chat"}
    pair = to_pair(row)
    assert pair.chosen == MULTI_TURN + [assistant("good")]
    assert pair.rejected == MULTI_TURN + [assistant("bad")]
    assert pair.prompt == MULTI_TURN
    assert sum(t["role"] == "user" for t in pair.chosen) == 3
    assert pair.subset == "chat" and pair.margin is None


def test_messages_layout_with_system_prompt_and_extra_keys_dropped():
    turns = [system("be nice"), user("hi")]
    row = {"chosen": turns + [{"role": "assistant", "content": "hello", "extra": 1}],
           "rejected": turns + [assistant("go away")]}
    pair = to_pair(row, layout="messages")
    assert pair.chosen[-1] == assistant("hello")  # only role/content survive
    assert pair.prompt == turns
    assert pair.subset == "default"


def test_prompt_response_strings():
    pair = to_pair({"prompt": "What is 2+2?", "chosen": "4", "rejected": "5"})
    assert pair == PreferencePair([user("What is 2+2?"), assistant("4")], [user("What is 2+2?"), assistant("5")])


def test_prompt_as_message_list_and_reply_as_message_list():
    row = {"prompt": MULTI_TURN, "chosen": [assistant("yes")], "rejected": "no"}
    pair = to_pair(row)
    assert pair.chosen == MULTI_TURN + [assistant("yes")]
    assert pair.rejected == MULTI_TURN + [assistant("no")]


def test_hh_full_transcripts():
    prefix = "\n\nHuman: How do I bake bread?\n\nAssistant: With flour.\n\nHuman: And then?\n\nAssistant:"
    row = {"chosen": prefix + " Knead it and bake.", "rejected": prefix + " No idea."}
    pair = to_pair(row)
    expected_prompt = [user("How do I bake bread?"), assistant("With flour."), user("And then?")]
    assert pair.chosen == expected_prompt + [assistant("Knead it and bake.")]
    assert pair.rejected == expected_prompt + [assistant("No idea.")]


def test_hh_prompt_transcript_with_final_turn_strings():
    row = {"prompt": "\n\nHuman: hi\n\nAssistant: hello\n\nHuman: tell me a joke\n\nAssistant:",
           "chosen": " Why did the chicken cross the road?", "rejected": "No."}
    pair = to_pair(row)
    prompt = [user("hi"), assistant("hello"), user("tell me a joke")]
    assert pair.chosen == prompt + [assistant("Why did the chicken cross the road?")]
    assert pair.rejected == prompt + [assistant("No.")]


def test_hh_content_keeps_inner_newlines():
    row = {"prompt": "\n\nHuman: list two things\n\nAssistant:", "chosen": "1. a\n\n2. b", "rejected": "nothing"}
    assert to_pair(row).chosen[-1]["content"] == "1. a\n\n2. b"


@pytest.mark.parametrize("row, expected", [
    ({"chosen": [user("q"), assistant("a")], "rejected": [user("q"), assistant("b")]}, "messages"),
    ({"prompt": "q", "chosen": "a", "rejected": "b"}, "prompt_response"),
    ({"prompt": [user("q")], "chosen": [assistant("a")], "rejected": [assistant("b")]}, "prompt_response"),
    ({"prompt": "\n\nHuman: q\n\nAssistant:", "chosen": "a", "rejected": "b"}, "hh"),
    ({"chosen": "\n\nHuman: q\n\nAssistant: a", "rejected": "\n\nHuman: q\n\nAssistant: b"}, "hh"),
])
def test_auto_detection_matches_explicit_layout(row, expected):
    auto = to_pair(row)
    assert auto == to_pair(row, layout=expected)
    assert auto.chosen == [user("q"), assistant("a")] and auto.rejected == [user("q"), assistant("b")]


def test_explicit_layout_differs_from_auto_when_forced():
    # A prompt string that happens to start with "Human:" is hh under auto, a plain prompt when forced.
    row = {"prompt": "Human: q", "chosen": "a", "rejected": "b"}
    forced = to_pair(row, layout="prompt_response")
    assert forced.prompt == [user("Human: q")]


def test_margin_and_subset_keys():
    row = {"prompt": "q", "chosen": "a", "rejected": "b", "cat": "math", "m": 2}
    pair = to_pair(row, subset_key="cat", margin_key="m")
    assert pair.subset == "math" and pair.margin == 2.0 and isinstance(pair.margin, float)
    assert to_pair({**row, "cat": ""}, subset_key="cat").subset == "default"


# --------------------------------------------------------------------------- every BadRow reason
BAD_ROWS = {
    "missing_key": {"prompt": "q", "chosen": "a"},
    "missing_key_messages": {"chosen": [user("q"), assistant("a")]},
    "unknown_role": {"chosen": [{"role": "human", "content": "q"}, assistant("a")],
                     "rejected": [{"role": "human", "content": "q"}, assistant("b")]},
    "roles_out_of_order": {"chosen": [assistant("a"), user("q")], "rejected": [assistant("b"), user("q")]},
    "roles_out_of_order_system_late": {"chosen": [user("q"), system("s"), assistant("a")],
                                       "rejected": [user("q"), system("s"), assistant("b")]},
    "roles_out_of_order_ends_with_user": {"prompt": [user("q"), assistant("a")], "chosen": [user("x")],
                                          "rejected": [user("y")]},
    "empty_content": {"prompt": "q", "chosen": "   ", "rejected": "b"},
    "empty_content_prompt": {"prompt": "", "chosen": "a", "rejected": "b"},
    "non_string_content": {"prompt": "q", "chosen": 42, "rejected": "b"},
    "non_string_content_messages": {"chosen": [user(["q"]), assistant("a")], "rejected": [user(["q"]), assistant("b")]},
    "non_string_content_hh": {"chosen": "\n\nHuman: q\n\nAssistant: a", "rejected": 7},
    "identical_responses": {"prompt": "q", "chosen": "same", "rejected": "same"},
    "prompt_mismatch": {"chosen": [user("q1"), assistant("a")], "rejected": [user("q2"), assistant("b")]},
    "bad_messages": {"prompt": [{"content": "no role"}], "chosen": "a", "rejected": "b"},
    "bad_messages_two_replies": {"prompt": "q", "chosen": [assistant("a"), assistant("b")], "rejected": "c"},
    "bad_messages_empty_list": {"chosen": [], "rejected": [user("q"), assistant("b")]},
    "bad_transcript": {"prompt": "no turn markers here", "chosen": "a", "rejected": "b"},
    "not_an_object": ["prompt", "chosen", "rejected"],
}


def expected_reason(case: str) -> str:
    for reason in ("missing_key", "unknown_role", "roles_out_of_order", "empty_content", "non_string_content",
                   "identical_responses", "prompt_mismatch", "bad_messages", "bad_transcript", "not_an_object"):
        if case.startswith(reason):
            return reason
    raise AssertionError(case)


@pytest.mark.parametrize("case", sorted(BAD_ROWS))
def test_bad_row_reasons(case):
    row = BAD_ROWS[case]
    if case == "bad_transcript":
        with pytest.raises(BadRow) as info:
            to_pair(row, layout="hh")
    else:
        with pytest.raises(BadRow) as info:
            to_pair(row)
    assert info.value.reason == expected_reason(case)


@pytest.mark.parametrize("margin", ["big", None, [1.0]])
def test_bad_margin(margin):
    row = {"prompt": "q", "chosen": "a", "rejected": "b", "margin": margin}
    with pytest.raises(BadRow) as info:
        to_pair(row, margin_key="margin")
    assert info.value.reason == "bad_margin"
    assert to_pair(row).margin is None  # without margin_key the column is ignored


def test_skip_counts_every_reason_and_bookkeeping(write_rows):
    good = [{"prompt": f"q{i}", "chosen": "a", "rejected": "b"} for i in range(3)]
    bad = [BAD_ROWS[c] for c in sorted(BAD_ROWS) if c != "bad_transcript"]
    path = write_rows("mixed.jsonl", good + bad, raw_lines=[(1, "{not json"), (4, '{"prompt": "q", ')])
    pairs, stats = load_pairs(str(path))
    d = check_bookkeeping(stats, pairs)
    assert len(pairs) == 3
    assert d["rows_read"] == 3 + len(bad) + 2
    expected = {}
    for case in sorted(BAD_ROWS):
        if case != "bad_transcript":
            expected[expected_reason(case)] = expected.get(expected_reason(case), 0) + 1
    expected["invalid_json"] = 2
    assert d["skipped_by_reason"] == dict(sorted(expected.items()))


def test_on_bad_row_error_names_file_and_line(write_rows):
    rows = [{"prompt": "q", "chosen": "a", "rejected": "b"}, {"prompt": "q2", "chosen": "a", "rejected": "b"}]
    path = write_rows("err.jsonl", rows, raw_lines=[(2, '{"prompt": "q3", "chosen": "x", "rejected": "x"}')])
    with pytest.raises(DataError) as info:
        load_pairs(str(path), on_bad_row="error")
    message = str(info.value)
    assert f"{path}:3" in message
    assert "identical_responses" in message


def test_on_bad_row_error_invalid_json_line(write_rows):
    path = write_rows("err.jsonl", [{"prompt": "q", "chosen": "a", "rejected": "b"}], raw_lines=[(1, "{oops")])
    with pytest.raises(DataError, match=rf"{path}:2: invalid_json"):
        load_pairs(str(path), on_bad_row="error")


def test_on_bad_row_error_in_memory_names_row():
    rows = [{"prompt": "q", "chosen": "a", "rejected": "b"}, {"prompt": "q", "chosen": "a"}]
    with pytest.raises(DataError, match=r"rows\[1\]: missing_key"):
        load_pairs(rows, on_bad_row="error")


# --------------------------------------------------------------------------- readers
ROWS = [
    {"prompt": "alpha", "chosen": "yes", "rejected": "no", "subset": "s1"},
    {"chosen": [user("beta"), assistant("up")], "rejected": [user("beta"), assistant("down")], "subset": "s2"},
    {"prompt": "\n\nHuman: gamma\n\nAssistant:", "chosen": " left", "rejected": " right"},
]
EXPECTED_PAIRS = [
    PreferencePair([user("alpha"), assistant("yes")], [user("alpha"), assistant("no")], "s1"),
    PreferencePair([user("beta"), assistant("up")], [user("beta"), assistant("down")], "s2"),
    PreferencePair([user("gamma"), assistant("left")], [user("gamma"), assistant("right")], "default"),
]


def test_jsonl_reader_skips_blank_lines_and_numbers_lines(write_rows):
    path = write_rows("rows.jsonl", ROWS, raw_lines=[(1, "   ")])
    locations = [loc for loc, _ in read_rows(str(path))]
    assert locations == [f"{path}:1", f"{path}:3", f"{path}:4"]
    pairs, stats = load_pairs(str(path))
    assert pairs == EXPECTED_PAIRS
    assert check_bookkeeping(stats, pairs)["rows_read"] == 3


@pytest.mark.parametrize("wrap", [False, True])
def test_json_reader(write_rows, wrap):
    path = write_rows("rows.json", {"meta": "x", "data": ROWS} if wrap else ROWS)
    pairs, stats = load_pairs(str(path))
    assert pairs == EXPECTED_PAIRS
    assert check_bookkeeping(stats, pairs)["rows_skipped"] == 0


def test_json_reader_rejects_non_list(write_rows):
    path = write_rows("rows.json", {"a": 1})
    with pytest.raises(DataError, match="expected a JSON list"):
        load_pairs(str(path))


def test_json_reader_broken_file(tmp_path):
    path = tmp_path / "broken.json"
    path.write_text('[{"prompt": "q"', encoding="utf-8")
    with pytest.raises(DataError, match="invalid JSON"):
        load_pairs(str(path))


def test_parquet_reader(write_rows):
    rows = [{"prompt": r, "chosen": c, "rejected": j, "subset": s}
            for r, c, j, s in [("alpha", "yes", "no", "s1"), ("beta", "up", "down", "s2"), ("q", "x", "x", "s3")]]
    path = write_rows("rows.parquet", rows)
    pairs, stats = load_pairs(str(path))
    assert [p.chosen for p in pairs] == [[user("alpha"), assistant("yes")], [user("beta"), assistant("up")]]
    d = check_bookkeeping(stats, pairs)
    assert d["skipped_by_reason"] == {"identical_responses": 1}
    locations = [loc for loc, _ in read_rows(str(path))]
    assert locations[2] == f"{path}[row 2]"


def test_parquet_messages_layout(write_rows):
    path = write_rows("msgs.parquet", [ROWS[1]])
    pairs, _ = load_pairs(str(path))
    assert pairs == [EXPECTED_PAIRS[1]]


def test_local_dataset_directory_through_datasets(tmp_path):
    directory = tmp_path / "my_dataset"
    directory.mkdir()
    rows = [{"prompt": f"question {i}", "chosen": f"good {i}", "rejected": f"bad {i}"} for i in range(5)]
    rows.append({"prompt": "dup", "chosen": "same", "rejected": "same"})
    (directory / "train.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows), encoding="utf-8")
    locations = [loc for loc, _ in read_rows(str(directory))]
    assert locations[0] == f"{directory}[train row 0]"
    pairs, stats = load_pairs(str(directory))
    assert [p.chosen[-1]["content"] for p in pairs] == [f"good {i}" for i in range(5)]
    d = check_bookkeeping(stats, pairs)
    assert d == {"rows_read": 6, "rows_used": 5, "rows_skipped": 1, "skipped_by_reason": {"identical_responses": 1}}


def test_local_dataset_directory_bad_split(tmp_path):
    directory = tmp_path / "ds"
    directory.mkdir()
    (directory / "train.jsonl").write_text(json.dumps({"prompt": "q", "chosen": "a", "rejected": "b"}) + "\n")
    with pytest.raises(DataError, match="split='nope'"):
        load_pairs(str(directory), split="nope")


@pytest.mark.parametrize("name", ["missing.jsonl", "missing.parquet", "missing.json"])
def test_missing_file_error(tmp_path, name):
    path = tmp_path / name
    with pytest.raises(DataError) as info:
        load_pairs(str(path))
    assert str(info.value).startswith(f"{path}: no such file")
    assert "data.source" in str(info.value)


def test_in_memory_rows_and_max_rows():
    pairs, stats = load_pairs(ROWS)
    assert pairs == EXPECTED_PAIRS
    pairs, stats = load_pairs(ROWS, max_rows=2)
    assert pairs == EXPECTED_PAIRS[:2]
    assert check_bookkeeping(stats, pairs)["rows_read"] == 2


def test_max_rows_on_file_counts_bad_rows_too(write_rows):
    path = write_rows("rows.jsonl", ROWS, raw_lines=[(0, "{bad")])
    pairs, stats = load_pairs(str(path), max_rows=2)
    assert pairs == EXPECTED_PAIRS[:1]
    assert check_bookkeeping(stats, pairs) == {"rows_read": 2, "rows_used": 1, "rows_skipped": 1,
                                               "skipped_by_reason": {"invalid_json": 1}}


def test_stats_accumulate_across_calls():
    stats = RowStats()
    load_pairs(ROWS, stats=stats)
    load_pairs([{"prompt": "q", "chosen": "a"}], stats=stats)
    assert check_bookkeeping(stats) == {"rows_read": 4, "rows_used": 3, "rows_skipped": 1,
                                        "skipped_by_reason": {"missing_key": 1}}


# --------------------------------------------------------------------------- real data
@pytest.mark.parametrize("name", ["pairs.jsonl", "pairs_chat.jsonl"])
def test_real_hh_rlhf_skips_exactly_four_empty_rows(shared_data_dir, name):
    path = shared_data_dir / "hh_rlhf_harmless" / name
    if not path.is_file():
        pytest.skip(f"{path} absent")
    pairs, stats = load_pairs(str(path))
    d = check_bookkeeping(stats, pairs)
    assert d["rows_read"] == 2312
    assert d["rows_skipped"] == 4
    assert d["skipped_by_reason"] == {"empty_content": 4}
    assert max(sum(t["role"] == "user" for t in p.chosen) for p in pairs) >= 3
    assert all(p.chosen[-1]["role"] == "assistant" and p.prompt == p.rejected[:-1] for p in pairs)



def test_hh_final_turn_string_is_kept_verbatim():
    row = {"prompt": "\n\nHuman: can you help?\n\nAssistant:",
           "chosen": " Sure, here is the key:\n\nAssistant:  let us try this out.", "rejected": " No."}
    pair = to_pair(row)
    assert pair.chosen == [user("can you help?"), assistant("Sure, here is the key:\n\nAssistant:  let us try this out.")]


def test_real_hh_rlhf_layouts_agree_on_ordinary_rows(shared_data_dir):
    plain = shared_data_dir / "hh_rlhf_harmless" / "pairs.jsonl"
    chat = shared_data_dir / "hh_rlhf_harmless" / "pairs_chat.jsonl"
    if not (plain.is_file() and chat.is_file()):
        pytest.skip("hh-rlhf files absent")
    plain_rows = [row for _, row in read_rows(str(plain))]
    chat_rows = [row for _, row in read_rows(str(chat))]
    assert len(plain_rows) == len(chat_rows) == 2312
    compared = 0
    for a, b in zip(plain_rows, chat_rows):
        if any("\n\nHuman:" in a[k] or "\n\nAssistant:" in a[k] for k in ("chosen", "rejected")):
            continue  # see test_real_hh_rlhf_layouts_agree_on_every_row
        try:
            first = to_pair(a)
        except BadRow as bad:
            with pytest.raises(BadRow) as info:
                to_pair(b)
            assert info.value.reason == bad.reason
            continue
        second = to_pair(b)
        assert (first.chosen, first.rejected) == (second.chosen, second.rejected)
        compared += 1
    assert compared > 2250


def test_real_hh_rlhf_layouts_agree_on_every_row(shared_data_dir):
    plain = shared_data_dir / "hh_rlhf_harmless" / "pairs.jsonl"
    chat = shared_data_dir / "hh_rlhf_harmless" / "pairs_chat.jsonl"
    if not (plain.is_file() and chat.is_file()):
        pytest.skip("hh-rlhf files absent")
    first, _ = load_pairs(str(plain))
    second, _ = load_pairs(str(chat))
    mismatched = [i for i, (a, b) in enumerate(zip(first, second)) if (a.chosen, a.rejected) != (b.chosen, b.rejected)]
    assert len(first) == len(second) and mismatched == []


@pytest.mark.parametrize("row", [
    {"prompt": "Human: hi there\n\nAssistant:", "chosen": "a", "rejected": "b"},
    {"chosen": "Human: hi there\n\nAssistant: a", "rejected": "Human: hi there\n\nAssistant: b"},
])
def test_hh_transcript_without_leading_newlines(row):
    pair = to_pair(row)
    assert pair.chosen == [user("hi there"), assistant("a")]
    assert pair.rejected == [user("hi there"), assistant("b")]
