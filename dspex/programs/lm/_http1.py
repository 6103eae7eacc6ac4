"""A lean HTTP/1.1 connection pool for LM calls: one POST, answered whole.

An LM call is the simplest HTTP exchange there is: a small JSON body out, one
JSON body back, on a kept-alive connection. General-purpose clients spend
more CPU on their machinery (request and response objects, stream readers,
tracing hooks, cookie jars, per-read timers) than the exchange needs: aiohttp
costs ~0.27 ms of CPU per call on loopback, httpx's own pool far more at high
concurrency. This pool writes the request with one ``transport.write`` and
parses the answer from the bytes an ``asyncio.Protocol`` receives; nothing
else runs per call. Measured side by side in ``bench/lm_client_scaling.py``.

What it speaks: HTTP/1.1 over TCP or TLS (verified with the system's CA
store; ``SSL_CERT_FILE`` and ``SSL_CERT_DIR`` are honoured), keep-alive,
``Content-Length``, chunked and read-until-close bodies, gzip and deflate,
interim 1xx answers skipped. Not proxies: with a proxy in the environment the
caller (:class:`~dspex.programs.lm._transport.PooledClient`) sends through
aiohttp instead.

Failures are the httpx exceptions of the same kind, as on every other path
(``ConnectTimeout``, ``ConnectError``, ``ReadTimeout``, ``RemoteProtocolError``),
so :mod:`dspex.programs.lm._http` translates them once. A request that finds
its kept-alive connection closed by the server before any answer arrived (an
idle connection the server timed out) is sent once more on a new connection.
"""

from __future__ import annotations

import asyncio
import contextlib
import ssl
import zlib
from collections.abc import Mapping
from dataclasses import dataclass
from urllib.parse import urlsplit

import httpx

__all__ = ["Http1Pool", "RawAnswer"]

#: Largest response head accepted (status line and headers).
_MAX_HEAD_BYTES = 256 * 1024
_NO_BODY_STATUSES = frozenset({204, 304})


@dataclass(frozen=True, slots=True)
class RawAnswer:
    """A response read whole: status, headers (names lowercased) and the decoded body."""

    status: int
    headers: dict[str, str]
    body: bytes


@dataclass(frozen=True, slots=True)
class _Origin:
    """Where a URL's requests go, and the start of every request's head."""

    scheme: str
    host: str
    port: int
    #: ``POST /path HTTP/1.1`` and ``Host``, encoded once per URL.
    head: bytes


