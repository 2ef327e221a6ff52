"""The critic module: monotone safety head, runtime API, artifact round trip and refusal of bad artifacts."""

from __future__ import annotations

import json

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from igcritic.critic import CONFIG_NAME, WEIGHTS_NAME, Critic, CriticConfig, CriticError, load_critic


def make_critic(seed: int = 0, hidden: int = 12, n_mixture: int = 4, **kw) -> Critic:
    torch.manual_seed(seed)
    critic = Critic(CriticConfig(hidden_size=hidden, width=16, depth=2, dropout=0.0, n_mixture=n_mixture, **kw))
    g = torch.Generator().manual_seed(seed)
    critic.set_normalization({"h_mean": torch.randn(hidden, generator=g), "h_std": torch.rand(hidden, generator=g) + 0.5,
                              "f_loc": 0.3, "f_scale": 0.2, "v_loc": 1.0, "v_scale": 2.0, "s_loc": -1.0, "s_scale": 3.0})
    with torch.no_grad():  # make the heads far from their initialisation
        for p in critic.parameters():
            p.add_(torch.randn(p.shape, generator=g) * 2.0)
    return critic.eval()


@settings(max_examples=40, deadline=None)
@given(seed=st.integers(0, 10_000), k=st.integers(1, 6),
       zs=st.lists(st.floats(-1e3, 1e3, allow_nan=False, width=32), min_size=2, max_size=24))
def test_safety_head_is_a_cdf_in_z(seed, k, zs):
    critic = make_critic(seed, n_mixture=k)
    h = torch.randn(3, 12, generator=torch.Generator().manual_seed(seed)) * 5
    z = torch.tensor(sorted(zs), dtype=torch.float32)
    with torch.no_grad():
        q = torch.stack([critic.safe_prob(h, torch.full((3,), float(v))) for v in z], dim=1)  # (3, len(z))
    assert ((q >= 0) & (q <= 1)).all()
    assert (q[:, 1:] >= q[:, :-1]).all(), "q(h, z) decreased when z grew"


def test_safety_head_limits_and_logprob_consistency():
    critic = make_critic(1)
    h = torch.randn(5, 12)
    with torch.no_grad():
        assert critic.safe_prob(h, -1e4).max() < 1e-3
        assert critic.safe_prob(h, 1e4).min() > 1 - 1e-3
        feat = critic.encode(h)
        z = torch.linspace(-1, 1, 5)
        logq, log1mq = critic.safe_logprob_from_features(feat, z)
        q = critic.safe_prob_from_features(feat, z)
    torch.testing.assert_close(logq.exp(), q)
    torch.testing.assert_close(log1mq.exp(), 1 - q)


def test_forward_equals_the_single_head_methods_and_accepts_fp16():
    critic = make_critic(2)
    h, z = torch.randn(7, 12), torch.randn(7)
    with torch.no_grad():
        out = critic(h, z)
        assert out.safe_prob.shape == out.value.shape == out.cost.shape == (7,)
        assert torch.equal(out.safe_prob, critic.safe_prob(h, z))
        assert torch.equal(out.value, critic.value(h))
        assert torch.equal(out.cost, critic.cost(h))
        assert critic(h.half(), 0.5).safe_prob.dtype == torch.float32
    with pytest.raises(CriticError, match="latent size 5"):
        critic.safe_prob(torch.randn(2, 5), 0.0)


def test_value_and_cost_heads_are_denormalised():
    critic = make_critic(3)
    h = torch.randn(4, 12)
    with torch.no_grad():
        feat = critic.encode(h)
        torch.testing.assert_close(critic.value(h), 1.0 + 2.0 * critic.value_from_features(feat, normalized=True))
        torch.testing.assert_close(critic.cost(h), -1.0 + 3.0 * critic.cost_from_features(feat, normalized=True))


def test_config_validation_is_one_line_naming_every_bad_field():
    with pytest.raises(CriticError) as e:
        CriticConfig(hidden_size=0, width=-1, dropout=1.5, gamma=2.0).validate()
    msg = str(e.value)
    assert "\n" not in msg
    for field in ("hidden_size=0", "width=-1", "dropout=1.5", "gamma=2.0"):
        assert field in msg


def test_save_and_load_round_trip(tmp_path):
    policy = {"model_id": "tiny", "hidden_size": 12, "num_layers": 2, "layer": 2, "norm": "post"}
    critic = make_critic(4, policy=policy, budget=0.5, budget_low=0.0, budget_high=1.0,
                         cost_scorer={"id": "c", "sign": "higher-is-unsafe"})
    critic.save_pretrained(tmp_path / "art", metrics={"val/auroc": torch.tensor(0.9)})
    assert sorted(p.name for p in (tmp_path / "art").iterdir()) == sorted([WEIGHTS_NAME, CONFIG_NAME])
    meta = json.loads((tmp_path / "art" / CONFIG_NAME).read_text())
    assert meta["schema_version"] == 1 and meta["layer"] == 2 and meta["norm"] == "post"
    assert meta["metrics"] == {"val/auroc": pytest.approx(0.9)}
    loaded = load_critic(tmp_path / "art")
    assert not loaded.training and not any(p.requires_grad for p in loaded.parameters())
    assert loaded.config == critic.config
    h, z = torch.randn(9, 12), torch.randn(9)
    with torch.no_grad():
        for a, b in zip(critic(h, z), loaded(h, z)):
            assert torch.equal(a, b)
    assert Critic.from_pretrained(tmp_path / "art", dropout=0.5).config.dropout == 0.5
    with pytest.raises(CriticError, match="unknown critic config override"):
        Critic.from_pretrained(tmp_path / "art", depthh=3)
    with pytest.raises(CriticError, match="does not fit"):
        Critic.from_pretrained(tmp_path / "art", width=32)


@pytest.fixture()
def artifact(tmp_path):
    return make_critic(5).save_pretrained(tmp_path / "art")


def _one_line_error(path, match: str):
    with pytest.raises(CriticError, match=match) as e:
        load_critic(path)
    assert "\n" not in str(e.value)


def test_refuses_unknown_schema(artifact):
    cfg = artifact / CONFIG_NAME
    meta = json.loads(cfg.read_text())
    cfg.write_text(json.dumps({**meta, "schema_version": 99}))
    _one_line_error(artifact, "schema_version 99")


def test_refuses_truncated_weights(artifact):
    weights = artifact / WEIGHTS_NAME
    data = weights.read_bytes()
    weights.write_bytes(data[: len(data) // 2])
    meta = json.loads((artifact / CONFIG_NAME).read_text())
    meta.pop("weights_sha256")  # without the checksum, safetensors itself must notice
    (artifact / CONFIG_NAME).write_text(json.dumps(meta))
    _one_line_error(artifact, "truncated or corrupted")


def test_refuses_corrupted_weights(artifact):
    weights = artifact / WEIGHTS_NAME
    data = bytearray(weights.read_bytes())
    data[-5] ^= 0xFF  # a flipped bit inside a tensor: only the checksum notices
    weights.write_bytes(bytes(data))
    _one_line_error(artifact, "corrupted")


def test_refuses_missing_or_broken_files(artifact, tmp_path):
    _one_line_error(tmp_path / "nowhere", "no critic_config.json")
    (artifact / CONFIG_NAME).write_text("{not json")
    _one_line_error(artifact, "not valid JSON")
    (artifact / CONFIG_NAME).write_text(json.dumps({"format": "something-else", "schema_version": 1}))
    _one_line_error(artifact, "not an igcritic critic config")
