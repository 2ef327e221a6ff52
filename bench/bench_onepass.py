"""What scoring from the decode pass saves in a whole command: run one ``igcritic`` command in this process,
either as shipped (a scorer on the policy's own layers reads the hidden states the decode loop produced) or
with ``--text_path`` (every such scorer refuses the decode pass, so each answer or candidate is scored by a
second, teacher-forced pass over its text, as before the one-pass paths), and print the command's wall and
CPU seconds. Both give the same labels and answers (tests/test_collect.py, tests/test_search.py), so the
difference is the second pass.

    python bench/bench_onepass.py collect --config configs/collect/embedded.yaml --out /tmp/a.zarr \
        --overwrite true
    python bench/bench_onepass.py --text_path collect --config configs/collect/embedded.yaml \
        --out /tmp/b.zarr --overwrite true

Run the two sides alternately (A B A B) with a whole-process timer (e.g. ``/usr/bin/time -v``) on a shared
machine; the process's own figures printed last include model loading.
"""

from __future__ import annotations

import resource
import sys
import time


def main() -> int:
    args = sys.argv[1:]
    text_path = "--text_path" in args
    args = [a for a in args if a != "--text_path"]
    if text_path:
        from igcritic.scorers.embedded import ClassifierScorer

        ClassifierScorer.decode_columns = lambda self, policy: None  # the text path for every scorer
    from igcritic.__main__ import main as igcritic

    t0, r0 = time.perf_counter(), resource.getrusage(resource.RUSAGE_SELF)
    status = igcritic(args)
    r1 = resource.getrusage(resource.RUSAGE_SELF)
    cpu = r1.ru_utime + r1.ru_stime - r0.ru_utime - r0.ru_stime
    side = "text path" if text_path else "decode pass"
    print(f"onepass {side}: igcritic {args[0]} {time.perf_counter() - t0:.1f} s wall, {cpu:.1f} s CPU")
    return status


if __name__ == "__main__":
    sys.exit(main())
