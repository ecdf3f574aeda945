"""`python -m tkh.models [CONFIG ...]`: parameter counts per network beside the paper's (default: all shipped configs).

CONFIG is a shipped name (tiny, small, paper-256) or a YAML path. The networks are built on the meta device,
so even paper-256 prints instantly and uses no memory.
"""

from __future__ import annotations

import sys

from tkh.config import load_config
from tkh.errors import TkhError
from tkh.models import describe


def main(argv: list[str] | None = None) -> int:
    names = (sys.argv[1:] if argv is None else argv) or ["tiny", "small", "paper-256"]
    try:
        print("\n\n".join(describe(load_config(name)) for name in names))
    except TkhError as exc:
        print(f"python -m tkh.models: error: {exc}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
