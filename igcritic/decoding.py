"""The one decode loop: token sampling, logits processors and KV-cached rows that return their latents.

Both ``collect`` and the guarded runtime decode through :func:`sample_block`, so latents seen at training
time and at inference time come from the same code. The prompts of a batch are prefilled once
(:func:`prefill`); from then on every partial answer is a row of :class:`Rows` (its tokens, its attention
mask over the cached positions, the next-token logits and the latent ``h`` at its end, the cost ``S``
tracked so far). :meth:`Rows.select` turns beams into candidates and back by indexing the batch dimension of
the cache, so a candidate never re-encodes its prompt. A rollout (``collect``) is one block of width D:
:func:`rollout` keeps every step's latent, and feeds the final sampled token once more, so a T-token answer
has all T+1 latents h_0..h_T (``model.generate`` stops before that last forward).

Rewinding a row to the start of a block (a retry) masks the block's cached positions out of the attention
mask instead of cropping the cache, so rows of different prompts keep sharing one cache.

A row may also carry a :class:`RunningPrefix` (``Rows.prefix``): h_0, the sum and count of h_0..h_j and h_j
of its answer so far, which is all a classifier on the policy's own layers reads of a prefix (the last
hidden state and the running mean from the prompt's end). Selection indexes it with the rows and a rewind
restores it, so a scorer of that kind scores every prefix from the decode pass instead of re-encoding text.

The cache is transformers' dynamic cache, or (``compile: true``) a :class:`StaticKV`: a static cache of a
fixed number of rows and positions with ``torch.compile`` of the one-token step, for GPUs (on CPU it is
slower: BENCHMARKS.md). Both take the same steps and give the same tokens under greedy decoding.
"""

from __future__ import annotations

import threading
import weakref
from collections.abc import Callable
from dataclasses import dataclass

import torch

from igcritic.policy import Policy, PolicyError

STATIC_LENGTH_STEP = 128
"""A static cache's positions are rounded up to a multiple of this, so prompt batches of similar width share
one compiled step (each new shape compiles again: ~1 min on CPU)."""


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
        logits = logits.masked_fill(_outside_nucleus(logits, cfg.top_p), float("-inf"))
    return logits


TOP_P_HEAD = 256
"""Top-p looks at the most likely 256 tokens first and sorts the whole vocabulary only for a row whose
nucleus is wider (a full sort of a 49k vocabulary was 8% of a CPU decode step)."""


def _outside_nucleus(logits: torch.Tensor, top_p: float) -> torch.Tensor:
    """(B, V) bool: tokens outside each row's nucleus (the fewest most likely tokens whose mass reaches
    ``top_p``; the token that crosses it is kept)."""
    k = min(TOP_P_HEAD, logits.shape[-1])
    probs = logits.softmax(-1)
    head, order = torch.topk(probs, k, dim=-1)  # sorted, descending
    if bool((head.sum(-1) >= top_p).all()) or k == logits.shape[-1]:
        keep = head.cumsum(-1) - head <= top_p
        return torch.ones_like(logits, dtype=torch.bool).scatter(-1, order, ~keep)
    sorted_logits, order = torch.sort(logits, descending=True, dim=-1)
    sorted_probs = sorted_logits.softmax(-1)
    drop_sorted = sorted_probs.cumsum(-1) - sorted_probs > top_p
    return drop_sorted.scatter(-1, order, drop_sorted)


Generators = torch.Generator | list[torch.Generator] | None
"""One generator for every row, or one per prompt (indexed by ``Rows.prompt``): then a prompt's draws are
those it gets alone, whatever else shares the batch."""


def next_token(
    logits: torch.Tensor,
    cfg: SamplingConfig,
    generator: Generators = None,
    prompt: torch.Tensor | None = None,
    active: torch.Tensor | None = None,
) -> torch.Tensor:
    """Pick one token per row of ``(B, V)`` logits -> ``(B,)``. With one generator per prompt, ``prompt``
    ``(B,)`` names each row's, and prompts without an ``active`` row draw nothing (as when alone)."""
    if cfg.greedy:
        return logits.argmax(-1)
    probs = filter_logits(logits, cfg).softmax(-1)
    if not isinstance(generator, list):
        return torch.multinomial(probs, 1, generator=generator).squeeze(-1)
    out = probs.argmax(-1)  # rows of prompts that draw nothing: never used (their rows have stopped)
    for p in prompt.unique().tolist():
        rows = torch.nonzero(prompt == p).flatten().to(probs.device)
        if active is None or bool(active[rows].any()):
            out[rows] = torch.multinomial(probs[rows], 1, generator=generator[p]).squeeze(-1)
    return out


