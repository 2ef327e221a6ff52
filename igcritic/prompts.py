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


TEXT_SUFFIXES = {
    ".jsonl": _read_jsonl,
    ".json": _read_jsonl,
    ".csv": _read_csv,
    ".txt": _read_txt,
    "": _read_txt,
}
"""Prompt files read here; any other suffix is read as text, one prompt per line, when it decodes as UTF-8."""
DATA_SUFFIXES = (".parquet", ".arrow")
"""Binary data files: read through ``hf:FILE`` (the datasets library)."""


def _read_file(path: Path, field: str) -> list[dict]:
    if path.suffix.lower() in DATA_SUFFIXES:
        raise PromptError(
            f"prompt file {path} is a {path.suffix} data file; pass --prompts.source hf:{path} "
            "(the datasets library reads it)"
        )
    read = TEXT_SUFFIXES.get(path.suffix.lower(), _read_txt)
    try:
        return read(path, field)
    except UnicodeDecodeError as e:
        raise PromptError(
            f"prompt file {path} is not UTF-8 text (byte {e.start}); save it as UTF-8 .jsonl, .csv or .txt, "
            "or pass a data file or dataset folder as hf:PATH"
        ) from None


def _read_stdin(field: str) -> list[dict]:
    if sys.stdin.isatty():
        sys.stderr.write("reading prompts from stdin, one per line (Ctrl-D to end)\n")
        sys.stderr.flush()
    return [{field: line} for line in sys.stdin.read().splitlines() if line.strip()]


def load_prompts(src: PromptSource) -> tuple[list[Prompt], dict]:
    """The prompts of ``src`` (split-filtered, then the first ``limit``) and their provenance; a missing,
    empty or malformed source is a PromptError naming the file and line."""
    info = {"source": src.source, "split": src.split, "limit": src.limit}
    if src.limit is not None and src.limit < 1:
        raise PromptError(f"--prompts.limit {src.limit} must be >= 1 (or null for every prompt)")
    if src.texts is not None:
        info["source"] = "inline"
        if not src.texts:
            raise PromptError("--prompts.texts is an empty list; give at least one prompt")
        bad = [i for i, t in enumerate(src.texts) if not isinstance(t, str) or not t.strip()]
        if bad:
            t = src.texts[bad[0]]
            what = "empty" if isinstance(t, str) else f"a {type(t).__name__}, not a string"
            raise PromptError(f"--prompts.texts[{bad[0]}] is {what}; give non-empty strings")
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
            raw = _read_stdin(src.field)
        else:
            path = Path(src.source)
            if not path.is_file():
                raise PromptError(
                    f"prompt file {path} does not exist; pass --prompts.source default or an existing file"
                )
            raw = _read_file(path, src.field)
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
    """``hf:NAME``: a hub dataset id, a folder written by ``Dataset.save_to_disk``, a folder of data files
    or one data file (.parquet, .jsonl, .csv, ...); ``split`` all/None takes every split."""
    import datasets

    name = src.source.removeprefix("hf:")
    revision = src.revision or (PKU_SAFERLHF_REVISION if name == PKU_SAFERLHF else None)
    path = Path(name)
    split = None if src.split in (None, ALL_SPLITS) else src.split
    try:
        if path.is_dir() and any((path / f).is_file() for f in ("state.json", "dataset_dict.json")):
            ds = datasets.load_from_disk(str(path))  # save_to_disk folder
        elif path.is_file():
            builder = {".jsonl": "json", ".json": "json", ".txt": "text"}.get(path.suffix.lower())
            ds = datasets.load_dataset(builder or path.suffix.lower().lstrip("."), data_files=str(path))
        else:
            ds = datasets.load_dataset(name, revision=revision, **({"split": split} if split else {}))
    except ValueError as e:
        if "split" in str(e).lower() and split:
            raise PromptError(
                f"dataset {name!r} has no split {split!r} ({_first_line(e)}); pass --prompts.split one of "
                "its splits or all"
            ) from None
        raise PromptError(f"cannot load dataset {name!r} ({_first_line(e)})") from None
    except Exception as e:  # noqa: BLE001 - datasets raises many types; all mean "not loadable"
        where = (
            "the folder or file holds no dataset" if path.exists() else "the hub is not reachable from here?"
        )
        raise PromptError(
            f"cannot load dataset {name!r} ({type(e).__name__}: {_first_line(e)}; {where}); pass a local "
            "save_to_disk folder, a data-file folder or file, or a JSONL export (data_prep/pku_saferlhf.py)"
        ) from None
    if isinstance(ds, datasets.DatasetDict):
        if split is not None and split not in ds:
            raise PromptError(
                f"dataset {name!r} has no split {split!r}; pass --prompts.split one of {sorted(ds)} or all"
            )
        parts = [ds[split]] if split is not None else list(ds.values())
    else:
        parts = [ds]
    columns = parts[0].column_names
    if src.field not in columns:
        raise PromptError(
            f"dataset {name!r} has no column {src.field!r}; pass --prompts.field one of {columns}"
        )
    texts = [p for part in parts for p in part[src.field]]
    return list(dict.fromkeys(p for p in texts if isinstance(p, str) and p.strip())), revision  # each once


def _first_line(e: BaseException) -> str:
    text = str(e).strip()
    return text.splitlines()[0] if text else type(e).__name__
