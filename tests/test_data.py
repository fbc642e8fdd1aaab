"""LLM-Adapters data: good files load, bad files fail naming file, line and field; prompt masking."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from moelora_experiments.data import (
    IGNORE_INDEX,
    DataError,
    Record,
    collate_causal,
    load_hf_records,
    load_records,
    tokenize_causal,
)
from moelora_experiments.tasks import vader_task

RECORDS = [
    {
        "instruction": "Is the sky blue?",
        "input": "",
        "output": "the correct answer is true",
        "answer": "true",
    },
    {"instruction": "Add the numbers.", "input": "2 and 3", "output": "5", "answer": "5"},
    {"instruction": "Say hi.", "output": "hi"},  # input and answer are optional
]


def write(tmp_path: Path, name: str, text: str) -> Path:
    p = tmp_path / name
    p.write_text(text, encoding="utf-8")
    return p


def test_json_and_jsonl_give_the_same_records(tmp_path: Path) -> None:
    a = load_records(write(tmp_path, "a.json", json.dumps(RECORDS, indent=4)))
    b = load_records(write(tmp_path, "b.jsonl", "\n".join(json.dumps(r) for r in RECORDS) + "\n\n"))
    assert a == b
    assert a[1] == Record(instruction="Add the numbers.", output="5", input="2 and 3", answer="5")
    assert a[2].input == "" and a[2].answer == ""
    assert load_records(tmp_path / "a.json", limit=2) == a[:2]


def test_prompt_uses_the_input_only_when_present() -> None:
    with_input = Record("Add the numbers.", "5", input="2 and 3").prompt()
    without = Record("Say hi.", "hi").prompt()
    assert "### Input:\n2 and 3" in with_input and with_input.endswith("### Response:\n")
    assert "### Input" not in without and "### Instruction:\nSay hi." in without


def test_missing_field_names_file_line_and_field(tmp_path: Path) -> None:
    bad = [RECORDS[0], {"instruction": "no output here", "input": ""}]
    p = write(tmp_path, "bad.json", json.dumps(bad, indent=4))
    with pytest.raises(DataError) as e:
        load_records(p)
    msg = str(e.value)
    starts = [i + 1 for i, s in enumerate(json.dumps(bad, indent=4).splitlines()) if s == "    {"]
    line = starts[1]  # the line where the second record opens
    assert f"bad.json:{line}" in msg and "'output'" in msg and "record 1" in msg

    p = write(
        tmp_path, "bad.jsonl", json.dumps(RECORDS[0]) + "\n" + json.dumps({"output": "x"}) + "\n"
    )
    with pytest.raises(DataError, match=r"bad\.jsonl:2: missing field 'instruction'"):
        load_records(p)


@pytest.mark.parametrize(
    ("name", "text", "pattern"),
    [
        (
            "broken.jsonl",
            '{"instruction": "a", "output": "b"}\n{"instruction": \n',
            r"broken\.jsonl:2: invalid JSON",
        ),
        (
            "broken.json",
            '[\n  {"instruction": "a", "output": "b"},\n  {"instruction": }\n]',
            r"broken\.json:3: invalid JSON",
        ),
        (
            "type.jsonl",
            '{"instruction": "a", "output": 5}\n',
            r"type\.jsonl:1: field 'output' is int",
        ),
        ("list.jsonl", "[1, 2]\n", r"list\.jsonl:1 \(record 0\): expected a JSON object"),
        ("empty.json", "  \n", r"empty\.json: empty file"),
        ("none.json", "[]", r"none\.json: no records"),
        (
            "open.json",
            '[{"instruction": "a", "output": "b"}',
            r"open\.json:1: unexpected end of file",
        ),
    ],
)
def test_malformed_files_raise_data_error(
    tmp_path: Path, name: str, text: str, pattern: str
) -> None:
    with pytest.raises(DataError, match=pattern):
        load_records(write(tmp_path, name, text))


def test_missing_file(tmp_path: Path) -> None:
    with pytest.raises(DataError, match="not found"):
        load_records(tmp_path / "nope.json")


class WordTokenizer:
    """One id per whitespace-separated word; bos = 1 with special tokens, eos = 2."""

    eos_token_id = 2

    def __init__(self) -> None:
        self.vocab: dict[str, int] = {}

    def __call__(self, text: str, add_special_tokens: bool = True) -> dict[str, list[int]]:
        ids = [self.vocab.setdefault(w, 10 + len(self.vocab)) for w in text.split()]
        return {"input_ids": ([1] if add_special_tokens else []) + ids}


def test_labels_are_masked_on_the_prompt() -> None:
    tok = WordTokenizer()
    recs = [Record("Say hi.", "hi there"), Record("Add the numbers.", "5", input="2 and 3")]
    examples = tokenize_causal(recs, tok, max_length=512)
    for rec, ex in zip(recs, examples, strict=True):
        n_prompt = len(tok(rec.prompt())["input_ids"])
        assert ex.labels[:n_prompt] == [IGNORE_INDEX] * n_prompt
        assert (
            ex.labels[n_prompt:] == ex.input_ids[n_prompt:]
        )  # the response and eos are supervised
        assert ex.input_ids[-1] == 2 and len(ex.input_ids) == n_prompt + len(rec.output.split()) + 1
    batch = collate_causal(examples, pad_id=0)
    L = max(len(e.input_ids) for e in examples)
    assert (
        batch["input_ids"].shape == batch["labels"].shape == batch["attention_mask"].shape == (2, L)
    )
    short = min(range(2), key=lambda i: len(examples[i].input_ids))
    n = len(examples[short].input_ids)
    assert int(batch["attention_mask"][short].sum()) == n
    assert (batch["labels"][short, n:] == IGNORE_INDEX).all() and (
        batch["input_ids"][short, n:] == 0
    ).all()


def test_truncation_drops_examples_without_supervised_tokens() -> None:
    tok = WordTokenizer()
    recs = [Record("Say hi.", "hi"), Record("word " * 100, "x")]
    prompt_len = len(tok(recs[0].prompt())["input_ids"])
    kept = tokenize_causal(recs, tok, max_length=prompt_len + 2)
    assert len(kept) == 1 and len(kept[0].input_ids) == prompt_len + 2
    with pytest.raises(DataError, match="max_length=3"):
        tokenize_causal(recs[1:], tok, max_length=3)


def test_hf_datasets_missing_or_offline_is_a_clear_error(monkeypatch: pytest.MonkeyPatch) -> None:
    import sys

    import datasets

    def offline(*args: object, **kw: object) -> None:
        raise ConnectionError("Couldn't reach 'no-such-user/no-such-dataset' on the Hub")

    monkeypatch.setattr(datasets, "load_dataset", offline)  # no network wait in the test
    with pytest.raises(DataError, match=r"could not be loaded.*Offline\? Pass a local"):
        load_hf_records("no-such-user/no-such-dataset")
    monkeypatch.setitem(sys.modules, "datasets", None)  # the package missing
    with pytest.raises(DataError, match="'datasets' package is not installed"):
        load_hf_records("no-such-user/no-such-dataset")


def test_vader_task_split_is_fixed_and_thresholded(tmp_path: Path) -> None:
    lex = "".join(f"w{i}\t{(i % 9) - 4}.0\t0.5\t[0]\n" for i in range(90))
    p = write(tmp_path, "lex.txt", lex)
    t = vader_task(threshold=2.0, test_fraction=0.25, path=p)
    means = {f"w{i}": (i % 9) - 4 for i in range(90)}
    kept = t.train + t.test
    assert len(kept) == sum(abs(m) >= 2 for m in means.values()) and len(t.test) == round(
        0.25 * len(kept)
    )
    assert all(y == int(means[w] > 0) for w, y in kept)
    assert vader_task(threshold=2.0, test_fraction=0.25, path=p) == t  # the split does not move
    real = vader_task()
    assert (
        real.describe()["train"] + real.describe()["test"] > 5000
        and 0.3 < real.describe()["positive_share"] < 0.6
    )
    with pytest.raises(DataError, match=r"lex2\.txt:1"):
        vader_task(path=write(tmp_path, "lex2.txt", "token-without-rating\n"))
