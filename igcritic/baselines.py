"""The token-level baselines of the paper's Table 2 on the runtime's one decode loop: ARGS and RE-Control.

Both decode like ``plain`` (one block of D tokens through :func:`igcritic.decoding.sample_block`, one KV
cache, the policy's weights untouched) and change only the logits each step samples from:

- **ARGS** (Khanov et al., ICLR 2024): :class:`ArgsProcessor`, a logits processor. Of each row's top k next
  tokens, every ``prefix + token`` text is scored, all rows and all k in ONE batched call per scorer per
  step (identical texts of a prompt scored once; the embedded cost and reward read the same model pass), and
  the token's logit becomes ``logit + w * g``; every other token is dropped. ``g`` is the guidance: the
  reward r, the Lagrangian ``r - λ c`` or ``-c``, c the cost scorer's score of the prefix text (not its
  running max, which would tie every candidate once one prefix was costly). Greedy sampling (temperature 0)
  is ARGS-greedy; else the search samples from the re-weighted candidates (ARGS-stochastic).
  When the scorers read the policy's own layers (the embedded cost and reward, the policy tapping their
  layers), the scorer is the policy and keeps its KV cache across token steps: each candidate costs ONE new
  token on a copy of its row's cache, run only up to the deepest layer read (:class:`LatentGuide`), as the
  reference ARGS keeps its reward model's cache; the text path re-encodes prompt and prefix per step.
- **RE-Control** (Kong et al., NeurIPS 2024): :class:`ReControl`, a ``latent_logits`` hook. The latent the
  LM head reads (the last layer after the final norm) takes n gradient-ascent steps ``h <- h + η ∇ G(h)``
  on the critic's ``G = V(h)`` (``lagrangian``: ``V(h) - λ Ŝ(h)``; ``cost``: ``-Ŝ(h)``), and the step
  samples from the LM head on the edited latent. Only the first ``hidden_size`` columns (the LM head's
  input) are edited; columns a critic reads beyond them (extra layers) are held fixed. Autograd runs
  through the critic only.
"""

from __future__ import annotations

import time
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass
from typing import Literal

import torch

from igcritic.critic import Critic
from igcritic.decoding import Rows, RunningPrefix
from igcritic.policy import Policy

Guidance = Literal["reward", "lagrangian", "cost"]
GUIDANCE = ("reward", "lagrangian", "cost")
TextScore = Callable[[torch.Tensor, list[str]], torch.Tensor]
"""``(prompt index (N,), texts) -> scores (N,)`` of one scorer (the search's bookkeeping wrapper)."""
LatentScore = Callable[[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor], torch.Tensor]
"""``(prompt index (N,), h_0, h of the prefix, running mean (N, W)) -> scores (N,)``: a scorer that reads the
policy's own layers (``decode_values`` with the search's bookkeeping)."""


@dataclass
class LatentGuide:
    """ARGS on the policy's own layers: the block's rows (their live KV cache, mask, and h_0) and the
    scorers that read them."""

    rows: Rows
    """The block's rows at its start, at the prompt's end; ``rows.cache`` is the live cache the block
    extends."""
    reward: LatentScore | None
    cost: LatentScore | None
    stop_after: int
    """Deepest layer the scorers read: the candidate pass stops there."""
    max_tokens: int
    """Answer tokens the scorers read (the text path's cut): later tokens change no score."""


def guidance_needs(guidance: str) -> tuple[bool, bool]:
    """(reward, cost) terms the guidance reads."""
    return guidance in ("reward", "lagrangian"), guidance in ("lagrangian", "cost")


