"""Tune instructions, temperature and module kind together, on a small inline dataset.

A SearchSpace declares the knobs of the program's one predictor as
variables: two candidate instructions, the sampling temperature and the
module kind (Predict or ChainOfThought). Random search pairs each
bootstrapped demo set with a random choice of them; MIPROv2 takes the two
instructions as candidates next to the ones it proposes and searches
everything with Optuna. Every trial is printed as it finishes, then the
configuration that won. Against the local model on two busy cores a run
takes a few minutes.

    .venv/bin/python examples/tune_variables.py                     # random search
    .venv/bin/python examples/tune_variables.py --optimizer mipro   # MIPROv2
    .venv/bin/python examples/tune_variables.py --base-url http://host:8000/v1 --model m

The default endpoint is the local LM of `dspex lm serve`. SmolLM2-135M is
tiny, so the scores are noisy: this shows the mechanics, not a benchmark.
"""

from __future__ import annotations

import argparse
import asyncio
import sys
from typing import Literal

from _common import add_lm_arguments

import dspex
from dspex.optimizers.base import Trial
from dspex.optimizers.executor import LocalExecutor
from dspex.optimizers.mipro import MIPROv2
from dspex.optimizers.random_search import BootstrapFewShotWithRandomSearch
from dspex.optimizers.variables import SearchSpace, Variable


class ClassifyReview(dspex.Signature):
    """Classify the sentiment of a product review."""

    review: str = dspex.InputField(desc="a short customer review")
    sentiment: Literal["positive", "negative"] = dspex.OutputField()


class ReviewTriage(dspex.Module):
    def __init__(self) -> None:
        self.classify = dspex.Predict(ClassifyReview, adapter=dspex.JSONAdapter())

    async def aforward(self, review: str) -> dspex.Prediction:
        return await self.classify.acall(review=review)


REVIEWS = [
    ("Arrived quickly and works perfectly.", "positive"),
    ("Broke after two days, very disappointed.", "negative"),
    ("Great value for the price, would buy again.", "positive"),
    ("The battery dies within an hour.", "negative"),
    ("Exactly as described, my kids love it.", "positive"),
    ("Customer service never answered my emails.", "negative"),
    ("Comfortable, stylish and well made.", "positive"),
    ("It smells of plastic and the seams are loose.", "negative"),
    ("Setup took two minutes; brilliant little gadget.", "positive"),
    ("Stopped charging after a week and the refund took ages.", "negative"),
    ("Not cheap, but worth every penny.", "positive"),
    ("I expected much better sound for this price.", "negative"),
]

SPACE = SearchSpace(
    [
        Variable.instructions(
            "classify",
            [
                "Classify the sentiment of a product review.",
                "Decide whether the customer is happy (positive) or unhappy (negative) "
                "with the product. Complaints about defects, delays or service are negative.",
            ],
        ),
        Variable.temperature("classify", [0.0, 0.7]),
        Variable.module_kind("classify", ["predict", "chain_of_thought"]),
    ]
)


def arguments() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    add_lm_arguments(parser)
    parser.add_argument("--optimizer", choices=["random", "mipro"], default="random")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--concurrency", type=int, default=4, help="requests in flight")
    return parser.parse_args()


def show(trial: Trial) -> None:
    kind = "full" if trial.full_eval else "mini"
    score = "failed" if trial.score is None else f"{trial.score:.2f}"
    chosen = SPACE.describe(SPACE.choice_from(trial.params))
    rest = {k: v for k, v in trial.params.items() if k not in SPACE and k not in ("demos", "pool")}
    print(f"trial {trial.number:>2} {kind} n={trial.examples:<2} score={score:<6} {chosen} {rest}")
    if trial.error:
        print(f"          {trial.error[:160]}")


async def main() -> int:
    args = arguments()
    examples = [dspex.Example(review=r, sentiment=s).with_inputs("review") for r, s in REVIEWS]
    trainset, valset = examples[:6], examples[6:]
    executor = LocalExecutor(max_concurrency=args.concurrency)
    optimizer: BootstrapFewShotWithRandomSearch | MIPROv2
    if args.optimizer == "random":
        optimizer = BootstrapFewShotWithRandomSearch(
            "exact_match",
            num_candidate_programs=3,
            max_bootstrapped_demos=2,
            max_labeled_demos=2,
            space=SPACE,
            executor=executor,
            seed=args.seed,
            on_trial=show,
        )
    else:
        optimizer = MIPROv2(
            "exact_match",
            num_candidates=3,
            num_trials=8,
            minibatch_size=4,
            minibatch_full_eval_steps=4,
            max_bootstrapped_demos=2,
            max_labeled_demos=2,
            space=SPACE,
            executor=executor,
            seed=args.seed,
            on_trial=show,
        )
    async with dspex.OpenAIChat(model=args.model, base_url=args.lm_url, max_tokens=192) as lm:
        with dspex.context(lm=lm):
            try:
                compiled = await optimizer.acompile(
                    ReviewTriage(), trainset=trainset, valset=valset
                )
            except dspex.DSPExError as exc:
                print(f"optimization failed: {exc}", file=sys.stderr)
                return 1
    if isinstance(optimizer, MIPROv2):
        print("\ninstruction candidates (classify.instruction indexes these):")
        for index, text in enumerate(optimizer.instruction_candidates["classify"]):
            print(f"  #{index} {' '.join(text.split())[:100]}")
    best = optimizer.best_trial(full_eval_only=isinstance(optimizer, MIPROv2))
    print(f"\nbest: trial {best.number}, score {best.score:.2f}")
    print(f"chosen: {SPACE.describe(SPACE.choice_from(best.params)) or 'the unchanged program'}")
    module = compiled.classify
    predictor = module.predict if isinstance(module, dspex.ChainOfThought) else module
    print(f"module kind: {type(module).__name__}, demos: {len(predictor.demos)}")
    print(f"instructions: {predictor.signature.instructions}")
    return 0


if __name__ == "__main__":
    sys.exit(asyncio.run(main()))
