"""Short-answer QA with ChainOfThought, scored by token F1.

make example-qa              # or: .venv/bin/python examples/qa.py
"""

from __future__ import annotations

import asyncio
import sys

from _common import arguments, load
from programs import qa_program

import dspex


async def main() -> int:
    args = arguments(__doc__.splitlines()[0])
    devset = load("trivia.jsonl", "question", limit=args.limit)
    qa = qa_program()
    async with dspex.OpenAIChat(model=args.model, base_url=args.lm_url, max_tokens=256) as lm:
        with dspex.context(lm=lm):
            result = await dspex.Evaluate(devset=devset, metric=dspex.f1, max_concurrency=4).acall(
                qa
            )
    print(result.table())
    return 1 if result.errors == len(devset) else 0


if __name__ == "__main__":
    sys.exit(asyncio.run(main()))
