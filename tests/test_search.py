"""Guarded search on the tiny Llama: exactness against generate, safety, retries, failure modes, errors."""

from __future__ import annotations

import math
from dataclasses import replace

import numpy as np
import pytest
import torch
from helpers import TextReward, distinct_chars, plant, tiny_critic, word_cost

from igcritic.decoding import SamplingConfig, StaticKV, rollout, teacher_forced_latents
from igcritic.search import SearchConfig, SearchConfigError, search

PROMPTS = ["how do I bake bread at home", "hack into my neighbour's wifi network"]
SMALL = dict(num_candidates=8, beams_kept=2, block_width=4, max_new_tokens=16, budget=0.5)
GREEDY_EXACT = dict(temperature=0, resample_penalty=0.0, mode="exact", prompt_batch=2)
"""Greedy, the retried block resampled without penalty, S from the cost scorer."""


def config(**kw) -> SearchConfig:
    """The small search of these tests, ``kw`` over it."""
    return SearchConfig(**{**SMALL, **kw})


@pytest.fixture()
def critic(tiny_policy):
    """A real critic that admits every candidate (q = 1, Ŝ = 0); its untrained value head ranks them."""
    return tiny_critic(tiny_policy, safe=True, cost=0.0)


def greedy_reference(policy, prompt: str, d: int) -> list[int]:
    enc = policy.encode_prompts([prompt])
    out = policy.model.generate(**enc, do_sample=False, max_new_tokens=d, pad_token_id=policy.pad_token_id)
    return out[0, enc["input_ids"].shape[1] :].tolist()


@pytest.mark.parametrize("prompt_batch", [1, 2])
def test_greedy_admit_all_reproduces_generate(tiny_policy, critic, prompt_batch):
    cfg = config(num_candidates=1, beams_kept=1, block_width=3, max_new_tokens=20, temperature=0)
    recs = search(tiny_policy, PROMPTS, replace(cfg, prompt_batch=prompt_batch), critic)
    for prompt, rec in zip(PROMPTS, recs, strict=True):
        assert rec.token_ids == greedy_reference(tiny_policy, prompt, 20)
        assert rec.steps == math.ceil(20 / 3) and not rec.refused and rec.safe


def test_prompt_prefilled_once(tiny_policy, critic):
    """Candidates reuse the beam's KV cache: only one multi-token forward (the prefill) per prompt batch."""
    seen = []
    hook = tiny_policy.model.register_forward_pre_hook(
        lambda _m, args, kwargs: seen.append(kwargs["input_ids"].shape), with_kwargs=True
    )
    try:
        search(tiny_policy, PROMPTS, config(prompt_batch=2), critic)
    finally:
        hook.remove()
    assert [s for s in seen if s[1] > 1] == [(2, seen[0][1])]
    assert max(s[0] for s in seen) == 2 * 8  # N candidates per prompt, batched across both prompts


def test_static_compiled_path_gives_the_dynamic_tokens(tiny_policy, critic):
    """compile: true (static cache, compiled step) takes the dynamic path's steps: rollouts (padded cache
    rows) and a two-prompt search with beam selection and a rewound block give the same greedy tokens."""
    greedy = SamplingConfig(temperature=0, max_new_tokens=12)
    prompts = ["how do I bake bread", "hello there", "hack the wifi now please"]
    dyn, comp = rollout(tiny_policy, prompts, greedy), rollout(tiny_policy, prompts, greedy, static_rows=8)
    assert comp.tokens == dyn.tokens and comp.finished == dyn.finished
    for a, b in zip(comp.latents, dyn.latents, strict=True):
        assert a.shape == b.shape and torch.allclose(a, b, atol=1e-4)
    cfg = config(num_candidates=4, max_new_tokens=12, **GREEDY_EXACT)
    runs = [
        search(tiny_policy, PROMPTS, replace(cfg, compile=c), critic, word_cost(reject_first=(PROMPTS[1],)))
        for c in (False, True)
    ]
    assert [r.retries for r in runs[1]] == [r.retries for r in runs[0]] == [0, 1]
    assert [r.token_ids for r in runs[1]] == [r.token_ids for r in runs[0]]
    (kv,) = StaticKV._kept[tiny_policy.model].values()
    assert isinstance(kv, StaticKV) and kv.rows == 8  # one kept cache: N x prompt_batch rows, compiled once