def prefix_texts(tokenizer, token_ids: list[int]) -> list[str]:
    """Decoded answer prefixes y_<=t for t = 0..T (T + 1 strings, "" first): what prefix scorers read."""
    return [tokenizer.decode(token_ids[:t], skip_special_tokens=True) for t in range(len(token_ids) + 1)]


LogitsProcessor = Callable[[torch.Tensor, torch.Tensor], torch.Tensor]
"""A pure ``(input_ids (B, T), scores (B, V)) -> new scores (B, V)`` function (transformers' convention);
``input_ids`` are the tokens the rows gained so far in the current block."""


class LogitsProcessorList(list):
    """Processors applied in order, shaped like transformers' ``LogitsProcessorList``."""

    def __call__(self, input_ids: torch.Tensor, scores: torch.Tensor) -> torch.Tensor:
        for processor in self:
            scores = processor(input_ids, scores)
        return scores


@dataclass(frozen=True)
class RejectedTokenPenalty:
    """Logits processor of a resampled block: subtract ``strength`` from tokens of rejected candidates."""

    banned: torch.Tensor
    """(B, V) bool: tokens that appeared in the rejected candidates of each row's prompt."""
    strength: float = 2.0

    def __call__(self, input_ids: torch.Tensor, scores: torch.Tensor) -> torch.Tensor:
        """``(input_ids (B, T), scores (B, V)) -> new (B, V)``; never modifies ``scores``."""
        return scores - self.strength * self.banned.to(scores.dtype)


@dataclass(frozen=True)
class SuppressTokens:
    """Logits processor that forbids ``token_ids`` (``ignore_eos``: a fixed N x D tokens in benchmarks)."""

    token_ids: tuple[int, ...]

    def __call__(self, input_ids: torch.Tensor, scores: torch.Tensor) -> torch.Tensor:
        out = scores.clone()
        out[:, list(self.token_ids)] = float("-inf")
        return out


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
    """The KV cache (transformers' dynamic cache, or a :class:`StaticKV`); batch row r belongs to row r."""
    prefix: RunningPrefix | None = None
    """Running latents of each row's answer (None: not tracked); advanced by the caller after a block."""
    cost_tail: torch.Tensor | None = None
    """(R, w - 1) float32 on CPU: the latent Ŝ of each row's last w - 1 tokens, NaN before ``h_0`` (None: not
    tracked); the windowed running max of the fully latent search reads it across blocks."""

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
            prefix=None if self.prefix is None else self.prefix.select(idx_cpu),
            cost_tail=None if self.cost_tail is None else self.cost_tail[idx_cpu],
        )


