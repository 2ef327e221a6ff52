"""Prompt sets: the shipped default set, a JSONL/CSV/text file, stdin, inline texts or a Hugging Face dataset.

One :class:`PromptSource` (the ``--prompts.*`` group of ``collect``, ``generate`` and ``eval``) and one
:func:`load_prompts`: rows keep their ``category``/``harmful``/``split``, the ``split`` filter applies to
every source that has one, and ``limit`` always means the first N after it. The provenance dict goes into the
store.
"""

from __future__ import annotations

import csv
import json
import sys
from dataclasses import dataclass
from importlib import resources
from pathlib import Path

from igcritic import IgcriticError

PKU_SAFERLHF = "PKU-Alignment/PKU-SafeRLHF"
PKU_SAFERLHF_REVISION: str | None = None
"""No commit of PKU-SafeRLHF could be looked up from this offline workplace, so none is hard-coded (a made-up
hash would be worse than none). Pin one with ``--prompts.revision <commit>`` for real runs; the store records
the revision it was given, and ``unpinned`` otherwise."""
DEFAULT_SET = "default"
DEFAULT_SET_FILE = "default_prompts.jsonl"
ALL_SPLITS = "all"
STDIN = "-"


class PromptError(IgcriticError):
    """A prompt source is missing, empty or malformed."""


def _not_utf8(path: Path) -> str:
    """Where a prompt file stops being UTF-8, and how to fix it."""
    data = path.read_bytes()
    try:
        data.decode("utf-8")
        return f"prompt file {path} is not UTF-8; save it as UTF-8"
    except UnicodeDecodeError as e:
        line = data[: e.start].count(b"\n") + 1
        return (
            f"prompt file {path} is not UTF-8 (byte 0x{data[e.start]:02x} on line {line}); save it as UTF-8, "
            "e.g. `iconv -f latin1 -t utf-8 FILE > NEW`"
        )


@dataclass
class Prompt:
    """One prompt and what its row says about it (the shipped set and JSONL files carry all three)."""

    prompt: str
    category: str | None = None
    harmful: bool | None = None
    split: str | None = None


@dataclass
class PromptSource:
    """Where prompts come from: the same group in ``collect``, ``generate`` and ``eval`` (``--prompts.*``)."""

    source: str = DEFAULT_SET
    """``default`` (the shipped set), a .jsonl/.csv/.txt file (one prompt per line), ``hf:<dataset id>``, or
    ``-`` (one prompt per stdin line)."""
    split: str | None = "train"
    """Keep the rows whose ``split`` is this (``all`` or null: every row; files without a split column keep
    every row). The shipped set has ``train`` (collect, fit) and ``heldout`` (eval). For ``hf:``: the dataset
    split."""
    limit: int | None = None
    """Keep the first N prompts after the split filter (null: all). The shipped file is shuffled, so its first
    N are a fair sample of its categories and styles."""
    field: str = "prompt"
    """Column holding the prompt text (JSONL, CSV, HF dataset)."""
    revision: str | None = None
    """Dataset revision for ``hf:`` sources (PKU-SafeRLHF defaults to the pinned one)."""
    texts: list[str] | None = None
    """Prompts given inline; then ``source`` is not read."""


def default_set_path() -> Path:
    return Path(str(resources.files("igcritic") / "assets" / DEFAULT_SET_FILE))


def _read_jsonl(path: Path, field: str) -> list[dict]:
    rows = []
    with path.open(encoding="utf-8") as f:
        for lineno, line in enumerate(f, 1):
            if not line.strip():
                continue
            try:
                row = json.loads(line)
            except json.JSONDecodeError as e:
                raise PromptError(
                    f"{path}:{lineno}: not valid JSON ({e.msg}); fix or remove the line"
                ) from None
            if not isinstance(row, dict) or not isinstance(row.get(field), str) or not row[field].strip():
                raise PromptError(
                    f'{path}:{lineno}: needs a non-empty "{field}" string; fix or remove the line'
                )
            rows.append(row)
    return rows


