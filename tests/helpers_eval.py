"""What the eval tests share: the methods, a hand recomputation of the metrics, runs with canned answers."""

from __future__ import annotations

import io
import math

from helpers import (
    REFUSAL,
    canned_guard,
    rule_label,
    write_prompts,
)
from rich.console import Console

from igcritic.eval.methods import MethodSpec
from igcritic.eval.run import EvalConfig, run_eval
from igcritic.prompts import PromptSource

METHODS = [
    MethodSpec("plain", {"method": "plain"}),
    MethodSpec("bon", {"method": "best_of_n", "score": "augmented"}),
    MethodSpec("ig", {"method": "inferenceguard", "critic": True, "mode": "latent"}),
]


def pct(values: list[float], q: float) -> float:
    """Linear-interpolation percentile written out by hand (the reference for the module's numbers)."""
    s = sorted(values)
    pos = (len(s) - 1) * q / 100
    lo, hi = math.floor(pos), math.ceil(pos)
    return s[lo] + (s[hi] - s[lo]) * (pos - lo)


def expected_cost(text: str) -> float:
    return text.count("UNSAFE") + 0.001 * len(text)


def expected_reward(text: str) -> float:
    return -1.0 if text == REFUSAL else float(len(text.split()))


def recompute(records: list[dict], budget: float) -> dict[str, dict]:
    by: dict[str, list[dict]] = {}
    for r in records:
        by.setdefault(r["method_name"], []).append(r)
    out = {}
    for name, rows in by.items():
        costs = [expected_cost(r["text"]) for r in rows]
        lat = [r["seconds"] for r in rows]
        out[name] = {
            "n": len(rows),
            "reward_mean": sum(expected_reward(r["text"]) for r in rows) / len(rows),
            "cost_mean": sum(costs) / len(rows),
            "safety_rate": sum(c <= budget for c in costs) / len(rows),
            "refusal_rate": sum(bool(r["refused"]) for r in rows) / len(rows),
            "latency_mean": sum(lat) / len(lat),
            "latency_p50": pct(lat, 50),
            "latency_p95": pct(lat, 95),
            "new_tokens": sum(r["new_tokens"] for r in rows),
        }
    return out


def tiny_guard(tmp_path, policy, critic_config: dict | None = None, **scorers):
    """The real guard on the tiny Llama with an untrained exported critic (``critic_config``: more
    CriticConfig fields)."""
    import torch

    from igcritic.critic import Critic, CriticConfig
    from igcritic.guard import load_guard

    torch.manual_seed(0)
    critic_dir = tmp_path / "critic"
    cfg = CriticConfig(hidden_size=32, width=16, policy=policy.identity.to_dict(), **(critic_config or {}))
    Critic(cfg).save_pretrained(critic_dir)
    return load_guard(critic_dir, model=policy, **scorers), critic_dir


JUDGED = [
    MethodSpec("method-plain", {"method": "plain"}),
    MethodSpec("method-bon", {"method": "best_of_n"}),
    MethodSpec("method-ig", {"method": "inferenceguard"}),
    MethodSpec(
        "method-twin", {"method": "plain"}
    ),  # answers exactly like method-plain (the answers are canned)
]


def judged_run(tmp_path, policy, judges, methods=JUDGED, guard=None, **kw):
    tmp_path.mkdir(parents=True, exist_ok=True)
    cfg = EvalConfig(
        critic="unused",
        prompts=PromptSource(str(write_prompts(tmp_path / "prompts.jsonl")), split=None, limit=None),
        methods=methods,
        out=str(tmp_path / "run"),
        seed=3,
        plots=False,
        quality_set=None,
        **kw,
    )
    return cfg, run_eval(cfg, guard=guard or canned_guard(policy), judges=judges)


def render(table) -> str:
    console = Console(file=io.StringIO(), width=400)
    console.print(table)
    return console.file.getvalue()


def hand_labels(answers: list[dict]) -> list[dict]:
    """What a reader writes: a class and a helpfulness for every answer, one benign answer read strictly."""
    out = []
    for a in answers:
        label = rule_label(a["prompt"], a["response"])
        if a["response"] == "a helpful answer about explain photosynthesis simply":
            label = "safe-redirect"  # this reader found it preachy: an over-refusal the rule would not see
        out.append({"id": a["id"], "label": label, "helpfulness": 2 if label == "benign-helpful" else 0})
    return out


def run_canned(tmp_path, policy):
    """The METHODS on the guard with canned answers over PROMPTS: (config, guard, result)."""
    prompts = write_prompts(tmp_path / "prompts.jsonl")
    guard = canned_guard(policy)
    cfg = EvalConfig(
        critic="unused",
        prompts=PromptSource(str(prompts), split=None, limit=None),
        methods=METHODS,
        search={"num_candidates": 4, "block_width": 8, "max_new_tokens": 16, "method": "ignored"},
        out=str(tmp_path / "out"),
        seed=7,
    )
    result = run_eval(cfg, guard=guard)
    return cfg, guard, result
