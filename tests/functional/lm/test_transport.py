"""What carries an LM call's bytes: the direct path over aiohttp's pool, and the others."""

from __future__ import annotations

import asyncio
import gzip
import json
import ssl
import subprocess
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager
from pathlib import Path

import httpx
import pytest

from bench.scripted_lm import Reply, ScriptedLM
from dspex.errors import ConfigurationError, LMServerError
from dspex.programs.lm import Message, OpenAIChat, RetryPolicy
from dspex.programs.lm._http1 import Http1Pool, RawAnswer

ASK = [Message(role="user", content="Hi")]
NO_RETRY = RetryPolicy(max_attempts=1)


def completion_body(text: str) -> bytes:
    return json.dumps(
        {"choices": [{"message": {"role": "assistant", "content": text}, "finish_reason": "stop"}]}
    ).encode()


async def test_a_compressed_answer_is_decoded_on_every_path() -> None:
    packed = gzip.compress(completion_body("unpacked"))
    async with ScriptedLM() as server:
        server.default = Reply(body=packed, headers={"Content-Encoding": "gzip"})
        async with (
            OpenAIChat(model="m", base_url=server.openai_url, cache=None) as direct,
            httpx.AsyncClient() as http,
            OpenAIChat(model="m", base_url=server.openai_url, cache=None, http_client=http) as own,
        ):
            assert (await direct.acomplete(ASK)).text == "unpacked"
            assert (await own.acomplete(ASK)).text == "unpacked"
        assert all("gzip" in r.headers["accept-encoding"] for r in server.requests)


async def test_an_error_body_reaches_the_message_on_every_path() -> None:
    async with ScriptedLM() as server:
        server.default = Reply.error(503, "the model is warming up")
        async with (
            OpenAIChat(model="m", base_url=server.openai_url, cache=None, retry=NO_RETRY) as a,
            httpx.AsyncClient() as http,
            OpenAIChat(
                model="m", base_url=server.openai_url, cache=None, retry=NO_RETRY, http_client=http
            ) as b,
        ):
            for lm in (a, b):
                with pytest.raises(LMServerError, match="HTTP 503: the model is warming up"):
                    await lm.acomplete(ASK)


