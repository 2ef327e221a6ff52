"""The one decode loop (igcritic/decoding.py): rollouts with T + 1 latents, teacher-forced latents of given
answers, prefix texts."""

from __future__ import annotations

import torch

from igcritic.decoding import SamplingConfig, rollout, teacher_forced_latents


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
