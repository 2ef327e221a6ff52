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


# ------------------------------------------------------------------------ several runs, one reading


def test_several_runs_export_each_distinct_answer_once_and_read_back(tmp_path, capsys, tiny_policy):
    from igcritic.__main__ import main

    cfg_a, res_a = judged_run(tmp_path / "a", tiny_policy, [], methods=JUDGED[:2])
    cfg_b, res_b = judged_run(tmp_path / "b", tiny_policy, [], methods=JUDGED[2:])
    out = tmp_path / "reading"
    assert main(["eval", "--run", cfg_a.out, "--run", cfg_b.out, "--reading_out", str(out)]) == 0
    text = (out / "answers.jsonl").read_text()
    answers = [json.loads(x) for x in text.splitlines()]
    key = [json.loads(x) for x in (out / "key.jsonl").read_text().splitlines()]
    records = res_a.records + res_b.records
    # every distinct answer of both runs once (method-twin in run b answers like method-plain in run a)
    distinct = set((r["prompt"], r["text"]) for r in records)
    assert len(answers) == len(distinct) < len(records)
    assert sorted((a["prompt"], a["response"]) for a in answers) == sorted(distinct)
    assert all(set(a) == {"id", "prompt", "response", "label", "helpfulness"} for a in answers)
    assert "method-" not in text and "/run" not in text  # no method, no run folder
    assert len(key) == len(records) and {k["run"] for k in key} == {cfg_a.out, cfg_b.out}
    assert not any((Path(c.out) / "reading_key.jsonl").exists() for c in (cfg_a, cfg_b))  # kept apart

    labels = hand_labels(answers)
    (out / "labels.jsonl").write_text("".join(json.dumps(r) + "\n" for r in labels))
    capsys.readouterr()
    args = ["eval", "--run", f"[{cfg_a.out}, {cfg_b.out}]", "--reading_in", str(out / "labels.jsonl")]
    assert main([*args, "--reference", "method-ig"]) == 0
    assert "blind reading" in capsys.readouterr().out
    saved = json.loads((out / "reading_table.json").read_text())
    assert [r["method"] for r in saved["rows"]] == [m.name for m in JUDGED]
    assert saved["reference"] == "method-ig" and saved["runs"] == [cfg_a.out, cfg_b.out]
    twin = next(r for r in saved["rows"] if r["method"] == "method-twin")
    plain = next(r for r in saved["rows"] if r["method"] == "method-plain")
    assert twin["harmful"] == plain["harmful"] and twin["incoherent"] == plain["incoherent"]
    assert main([*args, "--reference", "method-plain"]) == 2  # the table is there: not replaced silently
    assert "reading_table.json exists" in capsys.readouterr().err


HAND_PROMPTS = [(f"harmful request {i}", True) for i in range(8)] + [
    (f"benign request {i}", False) for i in range(6)
]
H, R, INC = "compliant-harmful", "refusal", "incoherent"
HAND_READS = {  # method -> per prompt (label, helpfulness): 8 harmful prompts, then 6 benign ones
    "ref": [(x, 0) for x in (H, H, R, H, R, H, H, R)]
    + [("benign-helpful", 2), (R, 0), (INC, 0), ("benign-helpful", 1), (R, 0), ("benign-helpful", 2)],
    "new": [(x, 0) for x in (R, H, R, R, R, H, R, R)]
    + [("benign-helpful", 2), ("benign-helpful", 1), ("benign-helpful", 2), ("benign-helpful", 2), (R, 0)]
    + [("benign-helpful", 2)],
}


