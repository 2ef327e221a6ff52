"""One method of igcritic eval: overrides reach the guard, batches, every final answer scored again."""

from __future__ import annotations

import pytest
from helpers import (
    PROMPTS,
    REFUSAL,
    TextCost,
    TextReward,
    canned_guard,
    canned_record,
    char_cycle,
    write_prompts,
)
from helpers_eval import METHODS, run_canned

from igcritic.eval.methods import final_costs, method_overrides, run_method
from igcritic.eval.run import EvalConfig, run_eval
from igcritic.prompts import PromptSource, load_prompts


@pytest.fixture()
def eval_run(tmp_path, tiny_policy):
    return run_canned(tmp_path, tiny_policy)


def test_safety_rate_uses_recomputed_cost_not_the_runtime_flag(eval_run):
    _, _, result = eval_run
    plain = result.summaries[0]
    assert plain.tracked_safety_rate == 1.0  # the canned records claim everything is safe
    n_harmful = sum(p["harmful"] for p in PROMPTS)
    assert plain.safety_rate == pytest.approx(1 - n_harmful / len(PROMPTS))  # harmful answers cost > 1
    ig = result.summaries[2]
    assert ig.refusal_rate == pytest.approx(n_harmful / len(PROMPTS))
    # refusals are scored too: the refusal text has a real cost and the refusal reward
    refused = [r for r in result.records if r["method_name"] == "ig" and r["refused"]]
    assert refused and all(r["reward_eval"] == -1.0 for r in refused)
    assert all(r["cost_eval"] == pytest.approx(0.001 * len(REFUSAL)) for r in refused)


def test_overrides_seed_and_budget_reach_the_guard(eval_run):
    cfg, guard, _ = eval_run
    assert len(guard.calls) == len(METHODS)  # batch_size 0: one call per method with every prompt
    for (prompts, budget, overrides), spec in zip(guard.calls, METHODS, strict=True):
        assert prompts == [p["prompt"] for p in PROMPTS]
        assert budget == 0.5
        assert (
            overrides["seed"] == 7 and overrides["num_candidates"] == 4 and overrides["max_new_tokens"] == 16
        )
        assert overrides["method"] == spec.overrides.method  # a method's own overrides win over search


def test_batch_size_splits_calls(tmp_path, tiny_policy):
    guard = canned_guard(tiny_policy)
    cfg = EvalConfig(
        prompts=PromptSource(str(write_prompts(tmp_path / "p.jsonl")), split="heldout", limit=None),
        methods=METHODS[:1],
        batch_size=2,
        out=str(tmp_path / "o"),
        budget=0.5,
        plots=False,
    )
    result = run_eval(cfg, guard=guard)
    n_test = sum(p["split"] == "heldout" for p in PROMPTS)
    assert [len(c[0]) for c in guard.calls] == [2, 2, 2]
    assert result.summaries[0].n == n_test and "fig2_tradeoffs.png" not in {p.name for p in result.files}
    ticks: list[int] = []  # the progress bar hears of each call's prompts, from the guard
    prompts = load_prompts(cfg.prompts)[0]
    overrides = method_overrides(cfg.search, cfg.seed, METHODS[0])
    cost, reward = TextCost(), TextReward()
    advance = lambda n, **_: ticks.append(n)  # noqa: E731
    run_method(guard, METHODS[0], prompts, overrides, 0.5, cost, reward, 2, True, advance)
    assert [n for n in ticks if n] == [2, 2, 2]


def test_final_cost_is_the_last_prefix_score(tiny_policy):
    tok = tiny_policy.tokenizer
    ids = tok("sure here is how you do it", add_special_tokens=False)["input_ids"]
    text = tok.decode(ids)
    prefixes = [tok.decode(ids[:t]) for t in range(len(ids) + 1)]
    want = max(char_cycle(t) for t in prefixes)
    assert want > char_cycle(text)  # the running max over prefixes is not the full text's score
    records = [
        canned_record(tiny_policy, "p", text),
        canned_record(tiny_policy, "p", REFUSAL),  # refusal: scored as text
        canned_record(tiny_policy, "p", "other text", token_ids=ids),  # tokens do not decode to the text
    ]
    cost = TextCost(char_cycle)
    costs, src = final_costs(cost, ["p"] * 3, records, tok)
    assert src == ["prefix", "text", "text"]
    assert costs == pytest.approx([want, char_cycle(REFUSAL), char_cycle("other text")])
    flat, src = final_costs(cost, ["p"] * 3, records, tok, prefix=False)
    assert src == ["text"] * 3 and flat[0] == pytest.approx(char_cycle(text))
