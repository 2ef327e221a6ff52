"""Two machines simulated on one: ``torchrun --nnodes 2 --nproc-per-node 1`` (node ranks 0 and 1 on
localhost, a static rendezvous, gloo on CPU) runs ``igcritic collect`` and ``igcritic fit`` end to end with
the tiny Llama and tiny score models (docs/scaling.md gives the same commands)."""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
from pathlib import Path

import pytest

from igcritic.store import StoreReader, validate_store

ROOT = Path(__file__).resolve().parent.parent


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def two_nodes(args: list[str], cwd: Path, timeout: int = 900) -> None:
    """Run ``python -m igcritic ARGS`` as node rank 0 and node rank 1 of a 2-node torchrun job."""
    port = str(free_port())
    env = {**os.environ, "PYTHONPATH": str(ROOT), "OMP_NUM_THREADS": "1"}
    cmd = [sys.executable, "-m", "torch.distributed.run", "--nnodes", "2", "--nproc-per-node", "1"]
    procs = [
        subprocess.Popen(
            [*cmd, "--node-rank", str(rank), "--master-addr", "127.0.0.1", "--master-port", port]
            + ["-m", "igcritic", *args],
            cwd=cwd,
            env=env,
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            text=True,
        )
        for rank in (0, 1)
    ]
    outs = []
    try:
        for p in procs:
            outs.append(p.communicate(timeout=timeout)[0])
    finally:
        for p in procs:
            if p.poll() is None:
                p.kill()
    for rank, (p, out) in enumerate(zip(procs, outs, strict=True)):
        assert p.returncode == 0, f"node {rank} of `igcritic {args[0]}` failed:\n{out[-3000:]}"


@pytest.mark.multiprocess
def test_collect_and_fit_on_two_nodes(tmp_path):
    from helpers import build_tiny_llama, build_tokenizer, make_beaver_folder

    tok = build_tokenizer()
    build_tiny_llama(len(tok)).save_pretrained(tmp_path / "tiny-llama")
    tok.save_pretrained(tmp_path / "tiny-llama")
    make_beaver_folder(tmp_path / "cost", tok, seed=1)
    make_beaver_folder(tmp_path / "reward", tok, seed=2, score_type="reward")
    prompts = [f"how do I do task number {i} at home" for i in range(12)]
    prompts += [f"hack the wifi of neighbour {i}" for i in range(12)]
    (tmp_path / "prompts.jsonl").write_text("".join(json.dumps({"prompt": p}) + "\n" for p in prompts))

    two_nodes(
        ["collect", "--model", "tiny-llama", "--prompts.source", "prompts.jsonl"]
        + ["--rollouts_per_prompt", "2", "--batch_size", "8", "--sampling.max_new_tokens", "12"]
        + ["--cost", "beaver:cost"]
        + ["--reward", "beaver:reward", "--budget", "0.0", "--accelerator", "cpu", "--num_nodes", "2"]
        + ["--out", "store.zarr"],
        tmp_path,
    )
    store = tmp_path / "store.zarr"
    assert validate_store(str(store)) == []
    reader = StoreReader(str(store))
    shards = sorted(p.name for p in (store / "shards").iterdir() if p.is_dir())
    assert reader.n_traj == 48 and shards == ["rank-00000", "rank-00001"]

    two_nodes(
        ["fit", "--config", str(ROOT / "configs/fit/embedded.yaml"), "--data.stores", "[store.zarr]"]
        + ["--data.batch_size", "64", "--data.shuffle_buffer", "256", "--model.width", "16"]
        + ["--trainer.accelerator", "cpu", "--trainer.devices", "1", "--trainer.num_nodes", "2"]
        + ["--trainer.strategy", "ddp", "--trainer.max_epochs", "2", "--trainer.logger", "false"]
        + ["--trainer.default_root_dir", "fit"],
        tmp_path,
    )
    ckpt = tmp_path / "fit" / "checkpoints" / "last.ckpt"
    assert ckpt.is_file()
    out = subprocess.run(
        [sys.executable, "-m", "igcritic", "export", str(ckpt), "--out", "critic"],
        cwd=tmp_path,
        env={**os.environ, "PYTHONPATH": str(ROOT)},
        capture_output=True,
        text=True,
    )
    assert out.returncode == 0, out.stderr[-2000:]
    config = json.loads((tmp_path / "critic" / "critic_config.json").read_text())
    assert config["policy"]["model_id"] == "tiny-llama"
    assert (tmp_path / "critic" / "critic.safetensors").is_file()