@dataclass
class RunningPrefix:
    """What a classifier on the policy's layers reads of each row's answer so far (float32 on CPU, the
    latent's full width W): the features of a prefix of j tokens are h_j and the mean of h_0..h_j, with h_0 at
    the prompt's end. An EOS token is not counted (the text it decodes to has none)."""

    first: torch.Tensor
    """(R, W) h_0."""
    total: torch.Tensor
    """(R, W) sum of h_0..h_j."""
    count: torch.Tensor
    """(R,) long: j + 1."""
    last: torch.Tensor
    """(R, W) h_j."""

    @classmethod
    def start(cls, h0: torch.Tensor) -> RunningPrefix:
        h0 = h0.detach().float().cpu()
        return cls(h0, h0.clone(), torch.ones(len(h0), dtype=torch.long), h0)

    def select(self, idx: torch.Tensor) -> RunningPrefix:
        return RunningPrefix(self.first[idx], self.total[idx], self.count[idx], self.last[idx])

    def where(self, mask: torch.Tensor, other: RunningPrefix) -> RunningPrefix:
        """``other``'s rows where ``mask`` (R,), else this one's."""
        m = mask.cpu()[:, None]
        return RunningPrefix(
            torch.where(m, other.first, self.first),
            torch.where(m, other.total, self.total),
            torch.where(mask.cpu(), other.count, self.count),
            torch.where(m, other.last, self.last),
        )

    def advance(
        self, latents: torch.Tensor, counted: torch.Tensor
    ) -> tuple[RunningPrefix, torch.Tensor, torch.Tensor, torch.Tensor]:
        """After a block: ``latents`` (R, S + 1, W) of :func:`sample_block` with ``keep_latents`` and the
        tokens of it each row counts (R,). Returns the state after and, for every step s of the block, the
        prefix's h (R, S, W), its running mean (R, S, W) and whether row r counted step s (R, S)."""
        steps = latents[:, 1:].float()
        n_steps = steps.shape[1]
        valid = torch.arange(n_steps)[None, :] < counted[:, None]
        steps = steps * valid[..., None]
        sums = self.total[:, None] + steps.cumsum(1)
        mean = sums / (self.count[:, None] + torch.arange(1, n_steps + 1)[None, :])[..., None]
        if not n_steps:
            return self, steps, mean, valid
        at = (counted - 1).clamp(min=0)
        rows = torch.arange(len(at))
        moved = (counted > 0)[:, None]
        after = RunningPrefix(
            self.first,
            torch.where(moved, sums[rows, at], self.total),
            self.count + counted,
            torch.where(moved, steps[rows, at], self.last),
        )
        return after, steps, mean, valid


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
    start_prefix: RunningPrefix | None = None
    """The rows' running prefixes at the start of the block, to rewind a row."""
    latents: torch.Tensor | None = None
    """(R, steps + 1, H) float32 on CPU with ``keep_latents``: the start latent, then each step's (row r's
    first ``new[r] + 1`` are its own; later steps fed the pad token)."""


