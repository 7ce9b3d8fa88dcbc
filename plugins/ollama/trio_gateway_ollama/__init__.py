"""Backend ``ollama``: OpenAI chat and text completions served by an Ollama server through
its native API — ``/api/chat`` and ``/api/generate``, NDJSON streams — translated both ways.

    [backends.local]
    type = "ollama"
    url = "http://127.0.0.1:11434"
"""

from ._backend import OllamaBackend
from ._settings import OllamaSettings

__all__ = ["OllamaBackend", "OllamaSettings"]
