"""Any Hugging Face sequence classifier as a scorer, fed (prompt, response), scored at a stride."""

from __future__ import annotations

from functools import cached_property
from pathlib import Path

import numpy as np
import torch

from igcritic.prompts import transcript
from igcritic.scorers.base import Role, ScorerError, ScorerInfo, sign_for, strided_prefix_scores


class SeqClsScorer:
    """Any ``AutoModelForSequenceClassification`` folder, fed the pair (prompt, response), scored at a stride.

    One-logit models give the logit; multi-label models give the softmax probability of ``label_index``.
    """

    def __init__(
        self,
        folder: str | Path,
        role: Role,
        label_index: int | None = None,
        device: str = "cpu",
        stride: int = 8,
        batch_size: int = 32,
        dtype: str | None = None,
    ):
        from transformers import AutoModelForSequenceClassification, AutoTokenizer

        folder = Path(folder)
        if stride < 1:
            raise ScorerError(f"stride {stride} must be >= 1")
        self.folder, self.role, self.stride, self.batch_size = folder, role, stride, batch_size
        self.device = torch.device(device)
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
                raise ScorerError(
                    f"seqcls:{folder} has {n} labels; pick one with seqcls:{folder}:<0..{n - 1}>"
                )
        self.label_index = label_index if n > 1 else None
        what = "logit" if n == 1 else f"softmax p(label {label_index})"
        self.info = ScorerInfo(
            id=f"seqcls:{folder}" + (f":{label_index}" if label_index is not None else ""),
            role=role,
            sign=sign_for(role),
            stride=stride,
            derivation=f"{what} of the (prompt, response) pair scored at every {stride}th token and at T, "
            "forward-filled",
            budget_hint=(0.0 if n == 1 else 0.5) if role == "cost" else None,
            bounds=None if n == 1 else (0.0, 1.0),  # one logit, or a softmax probability
        )

    @cached_property
    def max_length(self) -> int:
        limits = [
            getattr(self.model.config, "max_position_embeddings", None),
            self.tokenizer.model_max_length,
        ]
        return int(min(x for x in limits if x and x < 1e9) if any(x and x < 1e9 for x in limits) else 512)

    @torch.inference_mode()
    def score(
        self, prompts: list[str], responses: list[str], previous: np.ndarray | None = None
    ) -> np.ndarray:
        out = []
        for s in range(0, len(prompts), self.batch_size):
            enc = self.tokenizer(
                [transcript(p) for p in prompts[s : s + self.batch_size]],
                responses[s : s + self.batch_size],
                truncation=True,
                max_length=self.max_length,
                padding=True,
                return_tensors="pt",
            )
            logits = self.model(**enc.to(self.device)).logits.float()  # (B, num_labels)
            val = logits[:, 0] if self.label_index is None else logits.softmax(-1)[:, self.label_index]
            out.append(val.cpu().numpy())
        return np.concatenate(out).astype(np.float32) if out else np.zeros(0, np.float32)

    def prefix_scores(self, prompts: list[str], prefix_texts: list[list[str]]) -> list[np.ndarray]:
        return strided_prefix_scores(self.score, prompts, prefix_texts, self.stride)

    def to_dict(self) -> dict:
        return {
            **self.info.to_dict(),
            "kind": "seqcls",
            "architecture": type(self.model).__name__,
            "num_labels": int(self.model.config.num_labels),
            "label_index": self.label_index,
        }
