"""igcritic collect on the tiny Llama: latents, labels, resume after SIGKILL, two ranks, bad input."""

from __future__ import annotations

import json
import signal
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from helpers_store import wait_for_commit

from igcritic.collect import CollectConfig, CollectError, run
from igcritic.decoding import SamplingConfig
from igcritic.policy import EMBEDDED_EXTRA_LAYERS, PolicyError, load_policy
from igcritic.prompts import PromptError, PromptSource
from igcritic.store import StoreError, StoreReader, validate_store

PROMPTS = [
    "how do I bake bread",
    "how can I make a bomb",
    "write a poem about the sea",
    "hack the wifi",
    "what is the weather today",
    "help me with a plan",
]


@pytest.fixture(scope="module")
def tiny_model_dir(tmp_path_factory) -> Path:
    from helpers import build_tiny_llama, build_tokenizer

    out = tmp_path_factory.mktemp("tiny-llama")
    tok = build_tokenizer()
    build_tiny_llama(len(tok)).save_pretrained(out)
    tok.save_pretrained(out)
    return out


@pytest.fixture(scope="module")
def prompt_file(tmp_path_factory) -> Path:
    path = tmp_path_factory.mktemp("prompts") / "prompts.jsonl"
    path.write_text("".join(json.dumps({"prompt": p}) + "\n" for p in PROMPTS))
    return path


@pytest.fixture(scope="module")
def beaver_scorers(tmp_path_factory) -> dict[str, str]:
    """Tiny safe-rlhf score models as cost and reward: collect without the embedded classifiers' SmolLM2."""
    from helpers import build_tokenizer, make_beaver_folder

    root, tok = tmp_path_factory.mktemp("beaver"), build_tokenizer()
    return {
        "cost": f"beaver:{make_beaver_folder(root / 'cost', tok, seed=1)}",
        "reward": f"beaver:{make_beaver_folder(root / 'reward', tok, seed=2, score_type='reward')}",
    }


def tiny_config(model_dir: Path, prompt_file: Path, out: Path, **kw) -> CollectConfig:
    base = dict(
        out=str(out),
        model=str(model_dir),
        prompts=PromptSource(source=str(prompt_file)),
        rollouts_per_prompt=2,
        batch_size=4,
        sampling=SamplingConfig(max_new_tokens=12),
        seed=3,
        cost="embedded",
        reward="embedded",
        stride=4,
        accelerator="cpu",
    )
    base.update(kw)
    return CollectConfig(**base)


def test_collect_writes_valid_store_with_teacher_forced_latents(tiny_model_dir, prompt_file, tmp_path):
    cfg = tiny_config(tiny_model_dir, prompt_file, tmp_path / "s.zarr")
    stats = run(cfg)
    assert stats.batches == 3 and stats.skipped_nan == 0
    assert validate_store(cfg.out) == []
    r = StoreReader(cfg.out)
    assert r.n_traj == len(PROMPTS) * 2
    assert r.attrs["policy"]["model_id"] == str(tiny_model_dir)
    assert (
        r.attrs["config_hash"]
        and r.attrs["cost_scorer"]["id"]
        and r.attrs["generation"]["max_new_tokens"] == 12
    )
    # every prompt got exactly K rollouts
    assert np.bincount(r.traj_prompt, minlength=len(PROMPTS)).tolist() == [2] * len(PROMPTS)

    # Stored latents equal an independent teacher-forced forward of prompt + answer (fp16 storage:
    # tolerance 2e-3 relative to the latent scale).
    policy = load_policy(str(tiny_model_dir))
    for i in range(r.n_traj):
        t = r.trajectory(i)
        answer = [int(x) for x in t["token_ids"][1:]]
        enc = policy.encode_prompts([r.prompts[int(r.traj_prompt[i])]])
        ids = torch.cat([enc["input_ids"], torch.tensor([answer], dtype=torch.long)], 1)
        ref = policy.latents_of(ids, torch.ones_like(ids))[0, enc["input_ids"].shape[1] - 1 :]
        got = torch.from_numpy(np.asarray(t["latents"], dtype=np.float32))
        assert got.shape == ref.shape
        assert torch.allclose(got, ref, atol=2e-3 * ref.abs().max().item(), rtol=2e-3)
        # S_T of the trajectory equals its last prefix score
        assert t["cost_prefix"][-1] == pytest.approx(float(r.traj_cost[i]))


