"""A sentiment classifier whose label is typed Literal[...] and so always valid.

JSONAdapter asks the server for a JSON object matching the signature's schema;
llama-cpp-python's server enforces it by constrained decoding, so even the
135M-parameter SmolLM2 can only answer one of the three labels. (Whether the
label is *right* is another matter: the model is tiny.)

    make example-sentiment       # or: .venv/bin/python examples/sentiment.py
"""

from __future__ import annotations

import asyncio
import sys

from _common import arguments, load
from programs import sentiment_program

import dspex


async def main() -> int:
    args = arguments(__doc__.splitlines()[0])
    devset = load("reviews.jsonl", "review", limit=args.limit)
    classify = sentiment_program()
    async with dspex.OpenAIChat(model=args.model, base_url=args.lm_url, max_tokens=32) as lm:
        with dspex.context(lm=lm):
            result = await dspex.Evaluate(
                devset=devset, metric=dspex.exact_match, max_concurrency=4
            ).acall(classify)
    print(result.table())
    return 1 if result.errors == len(devset) else 0


if __name__ == "__main__":
    sys.exit(asyncio.run(main()))
