"""Shared fixtures: a tiny 2-layer Llama (hidden 32) with a tokenizer built locally (tests/helpers.py)."""

from __future__ import annotations

import os

# Tiny models on 2 shared cores: intra-op threads spin-wait more than they compute (measured: a tiny-model
# search test 25 s with 2 threads, 0.4 s with 1). Subprocesses (DDP, CLI) inherit the variable.
os.environ.setdefault("OMP_NUM_THREADS", "1")

import pytest
import torch
from helpers import build_tokenizer, make_tiny_policy
from transformers import PreTrainedTokenizerFast

from igcritic.policy import Policy

torch.set_num_threads(1)


@pytest.fixture(scope="session")
def tiny_tokenizer() -> PreTrainedTokenizerFast:
    return build_tokenizer()


@pytest.fixture()
def tiny_policy() -> Policy:
    return make_tiny_policy()