@pytest.mark.subprocess
def test_resume_after_sigkill_matches_uninterrupted_run(tiny_model_dir, prompt_file, tmp_path):
    out = tmp_path / "killed.zarr"
    # Many small batches so the kill lands mid-run, after at least one committed batch.
    ref = tiny_config(
        tiny_model_dir,
        prompt_file,
        tmp_path / "ref.zarr",
        batch_size=1,
        sampling=SamplingConfig(max_new_tokens=48),
    )
    run(ref)
    argv = [
        sys.executable,
        "-m",
        "igcritic",
        "collect",
        "--out",
        str(out),
        "--model",
        str(tiny_model_dir),
        "--prompts.source",
        str(prompt_file),
        "--rollouts_per_prompt",
        "2",
        "--batch_size",
        "1",
        "--sampling.max_new_tokens",
        "48",
        "--seed",
        "3",
        "--stride",
        "4",
        "--accelerator",
        "cpu",
    ]
    log = tmp_path / "killed.stderr"
    with log.open("w") as err:
        proc = subprocess.Popen(argv, stdout=subprocess.DEVNULL, stderr=err)
    try:
        wait_for_commit(proc, out, log)  # the store's manifest, not a clock: a loaded machine starts slowly
    finally:
        proc.send_signal(signal.SIGKILL)
        proc.wait()
    partial = StoreReader(out)
    kept = len(partial.batches_done)
    assert 1 <= kept < 12, f"the kill should land between the first and the last batch; {kept} were committed"

    resumed = subprocess.run([*argv, "--resume", "true"], capture_output=True, text=True, timeout=1800)
    assert resumed.returncode == 0, resumed.stderr[-2000:]
    assert validate_store(out) == []
    assert StoreReader(out).n_traj == StoreReader(ref.out).n_traj
    assert StoreReader(out).fingerprint() == StoreReader(ref.out).fingerprint()


def test_resume_with_other_config_is_refused(tiny_model_dir, prompt_file, tmp_path):
    cfg = tiny_config(tiny_model_dir, prompt_file, tmp_path / "s.zarr", rollouts_per_prompt=1)
    run(cfg)
    other = tiny_config(
        tiny_model_dir, prompt_file, tmp_path / "s.zarr", rollouts_per_prompt=1, seed=99, resume=True
    )
    with pytest.raises(StoreError, match="config"):
        run(other)
    # without --resume or --overwrite the existing store is refused, and left intact
    again = tiny_config(tiny_model_dir, prompt_file, tmp_path / "s.zarr", rollouts_per_prompt=1)
    with pytest.raises(StoreError, match="overwrite"):
        run(again)
    assert StoreReader(cfg.out).n_traj == len(PROMPTS)


@pytest.mark.multiprocess
def test_two_ranks_make_one_valid_store(tiny_model_dir, prompt_file, tmp_path):
    single = tiny_config(tiny_model_dir, prompt_file, tmp_path / "one.zarr")
    run(single)
    multi = tiny_config(tiny_model_dir, prompt_file, tmp_path / "two.zarr", devices=2, strategy="ddp_spawn")
    run(multi)
    assert validate_store(multi.out) == []
    r = StoreReader(multi.out)
    assert r.n_traj == StoreReader(single.out).n_traj
    assert StoreReader(multi.out).fingerprint() == StoreReader(single.out).fingerprint()


def test_nan_latents_batch_is_reported_and_not_written(
    tiny_model_dir, prompt_file, tmp_path, monkeypatch, caplog
):
    import igcritic.collect as collect_mod

    real = collect_mod.rollout
    calls = {"n": 0}

    def poisoned(*a, **kw):
        out = real(*a, **kw)
        calls["n"] += 1
        if calls["n"] == 2:
            poisoned_latents = out.latents[0].clone()
            poisoned_latents[1, 0] = float("nan")
            out.latents[0] = poisoned_latents
        return out

    monkeypatch.setattr(collect_mod, "rollout", poisoned)
    cfg = tiny_config(tiny_model_dir, prompt_file, tmp_path / "nan.zarr")
    stats = run(cfg)
    assert stats.skipped_nan == 1 and stats.batches == 2
    assert "batch 1 not written" in caplog.text
    assert StoreReader(cfg.out).n_traj == 8 and validate_store(cfg.out) == []


def test_bad_input_errors_are_one_line(tiny_model_dir, tmp_path):
    with pytest.raises(PolicyError, match="policy folder .*no-such-model does not exist") as e:
        load_policy(str(tmp_path / "no-such-model"))
    assert "\n" not in str(e.value) and "Repo id" not in str(e.value)  # not the hub's message for a folder
    with pytest.raises(PolicyError, match="--dtype 'float13' is not a torch dtype"):
        load_policy(str(tiny_model_dir), dtype="float13")

    empty = tmp_path / "empty.jsonl"
    empty.write_text("")
    cfg = tiny_config(tiny_model_dir, empty, tmp_path / "x.zarr")
    with pytest.raises(PromptError, match="holds no prompts"):
        run(cfg)

    bad = tmp_path / "bad.jsonl"
    bad.write_text('{"prompt": "fine"}\n{"prompt": \n')
    with pytest.raises(PromptError, match=r"bad.jsonl:2"):
        run(tiny_config(tiny_model_dir, bad, tmp_path / "y.zarr"))

    with pytest.raises(CollectError, match="--resume and --overwrite"):
        run(tiny_config(tiny_model_dir, bad, tmp_path / "z.zarr", resume=True, overwrite=True))
    assert not (tmp_path / "x.zarr").exists() and not (tmp_path / "y.zarr").exists()


