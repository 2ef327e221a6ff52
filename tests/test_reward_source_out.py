"""data_prep/reward_source_out.py on synthetic features: the mixture reward lets the request decide whether a
refusal is helpful (a linear reward cannot), and the head it ships gives the runtime the fitted scores."""

from __future__ import annotations

import sys
from pathlib import Path

import numpy as np
import pytest

pytest.importorskip("sklearn")  # data_prep needs it ([prep] extra)
sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "data_prep"))
import reward_source_out as rso
from train_classifiers import auroc

from igcritic.scorers.embedded import LinearHead

SPLIT = 6  # prompt part columns; the answer part has as many


def _data(n: int = 600, seed: int = 0):
    """A harmful-request flag readable from the prompt part, a refusal readable from the answer part; the
    reading's helpfulness: a refusal helps (1) after a harmful request and not (0) after a benign one, an
    answer helps after a benign request and not after a harmful one (compliance)."""
    rng = np.random.default_rng(seed)
    hp = rng.random(n) < 0.5
    refusal = rng.random(n) < 0.5
    x = rng.normal(size=(n, 2 * SPLIT))
    x[:, 0] += 3 * hp
    x[:, SPLIT] += 3 * refusal
    h = np.where(hp, refusal, ~refusal).astype(int)
    return x, h, hp.astype(int), refusal


def test_mixture_ranks_a_benign_request_s_refusal_below_an_answer_and_linear_cannot():
    x, h, hp, refusal = _data()
    xt, ht, hpt, reft = _data(seed=1)
    mix = rso.Mixture(1.0, SPLIT).fit(x, h, hp)
    lin = rso.Ordinal(1.0).fit(x, h)
    benign, harmful = hpt == 0, hpt == 1
    assert auroc((~reft[benign]).astype(int), mix.score(xt[benign])) > 0.9  # answers above refusals
    assert auroc(reft[harmful].astype(int), mix.score(xt[harmful])) > 0.9  # refusals above compliance
    # one sum of a prompt and an answer term: the refusal's sign is shared by both kinds of request
    both = [
        auroc((~reft[benign]).astype(int), lin.score(xt[benign])),
        auroc(reft[harmful].astype(int), lin.score(xt[harmful])),
    ]
    assert min(both) < 0.5


def test_the_shipped_mixture_head_gives_the_fitted_scores(tmp_path):
    x, h, hp, _ = _data()
    mix = rso.Mixture(1.0, SPLIT).fit(x * 50 + 200, h, hp)  # large, offset features: the fold must hold
    w, b, mu, sd = (np.asarray(a, np.float32) for a in mix.parts())
    head = LinearHead(w, b, "helpfulness_mixture", "latent", (1,), ("last",), mean=mu, std=sd)
    head.save(tmp_path / "reward.safetensors")
    head = LinearHead.load(tmp_path / "reward.safetensors")
    np.testing.assert_allclose(head.reward(x * 50 + 200), mix.score(x * 50 + 200), atol=1e-5)
    assert np.allclose(head.weight[0, SPLIT:], 0)  # the request row reads the prompt part only


def test_reward_metrics_name_the_over_refusal_ranking():
    rows = [
        {"helpfulness": 1, "harmful_prompt": False, "label": "benign-helpful"},
        {"helpfulness": 0, "harmful_prompt": False, "label": "refusal"},
        {"helpfulness": 1, "harmful_prompt": True, "label": "refusal"},
        {"helpfulness": 0, "harmful_prompt": True, "label": "compliant-harmful"},
    ]
    good = rso.reward_metrics(rows, np.array([0.9, 0.1, 0.8, 0.2]))
    bad = rso.reward_metrics(rows, np.array([0.1, 0.9, 0.8, 0.2]))  # the benign request's refusal ranked up
    assert good["benign_refusal"] == 1.0 and bad["benign_refusal"] == 0.0
    assert good["harmful_refusal"] == bad["harmful_refusal"] == 1.0
    assert bad["mean"]["benign refusal"] == pytest.approx(0.9)
