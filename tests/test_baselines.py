"""ARGS and RE-Control on the tiny Llama: exactness against generate and plain sampling, steering,
refusals."""

from __future__ import annotations

from dataclasses import replace
from types import SimpleNamespace

import numpy as np
import pytest
import torch
from helpers import (
    TextReward,
    build_tiny_llama,
    build_tokenizer,
    distinct_chars,
    make_tiny_policy,
    tiny_critic,
    word_cost,
    write_artifact,
)
from test_search import PROMPTS, greedy_reference

from igcritic.baselines import ReControl
from igcritic.guard import GenerateConfig, load_guard, main
from igcritic.policy import load_policy
from igcritic.prompts import PromptSource
from igcritic.search import SearchConfig, SearchConfigError, search

BASE = dict(max_new_tokens=12, budget=0.5, critic=False, mode="exact")


class PlantedReward:
    """Reward 1 when the response contains ``word``, else 0; records every call."""

    def __init__(self, word: str):
        self.word = word
        self.calls: list[int] = []
        self.info = SimpleNamespace(id="planted", role="reward", sign=1, budget_hint=None)

    def score(self, prompts, responses, previous=None):
        self.calls.append(len(responses))
        return np.array([float(self.word in r) for r in responses])


@pytest.mark.parametrize("prompt_batch", [1, 2])
def test_args_without_weight_is_greedy_generate(tiny_policy, prompt_batch):
    reward = TextReward(distinct_chars)
    cfg = SearchConfig(
        method="args",
        args_weight=0.0,
        temperature=0,
        prompt_batch=prompt_batch,
        **{**BASE, "max_new_tokens": 16},
    )
    recs = search(tiny_policy, PROMPTS, cfg, None, word_cost(), reward)
    for prompt, rec in zip(PROMPTS, recs, strict=True):
        assert rec.token_ids == greedy_reference(tiny_policy, prompt, 16)
        assert rec.method == "args" and rec.new_tokens == 16 and rec.candidates_scored > 16
    sizes = [len(texts) for _, texts, _ in reward.calls]
    assert len(sizes) == (16 + 1) * (
        2 // prompt_batch
    )  # per prompt batch: one call per token step + the answers
    assert max(sizes) <= 20 * prompt_batch  # k = 20 candidates of every row of the batch in that one call
    assert all(r.scorer_calls >= 16 and r.scorer_seconds > 0 for r in recs)


def test_args_emits_a_planted_rewarded_token(tiny_policy):
    """A token ranked 10th at the first step, rewarded: ARGS takes it, plain sampling never writes it."""
    tok = tiny_policy.tokenizer
    enc = tiny_policy.encode_prompts(PROMPTS[:1])
    logits, _, _ = tiny_policy.forward(enc["input_ids"], enc["attention_mask"])
    plain = search(
        tiny_policy,
        PROMPTS[:1] * 4,
        SearchConfig(method="plain", seed=0, **BASE),
        None,
        word_cost(),
        TextReward(distinct_chars),
    )
    ranked = [tok.decode([t]) for t in logits[0].topk(20).indices.tolist()]
    word = next(w for w in ranked[5:] if w.strip().isalpha() and not any(w in r.text for r in plain))
    reward = PlantedReward(word)
    for temperature in (0.0, 0.7):
        cfg = SearchConfig(method="args", args_weight=100.0, temperature=temperature, **BASE)
        (rec,) = search(tiny_policy, PROMPTS[:1], cfg, None, word_cost(), reward)
        assert word in rec.text
    plain = search(
        tiny_policy, PROMPTS[:1], SearchConfig(method="plain", seed=0, **BASE), None, word_cost(), reward
    )
    assert word not in plain[0].text


@pytest.mark.parametrize("guidance", ["lagrangian", "cost"])
def test_args_cost_guidance_avoids_a_costly_token(tiny_policy, guidance):
    tok = tiny_policy.tokenizer
    greedy = greedy_reference(tiny_policy, PROMPTS[0], 12)
    word = tok.decode(greedy[:1])  # greedy's first token, made costly
    cfg = SearchConfig(
        method="args", args_weight=100.0, temperature=0, guidance=guidance, lagrange_lambda=100.0, **BASE
    )
    (rec,) = search(tiny_policy, PROMPTS[:1], cfg, None, word_cost(word), TextReward(distinct_chars))
    assert rec.token_ids[0] != greedy[0] and word not in rec.text


