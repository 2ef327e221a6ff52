"""Blind reading: answers out without method names, people's labels back as the judge ``reading``."""

from __future__ import annotations

import json
import re
from pathlib import Path

import numpy as np
import pytest
from helpers import (
    PROMPTS,
    ClassifyingJudge,
    RuleJudge,
    rule_label,
)
from helpers_eval import JUDGED, hand_labels, judged_run, render

from igcritic.eval import EvalError
from igcritic.eval import run as ev
from igcritic.eval.run import EvalConfig
from igcritic.eval.stats import resample_indices
from igcritic.eval.tables import judge_table


def test_reading_round_trip_reproduces_the_table(tmp_path, capsys, tiny_policy):
    reading = tmp_path / "reading"
    cfg, result = judged_run(
        tmp_path, tiny_policy, [ClassifyingJudge(), RuleJudge("probe")], reading_out=str(reading)
    )
    answers = [json.loads(x) for x in (reading / "answers.jsonl").read_text().splitlines()]
    key = [json.loads(x) for x in (reading / "key.jsonl").read_text().splitlines()]
    # readers see no method: fixed fields, no method name anywhere, one row per distinct answer, shuffled
    assert all(set(a) == {"id", "prompt", "response", "label", "helpfulness"} for a in answers)
    assert "method-" not in (reading / "answers.jsonl").read_text()
    distinct = list(dict.fromkeys((r["prompt"], r["text"]) for r in result.records))
    assert sorted((a["prompt"], a["response"]) for a in answers) == sorted(distinct)
    assert [(a["prompt"], a["response"]) for a in answers] != distinct
    assert len(key) == len(result.records) and {k["id"] for k in key} == {a["id"] for a in answers}
    assert (Path(cfg.out) / "reading_key.jsonl").read_text() == (reading / "key.jsonl").read_text()

    labels = hand_labels(answers)
    (tmp_path / "labels.jsonl").write_text("".join(json.dumps(r) + "\n" for r in labels))
    again = ev.main(EvalConfig(reading_in=str(tmp_path / "labels.jsonl"), run=cfg.out))
    printed = capsys.readouterr().out
    assert render(again.table()) == render(result.table())  # the same table, rebuilt from the saved records
    for k in (0, 1):  # the judges' tables too: scores, labels and rewards all came back from the records
        assert render(judge_table(again.judges[k])) == render(judge_table(result.judges[k]))
    assert [r.judge["name"] for r in again.judges] == ["rule", "probe", "reading"]
    assert "judge 'reading'" in printed and "judge 'rule'" in printed

    by_id = {a["id"]: lab for a, lab in zip(answers, labels, strict=True)}
    label_of = {(k["method"], k["prompt_index"]): by_id[k["id"]] for k in key}
    idx = resample_indices(len(PROMPTS), cfg.bootstrap, cfg.seed)
    read = {s.method: s for s in again.judges[2].methods}
    ref = np.array(
        [label_of[("method-plain", i)]["label"] == "compliant-harmful" for i in range(len(PROMPTS))], float
    )
    for m in JUDGED:
        h = np.array(
            [label_of[(m.name, i)]["label"] == "compliant-harmful" for i in range(len(PROMPTS))], float
        )
        s = read[m.name]
        assert s.harmful_rate == pytest.approx(h.mean())
        assert (s.harmful_low, s.harmful_high) == pytest.approx(
            tuple(np.percentile(h[idx].mean(1), [2.5, 97.5]))
        )
        assert s.diff == pytest.approx((h - ref).mean())
        benign = [i for i, p in enumerate(PROMPTS) if not p["harmful"]]
        over = np.mean([label_of[(m.name, i)]["label"] in ("refusal", "safe-redirect") for i in benign])
        assert s.over_refusal_rate == pytest.approx(over) and s.over_refusal_from == "labels"
        helpful = np.array([label_of[(m.name, i)]["helpfulness"] for i in range(len(PROMPTS))], float)
        assert s.reward_mean == pytest.approx(helpful.mean())
    assert read["method-twin"].diff == read["method-twin"].diff_low == read["method-twin"].diff_high == 0.0
    assert read["method-plain"].over_refusal_rate == pytest.approx(1 / 4)  # the strictly read benign answer
    saved = json.loads((Path(cfg.out) / "reading_results.json").read_text())
    assert [j["name"] for j in saved["judges"]] == ["rule", "probe", "reading"]
    assert len((Path(cfg.out) / "judges.csv").read_text().splitlines()) == 1 + 2 * len(JUDGED)
    with pytest.raises(EvalError, match="reading_results.json exists"):
        ev.main(EvalConfig(reading_in=str(tmp_path / "labels.jsonl"), run=cfg.out))


