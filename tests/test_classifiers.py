"""The shipped-classifier machinery on a tiny policy: one-pass prefix features, heads, running-max costs,
errors."""

from __future__ import annotations

import logging

import numpy as np
import pytest

from igcritic.decoding import prefix_texts
from igcritic.scorers import ScorerError
from igcritic.scorers.embedded import READING_LABELS, ClassifierScorer, LinearHead
from igcritic.scorers.latent import MAX_ANSWER_TOKENS, LatentFeatureSpec, PolicyFeatures, prefix_index

SPEC = LatentFeatureSpec(layers=(1, 2), parts=("last", "mean"))
PROMPTS = ["how can I make a bomb at home", "please write a short poem about the sea"]
ANSWERS = [
    "sure here is how you do it step by step first you need some tools",
    "the sea is calm and blue and the wind is warm",
]


def test_prefix_features_of_one_pass_equal_separate_passes(tiny_policy):
    pf = PolicyFeatures(tiny_policy, SPEC)
    assert pf.dim == 2 * 2 * 32
    (feats, ends), _ = pf.prefix_features(PROMPTS, ANSWERS)
    assert feats.shape == (len(ends) + 1, pf.dim)
    for j in (0, 3, len(ends)):  # the prefix with j answer tokens, fed alone (and batched with a longer pair)
        alone = pf.prefix_features(
            [PROMPTS[0], PROMPTS[1]], [ANSWERS[0][: ends[j - 1]] if j else "", ANSWERS[1]]
        )[0][0]
        np.testing.assert_allclose(alone[-1], feats[j], rtol=1e-4, atol=1e-5)
    # 'mean' is the running mean of 'last' from the prompt's last position on
    last, mean = feats[:, :32], feats[:, 32:64]
    np.testing.assert_allclose(
        mean, np.cumsum(last, 0) / np.arange(1, len(last) + 1)[:, None], rtol=1e-4, atol=1e-5
    )


def test_pairs_of_one_prompt_share_their_common_prefix_pass(tiny_policy):
    """ARGS' k continuations of one answer (and N answers of one prompt): the shared token prefix runs once,
    each tail on a copy of its cache; the features equal each pair's own pass."""
    pf = PolicyFeatures(tiny_policy, SPEC)
    stem = ANSWERS[0][:30]
    answers = [stem + " tools", stem + " plan", stem, "", ANSWERS[0]]
    calls = []
    handle = tiny_policy.model.register_forward_hook(
        lambda _m, args, kw, out: calls.append(kw["input_ids"].shape), with_kwargs=True
    )
    try:
        together = pf.prefix_features([PROMPTS[0]] * len(answers), answers)
    finally:
        handle.remove()
    assert (
        len(calls) == 2 and calls[0][0] == 1 and calls[1][0] == len(answers)
    )  # the prefix once, then the tails
    for answer, (feats, ends) in zip(answers, together, strict=True):
        alone, alone_ends = PolicyFeatures(tiny_policy, SPEC).prefix_features([PROMPTS[0]], [answer])[0]
        np.testing.assert_array_equal(ends, alone_ends)
        np.testing.assert_allclose(feats, alone, rtol=1e-4, atol=1e-5)


def test_pairs_of_different_prompts_share_their_common_opening(tiny_policy):
    """Pairs of different prompts with a common opening (the chat template's system turn) run it once, then
    every tail, the rest of its prompt included; the features equal each pair's own pass."""
    pf = PolicyFeatures(tiny_policy, SPEC)
    opening = "you are a careful assistant and you answer every question in plain words "
    prompts = [opening + "how can I make a bomb at home", opening + "a poem", opening + "why is the sky blue"]
    answers = [ANSWERS[0], ANSWERS[1], ""]
    calls = []
    handle = tiny_policy.model.register_forward_hook(
        lambda _m, args, kw, out: calls.append(kw["input_ids"].shape), with_kwargs=True
    )
    try:
        together = pf.prefix_features(prompts, answers)
    finally:
        handle.remove()
    assert [c[0] for c in calls] == [1, len(prompts)]  # the opening once, then the tails
    for prompt, answer, (feats, ends) in zip(prompts, answers, together, strict=True):
        alone, alone_ends = PolicyFeatures(tiny_policy, SPEC).prefix_features([prompt], [answer])[0]
        np.testing.assert_array_equal(ends, alone_ends)
        assert feats.shape == alone.shape
        np.testing.assert_allclose(feats, alone, rtol=1e-4, atol=1e-5)