def test_recontrol_without_edit_is_plain_sampling(tiny_policy):
    """0 steps, or 30 steps of size 0 (the LM head on the unedited latent): plain's tokens under the same
    seed."""
    critic = tiny_critic(tiny_policy)
    plain = search(tiny_policy, PROMPTS, SearchConfig(method="plain", seed=3, **BASE), critic, word_cost())
    for kw in ({"recontrol_steps": 0}, {"recontrol_step_size": 0.0}):
        cfg = SearchConfig(method="recontrol", seed=3, **BASE, **kw)
        recs = search(tiny_policy, PROMPTS, cfg, critic, word_cost())
        assert [r.token_ids for r in recs] == [r.token_ids for r in plain]
    edited = search(
        tiny_policy, PROMPTS, SearchConfig(method="recontrol", seed=3, **BASE), critic, word_cost()
    )
    assert [r.token_ids for r in edited] != [r.token_ids for r in plain]
    assert all(r.critic_seconds > 0 for r in edited)


@pytest.mark.parametrize("guidance", ["reward", "lagrangian", "cost"])
def test_recontrol_step_raises_the_objective(tiny_policy, guidance):
    critic = tiny_critic(tiny_policy)
    rc = ReControl(tiny_policy, critic, steps=1, step_size=0.05, guidance=guidance, lagrange_lambda=2.0)
    with torch.inference_mode():  # as in the runtime
        h = tiny_policy.latents_of(**tiny_policy.encode_prompts(PROMPTS))[:, -1].float()
        edited = rc.edit(h)
        before, after = rc.objective(h), rc.objective(edited)
    assert not torch.equal(edited, h) and bool((after > before).all())
    assert not any(
        p.grad is not None for p in critic.parameters()
    )  # nothing but the latent was differentiated


def test_recontrol_edits_only_the_lm_head_input_columns():
    """A policy whose latent appends layer 1 to the LM head's input (extra_layers): the critic reads both, the
    edit moves the first H columns only, and decoding samples from the LM head on those."""
    tok = build_tokenizer()
    policy = load_policy("tiny-llama", extra_layers=(1,), model=build_tiny_llama(len(tok)), tokenizer=tok)
    critic = tiny_critic(policy)
    rc = ReControl(policy, critic, steps=3, step_size=0.1)
    with torch.inference_mode():
        h = policy.latents_of(**policy.encode_prompts(PROMPTS))[:, -1].float()  # (2, 64)
        edited = rc.edit(h)
        logits = rc(h)
    assert h.shape == (2, 64) and torch.equal(edited[:, 32:], h[:, 32:])
    assert not torch.equal(edited[:, :32], h[:, :32]) and bool((rc.objective(edited) > rc.objective(h)).all())
    assert torch.allclose(logits, policy.model.lm_head(edited[:, :32]))
    recs = search(policy, PROMPTS, SearchConfig(method="recontrol", **BASE), critic, word_cost())
    assert all(r.new_tokens == 12 or r.token_ids[-1] in policy.eos_token_ids for r in recs)


def test_recontrol_refuses_a_critic_on_another_latent(tiny_policy):
    cfg = SearchConfig(method="recontrol", **BASE)
    mid = make_tiny_policy(layer=1, norm="pre")
    with pytest.raises(SearchConfigError, match="policy's latent is layer 1, norm pre") as e:
        search(mid, PROMPTS, cfg, tiny_critic(mid), word_cost())
    assert "\n" not in str(e.value) and "--layer -1 --norm post" in str(e.value)
    with pytest.raises(SearchConfigError, match="critic's latent is layer 1, norm pre"):
        search(tiny_policy, PROMPTS, cfg, tiny_critic(tiny_policy, layer=1, norm="pre"), word_cost())


def test_recontrol_cost_guidance_refuses_a_context_cost_head(tiny_policy):
    """RE-Control edits one latent; a cost head that reads the answer so far cannot guide that edit."""
    crit = tiny_critic(tiny_policy, cost_context=True)
    cfg = SearchConfig(method="recontrol", **{**BASE, "guidance": "lagrangian"})
    with pytest.raises(SearchConfigError, match="reads the answer so far") as e:
        search(tiny_policy, PROMPTS, cfg, crit, word_cost())
    assert "\n" not in str(e.value)
    (rec,) = search(
        tiny_policy, PROMPTS[:1], replace(cfg, guidance="reward", recontrol_steps=1), crit, word_cost()
    )
    assert rec.token_ids


