"""The client SDK: produce requests, await results, register programs, drive optimizers.

``DSPExClient`` (asyncio) and ``DSPExClientSync`` (scripts and notebooks) run
programs over Kafka by request/reply on the results topic; ``OptimizerClient``
sends optimizer commands and follows their journal.
"""

from dspex.streams.client._base import ClientStats, RequestItem
from dspex.streams.client._client import DSPExClient
from dspex.streams.client._errors import error_from_result
from dspex.streams.client._sync import DSPExClientSync
from dspex.streams.client.optimizer import JournalRecord, OptimizerClient

__all__ = [
    "ClientStats",
    "DSPExClient",
    "DSPExClientSync",
    "JournalRecord",
    "OptimizerClient",
    "RequestItem",
    "error_from_result",
]
