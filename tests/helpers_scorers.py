"""Tiny score-model folders for the scorer tests: a safe-rlhf ``LlamaForScore`` layout and a seq
classifier."""

from __future__ import annotations

import json
from pathlib import Path

import torch
from safetensors.torch import save_file
from transformers import LlamaConfig, LlamaForSequenceClassification, LlamaModel


def tiny_llama_config(vocab_size: int, **extra) -> LlamaConfig:
    return LlamaConfig(
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
        **extra,
    )


def make_beaver_folder(
    folder: Path, tokenizer, bias: bool = False, seed: int = 0, score_type: str = "cost"
) -> Path:
    """A random ``LlamaForScore`` checkpoint as safe-rlhf saves it: ``model.*`` + ``score_head.*`` keys."""
    torch.manual_seed(seed)
    cfg = tiny_llama_config(len(tokenizer), score_dim=1, bias=bias, score_type=score_type, do_normalize=False)
    cfg.architectures = ["LlamaModelForScore"]
    body = LlamaModel(cfg).eval()
    head = torch.nn.Linear(cfg.hidden_size, 1, bias=bias)
    state = {f"model.{k}": v.contiguous() for k, v in body.state_dict().items()}
    state.update({f"score_head.{k}": v.contiguous() for k, v in head.state_dict().items()})
    folder.mkdir(parents=True, exist_ok=True)
    save_file(state, str(folder / "model.safetensors"), metadata={"format": "pt"})
    cfg.save_pretrained(folder)
    tokenizer.save_pretrained(folder)
    return folder


def make_seqcls_folder(folder: Path, tokenizer, num_labels: int = 2, seed: int = 0) -> Path:
    """A random ``LlamaForSequenceClassification`` saved with the local tokenizer."""
    torch.manual_seed(seed)
    model = LlamaForSequenceClassification(tiny_llama_config(len(tokenizer), num_labels=num_labels)).eval()
    model.save_pretrained(folder)
    tokenizer.save_pretrained(folder)
    return folder


def read_jsonl(path: Path) -> list[dict]:
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]