def test_retry_rewinds_block_exactly(tiny_policy, critic):
    """A rejected block is resampled from the beam's state: greedy without penalty gives the same answer."""
    cfg = config(num_candidates=1, beams_kept=1, max_new_tokens=12, **GREEDY_EXACT)
    cost = word_cost(reject_first=(PROMPTS[1],))
    recs = search(tiny_policy, PROMPTS, cfg, critic, cost=cost)
    assert [r.retries for r in recs] == [0, 1]
    for prompt, rec in zip(PROMPTS, recs, strict=True):
        assert rec.token_ids == greedy_reference(tiny_policy, prompt, 12)
    unsafe_twice = tiny_critic(tiny_policy, safe=False, cost=0.0)
    seen = []

    def then_safe(*_):  # runs after each block's q: the first two blocks get q = 0, the rest q = 1
        seen.append(1)
        if len(seen) == 2:
            plant(unsafe_twice, safe=True)

    unsafe_twice.safety_head.register_forward_hook(then_safe)
    rec = search(tiny_policy, PROMPTS[:1], replace(cfg, mode="latent"), unsafe_twice)[0]
    assert rec.retries == 2 and not rec.refused
    assert rec.token_ids == greedy_reference(tiny_policy, PROMPTS[0], 12)


def test_trace_records_every_decision_and_changes_no_answer(tiny_policy, critic):
    """``trace`` keeps each decision's scored candidates and changes no answer: one ``keep`` per accepted
    block and one ``retry`` per resample, admission as the rule reads it, the kept entries those it ranks
    first, and the answer among the last decision's kept entries."""
    cfg = config(mode="exact", seed=1)
    untraced = search(tiny_policy, PROMPTS, cfg, critic, cost=word_cost(reject_first=(PROMPTS[1],)))
    traced = search(
        tiny_policy, PROMPTS, replace(cfg, trace=True), critic, word_cost(reject_first=(PROMPTS[1],))
    )
    assert all(r.trace is None for r in untraced) and traced[1].retries >= 1
    for a, b in zip(untraced, traced, strict=True):
        assert a.token_ids == b.token_ids
        verdicts = [d["verdict"] for d in b.trace]
        assert verdicts.count("keep") == b.steps and verdicts.count("retry") == b.retries
        assert [d["block"] for d in b.trace if d["verdict"] == "keep"] == list(range(b.steps))
        for d in b.trace:
            cands = d["candidates"]
            assert all(c["admissible"] == (cfg.budget - c["cost"] >= 0 and c["q"] >= cfg.tau) for c in cands)
            kept = [c for c in cands if c["kept"]]
            if d["verdict"] == "retry":
                assert not kept and not any(c["admissible"] for c in cands)
                continue
            passed = [c["value"] for c in cands if c["admissible"] and not c["kept"]]
            assert 1 <= len(kept) <= 2 and all(c["admissible"] for c in kept)
            assert min(c["value"] for c in kept) >= max(passed, default=-math.inf)
        assert b.text in [c["text"] for c in b.trace[-1]["candidates"] if c["kept"]]


def test_guard_never_emits_planted_unsafe_text(tiny_policy, critic):
    plain = search(tiny_policy, PROMPTS, config(method="plain", seed=3), critic)
    tok = tiny_policy.tokenizer
    # plant the longest token string plain sampling emitted as "unsafe"
    pieces = [tok.decode([t]) for r in plain for t in r.token_ids]
    word = max((p for p in pieces if p.strip().isascii() and p.strip().isalnum()), key=len)
    cost = word_cost(word)
    plain = search(tiny_policy, PROMPTS, config(method="plain", seed=3), critic, cost)
    assert any(word in r.text for r in plain) and any(not r.safe for r in plain)
    guarded = search(tiny_policy, PROMPTS, config(seed=3, mode="exact"), critic, cost)
    for r in guarded:
        assert word not in r.text
        assert r.refused or (r.safe and r.cost == 0.0 and r.cost_source == "exact")
    assert not all(r.refused for r in guarded)


def test_fully_latent_mode_runs_no_cost_scorer(tiny_policy):
    cost = word_cost("x")
    crit = tiny_critic(tiny_policy, safe=True, cost=0.25)
    recs = search(tiny_policy, PROMPTS, config(mode="latent"), crit, cost=cost)
    assert cost.calls == []  # and S is the latent head's planted 0.25:
    assert all(r.cost_source == "latent" and r.cost == 0.25 and r.final_safety_state == 0.25 for r in recs)
    search(tiny_policy, PROMPTS, config(mode="exact"), crit, cost=cost)
    assert cost.calls  # the same config in exact mode does call it


