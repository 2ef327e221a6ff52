"""The Zarr v3 store of collected trajectories: what ``igcritic collect`` writes and ``igcritic fit`` reads.

Command: ``igcritic inspect STORE [--budget D]`` (:mod:`igcritic.store.inspect`).

Layout (a directory, a ``file://`` URL or an fsspec URL such as ``s3://bucket/run``, one zarr v3 group)::

    <root>/                 attrs: schema_version, hidden_size, chunk_tokens, prompts_count, compression,
                                   config_hash, policy, cost_scorer, reward_scorer, generation, seed,
                                   dataset, software, ... (provenance, given by the caller)
      prompts               (N_prompt,) string
      writer-rank-00000.lock  while rank 0 writes (:mod:`igcritic.store.lock`)
      shards/rank-00000/    attrs = manifest: n_traj, n_tok, batches_done (sorted committed batch indices)
        latents             (N_tok, H) float16      h_t, token-major, trajectories concatenated
        token_ids           (N_tok,) int32          token that led to h_t; -1 at each trajectory's t = 0
        cost_prefix         (N_tok,) float32        S_t
        traj_offsets        (N_traj + 1,) int64     row offsets into this shard; trajectory i has T_i + 1 rows
        traj_prompt         (N_traj,) int64         index into root ``prompts``
        traj_reward, traj_cost (= S_T)  float32;  traj_len (T_i) int32;  traj_finished bool;  traj_batch int64
      shards/rank-00001/ ...  one writer (process) per shard, never two

Modules, in the order data flows: :mod:`~igcritic.store.layout` (names, locations, what ``--overwrite`` may
replace), :mod:`~igcritic.store.lock` (one writer per shard), :mod:`~igcritic.store.writer` (batches in,
manifest last), :mod:`~igcritic.store.reader` (all shards as one store), :mod:`~igcritic.store.inspect`
(integrity check and summary). docs/design.md section 4 states the contract.
"""

from igcritic.store.inspect import validate_store
from igcritic.store.layout import StoreError, check_replaceable, check_writable, config_hash
from igcritic.store.reader import StoreReader
from igcritic.store.writer import StoreWriter, TrajectoryBatch

__all__ = [
    "StoreError",
    "StoreReader",
    "StoreWriter",
    "TrajectoryBatch",
    "check_replaceable",
    "check_writable",
    "config_hash",
    "validate_store",
]
