"""Instruction data as a `datasets.Dataset` and the standard collator with completion-only loss.

A local `.json` (list) or `.jsonl` file in the LLM-Adapters format (`instruction`, `input`, `output`,
optional `answer`) is read by `datasets.load_dataset("json", ...)`; a file it cannot read, or a record
without a required field, is re-read by `data.load_records`, whose `DataError` names the file, the line
and the field. A hub dataset is read by name (needs a network). Each record becomes the Alpaca prompt
followed by the response and EOS; labels are -100 on the prompt, so the loss is on the completion only:

    input_ids = [prompt | response | eos],   labels = [-100 ... -100 | response | eos]

`collator(tokenizer)` is transformers' `DataCollatorForSeq2Seq`: right-pads input_ids with the pad token
and labels with -100.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from .data import IGNORE_INDEX, REQUIRED, DataError, Record, load_hf_records, load_records


def _records_dataset(path: Path, limit: int | None) -> Any:
    import datasets

    datasets.disable_progress_bars()
    try:
        ds = datasets.load_dataset("json", data_files=str(path), split="train")
    except (
        Exception
    ):  # datasets raises many types; the toolkit's reader says precisely what is wrong
        load_records(path, limit)
        raise DataError(f"{path}: not readable as JSON/JSONL records") from None
    missing = [k for k in REQUIRED if k not in ds.column_names]
    if missing or len(ds) == 0:
        load_records(path, limit)  # raises the precise DataError (file, line, field)
        raise DataError(f"{path}: records lack fields {missing}; expected {list(REQUIRED)}")
    return ds.select(range(min(limit, len(ds)))) if limit is not None else ds


def _as_record(row: dict[str, Any]) -> Record:
    return Record(
        instruction=str(row.get("instruction") or ""),
        output=str(row.get("output") or ""),
        input=str(row.get("input") or ""),
        answer=str(row.get("answer") or ""),
    )


def tokenize_record(row: dict[str, Any], tokenizer: Any, max_length: int) -> dict[str, list[int]]:
    """prompt + output + eos, truncated to `max_length`; labels -100 on the prompt."""
    rec = _as_record(row)
    prompt = tokenizer(rec.prompt(), add_special_tokens=True)["input_ids"]
    response = tokenizer(rec.output, add_special_tokens=False)["input_ids"]
    if tokenizer.eos_token_id is not None:
        response = [*response, tokenizer.eos_token_id]
    ids = (prompt + response)[:max_length]
    labels = ([IGNORE_INDEX] * len(prompt) + response)[:max_length]
    return {"input_ids": ids, "attention_mask": [1] * len(ids), "labels": labels}


def instruction_dataset(
    tokenizer: Any,
    max_length: int,
    *,
    data: str | None = None,
    hf_dataset: str | None = None,
    split: str = "train",
    limit: int | None = None,
) -> Any:
    """A tokenised `datasets.Dataset` (input_ids, attention_mask, labels) of instruction records."""
    import datasets

    if (data is None) == (hf_dataset is None):
        raise DataError(f"data={data!r}, hf_dataset={hf_dataset!r}: expected exactly one of them")
    if max_length < 2:
        raise DataError(f"max_length={max_length}: expected >= 2")
    if data is not None:
        p = Path(data)
        if not p.is_file():
            raise DataError(f"data file {data!r}: not found (expected a .json or .jsonl file)")
        raw = _records_dataset(p, limit)
    else:
        recs = load_hf_records(str(hf_dataset), split, limit)
        raw = datasets.Dataset.from_list([r.__dict__ for r in recs])
    tokenized = raw.map(
        lambda row: tokenize_record(row, tokenizer, max_length),
        remove_columns=raw.column_names,
        desc=None,
    )
    kept = tokenized.filter(lambda row: any(t != IGNORE_INDEX for t in row["labels"]))
    if len(kept) == 0:
        raise DataError(
            f"no example left after truncation to max_length={max_length}; expected a larger value"
        )
    return kept


def collator(tokenizer: Any) -> Any:
    """Right-padding collator: pad token for input_ids, -100 for labels (completion-only loss)."""
    from transformers import DataCollatorForSeq2Seq

    return DataCollatorForSeq2Seq(tokenizer, label_pad_token_id=IGNORE_INDEX, padding=True)