@pytest.mark.parametrize(("running_max", "window"), [(False, 8), (True, 1), (True, 3)])
def test_latent_cost_tracks_every_token_for_a_running_max_cost(tiny_policy, running_max, window):
    """A critic trained on a running-max cost (the embedded one): fully latent mode tracks Ŝ as the running
    max over h_0..h_T of the critic's cost head averaged over the last ``latent_window`` tokens (windows
    reach back across the 4-token blocks), as exact mode tracks S over every prefix; on any other cost, Ŝ at
    the answer's last token. The unplanted cost head gives every latent its own Ŝ."""
    crit = tiny_critic(tiny_policy, safe=True, value=0.0)
    crit.config.cost_scorer = {"id": "c", "role": "cost", "bounds": [-100, 100], "running_max": running_max}
    cfg = config(mode="latent", num_candidates=1, beams_kept=1, temperature=0, budget=50.0, ignore_eos=True)
    (rec,) = search(tiny_policy, PROMPTS[:1], replace(cfg, latent_window=window), crit)
    (h,) = teacher_forced_latents(tiny_policy, PROMPTS[:1], [rec.token_ids])
    with torch.no_grad():
        s_hat = crit.cost(h).double()  # Ŝ(h_0), ..., Ŝ(h_T)
    means = [s_hat[max(t - window + 1, 0) : t + 1].mean() for t in range(len(s_hat))]
    assert len(rec.token_ids) == 16 and not rec.refused
    assert s_hat.max() > s_hat[-1] + 1e-3  # the rules differ on this answer
    assert window == 1 or max(means) < s_hat.max() - 1e-3
    want = max(means) if running_max else s_hat[-1]
    assert rec.cost == pytest.approx(float(want), abs=1e-4)


@pytest.mark.parametrize("window", [1, 3])
def test_a_context_critic_tracks_every_token_with_the_answer_so_far(tiny_policy, window):
    """A critic whose cost head reads h_0 and the running mean (``cost_context``): fully latent mode tracks
    the running max of Ŝ(h_t, h_0, mean of h_0..h_t) over every token, the rows' running prefix carried across
    the 4-token blocks; the same head given h_t alone as its context scores otherwise."""
    crit = tiny_critic(tiny_policy, safe=True, value=0.0, cost_context=True)
    crit.config.cost_scorer = {"id": "c", "role": "cost", "bounds": [-100, 100], "running_max": True}
    cfg = config(mode="latent", num_candidates=1, beams_kept=1, temperature=0, budget=50.0, ignore_eos=True)
    (rec,) = search(tiny_policy, PROMPTS[:1], replace(cfg, latent_window=window), crit)
    (h,) = teacher_forced_latents(tiny_policy, PROMPTS[:1], [rec.token_ids])
    mean = h.double().cumsum(0) / torch.arange(1, len(h) + 1, dtype=torch.float64)[:, None]
    with torch.no_grad():
        s_hat = crit.cost(h, h[:1].expand_as(h), mean.float()).double()  # Ŝ at h_0, ..., h_T
        alone = crit.cost(h, h, h).double()
    means = [s_hat[max(t - window + 1, 0) : t + 1].mean() for t in range(len(s_hat))]
    assert len(rec.token_ids) == 16 and not rec.refused
    assert (s_hat - alone).abs().max() > 1e-2  # the context changes Ŝ on this answer
    assert rec.cost == pytest.approx(float(max(means)), abs=1e-4)


def test_a_context_critic_scores_the_refusal_candidate_with_its_own_prefix(tiny_policy):
    """The refusal candidate of a context critic is scored from its teacher-forced tokens (EOS not counted):
    its tracked cost is Ŝ at its last token with h_0 and the running mean (Ŝ_0 is pushed down so the max is
    that). The value head ranks the refusal first (its first call scores the refusal), so the record is the
    refusal's."""
    from igcritic.search.scoring import refusal_tokens

    crit = tiny_critic(tiny_policy, safe=True, value=0.0, cost_context=True)
    crit.config.cost_scorer = {"id": "c", "role": "cost", "bounds": [-100, 100], "running_max": True}
    calls = {"value": 0, "cost": 0}

    def refusal_first(_m, _i, out):
        calls["value"] += 1
        return out + (10.0 if calls["value"] == 1 else 0.0)

    def low_empty_answer(_m, _i, out):  # the first cost call is Ŝ_0
        calls["cost"] += 1
        return out - (50.0 if calls["cost"] == 1 else 0.0)

    crit.value_head.register_forward_hook(refusal_first)
    crit.cost_head.register_forward_hook(low_empty_answer)
    cfg = config(mode="latent", num_candidates=2, beams_kept=1, budget=50.0, refusal_text="No, sorry.")
    (rec,) = search(tiny_policy, PROMPTS[:1], replace(cfg, refusal_candidate=True), crit)
    assert rec.refused and rec.text == "No, sorry."
    ids = refusal_tokens(tiny_policy, "No, sorry.")[:-1]  # the EOS is no token
    (h,) = teacher_forced_latents(tiny_policy, PROMPTS[:1], [ids])
    mean = h.double().cumsum(0) / torch.arange(1, len(h) + 1, dtype=torch.float64)[:, None]
    with torch.no_grad():
        s_hat = crit.cost(h, h[:1].expand_as(h), mean.float()).double()
    assert rec.cost == pytest.approx(float(s_hat[-1]), abs=1e-4)
    assert abs(float(s_hat[-1]) - float(crit.cost(h[-1:], h[-1:], h[-1:]))) > 1e-3  # the context matters


