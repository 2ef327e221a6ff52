"""Block sampler of the guarded runtime: rows of partial answers that share one KV cache.

The prompts of a batch are prefilled ONCE (:func:`prefill`). From then on every partial answer is a row of
:class:`Rows`: its response tokens, its attention mask over the cached positions, the next-token logits and
the latent ``h`` at its end, and the cost ``S`` tracked so far. :meth:`Rows.select` turns beams into
candidates (and candidates back into beams) by indexing the batch dimension of the cache
(``Cache.batch_select_indices``), so a candidate never re-encodes its prompt. :func:`sample_block` extends
every row by one block with the same :func:`igcritic.decoding.next_token` that ``collect`` uses.

Rewinding a row to the start of a block (a retry) masks the block's cached positions out of the attention
mask instead of cropping the cache, so rows of different prompts keep sharing one cache.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import torch

from igcritic.decoding import SamplingConfig, next_token
from igcritic.policy import Policy

LogitsProcessor = Callable[[torch.Tensor, torch.Tensor], torch.Tensor]
"""A pure ``(input_ids (B, T), scores (B, V)) -> new scores (B, V)`` function (transformers' convention)."""


@dataclass
class Rows:
    """A flat batch of partial answers (beams or candidates of one or more prompts) sharing one KV cache."""

    prompt: torch.Tensor
    """(R,) long, on CPU: index of the prompt each row answers."""
    tokens: list[list[int]]
    """Response tokens of each row (EOS included when it was sampled)."""
    mask: torch.Tensor
    """(R, L) attention mask over the cached positions (0: left padding or a rewound block)."""
    logits: torch.Tensor
    """(R, V) next-token logits at the end of each row."""
    h: torch.Tensor
    """(R, H) float32 latent at the end of each row (h_t of its last token)."""
    cost: torch.Tensor
    """(R,) float32 on CPU: the cost S tracked for each row (exact or latent)."""
    cache: object
    """The policy's KV cache; batch row r belongs to row r."""

    def __len__(self) -> int:
        return len(self.tokens)

    def select(self, idx: torch.Tensor) -> Rows:
        """Rows ``idx`` (repeats allowed: expansion; a subset: selection). Consumes ``self``'s cache."""
        idx_cpu = idx.cpu()
        dev = self.mask.device
        self.cache.batch_select_indices(idx.to(dev))
        return Rows(
            prompt=self.prompt[idx_cpu],
            tokens=[list(self.tokens[i]) for i in idx_cpu.tolist()],
            mask=self.mask[idx.to(dev)],
            logits=self.logits[idx.to(dev)],
            h=self.h[idx.to(self.h.device)],
            cost=self.cost[idx_cpu],
            cache=self.cache,
        )


@dataclass
class Block:
    """What one call of :func:`sample_block` added to each row."""

    new: torch.Tensor
    """(R,) long: tokens each row gained in this block."""
    eos: torch.Tensor
    """(R,) bool: the row sampled an end-of-sequence token in this block."""
    steps: int
    """Forward steps the block took (= cached positions it appended to every row)."""
    start_logits: torch.Tensor
    """(R, V) logits at the start of the block, to rewind a row."""
    start_h: torch.Tensor
    """(R, H) latents at the start of the block, to rewind a row."""


@torch.inference_mode()
def prefill(policy: Policy, prompts: list[str]) -> Rows:
    """Encode and run every prompt once; one row per prompt with ``h_0`` and the logits of ``y_1``."""
    enc = policy.encode_prompts(prompts)
    logits, lat, cache = policy.forward(enc["input_ids"], enc["attention_mask"])
    n = len(prompts)
    return Rows(
        prompt=torch.arange(n),
        tokens=[[] for _ in range(n)],
        mask=enc["attention_mask"],
        logits=logits,
        h=lat[:, -1].float(),
        cost=torch.zeros(n),
        cache=cache,
    )


@torch.inference_mode()
def sample_block(
    policy: Policy,
    rows: Rows,
    limits: torch.Tensor,
    sampling: SamplingConfig,
    generator: torch.Generator | None = None,
    processor: LogitsProcessor | None = None,
) -> Block:
    """Extend each row by up to ``limits[r]`` tokens (stopping at EOS), in place; all rows step together.

    Rows that stopped keep feeding the pad token (their later positions are never used again); their
    ``h`` and ``logits`` stay those of their last real token.
    """
    dev = rows.mask.device
    bsz = len(rows)
    limits = limits.to(dev)
    eos_ids = torch.tensor(policy.eos_token_ids, device=dev)
    start_logits, start_h = rows.logits, rows.h
    stopped = limits <= 0
    eos = torch.zeros(bsz, dtype=torch.bool, device=dev)
    new = torch.zeros(bsz, dtype=torch.long, device=dev)
    fed: list[torch.Tensor] = []
    logits, h, mask, cache = rows.logits, rows.h, rows.mask, rows.cache
    steps = 0
    while not bool(stopped.all()):
        scores = logits if processor is None else processor(_stack(fed, bsz, dev), logits)
        tok = next_token(scores, sampling, generator)  # (R,)
        active = ~stopped
        tok = torch.where(active, tok, torch.full_like(tok, policy.pad_token_id))
        fed.append(tok)
        new += active.long()
        hit = active & torch.isin(tok, eos_ids)
        eos |= hit
        mask = torch.cat([mask, torch.ones_like(mask[:, :1])], dim=1)
        step_logits, lat, cache = policy.forward(tok[:, None], mask, cache)
        logits = torch.where(active[:, None], step_logits, logits)
        h = torch.where(active[:, None], lat[:, -1].float(), h)
        steps += 1
        stopped = stopped | hit | (new >= limits)
    block_tokens = _stack(fed, bsz, dev).cpu()  # (R, steps)
    for r, n in enumerate(new.cpu().tolist()):
        rows.tokens[r].extend(block_tokens[r, :n].tolist())
    rows.logits, rows.h, rows.mask, rows.cache = logits, h, mask, cache
    return Block(new=new.cpu(), eos=eos.cpu(), steps=steps, start_logits=start_logits, start_h=start_h)


def rewind(rows: Rows, which: torch.Tensor, block: Block, parent_of: torch.Tensor) -> None:
    """Undo the last block for rows ``which`` (in place): mask its positions, restore logits, h and tokens.

    ``parent_of[r]`` is the row (in the block's batch) that row r was selected from; ``block`` is that block.
    """
    if not bool(which.any()) or block.steps == 0:
        return
    dev = rows.mask.device
    w = which.to(dev)
    src = parent_of.to(dev)
    rows.mask = rows.mask.clone()
    rows.mask[w, -block.steps :] = 0
    rows.logits = torch.where(w[:, None], block.start_logits[src], rows.logits)
    rows.h = torch.where(w.to(rows.h.device)[:, None], block.start_h[src.to(rows.h.device)], rows.h)
    for r in torch.nonzero(which).flatten().tolist():
        n = int(block.new[parent_of[r]])
        if n:
            del rows.tokens[r][-n:]


def _stack(fed: list[torch.Tensor], bsz: int, dev: torch.device) -> torch.Tensor:
    return torch.stack(fed, 1) if fed else torch.zeros(bsz, 0, dtype=torch.long, device=dev)
