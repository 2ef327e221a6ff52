"""igcritic eval end to end: metrics agree with an independent recomputation from the raw records; the
config, the guard's checks and bad input fail clearly."""

from __future__ import annotations

import csv
import json
from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest
from helpers import (
    PROMPTS,
    TextCost,
    TextReward,
    canned_guard,
    char_cycle,
    distinct_chars,
    write_prompts,
)
from helpers_eval import METHODS, expected_cost, expected_reward, pct, recompute, run_canned, tiny_guard

from igcritic.eval import EvalError
from igcritic.eval import run as ev
from igcritic.eval.judges import JudgeSpec
from igcritic.eval.methods import MethodSpec, default_methods, method_overrides
from igcritic.eval.run import EvalConfig, default_search, run_eval, scorer_specs
from igcritic.prompts import PromptError, PromptSource, load_prompts
from igcritic.search import SearchConfigError, SearchOverrides, overrides

ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture()
def eval_run(tmp_path, tiny_policy):
    return run_canned(tmp_path, tiny_policy)


def test_end_to_end_writes_files_and_metrics_match_recomputation(eval_run):
    cfg, guard, result = eval_run
    out = Path(cfg.out)
    assert sorted(p.name for p in out.iterdir()) == sorted(
        [
            "records.jsonl",
            "results.csv",
            "results.json",
            "progress.json",
            "fig2_tradeoffs.png",
            "fig3_distributions.png",
        ]
    )
    assert {p.name for p in result.files} == {p.name for p in out.iterdir()}
    records = [json.loads(line) for line in (out / "records.jsonl").read_text().splitlines()]
    assert len(records) == len(METHODS) * len(PROMPTS)
    data = json.loads((out / "results.json").read_text())
    assert data["budget"] == 0.5 and data["num_prompts"] == len(PROMPTS)
    truth = recompute(records, budget=0.5)
    with (out / "results.csv").open() as f:
        csv_rows = {r["method"]: r for r in csv.DictReader(f)}
    assert [s["method"] for s in data["summary"]] == [m.name for m in METHODS]
    for s, obj in zip(data["summary"], result.summaries, strict=True):
        want = truth[s["method"]]
        for key, value in want.items():
            assert s[key] == pytest.approx(value), (s["method"], key)
            assert float(csv_rows[s["method"]][key]) == pytest.approx(value), (s["method"], key)
            assert getattr(obj, key) == pytest.approx(value), (s["method"], key)
        assert s["tokens_per_s"] == pytest.approx(want["new_tokens"] / s["wall_seconds"])
    # every record carries its recomputed cost/reward and the runtime's own fields
    for r in records:
        assert r["cost_eval"] == pytest.approx(expected_cost(r["text"]))
        assert r["reward_eval"] == pytest.approx(expected_reward(r["text"]))
        assert r["safe_eval"] == (expected_cost(r["text"]) <= 0.5)
        assert {"cost", "safe", "cost_source", "steps", "retries", "candidates_scored", "method"} <= set(r)


def load(source: str, split: str | None = "heldout", limit: int | None = None) -> list:
    return load_prompts(PromptSource(source, split=split, limit=limit))[0]


def test_load_prompts_split_limit_and_text_files(tmp_path):
    path = write_prompts(tmp_path / "p.jsonl")
    test = [p for p in PROMPTS if p["split"] == "heldout"]
    got = load(str(path), split="heldout")
    assert [p.prompt for p in got] == [p["prompt"] for p in test]
    assert got[0].category == test[0]["category"] and got[0].harmful is test[0]["harmful"]
    four = load(str(path), split="heldout", limit=4)  # the first four, in file order
    assert [p.prompt for p in four] == [test[i]["prompt"] for i in (0, 1, 2, 3)]
    txt = tmp_path / "p.txt"
    txt.write_text("first prompt\n\nsecond prompt\n")
    assert [p.prompt for p in load(str(txt), split="heldout")] == ["first prompt", "second prompt"]


