"""Many generations at once with the asyncio client; the server decodes them in one batch.

.venv/bin/python examples/async_concurrent.py [--url ...] [--lm char-lstm] [-n 8]
"""

from __future__ import annotations

import argparse
import asyncio
import time

from service.client import AsyncClient


async def one(c: AsyncClient, lm: str, seed: int) -> tuple[int, str, float]:
    t0 = time.perf_counter()
    first = 0.0
    pieces = []
    async with c.generate(lm, "\n", max_tokens=80, seed=seed, stream=True) as stream:
        async for token in stream:
            first = first or time.perf_counter() - t0
            pieces.append(token)
    return seed, "".join(pieces), first


async def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--url", default="http://127.0.0.1:8000")
    ap.add_argument("--lm", default="char-lstm")
    ap.add_argument("-n", type=int, default=8, help="concurrent streams")
    args = ap.parse_args()
    async with AsyncClient(args.url) as c:
        t0 = time.perf_counter()
        results = await asyncio.gather(*(one(c, args.lm, seed) for seed in range(args.n)))
        took = time.perf_counter() - t0
    for seed, text, ttft in results:
        print(f"seed {seed} (first token after {ttft * 1e3:.0f} ms): {text[:60]!r}")
    print(f"{args.n} streams of 80 tokens in {took:.2f} s")


if __name__ == "__main__":
    asyncio.run(main())
