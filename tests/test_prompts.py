"""Prompt sources (igcritic/prompts.py): stdin, files, inline texts and local HF datasets, chat conversations
stored as one string, and every bad source named in one line."""

from __future__ import annotations

import io
import json

import pytest
from helpers import CHAT

from igcritic.prompts import PromptError, PromptSource, load_prompts, prompt_messages, prompt_text


def test_prompts_from_stdin_a_file_or_inline(tmp_path, monkeypatch):
    from igcritic.guard import GenerateConfig

    f = tmp_path / "p.txt"
    f.write_text("first\n\nsecond\n")
    stdin = GenerateConfig("c").prompts  # the command's default: one prompt per stdin line
    monkeypatch.setattr("sys.stdin", io.StringIO("first\n\nsecond\n"))
    assert [p.prompt for p in load_prompts(stdin)[0]] == ["first", "second"]
    assert [p.prompt for p in load_prompts(PromptSource(str(f), split=None))[0]] == ["first", "second"]
    assert [p.prompt for p in load_prompts(PromptSource(str(f), texts=["x"]))[0]] == ["x"]
    with pytest.raises(PromptError, match="does not exist"):
        load_prompts(PromptSource(str(tmp_path / "missing.txt")))


def test_prompts_from_jsonl_report_the_bad_line(tmp_path):
    f = tmp_path / "p.jsonl"
    f.write_text('{"prompt": "first"}\n{"prompt": "second"}\n')
    assert [p.prompt for p in load_prompts(PromptSource(str(f)))[0]] == ["first", "second"]
    f.write_text('{"prompt": "first"}\n{"text": "x"}\n')
    with pytest.raises(PromptError, match=r"p.jsonl:2"):
        load_prompts(PromptSource(str(f)))


def test_prompt_sources_say_what_is_wrong(tmp_path, monkeypatch, capsys):
    """Empty or non-string inline prompts, binary and non-UTF-8 files: one line each, no traceback."""
    with pytest.raises(PromptError, match=r"--prompts.texts is an empty list"):
        load_prompts(PromptSource(texts=[]))  # was: read stdin, "prompt source '-' (split None)"
    with pytest.raises(PromptError, match=r"--prompts.texts\[1\] is a int, not a string"):
        load_prompts(PromptSource(texts=["ok", 3]))
    with pytest.raises(PromptError, match=r"--prompts.texts\[0\] is empty"):
        load_prompts(PromptSource(texts=["  "]))
    (tmp_path / "p.parquet").write_bytes(b"PAR1\x00\xff\xfe")
    with pytest.raises(PromptError, match=r"is a .parquet data file; pass --prompts.source hf:"):
        load_prompts(PromptSource(str(tmp_path / "p.parquet")))
    (tmp_path / "p.txt").write_bytes(b"caf\xe9\n")
    with pytest.raises(PromptError, match=r"is not UTF-8 \(byte 0x"):
        load_prompts(PromptSource(str(tmp_path / "p.txt")))

    class Terminal(io.StringIO):
        def isatty(self):
            return True

    monkeypatch.setattr("sys.stdin", Terminal("one\n"))
    assert [p.prompt for p in load_prompts(PromptSource("-", split=None))[0]] == ["one"]
    assert capsys.readouterr().err == "reading prompts from stdin, one per line (Ctrl-D to end)\n"


def test_local_hf_datasets_save_to_disk_and_data_files(tmp_path):
    import datasets

    dd = datasets.DatasetDict(
        {
            "train": datasets.Dataset.from_dict({"prompt": ["a", "b"]}),
            "test": datasets.Dataset.from_dict({"prompt": ["c"]}),
        }
    )
    dd.save_to_disk(str(tmp_path / "saved"))
    datasets.Dataset.from_dict({"prompt": ["x", "y"]}).save_to_disk(str(tmp_path / "one"))
    (tmp_path / "files").mkdir()
    datasets.Dataset.from_dict({"prompt": ["p", "q"]}).to_parquet(str(tmp_path / "files" / "part.parquet"))

    def texts(source, split="train", field="prompt"):
        return [p.prompt for p in load_prompts(PromptSource(f"hf:{source}", split=split, field=field))[0]]

    assert texts(tmp_path / "saved") == ["a", "b"] and texts(tmp_path / "saved", "test") == ["c"]
    assert texts(tmp_path / "saved", "all") == ["a", "b", "c"]
    assert texts(tmp_path / "one") == ["x", "y"]
    assert texts(tmp_path / "files") == ["p", "q"]
    assert texts(tmp_path / "files" / "part.parquet") == ["p", "q"]
    with pytest.raises(
        PromptError, match=r"has no split 'heldout'; pass --prompts.split one of \['test', 'train'\]"
    ):
        texts(tmp_path / "saved", "heldout")
    with pytest.raises(PromptError, match="has no split 'heldout'"):  # not "no column 'prompt'"
        texts(tmp_path / "files", "heldout")
    with pytest.raises(PromptError, match=r"has no column 'text'; pass --prompts.field one of \['prompt'\]"):
        texts(tmp_path / "saved", field="text")


def test_chat_messages_are_checked_and_stored_as_one_string(tmp_path):
    assert prompt_text([{"role": "user", "content": "hi"}]) == "hi" == prompt_text("hi")
    assert prompt_text(json.dumps(CHAT)) == prompt_text(CHAT) and prompt_messages(prompt_text(CHAT)) == CHAT
    for bad, why in [
        ([], "non-empty list"),
        ([{"role": "tool", "content": "x"}], "role 'tool'"),
        ([{"role": "user", "content": "x"}, {"role": "system", "content": "y"}], "only come first"),
        ([{"role": "user", "content": "x"}, {"role": "assistant", "content": "y"}], "end with a user"),
        ([{"role": "user", "content": "x", "name": "bob"}], "nothing else"),
        ([{"role": "user", "content": " "}], "non-empty text"),
    ]:
        with pytest.raises(PromptError, match=why):
            prompt_text(bad)
    f = tmp_path / "p.jsonl"
    f.write_text(json.dumps({"messages": CHAT, "category": "cooking"}) + '\n{"prompt": "second"}\n')
    rows = load_prompts(PromptSource(str(f)))[0]
    assert [prompt_messages(r.prompt) for r in rows] == [CHAT, [{"role": "user", "content": "second"}]]
    assert rows[0].category == "cooking"
    f.write_text('{"prompt": "first"}\n' + json.dumps({"messages": CHAT[:3]}) + "\n")
    with pytest.raises(PromptError, match=r"p.jsonl:2: messages must end with a user message"):
        load_prompts(PromptSource(str(f)))
    f.write_text(json.dumps({"prompt": "x", "messages": CHAT}) + "\n")
    with pytest.raises(PromptError, match=r'p.jsonl:1: has both "prompt" and "messages"'):
        load_prompts(PromptSource(str(f)))
