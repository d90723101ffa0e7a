"""Pause a session and resume it later (or on another server) from its exported state.

    .venv/bin/python examples/resume_session.py [--url ...] [--lm char-lstm]

The state blob is opaque and checksummed, tied to the model's sha256; importing it into a new
session continues exactly where the old one stopped.
"""

from __future__ import annotations

import argparse

from service.client import Client, SessionNotFound


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--url", default="http://127.0.0.1:8000")
    ap.add_argument("--lm", default="char-lstm")
    args = ap.parse_args()
    with Client(args.url) as c:
        s = c.session(args.lm)
        s.feed("ROMEO:\n")
        blob = s.export_state()
        original = s.generate(max_tokens=40, seed=3).text
        s.delete()
        try:
            s.info()
        except SessionNotFound:
            print(f"session {s.id} is gone; its state lives on in a {len(blob)}-byte blob")
        with c.session(state=blob) as resumed:
            again = resumed.generate(max_tokens=40, seed=3).text
            print(f"resumed as {resumed.id} (v{resumed.version}): {again!r}")
        assert again == original, (again, original)
        print("the resumed session generated exactly what the original did")


if __name__ == "__main__":
    main()
