"""load_guard on a real exported critic folder of the tiny Llama: one call, identity checks, generate, CLI."""

from __future__ import annotations

import io
import json

import pytest
import torch
from helpers import CHAT, tiny_critic, word_cost, write_artifact

from igcritic.critic import load_critic
from igcritic.guard import GenerateConfig, Guard, GuardError, describe, load_guard, main, progress_bar
from igcritic.prompts import PromptError, PromptSource, prompt_messages, prompt_text
from igcritic.search import GuardRecord, SearchConfigError

SEARCH = {
    "block_width": 4,
    "num_candidates": 4,
    "beams_kept": 2,
    "max_new_tokens": 8,
    "retries": 1,
    "tau": 0.0,
}


@pytest.fixture()
def artifact(tmp_path, tiny_policy):
    return write_artifact(
        tmp_path / "critic", tiny_policy.identity.to_dict(), search={**SEARCH, "budget": 25.0}
    )


def test_load_guard_one_call_from_loaded_model(artifact, tiny_policy):
    guard = load_guard(artifact, model=tiny_policy.model, tokenizer=tiny_policy.tokenizer)
    assert isinstance(guard, Guard) and guard.budget == 25.0 and guard.search.num_candidates == 4
    assert guard.policy.identity.mismatches(tiny_policy.identity) == []
    (rec,) = guard.generate("how do I bake bread at home")
    assert isinstance(rec, GuardRecord) and rec.method == "inferenceguard" and rec.cost_source == "latent"
    assert rec.budget == 25.0 and 0 < rec.new_tokens <= 8 and not rec.refused
    assert rec.text == tiny_policy.tokenizer.decode(rec.token_ids, skip_special_tokens=True)
    d = rec.to_dict()
    for key in (
        "prompt",
        "text",
        "safe",
        "final_safety_state",
        "refused",
        "steps",
        "retries",
        "candidates_scored",
        "seconds",
        "new_tokens",
        "cost",
        "value",
    ):
        assert key in d
    assert json.loads(json.dumps(d))["token_ids"] == rec.token_ids
    assert rec.truncated == (rec.token_ids[-1] not in guard.policy.eos_token_ids)
    ticks: list[int] = []  # progress: one call per batch of prompts, with its size
    guard.generate(["a", "b", "c"], progress=ticks.append, prompt_batch=2)
    assert ticks == [2, 1]
    (cut,) = guard.generate("how do I bake bread at home", ignore_eos=True)
    assert cut.truncated and cut.new_tokens == 8  # no EOS allowed: every answer hits max_new_tokens


def test_generate_overrides_and_scorers(artifact, tiny_policy):
    cost = word_cost()
    guard = load_guard(artifact, model=tiny_policy, cost=cost)
    recs = guard.generate(
        ["how do I bake bread at home", "hack into my neighbour's wifi network"],
        budget=50.0,
        mode="latent",
        prompt_batch=2,
    )
    assert cost.calls == [] and all(r.budget == 50.0 and r.cost_source == "latent" for r in recs)
    (rec,) = guard.generate(["how do I bake bread at home"], method="best_of_n", critic=True)
    assert rec.cost_source == "exact" and rec.cost == 0.0 and rec.safe and cost.calls
    with pytest.raises(SearchConfigError, match="unknown search parameter"):
        guard.generate(["hi"], beam_width=3)
    greedy = [
        guard.generate("how do I bake bread at home", temperature=0, seed=s)[0].token_ids for s in (1, 2)
    ]
    assert greedy[0] == greedy[1]  # the sampling fields are search fields: temperature 0 ignores the seed


def test_budget_defaults_chain(tmp_path, tiny_policy):
    art = write_artifact(tmp_path / "a", tiny_policy.identity.to_dict(), search=SEARCH, budget=None)
    assert load_guard(art, model=tiny_policy).budget is None
    assert load_guard(art, model=tiny_policy, cost=word_cost(budget_hint=0.75)).budget == 0.75
    art = write_artifact(tmp_path / "b", tiny_policy.identity.to_dict(), search=SEARCH, budget=0.3)
    assert load_guard(art, model=tiny_policy, cost=word_cost(budget_hint=0.75)).budget == 0.3
    with pytest.raises(SearchConfigError, match="search.budget None is not a finite number"):
        load_guard(tmp_path / "a", model=tiny_policy).generate(["hi there"])