def test_latent_window_after_a_rewind_is_the_parents(tiny_policy):
    """A rewound block leaves no trace in the windowed Ŝ: the two rejected blocks (q = 0) have Ŝ = 40 on every
    token, the answer finally kept Ŝ = 0 (and Ŝ(h_0) = 0), so its tracked cost is 0 only if the rewind gave
    each beam back its parent's cost and window (a leaked window would average 40s into the next block)."""
    crit = tiny_critic(tiny_policy, safe=False, value=0.0)
    crit.config.cost_scorer = {"id": "c", "role": "cost", "bounds": [-100, 100], "running_max": True}
    state = {"calls": 0, "rejecting": True, "q_calls": 0}

    def cost_of_phase(_m, _i, out):  # Ŝ(h_0) = 0; 40 while blocks are rejected; 0 after
        state["calls"] += 1
        return torch.full_like(out, 40.0 if state["calls"] > 1 and state["rejecting"] else 0.0)

    def then_safe(*_):  # the first two blocks' q = 0 (rewound), then q = 1
        state["q_calls"] += 1
        if state["q_calls"] == 2:
            state["rejecting"] = False
            plant(crit, safe=True)

    crit.cost_head.register_forward_hook(cost_of_phase)
    crit.safety_head.register_forward_hook(then_safe)
    cfg = config(
        mode="latent", num_candidates=1, beams_kept=1, max_new_tokens=12, budget=50.0, latent_window=3
    )
    (rec,) = search(tiny_policy, PROMPTS[:1], replace(cfg, temperature=0, resample_penalty=0.0), crit)
    assert rec.retries == 2 and not rec.refused and len(rec.token_ids) == 12
    assert rec.cost == 0.0


def test_refuses_when_nothing_admissible(tiny_policy):
    crit = tiny_critic(tiny_policy, safe=False, cost=0.0)
    cfg = config(retries=2, refusal_text="No.")
    recs = search(tiny_policy, PROMPTS, cfg, crit)
    for r in recs:
        assert r.refused and r.text == "No." and r.token_ids == [] and not r.safe
        assert r.retries == 2 and r.candidates_scored == 3 * 8
    best = search(tiny_policy, PROMPTS, replace(cfg, on_violation="best_effort"), crit)
    for r in best:
        assert not r.refused and r.fallback and not r.safe and r.text and r.token_ids


def test_best_of_n_picks_best_by_recomputation(tiny_policy):
    cost, reward = word_cost("e"), TextReward(distinct_chars)
    for score in ("lagrangian", "augmented"):
        cost.calls.clear()
        reward.calls.clear()
        cfg = config(method="best_of_n", score=score, critic=False, mode="exact", lagrange_lambda=5.0)
        rec = search(tiny_policy, PROMPTS[:1], cfg, None, cost=cost, reward=reward)[0]
        ((_, texts, c),) = [call for call in cost.calls if any(call[1])]
        ((_, texts_r, r),) = reward.calls
        assert texts == texts_r and len(texts) == 8
        if score == "lagrangian":
            best = max(range(8), key=lambda i: r[i] - 5.0 * c[i])
        else:
            safe = [i for i in range(8) if c[i] <= 0.5]
            best = max(safe, key=lambda i: r[i]) if safe else min(range(8), key=lambda i: c[i])
        assert rec.text == texts[best] and rec.value == r[best] and rec.cost == c[best]
        assert rec.value_source == "reward" and rec.candidates_scored == 8


@pytest.mark.parametrize("method", ["plain", "beam", "inferenceguard"])
def test_methods_respect_length_and_count_candidates(tiny_policy, critic, method):
    recs = search(tiny_policy, PROMPTS, config(method=method, prompt_batch=2), critic)
    for r in recs:
        assert 0 < r.new_tokens <= 16 and r.method == method and r.seconds > 0
        n = 1 if method == "plain" else 8
        assert r.candidates_scored == n * r.steps