@pytest.mark.parametrize(
    "kw, match",
    [
        (
            {"sampling": SamplingConfig(temperature=-1.0)},
            r"temperature -1.0 / top_p .* is invalid",
        ),
        ({"sampling": SamplingConfig(top_p=2.0)}, r"top_p 2.0 .* is invalid; use temperature >= 0"),
        ({"norm": "mid"}, "--norm 'mid' must be post or pre"),
        ({"accelerator": "tpu"}, "--accelerator 'tpu' must be auto, cpu, gpu or cuda"),
        ({"dtype": "float13"}, "--dtype 'float13' is not a torch dtype"),
    ],
)
def test_sampling_tap_dtype_and_accelerator_are_checked_before_any_work(tmp_path, kw, match):
    """Each was run silently (a negative temperature decoded greedily, any norm but pre read post, an
    accelerator named wrongly ran on CPU) or ended in a traceback (dtype)."""
    cfg = CollectConfig(out=str(tmp_path / "s.zarr"), model=str(tmp_path / "never-loaded"), **kw)
    with pytest.raises((CollectError, PolicyError), match=match) as e:
        run(cfg)
    assert "\n" not in str(e.value) and not (tmp_path / "s.zarr").exists()


@pytest.mark.skipif(torch.cuda.is_available(), reason="needs a machine without a CUDA GPU")
@pytest.mark.parametrize("accelerator", ["gpu", "cuda"])
def test_collect_on_a_gpu_that_is_not_there_says_so(tmp_path, accelerator):
    cfg = CollectConfig(out=str(tmp_path / "s.zarr"), model="never-loaded", accelerator=accelerator)
    with pytest.raises(
        CollectError, match=f"--accelerator {accelerator}: this machine has .*--accelerator cpu"
    ):
        run(cfg)


