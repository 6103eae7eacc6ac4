"""The blocking face of the client: :class:`DSPExClientSync`, for scripts and notebooks.

Public through :mod:`dspex.streams.client`. Every call runs the async
:class:`~dspex.streams.client.DSPExClient` on dspex's background event loop.
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Iterable, Iterator
from types import TracebackType
from typing import Any, Self, TypeVar

from dspex.programs._sync import run_sync
from dspex.programs.module import Module
from dspex.programs.state import ProgramRegistry, ProgramSpec
from dspex.streams.client._base import RequestItem
from dspex.streams.client._client import DSPExClient
from dspex.streams.records import InferenceResult, ProgramRecord
from dspex.topologies.settings import KafkaTarget

__all__ = ["DSPExClientSync"]

T = TypeVar("T")


class DSPExClientSync:
    """:class:`DSPExClient` for scripts and notebooks: blocking calls.

    The async client runs on dspex's background event loop (see
    :func:`~dspex.programs._sync.run_sync`); this class only waits for it.
    Takes the same keyword arguments as :class:`DSPExClient` and connects at
    once.

    Example:
        >>> with DSPExClientSync(bootstrap_servers="127.0.0.1:9092") as client:  # doctest: +SKIP
        ...     client.register("qa", dspex.Predict("question -> answer"))
        ...     print(client.run("qa", question="Why?").outputs)
    """

    def __init__(
        self,
        *,
        bootstrap_servers: KafkaTarget | None = None,
        prefix: str | None = None,
        default_timeout_s: float = 60.0,
        reply_to: str | None = None,
        client_id: str | None = None,
        connect_timeout_s: float = 30.0,
    ) -> None:
        self.client = DSPExClient(
            bootstrap_servers=bootstrap_servers,
            prefix=prefix,
            default_timeout_s=default_timeout_s,
            reply_to=reply_to,
            client_id=client_id,
            connect_timeout_s=connect_timeout_s,
        )
        run_sync(self.client.start())

    def __enter__(self) -> Self:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close()

    def register(
        self,
        program_id: str,
        program: Module | ProgramSpec,
        *,
        description: str = "",
        version: int | None = None,
        registry: ProgramRegistry | None = None,
    ) -> ProgramRecord:
        """See :meth:`DSPExClient.register`."""
        return run_sync(
            self.client.register(
                program_id, program, description=description, version=version, registry=registry
            )
        )

    def run(
        self,
        program_id: str,
        /,
        *,
        version: int | None = None,
        timeout_s: float | None = None,
        **inputs: Any,
    ) -> InferenceResult:
        """See :meth:`DSPExClient.run`."""
        return run_sync(self.client.run(program_id, version=version, timeout_s=timeout_s, **inputs))

    def predict(
        self,
        program_id: str,
        /,
        *,
        version: int | None = None,
        timeout_s: float | None = None,
        **inputs: Any,
    ) -> dict[str, Any]:
        """See :meth:`DSPExClient.predict`."""
        return run_sync(
            self.client.predict(program_id, version=version, timeout_s=timeout_s, **inputs)
        )

    def submit_many(
        self,
        requests: Iterable[RequestItem],
        *,
        program_id: str,
        version: int | None = None,
        max_in_flight: int = 1000,
        timeout_s: float | None = None,
    ) -> Iterator[InferenceResult]:
        """See :meth:`DSPExClient.submit_many`; ``requests`` is read on the client's loop."""
        stream = self.client.submit_many(
            requests,
            program_id=program_id,
            version=version,
            max_in_flight=max_in_flight,
            timeout_s=timeout_s,
        )
        try:
            while True:
                try:
                    yield run_sync(_next(stream))
                except StopAsyncIteration:
                    return
        finally:
            run_sync(_close(stream))

    def close(self) -> None:
        """Stop the client (idempotent)."""
        run_sync(self.client.aclose())


async def _next(stream: AsyncIterator[T]) -> T:
    return await anext(stream)


async def _close(stream: AsyncIterator[InferenceResult]) -> None:
    closer = getattr(stream, "aclose", None)
    if closer is not None:
        await closer()
