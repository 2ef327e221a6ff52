"""Prompt sets: the shipped default set, a JSONL/CSV/text file, stdin, inline texts or a Hugging Face dataset.

One :class:`PromptSource` (the ``--prompts.*`` group of ``collect``, ``generate`` and ``eval``) and one
:func:`load_prompts`: rows keep their ``category``/``harmful``/``split``, the ``split`` filter applies to
every source that has one, and ``limit`` always means the first N after it. The provenance dict goes into the
store.

A prompt is a text or a chat conversation (``[{"role": "system"|"user"|"assistant", "content": ...}]``,
ending with a user turn). Every stage passes a prompt as ONE string, :func:`prompt_text`: a single user
turn is its text (as before conversations existed, so old stores and records read the same), any other
conversation is the JSON of its messages. That string is what the store, the records and the config hash
hold; :func:`prompt_messages` turns it back into messages where a template is applied (the policy's chat
template in :meth:`igcritic.policy.Policy.format_prompt`, a scorer's own format) and :func:`transcript`
into plain text for text-only scorers. A text that happens to be the JSON of a conversation is read as that
conversation.
"""

from __future__ import annotations

import csv
import json
import sys
from dataclasses import dataclass
from importlib import resources
from pathlib import Path

from igcritic import IgcriticError, one_line

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
            f"prompt file {path} is not UTF-8 (byte 0x{data[e.start]:02x} on line {line}); save it as UTF-8 "
            "(e.g. `iconv -f latin1 -t utf-8 FILE > NEW`), or pass a data file or dataset folder as hf:PATH"
        )


ROLES = ("system", "user", "assistant")
MESSAGES_FIELD = "messages"
"""The JSONL field holding a conversation (instead of the prompt text)."""
Message = dict[str, str]


def check_messages(messages: object, where: str = "messages") -> list[Message]:
    """``messages`` as a clean conversation (role and content only), or a PromptError naming what is wrong:
    a non-empty list of ``{"role", "content"}`` with a text content, a system turn only first, and a user
    turn last (the guard answers it)."""
    if not isinstance(messages, list) or not messages:
        raise PromptError(f'{where} must be a non-empty list of {{"role", "content"}} messages')
    out = []
    for i, m in enumerate(messages):
        if not isinstance(m, dict) or set(m) - {"role", "content"} or "role" not in m:
            raise PromptError(f'{where}[{i}] must be {{"role": ..., "content": ...}} and nothing else')
        role, content = m["role"], m.get("content")
        if role not in ROLES:
            raise PromptError(f"{where}[{i}] has role {role!r}; use one of {', '.join(ROLES)}")
        if not isinstance(content, str) or (role != "assistant" and not content.strip()):
            raise PromptError(f"{where}[{i}] ({role}) needs a non-empty text content")
        if role == "system" and i > 0:
            raise PromptError(f"{where}[{i}]: a system message may only come first")
        out.append({"role": role, "content": content})
    if out[-1]["role"] != "user":
        raise PromptError(f"{where} must end with a user message (the turn the guard answers)")
    return out


def prompt_text(prompt: str | list[Message]) -> str:
    """The one string form of a prompt: a single user turn is its text, any other conversation the JSON of
    its messages; a text is read with :func:`prompt_messages` first, so both spellings give one string."""
    messages = prompt_messages(prompt) if isinstance(prompt, str) else check_messages(prompt)
    if len(messages) == 1:
        return messages[0]["content"]
    return json.dumps(messages, ensure_ascii=False)


def prompt_messages(prompt: str) -> list[Message]:
    """The conversation of a prompt string: the JSON of a conversation, else one user turn with the text."""
    if prompt.lstrip().startswith("[{"):
        try:
            value = json.loads(prompt)
        except json.JSONDecodeError:
            value = None
        if isinstance(value, list) and value and all(isinstance(m, dict) and "role" in m for m in value):
            return check_messages(value, "prompt")
    return [{"role": "user", "content": prompt}]


def as_prompt_texts(prompts: str | list[Message] | list[str | list[Message]]) -> list[str]:
    """:func:`prompt_text` of each prompt; one text or one conversation (a list of message dicts) is a list
    of one."""
    if isinstance(prompts, str) or (isinstance(prompts, list) and prompts and isinstance(prompts[0], dict)):
        prompts = [prompts]  # type: ignore[list-item]
    return [prompt_text(p) for p in prompts]  # type: ignore[arg-type]