class ArgsProcessor:
    """ARGS as a logits processor ``(input_ids (R, T), scores (R, V)) -> new (R, V)`` that never edits
    ``scores``.

    ``input_ids`` are the tokens the block has fed so far; a row whose ids hold an EOS has stopped (the loop
    feeds it pad) and is left as it is. ``scored`` counts the texts scored per prompt (``candidates_scored``).
    """

    def __init__(
        self,
        policy: Policy,
        prefixes: list[list[int]],
        prompt: torch.Tensor,
        reward: TextScore | None,
        cost: TextScore | None,
        top_k: int = 20,
        weight: float = 1.0,
        guidance: Guidance = "reward",
        lagrange_lambda: float = 1.0,
        latent: LatentGuide | None = None,
    ):
        self.policy, self.latent = policy, latent
        self.tokenizer = policy.tokenizer
        self.eos = torch.tensor(policy.eos_token_ids)
        self.prefixes = prefixes  # (R,) response tokens of each row before the block
        self.prompt = prompt.cpu()  # (R,) prompt index of each row
        self.reward, self.cost = reward, cost
        self.top_k, self.weight, self.guidance, self.lam = top_k, weight, guidance, lagrange_lambda
        self.scored: Counter[int] = Counter()
        self._special = torch.tensor(sorted({*policy.eos_token_ids, *self.tokenizer.all_special_ids}))
        if latent is not None:  # the running sums of each row's answer, and the last step's candidates
            self._state = RunningPrefix.start(latent.rows.h)
            self._pending: tuple | None = None

    def __call__(self, input_ids: torch.Tensor, scores: torch.Tensor) -> torch.Tensor:
        done = torch.isin(input_ids, self.eos.to(input_ids.device)).any(1)
        active = torch.nonzero(~done).flatten()
        if not len(active):
            return scores
        k = min(self.top_k, scores.shape[-1])
        top_v, top_i = scores[active].topk(k, dim=-1)  # (A, k)
        if self.latent is not None:
            g = self._latent_guidance(input_ids, active, top_i)
            sub = torch.full_like(scores[active], float("-inf"))
            sub = sub.scatter(1, top_i, top_v + self.weight * g.to(top_v))
            out = scores.clone()
            out[active] = sub
            return out
        fed = input_ids[active].tolist()
        seqs = [
            self.prefixes[r] + fed[a] + [t] for a, r in enumerate(active.tolist()) for t in top_i[a].tolist()
        ]
        texts = self.tokenizer.batch_decode(seqs, skip_special_tokens=True)
        g = self._guidance(self.prompt[active.cpu()].repeat_interleave(k), texts).view(len(active), k)
        sub = torch.full_like(scores[active], float("-inf"))
        sub = sub.scatter(1, top_i, top_v + self.weight * g.to(top_v))
        out = scores.clone()
        out[active] = sub
        return out

    def _latent_guidance(
        self, input_ids: torch.Tensor, active: torch.Tensor, top_i: torch.Tensor
    ) -> torch.Tensor:
        """g (A, k) of the active rows' top k tokens from the policy's layers: each candidate is one new
        token on a copy of its row's cache (the prefix is never re-encoded); the running sums take the
        token each row took at the last step. An EOS or other special candidate decodes to no text: it
        scores as the prefix, as on the text path."""
        lg, rows = self.latent, self.latent.rows
        state = self._state
        if self._pending is not None:  # the token each row took at the last step
            was, h, toks, counts = self._pending
            took = (toks == input_ids[was.to(input_ids.device), -1:].cpu()).float().argmax(1)
            step = torch.zeros(len(state.count), h.shape[2])
            step[was] = h[torch.arange(len(was)), took]
            counted = torch.zeros(len(state.count), dtype=torch.long)
            counted[was] = counts[torch.arange(len(was)), took]
            self._state = state = state.advance(torch.stack([state.last, step], 1), counted)[0]
        a, k = len(active), top_i.shape[1]
        t = input_ids.shape[1]
        src = active.repeat_interleave(k)
        dev = rows.mask.device
        mask = torch.cat([rows.mask, torch.ones_like(rows.mask[:, :1]).expand(-1, t + 1)], 1)[src.to(dev)]
        _, lat, _ = self.policy.forward(
            top_i.reshape(-1, 1),
            mask,
            _cache_rows(rows.cache, src.to(dev), lg.stop_after),
            stop_after=lg.stop_after,
        )
        a_cpu, cand = active.cpu(), top_i.cpu()
        h = lat[:, -1].float().cpu().view(a, k, -1)
        silent = torch.isin(cand, self._special) | (state.count[a_cpu] > lg.max_tokens)[:, None]
        counts = (~silent).long()
        last = torch.where(silent[..., None], state.last[a_cpu][:, None], h)
        mean = (state.total[a_cpu][:, None] + h * counts[..., None]) / (state.count[a_cpu][:, None] + counts)[
            ..., None
        ]
        self._pending = (a_cpu, h, cand, counts)
        prompt = self.prompt[a_cpu].repeat_interleave(k)
        first = state.first[a_cpu].repeat_interleave(k, 0)
        self.scored.update(prompt.tolist())
        flat = (prompt, first, last.reshape(a * k, -1), mean.reshape(a * k, -1))
        want_r, want_c = guidance_needs(self.guidance)
        g = torch.zeros(a * k)
        if want_r:
            g = g + lg.reward(*flat)
        if want_c:
            g = g - (self.lam if self.guidance == "lagrangian" else 1.0) * lg.cost(*flat)
        return g.view(a, k)

    def _guidance(self, prompt: torch.Tensor, texts: list[str]) -> torch.Tensor:
        """g of each (prompt, text); a text a prompt's candidates share (tokens that decode alike) is scored
        once."""
        keys = list(zip(prompt.tolist(), texts, strict=True))
        uniq = list(dict.fromkeys(keys))
        where = {key: i for i, key in enumerate(uniq)}
        idx = torch.tensor([p for p, _ in uniq])
        utexts = [t for _, t in uniq]
        self.scored.update(p for p, _ in uniq)
        want_r, want_c = guidance_needs(self.guidance)
        g = torch.zeros(len(uniq))
        if want_r:
            g = g + self.reward(idx, utexts)
        if want_c:
            g = g - (self.lam if self.guidance == "lagrangian" else 1.0) * self.cost(idx, utexts)
        return g[torch.tensor([where[key] for key in keys])]