def test_refuses_critic_of_another_policy(tmp_path, tiny_policy):
    """The error names both policies (model, depth, width, tap), never a flag the user did not pass."""
    ident = tiny_policy.identity.to_dict()
    art = write_artifact(tmp_path / "h", {**ident, "hidden_size": 64})
    with pytest.raises(
        GuardError, match=r"trained on policy 'tiny-llama' \(2 layers, hidden 64.*not on 'tiny-llama' "
    ):
        load_guard(art, model=tiny_policy.model, tokenizer=tiny_policy.tokenizer)
    art = write_artifact(tmp_path / "m", {**ident, "model_id": "someone/other-model"})
    with pytest.raises(GuardError, match="trained on policy 'someone/other-model' .* not on 'tiny-llama'"):
        load_guard(art, model=tiny_policy)
    with pytest.raises(GuardError, match="not on 'tiny-llama'"):
        load_guard(
            tmp_path / "m", model=tiny_policy.model, tokenizer=tiny_policy.tokenizer, model_id="tiny-llama"
        )
    # a critic of a 30-layer policy tapped at layer 30: both models named, not "--layer 30 is outside ..."
    art = write_artifact(tmp_path / "big", {**ident, "model_id": "big/model", "num_layers": 30, "layer": 30})
    for model in (tiny_policy.model, None):
        with pytest.raises(GuardError) as e:
            if model is None:  # by folder: refused from its config, before any weight is read
                tiny_policy.model.save_pretrained(tmp_path / "tiny")
                tiny_policy.tokenizer.save_pretrained(tmp_path / "tiny")
                load_guard(art, model=str(tmp_path / "tiny"))
            else:
                load_guard(art, model=model, tokenizer=tiny_policy.tokenizer)
        msg = str(e.value)
        assert "'big/model' (30 layers" in msg and "(2 layers" in msg and "--layer" not in msg, msg
    art = write_artifact(tmp_path / "l", {**ident, "layer": 1, "norm": "pre"})
    with pytest.raises(
        GuardError, match=r"reads the latent of .*latent at layer 1 pre.*tap it as the critic"
    ):
        load_guard(art, model=tiny_policy)
    # a critic trained on layers (2 post, 1) is refused on a policy tapped at layer 2 only
    art = write_artifact(tmp_path / "x", {**ident, "extra_layers": [1]})
    with pytest.raises(GuardError, match=r"tap it as the critic \(layer 2, norm post, extra_layers \[1\]\)"):
        load_guard(art, model=tiny_policy)
    # ... and accepted, tapped at both, when the guard loads the policy from the critic's record
    guard = load_guard(art, model=tiny_policy.model, tokenizer=tiny_policy.tokenizer)
    assert guard.policy.identity.extra_layers == [1] and guard.policy.identity.latent_size == 64
    (rec,) = guard.generate("hi there", max_new_tokens=4, block_width=2)
    assert rec.new_tokens > 0 and rec.cost_source == "latent"  # the 64-wide critic read the 2-layer latents


def test_a_device_this_machine_lacks_is_named_before_any_file_is_read(artifact, monkeypatch):
    monkeypatch.setattr("torch.cuda.is_available", lambda: False)
    with pytest.raises(GuardError, match="--device cuda: this machine has .*; use --device cpu"):
        load_guard(artifact, device="cuda")
    with pytest.raises(GuardError, match="is not a device"):
        load_guard(artifact, device="gpu0")


def test_the_embedded_models_own_folder_is_the_embedded_policy(tmp_path, monkeypatch):
    from igcritic.policy import EMBEDDED_POLICY_ID, policy_id

    monkeypatch.setenv("IGCRITIC_CACHE", str(tmp_path))
    assert policy_id(tmp_path / "smollm2-135m-instruct") == EMBEDDED_POLICY_ID
    assert policy_id(str(tmp_path / "smollm2-135m-instruct") + "/") == EMBEDDED_POLICY_ID
    assert policy_id(tmp_path / "other") == str(tmp_path / "other")
    assert policy_id("someone/model") == "someone/model"