def transcript(prompt: str) -> str:
    """Plain text of a prompt string for scorers without a chat format: a single user turn is its text, a
    conversation one ``role: content`` line per message."""
    messages = prompt_messages(prompt)
    if len(messages) == 1:
        return messages[0]["content"]
    return "\n".join(f"{m['role']}: {m['content']}" for m in messages)


@dataclass
class Prompt:
    """One prompt and what its row says about it (the shipped set and JSONL files carry all three)."""

    prompt: str
    category: str | None = None
    harmful: bool | None = None
    split: str | None = None
    where: str | None = None
    """Where the prompt came from, for messages: ``FILE:LINE``, ``--prompts.texts[i]`` or ``stdin line N``."""


WHERE = "__where__"
"""Key under which the file readers pass each row's ``FILE:LINE`` to :func:`_prompt`."""


@dataclass
class PromptSource:
    """Where prompts come from: the same group in ``collect``, ``generate`` and ``eval`` (``--prompts.*``)."""

    source: str = DEFAULT_SET
    """``default`` (the shipped set), a .jsonl/.csv/.txt file (one prompt per line), ``hf:<dataset id>``, or
    ``-`` (one prompt per stdin line). JSONL rows hold the prompt text or, instead, a chat conversation in a
    ``messages`` field; a line that is the JSON of a conversation is that conversation."""
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
    """Prompts given inline; then ``source`` is not read. A text that is the JSON of a chat conversation
    (``[{"role": "system", "content": "..."}, {"role": "user", "content": "..."}]``) is that conversation."""


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
            if isinstance(row, dict) and MESSAGES_FIELD in row:
                if field in row:
                    raise PromptError(
                        f'{path}:{lineno}: has both "{field}" and "{MESSAGES_FIELD}"; keep one of them'
                    )
                try:
                    row[field] = prompt_text(check_messages(row[MESSAGES_FIELD]))
                except PromptError as e:
                    raise PromptError(f"{path}:{lineno}: {e}; fix or remove the line") from None
            if not isinstance(row, dict) or not isinstance(row.get(field), str) or not row[field].strip():
                raise PromptError(
                    f'{path}:{lineno}: needs a non-empty "{field}" string or a "{MESSAGES_FIELD}" list; fix '
                    "or remove the line"
                )
            rows.append({**row, WHERE: f"{path}:{lineno}"})
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
            rows.append({**row, WHERE: f"{path}:{lineno}"})
    return rows


def _read_txt(path: Path, field: str) -> list[dict]:
    lines = enumerate(path.open(encoding="utf-8"), 1)
    return [{field: line.rstrip("\n"), WHERE: f"{path}:{n}"} for n, line in lines if line.strip()]


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
    except UnicodeDecodeError:
        raise PromptError(_not_utf8(path)) from None


def _read_stdin(field: str) -> list[dict]:
    if sys.stdin.isatty():
        sys.stderr.write("reading prompts from stdin, one per line (Ctrl-D to end)\n")
        sys.stderr.flush()
    lines = enumerate(sys.stdin.read().splitlines(), 1)
    return [{field: line, WHERE: f"stdin line {n}"} for n, line in lines if line.strip()]


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
        bad = [
            i
            for i, t in enumerate(src.texts)
            if not isinstance(t, (str, list)) or isinstance(t, str) and not t.strip()
        ]
        if bad:
            t = src.texts[bad[0]]
            what = "empty" if isinstance(t, str) else f"a {type(t).__name__}, not a string or a conversation"
            raise PromptError(f"--prompts.texts[{bad[0]}] is {what}; give non-empty strings")
        rows = [Prompt(prompt_text(t), where=f"--prompts.texts[{i}]") for i, t in enumerate(src.texts)]
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
        prompt_text(row[field].strip()),
        row.get("category") or None,
        None if harmful is None else bool(harmful),
        row.get("split") or None,
        row.get(WHERE),
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
        first = one_line(e, first_line=True)
        if "split" in str(e).lower() and split:
            raise PromptError(
                f"dataset {name!r} has no split {split!r} ({first}); pass --prompts.split one of its splits "
                "or all"
            ) from None
        raise PromptError(f"cannot load dataset {name!r} ({first})") from None
    except Exception as e:  # noqa: BLE001 - datasets raises many types; all mean "not loadable"
        where = (
            "the folder or file holds no dataset" if path.exists() else "the hub is not reachable from here?"
        )
        first = one_line(e, first_line=True)
        raise PromptError(
            f"cannot load dataset {name!r} ({type(e).__name__}: {first}; {where}); pass a local "
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