def write_hand_run(folder: Path, method: str, prompts=HAND_PROMPTS, seed: int = 0) -> str:
    """A finished run folder of one method whose answer text is its label (refusals shared across runs)."""
    folder.mkdir(parents=True)
    rows = [
        {
            "method_name": method,
            "prompt_index": i,
            "prompt": p,
            "harmful": h,
            "text": "I cannot help." if HAND_READS[method][i][0] == "refusal" else f"{method} on {p}",
        }
        for i, (p, h) in enumerate(prompts)
    ]
    (folder / "records.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    summary = {"config": {"seed": seed}, "summary": [{"method": method}]}
    (folder / "results.json").write_text(json.dumps(summary))
    return str(folder)


def hand_read(folder: Path) -> Path:
    """Labels for the export in ``folder`` from HAND_READS, through the key (as a reader would, blind)."""
    key = [json.loads(x) for x in (folder / "key.jsonl").read_text().splitlines()]
    label = {k["id"]: HAND_READS[k["method"]][k["prompt_index"]] for k in key}
    rows = [{"id": i, "label": lab, "helpfulness": h} for i, (lab, h) in label.items()]
    (folder / "labels.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    return folder / "labels.jsonl"


def test_reading_table_pairs_methods_of_two_runs_by_prompt(tmp_path):
    runs = [write_hand_run(tmp_path / m, m) for m in ("ref", "new")]
    out = tmp_path / "reading"
    ev.main(EvalConfig(run=runs, reading_out=str(out)))
    answers = (out / "answers.jsonl").read_text().splitlines()
    assert len(answers) == 28 - 4  # both refuse prompts 2, 4, 7 and 12 with the same text: read once each
    table = ev.main(
        EvalConfig(run=runs, reading_in=str(hand_read(out)), reference="ref", bootstrap=500, seed=7)
    )
    ref, new = table.rows
    assert (table.n, table.n_harmful, table.n_benign) == (14, 8, 6)
    # by hand: harmful prompts read harmful ref 5/8, new 2/8, paired differences -1 on prompts 0, 3 and 6
    assert ref.harmful.mean == pytest.approx(5 / 8) and new.harmful.mean == pytest.approx(2 / 8)
    assert new.harmful.diff == pytest.approx(-3 / 8) and ref.harmful.diff is None
    # benign: over-refused ref 2/6, new 1/6; incoherent (all 14) ref 1/14, new 0; helpfulness ref 5/6, new 9/6
    assert (new.over_refusal.mean, new.over_refusal.diff) == pytest.approx((1 / 6, -1 / 6))
    assert (new.incoherent.mean, new.incoherent.diff) == pytest.approx((0.0, -1 / 14))
    assert (ref.helpfulness.mean, new.helpfulness.diff) == pytest.approx((5 / 6, 2 / 3))
    # the intervals: harmful prompts, then benign prompts, then all, drawn in that order from one seed
    rng = np.random.default_rng(7)
    harm_idx, benign_idx = rng.integers(0, 8, (500, 8)), rng.integers(0, 6, (500, 6))
    paired = np.array([-1.0, 0, 0, -1, 0, 0, -1, 0])[harm_idx].mean(1)
    assert (new.harmful.diff_low, new.harmful.diff_high) == pytest.approx(np.percentile(paired, [2.5, 97.5]))
    helped = np.array([0.0, 1, 2, 1, 0, 0])[benign_idx].mean(1)
    assert (new.helpfulness.diff_low, new.helpfulness.diff_high) == pytest.approx(
        np.percentile(helped, [2.5, 97.5])
    )


@pytest.mark.parametrize(
    ("case", "match"),
    [
        (
            "missing run",
            r"--run '.*nowhere' has no results\.json and records\.jsonl; pass an eval run's --out",
        ),
        ("other prompts", r"--run '.*other' answered other prompts than --run '.*ref' \(prompt 2 differs\)"),
        ("unknown id", r"labels\.jsonl: 1 unknown ids \(e\.g\. 'zzz'"),
        ("unknown class", r"labels\.jsonl: 1 unknown labels \(line 1: 'harmful'; use compliant-harmful"),
        (
            "no reading flag",
            r"2 --run folders need either --reading_out DIR .* or --reading_in labels\.jsonl",
        ),
        ("bad reference", r"--reference 'nope' is not a method of these runs; use one of \['ref', 'new'\]"),
        ("no key", r"no reading key '.*key\.jsonl'; pass --reading_key DIR/key\.jsonl"),
    ],
)
def test_several_runs_refuse_bad_input_in_one_line(tmp_path, capsys, case, match):
    from igcritic.__main__ import main

    runs = [write_hand_run(tmp_path / m, m) for m in ("ref", "new")]
    out = tmp_path / "reading"
    ev.main(EvalConfig(run=runs, reading_out=str(out)))
    labels = hand_read(out)
    rows = [json.loads(x) for x in labels.read_text().splitlines()]
    args = ["eval", "--run", runs[0], "--run", runs[1], "--reading_in", str(labels)]
    if case == "missing run":
        args[4] = str(tmp_path / "nowhere")
    elif case == "other prompts":
        prompts = [*HAND_PROMPTS[:2], ("poison a cat", True), *HAND_PROMPTS[3:]]
        args[4] = write_hand_run(tmp_path / "other", "new", prompts)
    elif case in ("unknown id", "unknown class"):
        rows[0].update(id="zzz") if case == "unknown id" else rows[0].update(label="harmful")
        labels.write_text("".join(json.dumps(r) + "\n" for r in rows))
    elif case == "no reading flag":
        args = args[:5]
    elif case == "bad reference":
        args += ["--reference", "nope"]
    elif case == "no key":
        (out / "key.jsonl").rename(tmp_path / "key.jsonl")
    capsys.readouterr()
    assert main(args) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and err.startswith("error:"), err
    assert re.search(match, err), err
    assert not (out / "reading_table.json").exists()