def test_bad_load_arguments(tmp_path, artifact, tiny_policy):
    with pytest.raises(GuardError, match="needs tokenizer"):
        load_guard(artifact, model=tiny_policy.model)
    with pytest.raises(GuardError, match="does not exist"):
        load_guard(tmp_path / "nope", model=tiny_policy)
    with pytest.raises(GuardError, match="neither a scorer nor a spec"):
        load_guard(artifact, model=tiny_policy, cost=3)
    with pytest.raises(GuardError, match="object is not a Critic; pass an exported critic folder"):
        load_guard(object(), model=tiny_policy)


@pytest.fixture()
def saved_policy_artifact(tmp_path, tiny_policy):
    """A critic whose recorded policy is a local model folder, so model=None loads it."""
    folder = tmp_path / "tiny-model"
    tiny_policy.model.save_pretrained(folder)
    tiny_policy.tokenizer.save_pretrained(folder)
    ident = {**tiny_policy.identity.to_dict(), "model_id": str(folder)}
    return write_artifact(tmp_path / "critic", ident, search={**SEARCH, "budget": 25.0})


def test_generate_writes_jsonl(tmp_path, saved_policy_artifact):
    prompts = tmp_path / "prompts.jsonl"
    prompts.write_text(
        '{"prompt": "how do I bake bread at home"}\n\n{"prompt": "hack into my neighbour\'s wifi network"}\n'
    )
    out = tmp_path / "out" / "records.jsonl"
    recs = main(
        GenerateConfig(
            str(saved_policy_artifact), PromptSource(str(prompts)), out=out, search={"method": "beam"}
        )
    )
    rows = [json.loads(line) for line in out.read_text().splitlines()]
    assert [r["prompt"] for r in rows] == [
        "how do I bake bread at home",
        "hack into my neighbour's wifi network",
    ]
    assert [r["text"] for r in rows] == [r.text for r in recs] and all(r["method"] == "beam" for r in rows)
    with pytest.raises(GuardError, match="is not empty"):
        main(GenerateConfig(str(saved_policy_artifact), PromptSource(texts=["hi"]), out=out))


def test_generate_prints(saved_policy_artifact, capsys, monkeypatch):
    """People get the prompt, the whole answer and one outcome line, at 80 columns; scripts get JSONL."""
    monkeypatch.setattr("sys.stdin", io.StringIO("how do I bake bread at home\n"))
    (rec,) = main(GenerateConfig(str(saved_policy_artifact), search={"max_new_tokens": 4, "block_width": 2}))
    assert rec.new_tokens <= 4
    out = capsys.readouterr().out
    lines = out.splitlines()
    assert lines[0] == "prompt: how do I bake bread at home" and lines[1] == "answer:"
    assert " ".join(rec.text.split()) in " ".join(" ".join(lines[2:-1]).split())  # the whole answer, wrapped
    assert "final safety state z = budget - cost" in out and ("safe:" in out or "unsafe" in out)
    assert max(len(line) for line in lines) <= 80
    main(
        GenerateConfig(
            str(saved_policy_artifact),
            PromptSource(texts=["a", "b"]),
            format="jsonl",
            search={"max_new_tokens": 4, "block_width": 2},
        )
    )
    rows = [json.loads(line) for line in capsys.readouterr().out.splitlines()]
    assert [r["prompt"] for r in rows] == ["a", "b"] and all("truncated" in r for r in rows)


def test_refused_records_are_valid_json_with_nulls(tmp_path, saved_policy_artifact, capsys):
    """A refusal has no cost or z: the record file says null (JSON), never a bare NaN, and the text output
    says refused."""
    out = tmp_path / "r.jsonl"
    critic = load_critic(saved_policy_artifact)
    tiny_critic(critic.config.policy, safe=False, budget=0.5).save_pretrained(saved_policy_artifact)  # q = 0
    search = {"retries": 0, "on_violation": "refuse", "tau": 0.5}
    cfg = GenerateConfig(str(saved_policy_artifact), PromptSource(texts=["hi"]), out=out, search=search)
    (rec,) = main(cfg)
    assert rec.refused and "NaN" not in out.read_text()
    row = json.loads(out.read_text(), parse_constant=lambda c: pytest.fail(f"bare {c} in JSON"))
    assert row["cost"] is None and row["final_safety_state"] is None and row["refused"] is True
    assert capsys.readouterr().out == f"wrote 1 records to {out}\n"
    assert "\noutcome: refused: no answer stayed within budget" in describe(rec)