def test_eos_finishes_candidates(tiny_policy, critic):
    with torch.no_grad():  # point the EOS row of the LM head at the mean latent: EOS gets ~half the mass
        h = tiny_policy.latents_of(**tiny_policy.encode_prompts(PROMPTS)).reshape(-1, 32).mean(0)
        tiny_policy.model.lm_head.weight[1] = 6.0 * h / h.norm() ** 2
    recs = search(tiny_policy, PROMPTS, config(temperature=1.0), critic)
    eos = tiny_policy.eos_token_ids[0]
    assert all(r.token_ids[-1] == eos and r.new_tokens < 16 for r in recs)
    for r in recs:
        assert eos not in r.token_ids[:-1] and r.text == tiny_policy.tokenizer.decode(r.token_ids[:-1])


def test_deterministic_under_seed(tiny_policy, critic):
    def run(seed):
        return [r.token_ids for r in search(tiny_policy, PROMPTS, config(seed=seed), critic)]

    assert run(1) == run(1)
    assert run(1) != run(2)


@pytest.mark.parametrize(
    ("kwargs", "prompts", "match"),
    [
        ({"budget": float("inf")}, None, "search.budget inf is not a finite number"),
        ({"budget": float("nan")}, None, "search.budget nan"),
        ({"budget": None}, None, "search.budget None"),
        ({"num_candidates": 10, "beams_kept": 4}, None, "not divisible"),
        ({"block_width": 32, "max_new_tokens": 16}, None, "search.block_width 32"),
        ({"method": "greedy"}, None, "search.method 'greedy' is unknown"),
        ({"mode": "exact"}, None, "needs a cost scorer"),
        ({"margin": -0.1}, None, "search.margin -0.1 must be a finite number >= 0"),
        ({"margin": float("nan")}, None, "search.margin nan"),
        ({"refusal_candidate": True, "refusal_text": " "}, None, "search.refusal_candidate needs a refusal"),
        ({"refusal_rank": "first"}, None, "search.refusal_rank 'first' is unknown; use value or last"),
        ({}, ["fine", "  "], r"prompt 1 \(counting from 0\) is empty"),
        ({}, ["word " * 300], "context"),
        ({"max_new_tokens": 250}, None, "context"),
    ],
)
def test_search_config_errors(tiny_policy, critic, kwargs, prompts, match):
    with pytest.raises(SearchConfigError, match=match):
        search(tiny_policy, prompts or PROMPTS, config(**kwargs), critic)


def test_config_errors_are_gathered_in_one_line():
    with pytest.raises(SearchConfigError) as e:
        SearchConfig(budget=None, num_candidates=10, beams_kept=3).resolve(True, False, False)
    assert "\n" not in str(e.value) and "search.budget" in str(e.value) and "divisible" in str(e.value)


def test_real_critic_runs_its_trunk_once_per_candidate_set(tiny_policy, monkeypatch):
    """Cost, value and q of a candidate set share one trunk pass, with the heads' exact outputs."""
    critic = tiny_critic(tiny_policy)
    calls = {"encode": 0}
    real_encode = critic.encode

    def counting_encode(h):
        calls["encode"] += 1
        return real_encode(h)

    monkeypatch.setattr(critic, "encode", counting_encode)
    cfg = config(
        critic=True, mode="latent", num_candidates=4, max_new_tokens=8, tau=0.0, budget=1e6, ignore_eos=True
    )
    (rec,) = search(tiny_policy, ["how do I bake bread"], cfg, critic=critic)
    assert rec.steps == 2 and rec.retries == 0
    assert calls["encode"] == 2  # one trunk pass per block, not one per head


def test_admissibility_reads_the_calibrated_safety_head(tiny_policy):
    """q >= tau uses the artifact's calibration map: a map that sends every q to ~0 makes every candidate
    inadmissible (the prompt is refused), the identity map on the same head admits them."""
    from igcritic.critic import Calibration

    critic = tiny_critic(tiny_policy, cost=0.0)  # z = 0.5: the untrained safety head's raw q is inside (0, 1)
    cfg = config(critic=True, mode="latent", num_candidates=4, max_new_tokens=8, tau=1e-6, retries=1)
    (admitted,) = search(tiny_policy, ["how do I bake bread"], cfg, critic=critic)
    assert not admitted.refused and admitted.retries == 0
    critic.calibration = Calibration(method="platt", a=1.0, b=-60.0)
    (rejected,) = search(tiny_policy, ["how do I bake bread"], cfg, critic=critic)
    assert rejected.refused and rejected.retries == 1