@torch.inference_mode()
def prefill(
    policy: Policy, prompts: list[str], new_tokens: int = 1, static: tuple[int, int] | None = None
) -> Rows:
    """Encode and run every prompt once (room for ``new_tokens`` checked); one row per prompt with ``h_0``.

    ``static=(rows, steps)``: then hold the cache in a :class:`StaticKV` of ``rows`` rows with room for
    ``steps`` more forward steps (the compiled path); None: transformers' dynamic cache."""
    enc = policy.encode_prompts(prompts, new_tokens=new_tokens)
    logits, lat, cache = policy.forward(enc["input_ids"], enc["attention_mask"])
    n = len(prompts)
    if static is not None:
        cache = StaticKV.load(
            policy, cache, rows=static[0], length=enc["attention_mask"].shape[1] + static[1]
        )
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
    generator: Generators = None,
    processor: LogitsProcessor | None = None,
    keep_latents: bool = False,
    latent_logits: Callable[[torch.Tensor], torch.Tensor] | None = None,
) -> Block:
    """Extend each row by up to ``limits[r]`` tokens (stopping at EOS), in place; all rows step together.

    Rows that stopped keep feeding the pad token (their later positions are never used again); their
    ``h`` and ``logits`` stay those of their last real token. ``latent_logits``
    (``h (R, H) -> logits (R, V)``) replaces each step's logits before ``processor`` (RE-Control: the LM
    head on an edited latent); the cache and ``rows.logits`` keep the policy's own.
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
    kept = [start_h] if keep_latents else None
    logits, h, mask, cache = rows.logits, rows.h, rows.mask, rows.cache
    while not bool(stopped.all()):
        scores = logits if latent_logits is None else latent_logits(h)
        scores = scores if processor is None else processor(_stack(fed, bsz, dev), scores)
        active = ~stopped
        tok = next_token(scores, sampling, generator, rows.prompt, active)  # (R,)
        tok = torch.where(active, tok, torch.full_like(tok, policy.pad_token_id))
        fed.append(tok)
        new += active.long()
        hit = active & torch.isin(tok, eos_ids)
        eos |= hit
        mask = torch.cat([mask, torch.ones_like(mask[:, :1])], dim=1)
        if isinstance(cache, StaticKV):
            step_logits, lat = cache.step(policy, tok, mask)
        else:
            step_logits, lat, cache = policy.forward(tok[:, None], mask, cache)
        step_h = lat[:, -1].float()
        if keep_latents:
            kept.append(step_h)
        logits = torch.where(active[:, None], step_logits, logits)
        h = torch.where(active[:, None], step_h, h)
        stopped = stopped | hit | (new >= limits)
    block_tokens = _stack(fed, bsz, dev).cpu()  # (R, steps)
    for r, n in enumerate(new.cpu().tolist()):
        rows.tokens[r].extend(block_tokens[r, :n].tolist())
    rows.logits, rows.h, rows.mask, rows.cache = logits, h, mask, cache
    return Block(
        new=new.cpu(),
        eos=eos.cpu(),
        steps=len(fed),
        start_logits=start_logits,
        start_h=start_h,
        start_prefix=rows.prefix,
        latents=torch.stack(kept, 1).cpu() if keep_latents else None,
    )


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
    if rows.prefix is not None and block.start_prefix is not None:
        rows.prefix = rows.prefix.where(which, block.start_prefix.select(parent_of.cpu()))
    for r in torch.nonzero(which).flatten().tolist():
        n = int(block.new[parent_of[r]])
        if n:
            del rows.tokens[r][-n:]


def _stack(fed: list[torch.Tensor], bsz: int, dev: torch.device) -> torch.Tensor:
    return torch.stack(fed, 1) if fed else torch.zeros(bsz, 0, dtype=torch.long, device=dev)


@dataclass
class Rollouts:
    """Answers of one batch: token ids (without padding), latents h_0..h_T and whether EOS was reached."""

    tokens: list[list[int]]
    latents: list[torch.Tensor]  # each (T_i + 1, H), float32 on CPU
    finished: list[bool]
    cache: object | None = None
    """The decode's dynamic KV cache (row i: prompt i, then answer token t at position ``prompt width + t``),
    so an answer can be continued from any of its prefixes (collect's labels, when its text re-tokenises
    differently); None when there is none to continue (guarded answers, the static cache). Whoever uses it
    drops it: a batch's cache is not kept beside the next one's."""
    prompt_mask: torch.Tensor | None = None
    """(R, W) attention mask of the left-padded prompts the cache starts with."""

    @property
    def num_tokens(self) -> int:
        return sum(len(t) for t in self.tokens)


@torch.inference_mode()
def rollout(
    policy: Policy,
    prompts: list[str],
    cfg: SamplingConfig,
    generator: torch.Generator | None = None,
    static_rows: int = 0,
) -> Rollouts:
    """Sample one answer per prompt: one block of width D; EOS is part of the answer when it is sampled.

    ``static_rows > 0``: the compiled static-cache path with that many cache rows (the batch size, so every
    batch reuses one compiled step)."""
    static = (max(static_rows, len(prompts)), cfg.max_new_tokens) if static_rows else None
    rows = prefill(policy, prompts, new_tokens=cfg.max_new_tokens, static=static)
    limits = torch.full((len(rows),), cfg.max_new_tokens)
    block = sample_block(policy, rows, limits, cfg, generator, keep_latents=True)
    dynamic = static is None
    return Rollouts(
        tokens=rows.tokens,
        latents=[block.latents[i, : n + 1] for i, n in enumerate(block.new.tolist())],
        finished=block.eos.tolist(),
        cache=rows.cache if dynamic else None,
        prompt_mask=rows.mask[:, : rows.mask.shape[1] - block.steps] if dynamic else None,
    )


@torch.inference_mode()
def teacher_forced_latents(
    policy: Policy, prompts: list[str], answers: list[list[int]]
) -> list[torch.Tensor]:
    """h_0..h_T of each (prompt, answer): one forward over the left-padded prompts and right-padded answers.
    Each prompt plus its answer must fit the policy's context."""
    width = max((len(a) for a in answers), default=0)
    enc = policy.encode_prompts(prompts)  # each answer fits beside its own prompt (the caller's contract)
    ans = torch.full((len(answers), width), policy.pad_token_id, dtype=torch.long)
    ans_mask = torch.zeros((len(answers), width), dtype=enc["attention_mask"].dtype)
    for i, a in enumerate(answers):
        ans[i, : len(a)], ans_mask[i, : len(a)] = torch.tensor(a, dtype=torch.long), 1
    ids = torch.cat([enc["input_ids"], ans.to(policy.device)], 1)
    mask = torch.cat([enc["attention_mask"], ans_mask.to(policy.device)], 1)
    lat = policy.latents_of(ids, mask).float().cpu()
    start = enc["input_ids"].shape[1] - 1
    return [lat[i, start : start + len(a) + 1] for i, a in enumerate(answers)]


