"""The Kafka side of dspex: wire records, the client SDK, the worker and the optimizer service.

Rooms::

    records/            the wire format: one pydantic model per record kind (no Kafka import)
    client/             DSPExClient, DSPExClientSync, OptimizerClient: request/reply over Kafka
    worker/             bounded consumers answering the inference and evaluation channels
    optimizer_service/  Faust agents running optimizer jobs and promoting winners
    topics.py           topic names per channel, and the admin step that creates them
    catalog.py          the program versions a process knows, followed from the programs topic
    registry.py         publishing and reading program versions
    executor.py         KafkaExecutor: optimizers' evaluations fanned out to the workers
    metrics.py          the Prometheus metrics of the worker and the optimizer service

This package exports what a user of the cluster needs; the worker and the
optimizer service are started by ``dspex worker`` and ``dspex optimizer serve``.

Example:
    >>> from dspex.streams import DSPExClient
    >>> async with DSPExClient(bootstrap_servers="127.0.0.1:9092") as client:  # doctest: +SKIP
    ...     result = await client.run("sentiment", review="Great phone.")
"""

from importlib import import_module
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from dspex.streams.client import (
        ClientStats,
        DSPExClient,
        DSPExClientSync,
        JournalRecord,
        OptimizerClient,
        RequestItem,
        error_from_result,
    )
    from dspex.streams.executor import KafkaExecutor
    from dspex.streams.records import (
        CandidateRecord,
        ControlCommand,
        DeadLetter,
        ErrorInfo,
        ErrorType,
        EvalReport,
        EvalRequest,
        EvalScore,
        FeedbackRecord,
        InferenceRequest,
        InferenceResult,
        OptimizerEvent,
        ProgramRecord,
        TelemetryEvent,
        decode,
        encode,
    )
    from dspex.streams.registry import load_catalog, register_program
    from dspex.streams.topics import TopicNames, ensure_topics
    from dspex.topologies.settings import KafkaSettings

# Resolved on first use, so that `import dspex.streams.records` (which any
# Kafka client may use) does not load aiokafka through this package.
_EXPORTS = {
    "CandidateRecord": "dspex.streams.records",
    "ClientStats": "dspex.streams.client",
    "ControlCommand": "dspex.streams.records",
    "DSPExClient": "dspex.streams.client",
    "DSPExClientSync": "dspex.streams.client",
    "DeadLetter": "dspex.streams.records",
    "ErrorInfo": "dspex.streams.records",
    "ErrorType": "dspex.streams.records",
    "EvalReport": "dspex.streams.records",
    "EvalRequest": "dspex.streams.records",
    "EvalScore": "dspex.streams.records",
    "FeedbackRecord": "dspex.streams.records",
    "InferenceRequest": "dspex.streams.records",
    "InferenceResult": "dspex.streams.records",
    "JournalRecord": "dspex.streams.client",
    "KafkaExecutor": "dspex.streams.executor",
    "KafkaSettings": "dspex.topologies.settings",
    "OptimizerClient": "dspex.streams.client",
    "OptimizerEvent": "dspex.streams.records",
    "ProgramRecord": "dspex.streams.records",
    "RequestItem": "dspex.streams.client",
    "TelemetryEvent": "dspex.streams.records",
    "TopicNames": "dspex.streams.topics",
    "decode": "dspex.streams.records",
    "encode": "dspex.streams.records",
    "ensure_topics": "dspex.streams.topics",
    "error_from_result": "dspex.streams.client",
    "load_catalog": "dspex.streams.registry",
    "register_program": "dspex.streams.registry",
}


def __getattr__(name: str) -> Any:
    module = _EXPORTS.get(name)
    if module is None:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    value = getattr(import_module(module), name)
    globals()[name] = value
    return value


__all__ = [
    "CandidateRecord",
    "ClientStats",
    "ControlCommand",
    "DSPExClient",
    "DSPExClientSync",
    "DeadLetter",
    "ErrorInfo",
    "ErrorType",
    "EvalReport",
    "EvalRequest",
    "EvalScore",
    "FeedbackRecord",
    "InferenceRequest",
    "InferenceResult",
    "JournalRecord",
    "KafkaExecutor",
    "KafkaSettings",
    "OptimizerClient",
    "OptimizerEvent",
    "ProgramRecord",
    "RequestItem",
    "TelemetryEvent",
    "TopicNames",
    "decode",
    "encode",
    "ensure_topics",
    "error_from_result",
    "load_catalog",
    "register_program",
]