@pytest.mark.parametrize(
    ("kwargs", "match"),
    [
        ({"method": "args", "guidance": "lagrangian"}, "scores the cost; pass --cost"),
        ({"method": "args", "args_top_k": 0}, "search.args_top_k 0"),
        ({"method": "args", "guidance": "value"}, "search.guidance 'value' is unknown"),
        ({"method": "recontrol", "recontrol_steps": -1}, "search.recontrol_steps -1"),
        ({"method": "recontrol"}, "bind a critic"),
    ],
)
def test_config_errors(tiny_policy, kwargs, match):
    cfg = SearchConfig(**{**BASE, "mode": "auto", **kwargs})
    critic = None if kwargs == {"method": "recontrol"} else tiny_critic(tiny_policy)
    with pytest.raises(SearchConfigError, match=match):
        search(tiny_policy, PROMPTS, cfg, critic, None, TextReward(distinct_chars))


@pytest.mark.parametrize("method", ["args", "recontrol"])
def test_length_eos_and_batching(tiny_policy, method):
    with torch.no_grad():  # point the EOS row of the LM head at the mean latent: EOS gets ~half the mass
        h = tiny_policy.latents_of(**tiny_policy.encode_prompts(PROMPTS)).reshape(-1, 32).mean(0)
        tiny_policy.model.lm_head.weight[1] = 6.0 * h / h.norm() ** 2
    critic = tiny_critic(tiny_policy)
    eos = tiny_policy.eos_token_ids[0]
    prompts = PROMPTS * 2
    runs = {}
    for batch in (1, 4):
        cfg = SearchConfig(method=method, temperature=1.0, prompt_batch=batch, seed=0, **BASE)
        runs[batch] = search(tiny_policy, prompts, cfg, critic, word_cost(), TextReward(distinct_chars))
        for r in runs[batch]:
            assert 0 < r.new_tokens <= 12 and len(r.token_ids) == r.new_tokens
            assert eos not in r.token_ids[:-1]
    assert any(r.token_ids[-1] == eos and r.new_tokens < 12 for r in runs[4])
    greedy = {
        b: search(
            tiny_policy,
            prompts,
            SearchConfig(method=method, temperature=0, prompt_batch=b, **BASE),
            critic,
            word_cost(),
            TextReward(distinct_chars),
        )
        for b in (1, 4)
    }
    assert [r.token_ids for r in greedy[1]] == [r.token_ids for r in greedy[4]]


def test_guard_generate_runs_both(tmp_path, tiny_policy):
    art = write_artifact(tmp_path / "critic", tiny_policy.identity.to_dict(), search={"budget": 0.5})
    guard = load_guard(art, model=tiny_policy, cost=word_cost(), reward=TextReward(distinct_chars))
    for method, guidance in (("args", "lagrangian"), ("recontrol", "lagrangian")):
        (rec,) = guard.generate(PROMPTS[:1], method=method, guidance=guidance, max_new_tokens=6)
        assert rec.method == method and 0 < rec.new_tokens <= 6 and not rec.refused


def test_igcritic_generate_runs_recontrol(tmp_path, tiny_policy):
    """`igcritic generate --search.method recontrol` (no scorer bound: the critic alone; RE-Control +
    Lagrangian)."""
    folder = tmp_path / "tiny-model"  # the critic records a local model folder, so generate loads it
    tiny_policy.model.save_pretrained(folder)
    tiny_policy.tokenizer.save_pretrained(folder)
    ident = {**tiny_policy.identity.to_dict(), "model_id": str(folder)}
    art = write_artifact(tmp_path / "critic", ident, search={"max_new_tokens": 8, "budget": 0.5})
    out = tmp_path / "records.jsonl"
    recs = main(
        GenerateConfig(
            str(art),
            PromptSource(texts=PROMPTS),
            out=out,
            search={"method": "recontrol", "guidance": "lagrangian", "recontrol_steps": 2},
        )
    )
    assert [r.method for r in recs] == ["recontrol"] * 2 and out.read_text().count("\n") == 2
    assert all(0 < r.new_tokens <= 8 and r.critic_seconds > 0 for r in recs)