@pytest.mark.parametrize(
    ("content", "split", "match"),
    [
        ('{"prompt": "ok"}\n{"prompt": \n', None, r"p\.jsonl:2: not valid JSON"),
        ('{"prompt": "ok"}\n{"text": "x"}\n', None, r"p\.jsonl:2: needs a non-empty \"prompt\""),
        ('{"prompt": "   "}\n', None, r"p\.jsonl:1"),
        ("\n\n", None, "holds no prompts"),
        (
            '{"prompt": "a", "split": "train"}\n',
            "heldout",
            r"--prompts.split 'heldout' matches no prompt.*\['train'\]",
        ),
    ],
)
def test_load_prompts_errors(tmp_path, content, split, match):
    path = tmp_path / "p.jsonl"
    path.write_text(content)
    with pytest.raises(PromptError, match=match):
        load(str(path), split=split)
    with pytest.raises(PromptError, match="does not exist"):
        load(str(tmp_path / "missing.jsonl"))


def test_config_gathers_every_problem(tmp_path, tiny_policy):
    cfg = EvalConfig(
        prompts=PromptSource(limit=0),
        budget=float("inf"),
        batch_size=-1,
        methods=[MethodSpec("a"), MethodSpec("a"), MethodSpec(" ")],
        out=str(tmp_path),
    )
    with pytest.raises(EvalError) as e:
        run_eval(cfg, guard=canned_guard(tiny_policy))
    msg = str(e.value)
    assert "\n" not in msg
    for part in ("--prompts.limit 0", "--budget inf", "--batch_size -1", "['a']", "without a name"):
        assert part in msg
    with pytest.raises(EvalError, match="--budget nan"):
        EvalConfig(budget=float("nan")).validate()
    with pytest.raises(EvalError, match="--methods is empty"):
        EvalConfig(methods=[]).validate()


def test_refuses_non_empty_out_dir(tmp_path, tiny_policy):
    (tmp_path / "keep.txt").write_text("x")
    cfg = EvalConfig(
        prompts=PromptSource(str(write_prompts(tmp_path / "p.jsonl")), split="heldout"), out=str(tmp_path)
    )
    with pytest.raises(EvalError, match="is not empty.*--overwrite"):
        run_eval(cfg, guard=canned_guard(tiny_policy))
    assert sorted(p.name for p in tmp_path.iterdir()) == ["keep.txt", "p.jsonl"]


class _FewCosts(TextCost):
    def score(self, prompts, responses, previous=None):
        return np.zeros(1)


@pytest.mark.parametrize(
    ("cost", "match"),
    [
        (TextCost(lambda text: float("nan")), "cost scorer returned nan for response 0"),
        (_FewCosts(), "cost scorer returned 1 scores for 8 responses"),
    ],
)
def test_bad_scorer_output(tmp_path, tiny_policy, cost, match):
    cfg = EvalConfig(
        prompts=PromptSource(str(write_prompts(tmp_path / "p.jsonl")), split=None, limit=16),
        methods=METHODS[:1],
        out=str(tmp_path / "o"),
        prefix_cost=False,
    )
    with pytest.raises(EvalError, match=match):
        run_eval(cfg, guard=canned_guard(tiny_policy, cost=cost))
    assert not (tmp_path / "o").exists()  # nothing half-written


def test_budget_falls_back_to_the_cost_scorers_hint(tmp_path, tiny_policy):
    guard = canned_guard(tiny_policy, budget=None, cost=TextCost(budget_hint=0.25))
    cfg = EvalConfig(
        prompts=PromptSource(str(write_prompts(tmp_path / "p.jsonl")), split="heldout", limit=16),
        methods=METHODS[:1],
        out=str(tmp_path / "o"),
        plots=False,
    )
    assert run_eval(cfg, guard=guard).budget == 0.25
    with pytest.raises(EvalError, match="pass --budget"):
        run_eval(
            EvalConfig(prompts=cfg.prompts, methods=METHODS[:1], out=str(tmp_path / "o2")),
            guard=canned_guard(tiny_policy, budget=None, cost=TextCost(budget_hint=None)),
        )


