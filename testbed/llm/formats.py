"""The field's instruction and harmful-prompt formats, read offline through the ``datasets`` library.

A ``DataSource`` names where rows come from and how to read them. Places: a local ``.json``/``.jsonl``/``.csv``/
``.parquet``/``.txt`` file; a folder of such files (each file's stem is its rows' category, as in HEx-PHI's
``category_N.csv``); a ``save_to_disk`` folder; or a dataset name already in the local Hugging Face cache. Nothing
is downloaded: ``HF_DATASETS_OFFLINE=1`` is set before ``datasets`` is imported (lazily, so a toy job never pays
for it). Presets (``format``), each row becoming a (prompt, response[, category]) triple:

- ``prompt_response``: ``{prompt, response}`` (the testbed's JSONL path);
- ``alpaca``: ``{instruction, input, output}``; prompt = instruction, then a blank line and the input when given;
- ``messages``: ``{messages: [{role, content}, ...]}`` ending in an assistant turn; prompt = the last user turn
  before it (earlier turns are dropped);
- ``advbench``: CSV ``goal,target`` (prompt = goal, response = target);
- ``hex_phi``: header-less one-column CSVs of prompts, one file per category;
- ``sorry_bench``: JSONL ``{question_id, category, turns: [prompt, ...]}`` (prompt = the first turn);
- ``prompts``: plain prompts: a ``.txt`` file (one per line) or a ``prompt`` column;
- ``columns``: any other layout, named by ``columns`` (keys ``prompt``, ``response``, ``input``, ``category``).

``columns`` also renames a preset's fields. A row that does not fit is one ``ConfigError`` naming file and row
(rows count from 1, as data rows: a CSV header is not a row), and so is a file ``datasets`` cannot parse.
"""

from __future__ import annotations

import csv
import json
import os
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

from testbed.errors import ConfigError, one_of, positive_int
from testbed.llm.world import Example

__all__ = ["FORMATS", "DataSource", "SourceRow", "read_rows", "read_examples", "read_prompts"]

FormatName = Literal["prompt_response", "alpaca", "messages", "advbench", "hex_phi", "sorry_bench", "prompts",
                     "columns"]  # fmt: skip

# preset -> its default column names (role -> column)
FORMATS: dict[str, dict[str, str]] = {
    "prompt_response": {"prompt": "prompt", "response": "response"},
    "alpaca": {"prompt": "instruction", "input": "input", "response": "output"},
    "messages": {"messages": "messages"},
    "advbench": {"prompt": "goal", "response": "target"},
    "hex_phi": {"prompt": "prompt"},
    "sorry_bench": {"turns": "turns", "category": "category"},
    "prompts": {"prompt": "prompt"},
    "columns": {},
}
DATA_SUFFIXES = {".json": "json", ".jsonl": "json", ".csv": "csv", ".parquet": "parquet", ".txt": "text"}


@dataclass
class DataSource:
    """Where rows come from and how to read them (see ``testbed.llm.formats``).

    Args:
        path: a local data file, a folder of data files, a ``save_to_disk`` folder, or a cached dataset's name.
        format: the preset: prompt_response, alpaca, messages, advbench, hex_phi, sorry_bench, prompts or columns.
        columns: column names by role (``prompt``, ``response``, ``input``, ``category``); required by ``columns``.
        split: the split of a ``save_to_disk`` DatasetDict or a cached dataset.
        categories: keep only rows of these categories (e.g. HEx-PHI file stems, SORRY-Bench categories).
        limit: keep at most this many rows (the first ones).
    """

    path: str
    format: FormatName = "prompt_response"
    columns: dict[str, str] = field(default_factory=dict)
    split: str = "train"
    categories: list[str] | None = None
    limit: int | None = None

    def __post_init__(self) -> None:
        one_of("data format", self.format, tuple(FORMATS))
        positive_int("data limit", self.limit, allow_none=True)
        unknown = sorted(set(self.columns) - {"prompt", "response", "input", "category", "messages", "turns"})
        if unknown:
            raise ConfigError(f"unknown column role(s) {unknown}; known: prompt, response, input, category")
        if self.format == "columns" and "prompt" not in self.columns:
            raise ConfigError("format: columns needs columns.prompt (and columns.response for instruction data)")

    @property
    def names(self) -> dict[str, str]:
        return {**FORMATS[self.format], **self.columns}


