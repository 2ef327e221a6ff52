"""The critic module: monotone safety head (raw and calibrated), runtime API, artifact round trip (with its
calibration map, and schema-1 artifacts without one) and refusal of bad artifacts."""

from __future__ import annotations

import json

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from igcritic.calibration import Calibration
from igcritic.critic import (
    CALIBRATION_KEY,
    CONFIG_NAME,
    SCHEMA_VERSION,
    WEIGHTS_NAME,
    Critic,
    CriticConfig,
    CriticError,
    load_critic,
)


def make_critic(seed: int = 0, hidden: int = 12, n_mixture: int = 4, **kw) -> Critic:
    torch.manual_seed(seed)
    critic = Critic(
        CriticConfig(hidden_size=hidden, width=16, depth=2, dropout=0.0, n_mixture=n_mixture, **kw)
    )
    g = torch.Generator().manual_seed(seed)
    critic.set_normalization(
        {
            "h_mean": torch.randn(hidden, generator=g),
            "h_std": torch.rand(hidden, generator=g) + 0.5,
            "f_loc": 0.3,
            "f_scale": 0.2,
            "v_loc": 1.0,
            "v_scale": 2.0,
            "s_loc": -1.0,
            "s_scale": 3.0,
        }
    )
    with torch.no_grad():  # make the heads far from their initialisation
        for p in critic.parameters():
            p.add_(torch.randn(p.shape, generator=g) * 2.0)
    return critic.eval()


def random_calibration(draw_seed: int, method: str) -> Calibration:
    """A valid calibration map far from the identity (steep or flat Platt, isotonic knots with flat runs)."""
    g = torch.Generator().manual_seed(draw_seed)
    if method == "platt":
        return Calibration(
            "platt",
            a=float(10 ** (torch.rand(1, generator=g) * 3 - 1.5)),
            b=float(torch.randn(1, generator=g) * 3),
        )
    n = int(torch.randint(2, 12, (1,), generator=g))
    x = torch.sort(torch.rand(n, generator=g)).values
    x = torch.unique(torch.cat([x, torch.tensor([0.0, 1.0])]))
    y = torch.sort(torch.rand(len(x), generator=g)).values
    y[1:-1:2] = y[:-2:2]  # flat runs: non-decreasing, not increasing
    return Calibration("isotonic", x=tuple(x.tolist()), y=tuple(y.tolist())).validate()


@settings(max_examples=40, deadline=None)
@given(
    seed=st.integers(0, 10_000),
    k=st.integers(1, 6),
    method=st.sampled_from(["identity", "platt", "isotonic"]),
    zs=st.lists(st.floats(-1e3, 1e3, allow_nan=False, width=32), min_size=2, max_size=24),
)
def test_safety_head_is_a_cdf_in_z(seed, k, method, zs):
    """q stays a CDF in z (in [0, 1], non-decreasing) for the raw head and after any calibration map."""
    critic = make_critic(seed, n_mixture=k)
    if method != "identity":
        critic.set_calibration(random_calibration(seed, method))
    h = torch.randn(3, 12, generator=torch.Generator().manual_seed(seed)) * 5
    z = torch.tensor(sorted(zs), dtype=torch.float32)
    with torch.no_grad():
        for calibrated in (False, True):
            q = torch.stack(
                [critic.safe_prob(h, torch.full((3,), float(v)), calibrated=calibrated) for v in z], dim=1
            )  # (3, len(z))
            assert ((q >= 0) & (q <= 1)).all()
            assert (q[:, 1:] >= q[:, :-1]).all(), (
                f"q(h, z) decreased when z grew ({method}, calibrated={calibrated})"
            )