async def test_a_proxy_in_the_environment_carries_the_calls(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    for name in ("HTTP_PROXY", "HTTPS_PROXY", "ALL_PROXY", "NO_PROXY"):
        monkeypatch.delenv(name, raising=False)
        monkeypatch.delenv(name.lower(), raising=False)
    async with ScriptedLM() as upstream, ScriptedLM() as proxy:
        proxy.default = Reply.completion("through the proxy")
        monkeypatch.setenv("HTTP_PROXY", proxy.url)
        async with OpenAIChat(model="m", base_url=upstream.openai_url, cache=None) as lm:
            answer = await lm.acomplete(ASK)
        assert answer.text == "through the proxy"
        assert upstream.requests == []
        # A proxy is sent the absolute URL of the upstream endpoint.
        assert [r.path for r in proxy.requests] == [f"{upstream.openai_url}/chat/completions"]


# -- the lean HTTP/1.1 pool, against servers that answer in each of HTTP's ways ---------

Handler = Callable[["_CountingReader", asyncio.StreamWriter], Awaitable[None]]


@asynccontextmanager
async def raw_server(
    handler: Handler, tls: ssl.SSLContext | None = None
) -> AsyncIterator[tuple[str, list[int]]]:
    """A loopback server running ``handler`` per connection.

    Yields its URL and the number of requests each connection carried.
    """
    per_connection: list[int] = []

    async def serve(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        per_connection.append(0)
        index = len(per_connection) - 1
        counting = _CountingReader(reader, per_connection, index)
        try:
            await handler(counting, writer)
        except (ConnectionError, asyncio.IncompleteReadError):
            pass
        finally:
            writer.close()

    server = await asyncio.start_server(serve, "127.0.0.1", 0, ssl=tls)
    port = server.sockets[0].getsockname()[1]
    scheme = "https" if tls is not None else "http"
    try:
        yield f"{scheme}://127.0.0.1:{port}/v1/chat/completions", per_connection
    finally:
        server.close()
        await server.wait_closed()


class _CountingReader:
    """A StreamReader whose ``read_request`` counts requests per connection."""

    def __init__(self, reader: asyncio.StreamReader, counts: list[int], index: int) -> None:
        self._reader = reader
        self._counts = counts
        self._index = index

    async def read_request(self) -> bytes:
        """One whole request (head and Content-Length body); b"" at EOF."""
        try:
            head = await self._reader.readuntil(b"\r\n\r\n")
        except asyncio.IncompleteReadError:
            return b""
        length = 0
        for line in head.decode("latin-1").split("\r\n"):
            name, _, value = line.partition(":")
            if name.strip().lower() == "content-length":
                length = int(value)
        body = await self._reader.readexactly(length)
        self._counts[self._index] += 1
        return head + body


def response(body: bytes, *extra: str, status: str = "200 OK") -> bytes:
    head = [f"HTTP/1.1 {status}", f"content-length: {len(body)}", *extra]
    return ("\r\n".join(head) + "\r\n\r\n").encode() + body


async def post(pool: Http1Pool, url: str, read_timeout: float | None = 10.0) -> RawAnswer:
    return await pool.post(
        url,
        b'{"q": 1}',
        {"content-type": "application/json"},
        connect_timeout=5.0,
        read_timeout=read_timeout,
    )


async def test_chunked_interim_and_until_close_answers_are_read_whole() -> None:
    answers = [
        # Chunked, with a chunk extension and a trailer.
        b"HTTP/1.1 200 OK\r\ntransfer-encoding: chunked\r\n\r\n"
        b"5;ext=1\r\nhello\r\n6\r\n world\r\n0\r\nx-trailer: 1\r\n\r\n",
        # An interim 100 Continue, then the answer.
        b"HTTP/1.1 100 Continue\r\n\r\n" + response(b"after interim"),
        # No length at all: the body ends with the connection.
        b"HTTP/1.1 200 OK\r\ncontent-type: text/plain\r\n\r\nuntil close",
    ]

    async def handler(reader: _CountingReader, writer: asyncio.StreamWriter) -> None:
        while answers and await reader.read_request():
            # Byte by byte: the parser must cope with any split.
            for byte in answers.pop(0):
                writer.write(bytes([byte]))
                await writer.drain()

    pool = Http1Pool(max_idle=4)
    async with raw_server(handler) as (url, per_connection):
        bodies = [(await post(pool, url)).body for _ in range(3)]
        pool.close()
    assert bodies == [b"hello world", b"after interim", b"until close"]
    assert per_connection == [3]  # one kept-alive connection carried all three


async def test_a_connection_the_server_closed_is_replaced_without_failing_the_call() -> None:
    async def handler(reader: _CountingReader, writer: asyncio.StreamWriter) -> None:
        if await reader.read_request():
            writer.write(response(b"one answer"))
            await writer.drain()
        # The next request on this connection finds the server closing it, as an
        # idle timeout does at the moment a client reuses the connection.
        await reader.read_request()

    pool = Http1Pool(max_idle=4)
    async with raw_server(handler) as (url, per_connection):
        first = await post(pool, url)
        second = await post(pool, url)
        pool.close()
    assert (first.body, second.body) == (b"one answer", b"one answer")
    # The second request went out twice: unanswered on the closing connection,
    # then answered on a new one.
    assert per_connection == [2, 1]


async def test_connection_close_is_obeyed_and_a_gzip_body_decoded() -> None:
    packed = gzip.compress(b"compressed text")

    async def handler(reader: _CountingReader, writer: asyncio.StreamWriter) -> None:
        while await reader.read_request():
            writer.write(response(packed, "content-encoding: gzip", "connection: close"))
            await writer.drain()

    pool = Http1Pool(max_idle=4)
    async with raw_server(handler) as (url, per_connection):
        answers = [await post(pool, url) for _ in range(2)]
        pool.close()
    assert [a.body for a in answers] == [b"compressed text"] * 2
    assert answers[0].headers["content-encoding"] == "gzip"
    assert per_connection == [1, 1]


async def test_the_read_timeout_is_between_bytes_not_for_the_whole_answer() -> None:
    body = b"x" * 8

    gap_s, read_timeout_s = 0.1, 2.0

    async def trickle(reader: _CountingReader, writer: asyncio.StreamWriter) -> None:
        while await reader.read_request():
            whole = response(body)
            pieces = [whole[i : i + 2] for i in range(0, len(whole), 2)]
            # More than the read timeout in all, so a whole-answer bound would fail it.
            assert len(pieces) * gap_s > read_timeout_s
            for piece in pieces:
                writer.write(piece)
                await writer.drain()
                # The scenario's pacing, not a wait for something: each gap is a
                # twentieth of the read timeout, so only a stall of nearly 2 s
                # between two writes could make it one.
                await asyncio.sleep(gap_s)

    pool = Http1Pool(max_idle=4)
    async with raw_server(trickle) as (url, _):
        answer = await post(pool, url, read_timeout=read_timeout_s)
        pool.close()
    assert answer.body == body

    silent = asyncio.Event()

    async def hang(reader: _CountingReader, writer: asyncio.StreamWriter) -> None:
        await reader.read_request()
        await silent.wait()

    pool = Http1Pool(max_idle=4)
    async with raw_server(hang) as (url, _):
        with pytest.raises(httpx.ReadTimeout):
            await post(pool, url, read_timeout=0.2)
        silent.set()
        pool.close()


async def test_malformed_answers_and_refused_connections_are_transport_errors() -> None:
    async def garbage(reader: _CountingReader, writer: asyncio.StreamWriter) -> None:
        await reader.read_request()
        writer.write(b"SSH-2.0-OpenSSH\r\n\r\n")
        await writer.drain()

    pool = Http1Pool(max_idle=4)
    async with raw_server(garbage) as (url, _):
        with pytest.raises(httpx.RemoteProtocolError, match="not an HTTP response"):
            await post(pool, url)
    with pytest.raises(httpx.ConnectError):
        await post(pool, url)  # the server is gone: nothing listens on its port
    pool.close()


async def test_tls_is_verified_against_the_trusted_certificates(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    cert, key = tmp_path / "cert.pem", tmp_path / "key.pem"
    subprocess.run(
        [
            "openssl",
            "req",
            "-x509",
            "-newkey",
            "rsa:2048",
            "-nodes",
            "-days",
            "1",
            "-keyout",
            str(key),
            "-out",
            str(cert),
            "-subj",
            "/CN=127.0.0.1",
            "-addext",
            "subjectAltName=IP:127.0.0.1",
        ],
        check=True,
        capture_output=True,
    )
    tls = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    tls.load_cert_chain(cert, key)

    async def handler(reader: _CountingReader, writer: asyncio.StreamWriter) -> None:
        while await reader.read_request():
            writer.write(response(b"over TLS"))
            await writer.drain()

    async with raw_server(handler, tls=tls) as (url, _):
        untrusting = Http1Pool(max_idle=4)
        with pytest.raises(httpx.ConnectError, match="CERTIFICATE_VERIFY_FAILED"):
            await post(untrusting, url)
        untrusting.close()
        monkeypatch.setenv("SSL_CERT_FILE", str(cert))
        trusting = Http1Pool(max_idle=4)
        assert (await post(trusting, url)).body == b"over TLS"
        trusting.close()


def test_a_header_that_would_split_the_request_is_refused() -> None:
    with pytest.raises(ConfigurationError, match="X-Evil"):
        OpenAIChat(model="m", base_url="http://127.0.0.1:9", headers={"X-Evil": "a\r\nHost: b"})
