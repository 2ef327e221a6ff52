"""A small Inspect AI task whose data ships here (no hub): the eight one-number questions of
examples/lm_eval/arithmetic.jsonl, scored by whether the target number is in the answer. Run from the
repository root against `igcritic serve` (docs/eval.md):

    inspect eval examples/inspect/igcritic_arithmetic.py --model openai/igcritic -M responses_api=false \
        --model-base-url http://127.0.0.1:8000/v1 --limit 4 --max-tokens 16
"""

from pathlib import Path

from inspect_ai import Task, task
from inspect_ai.dataset import FieldSpec, json_dataset
from inspect_ai.scorer import match
from inspect_ai.solver import generate

DATA = Path(__file__).resolve().parents[1] / "lm_eval" / "arithmetic.jsonl"


@task
def igcritic_arithmetic() -> Task:
    return Task(
        dataset=json_dataset(str(DATA), FieldSpec(input="question", target="answer")),
        solver=generate(),
        scorer=match(location="any", numeric=True),
    )
