"""Critics measured on the validation prompts of each store: does round 2 predict the search's own states?

    python experiments/2026-12-01-round2/critic_on_states.py \
      --out experiments/2026-12-01-round2/critic_on_states.json

The validation prompts are the ones `igcritic fit` holds out for data.stores = [base, guarded] (by prompt,
seed 0, 15 %), so neither critic trained on them. Per store and critic, at the store budget d: AUROC and ECE
of the calibrated safety head q(h_t, d - S_t) against 1{S_T <= d}, and the explained variance of the latent
cost head against S_t and of the value head against gamma^(T - t) R (the fit's own targets, docs/design.md 3).
"""

import argparse
import json

import numpy as np
import torch
from torchmetrics.functional.classification import binary_auroc, binary_calibration_error

from igcritic.critic import load_critic
from igcritic.data import CriticDataModule
from igcritic.store import StoreReader


def validation_rows(store: str, val_texts: set[str], budget: float, gamma: float) -> dict[str, np.ndarray]:
    """Latents and targets of every token of the store's trajectories whose prompt is held out."""
    reader = StoreReader(store)
    prompts = list(reader.prompts)
    rows: dict[str, list] = {"h": [], "z": [], "safe": [], "cost": [], "value": []}
    traj_prompt = reader.traj_prompt
    for i in range(reader.n_traj):
        if prompts[int(traj_prompt[i])] not in val_texts:
            continue  # checked before reading: the latents of training prompts are never loaded
        traj = reader.trajectory(i)
        s = np.asarray(traj["cost_prefix"], dtype=np.float64)
        steps_left = len(s) - 1 - np.arange(len(s))
        rows["h"].append(np.asarray(traj["latents"], dtype=np.float32))
        rows["z"].append(budget - s)
        rows["safe"].append(np.full(len(s), traj["cost"] <= budget))
        rows["cost"].append(s)
        rows["value"].append(gamma**steps_left * traj["reward"])
    return {k: np.concatenate(v) for k, v in rows.items()} | {"trajectories": np.array(len(rows["h"]))}


def explained_variance(y: np.ndarray, pred: np.ndarray) -> float:
    return float(1 - np.var(y - pred) / np.var(y))


def measure(critic_dir: str, rows: dict[str, np.ndarray]) -> dict[str, float | None]:
    critic = load_critic(critic_dir).eval()
    h, z = torch.from_numpy(rows["h"]), torch.from_numpy(rows["z"]).float()
    with torch.no_grad():
        q = torch.cat([critic.safe_prob(h[k : k + 4096], z[k : k + 4096]) for k in range(0, len(h), 4096)])
        cost = torch.cat([critic.cost(h[k : k + 4096]) for k in range(0, len(h), 4096)]).numpy()
        value = torch.cat([critic.value(h[k : k + 4096]) for k in range(0, len(h), 4096)]).numpy()
    safe = torch.from_numpy(rows["safe"]).long()
    both = 0 < int(safe.sum()) < len(safe)
    return {
        "auroc": float(binary_auroc(q, safe)) if both else None,  # undefined with one class
        "ece": float(binary_calibration_error(q, safe, n_bins=15)),
        "cost_ev": explained_variance(rows["cost"], cost),
        "value_ev": explained_variance(rows["value"], value),
    }


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--base", default="runs/embedded-full/store.zarr")
    ap.add_argument("--guarded", default="runs/embedded-r2/store.zarr")
    ap.add_argument("--critics", nargs="+", default=["checkpoints/embedded", "runs/embedded-r2/critic"])
    ap.add_argument("--budget", type=float, default=0.5)
    ap.add_argument("--out", required=True)
    args = ap.parse_args()
    torch.set_num_threads(1)
    dm = CriticDataModule(stores=[args.base, args.guarded], val_fraction=0.15, seed=0)
    val_texts = {dm.prompt_texts[i] for i in dm.val_prompt_ids().tolist()}
    out = {}
    for name, store in (("base", args.base), ("guarded", args.guarded)):
        rows = validation_rows(store, val_texts, args.budget, dm.gamma)
        out[name] = {
            "store": store,
            "trajectories": int(rows["trajectories"]),
            "rows": len(rows["h"]),
            "safe_share": float(rows["safe"].mean()),
        } | {critic: measure(critic, rows) for critic in args.critics}
        print(json.dumps({name: out[name]}, indent=1))
    with open(args.out, "w") as f:
        json.dump(out, f, indent=1)


if __name__ == "__main__":
    main()
