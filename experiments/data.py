"""Instruction data in the LLM-Adapters format, prompt formatting and causal-LM tokenisation.

A record is a JSON object with the string fields `instruction`, `input`, `output` and (optionally)
`answer`; a file is either a JSON list of records or JSONL (one record per line). The prompt follows the
Alpaca template that LLM-Adapters, TalkLoRA and CoMoL train with; the training target is the prompt
followed by `output`, and the labels are masked (-100) on the prompt so that the loss is taken on the
response only:

    tokens  = [prompt tokens | response tokens | eos]
    labels  = [-100 ... -100 | response tokens | eos]

Bad files raise `DataError` naming the file, the line of the offending record and the missing field.
Hugging Face datasets are loaded by name only when the `datasets` package and a network exist.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from torch import Tensor

from moelora_core.errors import ConfigError, MoELoRAError

REQUIRED = ("instruction", "output")
OPTIONAL = ("input", "answer")
IGNORE_INDEX = -100

PROMPT_WITH_INPUT = (
    "Below is an instruction that describes a task, paired with an input that provides further context. "
    "Write a response that appropriately completes the request.\n\n"
    "### Instruction:\n{instruction}\n\n### Input:\n{input}\n\n### Response:\n"
)
PROMPT_NO_INPUT = (
    "Below is an instruction that describes a task. "
    "Write a response that appropriately completes the request.\n\n"
    "### Instruction:\n{instruction}\n\n### Response:\n"
)


class DataError(MoELoRAError, ValueError):
    """A data file is unreadable or a record lacks a field; the message names file, line and field."""


@dataclass(frozen=True)
class Record:
    """One LLM-Adapters example."""

    instruction: str
    output: str
    input: str = ""
    answer: str = ""

    def prompt(self) -> str:
        """The Alpaca prompt (instruction, optional input) that precedes the response."""
        if self.input:
            return PROMPT_WITH_INPUT.format(instruction=self.instruction, input=self.input)
        return PROMPT_NO_INPUT.format(instruction=self.instruction)


def _record(obj: Any, where: str) -> Record:
    if not isinstance(obj, dict):
        raise DataError(
            f"{where}: expected a JSON object with fields {list(REQUIRED)}, got {type(obj).__name__}"
        )
    for key in REQUIRED:
        if key not in obj:
            raise DataError(
                f"{where}: missing field {key!r} (expected {list(REQUIRED)}, optional {list(OPTIONAL)})"
            )
    fields: dict[str, str] = {}
    for key in (*REQUIRED, *OPTIONAL):
        value = obj.get(key, "")
        if value is None:
            value = ""
        if not isinstance(value, str):
            raise DataError(
                f"{where}: field {key!r} is {type(value).__name__} {value!r}; expected a string"
            )
        fields[key] = value
    return Record(**fields)


def _line_of(text: str, index: int) -> int:
    return text.count("\n", 0, index) + 1


def _json_list(text: str, path: Path) -> list[Record]:
    """Parse a JSON list element by element, so that each record's line is known for error messages."""
    decoder = json.JSONDecoder()
    i = text.index("[") + 1
    out: list[Record] = []
    while True:
        while i < len(text) and text[i] in " \t\r\n,":
            i += 1
        if i >= len(text):
            raise DataError(f"{path}:{_line_of(text, i)}: unexpected end of file; expected ']'")
        if text[i] == "]":
            return out
        try:
            obj, end = decoder.raw_decode(text, i)
        except json.JSONDecodeError as e:
            raise DataError(f"{path}:{e.lineno}: invalid JSON ({e.msg})") from None
        out.append(_record(obj, f"{path}:{_line_of(text, i)} (record {len(out)})"))
        i = end