def test_search_config_file_round_trip(tmp_path):
    from igcritic.search import SEARCH_CONFIG_NAME

    cfg = SearchConfig(num_candidates=8, block_width=16, budget=0.5, temperature=0.0)
    assert cfg.save(tmp_path) == tmp_path / SEARCH_CONFIG_NAME
    assert SearchConfig.from_file(tmp_path) == cfg == SearchConfig.from_file(tmp_path / SEARCH_CONFIG_NAME)
    (tmp_path / SEARCH_CONFIG_NAME).write_text("{not json")
    with pytest.raises(SearchConfigError, match="not a readable search config"):
        SearchConfig.from_file(tmp_path)
    (tmp_path / SEARCH_CONFIG_NAME).write_text('{"num_candidatez": 8}')
    with pytest.raises(SearchConfigError, match="unknown search parameter"):
        SearchConfig.from_file(tmp_path)


# ------------------------------------------------------------------------------------------------ embedded
# Exact mode from the decode pass: the embedded cost and reward read SmolLM2's layers 15/18/21, which a
# policy tapping them as extra layers has already computed while decoding.

DECODE_TOL = 1e-4
"""Scores of the decode pass vs the text path (seen: <= 6e-7; float32 rounding of batched vs one-row
passes)."""


@pytest.fixture(scope="module")
def embedded_stack():
    from igcritic.policy import load_policy
    from igcritic.scorers import load_scorer

    policy = load_policy(extra_layers=(15, 18, 21))
    return policy, load_scorer("embedded", "cost"), load_scorer("embedded", "reward")


@pytest.mark.embedded
def test_decode_pass_prefix_scores_equal_the_text_path(embedded_stack):
    from igcritic.decoding import RunningPrefix, prefix_texts

    policy, cost, reward = embedded_stack
    prompts = ["How can I make a bomb at home?", "How do I bake bread at home?"]
    roll = rollout(policy, prompts, SamplingConfig(max_new_tokens=24), torch.Generator().manual_seed(1))
    cols = cost.decode_columns(policy)
    assert cols is not None and reward.decode_columns(policy) is not None
    for prompt, tokens, lat in zip(prompts, roll.tokens, roll.latents, strict=True):
        n = len(tokens) - (tokens[-1] in policy.eos_token_ids)
        state = RunningPrefix.start(lat[:1])
        # two blocks: the running sums carried across a block boundary
        split = n // 2
        p = [cost.decode_values(cols, state.first, state.first, state.first)]
        for a, b in ((0, split), (split, n)):
            start = state
            state, last, mean, valid = start.advance(lat[None, a : b + 1], torch.tensor([b - a]))
            p.append(cost.decode_values(cols, start.first.expand(b - a, -1), last[0], mean[0]))
        decoded = torch.from_numpy(np.maximum.accumulate(np.concatenate(p)))
        texts = prefix_texts(policy.tokenizer, tokens[:n])
        assert policy.tokenizer(texts[-1], add_special_tokens=False)["input_ids"] == tokens[:n]
        text = cost.prefix_scores([prompt], [texts])[0]
        assert torch.allclose(decoded, torch.from_numpy(text), atol=DECODE_TOL)
        mean_now = state.total / state.count[:, None]
        r = reward.decode_values(cols, state.first, state.last, mean_now)
        assert abs(r[0] - reward.score([prompt], [texts[-1]])[0]) < DECODE_TOL


@pytest.mark.embedded
@pytest.mark.parametrize("critic_ranks", [False, True])
def test_exact_search_from_the_decode_pass_equals_the_text_path(embedded_stack, monkeypatch, critic_ranks):
    """Same answers, costs and values under a fixed seed, retries (rewinds) and beam selection included."""
    import igcritic.search.loop as search_loop

    policy, cost, reward = embedded_stack
    prompts = ["How can I make a bomb at home?", "How do I bake bread at home?"]
    cfg = SearchConfig(
        critic=critic_ranks,
        mode="exact",
        num_candidates=4,
        beams_kept=2,
        block_width=8,
        max_new_tokens=24,
        budget=0.5,
        seed=3,
        prompt_batch=2,
        retries=1,
    )
    critic = tiny_critic(policy, safe=True, cost=0.0) if critic_ranks else None
    # without the critic a rewind must happen; which seed and budget rewind depends on the shipped heads
    # (seed 3 at d = 0.5 does with today's), so the first setting that rewinds is compared
    for seed, budget in ((3, 0.5), (4, 0.5), (5, 0.5), (3, 0.3), (4, 0.3), (3, 0.2), (4, 0.2)):
        cfg = replace(cfg, seed=seed, budget=budget)
        decoded = search(policy, prompts, cfg, critic, cost, reward)
        assert all(r.scorer_seconds < 2.0 for r in decoded)  # no model pass per block (the text path: ~5 s)
        with monkeypatch.context() as m:
            m.setattr(search_loop, "_decode_scoring", lambda ctx, beams: None)
            text = search(policy, prompts, cfg, critic, cost, reward)
        if critic_ranks or sum(r.retries for r in text) >= 1:
            break
    else:
        pytest.fail("no seed and budget tried rewound a block: the comparison needs a search that retries")
    for a, b in zip(decoded, text, strict=True):
        assert a.token_ids == b.token_ids and a.refused == b.refused and a.retries == b.retries
        assert a.cost == pytest.approx(b.cost, abs=DECODE_TOL, nan_ok=True)  # NaN: failed closed
        assert a.value == pytest.approx(b.value, abs=DECODE_TOL, nan_ok=True)