def _cache_rows(cache, idx: torch.Tensor, layers: int):
    """A new dynamic cache of rows ``idx`` of ``cache``'s first ``layers`` layers (the original untouched)."""
    from transformers import DynamicCache

    return DynamicCache([(layer.keys[idx], layer.values[idx]) for layer in cache.layers[:layers]])


class ReControl:
    """RE-Control as a ``latent_logits`` hook: ``h (R, H') -> logits (R, V)`` of the LM head on the edited
    latent.

    Build it after :func:`recontrol_problems` found nothing. ``seconds`` accumulates the time of edits and
    heads.
    """

    def __init__(
        self,
        policy: Policy,
        critic: Critic,
        steps: int = 30,
        step_size: float = 0.5,
        guidance: Guidance = "reward",
        lagrange_lambda: float = 1.0,
    ):
        self.head = policy.model.get_output_embeddings()
        self.hidden = policy.identity.hidden_size
        self.critic = critic
        self.steps, self.step_size, self.guidance, self.lam = steps, step_size, guidance, lagrange_lambda
        self.seconds = 0.0

    def objective(self, h: torch.Tensor) -> torch.Tensor:
        """G(h) per row (R,): V, V - λ Ŝ or -Ŝ of the critic (one trunk pass for both heads)."""
        want_v, want_c = guidance_needs(self.guidance)
        feat = self.critic.encode(h)
        v = self.critic.value_from_features(feat) if want_v else None
        c = self.critic.cost_from_features(feat) if want_c else None
        if self.guidance == "reward":
            return v
        if self.guidance == "lagrangian":
            return v - self.lam * c
        return -c

    def edit(self, h: torch.Tensor) -> torch.Tensor:
        """The latent after ``steps`` gradient-ascent steps on its first ``hidden_size`` columns; rest
        held."""
        hid = self.hidden
        with torch.inference_mode(False), torch.enable_grad():
            x = h[:, :hid].float().clone()  # a normal tensor, outside inference mode: autograd can track it
            rest = h[:, hid:].float().clone()
            for _ in range(self.steps):
                x.requires_grad_(True)
                (grad,) = torch.autograd.grad(self.objective(torch.cat([x, rest], -1)).sum(), x)
                x = (x + self.step_size * grad).detach()
            return torch.cat([x, rest], -1)

    def __call__(self, h: torch.Tensor) -> torch.Tensor:
        t0 = time.perf_counter()
        dev = next(iter(self.head.parameters())).device
        edited = self.edit(h.to(dev))[:, : self.hidden]
        with torch.inference_mode():
            logits = self.head(edited.to(self.head.weight.dtype)).float()  # (R, V)
        self.seconds += time.perf_counter() - t0
        return logits


def recontrol_problems(policy: Policy, critic: Critic, guidance: str = "reward") -> list[str]:
    """Why RE-Control cannot run with this policy and critic (empty: it can); its own parameters are
    checked with the rest of the search config (``SearchConfig.resolve``)."""
    bad = []
    if guidance_needs(guidance)[1] and critic.config.cost_context:
        bad.append(
            f"search.guidance {guidance} edits one latent by the critic's cost head, but this critic's cost "
            "head reads the answer so far (cost_context); use --search.guidance reward"
        )
    ident = policy.identity
    seen = [("policy", ident.layer, ident.norm)]
    if critic.config.policy is not None:
        seen.append(("critic", critic.config.layer, critic.config.norm))
    for who, layer, norm in seen:
        if layer != ident.num_layers or norm != "post":
            bad.append(
                f"search.method recontrol edits the LM head's input (layer {ident.num_layers}, norm post), "
                f"but the {who}'s latent is layer {layer}, norm {norm}; "
                "use a critic trained with --layer -1 --norm post"
            )
            break
    if policy.model.get_output_embeddings() is None:
        bad.append(
            f"search.method recontrol needs the policy's LM head; {type(policy.model).__name__} exposes none"
        )
    if getattr(policy.model.config, "final_logit_softcapping", None):
        bad.append(
            "search.method recontrol applies the LM head alone; this policy soft-caps its logits after it"
        )
    return bad
