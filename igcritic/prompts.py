"""Prompt sets: the shipped default set, a JSONL/CSV file, or a Hugging Face dataset (PKU-SafeRLHF).

Every source yields a plain list of prompt strings plus a provenance dict that the store records.
"""

from __future__ import annotations

import csv
import json
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


class PromptError(IgcriticError):
    """A prompt source is missing, empty or malformed."""


@dataclass
class PromptSource:
    """Where prompts come from."""

    source: str = DEFAULT_SET
    """``default`` (shipped set), a .jsonl/.csv/.txt file, or ``hf:<dataset id>``."""
    split: str = "train"
    """Split: ``train``/``heldout``/``all`` for the default set, a dataset split for ``hf:``."""
    limit: int | None = None
    """Keep only the first N prompts."""
    field: str = "prompt"
    """Column holding the prompt text (JSONL, CSV, HF dataset)."""
    revision: str | None = None
    """Dataset revision for ``hf:`` sources (PKU-SafeRLHF defaults to the pinned one)."""


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
                f"{path}: no column {field!r} in the header {reader.fieldnames}; add it or pass --prompts.field"
            )
        rows = []
        for lineno, row in enumerate(reader, 2):
            if not (row.get(field) or "").strip():
                raise PromptError(f"{path}:{lineno}: empty {field!r}; remove the line or fill it")
            rows.append(row)
    return rows


def _read_txt(path: Path, field: str) -> list[dict]:
    return [{field: line.rstrip("\n")} for line in path.open(encoding="utf-8") if line.strip()]


def read_prompt_rows(path: Path, field: str = "prompt") -> list[dict]:
    """Rows of a .jsonl/.json, .csv or text file (one prompt per line), each with a non-empty ``field``."""
    reader = {".jsonl": _read_jsonl, ".json": _read_jsonl, ".csv": _read_csv}.get(
        path.suffix.lower(), _read_txt
    )
    return reader(path, field)


def load_prompts(src: PromptSource) -> tuple[list[str], dict]:
    """Return the prompts and their provenance; raises PromptError with the file and line on bad input."""
    info = {"source": src.source, "split": src.split, "limit": src.limit}
    if src.source == DEFAULT_SET:
        rows = _read_jsonl(default_set_path(), "prompt")
        if src.split != "all":
            rows = [r for r in rows if r.get("split") == src.split]
        prompts = [r["prompt"] for r in rows]
        info["licence"] = "Apache-2.0 (written for igcritic, see data_prep/README.md)"
    elif src.source.startswith("hf:"):
        prompts, revision = _load_hf(src)
        info["revision"] = revision or "unpinned"
    else:
        path = Path(src.source)
        if not path.exists():
            raise PromptError(
                f"prompt file {path} does not exist; pass --prompts.source default or an existing file"
            )
        prompts = [r[src.field] for r in read_prompt_rows(path, src.field)]
    if src.limit is not None:
        prompts = prompts[: src.limit]
    if not prompts:
        raise PromptError(
            f"prompt source {src.source!r} (split {src.split!r}) holds no prompts; check the file and --prompts.split"
        )
    info["count"] = len(prompts)
    return prompts, info


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
    seen, prompts = set(), []
    for p in ds[src.field]:
        if p and p not in seen:
            seen.add(p)
            prompts.append(p)
    return prompts, revision
