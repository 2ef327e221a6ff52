"""Classifiers on the embedded policy's own middle layers: every prefix score of an answer from ONE forward
pass.

The policy (SmolLM2-135M-Instruct) reads the chat-formatted prompt followed by the answer tokens; the
features of the prefix with j answer tokens are, at each chosen layer, the hidden state at its last position
and the mean of the hidden states from the prompt's last position through it. Both are causal, so all
prefixes come out of one teacher-forced pass (no stride, no forward fill), which makes prefix costs at
every token cheaper than the MiniLM encoder pass per scored prefix.

When the policy being decoded IS that model and taps those layers (the shipped critic's ``extra_layers``),
the decode loop has already computed every hidden state a prefix's features need: :func:`latent_columns`
finds them in the policy's latent, :func:`prefix_features_of` builds the features from the loop's running
sums, and :func:`same_tokens` says for which answers that equals this module's text path (the answer's
text re-tokenises to the sampled tokens; in a search the rest go through the text path, in collect they
continue on the rollout's KV cache: ``collect.decoded_answers``).
"""

from __future__ import annotations

import copy
import logging
from dataclasses import dataclass

import numpy as np
import torch

from igcritic.policy import cache_kwargs, output_cache
from igcritic.scorers.base import ScorerError, check_pairs, pad_batch

log = logging.getLogger(__name__)

MAX_PROMPT_TOKENS = 384
"""Prompts are cut to their last 384 tokens (the request is usually at the end), announced once."""
MIN_SHARED = 8
"""Pairs of different prompts run their common token prefix once when it is at least this long."""
MAX_ANSWER_TOKENS = 320
"""Answers beyond 320 tokens are scored as their first 320 (every score after that repeats), announced
once."""


@dataclass(frozen=True)
class LatentFeatureSpec:
    """Which hidden states a latent classifier reads (recorded with its weights)."""

    layers: tuple[int, ...] = (12, 20)
    """Decoder layers (1-based: ``hidden_states[l]`` of transformers, the output of layer l)."""
    parts: tuple[str, ...] = ("last", "mean")
    """``last``: the hidden state at the prefix's last position; ``mean``: running mean from the prompt's
    end."""

    @property
    def key(self) -> str:
        return "L" + "-".join(map(str, self.layers)) + "_" + "+".join(self.parts)


