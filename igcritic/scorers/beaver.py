"""safe-rlhf score models (beaver cost and reward) with plain transformers: one forward gives every prefix
score."""

from __future__ import annotations

import json
import logging
from pathlib import Path

import numpy as np
import torch

from igcritic.prompts import prompt_messages
from igcritic.scorers.base import (
    Role,
    ScorerError,
    ScorerInfo,
    _check_batch,
    _common_prefix_len,
    pad_batch,
    sign_for,
)

log = logging.getLogger(__name__)

BEAVER_TEMPLATE = "BEGINNING OF CONVERSATION: USER: {prompt} ASSISTANT:"
"""safe-rlhf's format of a one-turn prompt; the response follows ``ASSISTANT:`` directly."""


def beaver_prompt(prompt: str, eos_token: str) -> str:
    """safe-rlhf's text of a prompt string (a text or a conversation, :mod:`igcritic.prompts`), as its
    ``format_prompt`` writes a dialogue: ``BEGINNING OF CONVERSATION: `` then ``USER: {turn} ASSISTANT:``
    per user turn, each earlier answer followed by the EOS token. safe-rlhf has no system role, so a system
    message opens the first user turn (a blank line after it)."""
    messages = prompt_messages(prompt)
    system = messages[0]["content"] + "\n\n" if messages[0]["role"] == "system" else ""
    out = "BEGINNING OF CONVERSATION: "
    for m in messages[1:] if system else messages:
        if m["role"] == "user":
            out += f"USER: {system}{m['content']} ASSISTANT:"
            system = ""
        else:
            out += m["content"] + eos_token
    return out


def _state_dict_files(folder: Path, wanted: tuple[str, ...] = ()) -> list[Path]:
    """Weight files of a checkpoint folder; with a shard index, only the shards holding ``wanted`` keys."""
    for index in ("model.safetensors.index.json", "pytorch_model.bin.index.json"):
        if (folder / index).exists() and wanted:
            weight_map = json.loads((folder / index).read_text()).get("weight_map", {})
            return [folder / f for f in sorted({f for k, f in weight_map.items() if k.startswith(wanted)})]
    files = sorted(folder.glob("*.safetensors")) or sorted(folder.glob("pytorch_model*.bin"))
    if not files:
        raise ScorerError(
            f"no *.safetensors or pytorch_model*.bin weights in {folder}; pass a safe-rlhf score model folder"
        )
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

    Per-token scores come from ONE forward of ``template(prompt) + response``; the score of prefix ``y_<=t``
    is read at the last scorer token that ends inside that prefix (offset mapping), which equals a separate
    forward on the prefix whenever the prefix ends on a scorer-token boundary.
    """

    def __init__(
        self,
        folder: str | Path,
        role: Role,
        device: str = "cpu",
        dtype: str | None = None,
        batch_size: int = 8,
    ):
        from transformers import AutoTokenizer, LlamaConfig, LlamaModel

        folder = Path(folder)
        self.folder, self.role, self.batch_size = folder, role, batch_size
        dev = torch.device(device)
        torch_dtype = (
            getattr(torch, dtype) if dtype else (torch.bfloat16 if dev.type == "cuda" else torch.float32)
        )
        self.config = LlamaConfig.from_pretrained(folder)
        head = _read_keys(folder, ("score_head.", "normalizer."))
        if "score_head.weight" not in head:
            raise ScorerError(
                f"{folder} has no score_head.weight; it is not a safe-rlhf score model (use seqcls:{folder})"
            )
        hf_log = logging.getLogger("transformers.modeling_utils")
        prev = hf_log.level
        hf_log.setLevel(logging.ERROR)  # score_head.* is "unexpected"
        try:
            self.model = (
                LlamaModel.from_pretrained(folder, config=self.config, dtype=torch_dtype).to(dev).eval()
            )
        finally:
            hf_log.setLevel(prev)
        self.model.requires_grad_(False)
        w = head["score_head.weight"]
        self.score_head = torch.nn.Linear(w.shape[1], w.shape[0], bias="score_head.bias" in head)
        self.score_head.load_state_dict(
            {k.removeprefix("score_head."): v for k, v in head.items() if k.startswith("score_head.")}
        )
        self.score_head = self.score_head.to(device=dev, dtype=torch.float32).eval()
        self._normalize = self._normalizer(head)
        self.tokenizer = AutoTokenizer.from_pretrained(folder)
        if not self.tokenizer.is_fast:
            raise ScorerError(
                f"{folder}: the tokenizer must be a fast tokenizer (offset mappings); add tokenizer.json"
            )
        self.device = dev
        sign = sign_for(role)
        self.info = ScorerInfo(
            id=f"beaver:{folder}",
            role=role,
            sign=sign,
            stride=None,
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
        return self.head(prompt) + response

    def head(self, prompt: str) -> str:
        return beaver_prompt(prompt, self.tokenizer.eos_token or "")

    @torch.inference_mode()
    def _token_scores(self, texts: list[str]) -> tuple[list[np.ndarray], list[list[tuple[int, int]]]]:
        """Per-token scores and offsets of each text, batched with right padding (causal: padding is
        inert)."""
        enc = self.tokenizer(texts, return_offsets_mapping=True, add_special_tokens=True)
        scores: list[np.ndarray] = []
        pad = self.tokenizer.pad_token_id if self.tokenizer.pad_token_id is not None else 0
        for s in range(0, len(texts), self.batch_size):
            ids = enc["input_ids"][s : s + self.batch_size]
            x, m = pad_batch(ids, pad)
            hidden = self.model(
                input_ids=x.to(self.device), attention_mask=m.to(self.device)
            ).last_hidden_state
            sc = self.score_head(hidden.float())[..., 0]  # (B, L)
            if self._normalize is not None:
                sc = self._normalize(sc)
            sc = sc.cpu().numpy().astype(np.float32)
            scores += [sc[j, : len(row)] for j, row in enumerate(ids)]
        return scores, [list(map(tuple, o)) for o in enc["offset_mapping"]]

    def prefix_scores(self, prompts: list[str], prefix_texts: list[list[str]]) -> list[np.ndarray]:
        _check_batch(prompts, prefix_texts)
        heads = [self.head(p) for p in prompts]
        scores, offsets = self._token_scores([h + pt[-1] for h, pt in zip(heads, prefix_texts, strict=True)])
        out = []
        for head, pts, sc, off in zip(heads, prefix_texts, scores, offsets, strict=True):
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

    def score(
        self, prompts: list[str], responses: list[str], previous: np.ndarray | None = None
    ) -> np.ndarray:
        scores, _ = self._token_scores([self.text(p, r) for p, r in zip(prompts, responses, strict=True)])
        return np.array([s[-1] for s in scores], dtype=np.float32)

    def to_dict(self) -> dict:
        return {
            **self.info.to_dict(),
            "kind": "beaver",
            "template": BEAVER_TEMPLATE,
            "model_type": self.config.model_type,
            "hidden_size": self.config.hidden_size,
            "score_type": getattr(self.config, "score_type", None),
            "do_normalize": bool(getattr(self.config, "do_normalize", False)),
        }