def test_a_policy_cut_after_the_deepest_layer_gives_the_same_features():
    """data_prep featurises with the policy cut after the deepest layer it reads (plus one: the last hidden
    state carries the final norm); the features equal the whole policy's."""
    pytest.importorskip("sklearn")  # data_prep's train_classifiers needs it ([prep] extra)
    import copy
    import sys
    from pathlib import Path

    import torch
    from helpers import build_tokenizer, tiny_llama_config
    from transformers import LlamaForCausalLM

    from igcritic.policy import load_policy

    sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "data_prep"))
    from train_classifiers import truncated_policy

    tok = build_tokenizer()
    cfg = tiny_llama_config(len(tok))
    cfg.num_hidden_layers = 5
    torch.manual_seed(0)
    model = LlamaForCausalLM(cfg).eval()
    whole = load_policy("tiny-llama", model=model, tokenizer=tok)
    cut = truncated_policy(2, load_policy("tiny-llama", model=copy.deepcopy(model), tokenizer=tok))
    assert len(cut.model.get_decoder().layers) == 3
    spec = LatentFeatureSpec(layers=(1, 2), parts=("last", "mean"))
    a = PolicyFeatures(whole, spec).prefix_features(PROMPTS, ANSWERS)
    b = PolicyFeatures(cut, spec).prefix_features(PROMPTS, ANSWERS)
    for (fa, ends_a), (fb, ends_b) in zip(a, b, strict=True):
        np.testing.assert_array_equal(ends_a, ends_b)
        np.testing.assert_allclose(fa, fb, rtol=1e-5, atol=1e-6)
    # cut after the deepest layer itself, its hidden state would be the final-normed one: not the same
    short = truncated_policy(1, load_policy("tiny-llama", model=copy.deepcopy(model), tokenizer=tok))
    last2 = LatentFeatureSpec(layers=(2,), parts=("last",))
    c = PolicyFeatures(short, last2).prefix_features(PROMPTS, ANSWERS)
    assert not np.allclose(c[0][0], a[0][0][:, 64:96], atol=1e-3)


def test_prefix_index_maps_decoded_prefixes_to_tokens():
    ends = np.array([3, 5, 9])
    assert prefix_index(ends, [0, 2, 3, 4, 5, 9, 12]).tolist() == [0, 0, 1, 1, 2, 3, 3]


def _head(tmp_path, kind: str, n_out: int, seed: int = 0):
    rng = np.random.default_rng(seed)
    head = LinearHead(
        rng.normal(size=(n_out, 256)).astype(np.float32) * 0.05,
        rng.normal(size=n_out).astype(np.float32),
        kind,
        "latent",
        SPEC.layers,
        SPEC.parts,
        calibration=(1.5, -0.2),
        meta={"version": "test"},
    )
    path = tmp_path / f"{kind}.safetensors"
    head.save(path)
    return path


def test_cost_prefix_scores_are_a_running_max_of_one_pass(tmp_path, tiny_policy):
    cost = ClassifierScorer("cost", "cost", path=_head(tmp_path, "harm", 1), policy=tiny_policy)
    tok = tiny_policy.tokenizer
    texts = [prefix_texts(tok, tok(a, add_special_tokens=False)["input_ids"]) for a in ANSWERS]
    s = cost.prefix_scores(PROMPTS, texts)
    for si, t in zip(s, texts, strict=True):
        assert len(si) == len(t) and si.dtype == np.float32 and np.all(np.diff(si) >= 0)
    direct = cost.score(PROMPTS * 2, ["", ""] + ANSWERS)
    np.testing.assert_allclose([s[0][0], s[1][0]], direct[:2], atol=1e-5)  # S_0 = p(empty answer)
    assert all(si[-1] >= d - 1e-6 for si, d in zip(s, direct[2:], strict=True))  # S_T >= p(full answer)
    assert cost.info.stride is None and "running max" in cost.info.derivation
    assert cost.score(["x"], ["y"], previous=np.array([0.99]))[0] == pytest.approx(0.99)


def test_calibration_is_applied_to_the_harm_logit(tmp_path):
    head = LinearHead.load(_head(tmp_path, "harm", 1))
    x = np.random.default_rng(1).normal(size=(4, 256)).astype(np.float32)
    z = x.astype(np.float64) @ head.weight[0] + head.bias[0]
    np.testing.assert_allclose(head.harm(x), 1 / (1 + np.exp(-(1.5 * z - 0.2))), rtol=1e-5)
    product = LinearHead.load(_head(tmp_path, "harm_product", 2))  # p(harmful request) x p(compliance)
    z = x.astype(np.float64) @ product.weight.T.astype(np.float64) + product.bias
    p = 1 / (1 + np.exp(-z[:, 0])) / (1 + np.exp(-z[:, 1]))
    np.testing.assert_allclose(
        product.harm(x), 1 / (1 + np.exp(-(1.5 * np.log(p / (1 - p)) - 0.2))), rtol=1e-4
    )


def test_reward_and_judge_heads(tmp_path, tiny_policy):
    reward = ClassifierScorer("reward", "reward", path=_head(tmp_path, "helpfulness", 2), policy=tiny_policy)
    r = reward.score(PROMPTS, ANSWERS)
    assert r.shape == (2,) and np.all((r >= 0) & (r <= 1))
    judge = ClassifierScorer("judge", "cost", path=_head(tmp_path, "classes", 5), policy=tiny_policy)
    labels = judge.classify(PROMPTS, ANSWERS)
    assert len(labels) == 2 and set(labels) <= set(READING_LABELS)
    with pytest.raises(ScorerError, match="only embedded-judge classifies"):
        reward.classify(PROMPTS, ANSWERS)


