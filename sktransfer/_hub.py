"""Where pretrained weights come from, and a fast answer when that place is out of reach.

timm downloads pretrained weights through huggingface_hub, which retries a request that
cannot connect five times with back-off, for each file name timm tries: 47-78 s before
an error when the network is down. Before timm asks, one TCP connection (at most
``CONNECT_TIMEOUT`` seconds) tells whether the server, or the proxy in between,
answers. When it does not, timm runs with huggingface_hub in offline mode: the weights
load from the local cache when they are there, and the fit fails at once otherwise,
naming the ways out (``failure_message``).

This module imports neither torch nor timm; huggingface_hub only when it is used.
"""

from __future__ import annotations

import contextlib
import socket
import threading
import time
import urllib.parse
import urllib.request

CONNECT_TIMEOUT = 3.0  # seconds for the one connection that tells whether a server answers
REMEMBERED_FOR = 60.0  # seconds an answer is reused (a search loads weights at each fit)

_answers: dict[tuple[str, int], tuple[float, str | None]] = {}
_offline_lock = threading.Lock()


class PretrainedWeightsError(RuntimeError):
    """Pretrained weights that cannot be loaded.

    The hub cannot be reached and the weights are not in the local cache, or the
    download failed. The message names the ways out: the network, a local Hugging Face
    cache with ``HF_HUB_OFFLINE=1``, a local checkpoint (``weights="path"`` with its
    ``preprocessing`` stated) or random weights (``weights=None``).

    Examples
    --------
    >>> from sktransfer import PretrainedWeightsError
    >>> issubclass(PretrainedWeightsError, RuntimeError)
    True
    """


def hub_offline() -> bool:
    """Whether huggingface_hub runs offline (``HF_HUB_OFFLINE=1``)."""
    from huggingface_hub import constants

    return bool(constants.HF_HUB_OFFLINE)


def hub_endpoint() -> str:
    """The Hugging Face hub's address (``HF_ENDPOINT``, https://huggingface.co by default)."""
    from huggingface_hub import constants

    return constants.ENDPOINT


def unreachable(url: str) -> str | None:
    """Why the server of ``url`` (or the proxy that requests to it go through) cannot be
    reached, or None when it answers. Answers are reused for ``REMEMBERED_FOR`` s."""
    parts = urllib.parse.urlsplit(url)
    proxy = urllib.request.getproxies().get(parts.scheme)
    if proxy and not urllib.request.proxy_bypass(parts.hostname or ""):
        parts = urllib.parse.urlsplit(proxy if "://" in proxy else f"http://{proxy}")
    address = (parts.hostname or "", parts.port or (443 if parts.scheme == "https" else 80))
    now = time.monotonic()
    checked = _answers.get(address)
    if checked is None or now - checked[0] > REMEMBERED_FOR:
        checked = (now, _connection_failure(address))
        _answers[address] = checked
    return checked[1]


def _connection_failure(address: tuple[str, int]) -> str | None:
    try:
        socket.create_connection(address, timeout=CONNECT_TIMEOUT).close()
    except OSError as exc:  # no name resolution, refused, timed out, no route
        return f"{address[0]}:{address[1]}: {exc.strerror or exc or type(exc).__name__}"
    return None


@contextlib.contextmanager
def offline():
    """huggingface_hub in offline mode (its local cache only) inside the block, as
    ``HF_HUB_OFFLINE=1`` sets it for a whole process; one block at a time."""
    from huggingface_hub import constants

    with _offline_lock:
        before = constants.HF_HUB_OFFLINE
        constants.HF_HUB_OFFLINE = True
        try:
            yield
        finally:
            constants.HF_HUB_OFFLINE = before


def failure_message(name: str, exc: BaseException, unreachable_reason: str | None) -> str:
    """What went wrong loading the pretrained weights of ``name``, and the ways out."""
    from huggingface_hub import constants

    if unreachable_reason is not None:
        what = (
            f"the Hugging Face hub cannot be reached ({unreachable_reason}) and they "
            f"are not in the local Hugging Face cache ({constants.HF_HUB_CACHE})."
        )
    else:
        what = f"{exc}."
    return (
        f"Could not load the pretrained weights of {name!r}: {what} timm fetches them "
        "from the Hugging Face hub, or from its local cache when HF_HUB_OFFLINE=1 (point "
        "HF_HUB_CACHE or HF_HOME at a cache that holds them). Without them, pass a local "
        "checkpoint with weights='path/to/file.pth' and the preprocessing it was trained "
        "with (preprocessing='imagenet', or a dict of mean and std), or weights=None for "
        "random initialisation."
    )