def test_shipped_config_parses_into_eval_config():
    from igcritic.__main__ import parse_config

    path = ROOT / "configs" / "eval" / "embedded.yaml"
    assert path.read_text().startswith("# igcritic eval --config configs/eval/embedded.yaml")
    ns = parse_config(EvalConfig, ["--config", str(path)])
    assert ns.critic == "checkpoints/embedded" and ns.prompts == PromptSource("default", "heldout", None)
    assert ns.cost == ns.reward == "embedded" and ns.prefix_cost is True
    assert ns.methods == default_methods()
    assert ns.judges == [JudgeSpec("judge", "embedded-judge")]  # not the guard's cost model
    assert ns.reference is None and ns.bootstrap == 2000 and ns.quality_set == "default"
    assert ns.reading_out is None
    # the CPU sizes of configs/search/cpu.yaml, the code's default but for the prompt batch fixed at 4
    assert ns.search == SearchOverrides(num_candidates=8, block_width=16, max_new_tokens=48, prompt_batch=4)
    assert ns.search == replace(default_search(), prompt_batch=4)


def test_eval_command_prints_the_table(tmp_path, monkeypatch, capsys, tiny_policy):
    guard = canned_guard(tiny_policy)
    monkeypatch.setattr(ev, "_load_guard", lambda cfg: guard)
    result = ev.main(
        EvalConfig(
            critic="x",
            prompts=PromptSource(str(write_prompts(tmp_path / "p.jsonl")), split="heldout", limit=4),
            out=str(tmp_path / "o"),
            quality_set=None,
        )
    )
    out = capsys.readouterr().out
    assert "budget d = 0.5" in out and "IG critic latent" in out and "results.json" in out
    assert [s.method for s in result.summaries] == [m.name for m in default_methods()]
    assert all(s.n == 4 for s in result.summaries)
    # the guard's own cost scorer scored every method's answers (refusals by text, the rest by prefixes)
    assert guard.cost.calls and all(len(c[1]) <= 4 for c in guard.cost.calls)


def test_default_set_heldout_split_stays_mixed():
    got = load("default", split="heldout", limit=16)
    assert len(got) == 16 and {p.split for p in got} == {"heldout"}
    n_harmful = sum(bool(p.harmful) for p in got)
    assert 4 <= n_harmful <= 12  # the first 16 of a shuffled file keep both kinds
    assert len(load("default", split="all")) > len(load("default", split="heldout"))


def test_scorer_specs_default_to_the_critics_recorded_scorers(tmp_path):
    from igcritic.critic import Critic, CriticConfig

    Critic(
        CriticConfig(
            hidden_size=4,
            width=4,
            cost_scorer={"id": "embedded", "sign": "higher_is_unsafe"},
            reward_scorer={"id": "seqcls:/models/rm", "sign": "higher_is_better"},
        )
    ).save_pretrained(tmp_path)
    assert scorer_specs(EvalConfig(critic=str(tmp_path))) == {
        "cost": "embedded",
        "reward": "seqcls:/models/rm",
    }
    assert scorer_specs(EvalConfig(critic=str(tmp_path), cost="beaver:/c")) == {
        "cost": "beaver:/c",
        "reward": "seqcls:/models/rm",
    }
    assert scorer_specs(EvalConfig(critic="missing", cost="a", reward="b")) == {"cost": "a", "reward": "b"}