class _Connection(asyncio.Protocol):
    """One kept-alive connection: one request at a time, its answer parsed as it arrives."""

    def __init__(self, loop: asyncio.AbstractEventLoop) -> None:
        self._loop = loop
        self.transport: asyncio.Transport | None = None
        self.closed = False
        #: Answers this connection has completed (0: never used).
        self.answered = 0
        self.idle_since = 0.0
        self._waiter: asyncio.Future[RawAnswer] | None = None
        self._buffer = bytearray()
        self._last_read = 0.0
        self._reset()

    def _reset(self) -> None:
        self._buffer.clear()
        self._received = False
        self._status = 0
        self._headers: dict[str, str] = {}
        self._keep_alive = True
        self._body_start = -1
        self._length: int | None = None  # None: chunked or until close
        self._chunked = False
        self._chunks: list[bytes] = []
        self._chunk_pos = 0
        #: Bytes of the buffer the finished answer used.
        self._consumed = 0

    # -- asyncio.Protocol ------------------------------------------------------------

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]

    def data_received(self, data: bytes) -> None:
        waiter = self._waiter
        if waiter is None or waiter.done():
            self.close()  # bytes nobody asked for: the connection is not reusable
            return
        self._received = True
        self._last_read = self._loop.time()
        self._buffer += data
        try:
            answer = self._parse()
        except httpx.RemoteProtocolError as exc:
            self.close()
            waiter.set_exception(exc)
            return
        if answer is not None:
            self._finish(answer)

    def eof_received(self) -> bool | None:
        return False  # close the transport; connection_lost follows

    def connection_lost(self, exc: Exception | None) -> None:
        self.closed = True
        waiter = self._waiter
        if waiter is None or waiter.done():
            return
        if self._body_start >= 0 and self._length is None and not self._chunked:
            # A body delimited by the end of the connection is now whole.
            try:
                waiter.set_result(self._answer(bytes(self._buffer[self._body_start :])))
            except httpx.RemoteProtocolError as error:
                waiter.set_exception(error)
            return
        waiter.set_exception(
            _Disconnected(
                "server closed the connection before answering in full",
                before_answer=not self._received,
            )
        )

    # -- one exchange --------------------------------------------------------------------

    async def exchange(self, request: bytes, read_timeout: float | None) -> RawAnswer:
        """Send ``request`` and wait for its whole answer."""
        if self.closed or self.transport is None:
            raise _Disconnected("connection already closed", before_answer=True)
        waiter: asyncio.Future[RawAnswer] = self._loop.create_future()
        self._waiter = waiter
        self._last_read = self._loop.time()
        timer = (
            None
            if read_timeout is None
            else self._loop.call_at(self._last_read + read_timeout, self._check_read, read_timeout)
        )
        self.transport.write(request)
        try:
            return await waiter
        except BaseException:
            self.close()  # cancelled or failed mid-answer: its state is unknown
            raise
        finally:
            if timer is not None:
                timer.cancel()
            self._waiter = None

    def _check_read(self, read_timeout: float) -> None:
        waiter = self._waiter
        if waiter is None or waiter.done():
            return
        due = self._last_read + read_timeout
        if self._loop.time() < due:  # bytes came in meanwhile: wait from the last of them
            self._loop.call_at(due, self._check_read, read_timeout)
            return
        self.close()
        waiter.set_exception(httpx.ReadTimeout(f"no data for {read_timeout:g}s"))

    def _finish(self, answer: RawAnswer) -> None:
        waiter = self._waiter
        self.answered += 1
        self.idle_since = self._loop.time()
        rest = len(self._buffer) - self._consumed
        if not self._keep_alive or rest:
            self.close()  # asked to close, or extra bytes: do not reuse
        self._reset()
        if waiter is not None and not waiter.done():
            waiter.set_result(answer)

    def close(self) -> None:
        self.closed = True
        if self.transport is not None:
            self.transport.close()

    # -- parsing ---------------------------------------------------------------------------

    def _parse(self) -> RawAnswer | None:
        buffer = self._buffer
        while self._body_start < 0:
            end = buffer.find(b"\r\n\r\n")
            if end < 0:
                if len(buffer) > _MAX_HEAD_BYTES:
                    raise httpx.RemoteProtocolError("response head too large")
                return None
            self._head(bytes(buffer[:end]))
            if 100 <= self._status < 200:  # interim answer (100 Continue, 103): skip it
                del buffer[: end + 4]
                continue
            self._body_start = end + 4
        start = self._body_start
        if self._chunked:
            return self._parse_chunks()
        if self._length is None:
            return None  # until the connection closes
        if len(buffer) - start < self._length:
            return None
        self._consumed = start + self._length
        return self._answer(bytes(buffer[start : self._consumed]))

    def _head(self, head: bytes) -> None:
        lines = head.decode("latin-1").split("\r\n")
        parts = lines[0].split(" ", 2)
        if len(parts) < 2 or not parts[0].startswith("HTTP/") or not parts[1].isdigit():
            raise httpx.RemoteProtocolError(f"not an HTTP response: {lines[0][:80]!r}")
        self._status = status = int(parts[1])
        headers: dict[str, str] = {}
        for line in lines[1:]:
            name, sep, value = line.partition(":")
            if not sep:
                raise httpx.RemoteProtocolError("malformed response header")
            name = name.strip().lower()
            value = value.strip()
            headers[name] = f"{headers[name]}, {value}" if name in headers else value
        self._headers = headers
        connection = headers.get("connection", "").lower()
        if parts[0] == "HTTP/1.0":
            self._keep_alive = "keep-alive" in connection
        else:
            self._keep_alive = "close" not in connection
        if status in _NO_BODY_STATUSES or 100 <= status < 200:
            self._length = 0
        elif "chunked" in headers.get("transfer-encoding", "").lower():
            self._chunked = True
        elif "content-length" in headers:
            try:
                self._length = int(headers["content-length"])
            except ValueError:
                raise httpx.RemoteProtocolError("malformed Content-Length") from None
        else:
            self._length = None
            self._keep_alive = False

    def _parse_chunks(self) -> RawAnswer | None:
        buffer = self._buffer
        pos = self._chunk_pos or self._body_start
        while True:
            line_end = buffer.find(b"\r\n", pos)
            if line_end < 0:
                return None
            try:
                size = int(bytes(buffer[pos:line_end]).split(b";", 1)[0].strip(), 16)
            except ValueError:
                raise httpx.RemoteProtocolError("malformed chunk size") from None
            if size == 0:
                # Trailers (rare) end with an empty line; without them it follows at once.
                end = buffer.find(b"\r\n\r\n", line_end)
                if buffer[line_end : line_end + 4] == b"\r\n\r\n":
                    end = line_end
                if end < 0:
                    self._chunk_pos = pos
                    return None
                self._consumed = end + 4
                return self._answer(b"".join(self._chunks))
            data_end = line_end + 2 + size
            if len(buffer) < data_end + 2:
                self._chunk_pos = pos
                return None
            self._chunks.append(bytes(buffer[line_end + 2 : data_end]))
            pos = data_end + 2

    def _answer(self, body: bytes) -> RawAnswer:
        encoding = self._headers.get("content-encoding", "").lower()
        if body and encoding in ("gzip", "x-gzip", "deflate"):
            try:
                if encoding == "deflate":
                    try:
                        body = zlib.decompress(body)
                    except zlib.error:  # raw deflate, as some servers send it
                        body = zlib.decompress(body, -zlib.MAX_WBITS)
                else:
                    body = zlib.decompress(body, 16 + zlib.MAX_WBITS)
            except zlib.error as exc:
                raise httpx.RemoteProtocolError(f"cannot decode {encoding} body: {exc}") from exc
        return RawAnswer(self._status, self._headers, body)