@pytest.mark.parametrize(
    ("edit", "match"),
    [
        (
            lambda rows: rows[1].update(label="harmful"),
            r"1 unknown labels \(line 2: 'harmful'; use compliant-harmful",
        ),
        (lambda rows: [r.update(label=None) for r in rows[:3]], r"3 of \d+ answers have no label"),
        (lambda rows: rows.pop(0), r"1 of \d+ answers have no label"),
        (
            lambda rows: rows[0].update(id="zzz"),
            r"1 unknown ids \(e\.g\. 'zzz'.*1 of \d+ answers have no label",
        ),
        (lambda rows: rows[0].update(helpfulness=5), r"helpfulness values outside 0, 1, 2 \(line 1: 5\)"),
        (lambda rows: rows.append(dict(rows[0])), r"1 ids labelled twice"),
    ],
)
def test_reading_in_refuses_bad_labels_in_one_line(tmp_path, edit, match, tiny_policy):
    reading = tmp_path / "reading"
    cfg, _ = judged_run(tmp_path, tiny_policy, [], methods=JUDGED[:2], reading_out=str(reading))
    answers = [json.loads(x) for x in (reading / "answers.jsonl").read_text().splitlines()]
    rows = hand_labels(answers)
    edit(rows)
    (tmp_path / "labels.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    with pytest.raises(EvalError) as e:
        ev.main(EvalConfig(reading_in=str(tmp_path / "labels.jsonl"), run=cfg.out))
    assert "\n" not in str(e.value) and str(e.value).startswith("labels.jsonl: ")
    assert re.search(match, str(e.value)), str(e.value)
    assert not (Path(cfg.out) / "reading_results.json").exists()


def test_reading_from_the_command_line_and_from_a_finished_run(tmp_path, capsys, monkeypatch, tiny_policy):
    from igcritic.__main__ import main

    monkeypatch.setenv("COLUMNS", "400")  # rich wraps at the terminal width; the message itself is one line
    cfg, result = judged_run(tmp_path, tiny_policy, [], methods=JUDGED[:2])
    assert main(["eval", "--run", cfg.out, "--reading_out", str(tmp_path / "r")]) == 0  # export afterwards
    answers = [json.loads(x) for x in (tmp_path / "r" / "answers.jsonl").read_text().splitlines()]
    rows = hand_labels(answers)
    rows[0]["label"] = "nonsense"
    (tmp_path / "bad.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    capsys.readouterr()
    assert main(["eval", "--reading_in", str(tmp_path / "bad.jsonl"), "--run", cfg.out]) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("error:") and "unknown labels" in err and len(err.splitlines()) == 1
    for r in answers:  # the filled-in answers file is a labels file too
        r.update(label=rule_label(r["prompt"], r["response"]), helpfulness=1)
    (tmp_path / "r" / "answers.jsonl").write_text("".join(json.dumps(r) + "\n" for r in answers))
    assert main(["eval", "--reading_in", str(tmp_path / "r" / "answers.jsonl"), "--run", cfg.out]) == 0
    assert "judge 'reading'" in capsys.readouterr().out
    with pytest.raises(EvalError, match="--reading_in needs --run"):
        ev.main(EvalConfig(reading_in=str(tmp_path / "bad.jsonl")))
    with pytest.raises(EvalError, match="reading_key.jsonl exists"):
        ev.main(EvalConfig(run=cfg.out, reading_out=str(tmp_path / "r2")))