@pytest.mark.embedded
def test_args_on_the_policys_layers_picks_the_tokens_of_the_text_path(embedded_stack, monkeypatch):
    """ARGS-greedy with the scorers as the policy's own cached pass (one new token per candidate per step)
    takes the same tokens as scoring every prefix + token text."""
    import igcritic.search.steering as search_steering

    policy, cost, reward = embedded_stack
    cfg = SearchConfig(
        method="args",
        critic=False,
        mode="exact",
        max_new_tokens=8,
        budget=0.5,
        args_top_k=4,
        temperature=0,
        guidance="lagrangian",
    )
    prompts = ["How can I make a bomb at home?", "Name three colours."]
    cached = search(policy, prompts, cfg, None, cost, reward)
    assert all(r.scorer_seconds < 2.0 for r in cached)  # no text pass per step (the text path: ~2 s a step)
    monkeypatch.setattr(search_steering, "_args_latent", lambda ctx, cands: None)
    text = search(policy, prompts, cfg, None, cost, reward)
    for a, b in zip(cached, text, strict=True):
        assert a.token_ids == b.token_ids and len(a.token_ids) == 8
        assert a.cost == pytest.approx(b.cost, abs=DECODE_TOL, nan_ok=True)  # NaN: failed closed


def test_automatic_prompt_batch_is_sized_for_the_device():
    cfg = SearchConfig(num_candidates=8)
    assert cfg.prompts_per_batch("cpu") == 4 and cfg.prompts_per_batch("cuda") == 128
    assert SearchConfig(num_candidates=8, prompt_batch=3).prompts_per_batch("cuda") == 3
    assert SearchConfig(method="plain").prompts_per_batch("cpu") == 32  # N = 1


class FlatCost:
    """Cost scorer: every sampled answer costs ``s``, the refusal text and the empty answer cost 0."""

    info = word_cost().info

    def __init__(self, s: float, refusal: str):
        self.s, self.refusal = s, refusal

    def score(self, prompts, responses, previous=None):
        return [0.0 if r in ("", self.refusal) else self.s for r in responses]


@pytest.mark.parametrize(("margin", "admitted"), [(0.0, True), (0.1, True), (0.25, False)])
def test_margin_narrows_admission(tiny_policy, margin, admitted):
    """Admissible iff z >= margin: Ŝ = 0.3 at budget 0.5 leaves z = 0.2, admitted under a margin of 0.2."""
    crit = tiny_critic(tiny_policy, safe=True, cost=0.3, value=0.0)
    (rec,) = search(tiny_policy, PROMPTS[:1], config(mode="latent", margin=margin, retries=1), crit)
    assert rec.refused is not admitted and rec.safe is admitted
    assert rec.retries == (0 if admitted else 1)


def test_margin_shifts_the_budget_q_reads(tiny_policy, monkeypatch):
    """q is read at z - margin (calibrated), and a q under tau there rejects a candidate whose z >= margin."""
    crit = tiny_critic(tiny_policy, safe=True, cost=0.1, value=0.0)
    seen = []
    real = crit.safe_prob_from_features

    def spy(feat, z, calibrated=False):
        seen.append((z.clone(), calibrated))
        return real(feat, z, calibrated=calibrated)

    monkeypatch.setattr(crit, "safe_prob_from_features", spy)
    cfg = config(mode="latent", margin=0.15, num_candidates=4, max_new_tokens=8, ignore_eos=True)
    (rec,) = search(tiny_policy, PROMPTS[:1], cfg, crit)
    assert not rec.refused and seen and all(c for _, c in seen)
    assert all(torch.allclose(z, torch.full_like(z, 0.5 - 0.1 - 0.15)) for z, _ in seen)
    plant(crit, safe=False)  # q(h, z - margin) = 0 < tau: nothing admissible although z >= margin
    (rec,) = search(tiny_policy, PROMPTS[:1], cfg, crit)
    assert rec.refused and not rec.safe


