"""What the client's parts share: its stats, the routes results go to, building requests.

:class:`ClientStats` and :data:`RequestItem` are public through
:mod:`dspex.streams.client`; the rest serves :class:`~dspex.streams.client.DSPExClient`,
its connection (:mod:`dspex.streams.client._connection`) and its ``submit_many``
internals (:mod:`dspex.streams.client._batch`).
"""

from __future__ import annotations

import asyncio
import os
import socket
import uuid
from collections import OrderedDict
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any, Protocol, TypeAlias

from pydantic import ValidationError

from dspex._validation import describe_validation_error
from dspex.errors import ConfigurationError, DSPExError
from dspex.streams.records import InferenceRequest, InferenceResult, now_ms

__all__ = [
    "ClientStats",
    "Reply",
    "RequestItem",
    "Route",
    "check_positive",
    "deadline_ms",
    "default_client_id",
    "new_request",
    "remember",
]

#: One item of :meth:`DSPExClient.submit_many`: a mapping of inputs, or a full request.
RequestItem: TypeAlias = Mapping[str, Any] | InferenceRequest


@dataclass
class ClientStats:
    """What a client skipped while reading results (counters since it started).

    Attributes:
        invalid_records: Records on the results topic that are not an
            ``InferenceResult`` (not JSON, another schema, tombstones).
        duplicates_dropped: Repeated results for a request id already delivered.
        timeouts: Requests whose result did not arrive within their timeout.
    """

    invalid_records: int = 0
    duplicates_dropped: int = 0
    timeouts: int = 0


class Route(Protocol):
    """Where the result of a request in flight goes."""

    def deliver(self, result: InferenceResult) -> None: ...

    def fail(self, exc: DSPExError) -> None: ...


class Reply:
    """The route of one :meth:`DSPExClient.run` call: a future."""

    def __init__(self) -> None:
        self.future: asyncio.Future[InferenceResult] = asyncio.get_running_loop().create_future()

    def deliver(self, result: InferenceResult) -> None:
        if not self.future.done():
            self.future.set_result(result)

    def fail(self, exc: DSPExError) -> None:
        if not self.future.done():
            self.future.set_exception(exc)


def new_request(
    program_id: str,
    version: int | None,
    inputs: Mapping[str, Any],
    *,
    where: str | None = None,
    **fields: Any,
) -> InferenceRequest:
    """An :class:`InferenceRequest` to send, or a ConfigurationError saying what is wrong.

    Args:
        program_id: The program to run.
        version: Its version (None: the active one).
        inputs: The program's inputs.
        where: Names the source of the request in the message (``"--input"``, a file line).
        **fields: Other request fields (``reply_to``, ``deadline_ms``, ``request_id``, ...).
    """
    try:
        return InferenceRequest(
            program_id=program_id, program_version=version, inputs=dict(inputs), **fields
        )
    except ValidationError as exc:
        prefix = f"{where}: " if where else ""
        raise ConfigurationError(
            f"{prefix}invalid request: {describe_validation_error(exc)}"
        ) from exc


def default_client_id() -> str:
    return f"dspex-client-{socket.gethostname()[:64]}-{os.getpid()}-{uuid.uuid4().hex[:6]}"


def deadline_ms(timeout: float) -> int:
    return now_ms() + int(timeout * 1000)


def check_positive(name: str, value: float) -> None:
    if not value > 0:  # also rejects NaN
        raise ConfigurationError(f"{name} must be a positive number of seconds, not {value!r}")


def remember(seen: OrderedDict[str, None], request_id: str, limit: int) -> None:
    seen[request_id] = None
    if len(seen) > limit:
        seen.popitem(last=False)
