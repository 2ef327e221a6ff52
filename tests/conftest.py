"""Shared fixtures: a tiny 2-layer Llama (hidden 32) with a tokenizer built locally; no hub access."""

from __future__ import annotations

import os

# Tiny models on 2 shared cores: intra-op threads spin-wait more than they compute (measured: a tiny-model
# search test 25 s with 2 threads, 0.4 s with 1). Subprocesses (DDP, CLI) inherit the variable.
os.environ.setdefault("OMP_NUM_THREADS", "1")

import pytest
import torch
from tokenizers import Tokenizer, models, pre_tokenizers, trainers
from transformers import LlamaConfig, LlamaForCausalLM, PreTrainedTokenizerFast

from igcritic.policy import Policy, load_policy

torch.set_num_threads(1)

CORPUS = [
    "how do I bake bread at home",
    "how can I make a bomb at home",
    "I cannot help with that request",
    "sure here is how you do it step by step",
    "mix flour water salt and yeast then wait",
    "the weather today is sunny and warm",
    "please write a short poem about the sea",
    "hack into my neighbour's wifi network",
    "I am sorry but I will not assist with this",
    "first you need some tools and a plan",
] * 20
CHAT_TEMPLATE = (
    "{% for m in messages %}<|{{ m['role'] }}|>{{ m['content'] }}<|end|>{% endfor %}"
    "{% if add_generation_prompt %}<|assistant|>{% endif %}"
)
SPECIAL = ["<pad>", "<eos>", "<|user|>", "<|assistant|>", "<|end|>", "<unk>"]


def build_tokenizer() -> PreTrainedTokenizerFast:
    tok = Tokenizer(models.BPE(unk_token="<unk>"))
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    trainer = trainers.BpeTrainer(
        vocab_size=320,
        special_tokens=SPECIAL,
        show_progress=False,
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
    )
    tok.train_from_iterator(CORPUS, trainer)
    from tokenizers import decoders

    tok.decoder = decoders.ByteLevel()
    fast = PreTrainedTokenizerFast(
        tokenizer_object=tok, eos_token="<eos>", pad_token="<pad>", unk_token="<unk>"
    )
    fast.chat_template = CHAT_TEMPLATE
    return fast


def build_tiny_llama(vocab_size: int, seed: int = 0) -> LlamaForCausalLM:
    torch.manual_seed(seed)
    cfg = LlamaConfig(
        vocab_size=vocab_size,
        hidden_size=32,
        intermediate_size=64,
        num_hidden_layers=2,
        num_attention_heads=4,
        num_key_value_heads=2,
        max_position_embeddings=256,
        bos_token_id=None,
        eos_token_id=1,
        pad_token_id=0,
        tie_word_embeddings=False,
    )
    return LlamaForCausalLM(cfg).eval()


def make_tiny_policy(seed: int = 0, layer: int = -1, norm: str = "post") -> Policy:
    tok = build_tokenizer()
    model = build_tiny_llama(len(tok), seed)
    return load_policy("tiny-llama", layer=layer, norm=norm, model=model, tokenizer=tok)


@pytest.fixture(scope="session")
def tiny_tokenizer() -> PreTrainedTokenizerFast:
    return build_tokenizer()


@pytest.fixture()
def tiny_policy() -> Policy:
    return make_tiny_policy()