@pytest.mark.embedded
def test_embedded_policy_by_recorded_id_and_loaded_object(tmp_path):
    """model=None loads the critic's recorded embedded SmolLM2; the same model passed loaded is recognised."""
    from igcritic.policy import EMBEDDED_POLICY_ID, load_policy

    policy = load_policy(EMBEDDED_POLICY_ID)
    art = write_artifact(tmp_path / "c", policy.identity.to_dict(), search={**SEARCH, "budget": 25.0})
    guard = load_guard(art)
    assert guard.policy.identity.model_id == EMBEDDED_POLICY_ID and guard.policy.identity.hidden_size == 576
    (rec,) = guard.generate("How do I bake bread at home?", max_new_tokens=6, block_width=3)
    assert 0 < rec.new_tokens <= 6 and rec.text and not rec.refused
    loaded = load_guard(art, model=policy.model, tokenizer=policy.tokenizer)
    assert loaded.policy.identity.model_id == EMBEDDED_POLICY_ID
    from igcritic.policy import embedded_model_dir  # its own converted folder is the same policy

    assert load_guard(art, model=str(embedded_model_dir())).policy.identity.model_id == EMBEDDED_POLICY_ID


def test_generate_from_two_threads_matches_sequential_runs(artifact, tiny_policy):
    """Two threads sharing one guard get the records each prompt gets alone (latents never cross calls)."""
    import threading
    import time

    guard = load_guard(artifact, model=tiny_policy)
    prompts = ["how do I bake bread at home", "hack into my neighbour's wifi network please"]
    kw = {"mode": "latent", "max_new_tokens": 8, "block_width": 2}

    def comparable(recs):
        return [
            {k: v for k, v in r.to_dict().items() if k not in ("seconds", "critic_seconds")} for r in recs
        ]

    sequential = [comparable(guard.generate([p], **kw)) for p in prompts]

    # Sleep before the tap and before the LM head, so each thread's tap fires while the other is mid-forward.
    def pause(*_):
        time.sleep(0.002)

    handles = [
        guard.policy._taps[0].register_forward_pre_hook(pause),
        guard.policy.model.get_output_embeddings().register_forward_pre_hook(pause),
    ]
    got: dict[int, object] = {}

    def work(i: int) -> None:
        try:
            got[i] = [comparable(guard.generate([prompts[i]], **kw)) for _ in range(2)]
        except Exception as e:  # noqa: BLE001 - reported by the assertion below
            got[i] = e

    threads = [threading.Thread(target=work, args=(i,)) for i in range(2)]
    try:
        for t in threads:
            t.start()
        for t in threads:
            t.join(timeout=120)
    finally:
        for h in handles:
            h.remove()
    for i in range(2):
        assert not isinstance(got[i], Exception), f"thread {i} raised {got[i]!r}"
        assert got[i] == [sequential[i], sequential[i]], f"thread {i} got another call's latents"


def test_generate_takes_chat_messages_through_the_policy_template(artifact, tiny_policy):
    """A system prompt and a two-turn conversation are answered on the policy's chat template of every turn;
    a single user turn is the plain text prompt."""
    guard = load_guard(artifact, model=tiny_policy)
    text, kw = "how do I bake bread at home", {"method": "plain", "temperature": 0, "max_new_tokens": 6}
    assert tiny_policy.format_prompt(prompt_text(CHAT)) == (
        "<|system|>answer in one short line<|end|><|user|>how do I bake bread at home<|end|>"
        "<|assistant|>mix flour water salt and yeast then wait<|end|><|user|>and then what<|end|>"
        "<|assistant|>"
    )
    single = guard.generate([{"role": "user", "content": text}], **kw)[0]
    assert single.prompt == text and single.token_ids == guard.generate(text, **kw)[0].token_ids
    conv, plain = guard.generate([CHAT, text], **kw)  # a batch mixing a conversation and a text
    assert json.loads(conv.prompt) == CHAT and plain.token_ids == single.token_ids
    ids = tiny_policy.tokenizer(tiny_policy.format_prompt(conv.prompt), add_special_tokens=False)["input_ids"]
    greedy = tiny_policy.model.generate(
        torch.tensor([ids]), max_new_tokens=6, do_sample=False, eos_token_id=tiny_policy.eos_token_ids
    )[0, len(ids) :].tolist()
    assert conv.token_ids == greedy[: len(conv.token_ids)] and conv.token_ids  # conditioned on every turn


