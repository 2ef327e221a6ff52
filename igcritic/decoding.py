"""Token sampling and KV-cached rollouts that also return the latent of every step.

One decoding loop serves both ``collect`` (rollouts from the unchanged policy) and the runtime (block
sampling), so latents seen at training time and at inference time come from the same code path.
``rollout`` feeds the final sampled token once more, so a T-token answer has all T+1 latents h_0..h_T
(``model.generate`` stops before that last forward).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from igcritic.policy import Policy


@dataclass
class SamplingConfig:
    """How the policy samples; defaults match SmolLM2's recommended chat sampling."""

    temperature: float = 0.7
    """Softmax temperature; 0 means greedy."""
    top_p: float = 0.9
    """Nucleus mass kept (1.0 disables)."""
    top_k: int = 0
    """Keep only the k most likely tokens (0 disables)."""
    max_new_tokens: int = 128
    """D: the most tokens an answer may have."""

    @property
    def greedy(self) -> bool:
        return self.temperature <= 0


def filter_logits(logits: torch.Tensor, cfg: SamplingConfig) -> torch.Tensor:
    """Temperature, top-k and top-p applied to ``(B, V)`` logits; returns a new tensor."""
    logits = logits.float() / max(cfg.temperature, 1e-6)
    if cfg.top_k and cfg.top_k < logits.shape[-1]:
        kth = torch.topk(logits, cfg.top_k, dim=-1).values[:, -1:]
        logits = logits.masked_fill(logits < kth, float("-inf"))
    if cfg.top_p < 1.0:
        sorted_logits, order = torch.sort(logits, descending=True, dim=-1)
        cum = sorted_logits.softmax(-1).cumsum(-1)
        drop_sorted = cum - sorted_logits.softmax(-1) > cfg.top_p  # keep the token that crosses top_p
        drop = drop_sorted.scatter(-1, order, drop_sorted)
        logits = logits.masked_fill(drop, float("-inf"))
    return logits


def next_token(
    logits: torch.Tensor, cfg: SamplingConfig, generator: torch.Generator | None = None
) -> torch.Tensor:
    """Pick one token per row of ``(B, V)`` logits -> ``(B,)``."""
    if cfg.greedy:
        return logits.argmax(-1)
    probs = filter_logits(logits, cfg).softmax(-1)
    return torch.multinomial(probs, 1, generator=generator).squeeze(-1)


def prefix_texts(tokenizer, token_ids: list[int]) -> list[str]:
    """Decoded answer prefixes y_<=t for t = 0..T (T + 1 strings, "" first): what prefix scorers read."""
    return [tokenizer.decode(token_ids[:t], skip_special_tokens=True) for t in range(len(token_ids) + 1)]


@dataclass
class Rollouts:
    """Answers of one batch: token ids (without padding), latents h_0..h_T and whether EOS was reached."""

    tokens: list[list[int]]
    latents: list[torch.Tensor]  # each (T_i + 1, H), float32 on CPU
    finished: list[bool]

    @property
    def num_tokens(self) -> int:
        return sum(len(t) for t in self.tokens)


@torch.inference_mode()
def rollout(
    policy: Policy, prompts: list[str], cfg: SamplingConfig, generator: torch.Generator | None = None
) -> Rollouts:
    """Sample one answer per prompt with the KV cache; EOS is part of the answer when it is sampled."""
    enc = policy.encode_prompts(prompts, new_tokens=cfg.max_new_tokens)
    mask = enc["attention_mask"]
    bsz = mask.shape[0]
    eos = torch.tensor(policy.eos_token_ids, device=mask.device)
    logits, lat, cache = policy.forward(enc["input_ids"], mask)
    steps = [lat[:, -1].float()]  # h_0: (B, H)
    tokens = []
    done = torch.zeros(bsz, dtype=torch.bool, device=mask.device)
    lengths = torch.zeros(bsz, dtype=torch.long, device=mask.device)
    for _ in range(cfg.max_new_tokens):
        tok = next_token(logits, cfg, generator)
        tok = torch.where(done, torch.full_like(tok, policy.pad_token_id), tok)
        tokens.append(tok)
        lengths += (~done).long()
        done = done | torch.isin(tok, eos)
        mask = torch.cat([mask, torch.ones_like(mask[:, :1])], dim=1)
        logits, lat, cache = policy.forward(tok[:, None], mask, cache)
        steps.append(lat[:, -1].float())
        if bool(done.all()):
            break
    tok_mat = torch.stack(tokens, 1).cpu() if tokens else torch.zeros(bsz, 0, dtype=torch.long)
    lat_mat = torch.stack(steps, 1).cpu()  # (B, steps + 1, H)
    lengths = lengths.cpu()
    return Rollouts(
        tokens=[tok_mat[i, : lengths[i]].tolist() for i in range(bsz)],
        latents=[lat_mat[i, : lengths[i] + 1] for i in range(bsz)],
        finished=done.cpu().tolist(),
    )