def test_calibrated_q_is_non_decreasing_on_a_dense_z_grid():
    """The Platt path (logit from log q and log 1-q) and the isotonic path (segments joined at knots) never
    step down by rounding, where the hypothesis draws are sparse: 20k z values through the tails and knots."""
    critic = make_critic(7, n_mixture=5)
    h = torch.randn(4, 12, generator=torch.Generator().manual_seed(7)) * 3
    z = torch.cat([torch.linspace(-50, 50, 10_000), torch.linspace(-0.5, 1.5, 10_000)]).sort().values
    feat = critic.encode(h).repeat_interleave(len(z), 0)
    for cal in (
        Calibration("platt", a=0.3, b=0.7),
        Calibration("platt", a=7.0, b=-2.0),
        random_calibration(3, "isotonic"),
    ):
        critic.set_calibration(cal)
        with torch.no_grad():
            q = critic.safe_prob_from_features(feat, z.repeat(4), calibrated=True).view(4, -1)
        assert (q.diff(dim=1) >= 0).all(), cal.method


def test_identity_calibration_is_the_raw_head_and_the_map_applies_to_q():
    critic = make_critic(8)
    h, z = torch.randn(6, 12), torch.randn(6)
    with torch.no_grad():
        raw = critic.safe_prob(h, z, calibrated=False)
        assert torch.equal(critic.safe_prob(h, z), raw) and torch.equal(critic(h, z).safe_prob, raw)
        critic.set_calibration(Calibration("platt", a=0.5, b=0.2))
        torch.testing.assert_close(
            critic.safe_prob(h, z),
            torch.sigmoid(0.5 * torch.logit(raw.double()) + 0.2).float(),
            atol=1e-5,
            rtol=1e-4,
        )
        assert torch.equal(critic(h, z).safe_prob, critic.safe_prob(h, z))
        assert torch.equal(
            critic.safe_prob(h, z, calibrated=False), raw
        )  # training and raw metrics see the head


def test_an_invalid_calibration_is_the_critics_error_in_one_line():
    critic = make_critic(1)
    with pytest.raises(CriticError, match="calibration.a=0.0") as e:
        critic.set_calibration({"method": "platt", "a": 0.0, "b": 0.0})
    assert "\n" not in str(e.value) and critic.calibration.is_identity


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
        torch.testing.assert_close(
            critic.value(h), 1.0 + 2.0 * critic.value_from_features(feat, normalized=True)
        )
        torch.testing.assert_close(
            critic.cost(h), -1.0 + 3.0 * critic.cost_from_features(feat, normalized=True)
        )


def test_config_validation_is_one_line_naming_every_bad_field():
    with pytest.raises(CriticError) as e:
        CriticConfig(hidden_size=0, width=-1, dropout=1.5, gamma=2.0).validate()
    msg = str(e.value)
    assert "\n" not in msg
    for field in ("hidden_size=0", "width=-1", "dropout=1.5", "gamma=2.0"):
        assert field in msg


def test_save_and_load_round_trip(tmp_path):
    policy = {"model_id": "tiny", "hidden_size": 12, "num_layers": 2, "layer": 2, "norm": "post"}
    critic = make_critic(
        4,
        policy=policy,
        budget=0.5,
        budget_low=0.0,
        budget_high=1.0,
        cost_scorer={"id": "c", "sign": "higher-is-unsafe"},
    )
    critic.save_pretrained(tmp_path / "art", metrics={"val/auroc": torch.tensor(0.9)})
    assert sorted(p.name for p in (tmp_path / "art").iterdir()) == sorted([WEIGHTS_NAME, CONFIG_NAME])
    meta = json.loads((tmp_path / "art" / CONFIG_NAME).read_text())
    assert meta["schema_version"] == SCHEMA_VERSION == 2 and meta["layer"] == 2 and meta["norm"] == "post"
    assert meta[CALIBRATION_KEY] == {"method": "identity", "fitted": None}
    assert meta["metrics"] == {"val/auroc": pytest.approx(0.9)}
    loaded = load_critic(tmp_path / "art")
    assert not loaded.training and not any(p.requires_grad for p in loaded.parameters())
    assert loaded.config == critic.config
    h, z = torch.randn(9, 12), torch.randn(9)
    with torch.no_grad():
        for a, b in zip(critic(h, z), loaded(h, z), strict=True):
            assert torch.equal(a, b)
    assert Critic.from_pretrained(tmp_path / "art", dropout=0.5).config.dropout == 0.5
    with pytest.raises(CriticError, match="unknown critic config override"):
        Critic.from_pretrained(tmp_path / "art", depthh=3)
    with pytest.raises(CriticError, match="does not fit"):
        Critic.from_pretrained(tmp_path / "art", width=32)


