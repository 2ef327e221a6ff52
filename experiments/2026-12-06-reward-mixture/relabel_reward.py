# Now `igcritic relabel SRC --out DST --reward embedded --check`; kept here: it made the results.
"""Copy a store and relabel its rollouts' reward with another embedded reward head, from the stored latents
(no recollection): the head reads layers the store taps (15/18/21 beside the critic's layer), and the reward
of an answer is the head on [h_0, h_T, mean(h_0..h_T)] (an EOS row not counted), as the decode path of
``collect`` computes it (``igcritic.collect.decoded_labels``).

    python experiments/2026-12-06-reward-mixture/relabel_reward.py SRC.zarr DST.zarr \
        [--reward igcritic/assets/classifiers/reward.safetensors] [--check OLD_reward.safetensors]

``--check`` first recomputes the store's own labels with the head that wrote them and prints how far they
are from the stored ``traj_reward`` (collect labels the re-tokenised text; the stored latents are those of
the sampled tokens, float16). The copy gets a new store id, the new reward's scorer info and fingerprint in
its attributes and a ``relabelled`` note; ``collect --resume`` on it then needs the new reward.
"""

from __future__ import annotations

import argparse
import json
import shutil
import uuid
from pathlib import Path

import numpy as np
import torch
import zarr

from igcritic.collect import files_fingerprint
from igcritic.policy import PolicyIdentity
from igcritic.scorers.embedded import CLASSIFIER_DIR, CLASSIFIER_FILES, ClassifierScorer
from igcritic.scorers.latent import latent_columns
from igcritic.store.layout import OWNER, config_hash


def rewards(group, scorer: ClassifierScorer, eos: set[int], chunk: int = 512) -> np.ndarray:
    """One reward per trajectory of every shard, in the reader's order (shards by rank)."""
    ident = group.attrs["policy"]
    identity = PolicyIdentity(**{k: v for k, v in ident.items() if k in PolicyIdentity.__dataclass_fields__})
    cols = latent_columns(identity, scorer.head.layers)
    if cols is None:
        raise SystemExit(f"the store does not tap layers {scorer.head.layers}: recollect with this reward")
    out = {}
    for name, shard in sorted(group["shards"].groups()):
        n_traj = shard.attrs["n_traj"]
        offsets = shard["traj_offsets"][: n_traj + 1]
        vals = np.zeros(n_traj, np.float32)
        for s in range(0, n_traj, chunk):
            e = min(s + chunk, n_traj)
            lat = torch.from_numpy(shard["latents"][offsets[s] : offsets[e]].astype(np.float32))
            tok = shard["token_ids"][offsets[s] : offsets[e]]
            firsts, lasts, means = [], [], []
            for i in range(s, e):
                a, b = offsets[i] - offsets[s], offsets[i + 1] - offsets[s]
                if b - a > 1 and int(tok[b - 1]) in eos:
                    b -= 1  # the EOS row: not part of the answer's text
                h = lat[a:b]
                firsts.append(h[0])
                lasts.append(h[-1])
                means.append(h.mean(0))
            vals[s:e] = scorer.decode_values(
                cols, torch.stack(firsts), torch.stack(lasts), torch.stack(means)
            )
        out[name] = vals
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("src", type=Path)
    ap.add_argument("dst", type=Path)
    ap.add_argument("--reward", type=Path, default=None, help="reward head (default: the embedded one)")
    ap.add_argument("--check", type=Path, help="the head that labelled the store: how far its relabel is")
    ns = ap.parse_args()
    from igcritic.policy import load_policy

    eos = set(load_policy().eos_token_ids)
    src = zarr.open_group(str(ns.src), mode="r")
    if ns.check:
        old = rewards(src, ClassifierScorer("reward", "reward", path=ns.check), eos)
        for name, v in old.items():
            stored = src["shards"][name]["traj_reward"][: len(v)]
            d = np.abs(v - stored)
            print(
                f"check {name}: |relabel - stored| median {np.median(d):.2e}, "
                f"99% {np.quantile(d, 0.99):.2e}, "
                f"max {d.max():.2e}; corr {np.corrcoef(v, stored)[0, 1]:.4f}"
            )
    if ns.dst.exists():
        raise SystemExit(f"{ns.dst} exists: give a new path (this script never writes over a folder)")
    shutil.copytree(ns.src, ns.dst)
    dst = zarr.open_group(str(ns.dst), mode="r+")
    scorer = ClassifierScorer("reward", "reward", path=ns.reward)
    new = rewards(dst, scorer, eos)
    for name, v in new.items():
        before = dst["shards"][name]["traj_reward"][: len(v)]
        dst["shards"][name]["traj_reward"][: len(v)] = v
        print(
            f"{name}: {len(v)} rewards, mean {before.mean():.3f} -> {v.mean():.3f}, "
            f"corr {np.corrcoef(v, before)[0, 1]:.3f}"
        )
    attrs = dict(dst.attrs)
    fingerprint = files_fingerprint([ns.reward or CLASSIFIER_DIR / CLASSIFIER_FILES["reward"]])
    config = {**attrs["config"], "fingerprints": {**attrs["config"]["fingerprints"], "reward": fingerprint}}
    dst.attrs.update(
        {
            OWNER: {**attrs[OWNER], "store_id": uuid.uuid4().hex},
            "reward_scorer": scorer.to_dict(),
            "config": config,
            "config_hash": config_hash(config),
            "relabelled": {
                "from": str(ns.src),
                "from_store_id": attrs[OWNER]["store_id"],
                "reward_before": attrs["reward_scorer"],
                "by": "experiments/2026-12-06-reward-mixture/relabel_reward.py",
            },
        }
    )
    print(json.dumps(dst.attrs["reward_scorer"])[:300])


if __name__ == "__main__":
    main()
