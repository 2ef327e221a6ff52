"""policy.py: latent tap positions, identity checks, prompt encoding errors; decoding.rollout's latents."""

from __future__ import annotations

import pytest
import torch
from helpers import make_tiny_policy

from igcritic.policy import LatentSpec, PolicyError, load_policy


def test_post_norm_tap_is_the_lm_head_input(tiny_policy):
    enc = tiny_policy.encode_prompts(["how do I bake bread"])
    out = tiny_policy.model(**enc, output_hidden_states=True)
    lat = tiny_policy.latents_of(enc["input_ids"], enc["attention_mask"])  # (1, T, H)
    logits = tiny_policy.model.get_output_embeddings()(lat)
    assert torch.allclose(logits, out.logits, atol=1e-5)


def test_pre_norm_tap_reads_a_decoder_layer_output():
    policy = make_tiny_policy(layer=1, norm="pre")
    enc = policy.encode_prompts(["write a poem about the sea"])
    out = policy.model(**enc, output_hidden_states=True)
    lat = policy.latents_of(enc["input_ids"], enc["attention_mask"])
    assert torch.allclose(lat, out.hidden_states[1], atol=1e-6)  # hidden_states[0] is the embeddings
    assert policy.identity.layer == 1 and policy.identity.norm == "pre"


def test_extra_layers_append_their_residual_streams_after_the_main_latent():
    tok_policy = make_tiny_policy()
    policy = load_policy(
        "tiny-llama", extra_layers=[1], model=tok_policy.model, tokenizer=tok_policy.tokenizer
    )
    enc = policy.encode_prompts(["write a poem about the sea"])
    out = policy.model(**enc, output_hidden_states=True)
    lat = policy.latents_of(enc["input_ids"], enc["attention_mask"])  # (1, T, 2H)
    h = policy.identity.hidden_size
    assert lat.shape[-1] == 2 * h == policy.identity.latent_size
    logits = policy.model.get_output_embeddings()(lat[..., :h])  # the main latent is still the LM head input
    assert torch.allclose(logits, out.logits, atol=1e-5)
    assert torch.allclose(lat[..., h:], out.hidden_states[1], atol=1e-6)
    assert policy.identity.extra_layers == [1]
    assert any(m.startswith("extra_layers") for m in policy.identity.mismatches(tok_policy.identity))
    # identities written before extra layers existed read as "no extra layers"
    old = {k: v for k, v in tok_policy.identity.to_dict().items() if k != "extra_layers"}
    assert tok_policy.identity.mismatches(old) == []


@pytest.mark.parametrize(("extra", "match"), [((3,), "outside"), ((1, -2), "repeat"), ((0,), "outside")])
def test_extra_layer_errors(extra, match):
    with pytest.raises(PolicyError, match=match):
        LatentSpec(-1, "post", extra).resolve(num_layers=2)


@pytest.mark.parametrize(
    ("layer", "norm", "match"), [(5, "pre", "outside"), (1, "post", "only to the last layer")]
)
def test_latent_spec_errors(layer, norm, match):
    with pytest.raises(PolicyError, match=match):
        LatentSpec(layer, norm).resolve(num_layers=2)


def test_identity_mismatches_name_the_fields(tiny_policy):
    other = make_tiny_policy(layer=1, norm="pre").identity
    got = tiny_policy.identity.mismatches(other)
    assert any(m.startswith("layer") for m in got) and any(m.startswith("norm") for m in got)
    assert tiny_policy.identity.mismatches(tiny_policy.identity.to_dict()) == []


def test_empty_and_too_long_prompts_are_refused(tiny_policy):
    with pytest.raises(PolicyError, match=r"prompt 1 \(counting from 0\) is empty"):
        tiny_policy.encode_prompts(["fine", "   "])
    with pytest.raises(PolicyError, match="context is 256"):
        tiny_policy.encode_prompts(["bread " * 400])
    with pytest.raises(
        PolicyError, match=r"prompt 'long bread bread bread bread bread bread bread'\.\.\. has"
    ):
        tiny_policy.encode_prompts(["fine", "long " + "bread " * 400])  # named by its text, not "prompt 1"
    with pytest.raises(PolicyError, match=r"prompt 0 \(counting from 0\) is a NoneType, not a string"):
        tiny_policy.encode_prompts([None])