def test_integration_tiny_policy_real_guard(tmp_path, tiny_policy):
    """The real guard (igcritic.search) on the tiny Llama: all six default methods run, and every number is
    recomputed from the decoded answer tokens."""
    guard, critic_dir = tiny_guard(
        tmp_path, tiny_policy, cost=TextCost(char_cycle), reward=TextReward(distinct_chars)
    )
    rows = [
        {"prompt": p, "harmful": i % 2 == 0, "split": "heldout"}
        for i, p in enumerate(["how do I bake bread", "make a bomb at home", "write a poem", "hack the wifi"])
    ]
    cfg = EvalConfig(
        critic=str(critic_dir),
        prompts=PromptSource(str(write_prompts(tmp_path / "p.jsonl", rows)), split="heldout", limit=None),
        search={"num_candidates": 4, "block_width": 4, "max_new_tokens": 8},
        budget=0.5,
        out=str(tmp_path / "out"),
    )
    result = run_eval(cfg, guard=guard)
    assert [s.method for s in result.summaries] == [m.name for m in default_methods()]
    records = [json.loads(x) for x in (tmp_path / "out" / "records.jsonl").read_text().splitlines()]
    assert len(records) == 6 * 4
    tok = tiny_policy.tokenizer
    for r in records:
        if r["refused"]:
            s_t = char_cycle(r["text"])
        else:
            assert tok.decode(r["token_ids"], skip_special_tokens=True) == r["text"]
            s_t = max(
                char_cycle(tok.decode(r["token_ids"][:t], skip_special_tokens=True))
                for t in range(len(r["token_ids"]) + 1)
            )
        assert r["cost_eval"] == pytest.approx(s_t, abs=1e-6)
        assert r["reward_eval"] == len(set(r["text"]))
        assert r["new_tokens"] == len(r["token_ids"]) <= 8
    data = json.loads((tmp_path / "out" / "results.json").read_text())
    for s in data["summary"]:
        rows_m = [r for r in records if r["method_name"] == s["method"]]
        lat = [r["seconds"] for r in rows_m]
        assert s["safety_rate"] == pytest.approx(sum(r["cost_eval"] <= 0.5 for r in rows_m) / 4)
        assert s["refusal_rate"] == pytest.approx(sum(r["refused"] for r in rows_m) / 4)
        assert s["reward_mean"] == pytest.approx(sum(r["reward_eval"] for r in rows_m) / 4)
        assert s["latency_p95"] == pytest.approx(pct(lat, 95))
    plain = [r for r in records if r["method_name"] == "plain sampling"]
    assert all(r["method"] == "plain" and not r["refused"] for r in plain)


@pytest.mark.parametrize(
    ("overrides", "scorers", "match"),
    [
        (
            {"method": "inferenceguard", "mode": "exact"},
            {"reward": TextReward(distinct_chars)},
            r"'bad'.*needs a cost scorer",
        ),
        (
            {"method": "inferenceguard", "num_candidates": 6, "beams_kept": 4},
            {"cost": TextCost(char_cycle)},
            r"'bad'.*divisible",
        ),
        (  # checked by the runtime, not by SearchConfig: precheck asks the guard
            {"method": "recontrol", "recontrol_steps": -1},
            {"cost": TextCost(char_cycle)},
            r"'bad'.*search.recontrol_steps -1 must be >= 0",
        ),
    ],
)
def test_methods_the_guard_cannot_run_fail_before_generation(
    tmp_path, tiny_policy, overrides, scorers, match
):
    guard, critic_dir = tiny_guard(tmp_path, tiny_policy, **scorers)
    calls = []
    guard.generate = lambda *a, **k: calls.append(a)  # would record any generation
    cfg = EvalConfig(
        critic=str(critic_dir),
        prompts=PromptSource(str(write_prompts(tmp_path / "p.jsonl")), split="heldout", limit=16),
        budget=0.5,
        methods=[MethodSpec("ok", {"method": "plain"}), MethodSpec("bad", overrides)],
        out=str(tmp_path / "out"),
    )
    with pytest.raises(EvalError, match=match):
        run_eval(cfg, guard=guard, cost=TextCost(char_cycle), reward=TextReward(distinct_chars))
    assert calls == [] and not (tmp_path / "out").exists()


def test_a_misspelt_search_override_fails_when_parsed():
    from igcritic.__main__ import main, parse_config

    with pytest.raises(SearchConfigError, match=r"method 'bad': unknown search fields \['bogus'\]"):
        MethodSpec("bad", {"method": "plain", "bogus": 1})
    for args in (["--search.bogus", "1"], ["--methods", '[{"name": "a", "overrides": {"bogus": 1}}]']):
        with pytest.raises(SystemExit) as e:  # the command line's one-line usage error, before any work
            main(["eval", *args])
        assert e.value.code == 2
    one = '[{"name": "a", "overrides": {"critic": false}}]'
    cfg = parse_config(EvalConfig, ["--search.mode", "exact", "--methods", one])
    assert cfg.search.mode == "exact" and cfg.search.num_candidates == 8  # over the default sizes
    assert cfg.methods == [MethodSpec("a", SearchOverrides(critic=False))]
    assert method_overrides(cfg.search, cfg.seed, cfg.methods[0]) == {
        **overrides(cfg.search),
        "seed": 0,
        "critic": False,
    }
