"""Whether the Hugging Face hub can be reached from here, asked once per process and quickly.

Without it a hub id on a machine with no network waits out the hub client's retries (about 25 s on an
idle machine, minutes on a loaded one) before the one-line error. `hub_kwargs()` is what every
`from_pretrained` / `load_dataset` of a hub id passes: `local_files_only=True` when the hub cannot be
reached, so a model already in the local cache still loads and anything else fails at once.

    from_pretrained(name, **hub_kwargs())
"""

from __future__ import annotations

import functools
import os
import socket
from urllib.parse import urlparse

PROBE_TIMEOUT_S = 3.0
PROXY_VARS = ("HTTPS_PROXY", "https_proxy", "ALL_PROXY", "all_proxy")


def endpoint() -> str:
    return os.environ.get("HF_ENDPOINT", "https://huggingface.co")


def offline_by_setting() -> bool:
    return os.environ.get("HF_HUB_OFFLINE", "").strip().lower() in ("1", "true", "yes", "on")


@functools.lru_cache(maxsize=1)
def reachable() -> bool:
    """True when a TCP connection to the hub endpoint opens within PROBE_TIMEOUT_S. Behind a proxy the
    probe cannot tell, so the hub counts as reachable (the client's own error says otherwise)."""
    if offline_by_setting():
        return False
    if any(os.environ.get(v) for v in PROXY_VARS):
        return True
    url = urlparse(endpoint())
    host, port = url.hostname or "huggingface.co", url.port or (80 if url.scheme == "http" else 443)
    try:
        with socket.create_connection((host, port), timeout=PROBE_TIMEOUT_S):
            return True
    except OSError:
        return False


def hub_kwargs() -> dict[str, bool]:
    """{"local_files_only": True} when the hub cannot be reached (the local cache only), else {}."""
    return {} if reachable() else {"local_files_only": True}


def unreachable_note() -> str:
    """Words for an error about a hub id: why it could not be fetched, when we know."""
    if reachable():
        return "offline or unknown id"
    return f"{urlparse(endpoint()).hostname} cannot be reached from here and it is not in the local cache"
