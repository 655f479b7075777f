"""``python -m flexai.pool._probe HOST:PORT``: print, as one JSON line, the Ray and Python
versions of the Ray cluster at the address and flexai's pool facts there (or null).

Run by ``flexai.pool.member.probe`` in a child process, because a Ray client that cannot reach
its server ends its whole process. This module must never start or change anything.
"""
from __future__ import annotations

import json
import sys


def main(address: str) -> int:
    """Print the facts; exit 0, or 3 when the address does not answer as a Ray cluster."""
    from ray._raylet import GcsClient

    from .member import KV_KEY, NAMESPACE

    try:
        client = GcsClient(address=address)
        meta = client.internal_kv_get(b"CLUSTER_METADATA", namespace=b"cluster", timeout=5)
        pool = client.internal_kv_get(KV_KEY, namespace=NAMESPACE.encode(), timeout=5)
    except Exception as exc:  # any failure means: not a Ray cluster we can use
        print(f"{type(exc).__name__}: {exc}", file=sys.stderr)
        return 3
    facts = json.loads(meta) if meta else {}
    out = {"ray_version": facts.get("ray_version"),
           "python_version": facts.get("python_version"),
           "pool": json.loads(pool) if pool else None}
    print(json.dumps(out))
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1]))