@pytest.mark.subprocess
def test_cli_reports_missing_model_in_one_line(tmp_path):
    res = subprocess.run(
        [
            sys.executable,
            "-m",
            "igcritic",
            "collect",
            "--model",
            str(tmp_path / "nope"),
            "--out",
            str(tmp_path / "s.zarr"),
        ],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert res.returncode == 2
    err_lines = [line for line in res.stderr.splitlines() if "error:" in line]
    assert len(err_lines) == 1 and "policy folder" in err_lines[0] and "does not exist" in err_lines[0]


def test_full_disk_keeps_committed_batches_and_resume_completes(
    tiny_model_dir, prompt_file, tmp_path, monkeypatch
):
    import errno

    from igcritic.store import writer

    real_write_rows, calls = writer._write_rows, {"n": 0}

    def write_until_disk_full(items):
        calls["n"] += 1
        if calls["n"] == 3:  # the token rows of the second batch (two writes per batch)
            raise OSError(errno.ENOSPC, "No space left on device")
        return real_write_rows(items)

    monkeypatch.setattr(writer, "_write_rows", write_until_disk_full)
    cfg = tiny_config(tiny_model_dir, prompt_file, tmp_path / "full.zarr")
    with pytest.raises(StoreError, match="disk full while writing batch 1.*--resume") as e:
        run(cfg)
    assert "\n" not in str(e.value)
    assert StoreReader(cfg.out).batches_done == {0} and validate_store(cfg.out) == []
    monkeypatch.setattr(writer, "_write_rows", real_write_rows)
    run(tiny_config(tiny_model_dir, prompt_file, tmp_path / "full.zarr", resume=True))
    ref = tiny_config(tiny_model_dir, prompt_file, tmp_path / "ref.zarr")
    run(ref)
    assert StoreReader(cfg.out).fingerprint() == StoreReader(ref.out).fingerprint()


def test_overwrite_refuses_what_is_not_a_store(tiny_model_dir, prompt_file, beaver_scorers, tmp_path):
    """--overwrite true --out . (or any folder of the user's) is refused before any work, and nothing is
    deleted."""
    mine = tmp_path / "work"
    mine.mkdir()
    (mine / "notes.txt").write_text("mine")
    cfg = tiny_config(
        tiny_model_dir, prompt_file, mine, overwrite=True, rollouts_per_prompt=1, **beaver_scorers
    )
    with pytest.raises(StoreError, match="is not an igcritic store.*will not delete it") as e:
        run(cfg)
    assert "\n" not in str(e.value) and [p.name for p in mine.iterdir()] == ["notes.txt"]
    store = tiny_config(
        tiny_model_dir, prompt_file, tmp_path / "s.zarr", rollouts_per_prompt=1, **beaver_scorers
    )
    run(store)
    run(
        tiny_config(
            tiny_model_dir,
            prompt_file,
            tmp_path / "s.zarr",
            rollouts_per_prompt=1,
            seed=4,
            overwrite=True,
            **beaver_scorers,
        )
    )  # a store is replaced
    assert StoreReader(store.out).attrs["seed"] == 4 and validate_store(store.out) == []


@pytest.mark.subprocess
def test_second_collect_on_a_store_being_written_is_refused(
    tiny_model_dir, prompt_file, beaver_scorers, tmp_path
):
    """A collect --overwrite (or --resume) while another process writes the store is refused; after that
    process is killed its lock is stale and --resume completes the store."""
    cfg = tiny_config(
        tiny_model_dir, prompt_file, tmp_path / "s.zarr", rollouts_per_prompt=1, **beaver_scorers
    )
    run(cfg)
    digest = StoreReader(cfg.out).attrs["config_hash"]
    holder = subprocess.Popen(
        [
            sys.executable,
            "-c",
            "import sys; from igcritic.store import StoreWriter; "
            f"w = StoreWriter.resume({cfg.out!r}, config_hash={digest!r}); print('ready', flush=True); "
            "sys.stdin.read()",
        ],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        text=True,
    )
    try:
        assert holder.stdout.readline().strip() == "ready"
        for kw in ({"overwrite": True}, {"resume": True}):
            again = tiny_config(
                tiny_model_dir, prompt_file, cfg.out, rollouts_per_prompt=1, **beaver_scorers, **kw
            )
            with pytest.raises(
                StoreError, match=rf"rank-00000 is being written by pid {holder.pid} since"
            ) as e:
                run(again)
            assert "\n" not in str(e.value)
    finally:
        holder.kill()
        holder.wait()
    assert validate_store(cfg.out) == [] and StoreReader(cfg.out).n_traj == len(PROMPTS)
    run(
        tiny_config(
            tiny_model_dir, prompt_file, cfg.out, rollouts_per_prompt=1, resume=True, **beaver_scorers
        )
    )
    assert validate_store(cfg.out) == [] and StoreReader(cfg.out).n_traj == len(PROMPTS)


def test_resume_checks_the_prompts_text_and_the_weights(tiny_model_dir, beaver_scorers, tmp_path):
    """The config hash covers the prompts' text (not the file's path) and the policy's and scorers'
    weights."""
    import shutil

    from helpers import build_tiny_llama, build_tokenizer, make_beaver_folder

    first = tmp_path / "a.jsonl"
    first.write_text("".join(json.dumps({"prompt": p}) + "\n" for p in PROMPTS))
    model, cost = tmp_path / "model", tmp_path / "cost"
    shutil.copytree(tiny_model_dir, model)
    shutil.copytree(beaver_scorers["cost"].removeprefix("beaver:"), cost)
    kw = dict(rollouts_per_prompt=1, cost=f"beaver:{cost}", reward=beaver_scorers["reward"])
    out = tmp_path / "s.zarr"
    run(tiny_config(model, first, out, **kw))

    def resume(prompt_file):
        return run(tiny_config(model, prompt_file, out, resume=True, **kw))

    first.write_text(first.read_text().replace("hack the wifi", "hack the wifi now"))  # same file, new prompt
    with pytest.raises(
        StoreError,
        match=r"other prompts \(prompt 3 is 'hack the wifi' in the store, "
        r"'hack the wifi now' in this run\)",
    ) as e:
        resume(first)
    assert "\n" not in str(e.value)
    moved = tmp_path / "moved.jsonl"  # the store's prompts from another file: the same content
    moved.write_text("".join(json.dumps({"prompt": p}) + "\n" for p in PROMPTS))
    assert resume(moved).batches_already_done == 2

    tok = build_tokenizer()
    make_beaver_folder(cost, tok, seed=7)  # retrained cost model in the same folder
    with pytest.raises(StoreError, match=r"fingerprints\.cost differ"):
        resume(moved)
    shutil.rmtree(cost)
    shutil.copytree(beaver_scorers["cost"].removeprefix("beaver:"), cost)
    build_tiny_llama(len(tok), seed=5).save_pretrained(model)  # another policy in the same folder
    with pytest.raises(StoreError, match=r"fingerprints\.policy differ"):
        resume(moved)
    assert validate_store(out) == [] and StoreReader(out).prompts == PROMPTS
    assert all(StoreReader(out).attrs["config"]["fingerprints"].values())


def test_collect_with_extra_layers_stores_the_layer_list_and_concatenated_latents(
    tiny_model_dir, prompt_file, tmp_path
):
    cfg = tiny_config(
        tiny_model_dir, prompt_file, tmp_path / "s.zarr", extra_layers=[1], rollouts_per_prompt=1
    )
    run(cfg)
    assert validate_store(cfg.out) == []
    r = StoreReader(cfg.out)
    policy = load_policy(str(tiny_model_dir), extra_layers=[1])
    assert r.attrs["policy"]["extra_layers"] == [1]
    assert r.hidden_size == policy.identity.latent_size == 2 * policy.identity.hidden_size
    assert policy.identity.mismatches(r.attrs["policy"]) == []
    t = r.trajectory(0)
    enc = policy.encode_prompts([r.prompts[int(r.traj_prompt[0])]])
    ids = torch.cat([enc["input_ids"], torch.tensor([[int(x) for x in t["token_ids"][1:]]])], 1)
    ref = policy.latents_of(ids, torch.ones_like(ids))[0, enc["input_ids"].shape[1] - 1 :]
    got = torch.from_numpy(np.asarray(t["latents"], dtype=np.float32))
    assert torch.allclose(got, ref, atol=2e-3 * ref.abs().max().item(), rtol=2e-3)


def _tiny_critic_artifact(folder: Path, model_dir: Path, seed: int) -> Path:
    from igcritic.critic import Critic, CriticConfig

    identity = load_policy(str(model_dir)).identity.to_dict()
    torch.manual_seed(seed)
    cfg = CriticConfig(hidden_size=identity["hidden_size"], width=16, depth=1, policy=identity, budget=0.5)
    Critic(cfg).eval().save_pretrained(folder)
    return folder


GUARD_SEARCH = {"num_candidates": 4, "block_width": 4, "mode": "latent", "critic": True}


def test_collect_with_a_guard_records_it_and_resumes_like_any_collect(
    tiny_model_dir, prompt_file, beaver_scorers, tmp_path, monkeypatch
):
    import igcritic.collect as collect_module

    art = _tiny_critic_artifact(tmp_path / "critic", tiny_model_dir, seed=0)
    kw = dict(guard=str(art), guard_search=GUARD_SEARCH, batch_size=4, **beaver_scorers)
    ref = tiny_config(tiny_model_dir, prompt_file, tmp_path / "ref.zarr", **kw)
    run(ref)
    assert validate_store(ref.out) == []
    r = StoreReader(ref.out)
    sha = json.loads((art / "critic_config.json").read_text())["weights_sha256"]
    assert r.attrs["rollouts_from"] == "guard" and r.attrs["guard"]["critic_sha256"] == sha
    assert r.n_traj == len(PROMPTS) * 2 and int(r.traj_len.max()) <= 12
    # the stored latents are the policy's h_t of the guarded answers (teacher-forced check of one)
    policy = load_policy(str(tiny_model_dir))
    t = r.trajectory(3)
    enc = policy.encode_prompts([r.prompts[int(r.traj_prompt[3])]])
    ids = torch.cat([enc["input_ids"], torch.tensor([[int(x) for x in t["token_ids"][1:]]])], 1)
    want = policy.latents_of(ids, torch.ones_like(ids))[0, enc["input_ids"].shape[1] - 1 :]
    got = torch.from_numpy(np.asarray(t["latents"], dtype=np.float32))
    assert torch.allclose(got, want, atol=2e-3 * want.abs().max().item(), rtol=2e-3)

    # a run that dies after its first batch resumes to the same store as the uninterrupted run
    out = tmp_path / "killed.zarr"
    calls = {"n": 0}
    real = collect_module.label_batch

    def dies_after_one(*a, **k):
        calls["n"] += 1
        if calls["n"] > 1:
            raise KeyboardInterrupt
        return real(*a, **k)

    monkeypatch.setattr(collect_module, "label_batch", dies_after_one)
    with pytest.raises(KeyboardInterrupt):
        run(tiny_config(tiny_model_dir, prompt_file, out, **kw))
    monkeypatch.setattr(collect_module, "label_batch", real)
    assert len(StoreReader(out).batches_done) == 1
    run(tiny_config(tiny_model_dir, prompt_file, out, resume=True, **kw))
    assert StoreReader(out).fingerprint() == StoreReader(ref.out).fingerprint()

    # another critic is another input: resuming with it is refused
    other = _tiny_critic_artifact(tmp_path / "critic2", tiny_model_dir, seed=1)
    with pytest.raises(StoreError, match="config"):
        run(tiny_config(tiny_model_dir, prompt_file, out, resume=True, **{**kw, "guard": str(other)}))
    with pytest.raises(CollectError, match="not a critic artifact"):
        run(tiny_config(tiny_model_dir, prompt_file, tmp_path / "x.zarr", **{**kw, "guard": str(tmp_path)}))
    (other / "search_config.json").write_text('{"num_candidate": 4}')  # misspelt: refused before work
    with pytest.raises(
        CollectError,
        match=r"--guard .*critic2: its artifact cannot be read \(unknown search parameter\(s\) "
        r"\['num_candidate'\]",
    ):
        run(tiny_config(tiny_model_dir, prompt_file, tmp_path / "y.zarr", **{**kw, "guard": str(other)}))
    assert not (tmp_path / "y.zarr").exists()


def test_collect_names_its_own_guard_flags(tiny_model_dir, prompt_file, beaver_scorers, tmp_path):
    art = _tiny_critic_artifact(tmp_path / "critic", tiny_model_dir, seed=0)
    kw = dict(
        guard=str(art), guard_search={**GUARD_SEARCH, "block_width": 99}, batch_size=4, **beaver_scorers
    )
    with pytest.raises(
        CollectError, match=r"--guard_search.block_width 99 must be in 1..max_new_tokens"
    ) as e:
        run(tiny_config(tiny_model_dir, prompt_file, tmp_path / "x.zarr", **kw))
    assert " search." not in str(e.value)


def test_compile_is_not_part_of_the_content_hash():
    """``compile`` changes how rollouts are decoded, not what they are: a store resumes under either."""
    assert CollectConfig(compile=True).hashed() == CollectConfig().hashed()


def test_extra_layers_default_is_the_embedded_policys_own(tmp_path):
    """Left unset, ``extra_layers`` is what the shipped configs, the shipped critic and the embedded heads use
    for the embedded policy (a store collected without the flag resumes and compares like one collected with
    the shipped config), and none for any other model."""
    from igcritic.__main__ import parse_config
    from igcritic.scorers import load_scorer

    root = Path(__file__).resolve().parents[1]
    layers = list(EMBEDDED_EXTRA_LAYERS)
    unset = parse_config(CollectConfig, [])
    assert unset.extra_layers is None and unset.resolved().extra_layers == layers
    named = parse_config(CollectConfig, ["--extra_layers", json.dumps(layers)])
    assert unset.resolved().hashed() == named.resolved().hashed()  # one config, one hash
    assert parse_config(CollectConfig, ["--extra_layers", "[]"]).resolved().extra_layers == []
    assert parse_config(CollectConfig, ["--model", str(tmp_path)]).resolved().extra_layers == []
    for name in ("embedded.yaml", "embedded-full.yaml"):
        shipped = parse_config(CollectConfig, ["--config", str(root / "configs" / "collect" / name)])
        assert shipped.model == unset.model and shipped.resolved().extra_layers == layers
    critic = json.loads((root / "checkpoints" / "embedded" / "critic_config.json").read_text())
    assert critic["policy"]["extra_layers"] == layers
    for role in ("cost", "reward"):
        assert load_scorer("embedded", role).to_dict()["layers"] == layers


def test_a_critic_on_stores_tapped_elsewhere_names_the_tap_not_another_policy():
    from igcritic.fit import _policy_problems
    from igcritic.policy import PolicyIdentity

    ident = PolicyIdentity("embedded:SmolLM2-135M-Instruct", 576, 30, 30, "post", extra_layers=[15, 18, 21])
    tapped = {**ident.to_dict(), "extra_layers": []}
    (msg,) = _policy_problems(ident.to_dict(), tapped, "the checkpoint's critic")
    assert "same model tapped elsewhere (extra_layers: [15, 18, 21] != []" in msg and "another" not in msg
    (msg,) = _policy_problems(ident.to_dict(), {**tapped, "model_id": "other"}, "the critic")
    assert "trained on another policy (model_id:" in msg
    assert _policy_problems(ident.to_dict(), ident.to_dict(), "the critic") == []


def test_too_long_prompt_late_in_the_file_is_refused_before_the_old_store_is_touched(
    tiny_model_dir, prompt_file, beaver_scorers, tmp_path
):
    """Every prompt is checked against the context before --out is touched, and the error names the
    prompt's line in the file (a blank line shifts the line from the index)."""
    cfg = tiny_config(
        tiny_model_dir, prompt_file, tmp_path / "s.zarr", rollouts_per_prompt=1, **beaver_scorers
    )
    run(cfg)
    before = StoreReader(cfg.out).fingerprint()
    long_file = tmp_path / "long.jsonl"
    rows = [json.dumps({"prompt": p}) for p in PROMPTS] + ["", json.dumps({"prompt": "bread " * 300})]
    long_file.write_text("\n".join(rows) + "\n")
    again = tiny_config(
        tiny_model_dir, long_file, cfg.out, rollouts_per_prompt=1, overwrite=True, **beaver_scorers
    )
    with pytest.raises(CollectError, match=rf"prompt 7 of the source \({long_file}:8\) has \d+ tokens") as e:
        run(again)
    assert "\n" not in str(e.value)
    assert StoreReader(cfg.out).fingerprint() == before and validate_store(cfg.out) == []


def _fail_on_batch(monkeypatch, index: int):
    """Make collect's labelling raise on its ``index``-th batch (0-based)."""
    import igcritic.collect as collect_mod

    real, calls = collect_mod.label_batch, []

    def label(*a, **kw):
        calls.append(1)
        if len(calls) > index:
            raise RuntimeError("scorer crashed")
        return real(*a, **kw)

    monkeypatch.setattr(collect_mod, "label_batch", label)


def test_overwrite_keeps_the_old_store_until_the_new_one_commits(
    tiny_model_dir, prompt_file, beaver_scorers, tmp_path, monkeypatch
):
    cfg = tiny_config(
        tiny_model_dir, prompt_file, tmp_path / "s.zarr", rollouts_per_prompt=1, **beaver_scorers
    )
    run(cfg)
    before = StoreReader(cfg.out).fingerprint()
    again = tiny_config(
        tiny_model_dir, prompt_file, cfg.out, rollouts_per_prompt=1, seed=9, overwrite=True, **beaver_scorers
    )
    _fail_on_batch(monkeypatch, 0)  # the new run dies before its first commit: the old store is back
    with pytest.raises(RuntimeError, match="scorer crashed"):
        run(again)
    assert StoreReader(cfg.out).fingerprint() == before and validate_store(cfg.out) == []
    assert sorted(p.name for p in tmp_path.iterdir()) == ["s.zarr"]  # nothing kept aside
    monkeypatch.undo()
    _fail_on_batch(monkeypatch, 1)  # dies after its first commit: the new store stands, resumable
    with pytest.raises(RuntimeError, match="scorer crashed"):
        run(again)
    assert StoreReader(cfg.out).attrs["seed"] == 9 and StoreReader(cfg.out).batches_done == {0}
    assert sorted(p.name for p in tmp_path.iterdir()) == ["s.zarr"]  # the old store is gone
    monkeypatch.undo()
    again.overwrite, again.resume = False, True
    run(again)
    assert validate_store(cfg.out) == [] and StoreReader(cfg.out).n_traj == len(PROMPTS)


def test_collect_failing_on_its_only_batch_leaves_nothing(
    tiny_model_dir, prompt_file, beaver_scorers, tmp_path, monkeypatch
):
    _fail_on_batch(monkeypatch, 0)
    cfg = tiny_config(
        tiny_model_dir,
        prompt_file,
        tmp_path / "new" / "s.zarr",
        rollouts_per_prompt=1,
        batch_size=8,
        **beaver_scorers,
    )
    with pytest.raises(RuntimeError, match="scorer crashed"):
        run(cfg)
    assert not Path(cfg.out).exists()
    (tmp_path / "empty").mkdir()  # a folder the user made stays, empty
    cfg.out = str(tmp_path / "empty")
    with pytest.raises(RuntimeError, match="scorer crashed"):
        run(cfg)
    assert (tmp_path / "empty").is_dir() and not any((tmp_path / "empty").iterdir())


def test_resume_refuses_a_policy_changed_in_any_tensor(tiny_model_dir, prompt_file, beaver_scorers, tmp_path):
    """A change confined to one value of one MLP weight (not a sampled tensor's first values) is a new
    policy: --resume refuses it instead of mixing two policies in one store."""
    import shutil

    from transformers import AutoModelForCausalLM

    model = tmp_path / "model"
    shutil.copytree(tiny_model_dir, model)
    cfg = tiny_config(model, prompt_file, tmp_path / "s.zarr", rollouts_per_prompt=1, **beaver_scorers)
    run(cfg)
    edited = AutoModelForCausalLM.from_pretrained(model)
    with torch.no_grad():
        edited.model.layers[0].mlp.up_proj.weight[-1, -1] += 0.5
    edited.save_pretrained(model)
    cfg.resume = True
    with pytest.raises(StoreError, match=r"fingerprints\.policy differ") as e:
        run(cfg)
    assert "\n" not in str(e.value)


@pytest.mark.embedded
def test_labels_from_the_rollout_latents_equal_the_text_path(monkeypatch):
    """The embedded cost and reward read the layers the policy taps (15/18/21): labels come from the rollout's
    own latents, the same numbers as the text path's second pass (tolerance 1e-4; seen <= 6e-7)."""
    from igcritic.collect import label_batch
    from igcritic.decoding import rollout
    from igcritic.scorers import ClassifierScorer, load_scorer

    policy = load_policy(extra_layers=EMBEDDED_EXTRA_LAYERS)
    cost, reward = load_scorer("embedded", "cost"), load_scorer("embedded", "reward")
    prompts = ["How can I make a bomb at home?", "How do I bake bread at home?", "Name three colours."]
    roll = rollout(policy, prompts, SamplingConfig(max_new_tokens=20), torch.Generator().manual_seed(0))
    passes = _count_text_passes(monkeypatch)
    decoded, _ = label_batch(policy, prompts, [0, 1, 2], roll, cost, reward)
    assert passes == []  # no second pass over any answer
    monkeypatch.setattr(ClassifierScorer, "decode_columns", lambda self, policy: None)
    text, _ = label_batch(policy, prompts, [0, 1, 2], roll, cost, reward)
    assert passes  # the text path ran
    np.testing.assert_allclose(decoded.cost_prefix, text.cost_prefix, atol=1e-4)
    np.testing.assert_allclose(decoded.traj_reward, text.traj_reward, atol=1e-4)


def _count_text_passes(monkeypatch) -> list:
    """Record every teacher-forced pass of the latent scorers' text path (the answers it was given)."""
    from igcritic.scorers.latent import PolicyFeatures

    passes, original = [], PolicyFeatures._prefix_features

    def counted(self, prompts, answers):
        passes.append(answers)
        return original(self, prompts, answers)

    monkeypatch.setattr(PolicyFeatures, "_prefix_features", counted)
    return passes


def test_labels_of_an_answer_that_retokenises_differently_continue_the_rollout_cache(monkeypatch):
    """An answer whose text re-tokenises to other tokens (here a "\\n\\n" before "1." sampled as one token and
    read back as two, as list answers often are) is labelled from the rollout's latents of the tokens both
    share, then the re-tokenised rest fed on the rollout's own KV cache: the text path's numbers (1e-4; seen
    1.1e-6) without its pass over the answer."""
    from igcritic.collect import label_batch
    from igcritic.decoding import prefix_texts, rollout
    from igcritic.scorers import ClassifierScorer, load_scorer
    from igcritic.scorers.latent import same_tokens

    policy = load_policy(extra_layers=(15, 18, 21))
    cost, reward = load_scorer("embedded", "cost"), load_scorer("embedded", "reward")
    prompts = [
        "Explain how to plant a tree, step by step.",
        "Write a short guide to making tea.",
        "How do I bake bread at home?",
        "Say hello in Japanese.",
    ]
    roll = rollout(policy, prompts, SamplingConfig(max_new_tokens=24), torch.Generator().manual_seed(2))
    full = [prefix_texts(policy.tokenizer, t)[-1] for t in roll.tokens]
    assert not all(same_tokens(policy.tokenizer, full, roll.tokens, policy.eos_token_ids))  # the case
    passes = _count_text_passes(monkeypatch)
    decoded, _ = label_batch(policy, prompts, [0, 1, 2, 3], roll, cost, reward)
    assert passes == [] and roll.cache is None  # no second pass; the cache was used and dropped
    monkeypatch.setattr(ClassifierScorer, "decode_columns", lambda self, policy: None)
    text, _ = label_batch(policy, prompts, [0, 1, 2, 3], roll, cost, reward)
    assert passes
    np.testing.assert_allclose(decoded.cost_prefix, text.cost_prefix, atol=1e-4)
    np.testing.assert_allclose(decoded.traj_reward, text.traj_reward, atol=1e-4)


def test_guard_search_is_typed_and_hashes_as_given():
    """--guard_search is the search's override group: a misspelt field fails at once, and the content hash
    holds only the fields given (a store collected with a plain dict resumes under the typed group)."""
    from igcritic.search import SearchConfigError, SearchOverrides

    cfg = CollectConfig(guard_search={"mode": "exact"})
    assert cfg.guard_search == SearchOverrides(mode="exact") and cfg.hashed()["guard_search"] == {
        "mode": "exact"
    }
    with pytest.raises(SearchConfigError, match=r"--guard_search: unknown search fields \['bogus'\]"):
        CollectConfig(guard_search={"bogus": 1})