class StaticKV:
    """A transformers ``StaticCache`` of fixed rows and positions, and the compiled one-token step over it.

    Rows past the live ones are padding (copies of the last live row, fed the pad token); rows are gathered
    in place (:meth:`batch_select_indices`), so the cache tensors keep their addresses (CUDA graphs) and the
    compiled step always sees one shape: (rows, 1) tokens and a (rows, length) mask. Positions are written
    in order and never reused (a rewind masks them, as on the dynamic path). One instance per model and
    thread is kept and reused while its shape fits, so consecutive searches compile once (each thread that
    decodes concurrently holds its own cache).
    """

    _kept: weakref.WeakKeyDictionary = weakref.WeakKeyDictionary()

    def __init__(self, policy: Policy, rows: int, length: int) -> None:
        from transformers import StaticCache

        self.rows, self.length, self.pad = rows, length, policy.pad_token_id
        self.cache = StaticCache(config=policy.model.config, max_cache_len=length)
        kinds = {type(layer).__name__ for layer in self.cache.layers}
        if kinds != {"StaticLayer"} or not hasattr(self.cache.layers[0], "cumulative_length"):
            raise PolicyError(
                f"compile: true supports full-attention models on transformers >= 5.17 (got cache layers "
                f"{sorted(kinds)}); use compile: false"
            )
        self.cuda_graphs = policy.device.type == "cuda"
        mode = "reduce-overhead" if self.cuda_graphs else None
        self.forward = torch.compile(Policy.forward, dynamic=False, mode=mode)  # unbound: no ref to the model

    @classmethod
    def load(cls, policy: Policy, prefilled, rows: int, length: int) -> StaticKV:
        """The kept instance (a new one if the shape grew) holding the ``prefilled`` dynamic cache's rows."""
        length = -(-length // STATIC_LENGTH_STEP) * STATIC_LENGTH_STEP
        mine = cls._kept.setdefault(policy.model, {})  # per thread: concurrent searches never share one
        kv = mine.get(threading.get_ident())
        if (
            kv is None or kv.rows != rows or kv.length < length
        ):  # one per model and thread: free the old first
            kv = mine[threading.get_ident()] = None
            kv = mine[threading.get_ident()] = cls(policy, rows, length)
        n, width = prefilled.layers[0].keys.shape[0], prefilled.layers[0].keys.shape[2]
        if n > kv.rows or width > kv.length:
            raise PolicyError(
                f"{n} prompts of {width} tokens do not fit a static cache of {kv.rows} x {kv.length}"
            )
        idx = kv._padded(torch.arange(n, device=policy.device))
        for dst, src in zip(kv.cache.layers, prefilled.layers, strict=False):
            keys, values = src.keys[idx], src.values[idx]
            if not dst.is_initialized:
                dst.lazy_initialization(keys, values)
            dst.keys[:, :, :width].copy_(keys)
            dst.values[:, :, :width].copy_(values)
            dst.cumulative_length.fill_(width)
        return kv

    @torch.inference_mode()
    def batch_select_indices(self, idx: torch.Tensor) -> None:
        """Keep rows ``idx`` (repeats allowed) as rows 0..len(idx)-1, in place."""
        if len(idx) > self.rows:
            raise PolicyError(f"{len(idx)} rows do not fit a static cache of {self.rows}; raise its rows")
        if len(idx):
            full = self._padded(idx)
            for layer in self.cache.layers:
                layer.keys.copy_(layer.keys[full])
                layer.values.copy_(layer.values[full])

    def step(
        self, policy: Policy, tok: torch.Tensor, mask: torch.Tensor
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """:meth:`Policy.forward` of tokens ``(R,)`` under ``mask (R, past + 1)``: logits (R, V), latents
        (R, 1, H)."""
        r, width = mask.shape
        if width > self.length:
            raise PolicyError(
                f"the static cache's {self.length} positions are used up; its caller sized it too small"
            )
        ids = torch.full((self.rows, 1), self.pad, dtype=tok.dtype, device=tok.device)
        ids[:r, 0] = tok
        full = mask.new_zeros(self.rows, self.length)
        full[:r, :width] = mask
        full[r:, :width] = mask[-1]
        if self.cuda_graphs:
            torch.compiler.cudagraph_mark_step_begin()
        logits, lat, _ = self.forward(policy, ids, full, self.cache)
        return logits[:r].clone(), lat[:r].clone()  # CUDA graphs overwrite their outputs at the next replay

    def _padded(self, idx: torch.Tensor) -> torch.Tensor:
        return torch.cat([idx, idx[-1:].expand(self.rows - len(idx))])