@dataclass
class SourceRow:
    """One row read: the prompt, the response ('' for prompt sets), the category and where it came from."""

    prompt: str
    response: str
    category: str
    origin: str


def _datasets() -> Any:
    os.environ["HF_DATASETS_OFFLINE"] = "1"
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    import datasets

    datasets.disable_progress_bars()
    return datasets


def _locate_bad_row(path: Path) -> str:
    """The first row of a JSON-lines or CSV file that does not parse, as ``row N: why`` ('' when none is found)."""
    if path.suffix in (".jsonl", ".json"):
        lines = [line for line in path.read_text(encoding="utf-8", errors="replace").splitlines() if line.strip()]
        if path.suffix == ".json" and lines and lines[0].lstrip().startswith("["):
            try:
                json.loads("\n".join(lines))
            except json.JSONDecodeError as exc:
                return f"line {exc.lineno}: not valid JSON ({exc.msg})"
            return ""
        for n, line in enumerate(lines, start=1):
            try:
                obj = json.loads(line)
            except json.JSONDecodeError as exc:
                return f"row {n}: not valid JSON ({exc.msg})"
            if not isinstance(obj, dict):
                return f"row {n}: expected a JSON object, got {type(obj).__name__}"
    if path.suffix == ".csv":
        with path.open(newline="", encoding="utf-8", errors="replace") as fh:
            rows = list(csv.reader(fh))
        width = len(rows[0]) if rows else 0
        for n, row in enumerate(rows[1:], start=1):
            if row and len(row) != width:
                return f"row {n}: {len(row)} fields where the header has {width}"
    return ""


def _load_file(path: Path, source: DataSource) -> list[dict[str, Any]]:
    builder = DATA_SUFFIXES.get(path.suffix)
    if builder is None:
        raise ConfigError(f"{path}: not a data file (expected one of {', '.join(DATA_SUFFIXES)})")
    kwargs: dict[str, Any] = {}
    if source.format == "hex_phi" and builder == "csv":
        kwargs["column_names"] = [source.names["prompt"]]  # HEx-PHI's CSVs have no header row
    try:
        data = _datasets().load_dataset(builder, data_files=str(path), split="train", **kwargs)
    except Exception as exc:  # datasets wraps the parser's error (pyarrow, pandas) in its own
        where = _locate_bad_row(path) or " ".join(str(exc).split())[:200]
        raise ConfigError(f"{path}: {where}") from None
    rows = data.to_list()
    if builder == "text":
        rows = [{source.names.get("prompt", "prompt"): r["text"]} for r in rows if r["text"].strip()]
    return rows


def _load(source: DataSource) -> Iterator[tuple[dict[str, Any], str, str]]:
    """(row, origin, file category) for every row of ``source``."""
    path = Path(source.path).expanduser()
    if path.is_file():
        for n, row in enumerate(_load_file(path, source), start=1):
            yield row, f"{path}: row {n}", ""
        return
    if path.is_dir() and not any((path / f).is_file() for f in ("state.json", "dataset_dict.json")):
        files = sorted(p for p in path.iterdir() if p.suffix in DATA_SUFFIXES)
        if not files:
            raise ConfigError(f"{path}: no data files ({', '.join(DATA_SUFFIXES)}) and not a save_to_disk folder")
        for file in files:
            for n, row in enumerate(_load_file(file, source), start=1):
                yield row, f"{file}: row {n}", file.stem
        return
    yield from _load_dataset(source, path)


