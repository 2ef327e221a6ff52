"""Policies for the benchmarks: any ``load_policy`` id, or ``random-llama-7b``, a Llama-2-7B-shaped model
with random weights built directly on the device (no 13 GB download or save), using the embedded
SmolLM2 tokenizer (vocab 49152). Speed does not depend on the weights' values. ``random-llama-tiny`` is the
same construction at toy size (2 layers, H = 64), for dry runs of the GPU script on a CPU."""

from __future__ import annotations

import torch

from igcritic.policy import EMBEDDED_POLICY_ID, Policy, embedded_model_dir, load_policy

RANDOM_7B = "random-llama-7b"
RANDOM_TINY = "random-llama-tiny"
SHAPES = {
    RANDOM_7B: {
        "hidden_size": 4096,
        "intermediate_size": 11008,
        "num_hidden_layers": 32,
        "num_attention_heads": 32,
    },
    RANDOM_TINY: {
        "hidden_size": 64,
        "intermediate_size": 128,
        "num_hidden_layers": 2,
        "num_attention_heads": 4,
    },
}


def bench_policy(model: str, dtype: str, device: str, extra_layers: tuple[int, ...] = ()) -> Policy:
    if model not in SHAPES:
        return load_policy(model, dtype=dtype, device=device, extra_layers=extra_layers)
    from transformers import AutoTokenizer, LlamaConfig, LlamaForCausalLM

    tok = AutoTokenizer.from_pretrained(embedded_model_dir())
    cfg = LlamaConfig(
        vocab_size=len(tok),
        **SHAPES[model],
        num_key_value_heads=SHAPES[model]["num_attention_heads"],
        max_position_embeddings=4096,
        eos_token_id=tok.eos_token_id,
        pad_token_id=tok.pad_token_id,
    )
    with torch.device(device):
        net = LlamaForCausalLM(cfg).to(getattr(torch, dtype))
    net.generation_config.eos_token_id = tok.eos_token_id
    return load_policy(model, model=net, tokenizer=tok, device=device, extra_layers=extra_layers)


__all__ = ["bench_policy", "RANDOM_7B", "RANDOM_TINY", "EMBEDDED_POLICY_ID"]
