"""httpx's client API on aiohttp's connection pool.

The LM clients speak httpx (requests, responses, timeouts, errors), but the
bytes go through aiohttp: httpx's own pool (httpcore on anyio) costs several
milliseconds of CPU per request once more than a few dozen connections are
open, so throughput *falls* as concurrency rises (encode/httpx#3215), while
aiohttp's pool stays flat into the thousands. Measured side by side in
``bench/lm_client_overhead.py``.

:class:`PooledClient` is the ``httpx.AsyncClient`` an LM client makes for
itself. Besides the whole httpx API, it has :meth:`PooledClient.post_answer`,
the one call an LM client makes, which hands the bytes straight to the pool
and answers an :class:`HTTPAnswer` (status, headers, body): the client-level
steps (merging base URL and default headers, auth flows, redirects, cookie
extraction, event hooks) and httpx's request and response objects do nothing
for an LM call and cost as much CPU as the pool itself. A client injected
by the caller (``http_client=``) is used through its ordinary API, and its
response converted.

Only what an LM call needs is carried: one request with a body read whole,
one response read whole. Proxies from the environment (``HTTP_PROXY``,
``HTTPS_PROXY``, ``NO_PROXY``) are honoured by aiohttp, as httpx honours them
on its own transports; they are read when the pool opens.

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
import email.message
import urllib.request
import weakref
from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import httpx

from dspex.programs.lm._http1 import Http1Pool

if TYPE_CHECKING:
    # Imported where used: aiohttp takes ~0.2 s to import, and LM calls go
    # through the lean pool unless a proxy or httpx's own API needs it.
    import aiohttp

__all__ = ["AiohttpTransport", "HTTPAnswer", "PooledClient"]


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

    def session(self) -> aiohttp.ClientSession:
        """The aiohttp session, opened on first use."""
        if self._session is None:
            import aiohttp

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
                # aiohttp looks the proxy up per request when asked to: only
                # then, as without one in the environment there is none to find.
                trust_env=bool(urllib.request.getproxies()),
            )
            # A client dropped without aclose() (or left behind on an event loop
            # that has ended) must not leave sockets open or warn at exit.
            self._finalizer = weakref.finalize(self, _abandon, self._session)
        return self._session

    async def handle_async_request(self, request: httpx.Request) -> httpx.Response:
        import aiohttp

        timeouts = request.extensions.get("timeout", {})
        timeout = aiohttp.ClientTimeout(
            total=None, sock_connect=timeouts.get("connect"), sock_read=timeouts.get("read")
        )
        body = await request.aread()
        with _as_httpx_errors(request):
            async with self.session().request(
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


@contextlib.contextmanager
def _as_httpx_errors(request: httpx.Request | None) -> Iterator[None]:
    """aiohttp's failures as the httpx exceptions of the same kind."""
    import aiohttp

    try:
        yield
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
        # The lean pool speaks no proxy protocol: with a proxy in the
        # environment, LM calls go through aiohttp, which does.
        self._lean = None if urllib.request.getproxies() else Http1Pool(max_idle=max_connections)
        self._timeouts: dict[tuple[float | None, float | None], aiohttp.ClientTimeout] = {}

    async def post_answer(
        self,
        url: str,
        content: bytes,
        headers: Mapping[str, str],
        timeouts: httpx.Timeout,
    ) -> HTTPAnswer:
        """POST ``content`` to ``url`` through the pool; the response is read whole.

        ``timeouts`` are httpx's per-phase socket timeouts (connect, read), as
        the ordinary API takes them, not a deadline on the whole call. Failures
        are the httpx exceptions the ordinary API raises.
        """
        if self._lean is not None:
            raw = await self._lean.post(
                url,
                content,
                headers,
                connect_timeout=timeouts.connect,
                read_timeout=timeouts.read,
            )
            return HTTPAnswer(raw.status, raw.headers, raw.body)
        import aiohttp

        phases = (timeouts.connect, timeouts.read)
        timeout = self._timeouts.get(phases)
        if timeout is None:
            timeout = self._timeouts[phases] = aiohttp.ClientTimeout(
                total=None, sock_connect=phases[0], sock_read=phases[1]
            )
        with _as_httpx_errors(None):
            async with self._pool.session().request(
                "POST",
                url,
                headers=headers,
                data=content,
                timeout=timeout,
                allow_redirects=False,
                auto_decompress=True,
            ) as answer:
                return HTTPAnswer(answer.status, answer.headers, await answer.read())

    async def aclose(self) -> None:
        if self._lean is not None:
            self._lean.close()
        await super().aclose()

    def abandon(self) -> None:
        """Close the pool now, without awaiting (its event loop may have ended)."""
        if self._lean is not None:
            self._lean.close()
        self._pool.abandon()


@dataclass(frozen=True, slots=True)
class HTTPAnswer:
    """One HTTP response read whole: what an LM client reads of it.

    The direct path builds it from aiohttp's response; an injected httpx
    client's response converts with :meth:`from_httpx`.
    """

    status_code: int
    #: Look names up in lower case (every path answers them so).
    headers: Mapping[str, str]
    content: bytes

    @classmethod
    def from_httpx(cls, response: httpx.Response) -> HTTPAnswer:
        return cls(response.status_code, response.headers, response.content)

    @property
    def is_success(self) -> bool:
        return 200 <= self.status_code < 300

    @property
    def text(self) -> str:
        """The body as text, in the charset its ``Content-Type`` names (else UTF-8)."""
        message = email.message.Message()
        message["content-type"] = self.headers.get("content-type", "")
        charset = message.get_content_charset() or "utf-8"
        try:
            return self.content.decode(charset, errors="replace")
        except LookupError:  # a charset Python does not know
            return self.content.decode("utf-8", errors="replace")
