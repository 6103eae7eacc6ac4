"""A scripted LM server: real HTTP on loopback, OpenAI- and Anthropic-compatible.

The one test double dspex allows for LM calls (DESIGN.md §8): it produces the
failures a real model server will not produce on demand (429 with
Retry-After, 5xx, slow answers, malformed bodies, dropped connections) while
the client under test runs its real httpx code over a real socket.

Usage, inside a test's event loop::

    async with ScriptedLM() as server:
        server.script(Reply.error(429, headers={"Retry-After": "1"}), Reply())
        lm = OpenAIChat(model="m", base_url=server.openai_url)
        ...
        assert len(server.requests) == 2

Replies come from, in order: ``server.responder(request)`` when it returns a
:class:`Reply`, else the next scripted reply, else ``server.default``. Every
request is recorded with its headers, body and monotonic arrival time.

``POST .../embeddings`` answers in OpenAI's embeddings format: a 2xx reply
without a body gets one vector per input from ``server.embed`` (default
:func:`letter_counts`, a deterministic bag of letters); error replies come in
OpenAI's error format.

It lives with the benchmarks because they run it as their LM:
``bench/lm_server.py`` puts it in a process of its own with latency
distributions and a rate limit (worker tests start it the same way), and
``GET /stats`` answers how many requests it served and the most it was
answering at once. Tests import it from here.
"""

from __future__ import annotations

import asyncio
import contextlib
import http
import json
import signal
import time
from collections import deque
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from types import TracebackType
from typing import Any, Literal, Self

__all__ = [
    "DEFAULT_TEXT",
    "EmbedFunction",
    "RecordedRequest",
    "Reply",
    "Responder",
    "ScriptedLM",
    "letter_counts",
    "serve_until_signalled",
]

DEFAULT_TEXT = "Hello from the scripted LM."
Api = Literal["openai", "anthropic", "other"]


@dataclass(frozen=True, kw_only=True)
class Reply:
    """What the server answers to one request.

    Args:
        status: HTTP status.
        headers: Extra response headers (e.g. ``Retry-After``).
        body: Raw body (bytes/str) or a JSON object. None means the default body
            for the status in the request's API format: a completion with
            ``text`` for 2xx, an error with ``error_message`` otherwise.
        text: Completion text of the default 2xx body.
        prompt_tokens: Usage reported by the default 2xx body.
        completion_tokens: Usage reported by the default 2xx body.
        error_message: Message of the default error body.
        delay_s: Seconds to wait before answering.
        drop: Close the connection instead of answering.
    """

    status: int = 200
    headers: Mapping[str, str] = field(default_factory=dict)
    body: bytes | str | Mapping[str, Any] | None = None
    text: str = DEFAULT_TEXT
    prompt_tokens: int = 11
    completion_tokens: int = 7
    error_message: str = "scripted failure"
    delay_s: float = 0.0
    drop: bool = False

    @classmethod
    def completion(cls, text: str, **kwargs: Any) -> Reply:
        """A 200 completion answering ``text``."""
        return cls(text=text, **kwargs)

    @classmethod
    def error(cls, status: int, message: str = "scripted failure", **kwargs: Any) -> Reply:
        """An error answer in the request's API format."""
        return cls(status=status, error_message=message, **kwargs)

    @classmethod
    def malformed(cls, **kwargs: Any) -> Reply:
        """A 200 whose body is not valid JSON."""
        return cls(body=b'{"choices": [{"message": ', **kwargs)


@dataclass(frozen=True)
class RecordedRequest:
    """One request as the server received it."""

    method: str
    path: str
    #: Header names lowercased.
    headers: Mapping[str, str]
    body: bytes
    #: ``time.monotonic()`` when the whole request had arrived.
    arrived_at: float

    @property
    def api(self) -> Api:
        if self.path.endswith("/chat/completions"):
            return "openai"
        if self.path.endswith("/messages"):
            return "anthropic"
        return "other"

    @property
    def json(self) -> Any:
        """The body parsed as JSON (None when it is not JSON)."""
        try:
            return json.loads(self.body)
        except ValueError:
            return None


Responder = Callable[[RecordedRequest], Reply | None]
#: The vector the server answers for one input text of an embeddings request.
EmbedFunction = Callable[[str], list[float]]


def letter_counts(text: str) -> list[float]:
    """How often each letter a-z occurs in ``text`` (case-insensitive): 26 numbers."""
    lowered = text.lower()
    return [float(lowered.count(chr(code))) for code in range(ord("a"), ord("z") + 1)]


