"""Customer-support intent classification: accuracy on the intent_*.jsonl splits.

The dataset (written by make_intent_dataset.py) has six labels, and two in five
of its messages mention another label's topic before their actual request, so a
tiny model is far from perfect here and labelled demos or clearer instructions
can move its accuracy: a task on which prompt optimization can be measured.

    .venv/bin/python examples/intent.py                       # zero-shot, test split
    .venv/bin/python examples/intent.py --demos 8 --split val # 8 labelled demos from train
    .venv/bin/python examples/intent.py --instructions rules  # the labelling rules as instructions
"""

from __future__ import annotations

import argparse
import asyncio
import random
import sys
import time
from collections import Counter
from typing import Literal

from _common import add_lm_arguments, load
from make_intent_dataset import LABEL_RULES

import dspex

Intent = Literal[
    "billing", "refund", "shipping", "account_access", "technical_issue", "cancel_subscription"
]


class ClassifyIntent(dspex.Signature):
    """Classify the intent of a customer-support message."""

    message: str = dspex.InputField(desc="a message from a customer")
    intent: Intent = dspex.OutputField()


#: A hand-written "better instruction": the rules the dataset was labelled by.
RULES_INSTRUCTIONS = (
    "Classify the intent of a customer-support message. The intent is what the customer "
    "asks for in their request, not a topic they only mention in passing.\n"
    + "\n".join(f"- {label}: {rule}" for label, rule in LABEL_RULES.items())
)


def arguments() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    add_lm_arguments(parser)
    parser.add_argument("--split", choices=["train", "val", "test"], default="test")
    parser.add_argument("--limit", type=int, default=None, help="use only the first N examples")
    parser.add_argument("--demos", type=int, default=0, help="labelled demos from the train split")
    parser.add_argument("--demo-seed", type=int, default=0, help="which demos: seeds the draw")
    parser.add_argument("--adapter", choices=["json", "chat"], default="json")
    parser.add_argument(
        "--instructions",
        default=None,
        help='instructions replacing the docstring; "rules" for the labelling rules',
    )
    parser.add_argument("--concurrency", type=int, default=4, help="requests in flight")
    parser.add_argument("--show", type=int, default=0, help="print the first N results")
    return parser.parse_args()


def pick_demos(count: int, seed: int) -> list[dspex.Example]:
    """``count`` train examples, labels taking turns so every label is shown early.

    Round-robin rather than a plain random draw because with 6 labels and 4-8
    demos a random draw often leaves a label out, which mostly measures luck.
    """
    train = load("intent_train.jsonl", "message")
    random.Random(seed).shuffle(train)
    by_label: dict[str, list[dspex.Example]] = {}
    for example in train:
        by_label.setdefault(example["intent"], []).append(example)
    queues = [by_label[label] for label in sorted(by_label)]
    demos = [
        queue[round_] for round_ in range(len(train)) for queue in queues if round_ < len(queue)
    ]
    chosen = demos[:count]
    random.Random(seed).shuffle(chosen)  # so the last demo's label is not always the same
    return chosen


async def main() -> int:
    args = arguments()
    devset = load(f"intent_{args.split}.jsonl", "message", limit=args.limit)
    signature: type[dspex.Signature] = ClassifyIntent
    if args.instructions is not None:
        text = RULES_INSTRUCTIONS if args.instructions == "rules" else args.instructions
        signature = ClassifyIntent.with_instructions(text)
    adapter = dspex.JSONAdapter() if args.adapter == "json" else dspex.ChatAdapter()
    classify = dspex.Predict(
        signature, adapter=adapter, demos=pick_demos(args.demos, args.demo_seed)
    )
    started = time.monotonic()
    async with dspex.OpenAIChat(model=args.model, base_url=args.lm_url, max_tokens=32) as lm:
        with dspex.context(lm=lm):
            result = await dspex.Evaluate(
                devset=devset, metric=dspex.exact_match, max_concurrency=args.concurrency
            ).acall(classify)
    elapsed = time.monotonic() - started
    if args.show:
        print(result.table(args.show))
    predicted = Counter(
        str(r.prediction["intent"]) if r.prediction is not None else "(error)"
        for r in result.results
    )
    print("predicted labels:", ", ".join(f"{k} {v}" for k, v in predicted.most_common()))
    print(
        f"intent {args.split} adapter={args.adapter} demos={args.demos} "
        f"demo_seed={args.demo_seed} instructions={args.instructions or 'docstring'}: "
        f"accuracy {result.score:.3f} ± {result.standard_error:.3f} "
        f"(n={len(result.results)}, errors={result.errors}, {elapsed:.0f} s)"
    )
    # More LM calls than examples means ChatAdapter completions that did not parse
    # and were retried through JSONAdapter: how often the model ignored the format.
    usage = result.usage
    print(
        f"LM calls {usage.calls} for {len(result.results)} examples, "
        f"{usage.prompt_tokens} prompt + {usage.completion_tokens} completion tokens"
    )
    return 1 if result.errors == len(devset) else 0


if __name__ == "__main__":
    sys.exit(asyncio.run(main()))
