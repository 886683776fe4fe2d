"""The Hugging Face hub as a fallback source: fail fast when it cannot be reached, suggest bundled aliases."""

from __future__ import annotations

import difflib
import functools
from contextlib import contextmanager
from typing import Iterable, Iterator

__all__ = ["cache_only_unless_reachable", "did_you_mean", "hub_offline", "hub_reachable", "hub_unreachable_note"]

# one request, no retries: a hub that does not answer within this is treated as absent
_PROBE_TIMEOUT_S = 4.0
# True while cache_only_unless_reachable holds the hub's offline flag up (not the user's choice)
_forced_offline = False


def hub_offline() -> bool:
    """True when the user switched the hub off (HF_HUB_OFFLINE / TRANSFORMERS_OFFLINE)."""
    from huggingface_hub import constants

    return bool(constants.HF_HUB_OFFLINE) and not _forced_offline


@functools.lru_cache(maxsize=1)
def _probe(endpoint: str) -> str | None:
    """None when one quick request to the hub gets any HTTP answer, else why it did not."""
    from huggingface_hub.utils import get_session

    try:
        # any status (even 404) proves the hub answers; only the connection matters here
        get_session().head(endpoint, timeout=_PROBE_TIMEOUT_S)
    except Exception as exc:  # noqa: BLE001  (DNS, refused, timeout, TLS, proxy: all mean "not reachable")
        text = str(exc).strip().splitlines()
        return text[0][:120] if text else type(exc).__name__
    return None


def hub_reachable() -> bool:
    """Whether the hub can be asked now: not switched off, and one quick request got an answer."""
    from huggingface_hub import constants

    return not hub_offline() and _probe(constants.ENDPOINT) is None


def hub_unreachable_note() -> str:
    """Why the hub was not asked, for an error message ('' when it was reachable)."""
    from huggingface_hub import constants

    if hub_offline():
        return "the hub is switched off (HF_HUB_OFFLINE)"
    why = _probe(constants.ENDPOINT)
    return "" if why is None else f"the hub at {constants.ENDPOINT} cannot be reached ({why})"


@contextmanager
def cache_only_unless_reachable() -> Iterator[None]:
    """Within: hub downloads only if the hub answered one quick request; else the local cache, no retries.

    transformers and datasets both ask huggingface_hub whether they are offline; without this they
    retry an unreachable hub for about half a minute, printing a warning per attempt.
    """
    if hub_offline() or hub_reachable():
        yield
        return
    import datasets.config  # reads the flag once at import: import it before the flag changes
    from huggingface_hub import constants

    global _forced_offline
    saved = constants.HF_HUB_OFFLINE, datasets.config.HF_HUB_OFFLINE
    constants.HF_HUB_OFFLINE = datasets.config.HF_HUB_OFFLINE = _forced_offline = True
    try:
        yield
    finally:
        constants.HF_HUB_OFFLINE, datasets.config.HF_HUB_OFFLINE = saved
        _forced_offline = False


def did_you_mean(spec: str, aliases: Iterable[str]) -> str:
    """' (did you mean <alias>?)' for a bundled alias close to what was typed, else ''."""
    match = difflib.get_close_matches(spec.strip().lower(), list(aliases), n=1, cutoff=0.6)
    return f" (did you mean {match[0]}?)" if match else ""