class ScriptedLM:
    """The server. Start it with ``async with`` (or :meth:`start`/:meth:`stop`).

    Args:
        host: Interface to bind (loopback by default).
        port: Port to bind; 0 picks a free one.
        default: Reply used when neither the responder nor the script has one.
        responder: Optional function choosing a reply per request.
        embed: The vector of one text in embeddings answers (default :func:`letter_counts`).
    """

    def __init__(
        self,
        *,
        host: str = "127.0.0.1",
        port: int = 0,
        default: Reply | None = None,
        responder: Responder | None = None,
        record: bool = True,
        embed: EmbedFunction | None = None,
    ) -> None:
        self.host = host
        self.port = port
        self.default = default if default is not None else Reply()
        self.responder = responder
        self.record = record
        self.embed: EmbedFunction = embed or letter_counts
        self.requests: list[RecordedRequest] = []
        self.served = 0
        self._script: deque[Reply] = deque()
        self._server: asyncio.Server | None = None
        self._connections: dict[asyncio.Task[None], asyncio.StreamWriter] = {}
        self._idle = asyncio.Event()
        self.connections_opened = 0
        #: Requests being answered now, and the most there ever were at once.
        self.active = 0
        self.max_concurrent = 0
        #: Unexpected exceptions of connection handlers; stop() raises the first.
        self.errors: list[Exception] = []

    # -- lifecycle -----------------------------------------------------------------

    async def start(self) -> None:
        self._server = await asyncio.start_server(self._serve_connection, self.host, self.port)
        self.port = self._server.sockets[0].getsockname()[1]

    async def stop(self) -> None:
        """Stop listening, close every connection and wait for their handlers."""
        if self._server is None:
            return
        self._server.close()
        for task, writer in list(self._connections.items()):
            writer.close()
            task.cancel()
        await asyncio.gather(*self._connections, return_exceptions=True)
        await self._server.wait_closed()
        self._server = None
        if self.errors:
            raise RuntimeError(f"scripted LM server failed: {self.errors[0]!r}") from self.errors[0]

    async def __aenter__(self) -> Self:
        await self.start()
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        await self.stop()

    # -- scripting and inspection --------------------------------------------------

    @property
    def url(self) -> str:
        """``http://127.0.0.1:PORT`` (Anthropic clients use this as base URL)."""
        return f"http://{self.host}:{self.port}"

    @property
    def openai_url(self) -> str:
        """``http://127.0.0.1:PORT/v1`` (OpenAI clients use this as base URL)."""
        return f"{self.url}/v1"

    @property
    def open_connections(self) -> int:
        return len(self._connections)

    def script(self, *replies: Reply) -> None:
        """Queue replies for the next requests, in order."""
        self._script.extend(replies)

    def count(self, path_suffix: str = "") -> int:
        """Requests recorded whose path ends with ``path_suffix``."""
        return sum(1 for request in self.requests if request.path.endswith(path_suffix))

    def max_in_window(self, window_s: float) -> int:
        """The most requests that arrived within any ``window_s`` seconds."""
        times = sorted(request.arrived_at for request in self.requests)
        best = 0
        start = 0
        for end, arrived in enumerate(times):
            while arrived - times[start] >= window_s:
                start += 1
            best = max(best, end - start + 1)
        return best

    async def wait_until_idle(self, timeout_s: float = 5.0) -> bool:
        """Wait until clients have closed every connection; False on timeout."""
        if not self._connections:
            return True
        try:
            await asyncio.wait_for(self._idle.wait(), timeout_s)
        except TimeoutError:
            return False
        return True

    # -- HTTP ----------------------------------------------------------------------

    async def _serve_connection(
        self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter
    ) -> None:
        task = asyncio.current_task()
        assert task is not None
        self._connections[task] = writer
        self._idle.clear()
        self.connections_opened += 1
        try:
            while await self._serve_one(reader, writer):
                pass
        except (ConnectionError, asyncio.IncompleteReadError):
            pass  # the client went away; that is its right
        except asyncio.CancelledError:
            # Only stop() cancels these tasks. Ending normally keeps asyncio's
            # stream callback from logging the cancellation as an error.
            pass
        except Exception as exc:  # a bug in the double: fail the test in stop()
            self.errors.append(exc)
        finally:
            writer.close()
            # Cancelled here too only by stop(); end normally, as above.
            with contextlib.suppress(ConnectionError, asyncio.CancelledError):
                await writer.wait_closed()
            # Idle only once this task has nothing left to await: a caller
            # that waits for idle then finds no connection task pending.
            self._connections.pop(task, None)
            if not self._connections:
                self._idle.set()

    async def _serve_one(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> bool:
        try:
            head = await reader.readuntil(b"\r\n\r\n")
        except asyncio.IncompleteReadError:
            return False  # clean EOF between requests
        request_line, *header_lines = head.decode("latin-1").split("\r\n")
        method, path, _version = request_line.split(" ", 2)
        headers: dict[str, str] = {}
        for line in header_lines:
            if line:
                name, _, value = line.partition(":")
                headers[name.strip().lower()] = value.strip()
        body = await reader.readexactly(int(headers.get("content-length", "0")))
        request = RecordedRequest(method, path, headers, body, time.monotonic())
        if self.record:
            self.requests.append(request)
        self.served += 1
        if path == "/stats":  # for tests that watch a server in another process
            reply = Reply(body={"served": self.served - 1, "max_concurrent": self.max_concurrent})
        else:
            reply = self._choose(request)
        self.active += 1
        self.max_concurrent = max(self.max_concurrent, self.active)
        try:
            if reply.delay_s:
                await asyncio.sleep(reply.delay_s)
        finally:
            self.active -= 1
        if reply.drop:
            return False
        status, payload = self._render(request, reply)
        try:
            reason = http.HTTPStatus(status).phrase
        except ValueError:
            reason = "Scripted"
        extra = "".join(f"{name}: {value}\r\n" for name, value in reply.headers.items())
        writer.write(
            f"HTTP/1.1 {status} {reason}\r\ncontent-type: application/json\r\n"
            f"content-length: {len(payload)}\r\n{extra}\r\n".encode("latin-1")
            + payload
        )
        await writer.drain()
        return headers.get("connection", "").lower() != "close"

    def _choose(self, request: RecordedRequest) -> Reply:
        if self.responder is not None:
            chosen = self.responder(request)
            if chosen is not None:
                return chosen
        if self._script:
            return self._script.popleft()
        return self.default

    def _render(self, request: RecordedRequest, reply: Reply) -> tuple[int, bytes]:
        if isinstance(reply.body, bytes):
            return reply.status, reply.body
        if isinstance(reply.body, str):
            return reply.status, reply.body.encode("utf-8")
        if reply.body is not None:
            return reply.status, json.dumps(reply.body).encode("utf-8")
        sent = request.json if isinstance(request.json, dict) else {}
        if request.path.endswith("/embeddings"):
            if 200 <= reply.status < 300:
                document = _embeddings(sent, reply, self.embed)
            else:
                document = _error("openai", reply)
            return reply.status, json.dumps(document).encode("utf-8")
        if request.api == "other" and request.path.endswith("/models"):
            return 200, json.dumps({"object": "list", "data": [{"id": "scripted"}]}).encode()
        if request.api == "other":
            return 404, json.dumps({"error": {"message": f"no route {request.path}"}}).encode()
        if 200 <= reply.status < 300:
            document = _completion(request.api, sent, reply)
        else:
            document = _error(request.api, reply)
        return reply.status, json.dumps(document).encode("utf-8")


def _completion(api: Api, sent: Mapping[str, Any], reply: Reply) -> dict[str, Any]:
    model = sent.get("model", "scripted")
    if api == "anthropic":
        return {
            "id": "msg_scripted",
            "type": "message",
            "role": "assistant",
            "model": model,
            "content": [{"type": "text", "text": reply.text}],
            "stop_reason": "end_turn",
            "usage": {
                "input_tokens": reply.prompt_tokens,
                "output_tokens": reply.completion_tokens,
            },
        }
    n = sent.get("n", 1) if isinstance(sent.get("n", 1), int) else 1
    return {
        "id": "chatcmpl-scripted",
        "object": "chat.completion",
        "model": model,
        "choices": [
            {
                "index": index,
                "message": {"role": "assistant", "content": reply.text},
                "finish_reason": "stop",
            }
            for index in range(n)
        ],
        "usage": {
            "prompt_tokens": reply.prompt_tokens,
            "completion_tokens": reply.completion_tokens * n,
            "total_tokens": reply.prompt_tokens + reply.completion_tokens * n,
        },
    }


def _embeddings(sent: Mapping[str, Any], reply: Reply, embed: EmbedFunction) -> dict[str, Any]:
    texts = sent.get("input", [])
    texts = [texts] if isinstance(texts, str) else [str(text) for text in texts]
    return {
        "object": "list",
        "model": sent.get("model", "scripted"),
        "data": [
            {"object": "embedding", "index": index, "embedding": embed(text)}
            for index, text in enumerate(texts)
        ],
        "usage": {"prompt_tokens": reply.prompt_tokens, "total_tokens": reply.prompt_tokens},
    }


def _error(api: Api, reply: Reply) -> dict[str, Any]:
    if api == "anthropic":
        return {"type": "error", "error": {"type": "api_error", "message": reply.error_message}}
    return {"error": {"message": reply.error_message, "type": "scripted", "code": reply.status}}


async def serve_until_signalled(server: ScriptedLM) -> None:
    """Run ``server`` as a process's whole job: print its port, serve until SIGTERM/SIGINT."""
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for signum in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(signum, stop.set)
    async with server:
        print(server.port, flush=True)  # after the handlers: a quick SIGTERM still stops it
        await stop.wait()