def load_records(path: str | Path, limit: int | None = None) -> list[Record]:
    """Records of a `.json` (list) or `.jsonl` file, in file order (the first `limit` if given)."""
    p = Path(path)
    if not p.is_file():
        raise DataError(f"data file {str(p)!r}: not found (expected a .json or .jsonl file)")
    try:
        text = p.read_text(encoding="utf-8")
    except UnicodeDecodeError as e:
        raise DataError(f"{p}: not UTF-8 text ({e})") from None
    stripped = text.lstrip()
    if not stripped:
        raise DataError(f"{p}: empty file; expected a JSON list or JSONL records")
    if stripped[0] == "[":
        records = _json_list(text, p)
    else:
        records = []
        for lineno, line in enumerate(text.splitlines(), start=1):
            if not line.strip():
                continue
            try:
                obj = json.loads(line)
            except json.JSONDecodeError as e:
                raise DataError(
                    f"{p}:{lineno}: invalid JSON ({e.msg}); expected one record per line"
                ) from None
            records.append(_record(obj, f"{p}:{lineno}"))
    if not records:
        raise DataError(f"{p}: no records; expected at least one")
    return records[:limit] if limit is not None else records


def load_hf_records(name: str, split: str = "train", limit: int | None = None) -> list[Record]:
    """Records of a Hugging Face dataset with LLM-Adapters fields (needs `datasets` and a network)."""
    try:
        import datasets
    except ImportError:
        raise DataError(
            f"dataset {name!r}: the 'datasets' package is not installed; install it, or pass a local "
            ".json/.jsonl file with --data"
        ) from None
    try:
        ds = datasets.load_dataset(name, split=split)
    except Exception as e:  # offline, unknown name, unknown split: datasets raises many types
        raise DataError(
            f"dataset {name!r} (split {split!r}) could not be loaded: {type(e).__name__}: {e}. "
            "Offline? Pass a local .json/.jsonl file with --data instead."
        ) from None
    n = len(ds) if limit is None else min(limit, len(ds))
    return [_record(ds[i], f"{name}[{split}][{i}]") for i in range(n)]


@dataclass(frozen=True)
class Example:
    """A tokenised causal-LM example: ids and labels of equal length (labels -100 on the prompt)."""

    input_ids: list[int]
    labels: list[int]


def tokenize_causal(records: Sequence[Record], tokenizer: Any, max_length: int) -> list[Example]:
    """prompt + output + eos, truncated to `max_length`; labels masked on the prompt.

    Records whose prompt alone fills `max_length` would have no supervised token and are dropped.
    """
    if max_length < 2:
        raise ConfigError(f"max_length={max_length}: expected >= 2")
    eos = tokenizer.eos_token_id
    out: list[Example] = []
    for rec in records:
        prompt = tokenizer(rec.prompt(), add_special_tokens=True)["input_ids"]
        response = tokenizer(rec.output, add_special_tokens=False)["input_ids"]
        if eos is not None:
            response = [*response, eos]
        ids = (prompt + response)[:max_length]
        labels = ([IGNORE_INDEX] * len(prompt) + response)[:max_length]
        if any(t != IGNORE_INDEX for t in labels):
            out.append(Example(ids, labels))
    if not out:
        raise DataError(
            f"no example left after truncation to max_length={max_length}; expected a larger value"
        )
    return out


def collate_causal(batch: Sequence[Example], pad_id: int) -> dict[str, Tensor]:
    """Right-pad a batch: input_ids (B, L), attention_mask (B, L), labels (B, L) with -100 on padding."""
    L = max(len(e.input_ids) for e in batch)
    ids = torch.full((len(batch), L), pad_id, dtype=torch.long)
    labels = torch.full((len(batch), L), IGNORE_INDEX, dtype=torch.long)
    mask = torch.zeros((len(batch), L), dtype=torch.long)
    for i, e in enumerate(batch):  # collation only, not a forward pass
        ids[i, : len(e.input_ids)] = torch.tensor(e.input_ids)
        labels[i, : len(e.labels)] = torch.tensor(e.labels)
        mask[i, : len(e.input_ids)] = 1
    return {"input_ids": ids, "attention_mask": mask, "labels": labels}
