"""The one decode loop (igcritic/decoding.py): rollouts with T + 1 latents (greedy = ``generate``, the same
tokens on a GPU), teacher-forced latents of given answers, prefix texts, pure logits processors, top-p."""

from __future__ import annotations

import pytest
import torch

from igcritic.decoding import (
    RejectedTokenPenalty,
    SamplingConfig,
    SuppressTokens,
    prefix_texts,
    rollout,
    teacher_forced_latents,
)


def test_teacher_forced_latents_are_the_latents_the_rollout_saw(tiny_policy):
    """One forward over prompt + answer reads the h_0..h_T that sampling the answer saw (the store's tap),
    for answers of different lengths in one batch."""
    prompts = ["how do I bake bread", "hello there", "a"]
    roll = rollout(tiny_policy, prompts, SamplingConfig(max_new_tokens=9), torch.Generator().manual_seed(3))
    forced = teacher_forced_latents(tiny_policy, prompts, roll.tokens)
    for got, want, toks in zip(forced, roll.latents, roll.tokens, strict=True):
        assert got.shape == want.shape == (len(toks) + 1, tiny_policy.identity.hidden_size)
        torch.testing.assert_close(got, want, atol=2e-4 * float(want.abs().max()), rtol=2e-4)
    assert [t.shape[0] for t in teacher_forced_latents(tiny_policy, ["x", "y"], [[], [5, 6]])] == [1, 3]


def test_rollout_has_t_plus_one_latents_and_matches_greedy_generate(tiny_policy):
    prompts = ["how do I bake bread", "hello there"]
    roll = rollout(tiny_policy, prompts, SamplingConfig(temperature=0, max_new_tokens=7))
    enc = tiny_policy.encode_prompts(prompts)
    ref = tiny_policy.model.generate(
        **enc, do_sample=False, max_new_tokens=7, pad_token_id=tiny_policy.pad_token_id
    )
    for i, toks in enumerate(roll.tokens):
        assert roll.latents[i].shape == (len(toks) + 1, tiny_policy.identity.hidden_size)
        assert toks == ref[i, enc["input_ids"].shape[1] :].tolist()[: len(toks)]


def test_prefix_texts_start_empty_and_end_with_the_answer(tiny_tokenizer):
    ids = tiny_tokenizer("mix flour water salt")["input_ids"]
    texts = prefix_texts(tiny_tokenizer, ids)
    assert len(texts) == len(ids) + 1 and texts[0] == "" and texts[-1] == tiny_tokenizer.decode(ids)


def test_logits_processors_are_pure():
    scores = torch.randn(2, 10)
    before = scores.clone()
    banned = torch.zeros(2, 10, dtype=torch.bool)
    banned[0, 3] = banned[1, 7] = True
    out = RejectedTokenPenalty(banned, strength=2.0)(torch.zeros(2, 4, dtype=torch.long), scores)
    assert torch.equal(scores, before) and out is not scores
    assert torch.allclose(out[banned], before[banned] - 2.0) and torch.equal(out[~banned], before[~banned])
    out = SuppressTokens((1,))(torch.zeros(2, 0, dtype=torch.long), scores)
    assert torch.equal(scores, before) and torch.isinf(out[:, 1]).all()


@pytest.mark.parametrize("scale", [0.1, 1.0, 3.0, 10.0])
@pytest.mark.parametrize("top_p", [0.5, 0.9, 0.99])
def test_top_p_from_the_most_likely_tokens_equals_a_full_sort(scale, top_p):
    """The nucleus found among the 256 most likely tokens (or a full sort when it is wider) is the one a full
    sort of the vocabulary gives."""
    from igcritic.decoding import filter_logits

    logits = torch.randn(6, 5000, generator=torch.Generator().manual_seed(int(scale * 10))) * scale
    sorted_logits, order = torch.sort(logits, descending=True, dim=-1)
    probs = sorted_logits.softmax(-1)
    drop = probs.cumsum(-1) - probs > top_p
    want = drop.scatter(-1, order, drop)
    got = torch.isinf(filter_logits(logits, SamplingConfig(temperature=1.0, top_p=top_p)))
    assert torch.equal(got, want)


@pytest.mark.gpu
def test_greedy_rollout_on_a_gpu_gives_the_cpu_tokens(tiny_policy):
    """The decode loop on CUDA (float32) samples the tokens it samples on the CPU, with latents that agree."""
    from helpers import make_tiny_policy

    prompts = ["how do I bake bread", "hello there", "hack the wifi now please"]
    greedy = SamplingConfig(temperature=0, max_new_tokens=12)
    cpu = rollout(tiny_policy, prompts, greedy)
    gpu_policy = make_tiny_policy()
    gpu_policy.model.to("cuda")
    gpu = rollout(gpu_policy, prompts, greedy, torch.Generator(device="cuda").manual_seed(0))
    assert gpu.tokens == cpu.tokens and gpu.finished == cpu.finished
    for a, b in zip(gpu.latents, cpu.latents, strict=True):
        torch.testing.assert_close(a, b, atol=1e-3, rtol=1e-3)