@pytest.mark.parametrize(
    "cal",
    [
        Calibration("platt", a=0.4, b=-0.3, fitted={"split": "val", "rows": 10}),
        Calibration("isotonic", x=(0.0, 0.3, 0.7, 1.0), y=(0.05, 0.05, 0.6, 0.9)),
    ],
)
def test_calibration_round_trips_through_the_artifact(tmp_path, cal):
    critic = make_critic(9)
    critic.set_calibration(cal)
    critic.save_pretrained(tmp_path / "art")
    meta = json.loads((tmp_path / "art" / CONFIG_NAME).read_text())
    assert meta[CALIBRATION_KEY]["method"] == cal.method
    loaded = load_critic(tmp_path / "art")
    assert loaded.calibration == cal
    h, z = torch.randn(32, 12), torch.linspace(-1, 2, 32)
    with torch.no_grad():
        assert torch.equal(loaded(h, z).safe_prob, critic(h, z).safe_prob)
        assert torch.equal(loaded.safe_prob(h, z, calibrated=False), critic.safe_prob(h, z, calibrated=False))
        assert not torch.equal(loaded.safe_prob(h, z), loaded.safe_prob(h, z, calibrated=False))
    state = critic.state_dict()  # Lightning checkpoints carry the map as the critic's extra state
    fresh = Critic(critic.config)
    fresh.load_state_dict(state)
    assert fresh.calibration == cal


def test_schema_1_artifact_without_calibration_loads_with_the_identity(tmp_path):
    critic = make_critic(10)
    critic.set_calibration(Calibration("platt", a=0.5, b=1.0))
    out = critic.save_pretrained(tmp_path / "old")
    meta = json.loads((out / CONFIG_NAME).read_text())
    meta.pop(CALIBRATION_KEY)
    (out / CONFIG_NAME).write_text(json.dumps({**meta, "schema_version": 1}))  # what igcritic wrote before
    loaded = load_critic(out)
    assert loaded.calibration.is_identity
    h, z = torch.randn(8, 12), torch.randn(8)
    with torch.no_grad():
        assert torch.equal(loaded.safe_prob(h, z), critic.safe_prob(h, z, calibrated=False))
    meta[CALIBRATION_KEY] = {"method": "platt", "a": -2.0, "b": 0.0}
    (out / CONFIG_NAME).write_text(json.dumps(meta))
    _one_line_error(out, "calibration.a=-2.0")


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


def test_a_context_cost_head_reads_h0_and_the_running_mean_and_round_trips(tmp_path):
    torch.manual_seed(0)
    crit = Critic(CriticConfig(hidden_size=8, width=16, depth=1, dropout=0.0, cost_context=True)).eval()
    h, first, mean = torch.randn(3, 5, 8).unbind(0)
    with torch.no_grad():
        s = crit.cost(h, first, mean)
        assert s.shape == (5,)
        assert not torch.allclose(s, crit.cost(h, first + 1, mean))
        assert not torch.allclose(s, crit.cost(h, first, mean + 1))
        assert torch.equal(crit(h, 0.1, first, mean).cost, s)
    with pytest.raises(CriticError, match="cost_context"):
        crit.cost(h)
    crit.save_pretrained(tmp_path / "critic")
    back = load_critic(tmp_path / "critic")
    assert back.config.cost_context
    with torch.no_grad():
        assert torch.equal(back.cost(h, first, mean), s)