def test_latent_tap_is_one_permanent_hook_per_module(tiny_policy):
    """Wrapping one model twice and many calls leave one capture hook; outside a call it captures nothing."""
    from igcritic.policy import _capture_hook, load_policy

    again = load_policy("tiny-llama", model=tiny_policy.model, tokenizer=tiny_policy.tokenizer)
    enc = tiny_policy.encode_prompts(["how do I bake bread", "hello"])
    for p in (tiny_policy, again, tiny_policy):
        a = p.latents_of(enc["input_ids"], enc["attention_mask"])
    assert torch.equal(a, again.latents_of(enc["input_ids"], enc["attention_mask"]))
    hooks = [h for h in tiny_policy._taps[0]._forward_hooks.values() if h is _capture_hook]
    assert len(hooks) == 1 and again._taps == tiny_policy._taps
    tiny_policy.model(**enc)  # a plain forward outside Policy.forward: the hook is inert, nothing leaks
    assert torch.equal(a, tiny_policy.latents_of(enc["input_ids"], enc["attention_mask"]))


def test_weights_fingerprint_follows_the_weights(tiny_policy, tmp_path):
    from igcritic.policy import load_policy, weights_fingerprint

    fp = weights_fingerprint(tiny_policy.model)
    tiny_policy.model.save_pretrained(tmp_path / "m")
    tiny_policy.tokenizer.save_pretrained(tmp_path / "m")
    assert weights_fingerprint(load_policy(str(tmp_path / "m")).model) == fp and len(fp) == 16
    assert weights_fingerprint(make_tiny_policy(seed=1).model) != fp


def test_weights_fingerprint_sees_every_value_of_every_tensor(tiny_policy):
    """One changed value anywhere (here: the last value of every parameter in turn) changes it; the dtype the
    model is held in does not, when the values are the same (bf16 weights held as float32)."""
    from igcritic.policy import weights_fingerprint

    model = make_tiny_policy(seed=0).model
    fp = weights_fingerprint(model)
    for name, p in model.named_parameters():
        with torch.no_grad():
            old = p.view(-1)[-1].item()
            p.view(-1)[-1] += 1e-3
            assert weights_fingerprint(model) != fp, name
            p.view(-1)[-1] = old
    assert weights_fingerprint(model) == fp
    as_bf16 = model.to(torch.bfloat16)
    fp16 = weights_fingerprint(as_bf16)
    assert weights_fingerprint(as_bf16.to(torch.float32)) == fp16


def test_policy_fingerprint_is_cached_by_the_weight_files(tiny_policy, tmp_path, monkeypatch):
    """A folder's fingerprint is computed once per (path, size, mtime) and cached in the user cache dir; an
    in-memory model's is computed from its parameters, with the same value."""
    import igcritic.policy as policy_mod
    from igcritic.policy import load_policy, policy_fingerprint, weights_fingerprint

    monkeypatch.setenv(policy_mod.EMBEDDED_CACHE_ENV, str(tmp_path / "cache"))
    tiny_policy.model.save_pretrained(tmp_path / "m")
    tiny_policy.tokenizer.save_pretrained(tmp_path / "m")
    calls = []
    real = policy_mod.weights_fingerprint
    monkeypatch.setattr(policy_mod, "weights_fingerprint", lambda m: calls.append(1) or real(m))
    loaded = load_policy(str(tmp_path / "m"))
    fp = policy_fingerprint(loaded)
    assert fp == weights_fingerprint(tiny_policy.model) == policy_fingerprint(tiny_policy) and len(calls) == 2
    assert policy_fingerprint(load_policy(str(tmp_path / "m"))) == fp and len(calls) == 2  # cached
    assert (tmp_path / "cache" / policy_mod.FINGERPRINT_CACHE).is_file()
    make_tiny_policy(seed=1).model.save_pretrained(tmp_path / "m")  # new weights, new mtime
    assert policy_fingerprint(load_policy(str(tmp_path / "m"))) != fp and len(calls) == 3
