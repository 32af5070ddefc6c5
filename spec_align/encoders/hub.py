"""Finding pretrained weights offline, or failing fast with a fix when they cannot be had."""

from __future__ import annotations

import os
import socket
from collections.abc import Sequence
from pathlib import Path
from urllib.parse import urlparse

from huggingface_hub import constants as hf_constants
from huggingface_hub import try_to_load_from_cache

__all__ = ["WeightsUnavailableError", "find_cached_weights", "hub_is_offline"]

# Seconds to wait for a TCP connection before declaring the weights host unreachable. A failed
# download through huggingface_hub retries with backoff for ~45 s; this probe replaces that wait.
PROBE_TIMEOUT_S = 3.0

_TRUE = {"1", "true", "yes", "on"}


class WeightsUnavailableError(RuntimeError):
    """Pretrained weights are neither in a local cache nor downloadable from here."""


def hub_is_offline() -> bool:
    """Whether downloads are switched off (``HF_HUB_OFFLINE``); this also covers plain URLs.

    The environment is read at call time as well, because huggingface_hub snapshots it at import.
    """
    return hf_constants.HF_HUB_OFFLINE or os.environ.get("HF_HUB_OFFLINE", "").lower() in _TRUE


def _unreachable(url: str) -> str | None:
    """Why ``url``'s host cannot be reached, or None when a TCP connection opens."""
    parsed = urlparse(url)
    port = parsed.port or (443 if parsed.scheme == "https" else 80)
    try:
        with socket.create_connection((parsed.hostname, port), timeout=PROBE_TIMEOUT_S):
            return None
    except OSError as err:
        return f"cannot reach {parsed.hostname}:{port} ({err})"


def find_cached_weights(
    weights: str,
    *,
    hf_repo: str | None = None,
    hf_filenames: Sequence[str] = (),
    url: str | None = None,
    url_dir: str | Path | None = None,
    cache_dir: str | Path | None = None,
) -> str | None:
    """Local path of cached weights; None when they are not cached but can be downloaded.

    Looks in the Hugging Face cache for ``hf_repo``/``hf_filenames`` (in order) and in
    ``url_dir`` for the basename of ``url``. When nothing is cached, downloads must be possible:
    ``HF_HUB_OFFLINE`` must be unset and the host must accept a connection within
    ``PROBE_TIMEOUT_S``; otherwise this raises instead of letting the library retry for a minute.

    Args:
        weights: human-readable name of the weights for the error message, e.g. "ViT-B-32/openai".
        hf_repo: Hugging Face hub repository id holding the weights.
        hf_filenames: candidate files in ``hf_repo``, preferred first.
        url: plain download URL, used when there is no hub repository.
        url_dir: directory the library caches ``url`` downloads in.
        cache_dir: Hugging Face cache override; None means the default (``HF_HUB_CACHE``).

    Returns:
        Path of the first cached file found, or None when a download can be attempted.

    Raises:
        WeightsUnavailableError: not cached and downloads are off or the host is unreachable.
    """
    hf_cache = str(cache_dir or hf_constants.HF_HUB_CACHE)
    looked: list[str] = []
    if hf_repo:
        for filename in hf_filenames:
            cached = try_to_load_from_cache(hf_repo, filename, cache_dir=hf_cache)
            if isinstance(cached, str):
                return cached
        looked.append(f"hub id '{hf_repo}' (files {', '.join(hf_filenames)}) in {hf_cache}")
    if url and url_dir:
        target = Path(url_dir) / Path(urlparse(url).path).name
        if target.is_file():
            return str(target)
        looked.append(f"{target} (download of {url})")

    if hub_is_offline():
        reason = "downloads are disabled (HF_HUB_OFFLINE is set)"
    else:
        reason = _unreachable(hf_constants.ENDPOINT if hf_repo else str(url))
        if reason is None:
            return None
    fetch = f"`hf download {hf_repo}`" if hf_repo else f"fetching {url} into {url_dir}"
    raise WeightsUnavailableError(
        f"pretrained weights {weights} are not cached and cannot be downloaded: {reason}. "
        f"Looked for {'; '.join(looked) or 'no known location'}. To fix it, either pre-download "
        f"them where there is network ({fetch}, with the same HF_HOME/HF_HUB_CACHE as here), "
        "or pass checkpoint_path=<local weights file>, or set pretrained=null for random init."
    )