def _read_csv(path: Path, field: str) -> list[dict]:
    with path.open(encoding="utf-8", newline="") as f:
        reader = csv.DictReader(f)
        if reader.fieldnames is None or field not in reader.fieldnames:
            raise PromptError(
                f"{path}: no column {field!r} in the header {reader.fieldnames}; add it or pass "
                "--prompts.field"
            )
        rows = []
        for lineno, row in enumerate(reader, 2):
            if not (row.get(field) or "").strip():
                raise PromptError(f"{path}:{lineno}: empty {field!r}; remove the line or fill it")
            rows.append(row)
    return rows


def _read_txt(path: Path, field: str) -> list[dict]:
    return [{field: line.rstrip("\n")} for line in path.open(encoding="utf-8") if line.strip()]


def load_prompts(src: PromptSource) -> tuple[list[Prompt], dict]:
    """The prompts of ``src`` (split-filtered, then the first ``limit``) and their provenance; a missing,
    empty or malformed source is a PromptError naming the file and line."""
    info = {"source": src.source, "split": src.split, "limit": src.limit}
    if src.limit is not None and src.limit < 1:
        raise PromptError(f"--prompts.limit {src.limit} must be >= 1 (or null for every prompt)")
    if src.texts:
        info["source"] = "inline"
        rows = [Prompt(t) for t in src.texts]
    elif src.source.startswith("hf:"):
        prompts, revision = _load_hf(src)
        info["revision"] = revision or "unpinned"
        rows = [Prompt(p, split=src.split) for p in prompts]
    else:
        if src.source == DEFAULT_SET:
            raw = _read_jsonl(default_set_path(), "prompt")
            info["licence"] = "Apache-2.0 (written for igcritic, see data_prep/README.md)"
        elif src.source == STDIN:
            raw = [{src.field: line} for line in sys.stdin.read().splitlines() if line.strip()]
        else:
            path = Path(src.source)
            if not path.is_file():
                raise PromptError(
                    f"prompt file {path} does not exist; pass --prompts.source default or an existing file"
                )
            read = {".jsonl": _read_jsonl, ".json": _read_jsonl, ".csv": _read_csv}.get(path.suffix.lower())
            try:
                raw = (read or _read_txt)(path, src.field)  # any other file: one prompt per line
            except UnicodeDecodeError:
                raise PromptError(_not_utf8(path)) from None
        rows = [_prompt(r, src.field) for r in raw]
        rows = _split(rows, src)
    if src.limit is not None:
        rows = rows[: src.limit]
    if not rows:
        raise PromptError(
            f"prompt source {info['source']!r} (split {src.split!r}) holds no prompts; check the file and "
            "--prompts.split"
        )
    info["count"] = len(rows)
    return rows, info


def _prompt(row: dict, field: str) -> Prompt:
    harmful = row.get("harmful")
    if isinstance(harmful, str):  # CSV cells
        harmful = {"true": True, "1": True, "false": False, "0": False}.get(harmful.strip().lower())
    return Prompt(
        row[field].strip(),
        row.get("category") or None,
        None if harmful is None else bool(harmful),
        row.get("split") or None,
    )


def _split(rows: list[Prompt], src: PromptSource) -> list[Prompt]:
    """The rows of ``src.split``; every row when it is ``all``/None or no row names a split."""
    if src.split in (None, ALL_SPLITS) or all(r.split is None for r in rows):
        return rows
    kept = [r for r in rows if r.split == src.split]
    if not kept and rows:
        have = sorted({str(r.split) for r in rows})
        raise PromptError(
            f"--prompts.split {src.split!r} matches no prompt in {src.source}; use one of {have} or all"
        )
    return kept


def _load_hf(src: PromptSource) -> tuple[list[str], str | None]:
    from datasets import load_dataset

    name = src.source.removeprefix("hf:")
    revision = src.revision or (PKU_SAFERLHF_REVISION if name == PKU_SAFERLHF else None)
    try:
        ds = load_dataset(name, split=src.split, revision=revision)
    except Exception as e:  # noqa: BLE001 - datasets raises many types; all mean "not loadable"
        raise PromptError(
            f"cannot load dataset {name!r} split {src.split!r} ({type(e).__name__}); "
            "export it to JSONL where the hub is reachable (data_prep/pku_saferlhf.py)"
        ) from None
    if src.field not in ds.column_names:
        raise PromptError(
            f"dataset {name!r} has no column {src.field!r}; pass --prompts.field one of {ds.column_names}"
        )
    return list(dict.fromkeys(p for p in ds[src.field] if p)), revision  # each prompt once, in order
