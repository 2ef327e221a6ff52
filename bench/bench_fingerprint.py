"""What the policy fingerprint costs: every parameter hashed once (``weights_fingerprint``) and a weight file
streamed through sha256 (``files_fingerprint``), against the baseline of reading the same file.

    OMP_NUM_THREADS=1 python bench/bench_fingerprint.py [--repeats 3]

Prints MB/s of each over the embedded SmolLM2-135M (538 MB of float32) and the extrapolated first-time cost
for a 7B policy (14 GB of bf16 files; the parameters hash as 28 GB of float32). Later runs hit the cache.
"""

from __future__ import annotations

import argparse
import statistics
import time

from igcritic.policy import EMBEDDED_POLICY_ID, load_policy, weights_fingerprint

SEVEN_B_FILE_MB = 14e3
SEVEN_B_FLOAT32_MB = 28e3


def timed(fn, repeats: int) -> float:
    times = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t0)
    return statistics.median(times)


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--repeats", type=int, default=3)
    args = ap.parse_args()
    policy = load_policy(EMBEDDED_POLICY_ID)
    files = [p for p in policy.source.iterdir() if p.suffix == ".safetensors"]
    file_mb = sum(f.stat().st_size for f in files) / 1e6
    param_mb = sum(p.numel() * 4 for _, p in policy.model.named_parameters()) / 1e6

    def read() -> None:
        for f in files:
            with f.open("rb") as fh:
                while fh.read(1 << 24):
                    pass

    def stream() -> None:
        import hashlib

        h = hashlib.sha256()
        for f in files:
            with f.open("rb") as fh:
                for block in iter(lambda: fh.read(1 << 24), b""):
                    h.update(block)

    base = timed(read, args.repeats)
    files_s = timed(stream, args.repeats)
    params_s = timed(lambda: weights_fingerprint(policy.model), args.repeats)
    print(f"files {file_mb:.0f} MB, parameters {param_mb:.0f} MB as float32, median of {args.repeats}")
    print(f"baseline read:          {file_mb / base:7.0f} MB/s")
    print(f"sha256 of the files:    {file_mb / files_s:7.0f} MB/s  (ratio to read {base / files_s:.2f})")
    print(f"weights_fingerprint:    {param_mb / params_s:7.0f} MB/s  (ratio to read {base / params_s:.2f})")
    print(
        f"7B first time: files {SEVEN_B_FILE_MB / (file_mb / files_s):.0f} s, parameters as float32 "
        f"{SEVEN_B_FLOAT32_MB / (param_mb / params_s):.0f} s; cached after that"
    )


if __name__ == "__main__":
    main()
