"""`python -m service.security [NAME [KEY]]`: print a keys-file line for an API key (a new key
when none is given; it goes to stderr, only its hash to the file line). The middleware that checks
keys is `service/api/middleware/auth.py`."""

from __future__ import annotations

import secrets
import sys

from service.keys import check_key, key_hash


def main(argv: list[str]) -> int:
    """`python -m service.security [NAME [KEY]]`: print a keys-file line (a new key if none)."""
    name = argv[0] if argv else "default"
    key = argv[1] if len(argv) > 1 else "rk_" + secrets.token_urlsafe(32)
    check_key(name, key)
    if len(argv) < 2:
        print(f"# key (give it to the client, store it nowhere else): {key}", file=sys.stderr)
    print(f"{name} sha256:{key_hash(key).hex()}")
    return 0


if __name__ == "__main__":  # pragma: no cover
    raise SystemExit(main(sys.argv[1:]))