class PolicyFeatures:
    """Teacher-forced features of (prompt, answer) pairs for every answer prefix, from a loaded policy."""

    def __init__(self, policy, spec: LatentFeatureSpec, batch_size: int = 16):
        n_layers = int(policy.model.config.num_hidden_layers)
        bad = [layer for layer in spec.layers if not 1 <= layer <= n_layers]
        if bad:
            raise ScorerError(
                f"latent classifier layers {bad} outside 1..{n_layers} of the policy; retrain it for this "
                "policy"
            )
        self.policy = policy
        self.spec = spec
        self.batch_size = batch_size
        self._warned = False
        self._last: tuple | None = None

    @property
    def dim(self) -> int:
        return len(self.spec.layers) * len(self.spec.parts) * int(self.policy.model.config.hidden_size)

    def _encode(self, prompt: str, answer: str) -> tuple[list[int], list[int], list[int]]:
        """Prompt ids, answer ids and each answer token's end offset in ``answer`` (characters)."""
        tok = self.policy.tokenizer
        p_ids = tok(self.policy.format_prompt(prompt), add_special_tokens=False)["input_ids"]
        enc = tok(answer, add_special_tokens=False, return_offsets_mapping=True)
        a_ids, ends = enc["input_ids"], [e for _, e in enc["offset_mapping"]]
        if (len(p_ids) > MAX_PROMPT_TOKENS or len(a_ids) > MAX_ANSWER_TOKENS) and not self._warned:
            log.warning(
                "latent classifier: inputs longer than %d prompt / %d answer tokens are truncated "
                "(the prompt keeps its end, the answer its start)",
                MAX_PROMPT_TOKENS,
                MAX_ANSWER_TOKENS,
            )
            self._warned = True
        return p_ids[-MAX_PROMPT_TOKENS:] or p_ids[-1:], a_ids[:MAX_ANSWER_TOKENS], ends[:MAX_ANSWER_TOKENS]

    @torch.inference_mode()
    def prefix_features(self, prompts: list[str], answers: list[str]) -> list[tuple[np.ndarray, np.ndarray]]:
        """Per pair: ``(features (J + 1, dim) float32, ends (J,) int)`` for prefixes of j = 0..J answer
        tokens."""
        check_pairs(prompts, answers)
        key = (tuple(prompts), tuple(answers))
        last = self._last  # read once: the cost and the reward ask for the same batch one after the other
        if last is not None and last[0] == key:
            return last[1]
        out = self._prefix_features(prompts, answers)
        self._last = (key, out)
        return out

    def _prefix_features(self, prompts: list[str], answers: list[str]) -> list[tuple[np.ndarray, np.ndarray]]:
        encoded = [self._encode(p, a) for p, a in zip(prompts, answers, strict=True)]
        out: list[tuple[np.ndarray, np.ndarray] | None] = [None] * len(encoded)
        by_prompt: dict[tuple[int, ...], list[int]] = {}
        for r, (p_ids, _, _) in enumerate(encoded):
            by_prompt.setdefault(tuple(p_ids), []).append(r)
        alone = []
        for rows in by_prompt.values():
            if len(rows) < 2 or not self._shared_passes(encoded, rows, out):
                alone += rows
        # pairs of different prompts share at least the chat template's opening (the system turn): sorted by
        # length, they run it once too
        alone.sort(key=lambda r: len(encoded[r][0]) + len(encoded[r][1]))
        seqs = [encoded[r][0] + encoded[r][1] for r in alone]
        shared = len(seqs) >= 2 and _common_prefix(seqs) >= MIN_SHARED
        if not shared or not self._shared_passes(encoded, alone, out):
            self._padded_passes(encoded, alone, out)
        return out  # type: ignore[return-value]

    def _padded_passes(self, encoded: list, rows_in: list[int], out: list) -> None:
        """Pairs of different prompts: left-padded batches sorted by length, one teacher-forced pass each."""
        order = [
            rows_in[i]
            for i in np.argsort([len(encoded[r][0]) + len(encoded[r][1]) for r in rows_in], kind="stable")
        ]
        pad = self.policy.pad_token_id
        device = self.policy.device
        for s in range(0, len(order), self.batch_size):
            rows = order[s : s + self.batch_size]
            ids, mask = pad_batch(
                [encoded[r][0] + encoded[r][1] for r in rows], pad, left=True
            )  # as rollouts
            width = ids.shape[1]
            pos = (mask.cumsum(-1) - 1).clamp(min=0)
            hs = self.policy.model(
                input_ids=ids.to(device),
                attention_mask=mask.to(device),
                position_ids=pos.to(device),
                output_hidden_states=True,
                logits_to_keep=1,  # the features need no logits: skip the LM head over every position
                use_cache=False,
            ).hidden_states
            for j, r in enumerate(rows):
                start = width - len(encoded[r][1]) - 1  # the prompt's last position: h_0
                out[r] = self._features([hs[layer][j, start:] for layer in self.spec.layers], encoded[r][2])

    def _shared_passes(self, encoded: list, rows: list[int], out: list) -> bool:
        """Pairs with a common token prefix (ARGS: the k continuations of one answer; collect: N answers of
        one prompt; pairs of different prompts: the chat template's opening): that prefix runs ONCE, then
        every tail on a copy of its KV cache. False (nothing done): nothing to share."""
        seqs = [encoded[r][0] + encoded[r][1] for r in rows]
        shared = min(_common_prefix(seqs), min(len(x) for x in seqs) - 1)  # every tail keeps >= 1 token
        if shared < 1:
            return False
        device = self.policy.device
        head = self.policy.model(
            input_ids=torch.tensor([seqs[0][:shared]], device=device),
            output_hidden_states=True,
            logits_to_keep=1,  # the features need no logits: skip the LM head over every position
            use_cache=True,
        )
        pad = self.policy.pad_token_id
        for s in range(0, len(rows), self.batch_size):
            chunk, tails = rows[s : s + self.batch_size], [x[shared:] for x in seqs[s : s + self.batch_size]]
            width = max(len(t) for t in tails)
            ids = torch.full((len(chunk), width), pad, dtype=torch.long)
            mask = torch.ones((len(chunk), shared + width), dtype=torch.long)
            for j, t in enumerate(tails):  # right padding: a tail never attends to the pads after it
                ids[j, : len(t)] = torch.tensor(t)
                mask[j, shared + len(t) :] = 0
            cache = copy.deepcopy(output_cache(head))
            cache.batch_repeat_interleave(len(chunk))
            pos = torch.arange(shared, shared + width).expand(len(chunk), -1)
            hs = self.policy.model(
                input_ids=ids.to(device),
                attention_mask=mask.to(device),
                position_ids=pos.to(device),
                output_hidden_states=True,
                logits_to_keep=1,  # the features need no logits: skip the LM head over every position
                use_cache=True,
                **cache_kwargs(self.policy.model, cache),
            ).hidden_states
            for j, r in enumerate(chunk):
                start = len(encoded[r][0]) - 1  # the prompt's last position: h_0 (in the head or the tail)
                per_layer = [
                    torch.cat([head.hidden_states[layer][0, :shared], hs[layer][j, : len(tails[j])]])[start:]
                    for layer in self.spec.layers
                ]
                out[r] = self._features(per_layer, encoded[r][2])
        return True

    def _features(self, per_layer: list[torch.Tensor], ends: list[int]) -> tuple[np.ndarray, np.ndarray]:
        """Features (J + 1, dim) from each layer's hidden states (J + 1, H) from the prompt's last position
        on."""
        parts = []
        for h in per_layer:
            h = h.float()
            for part in self.spec.parts:
                if part == "last":
                    parts.append(h)
                else:
                    parts.append(h.cumsum(0) / torch.arange(1, h.shape[0] + 1, device=h.device)[:, None])
        return torch.cat(parts, -1).cpu().numpy(), np.asarray(ends, dtype=np.int64)