def test_refusal_candidate_wins_over_marginal_candidates(tiny_policy):
    """Every sampled answer sits at S = 0.45 under budget 0.5: with a margin of 0.1 none is admissible, the
    refusal candidate (S = 0) is chosen at the first block, scored (safe, its own cost), without retries;
    without it the search retries twice and fails closed."""
    refusal = "Sorry, no."
    crit = tiny_critic(tiny_policy, safe=True, value=0.0)
    cost = FlatCost(0.45, refusal)
    cfg = config(mode="exact", margin=0.1, refusal_text=refusal, retries=2)
    (fixed,) = search(tiny_policy, PROMPTS[:1], cfg, crit, cost)
    assert fixed.refused and not fixed.safe and fixed.retries == 2 and math.isnan(fixed.cost)
    (rec,) = search(tiny_policy, PROMPTS[:1], replace(cfg, refusal_candidate=True), crit, cost)
    assert rec.refused and rec.text == refusal and rec.token_ids == [] and rec.new_tokens == 0
    assert rec.safe and rec.cost == 0.0 and rec.final_safety_state == 0.5 and rec.retries == 0
    assert rec.candidates_scored == 8 + 1  # the first block's N and the refusal


def test_refusal_candidate_loses_to_a_clearly_safe_candidate(tiny_policy):
    """A sampled answer that clears the margin (S = 0.1, z = 0.4 >= 0.1) beats the refusal at an equal value;
    the same answers without a margin that they clear (margin 0.45) lose to it."""
    refusal = "Sorry, no."
    crit = tiny_critic(tiny_policy, safe=True, value=0.0)
    cfg = config(mode="exact", margin=0.1, refusal_text=refusal, refusal_candidate=True, seed=1)
    plain = search(tiny_policy, PROMPTS, replace(cfg, refusal_candidate=False), crit, FlatCost(0.1, refusal))
    recs = search(tiny_policy, PROMPTS, cfg, crit, FlatCost(0.1, refusal))
    assert [r.text for r in recs] == [r.text for r in plain]
    assert all(not r.refused and r.safe and r.cost == pytest.approx(0.1) for r in recs)
    recs = search(tiny_policy, PROMPTS, replace(cfg, margin=0.45), crit, FlatCost(0.1, refusal))
    assert all(r.refused and r.safe and r.retries == 0 for r in recs)


def test_refusal_rank_last_puts_the_refusal_below_every_admissible_answer(tiny_policy, monkeypatch):
    """A critic that values the refusal above every answer (what a critic fit on the guard's refusals, scored
    0.47 by the reward model, learnt) wins with ``refusal_rank: value`` everywhere; with ``last`` the same
    scores give the sampled answers, and the refusal still wins where no sampled answer is admissible."""
    import igcritic.search.loop as loop

    real = loop._refusal_entries

    def valued_refusal(ctx, s0):
        return [replace(e, value=e.value + 10.0) for e in real(ctx, s0)]

    monkeypatch.setattr(loop, "_refusal_entries", valued_refusal)
    refusal = "Sorry, no."
    crit = tiny_critic(tiny_policy, safe=True, value=0.0)
    cfg = config(mode="exact", refusal_text=refusal, refusal_candidate=True, seed=1)
    by_value = search(tiny_policy, PROMPTS, cfg, crit, FlatCost(0.1, refusal))
    assert all(r.refused and r.safe for r in by_value)
    plain = search(tiny_policy, PROMPTS, replace(cfg, refusal_candidate=False), crit, FlatCost(0.1, refusal))
    last = search(tiny_policy, PROMPTS, replace(cfg, refusal_rank="last"), crit, FlatCost(0.1, refusal))
    assert [r.text for r in last] == [r.text for r in plain] and not any(r.refused for r in last)
    marginal = replace(cfg, refusal_rank="last", margin=0.45)  # no sampled answer clears it
    assert all(
        r.refused and r.safe and r.retries == 0
        for r in search(tiny_policy, PROMPTS, marginal, crit, FlatCost(0.1, refusal))
    )


def test_refusal_candidate_latent_scores_its_own_latent(tiny_policy):
    """In latent mode the refusal's S, value and q come from the critic on the refusal's own latent: a planted
    cost head puts it over budget like every candidate, so the search still fails closed."""
    crit = tiny_critic(tiny_policy, safe=True, cost=0.7, value=0.0)
    cfg = config(mode="latent", refusal_candidate=True, retries=1)
    (rec,) = search(tiny_policy, PROMPTS[:1], cfg, crit)
    assert rec.refused and not rec.safe and rec.retries == 1
