"""httpx's client API on aiohttp's connection pool.

The LM clients speak httpx (requests, responses, timeouts, errors), but the
bytes go through aiohttp: httpx's own pool (httpcore on anyio) costs several
milliseconds of CPU per request once more than a few dozen connections are
open, so throughput *falls* as concurrency rises (encode/httpx#3215), while
aiohttp's pool stays flat into the thousands. Measured side by side in
``bench/lm_client_overhead.py``.

:class:`PooledClient` is the ``httpx.AsyncClient`` an LM client makes for
itself. Besides the whole httpx API, it has :meth:`PooledClient.post_bytes`,
the one call an LM client makes, which hands a ready ``httpx.Request``
straight to the pool: the client-level steps (merging base URL and default
headers, auth flows, redirects, cookie extraction, event hooks) do nothing
for an LM call and cost as much CPU as the pool itself. A client injected
by the caller (``http_client=``) is used through its ordinary API.

Only what an LM call needs is carried: one request with a body read whole,
one response read whole. Proxies from the environment keep going through
httpx's own transports (httpx mounts them before this one is asked).

aiohttp failures become the httpx exceptions the HTTP boundary
(:mod:`dspex.programs.lm._http`) already translates into LM errors::

    aiohttp ConnectionTimeoutError     -> httpx.ConnectTimeout
    other timeouts (socket read)        -> httpx.ReadTimeout
    aiohttp ClientConnectorError        -> httpx.ConnectError
    ServerDisconnectedError             -> httpx.RemoteProtocolError
    any other aiohttp ClientError       -> httpx.ReadError
"""

from __future__ import annotations

import contextlib
import weakref
from typing import Any

import aiohttp
import httpx

__all__ = ["AiohttpTransport", "PooledClient"]


class AiohttpTransport(httpx.AsyncBaseTransport):
    """An httpx transport over one aiohttp session, opened on first use.

    Args:
        max_connections: Most connections open at once, over all hosts.
        keepalive_s: How long an idle connection stays pooled.

    Example:
        >>> client = httpx.AsyncClient(transport=AiohttpTransport(max_connections=64))
    """

    def __init__(self, *, max_connections: int, keepalive_s: float = 30.0) -> None:
        self._max_connections = max_connections
        self._keepalive_s = keepalive_s
        self._session: aiohttp.ClientSession | None = None
        self._finalizer: weakref.finalize[Any, Any] | None = None

    def _open(self) -> aiohttp.ClientSession:
        if self._session is None:
            connector = aiohttp.TCPConnector(
                limit=self._max_connections,
                limit_per_host=0,
                keepalive_timeout=self._keepalive_s,
            )
            self._session = aiohttp.ClientSession(
                connector=connector,
                # httpx decodes the body by its Content-Encoding, as with its own transport.
                auto_decompress=False,
                cookie_jar=aiohttp.DummyCookieJar(),
                # httpx sets every header itself (User-Agent, Accept-Encoding, ...).
                skip_auto_headers=("User-Agent", "Accept", "Accept-Encoding"),
            )
            # A client dropped without aclose() (or left behind on an event loop
            # that has ended) must not leave sockets open or warn at exit.
            self._finalizer = weakref.finalize(self, _abandon, self._session)
        return self._session

    async def handle_async_request(self, request: httpx.Request) -> httpx.Response:
        session = self._open()
        timeouts = request.extensions.get("timeout", {})
        timeout = aiohttp.ClientTimeout(
            total=None, sock_connect=timeouts.get("connect"), sock_read=timeouts.get("read")
        )
        body = await request.aread()
        try:
            async with session.request(
                request.method,
                str(request.url),
                headers=request.headers.multi_items(),
                data=body or None,
                timeout=timeout,
                allow_redirects=False,
            ) as answer:
                content = await answer.read()
                return httpx.Response(
                    status_code=answer.status,
                    headers=answer.raw_headers,
                    content=content,
                    request=request,
                    extensions={
                        "http_version": b"HTTP/1.1",
                        "reason_phrase": (answer.reason or "").encode("latin-1", "replace"),
                    },
                )
        except aiohttp.ConnectionTimeoutError as exc:
            raise httpx.ConnectTimeout(str(exc) or "connect timeout", request=request) from exc
        except TimeoutError as exc:  # aiohttp's socket read timeout is one too
            raise httpx.ReadTimeout(str(exc) or "read timeout", request=request) from exc
        except aiohttp.ClientConnectorError as exc:
            raise httpx.ConnectError(str(exc), request=request) from exc
        except aiohttp.ServerDisconnectedError as exc:
            raise httpx.RemoteProtocolError(str(exc), request=request) from exc
        except aiohttp.ClientError as exc:
            raise httpx.ReadError(str(exc) or type(exc).__name__, request=request) from exc

    def abandon(self) -> None:
        """Close the pool's sockets now, without awaiting (its event loop may be gone)."""
        if self._finalizer is not None:
            self._finalizer()
        self._session = None

    async def aclose(self) -> None:
        session, self._session = self._session, None
        if self._finalizer is not None:
            self._finalizer.detach()
        if session is not None and not session.closed:
            await session.close()


def _abandon(session: aiohttp.ClientSession) -> None:
    connector = session.connector
    if connector is None or connector.closed:
        return
    # The synchronous half of close(): marks the connector closed and closes
    # its transports, so neither it nor the session warns when collected.
    # Nothing can be awaited here; a RuntimeError means its event loop is
    # closed, and the sockets went with it.
    with contextlib.suppress(RuntimeError):
        connector._close()


class PooledClient(httpx.AsyncClient):
    """An ``httpx.AsyncClient`` over :class:`AiohttpTransport`, with a direct POST.

    Args:
        max_connections: Most connections open at once.
        timeout: Default timeout of the ordinary httpx API.
    """

    def __init__(self, *, max_connections: int, timeout: httpx.Timeout) -> None:
        self._pool = AiohttpTransport(max_connections=max_connections)
        super().__init__(transport=self._pool, timeout=timeout)

    async def post_bytes(
        self,
        url: httpx.URL,
        content: bytes,
        headers: list[tuple[str, str]],
        timeouts: httpx.Timeout,
    ) -> httpx.Response:
        """POST ``content`` to ``url`` through the pool; the response is read whole.

        ``timeouts`` are httpx's per-phase socket timeouts (connect, read), as
        the ordinary API takes them, not a deadline on the whole call.
        """
        request = httpx.Request(
            "POST",
            url,
            headers=headers,
            content=content,
            extensions={"timeout": timeouts.as_dict()},
        )
        return await self._pool.handle_async_request(request)

    def abandon(self) -> None:
        """Close the pool now, without awaiting (its event loop may have ended)."""
        self._pool.abandon()
