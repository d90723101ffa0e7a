"""A tour of the Python client against a running server (`make serve`).

    .venv/bin/python examples/quickstart.py [--url http://127.0.0.1:8000]

Lists the models, classifies two reviews, streams a generation token by token, then feeds a
review into a session in pieces and shows that the running answer equals one-shot prediction.
"""

from __future__ import annotations

import argparse

from service.client import Client, RnnserveError


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--url", default="http://127.0.0.1:8000")
    ap.add_argument("--lm", default="char-lstm", help="a language model (task next_token)")
    ap.add_argument("--classifier", default="sentiment-lstm", help="a classifier (task classify)")
    args = ap.parse_args()

    with Client(args.url) as c:
        for m in c.models():
            print(f"model {m.name} v{m.version}: {m.task}, {m.cell}")

        reviews = ["a gripping, beautiful film", "dull and far too long"]
        for text, out in zip(reviews, c.predict(args.classifier, reviews), strict=True):
            assert out.label is not None and out.probs is not None
            print(f"{out.label:>9} {out.probs[out.label]:.3f}  {text!r}")

        print("\n--- streaming ---")
        with c.generate(args.lm, "ROMEO:\n", max_tokens=120, seed=7, stream=True) as stream:
            for token in stream:
                print(token, end="", flush=True)
        assert stream.result is not None
        print(f"\n--- {stream.result.finish_reason}, seed {stream.result.seed} ---\n")

        review = "I expected to hate this movie, but it won me over."
        (whole,) = c.predict(args.classifier, [review])
        with c.session(args.classifier) as s:  # deleted when the block ends
            for piece in ("I expected to hate ", "this movie, but it ", "won me over."):
                fed = s.feed(piece)
                label = fed.output.label if fed.output else "(no complete word yet)"
                print(f"v{fed.version} after {piece!r}: {label}")
            assert fed.output is not None and fed.output.probs is not None
            assert whole.probs is not None
            gap = max(abs(fed.output.probs[k] - whole.probs[k]) for k in whole.probs)
            print(f"session {s.id}: chunked vs one-shot differ by {gap:.1e}")

        try:
            c.generate(args.lm, "x", max_tokens=10**9)
        except RnnserveError as e:  # typed: InvalidInput, field "max_tokens"
            print(f"refused as expected: {type(e).__name__} on {e.field!r}: {e.message}")


if __name__ == "__main__":
    main()
