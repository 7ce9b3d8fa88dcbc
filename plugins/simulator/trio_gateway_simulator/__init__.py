"""Backend ``simulator``: OpenAI-style answers made up on the spot, with the timing and the
faults an operator asks for — to test clients' timeouts through the gateway, and for
benchmarks and docs that need an upstream with known behaviour.

    [backends.slow]
    type = "simulator"
    prefill = 90            # seconds of silence before the first token
    tokens_per_second = 20
"""

from ._backend import SimulatorBackend
from ._settings import Gap, SimulatorSettings

__all__ = ["Gap", "SimulatorBackend", "SimulatorSettings"]