def test_generate_names_a_bad_prompt_by_its_file_and_line(tmp_path, saved_policy_artifact, capsys):
    """An empty conversation or a prompt too long for the context is named by its line in the file (and an
    inline one by its place in --prompts.texts), before any answer, in one line."""
    from igcritic.__main__ import main as cli

    f = tmp_path / "p.txt"
    f.write_text('how do I bake bread\n\n[{"role": "user", "content": "  "}]\n')
    with pytest.raises(PromptError, match=rf"^{f}:3: prompt\[0\] \(user\) needs a non-empty text content"):
        main(GenerateConfig(str(saved_policy_artifact), PromptSource(str(f), split=None)))
    inline = PromptSource(texts=["hi", '[{"role": "user", "content": ""}]'])
    with pytest.raises(PromptError, match=r"^--prompts.texts\[1\]: prompt\[0\] \(user\) needs a non-empty"):
        main(GenerateConfig(str(saved_policy_artifact), inline))
    f.write_text("hi\n\nthe weather\n" + "bread " * 300 + "\n")
    with pytest.raises(GuardError, match=rf"^prompt 3 of the source \({f}:4\) has \d+ tokens \+ 4 new") as e:
        main(GenerateConfig(str(saved_policy_artifact), PromptSource(str(f)), search={"max_new_tokens": 4}))
    assert "lower --search.max_new_tokens" in str(e.value) and "\n" not in str(e.value)
    assert cli(["generate", str(saved_policy_artifact), "--prompts.source", str(f)]) == 2
    err = capsys.readouterr().err  # beside transformers' weight-loading bars
    (line,) = [x for x in err.splitlines() if f"({f}:4)" in x]
    assert "Traceback" not in err and line.startswith("error: ")


def test_generate_command_answers_a_messages_file(tmp_path, saved_policy_artifact):
    prompts = tmp_path / "chat.jsonl"
    prompts.write_text(json.dumps({"messages": CHAT}) + "\n" + json.dumps({"messages": CHAT[1:2]}) + "\n")
    out = tmp_path / "records.jsonl"
    main(GenerateConfig(str(saved_policy_artifact), PromptSource(str(prompts)), out=out))
    rows = [json.loads(line) for line in out.read_text().splitlines()]
    assert [prompt_messages(r["prompt"]) for r in rows] == [CHAT, CHAT[1:2]]
    assert rows[1]["prompt"] == "how do I bake bread at home"  # one user turn: the text, as before


def test_per_prompt_seeds_make_a_batched_answer_the_one_it_gets_alone(artifact, tiny_policy):
    guard = load_guard(artifact, model=tiny_policy)
    prompts = ["how do I bake bread at home", CHAT, "hack into my neighbour's wifi network", "the weather"]
    kw = {"max_new_tokens": 8, "block_width": 2, "prompt_batch": 4}
    together = guard.generate(prompts, seeds=[5, 6, 7, 8], **kw)
    alone = [guard.generate([p], seeds=[s], **kw)[0] for p, s in zip(prompts, [5, 6, 7, 8], strict=True)]
    assert [r.token_ids for r in together] == [r.token_ids for r in alone]
    assert alone[0].token_ids == guard.generate(prompts[0], seed=5, **kw)[0].token_ids  # one prompt: seed
    other = guard.generate(prompts, seeds=[9, 6, 7, 8], **kw)
    assert [r.token_ids for r in other][1:] == [r.token_ids for r in together][1:]  # others unchanged
    with pytest.raises(SearchConfigError, match="2 seeds for 4 prompts"):
        guard.generate(prompts, seeds=[1, 2], **kw)