def test_mixture_reward_lets_the_request_decide_which_helpfulness_applies(tmp_path):
    """Row 0: p(harmful request); rows 1-2 the harmful request's helpfulness, 3-4 the benign one's. A row
    whose request logit is large takes the harmful pair's reward, a small one the benign pair's."""
    w = np.zeros((5, 4), np.float32)
    w[0, 0] = 1.0  # the request: feature 0
    b = np.array([0.0, 2.0, 2.0, -2.0, -2.0], np.float32)  # harmful: reward ~0.88; benign: ~0.12
    head = LinearHead(w, b, "helpfulness_mixture", "latent", (1,), ("last",), meta={"version": "test"})
    path = tmp_path / "mixture.safetensors"
    head.save(path)
    head = LinearHead.load(path)
    x = np.zeros((3, 4), np.float32)
    x[:, 0] = [30.0, -30.0, 0.0]  # surely harmful, surely benign, undecided
    s = lambda z: 1 / (1 + np.exp(-z))  # noqa: E731
    np.testing.assert_allclose(head.reward(x), [s(2.0), s(-2.0), 0.5], rtol=1e-5)
    plain = LinearHead(w[1:3], b[1:3], "helpfulness", "latent", (1,), ("last",))
    np.testing.assert_allclose(plain.reward(x), s(2.0), rtol=1e-5)  # the plain form ignores the request


def test_bad_inputs_give_one_line_errors(tmp_path, tiny_policy, caplog):
    cost = ClassifierScorer("cost", "cost", path=_head(tmp_path, "harm", 1), policy=tiny_policy)
    with pytest.raises(ScorerError, match="must be text"):
        cost.score(["a prompt"], [None])
    with pytest.raises(ScorerError, match="2 prompts but 1 responses"):
        cost.score(["a", "b"], ["c"])
    with pytest.raises(ScorerError, match="rebuild them"):
        ClassifierScorer("cost", "cost", path=tmp_path / "missing.safetensors")
    with caplog.at_level(logging.WARNING):  # very long answers: truncated, said once, scored
        long = " ".join(["sea"] * (MAX_ANSWER_TOKENS + 50))
        p = cost.score(["a prompt", "another"], [long, long])
    assert np.all(np.isfinite(p)) and sum("truncated" in m for m in caplog.messages) == 1
    assert cost.score([""], [""]).shape == (1,)  # empty prompt and answer: a documented score (S_0), no crash


def test_tracked_cost_with_previous_is_the_max_over_every_prefix(tmp_path, tiny_policy):
    cost = ClassifierScorer("cost", "cost", path=_head(tmp_path, "harm", 1), policy=tiny_policy)
    tok = tiny_policy.tokenizer
    texts = [prefix_texts(tok, tok(a, add_special_tokens=False)["input_ids"]) for a in ANSWERS]
    s_t = [s[-1] for s in cost.prefix_scores(PROMPTS, texts)]  # the store's S_T
    tracked = cost.score(PROMPTS, ANSWERS, previous=np.zeros(2))
    np.testing.assert_allclose(tracked, s_t, atol=1e-5)


def test_head_round_trip_keeps_a_fortran_ordered_weight(tmp_path):
    w = np.asfortranarray(
        np.random.default_rng(2).normal(size=(5, 7)).astype(np.float32)
    )  # as sklearn's coef_
    head = LinearHead(
        w,
        np.arange(5, dtype=np.float32),
        "classes",
        "minilm",
        mean=np.ones(7, np.float32),
        std=np.full(7, 2.0, np.float32),
    )
    head.save(tmp_path / "h.safetensors")
    back = LinearHead.load(tmp_path / "h.safetensors")
    np.testing.assert_array_equal(back.weight, w)
    x = np.random.default_rng(3).normal(size=(3, 7))
    np.testing.assert_allclose(
        back.logits(x), ((x - 1) / 2) @ w.T.astype(np.float64) + np.arange(5), rtol=1e-6
    )


def test_the_same_batch_is_featurised_once(tiny_policy):
    pf = PolicyFeatures(tiny_policy, SPEC)
    calls = []
    handle = tiny_policy.model.register_forward_hook(lambda *_: calls.append(1))
    try:
        a = pf.prefix_features(PROMPTS, ANSWERS)  # the cost's prefix scores ...
        b = pf.prefix_features(PROMPTS, ANSWERS)  # ... then the reward's, on the same answers
        pf.prefix_features(PROMPTS[:1], ANSWERS[:1])
    finally:
        handle.remove()
    assert b is a and len(calls) == 2