def _load_dataset(source: DataSource, path: Path) -> Iterator[tuple[dict[str, Any], str, str]]:
    datasets = _datasets()
    try:
        if path.is_dir():
            data = datasets.load_from_disk(str(path))
        else:
            data = datasets.load_dataset(source.path, split=source.split)
    except Exception as exc:
        raise ConfigError(f"{source.path}: not a local data file or folder, nor a dataset in the local Hugging Face "
                          f"cache (nothing is downloaded): {' '.join(str(exc).split())[:200]}") from None  # fmt: skip
    if isinstance(data, datasets.DatasetDict):
        if source.split not in data:
            raise ConfigError(f"{source.path}: no split {source.split!r}; splits: {sorted(data)}")
        data = data[source.split]
    for n, row in enumerate(data, start=1):
        yield row, f"{source.path}[{source.split}]: row {n}", ""


def _text(row: dict[str, Any], column: str, origin: str, required: bool = True) -> str:
    value = row.get(column)
    if value is None and not required:
        return ""
    if not isinstance(value, str) or (required and not value.strip()):
        raise ConfigError(f"{origin}: field {column!r} missing or not a non-empty string")
    return value


def _triple(row: dict[str, Any], source: DataSource, origin: str, want_response: bool) -> tuple[str, str, str]:
    names = source.names
    category = str(row.get(names.get("category", "category")) or "")
    if source.format == "messages":
        turns = row.get(names["messages"])
        if not isinstance(turns, list) or not all(isinstance(t, dict) for t in turns):
            raise ConfigError(f"{origin}: field {names['messages']!r} must be a list of {{role, content}} messages")
        roles = [t.get("role") for t in turns]
        if want_response and (len(turns) < 2 or roles[-1] != "assistant" or roles[-2] != "user"):
            raise ConfigError(f"{origin}: messages must end with a user turn and the assistant's answer")
        users = [t for t in (turns[:-1] if want_response else turns) if t.get("role") == "user"]
        if not users:
            raise ConfigError(f"{origin}: messages hold no user turn")
        prompt = _text(users[-1], "content", origin)
        return prompt, _text(turns[-1], "content", origin) if want_response else "", category
    if source.format == "sorry_bench":
        turns = row.get(names["turns"])
        if not isinstance(turns, list) or not turns or not isinstance(turns[0], str) or not turns[0].strip():
            raise ConfigError(f"{origin}: field {names['turns']!r} must be a non-empty list of strings")
        return turns[0], "", category
    prompt = _text(row, names["prompt"], origin)
    if "input" in names and _text(row, names["input"], origin, required=False).strip():
        prompt = f"{prompt}\n\n{row[names['input']]}"
    response = _text(row, names["response"], origin) if want_response else ""
    return prompt, response, category


def read_rows(source: DataSource, want_response: bool) -> list[SourceRow]:
    """Every row of ``source`` as a ``SourceRow`` (``want_response``: instruction data, else a prompt set)."""
    if want_response and source.format in ("hex_phi", "sorry_bench", "prompts"):
        raise ConfigError(f"format {source.format} holds prompts only; it cannot be instruction data")
    if want_response and "response" not in source.names and source.format != "messages":
        raise ConfigError(f"{source.path}: instruction data needs columns.response")
    rows = []
    for row, origin, file_category in _load(source):
        if not isinstance(row, dict):
            raise ConfigError(f"{origin}: expected an object with named fields, got {type(row).__name__}")
        prompt, response, category = _triple(row, source, origin, want_response)
        category = category or file_category
        if source.categories is None or category in source.categories:
            rows.append(SourceRow(prompt, response, category, origin))
        if source.limit is not None and len(rows) >= source.limit:
            break
    if not rows:
        raise ConfigError(f"{source.path}: no rows" + (f" in categories {source.categories}" if source.categories
                                                        else ""))  # fmt: skip
    return rows


def read_examples(source: DataSource) -> list[Example]:
    """Instruction examples (prompt, response, category as ``family``) of ``source``."""
    return [Example(r.prompt, r.response, r.category) for r in read_rows(source, want_response=True)]


def read_prompts(source: DataSource) -> list[str]:
    """The prompts of ``source`` (a prompt set, or the prompts of instruction data)."""
    return [r.prompt for r in read_rows(source, want_response=False)]