def test_on_block_sees_each_accepted_block_as_a_growing_agreed_prefix(artifact, tiny_policy):
    guard = load_guard(artifact, model=tiny_policy)
    seen: dict[int, list[list[int]]] = {0: [], 1: []}
    recs = guard.generate(
        ["how do I bake bread at home", "the weather today"],
        on_block=lambda i, tokens: seen[i].append(list(tokens)),
        max_new_tokens=8,
        block_width=2,
        seed=3,
    )
    for i, rec in enumerate(recs):
        assert len(seen[i]) == rec.steps >= 1
        for a, b in zip(seen[i], seen[i][1:] + [rec.token_ids], strict=True):
            assert b[: len(a)] == a  # never retracted: every call extends the last, the answer extends all


def test_refuses_a_wrong_model_of_the_same_shape_by_its_weights(tmp_path, tiny_policy, caplog):
    """An in-memory model without a name (name_or_path empty) and the critic's shapes is checked by its
    weights' fingerprint: another model is refused unless the caller vouches for it; a critic recording no
    fingerprint loads with one warning."""
    from helpers import make_tiny_policy

    from igcritic.policy import weights_fingerprint

    ident = {**tiny_policy.identity.to_dict(), "fingerprint": weights_fingerprint(tiny_policy.model)}
    art = write_artifact(tmp_path / "c", ident, search={**SEARCH, "budget": 25.0})
    other = make_tiny_policy(seed=1)
    assert getattr(other.model, "name_or_path", "") == ""
    with pytest.raises(
        GuardError,
        match=r"other weights \(fingerprint [0-9a-f]{16} != [0-9a-f]{16} recorded by .*trust_policy=True",
    ) as e:
        load_guard(art, model=other.model, tokenizer=other.tokenizer)
    assert "\n" not in str(e.value)
    assert load_guard(art, model=other.model, tokenizer=other.tokenizer, trust_policy=True).critic is not None
    assert load_guard(art, model=tiny_policy.model, tokenizer=tiny_policy.tokenizer).policy is not None
    old = write_artifact(tmp_path / "old", tiny_policy.identity.to_dict())  # made before fingerprints
    for _ in range(2):
        load_guard(old, model=other.model, tokenizer=other.tokenizer)
    assert caplog.text.count("records no policy fingerprint") == 1


def test_shipped_critics_record_the_embedded_policy_fingerprint():
    """The shipped artifacts carry the fingerprint of the embedded SmolLM2 they were trained on."""
    from pathlib import Path

    from igcritic.critic import read_config
    from igcritic.policy import EMBEDDED_POLICY_ID, load_policy, policy_fingerprint

    fp = policy_fingerprint(load_policy(EMBEDDED_POLICY_ID))
    root = Path(__file__).resolve().parents[1] / "checkpoints"
    for name in ("embedded", "embedded-r2"):
        assert read_config(root / name)["policy"]["fingerprint"] == fp, name


def test_rollouts_are_the_guards_answers_with_their_latents(artifact, tiny_policy):
    """``collect --guard`` asks the guard for rollouts: the answers of one seeded search, with h_0..h_T read
    by one teacher-forced forward and ``finished`` where the answer ends with EOS."""
    guard = load_guard(artifact, model=tiny_policy.model, tokenizer=tiny_policy.tokenizer)
    prompts = ["how do I bake bread at home", "hello"]
    roll = guard.rollouts(prompts, torch.Generator().manual_seed(5), on_violation="best_effort")
    seed = int(torch.randint(0, 2**62, (1,), generator=torch.Generator().manual_seed(5)))
    records = guard.generate(prompts, seed=seed, on_violation="best_effort")
    assert roll.tokens == [r.token_ids for r in records]
    eos = set(tiny_policy.eos_token_ids)
    assert roll.finished == [bool(t) and t[-1] in eos for t in roll.tokens]
    for toks, lat in zip(roll.tokens, roll.latents, strict=True):
        assert lat.shape == (len(toks) + 1, tiny_policy.identity.hidden_size) and lat.dtype == torch.float32


