"""Run fingerprints: everything that changes the stored numbers, and a readable diff."""

from __future__ import annotations

import hashlib
import json
from typing import Any

__all__ = ["fingerprint_hash", "fingerprint_diff"]


def fingerprint_hash(fingerprint: dict[str, Any]) -> str:
    """A short stable hash of a fingerprint dict."""
    blob = json.dumps(fingerprint, sort_keys=True, default=str).encode()
    return hashlib.sha256(blob).hexdigest()[:16]


def fingerprint_diff(stored: dict[str, Any], given: dict[str, Any]) -> list[str]:
    """Human-readable `key: stored -> given` entries for every key that differs."""
    out = []
    for key in sorted(set(stored) | set(given)):
        a, b = stored.get(key), given.get(key)
        # JSON turns tuples into lists; compare in that form
        if json.dumps(a, sort_keys=True, default=str) != json.dumps(b, sort_keys=True, default=str):
            out.append(f"{key}: {_short(a)} -> {_short(b)}")
    return out


def _short(v: Any) -> str:
    s = json.dumps(v, default=str)
    return s if len(s) <= 40 else s[:37] + "..."