class _Disconnected(httpx.RemoteProtocolError):
    """The server closed the connection; ``before_answer``: no byte of the answer came."""

    def __init__(self, message: str, *, before_answer: bool) -> None:
        super().__init__(message)
        self.before_answer = before_answer


class Http1Pool:
    """Kept-alive HTTP/1.1 connections per origin, for POSTs answered whole.

    Callers bound how many requests are in flight; the pool opens a connection
    whenever no idle one is left and keeps up to ``max_idle`` per origin.

    Args:
        max_idle: Most idle connections kept per origin.
        keepalive_s: How long an idle connection is kept.
    """

    def __init__(self, *, max_idle: int, keepalive_s: float = 30.0) -> None:
        self._max_idle = max_idle
        self._keepalive_s = keepalive_s
        self._idle: dict[_Origin, list[_Connection]] = {}
        self._origins: dict[str, _Origin] = {}
        self._tls: ssl.SSLContext | None = None
        self._open: set[_Connection] = set()

    async def post(
        self,
        url: str,
        body: bytes,
        headers: Mapping[str, str],
        *,
        connect_timeout: float | None,
        read_timeout: float | None,
    ) -> RawAnswer:
        """POST ``body`` to ``url``; the answer read whole.

        Raises:
            httpx.TransportError: A subclass naming the failure (see the module).
        """
        origin = self._origin(url)
        request = _request(origin, body, headers)
        connection = self._reusable(origin)
        if connection is not None:
            try:
                return await self._exchange(origin, connection, request, read_timeout)
            except _Disconnected as exc:
                if not exc.before_answer:
                    raise
                # The server closed an idle connection as it was reused: nothing was
                # answered, so the request goes once more, on a new connection.
        connection = await self._connect(origin, connect_timeout)
        return await self._exchange(origin, connection, request, read_timeout)

    async def _exchange(
        self, origin: _Origin, connection: _Connection, request: bytes, read_timeout: float | None
    ) -> RawAnswer:
        try:
            answer = await connection.exchange(request, read_timeout)
        except BaseException:
            self._drop(connection)
            raise
        self._release(origin, connection)
        return answer

    def _origin(self, url: str) -> _Origin:
        origin = self._origins.get(url)
        if origin is None:
            parts = urlsplit(url)
            if parts.scheme not in ("http", "https") or not parts.hostname:
                raise httpx.UnsupportedProtocol(f"cannot POST to {url!r}: not an http(s) URL")
            default_port = 443 if parts.scheme == "https" else 80
            port = parts.port or default_port
            host = parts.hostname
            authority = f"[{host}]" if ":" in host else host
            if port != default_port:
                authority = f"{authority}:{port}"
            target = parts.path or "/"
            if parts.query:
                target = f"{target}?{parts.query}"
            head = f"POST {target} HTTP/1.1\r\nhost: {authority}\r\n".encode("ascii")
            origin = self._origins[url] = _Origin(parts.scheme, host, port, head)
        return origin

    def _reusable(self, origin: _Origin) -> _Connection | None:
        idle = self._idle.get(origin)
        if not idle:
            return None
        oldest_usable = asyncio.get_running_loop().time() - self._keepalive_s
        while idle:
            connection = idle.pop()  # the most recently used: the likeliest to be open
            if not connection.closed and connection.idle_since >= oldest_usable:
                return connection
            self._drop(connection)
        return None

    def _release(self, origin: _Origin, connection: _Connection) -> None:
        if connection.closed:
            self._drop(connection)
            return
        idle = self._idle.setdefault(origin, [])
        if len(idle) >= self._max_idle:
            self._drop(connection)
            return
        idle.append(connection)

    def _drop(self, connection: _Connection) -> None:
        connection.close()
        self._open.discard(connection)

    async def _connect(self, origin: _Origin, within_s: float | None) -> _Connection:
        loop = asyncio.get_running_loop()
        tls = None
        if origin.scheme == "https":
            if self._tls is None:
                self._tls = ssl.create_default_context()
            tls = self._tls
        try:
            async with asyncio.timeout(within_s):
                _, connection = await loop.create_connection(
                    lambda: _Connection(loop),
                    origin.host,
                    origin.port,
                    ssl=tls,
                    server_hostname=origin.host if tls is not None else None,
                )
        except TimeoutError as exc:
            raise httpx.ConnectTimeout(
                f"no connection to {origin.host}:{origin.port} within {within_s:g}s"
            ) from exc
        except (OSError, ssl.SSLError) as exc:
            raise httpx.ConnectError(
                f"cannot connect to {origin.host}:{origin.port}: {exc}"
            ) from exc
        self._open.add(connection)
        return connection

    def close(self) -> None:
        """Close every connection (synchronous: no answer is awaited)."""
        for connection in list(self._open):
            with contextlib.suppress(RuntimeError):  # its event loop may be closed
                connection.close()
        self._open.clear()
        self._idle.clear()


def _request(origin: _Origin, body: bytes, headers: Mapping[str, str]) -> bytes:
    lines = [origin.head]
    for name, value in headers.items():
        line = f"{name}: {value}\r\n"
        if line.count("\r") != 1 or line.count("\n") != 1 or ":" in name:
            # Never the value: it may be a key.
            raise httpx.LocalProtocolError(f"header {name.splitlines()[0]!r} is malformed")
        try:
            lines.append(line.encode("latin-1"))
        except UnicodeEncodeError:
            raise httpx.LocalProtocolError(f"header {name!r} is not latin-1 text") from None
    lines.append(b"content-length: %d\r\n\r\n" % len(body))
    lines.append(body)
    return b"".join(lines)