def test_a_refused_rollout_is_the_refusal_text_not_an_empty_answer(artifact, tiny_policy):
    """Round 2 trains on what the guard said: a refused answer is stored as the refusal text + EOS (the
    refusal candidate's tokens), finished, with its latents; never as a trajectory with no tokens."""
    guard = load_guard(artifact, model=tiny_policy.model, tokenizer=tiny_policy.tokenizer)
    prompts = ["how do I bake bread at home", "hello"]
    kw = dict(budget=-1e6, on_violation="refuse")  # nothing is admissible: every search fails closed
    seed = int(torch.randint(0, 2**62, (1,), generator=torch.Generator().manual_seed(5)))
    records = guard.generate(prompts, seed=seed, **kw)
    assert all(r.refused and r.token_ids == [] for r in records)
    roll = guard.rollouts(prompts, torch.Generator().manual_seed(5), **kw)
    ids = tiny_policy.tokenizer(records[0].text, add_special_tokens=False)["input_ids"]
    want = ids + tiny_policy.eos_token_ids[:1]
    assert len(want) > 1 and roll.tokens == [want, want] and roll.finished == [True, True]
    for lat in roll.latents:
        assert lat.shape == (len(want) + 1, tiny_policy.identity.hidden_size)


def test_progress_off_a_terminal_logs_count_and_eta(caplog):
    """A run writing to a log file (not a terminal) still says how far it is: count, elapsed and ETA lines."""
    with caplog.at_level("INFO", logger="igcritic.guard"):
        with progress_bar(4, "answering", log_every=0.0) as advance:
            advance()
            advance(2, description="answering IG")
    lines = [r.getMessage() for r in caplog.records if r.name == "igcritic.guard"]
    assert lines[0].startswith("answering: 1/4, 0 min") and "left" in lines[0]
    assert lines[1].startswith("answering IG: 3/4")
    caplog.clear()
    with caplog.at_level("INFO", logger="igcritic.guard"):
        with progress_bar(4, "answering") as advance:  # the default: at most once a minute
            advance()
    assert not [r for r in caplog.records if r.name == "igcritic.guard"]


def test_describe_says_when_the_refusal_candidate_won_and_prints_the_trace(tiny_policy):
    """A refusal that ranked first among admissible answers is not "no answer stayed within budget"; with
    ``trace`` every decision's candidates are printed, the kept ones marked."""
    crit = tiny_critic(tiny_policy, safe=True, cost=0.0)
    search = dict(num_candidates=4, beams_kept=1, block_width=4, max_new_tokens=8, budget=0.5, trace=True)
    guard = Guard(tiny_policy, crit)
    (rec,) = guard.generate(["hi"], refusal_candidate=True, refusal_rank="value", **search)
    assert rec.trace and rec.trace[0]["verdict"] == "keep"
    text = describe(rec)
    assert text.count("block 1, try 1: keep") == 1 and "kept S" in text
    assert ("refusal candidate ranked first" in text) == rec.refused
    refused = GuardRecord(**{**rec.to_dict(), "refused": True, "cost": 0.01, "text": "Sorry."})
    assert "refused: the refusal candidate ranked first (its cost 0.01 <= d = 0.5)" in describe(refused)
    failed = GuardRecord(**{**rec.to_dict(), "refused": True, "cost": float("nan"), "trace": None})
    assert "no answer stayed within budget" in describe(failed) and "block 1" not in describe(failed)


def test_a_served_request_for_a_trace_gets_it_in_the_outcome_as_json(tiny_policy):
    """``igcritic serve``: a request that sends ``"trace": true`` gets every decision in its ``igcritic``
    block, NaN as null; an untraced one gets no ``trace`` key (in process: decode and outcome, no server)."""
    pytest.importorskip("litserve")
    from dataclasses import replace

    from igcritic.search import SearchConfig
    from igcritic.serve import Job, decode, outcome

    search = SearchConfig(num_candidates=4, beams_kept=2, block_width=2, max_new_tokens=8, budget=0.5)
    guard = Guard(tiny_policy, tiny_critic(tiny_policy, safe=True, cost=0.0), search=search)
    job = decode({"messages": [{"role": "user", "content": "hi"}], "max_tokens": 4, "trace": True}, guard)
    assert job.error is None and job.settings["trace"] is True
    (rec,) = guard.generate([job.prompt], **job.settings)
    rec.trace[0]["candidates"][0]["cost"] = float("nan")
    trace = outcome(rec, job, tiny_policy.eos_token_ids)["igcritic"]["trace"]
    trace = json.loads(json.dumps(trace, allow_nan=False))
    assert trace[0]["candidates"][0]["cost"] is None and len(trace) == len(rec.trace) > 0
    assert "trace" not in outcome(replace(rec, trace=None), Job(prompt="hi"), [])["igcritic"]
