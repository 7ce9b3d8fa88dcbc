"""The ``vllm`` backend: a remote vLLM OpenAI-compatible server (``vllm serve``).

Requests go through an :class:`~backends.openai.OpenAIBackend` (pool, error mapping,
cancellation); this package adds what is vLLM's own: health from ``/health``, load from
``/metrics`` (running and waiting requests, KV-cache usage under its current and its older
name) and the served models from ``/v1/models``.
"""

from ._backend import VLLMBackend
from ._probe import Load, ServedModel, read_load
from ._settings import VLLMSettings

__all__ = ["Load", "ServedModel", "VLLMBackend", "VLLMSettings", "read_load"]
