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

SLOW_MARKERS = ("embedded", "multiprocess", "subprocess", "s3", "gpu")
"""Tiers (pyproject.toml's markers): a test with any of these is also ``slow``, so ``pytest -m "not slow"`` is
the fast local run; CI runs everything."""


def pytest_collection_modifyitems(config, items):
    no_gpu = not torch.cuda.is_available()
    for item in items:
        if any(item.get_closest_marker(m) for m in SLOW_MARKERS):
            item.add_marker(pytest.mark.slow)
        if no_gpu and item.get_closest_marker("gpu"):
            item.add_marker(pytest.mark.skip(reason="needs a CUDA GPU"))


@pytest.fixture(scope="session")
def tiny_tokenizer() -> PreTrainedTokenizerFast:
    return build_tokenizer()


@pytest.fixture()
def tiny_policy() -> Policy:
    return make_tiny_policy()