def latent_columns(identity, layers: tuple[int, ...]) -> list[slice] | None:
    """Columns of a policy's latent ``h`` (its :class:`~igcritic.policy.PolicyIdentity`) holding the residual
    stream of each of ``layers``; None when one of them is not tapped."""
    taps = [identity.layer if identity.norm == "pre" else None, *identity.extra_layers]
    width = identity.hidden_size
    if any(layer not in taps for layer in layers):
        return None
    return [slice(taps.index(layer) * width, (taps.index(layer) + 1) * width) for layer in layers]


def prefix_features_of(
    spec: LatentFeatureSpec, cols: list[slice], first: torch.Tensor, last: torch.Tensor, mean: torch.Tensor
) -> np.ndarray:
    """Features ``[prompt part, prefix part]`` (n, 2 x dim) of prefixes from decode-pass latents (n, W):
    h_0, the prefix's last h and its running mean, read at ``cols`` (:func:`latent_columns`); the same
    layout as the text path's rows."""

    def part(h_last: torch.Tensor, h_mean: torch.Tensor) -> list[torch.Tensor]:
        return [(h_last if p == "last" else h_mean)[:, c] for c in cols for p in spec.parts]

    return torch.cat([*part(first, first), *part(last, mean)], -1).float().numpy()


def same_tokens(tokenizer, texts: list[str], answers: list[list[int]], eos: list[int]) -> list[bool]:
    """Per answer: its decoded ``text`` re-tokenises to its tokens (a final EOS dropped), within the first
    MAX_ANSWER_TOKENS; only then do the text path and the decode pass read the same positions."""
    ids = tokenizer(texts, add_special_tokens=False)["input_ids"] if texts else []
    out = []
    for a, b in zip(answers, ids, strict=True):
        a = a[:-1] if a and a[-1] in eos else a
        out.append(len(a) == len(b) and a[:MAX_ANSWER_TOKENS] == b[:MAX_ANSWER_TOKENS])
    return out


def _common_prefix(seqs: list[list[int]]) -> int:
    """Length of the longest token prefix all ``seqs`` share."""
    n = min(len(x) for x in seqs)
    first = seqs[0]
    for i in range(n):
        if any(x[i] != first[i] for x in seqs[1:]):
            return i
    return n


def prefix_index(ends: np.ndarray, prefix_chars: list[int]) -> np.ndarray:
    """For each decoded prefix length (characters), how many re-tokenised answer tokens it covers."""
    return np.searchsorted(ends, np.asarray(prefix_chars), side="right")
