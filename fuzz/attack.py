"""Attack a running server over raw sockets and check each answer against the RFCs.

    python fuzz/attack.py --port 8000 --profile native --pid 1234
    python fuzz/attack.py --port 8001 --profile asgi --pid 1235
    python fuzz/attack.py --port 8002 --profile hubapp --prefix /rt --pid 1236

Profiles: ``native`` is ``fullduplex serve`` with the demo (HTTP abuse, smuggling, static
traversal, WebSocket frames on ``/echo``, the transports); ``asgi`` is ``fullduplex serve
fuzz.attack_app:app`` (a Starlette app: ``/http``, ``/stream``, ``/ws`` echo); ``hubapp``
is ``fullduplex.asgi.HubApp`` mounted under ``--prefix`` (the transports only: the HTTP parser
and frames are the host server's). Run the server with ``--rate-per-ip none`` (the harness
opens hundreds of connections a second from one IP; the limit has tests of its own).

Each check sends one attack and compares what came back with what the RFC (or the project's
documentation) asks: an HTTP status, a WebSocket close code, a clean close. After each check
the server must still answer ``GET`` on a health path; with ``--pid``, its RSS and open file
descriptors are sampled too, and at the end the file descriptors must return to where they
started (no connection left behind). Every loop is bounded in count and in time. Exit status:
0 when every check held, 1 otherwise. ``--only SUBSTRING`` runs the matching checks.
"""

from __future__ import annotations

import argparse
import base64
import contextlib
import json
import os
import socket
import struct
import sys
import time
import zlib
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field

# ---------------------------------------------------------------------------------------------
# Raw HTTP


@dataclass
class Target:
    """Where the server listens and what it serves."""

    host: str
    port: int
    profile: str
    prefix: str = ""
    pid: int | None = None
    slow: float = 3.0  # seconds: a little more than the server's open/keep-alive timeouts

    def connect(self, timeout: float = 5.0) -> socket.socket:
        sock = socket.create_connection((self.host, self.port), timeout=timeout)
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        return sock


@dataclass
class Answer:
    """What the server sent back to one raw exchange."""

    data: bytes
    closed: bool  # the server closed (EOF or reset) within the time allowed
    elapsed: float

    @property
    def responses(self) -> list[tuple[int, bytes, bytes]]:
        """(status, head, body) of every whole response in ``data``, in order."""
        out: list[tuple[int, bytes, bytes]] = []
        data = self.data
        while data.startswith(b"HTTP/1.") and b"\r\n\r\n" in data:
            head, _, rest = data.partition(b"\r\n\r\n")
            try:
                status = int(head[9:12])
            except ValueError:
                break
            fields = {}
            for line in head.split(b"\r\n")[1:]:
                name, _, value = line.partition(b":")
                fields[name.strip().lower()] = value.strip()
            if 100 <= status < 200 or status in (204, 304):
                body, data = b"", rest
            elif b"content-length" in fields:
                n = int(fields[b"content-length"])
                body, data = rest[:n], rest[n:]
            elif fields.get(b"transfer-encoding", b"").lower() == b"chunked":
                body, data = rest, b""  # a stream: the rest is its body
            else:
                body, data = rest, b""
            out.append((status, head, body))
        return out

    @property
    def statuses(self) -> list[int]:
        """Status codes of every response in ``data`` (pipelining gives several)."""
        return [status for status, _, _ in self.responses]

    @property
    def status(self) -> int | None:
        if self.data.startswith(b"HTTP/1.") and len(self.data) >= 12 and self.data[9:12].isdigit():
            return int(self.data[9:12])
        return None

    @property
    def body(self) -> bytes:
        return self.data.partition(b"\r\n\r\n")[2]


def exchange(
    target: Target,
    payload: bytes | list[bytes],
    *,
    timeout: float = 5.0,
    pause: float = 0.0,
    shut: bool = False,
    until: bytes | None = None,
) -> Answer:
    """Send ``payload`` (pieces ``pause`` seconds apart), read until close or ``timeout``."""
    pieces = [payload] if isinstance(payload, bytes) else payload
    start = time.monotonic()
    data = bytearray()
    closed = False
    with target.connect(timeout) as sock:
        try:
            for i, piece in enumerate(pieces):
                if i and pause:
                    time.sleep(pause)
                sock.sendall(piece)
            if shut:
                sock.shutdown(socket.SHUT_WR)
        except OSError:
            pass  # the server stopped reading or closed: what it answered is still readable
        deadline = start + timeout
        while not closed and (left := deadline - time.monotonic()) > 0:
            sock.settimeout(left)
            try:
                chunk = sock.recv(65536)
            except TimeoutError:
                break
            except OSError:
                closed = True
                break
            if not chunk:
                closed = True
                break
            data += chunk
            if until is not None and until in data:
                break
    return Answer(bytes(data), closed, time.monotonic() - start)


def req(target: Target, line: str, *headers: str, body: bytes = b"", host: bool = True) -> bytes:
    """A request head (CRLF) with Host unless told, then ``body`` as it is."""
    hs = ([f"Host: {target.host}:{target.port}"] if host else []) + list(headers)
    return (line + "\r\n" + "".join(h + "\r\n" for h in hs) + "\r\n").encode("latin-1") + body


# ---------------------------------------------------------------------------------------------
# Raw WebSocket

KEY = base64.b64encode(b"0123456789abcdef").decode()


def frame(
    opcode: int,
    payload: bytes = b"",
    *,
    fin: bool = True,
    rsv: int = 0,
    mask: bool = True,
    length_form: int | None = None,
    length: int | None = None,
) -> bytes:
    """A frame as a client would send it, with every field up to the caller."""
    n = len(payload) if length is None else length
    head = bytes([(0x80 if fin else 0) | (rsv << 4) | opcode])
    form = length_form or (0 if n < 126 else 126 if n < 65536 else 127)
    m = 0x80 if mask else 0
    if form == 0:
        head += bytes([m | n])
    elif form == 126:
        head += bytes([m | 126]) + struct.pack("!H", n)
    else:
        head += bytes([m | 127]) + struct.pack("!Q", n)
    if not mask:
        return head + payload
    key = b"\x01\x02\x03\x04"
    return head + key + bytes(b ^ key[i % 4] for i, b in enumerate(payload))


def close_payload(code: int, reason: bytes = b"") -> bytes:
    return struct.pack("!H", code) + reason


class WS:
    """A raw client WebSocket: a socket after a 101, and a frame reader."""

    def __init__(self, sock: socket.socket, rest: bytes, response: bytes) -> None:
        self.sock = sock
        self.buf = bytearray(rest)
        self.response = response

    def send(self, data: bytes) -> bool:
        try:
            self.sock.sendall(data)
        except OSError:
            return False
        return True

    def _fill(self, n: int, deadline: float) -> bool:
        while len(self.buf) < n:
            left = deadline - time.monotonic()
            if left <= 0:
                return False
            self.sock.settimeout(left)
            try:
                chunk = self.sock.recv(65536)
            except (TimeoutError, OSError):
                return False
            if not chunk:
                return False
            self.buf += chunk
        return True

    def recv_frame(self, timeout: float = 5.0) -> tuple[int, bool, bytes] | None:
        """(opcode, fin, payload) of the next server frame, or None at EOF or timeout."""
        deadline = time.monotonic() + timeout
        if not self._fill(2, deadline):
            return None
        b0, b1 = self.buf[0], self.buf[1]
        n = b1 & 0x7F
        pos = 2
        if n == 126:
            if not self._fill(4, deadline):
                return None
            n = struct.unpack("!H", self.buf[2:4])[0]
            pos = 4
        elif n == 127:
            if not self._fill(10, deadline):
                return None
            n = struct.unpack("!Q", self.buf[2:10])[0]
            pos = 10
        if not self._fill(pos + n, deadline):
            return None
        payload = bytes(self.buf[pos : pos + n])
        del self.buf[: pos + n]
        if b0 & 0x0F == 8:
            # RFC 6455 5.5.1: answer a close, so the server's closing handshake completes.
            self.send(frame(8, payload[:2]))
        return b0 & 0x0F, bool(b0 & 0x80), payload

    def recv_message(self, timeout: float = 5.0) -> tuple[int, bytes] | None:
        """The next data message (control frames other than close skipped), or a close."""
        deadline = time.monotonic() + timeout
        parts: list[bytes] = []
        first = 0
        while (left := deadline - time.monotonic()) > 0:
            got = self.recv_frame(left)
            if got is None:
                return None
            op, fin, payload = got
            if op == 8:
                return 8, payload
            if op in (9, 10):
                continue
            first = first or op
            parts.append(payload)
            if fin:
                return first, b"".join(parts)
        return None

    def close_code(self, timeout: float = 5.0) -> int | None:
        """Read until the server's close frame: its code (1005 if empty), None if none came."""
        deadline = time.monotonic() + timeout
        while (left := deadline - time.monotonic()) > 0:
            got = self.recv_frame(left)
            if got is None:
                return None
            op, _, payload = got
            if op == 8:
                return struct.unpack("!H", payload[:2])[0] if len(payload) >= 2 else 1005
        return None

    def eof(self, timeout: float = 5.0) -> bool:
        """Whether the server closes TCP within ``timeout`` (after its close frame)."""
        deadline = time.monotonic() + timeout
        while (left := deadline - time.monotonic()) > 0:
            self.sock.settimeout(left)
            try:
                if not self.sock.recv(65536):
                    return True
            except TimeoutError:
                return False
            except OSError:
                return True
        return False

    def close(self) -> None:
        with contextlib.suppress(OSError):
            self.sock.close()


def upgrade(
    target: Target,
    path: str,
    *extra: str,
    method: str = "GET",
    key: str | None = KEY,
    version: str | None = "13",
    deflate: bool = False,
    timeout: float = 5.0,
) -> tuple[int | None, WS]:
    """Open a WebSocket by hand: (status, WS). The WS is usable when status is 101."""
    headers = ["Upgrade: websocket", "Connection: Upgrade"]
    if key is not None:
        headers.append(f"Sec-WebSocket-Key: {key}")
    if version is not None:
        headers.append(f"Sec-WebSocket-Version: {version}")
    if deflate:
        headers.append("Sec-WebSocket-Extensions: permessage-deflate")
    sock = target.connect(timeout)
    sock.sendall(req(target, f"{method} {path} HTTP/1.1", *headers, *extra))
    data = bytearray()
    deadline = time.monotonic() + timeout
    while b"\r\n\r\n" not in data and (left := deadline - time.monotonic()) > 0:
        sock.settimeout(left)
        try:
            chunk = sock.recv(65536)
        except (TimeoutError, OSError):
            break
        if not chunk:
            break
        data += chunk
    head, _, rest = bytes(data).partition(b"\r\n\r\n")
    answer = Answer(bytes(data), False, 0.0)
    return answer.status, WS(sock, rest, head)


@contextlib.contextmanager
def websocket(target: Target, path: str, *extra: str, deflate: bool = False) -> Iterator[WS]:
    status, ws = upgrade(target, path, *extra, deflate=deflate)
    try:
        if status != 101:
            raise AssertionError(f"upgrade to {path} answered {status}: {ws.response[:200]!r}")
        yield ws
    finally:
        ws.close()


# ---------------------------------------------------------------------------------------------
# Checks


@dataclass
class Result:
    """One check's outcome."""

    name: str
    expected: str
    observed: str
    held: bool
    alive: bool = True
    rss_kib: int | None = None


@dataclass
class Check:
    name: str
    profiles: tuple[str, ...]
    run: Callable[[Target], tuple[str, str, bool]]


CHECKS: list[Check] = []
ALL = ("native", "asgi", "hubapp")
SERVERS = ("native", "asgi")  # the HTTP parser and frames are ours
TRANSPORTS = ("native", "hubapp")


def check(*profiles: str) -> Callable[[Callable[[Target], tuple[str, str, bool]]], None]:
    def register(fn: Callable[[Target], tuple[str, str, bool]]) -> None:
        CHECKS.append(Check(fn.__name__, profiles or ALL, fn))

    return register


def status_in(answer: Answer, *allowed: int) -> tuple[str, bool]:
    observed = f"{answer.status}" + (" closed" if answer.closed else "")
    return observed, answer.status in allowed


def http_path(target: Target) -> str:
    return {"native": "/api/data", "asgi": "/http", "hubapp": f"{target.prefix}/poll?topic=t"}[
        target.profile
    ]


def ws_path(target: Target) -> str:
    return {"native": "/echo", "asgi": "/ws", "hubapp": f"{target.prefix}/pubsub"}[target.profile]


def expect_status(
    target: Target, payload: bytes, *allowed: int, **kw: object
) -> tuple[str, str, bool]:
    answer = exchange(target, payload, **kw)  # type: ignore[arg-type]
    observed, held = status_in(answer, *allowed)
    # A refusal says why in words, and never with a traceback.
    if answer.status is not None and answer.status >= 400 and b"Traceback" in answer.data:
        return "/".join(map(str, allowed)), observed + " with a traceback", False
    return "/".join(map(str, allowed)), observed, held


# -- request line and header abuse ------------------------------------------------------------


@check(*SERVERS)
def bare_lf_request_line(t: Target) -> tuple[str, str, bool]:
    p = f"GET {http_path(t)} HTTP/1.1\nHost: x\r\n\r\n".encode()
    return expect_status(t, p, 400)


@check(*SERVERS)
def bare_lf_header(t: Target) -> tuple[str, str, bool]:
    p = f"GET {http_path(t)} HTTP/1.1\r\nHost: x\nX-A: b\r\n\r\n".encode()
    return expect_status(t, p, 400)


@check(*SERVERS)
def nul_in_header(t: Target) -> tuple[str, str, bool]:
    return expect_status(t, req(t, f"GET {http_path(t)} HTTP/1.1", "X-A: a\x00b"), 400)


@check(*SERVERS)
def nul_in_target(t: Target) -> tuple[str, str, bool]:
    return expect_status(t, req(t, "GET /a\x00b HTTP/1.1"), 400)


@check(*SERVERS)
def obs_fold(t: Target) -> tuple[str, str, bool]:
    # RFC 9112 5.2: reject with 400, or replace the fold with SP (we reject).
    return expect_status(t, req(t, f"GET {http_path(t)} HTTP/1.1", "X-A: a", " folded"), 400)


@check(*SERVERS)
def space_before_colon(t: Target) -> tuple[str, str, bool]:
    # RFC 9112 5.1: "A server MUST reject ... with a response status code of 400".
    return expect_status(t, req(t, f"GET {http_path(t)} HTTP/1.1", "X-A : b"), 400)


@check(*SERVERS)
def duplicate_host(t: Target) -> tuple[str, str, bool]:
    # RFC 9112 3.2: 400 for a request with more than one Host.
    return expect_status(t, req(t, f"GET {http_path(t)} HTTP/1.1", "Host: evil"), 400)


@check(*SERVERS)
def missing_host(t: Target) -> tuple[str, str, bool]:
    return expect_status(t, req(t, f"GET {http_path(t)} HTTP/1.1", host=False), 400)


@check(*SERVERS)
def huge_header(t: Target) -> tuple[str, str, bool]:
    return expect_status(t, req(t, f"GET {http_path(t)} HTTP/1.1", "X-A: " + "a" * 200_000), 431)


@check(*SERVERS)
def too_many_headers(t: Target) -> tuple[str, str, bool]:
    hs = [f"X-{i}: v" for i in range(5000)]
    return expect_status(t, req(t, f"GET {http_path(t)} HTTP/1.1", *hs), 431)


@check(*SERVERS)
def huge_target(t: Target) -> tuple[str, str, bool]:
    return expect_status(t, req(t, "GET /" + "a" * 200_000 + " HTTP/1.1"), 414, 431)


@check(*SERVERS)
def absolute_form_target(t: Target) -> tuple[str, str, bool]:
    # RFC 9112 3.2.2: "A server MUST accept the absolute-form in requests".
    p = req(t, f"GET http://{t.host}:{t.port}{http_path(t)} HTTP/1.1")
    return expect_status(t, p, 200)


@check(*SERVERS)
def asterisk_form_get(t: Target) -> tuple[str, str, bool]:
    return expect_status(t, req(t, "GET * HTTP/1.1"), 400, 404)


@check(*SERVERS)
def bad_method_token(t: Target) -> tuple[str, str, bool]:
    return expect_status(t, req(t, f"G(T {http_path(t)} HTTP/1.1"), 400)


@check(*SERVERS)
def unknown_method(t: Target) -> tuple[str, str, bool]:
    return expect_status(t, req(t, f"BREW {http_path(t)} HTTP/1.1"), 400, 405, 501)


@check(*SERVERS)
def http_version_2(t: Target) -> tuple[str, str, bool]:
    return expect_status(t, req(t, f"GET {http_path(t)} HTTP/2.0"), 400, 505)


@check(*SERVERS)
def http_version_garbage(t: Target) -> tuple[str, str, bool]:
    return expect_status(t, req(t, f"GET {http_path(t)} HTTP/1.x"), 400, 505)


@check(*SERVERS)
def http_09(t: Target) -> tuple[str, str, bool]:
    answer = exchange(t, f"GET {http_path(t)}\r\n".encode(), timeout=t.slow + 2)
    observed, held = status_in(answer, 400)
    # Either 400, or a close with nothing (no HTTP/0.9 body without status line).
    held = held or (answer.closed and not answer.data)
    return "400 or close", observed, held


@check(*SERVERS)
def binary_garbage(t: Target) -> tuple[str, str, bool]:
    return expect_status(t, bytes(range(256)) * 4 + b"\r\n\r\n", 400)


@check(*SERVERS)
def tls_hello_on_plain(t: Target) -> tuple[str, str, bool]:
    hello = bytes.fromhex("16030100a5010000a10303") + os.urandom(32) + b"\x00" * 40
    answer = exchange(t, hello)
    observed, held = status_in(answer, 400)
    return "400 or close", observed, held or (answer.closed and not answer.data)


@check(*SERVERS)
def header_name_utf8(t: Target) -> tuple[str, str, bool]:
    p = f"GET {http_path(t)} HTTP/1.1\r\nHost: x\r\nX-\u00e9: b\r\n\r\n".encode()
    return expect_status(t, p, 400)


@check(*SERVERS)
def header_value_high_bytes(t: Target) -> tuple[str, str, bool]:
    # obs-text (0x80-0xFF) is allowed in field values (RFC 9110 5.5).
    p = f"GET {http_path(t)} HTTP/1.1\r\nHost: x\r\nX-A: caf\u00e9\r\n\r\n".encode()
    return expect_status(t, p, 200)


@check(*SERVERS)
def empty_header_name(t: Target) -> tuple[str, str, bool]:
    return expect_status(t, req(t, f"GET {http_path(t)} HTTP/1.1", ": v"), 400)


@check(*SERVERS)
def header_without_colon(t: Target) -> tuple[str, str, bool]:
    return expect_status(t, req(t, f"GET {http_path(t)} HTTP/1.1", "X-A b"), 400)


@check(*SERVERS)
def leading_crlf(t: Target) -> tuple[str, str, bool]:
    # RFC 9112 2.2: a server SHOULD ignore at least one empty line before the request-line.
    return expect_status(t, b"\r\n" + req(t, f"GET {http_path(t)} HTTP/1.1"), 200, 400)


@check(*SERVERS)
def whitespace_before_first_header(t: Target) -> tuple[str, str, bool]:
    # RFC 9112 2.2: whitespace between the start line and the first field: reject (400).
    p = f"GET {http_path(t)} HTTP/1.1\r\n Host: x\r\n\r\n".encode()
    return expect_status(t, p, 400)


@check(*SERVERS)
def head_method(t: Target) -> tuple[str, str, bool]:
    answer = exchange(t, req(t, f"HEAD {http_path(t)} HTTP/1.1", "Connection: close"))
    observed, held = status_in(answer, 200, 405)
    return (
        "200/405 without a body",
        observed + f" body={len(answer.body)}",
        held and not answer.body,
    )


@check("native")
def options_star(t: Target) -> tuple[str, str, bool]:
    return expect_status(t, req(t, "OPTIONS * HTTP/1.1"), 200, 204, 400, 404, 405)


# -- static files (native) --------------------------------------------------------------------

TRAVERSALS = [
    "/..%2f..%2f..%2f..%2fetc%2fpasswd",
    "/%2e%2e/%2e%2e/%2e%2e/%2e%2e/etc/passwd",
    "/../../../../etc/passwd",
    "/static/../../../../etc/passwd",
    "/%2e%2e%2f%2e%2e%2f%2e%2e%2f%2e%2e%2fetc%2fpasswd",
    "/..%5c..%5c..%5c..%5cetc%5cpasswd",
    "/....//....//....//etc/passwd",
    "/%252e%252e%252f%252e%252e%252fetc%252fpasswd",
    "/index.html%00.png",
    "//etc/passwd",
    "/%c0%ae%c0%ae/%c0%ae%c0%ae/etc/passwd",
    "/..;/..;/etc/passwd",
    "/./././../../../../../etc/passwd",
    "/%2e%2e/%2e%2e/%2e%2e/%2e%2e/proc/self/environ",
]


def _traversal(t: Target, target: str) -> tuple[str, str, bool]:
    answer = exchange(t, req(t, f"GET {target} HTTP/1.1", "Connection: close"))
    leaked = b"root:" in answer.data or b"PATH=" in answer.data
    observed, held = status_in(answer, 400, 403, 404)
    return "400/403/404, no file", observed + (" LEAKED" if leaked else ""), held and not leaked


for _i, _path in enumerate(TRAVERSALS):

    def _make(path: str) -> Callable[[Target], tuple[str, str, bool]]:
        def run(t: Target) -> tuple[str, str, bool]:
            return _traversal(t, path)

        return run

    CHECKS.append(Check(f"traversal_{_i}:{_path[:30]}", ("native",), _make(_path)))


@check("native")
def static_page(t: Target) -> tuple[str, str, bool]:
    return expect_status(t, req(t, "GET /index.html HTTP/1.1", "Connection: close"), 200)


@check("native")
def static_dir_without_slash(t: Target) -> tuple[str, str, bool]:
    return expect_status(t, req(t, "GET /nonexistent-dir HTTP/1.1"), 404)


@check("native")
def static_range_abuse(t: Target) -> tuple[str, str, bool]:
    ranges = "bytes=" + ",".join(f"{i}-{i}" for i in range(1000))[:8000]
    return expect_status(t, req(t, "GET /index.html HTTP/1.1", f"Range: {ranges}"), 200, 206, 416)


@check("native")
def static_post(t: Target) -> tuple[str, str, bool]:
    return expect_status(t, req(t, "POST /index.html HTTP/1.1", "Content-Length: 0"), 405)


# -- smuggling --------------------------------------------------------------------------------


def post_path(t: Target) -> str:
    return {"native": "/publish", "asgi": "/http", "hubapp": f"{t.prefix}/publish"}[t.profile]


SMUGGLED = b"GET /smuggled HTTP/1.1\r\nHost: x\r\n\r\n"


def _one_answer(t: Target, payload: bytes, *allowed: int) -> tuple[str, str, bool]:
    answer = exchange(t, payload, timeout=t.slow)
    statuses = answer.statuses
    observed = ",".join(map(str, statuses)) + (" closed" if answer.closed else "")
    # Smuggled: a second response (the /smuggled request answered on its own).
    held = bool(statuses) and statuses[0] in allowed and len(statuses) == 1
    return "/".join(map(str, allowed)) + " once", observed, held


@check(*SERVERS)
def cl_and_te(t: Target) -> tuple[str, str, bool]:
    body = b"0\r\n\r\n" + SMUGGLED
    p = req(
        t,
        f"POST {post_path(t)} HTTP/1.1",
        f"Content-Length: {len(body)}",
        "Transfer-Encoding: chunked",
        body=body,
    )
    return _one_answer(t, p, 400)


@check(*SERVERS)
def te_and_cl(t: Target) -> tuple[str, str, bool]:
    body = b"0\r\n\r\n" + SMUGGLED
    p = req(
        t,
        f"POST {post_path(t)} HTTP/1.1",
        "Transfer-Encoding: chunked",
        "Content-Length: 5",
        body=body,
    )
    return _one_answer(t, p, 400)


@check(*SERVERS)
def two_content_lengths(t: Target) -> tuple[str, str, bool]:
    p = req(t, f"POST {post_path(t)} HTTP/1.1", "Content-Length: 2", "Content-Length: 40")
    return _one_answer(t, p + b"{}" + SMUGGLED, 400)


@check(*SERVERS)
def content_length_list(t: Target) -> tuple[str, str, bool]:
    p = req(t, f"POST {post_path(t)} HTTP/1.1", "Content-Length: 2, 2")
    return _one_answer(t, p + b"{}", 400, 401, 403, 200, 202)


@check(*SERVERS)
def content_length_plus(t: Target) -> tuple[str, str, bool]:
    p = req(t, f"POST {post_path(t)} HTTP/1.1", "Content-Length: +2")
    return _one_answer(t, p + b"{}", 400)


@check(*SERVERS)
def content_length_negative(t: Target) -> tuple[str, str, bool]:
    return _one_answer(t, req(t, f"POST {post_path(t)} HTTP/1.1", "Content-Length: -1"), 400)


@check(*SERVERS)
def content_length_huge(t: Target) -> tuple[str, str, bool]:
    p = req(t, f"POST {post_path(t)} HTTP/1.1", "Content-Length: 99999999999999999999999")
    return _one_answer(t, p, 400, 413)


@check(*SERVERS)
def content_length_over_limit(t: Target) -> tuple[str, str, bool]:
    return _one_answer(
        t, req(t, f"POST {post_path(t)} HTTP/1.1", "Content-Length: 1000000000"), 413
    )


@check(*SERVERS)
def te_chunked_identity(t: Target) -> tuple[str, str, bool]:
    p = req(t, f"POST {post_path(t)} HTTP/1.1", "Transfer-Encoding: chunked, identity")
    return _one_answer(t, p + b"0\r\n\r\n" + SMUGGLED, 400, 501)


@check(*SERVERS)
def te_identity(t: Target) -> tuple[str, str, bool]:
    p = req(t, f"POST {post_path(t)} HTTP/1.1", "Transfer-Encoding: identity", "Content-Length: 2")
    return _one_answer(t, p + b"{}", 400, 501)


@check(*SERVERS)
def te_gzip_chunked(t: Target) -> tuple[str, str, bool]:
    p = req(t, f"POST {post_path(t)} HTTP/1.1", "Transfer-Encoding: gzip, chunked")
    return _one_answer(t, p + b"0\r\n\r\n", 400, 501)


@check(*SERVERS)
def te_chunked_twice(t: Target) -> tuple[str, str, bool]:
    p = req(
        t,
        f"POST {post_path(t)} HTTP/1.1",
        "Transfer-Encoding: chunked",
        "Transfer-Encoding: chunked",
    )
    return _one_answer(t, p + b"0\r\n\r\n", 400, 501)


@check(*SERVERS)
def te_obfuscated(t: Target) -> tuple[str, str, bool]:
    p = req(t, f"POST {post_path(t)} HTTP/1.1", "Transfer-Encoding: xchunked", "Content-Length: 5")
    return _one_answer(t, p + b"0\r\n\r\n", 400, 501)


@check(*SERVERS)
def te_with_space_before_colon(t: Target) -> tuple[str, str, bool]:
    p = req(t, f"POST {post_path(t)} HTTP/1.1", "Transfer-Encoding : chunked", "Content-Length: 5")
    return _one_answer(t, p + b"0\r\n\r\n", 400)


@check(*SERVERS)
def te_in_http10(t: Target) -> tuple[str, str, bool]:
    p = req(t, f"POST {post_path(t)} HTTP/1.0", "Transfer-Encoding: chunked")
    return _one_answer(t, p + b"0\r\n\r\n" + SMUGGLED, 400, 401, 403, 200, 202, 415, 422)


def _chunked(t: Target, chunks: bytes, *allowed: int) -> tuple[str, str, bool]:
    p = req(
        t,
        f"POST {post_path(t)} HTTP/1.1",
        "Transfer-Encoding: chunked",
        "Content-Type: application/json",
    )
    return _one_answer(t, p + chunks, *allowed)


# Statuses a well-formed chunked POST may get: the body itself is judged by the route.
BODY_OK = (200, 201, 202, 204, 400, 401, 403, 415, 422)


@check(*SERVERS)
def chunk_size_overflow(t: Target) -> tuple[str, str, bool]:
    return _chunked(t, b"ffffffffffffffffffff\r\n" + b"a" * 10 + b"\r\n0\r\n\r\n", 400, 413)


@check(*SERVERS)
def chunk_size_negative(t: Target) -> tuple[str, str, bool]:
    return _chunked(t, b"-2\r\n{}\r\n0\r\n\r\n", 400)


@check(*SERVERS)
def chunk_size_0x(t: Target) -> tuple[str, str, bool]:
    return _chunked(t, b"0x2\r\n{}\r\n0\r\n\r\n", 400)


@check(*SERVERS)
def chunk_size_space(t: Target) -> tuple[str, str, bool]:
    return _chunked(t, b"2 \r\n{}\r\n0\r\n\r\n", 400, *BODY_OK)


@check(*SERVERS)
def chunk_bad_terminator(t: Target) -> tuple[str, str, bool]:
    return _chunked(t, b"2\r\n{}XX0\r\n\r\n", 400)


@check(*SERVERS)
def chunk_bare_lf(t: Target) -> tuple[str, str, bool]:
    return _chunked(t, b"2\n{}\n0\n\n", 400)


@check(*SERVERS)
def chunk_extension(t: Target) -> tuple[str, str, bool]:
    return _chunked(t, b'2;name=value;q="x"\r\n{}\r\n0\r\n\r\n', *BODY_OK)


@check(*SERVERS)
def chunk_extension_huge(t: Target) -> tuple[str, str, bool]:
    return _chunked(t, b"2;" + b"a" * 1_000_000 + b"\r\n{}\r\n0\r\n\r\n", 400, 413, 431)


@check(*SERVERS)
def chunk_trailers(t: Target) -> tuple[str, str, bool]:
    return _chunked(t, b"2\r\n{}\r\n0\r\nX-Trailer: v\r\n\r\n", *BODY_OK)


@check(*SERVERS)
def chunk_trailers_huge(t: Target) -> tuple[str, str, bool]:
    trailers = b"".join(b"X-T%d: %s\r\n" % (i, b"v" * 1000) for i in range(2000))
    return _chunked(t, b"2\r\n{}\r\n0\r\n" + trailers + b"\r\n", 400, 413, 431)


@check(*SERVERS)
def chunked_over_body_limit(t: Target) -> tuple[str, str, bool]:
    # 2 MiB in 64 KiB chunks (max_body_size is 1 MiB by default).
    chunk = b"10000\r\n" + b"a" * 0x10000 + b"\r\n"
    return _chunked(t, chunk * 32 + b"0\r\n\r\n", 413)


@check(*SERVERS)
def get_with_body_not_a_request(t: Target) -> tuple[str, str, bool]:
    # The body of a GET is the body: never a second request.
    p = req(t, f"GET {http_path(t)} HTTP/1.1", f"Content-Length: {len(SMUGGLED)}", body=SMUGGLED)
    return _one_answer(t, p, 200, 400, 413)


@check(*SERVERS)
def pipelined_three(t: Target) -> tuple[str, str, bool]:
    one = req(t, f"GET {http_path(t)} HTTP/1.1")
    answer = exchange(t, one * 3, timeout=3, until=None)
    statuses = answer.statuses
    return "200,200,200", ",".join(map(str, statuses)), statuses == [200, 200, 200]


@check(*SERVERS)
def pipelined_then_garbage(t: Target) -> tuple[str, str, bool]:
    one = req(t, f"GET {http_path(t)} HTTP/1.1")
    answer = exchange(t, one + b"\x00\x01garbage\r\n\r\n", timeout=3)
    statuses = answer.statuses
    observed = ",".join(map(str, statuses)) + (" closed" if answer.closed else "")
    return "200,400 closed", observed, statuses == [200, 400] and answer.closed


@check(*SERVERS)
def pipelined_many(t: Target) -> tuple[str, str, bool]:
    # 2,000 pipelined requests in one write: answered in order, memory bounded.
    one = req(t, f"GET {http_path(t)} HTTP/1.1")
    answer = exchange(
        t, one * 2000 + req(t, f"GET {http_path(t)} HTTP/1.1", "Connection: close"), timeout=20
    )
    n = len(answer.statuses)
    ok = n == 2001 and set(answer.statuses) == {200}
    return "2001 x 200", f"{n} answers {sorted(set(answer.statuses))}", ok


@check(*SERVERS)
def expect_100_continue(t: Target) -> tuple[str, str, bool]:
    p = req(t, f"POST {post_path(t)} HTTP/1.1", "Content-Length: 2", "Expect: 100-continue")
    answer = exchange(t, [p, b"{}"], pause=0.3, timeout=3)
    observed = ",".join(map(str, answer.statuses))
    final = [s for s in answer.statuses if s >= 200]
    return "one final status", observed, len(final) == 1


@check(*SERVERS)
def expect_unknown(t: Target) -> tuple[str, str, bool]:
    p = req(t, f"POST {post_path(t)} HTTP/1.1", "Content-Length: 2", "Expect: teapot")
    return _one_answer(t, p + b"{}", 417, *BODY_OK)


# -- slowloris --------------------------------------------------------------------------------


@check(*SERVERS)
def slowloris_head(t: Target) -> tuple[str, str, bool]:
    # One header line every 0.5 s: the open timeout ends it whatever the pace.
    head = req(t, f"GET {http_path(t)} HTTP/1.1")[:-2]
    pieces = [head] + [b"X-%d: v\r\n" % i for i in range(int(t.slow * 4))]
    answer = exchange(t, pieces, pause=0.5, timeout=t.slow * 3)
    observed = f"{answer.status} closed={answer.closed} after {answer.elapsed:.1f}s"
    return (
        f"408 or close within {t.slow * 3:.0f}s",
        observed,
        answer.closed and answer.status in (None, 408),
    )


@check(*SERVERS)
def slowloris_body(t: Target) -> tuple[str, str, bool]:
    head = req(t, f"POST {post_path(t)} HTTP/1.1", "Content-Length: 1000")
    pieces = [head] + [b"a"] * int(t.slow * 4)
    answer = exchange(t, pieces, pause=0.5, timeout=t.slow * 3)
    observed = f"{answer.status} closed={answer.closed} after {answer.elapsed:.1f}s"
    return f"408/400 or close within {t.slow * 3:.0f}s", observed, answer.closed


@check(*SERVERS)
def slowloris_chunked_body(t: Target) -> tuple[str, str, bool]:
    head = req(t, f"POST {post_path(t)} HTTP/1.1", "Transfer-Encoding: chunked")
    pieces = [head] + [b"1\r\na\r\n"] * int(t.slow * 4)
    answer = exchange(t, pieces, pause=0.5, timeout=t.slow * 3)
    observed = f"{answer.status} closed={answer.closed} after {answer.elapsed:.1f}s"
    return f"408/400 or close within {t.slow * 3:.0f}s", observed, answer.closed


@check(*SERVERS)
def pipelined_no_read(t: Target) -> tuple[str, str, bool]:
    # Requests pipelined for up to 8 s without reading one answer: the server stops reading
    # once its answers back up, instead of queueing them in memory.
    rss0, _ = proc_status(t.pid)
    page = {"native": "/index.html", "asgi": "/http", "hubapp": "/"}[t.profile]
    one = req(t, f"GET {page} HTTP/1.1") * 100
    sock = t.connect()
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
    sock.settimeout(2)
    sent = 0
    deadline = time.monotonic() + 8
    try:
        while sent < 2000 and time.monotonic() < deadline:
            try:
                sock.sendall(one)
            except (TimeoutError, OSError):
                break
            sent += 1
        rss1, _ = proc_status(t.pid)
    finally:
        sock.close()
    grew = None if rss0 is None or rss1 is None else (rss1 - rss0) // 1024
    observed = f"{sent * 100} requests taken, RSS +{grew} MiB"
    return "sending stops, RSS < +64 MiB", observed, sent < 2000 and (grew is None or grew < 64)


@check(*SERVERS)
def idle_after_connect(t: Target) -> tuple[str, str, bool]:
    answer = exchange(t, b"", timeout=t.slow * 3)
    observed = f"closed={answer.closed} after {answer.elapsed:.1f}s"
    return "close", observed, answer.closed


@check(*SERVERS)
def many_half_heads(t: Target) -> tuple[str, str, bool]:
    # 200 connections holding half a head: each closed by the open timeout.
    socks = []
    try:
        for _ in range(200):
            s = t.connect()
            s.sendall(b"GET / HTTP/1.1\r\nHost: x\r\n")
            socks.append(s)
        deadline = time.monotonic() + t.slow * 3
        closed = 0
        for s in socks:
            s.settimeout(max(0.01, deadline - time.monotonic()))
            try:
                while s.recv(65536):
                    pass
                closed += 1
            except TimeoutError:
                pass
            except OSError:
                closed += 1
    finally:
        for s in socks:
            s.close()
    return "200 closed", f"{closed} closed", closed == 200


# -- upgrade abuse ----------------------------------------------------------------------------


@check()
def upgrade_missing_key(t: Target) -> tuple[str, str, bool]:
    status, ws = upgrade(t, ws_path(t), key=None)
    ws.close()
    return "400", str(status), status == 400


@check()
def upgrade_bad_key(t: Target) -> tuple[str, str, bool]:
    status, ws = upgrade(t, ws_path(t), key="not-base64-16-bytes")
    ws.close()
    return "400", str(status), status == 400


@check()
def upgrade_two_keys(t: Target) -> tuple[str, str, bool]:
    status, ws = upgrade(t, ws_path(t), f"Sec-WebSocket-Key: {KEY}")
    ws.close()
    return "400", str(status), status == 400


@check(*SERVERS)  # under uvicorn (hubapp), the handshake is uvicorn's: 400 there
def upgrade_version_8(t: Target) -> tuple[str, str, bool]:
    # RFC 6455 4.4: 426 with the versions the server speaks.
    status, ws = upgrade(t, ws_path(t), version="8")
    ok = status == 426 and b"sec-websocket-version: 13" in ws.response.lower()
    ws.close()
    return "426 + Sec-WebSocket-Version: 13", str(status), ok


@check()
def upgrade_missing_version(t: Target) -> tuple[str, str, bool]:
    status, ws = upgrade(t, ws_path(t), version=None)
    ws.close()
    return "400/426", str(status), status in (400, 426)


@check()
def upgrade_on_post(t: Target) -> tuple[str, str, bool]:
    status, ws = upgrade(t, ws_path(t), "Content-Length: 0", method="POST")
    ws.close()
    return "400/405", str(status), status in (400, 405)


@check(*SERVERS)
def upgrade_http10(t: Target) -> tuple[str, str, bool]:
    sock = t.connect()
    sock.sendall(
        b"GET %s HTTP/1.0\r\nHost: x\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n"
        b"Sec-WebSocket-Key: %s\r\nSec-WebSocket-Version: 13\r\n\r\n"
        % (ws_path(t).encode(), KEY.encode())
    )
    sock.settimeout(3)
    try:
        data = sock.recv(65536)
    except OSError:
        data = b""
    sock.close()
    status = Answer(data, False, 0).status
    return "400/426", str(status), status in (400, 426)


# Plain HTTP on a WebSocket route: the demo and HubApp are ours (426); Starlette's router
# answers 404 for an http scope on a WebSocketRoute, which is the application's call.
@check("native", "hubapp")
def upgrade_not_websocket(t: Target) -> tuple[str, str, bool]:
    sock = t.connect()
    sock.sendall(req(t, f"GET {ws_path(t)} HTTP/1.1", "Upgrade: h2c", "Connection: Upgrade"))
    sock.settimeout(3)
    try:
        data = sock.recv(65536)
    except OSError:
        data = b""
    sock.close()
    got = Answer(data, False, 0).status
    return "400/426", str(got), got in (400, 426)


@check("native", "hubapp")
def plain_get_on_ws_route(t: Target) -> tuple[str, str, bool]:
    return expect_status(t, req(t, f"GET {ws_path(t)} HTTP/1.1"), 400, 426)


@check(*SERVERS)
def upgrade_with_body(t: Target) -> tuple[str, str, bool]:
    # A body on the upgrade request must not become frames.
    status, ws = upgrade(t, ws_path(t), "Content-Length: 6")
    ws.close()
    return "400 (or 101)", str(status), status in (400, 101)


@check(*SERVERS)
def upgrade_bad_extension_params(t: Target) -> tuple[str, str, bool]:
    status, ws = upgrade(
        t, ws_path(t), "Sec-WebSocket-Extensions: permessage-deflate; server_max_window_bits=99"
    )
    ws.close()
    # RFC 7692 5: decline the offer (101 without it) or fail (400).
    declined = status == 101 and b"permessage-deflate" not in ws.response.lower()
    return "400 or 101 without the extension", str(status), status == 400 or declined


@check(*SERVERS)
def upgrade_garbage_extensions(t: Target) -> tuple[str, str, bool]:
    status, ws = upgrade(t, ws_path(t), 'Sec-WebSocket-Extensions: ;;;,,="')
    ws.close()
    return "400 (or 101 without it)", str(status), status in (400, 101)


@check(*SERVERS)
def upgrade_bad_subprotocol(t: Target) -> tuple[str, str, bool]:
    status, ws = upgrade(t, ws_path(t), 'Sec-WebSocket-Protocol: a b,,"c')
    ws.close()
    return "400 (or 101)", str(status), status in (400, 101)


def _raw_upgrade_head(t: Target, path: str, *extra: str, connection: str = "Upgrade") -> bytes:
    return req(
        t,
        f"GET {path} HTTP/1.1",
        "Upgrade: WebSocket",
        f"Connection: {connection}",
        f"Sec-WebSocket-Key: {KEY}",
        "Sec-WebSocket-Version: 13",
        *extra,
    )


@check(*SERVERS)
def upgrade_firefox_connection(t: Target) -> tuple[str, str, bool]:
    # Firefox sends "Connection: keep-alive, Upgrade"; tokens are case-insensitive.
    p = _raw_upgrade_head(t, ws_path(t), connection="keep-alive, upgrade")
    answer = exchange(t, p, timeout=3, until=b"\r\n\r\n")
    return "101", str(answer.status), answer.status == 101


@check(*SERVERS)
def frames_in_the_upgrade_write(t: Target) -> tuple[str, str, bool]:
    # A client may send frames right behind its request, before the 101 arrives.
    p = _raw_upgrade_head(t, ws_path(t)) + frame(1, b"early") + frame(1, b"bird")
    sock = t.connect()
    try:
        sock.sendall(p)
        data = bytearray()
        deadline = time.monotonic() + 5
        while b"\r\n\r\n" not in data and time.monotonic() < deadline:
            sock.settimeout(max(0.01, deadline - time.monotonic()))
            chunk = sock.recv(65536)
            if not chunk:
                break
            data += chunk
        head, _, rest = bytes(data).partition(b"\r\n\r\n")
        ws = WS(sock, rest, head)
        got = [ws.recv_message(5), ws.recv_message(5)]
    finally:
        sock.close()
    return "101, 'early', 'bird'", repr(got), got == [(1, b"early"), (1, b"bird")]


@check(*SERVERS)
def upgrade_pipelined_behind_get(t: Target) -> tuple[str, str, bool]:
    p = req(t, f"GET {http_path(t)} HTTP/1.1") + _raw_upgrade_head(t, ws_path(t))
    answer = exchange(t, p, timeout=3)
    responses = answer.responses
    statuses = [status for status, _, _ in responses]
    # The GET answered first, always; then the upgrade, refused, or left with Connection:
    # close on the GET's answer (RFC 9112 9.6: the client then knows to send it again).
    closing = bool(responses) and b"connection: close" in responses[0][1].lower()
    ok = statuses[:1] == [200] and (statuses[1:] in ([101], [400]) or closing)
    return "200 then 101/400, or 200 closing", ",".join(map(str, statuses)), ok


# -- frames -----------------------------------------------------------------------------------


def _after(
    t: Target, data: bytes, code: int | tuple[int, ...], *, deflate: bool = False
) -> tuple[str, str, bool]:
    """Send ``data`` on a fresh WebSocket: the server must close with ``code`` then EOF."""
    codes = (code,) if isinstance(code, int) else code
    with websocket(t, ws_path(t), deflate=deflate) as ws:
        ws.send(data)
        got = ws.close_code()
        eof = ws.eof(5)
    observed = f"{got}" + (" eof" if eof else " no eof")
    return "/".join(map(str, codes)) + " eof", observed, got in codes and eof


@check(*SERVERS)
def reserved_opcode_3(t: Target) -> tuple[str, str, bool]:
    return _after(t, frame(3, b"x"), 1002)


@check(*SERVERS)
def reserved_opcode_11(t: Target) -> tuple[str, str, bool]:
    return _after(t, frame(0xB, b"x"), 1002)


@check(*SERVERS)
def rsv1_without_extension(t: Target) -> tuple[str, str, bool]:
    return _after(t, frame(1, b"x", rsv=4), 1002)


@check(*SERVERS)
def rsv2_rsv3(t: Target) -> tuple[str, str, bool]:
    return _after(t, frame(1, b"x", rsv=3), 1002)


@check(*SERVERS)
def rsv1_on_ping_with_deflate(t: Target) -> tuple[str, str, bool]:
    return _after(t, frame(9, b"x", rsv=4), 1002, deflate=True)


@check(*SERVERS)
def unmasked_client_frame(t: Target) -> tuple[str, str, bool]:
    return _after(t, frame(1, b"hello", mask=False), 1002)


@check(*SERVERS)
def non_minimal_126(t: Target) -> tuple[str, str, bool]:
    return _after(t, frame(1, b"hello", length_form=126), 1002)


@check(*SERVERS)
def non_minimal_127(t: Target) -> tuple[str, str, bool]:
    return _after(t, frame(1, b"hello", length_form=127), 1002)


@check(*SERVERS)
def length_127_msb(t: Target) -> tuple[str, str, bool]:
    return _after(t, frame(2, b"", length_form=127, length=1 << 63), (1002, 1009))


@check(*SERVERS)
def length_over_limit(t: Target) -> tuple[str, str, bool]:
    return _after(t, frame(2, b"", length_form=127, length=1 << 40), 1009)


@check(*SERVERS)
def control_over_125(t: Target) -> tuple[str, str, bool]:
    return _after(t, frame(9, b"x" * 126), 1002)


@check(*SERVERS)
def fragmented_ping(t: Target) -> tuple[str, str, bool]:
    return _after(t, frame(9, b"x", fin=False), 1002)


@check(*SERVERS)
def fragmented_close(t: Target) -> tuple[str, str, bool]:
    return _after(t, frame(8, close_payload(1000), fin=False), 1002)


@check(*SERVERS)
def continuation_first(t: Target) -> tuple[str, str, bool]:
    return _after(t, frame(0, b"x"), 1002)


@check(*SERVERS)
def new_message_inside_fragmented(t: Target) -> tuple[str, str, bool]:
    return _after(t, frame(1, b"a", fin=False) + frame(1, b"b"), 1002)


@check(*SERVERS)
def invalid_utf8_single(t: Target) -> tuple[str, str, bool]:
    return _after(t, frame(1, b"\xff\xfe"), 1007)


@check(*SERVERS)
def invalid_utf8_split(t: Target) -> tuple[str, str, bool]:
    # U+20AC as E2 82 AC split after E2 82, then a byte that cannot continue it.
    return _after(t, frame(1, b"ok\xe2\x82", fin=False) + frame(0, b"\x41"), 1007)


@check(*SERVERS)
def invalid_utf8_early_fail(t: Target) -> tuple[str, str, bool]:
    # The first fragment alone is already invalid: fail fast, without waiting for FIN.
    with websocket(t, ws_path(t)) as ws:
        ws.send(frame(1, b"\xc0\xaf", fin=False))
        got = ws.close_code(3)
    return "1007 before FIN", str(got), got == 1007


@check(*SERVERS)
def valid_utf8_split(t: Target) -> tuple[str, str, bool]:
    with websocket(t, ws_path(t)) as ws:
        ws.send(frame(1, b"\xe2\x82", fin=False) + frame(0, b"\xac"))
        got = ws.recv_message()
    return "text '\u20ac' echoed", repr(got), got == (1, "\u20ac".encode())


@check(*SERVERS)
def surrogate_utf8(t: Target) -> tuple[str, str, bool]:
    return _after(t, frame(1, b"\xed\xa0\x80"), 1007)


@check(*SERVERS)
def close_one_byte(t: Target) -> tuple[str, str, bool]:
    return _after(t, frame(8, b"\x03"), 1002)


@check(*SERVERS)
def close_code_999(t: Target) -> tuple[str, str, bool]:
    return _after(t, frame(8, close_payload(999)), 1002)


@check(*SERVERS)
def close_code_1005(t: Target) -> tuple[str, str, bool]:
    return _after(t, frame(8, close_payload(1005)), 1002)


@check(*SERVERS)
def close_code_1006(t: Target) -> tuple[str, str, bool]:
    return _after(t, frame(8, close_payload(1006)), 1002)


@check(*SERVERS)
def close_code_1015(t: Target) -> tuple[str, str, bool]:
    return _after(t, frame(8, close_payload(1015)), 1002)


@check(*SERVERS)
def close_code_1016(t: Target) -> tuple[str, str, bool]:
    return _after(t, frame(8, close_payload(1016)), 1002)


@check(*SERVERS)
def close_code_5000(t: Target) -> tuple[str, str, bool]:
    return _after(t, frame(8, close_payload(5000)), 1002)


@check(*SERVERS)
def close_code_3000_echoed(t: Target) -> tuple[str, str, bool]:
    return _after(t, frame(8, close_payload(3000, b"bye")), 3000)


@check(*SERVERS)
def close_empty_echoed(t: Target) -> tuple[str, str, bool]:
    # RFC 6455 5.5.1 / 7.1.5: no status code received: the answer may be empty (1005 here).
    return _after(t, frame(8, b""), (1005, 1000))


@check(*SERVERS)
def close_invalid_utf8_reason(t: Target) -> tuple[str, str, bool]:
    return _after(t, frame(8, close_payload(1000, b"\xff\xfe")), 1007)


@check(*SERVERS)
def data_after_close(t: Target) -> tuple[str, str, bool]:
    with websocket(t, ws_path(t)) as ws:
        ws.send(frame(8, close_payload(1000)) + frame(1, b"late") + frame(3, b"junk"))
        got = ws.close_code()
        eof = ws.eof(5)
    return "1000 eof", f"{got} eof={eof}", got == 1000 and eof


@check(*SERVERS)
def ping_answered(t: Target) -> tuple[str, str, bool]:
    with websocket(t, ws_path(t)) as ws:
        ws.send(frame(9, b"abc"))
        got = ws.recv_frame()
    return "pong 'abc'", repr(got), got == (10, True, b"abc")


@check(*SERVERS)
def unsolicited_pong(t: Target) -> tuple[str, str, bool]:
    with websocket(t, ws_path(t)) as ws:
        ws.send(frame(10, b"x") + frame(1, b"after"))
        got = ws.recv_message()
    return "ignored, then echo", repr(got), got == (1, b"after")


@check(*SERVERS)
def ping_flood(t: Target) -> tuple[str, str, bool]:
    # 20,000 pings in one burst, never reading the pongs: bounded memory; the server either
    # keeps answering (the kernel buffers fill and it stops reading) or closes 1008.
    with websocket(t, ws_path(t)) as ws:
        burst = frame(9, b"p" * 125) * 1000
        sent = 0
        deadline = time.monotonic() + 10
        ws.sock.settimeout(2)
        while sent < 20 and time.monotonic() < deadline:
            try:
                ws.sock.sendall(burst)
            except (TimeoutError, OSError):
                break
            sent += 1
        # Now read: pongs, then maybe a close. Drain for a bounded time.
        pongs = 0
        code = None
        end = time.monotonic() + 10
        while time.monotonic() < end:
            got = ws.recv_frame(2)
            if got is None:
                break
            if got[0] == 10:
                pongs += 1
            elif got[0] == 8:
                code = struct.unpack("!H", got[2][:2])[0] if len(got[2]) >= 2 else 1005
                break
    observed = f"{sent}k pings sent, {pongs} pongs, close={code}"
    return "pongs or 1008", observed, pongs > 0 or code == 1008


@check(*SERVERS)
def many_small_fragments(t: Target) -> tuple[str, str, bool]:
    # 100,000 one-byte fragments of one text message: bounded work, echo or a close.
    with websocket(t, ws_path(t)) as ws:
        data = frame(1, b"a", fin=False) + frame(0, b"a", fin=False) * 99_998 + frame(0, b"a")
        ws.sock.settimeout(10)
        with contextlib.suppress(OSError):
            ws.sock.sendall(data)
        got = ws.recv_message(15)
    observed = "None" if got is None else f"op={got[0]} len={len(got[1])}"
    held = got is not None and (got == (1, b"a" * 100_000) or got[0] == 8)
    return "echo of 100,000 bytes or a close", observed, held


@check(*SERVERS)
def deflate_bomb(t: Target) -> tuple[str, str, bool]:
    # 64 MiB of zeros in ~64 KiB: over every message limit: 1009 before inflating it all.
    comp = zlib.compressobj(9, zlib.DEFLATED, -15)
    data = comp.compress(b"\x00" * (64 * 2**20)) + comp.flush(zlib.Z_SYNC_FLUSH)
    data = data[:-4]  # RFC 7692 7.2.1: the final 00 00 ff ff removed
    status, ws = upgrade(t, ws_path(t), deflate=True)
    try:
        if status != 101 or b"permessage-deflate" not in ws.response.lower():
            return "1009", f"no deflate ({status})", status == 101
        ws.send(frame(2, data, rsv=4))
        got = ws.close_code(10)
    finally:
        ws.close()
    return "1009", str(got), got == 1009


@check(*SERVERS)
def deflate_garbage(t: Target) -> tuple[str, str, bool]:
    status, ws = upgrade(t, ws_path(t), deflate=True)
    try:
        if status != 101 or b"permessage-deflate" not in ws.response.lower():
            return "1007", f"no deflate ({status})", status == 101
        ws.send(frame(1, b"\xff\xff\xff\xff garbage", rsv=4))
        got = ws.close_code()
    finally:
        ws.close()
    return "1007/1002", str(got), got in (1007, 1002)


@check(*SERVERS)
def deflate_rsv1_on_continuation(t: Target) -> tuple[str, str, bool]:
    return _after(t, frame(1, b"a", fin=False) + frame(0, b"a", rsv=4), 1002, deflate=True)


@check(*SERVERS)
def stalled_reader(t: Target) -> tuple[str, str, bool]:
    # Echo 8 MiB to a client that never reads: the server's memory stays bounded (the
    # sampled RSS shows it) and the connection ends when we leave.
    with websocket(t, ws_path(t)) as ws:
        ws.sock.settimeout(5)
        payload = frame(2, b"x" * 65536)
        sent = 0
        deadline = time.monotonic() + 8
        while sent < 128 and time.monotonic() < deadline:
            try:
                ws.sock.sendall(payload)
            except (TimeoutError, OSError):
                break
            sent += 1
    return "sending stops (backpressure)", f"{sent} x 64 KiB accepted", sent < 128


@check(*SERVERS)
def abrupt_reset_mid_frame(t: Target) -> tuple[str, str, bool]:
    with websocket(t, ws_path(t)) as ws:
        ws.send(frame(2, b"x" * 1000)[:500])
        ws.sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
    return "server alive", "reset sent", True


@check(*SERVERS)
def ping_flood_no_read(t: Target) -> tuple[str, str, bool]:
    # Pings for up to 8 s, never reading a pong: the answers must not pile up in the server.
    # It stops reading (its writes are stuck) or coalesces pongs; RSS is sampled after.
    rss0, _ = proc_status(t.pid)
    with websocket(t, ws_path(t)) as ws:
        ws.sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
        burst = frame(9, b"p" * 125) * 1000  # 131 KB
        sent = 0
        deadline = time.monotonic() + 8
        ws.sock.settimeout(2)
        while sent < 800 and time.monotonic() < deadline:
            try:
                ws.sock.sendall(burst)
            except (TimeoutError, OSError):
                break
            sent += 1
        rss1, _ = proc_status(t.pid)
    grew = None if rss0 is None or rss1 is None else (rss1 - rss0) // 1024
    observed = f"{sent * 131 // 1000} MB of pings taken, RSS +{grew} MiB"
    return "sending stops, RSS < +64 MiB", observed, sent < 800 and (grew is None or grew < 64)


@check(*SERVERS)
def half_close_after_request(t: Target) -> tuple[str, str, bool]:
    # The client shuts its side after a whole request: the answer still comes (RFC 9112 9.6).
    answer = exchange(t, req(t, f"GET {http_path(t)} HTTP/1.1"), shut=True, timeout=5)
    observed, held = status_in(answer, 200)
    return "200 then close", observed, held and answer.closed


@check(*SERVERS)
def half_close_mid_head(t: Target) -> tuple[str, str, bool]:
    answer = exchange(t, b"GET / HTTP/1.1\r\nHost: x\r\n", shut=True, timeout=5)
    observed = f"{answer.status} closed={answer.closed} after {answer.elapsed:.1f}s"
    return "400 or close at once", observed, answer.closed and answer.elapsed < 3


@check(*SERVERS)
def ws_half_close(t: Target) -> tuple[str, str, bool]:
    # EOF without a close frame: the server ends the connection (1006 on its side).
    with websocket(t, ws_path(t)) as ws:
        ws.sock.shutdown(socket.SHUT_WR)
        eof = ws.eof(5)
    return "close", f"eof={eof}", eof


@check(*SERVERS)
def many_subprotocols(t: Target) -> tuple[str, str, bool]:
    offers = ", ".join(f"p{i}" for i in range(1500))  # ~9 KB: split over lines to fit
    lines = [f"Sec-WebSocket-Protocol: {offers[i : i + 7000]}" for i in range(0, len(offers), 7000)]
    start = time.monotonic()
    status, ws = upgrade(t, ws_path(t), *[ln.rstrip(", ") for ln in lines])
    ws.close()
    took = time.monotonic() - start
    ok = status in (101, 400, 431) and took < 2
    return "101/400/431 quickly", f"{status} in {took:.2f}s", ok


@check(*SERVERS)
def many_extension_offers(t: Target) -> tuple[str, str, bool]:
    offers = ", ".join(["permessage-deflate; client_max_window_bits"] * 150)
    start = time.monotonic()
    status, ws = upgrade(t, ws_path(t), f"Sec-WebSocket-Extensions: {offers}")
    ws.close()
    took = time.monotonic() - start
    return "101/400 quickly", f"{status} in {took:.2f}s", status in (101, 400) and took < 2


@check("native")
def ws_require_subprotocol(t: Target) -> tuple[str, str, bool]:
    status, ws = upgrade(t, "/ws")
    ws.close()
    return "400", str(status), status == 400


@check("native")
def chat_abuse(t: Target) -> tuple[str, str, bool]:
    # The chat route's own checks: a line before joining, a huge name, a foreign type.
    answers = []
    with websocket(t, "/chat/ws") as ws:
        for m in [
            b'{"op":"publish","topic":"chat","data":{"type":"message","text":"x"}}',
            b'{"op":"publish","topic":"chat","data":{"type":"join","name":"' + b"n" * 5000 + b'"}}',
            b'{"op":"publish","topic":"chat","data":{"type":"leave","name":"bob"}}',
            b'{"op":"publish","topic":"chat","data":[1]}',
        ]:
            ws.send(frame(1, m))
            got = ws.recv_message(5)
            answers.append(b"error" in got[1] if got and got[0] == 1 else got)
    return "4 errors", repr(answers), answers == [True] * 4


@check(*TRANSPORTS)
def pubsub_deflate_bomb(t: Target) -> tuple[str, str, bool]:
    comp = zlib.compressobj(9, zlib.DEFLATED, -15)
    data = comp.compress(b" " * (32 * 2**20)) + comp.flush(zlib.Z_SYNC_FLUSH)
    status, ws = upgrade(t, pubsub(t), deflate=True)
    try:
        if status != 101 or b"permessage-deflate" not in ws.response.lower():
            return "1009", f"no deflate ({status})", status == 101
        ws.send(frame(1, data[:-4], rsv=4))
        got = ws.close_code(10)
    finally:
        ws.close()
    return "1009", str(got), got == 1009


def _publish_many(t: Target, n: int, size: int) -> int:
    """Publish ``n`` messages of ``size`` bytes to topic t on one keep-alive connection."""
    body = _pub(t, b'"' + b"x" * size + b'"')
    one = req(
        t,
        f"POST {t.prefix}/publish HTTP/1.1",
        f"Content-Length: {len(body)}",
        "Content-Type: application/json",
        body=body,
    )
    answer = exchange(t, one * n, timeout=20)
    return answer.statuses.count(200)


@check("hubapp")
def sse_stalled_while_publishing(t: Target) -> tuple[str, str, bool]:
    # 500 x 60 KB (30 MB) published while an event stream is not read: the slow consumer
    # is dropped or held within its backlog; the server's RSS stays bounded.
    rss0, _ = proc_status(t.pid)
    s = t.connect()
    s.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
    s.sendall(req(t, f"GET {t.prefix}/sse?topic=t HTTP/1.1"))
    time.sleep(0.3)
    published = _publish_many(t, 500, 60_000)
    rss1, _ = proc_status(t.pid)
    s.close()
    grew = None if rss0 is None or rss1 is None else (rss1 - rss0) // 1024
    observed = f"{published} published, RSS +{grew} MiB"
    return "RSS < +64 MiB", observed, published == 500 and (grew is None or grew < 64)


@check("hubapp")
def pubsub_stalled_while_publishing(t: Target) -> tuple[str, str, bool]:
    rss0, _ = proc_status(t.pid)
    status, ws = upgrade(t, pubsub(t))
    ws.sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
    ws.send(frame(1, b'{"op":"subscribe","topic":"t"}'))
    time.sleep(0.3)
    published = _publish_many(t, 500, 60_000)
    rss1, _ = proc_status(t.pid)
    ws.close()
    grew = None if rss0 is None or rss1 is None else (rss1 - rss0) // 1024
    observed = f"{published} published, RSS +{grew} MiB"
    return (
        "RSS < +64 MiB",
        observed,
        status == 101 and published == 500 and (grew is None or grew < 64),
    )


@check(*TRANSPORTS)
def sse_last_event_id_many_topics(t: Target) -> tuple[str, str, bool]:
    leid = ",".join(f"t{i}:{i}" for i in range(500))
    return _bad_param(t, f"/sse?topic={_topic(t)}", f"Last-Event-ID: {leid}")


@check(*TRANSPORTS)
def sse_head(t: Target) -> tuple[str, str, bool]:
    answer = exchange(
        t, req(t, f"HEAD {t.prefix}/sse?topic={_topic(t)} HTTP/1.1", "Connection: close"), timeout=5
    )
    observed, held = status_in(answer, 200, 405)
    return (
        "200/405 without a body, closed",
        observed + f" body={len(answer.body)}",
        held and answer.closed,
    )


# -- /pubsub protocol abuse (native and HubApp) ------------------------------------------------


def pubsub(t: Target) -> str:
    return {"native": "/pubsub", "hubapp": f"{t.prefix}/pubsub", "asgi": "/ws"}[t.profile]


def _pubsub_answer(t: Target, messages: list[bytes], *, read: int = 1) -> list[tuple[int, bytes]]:
    out: list[tuple[int, bytes]] = []
    with websocket(t, pubsub(t)) as ws:
        for m in messages:
            ws.send(frame(1, m))
        for _ in range(read):
            got = ws.recv_message(5)
            if got is None:
                break
            out.append(got)
            if got[0] == 8:
                break
    return out


def _pubsub_error(t: Target, message: bytes, want: str) -> tuple[str, str, bool]:
    """``want`` is 'error' (a JSON error, open) or a close code as a string."""
    got = _pubsub_answer(t, [message])
    if not got:
        return want, "nothing", False
    op, payload = got[0]
    if op == 8:
        code = struct.unpack("!H", payload[:2])[0] if len(payload) >= 2 else 1005
        reason = payload[2:].decode(errors="replace")
        return want, f"close {code} {reason!r}", str(code) == want and bool(reason)
    text = payload[:120].decode(errors="replace")
    try:
        is_error = "error" in json.loads(payload)
    except ValueError:
        is_error = False
    return want, text, want == "error" and is_error


@check(*TRANSPORTS)
def pubsub_not_json(t: Target) -> tuple[str, str, bool]:
    return _pubsub_error(t, b"{not json", "1008")


@check(*TRANSPORTS)
def pubsub_json_array(t: Target) -> tuple[str, str, bool]:
    return _pubsub_error(t, b"[1,2,3]", "1008")


@check(*TRANSPORTS)
def pubsub_json_string(t: Target) -> tuple[str, str, bool]:
    return _pubsub_error(t, b'"subscribe"', "1008")


@check(*TRANSPORTS)
def pubsub_json_null(t: Target) -> tuple[str, str, bool]:
    return _pubsub_error(t, b"null", "1008")


@check(*TRANSPORTS)
def pubsub_over_limit(t: Target) -> tuple[str, str, bool]:
    return _pubsub_error(t, b'{"op":"ping","x":"' + b"a" * 2**20 + b'"}', "1009")


@check(*TRANSPORTS)
def pubsub_deep_json(t: Target) -> tuple[str, str, bool]:
    return _pubsub_error(t, b"[" * 30_000 + b"]" * 30_000, "1008")


@check(*TRANSPORTS)
def pubsub_deep_json_object(t: Target) -> tuple[str, str, bool]:
    deep = b'{"op":"publish","topic":"chat","data":' + b"[" * 30_000 + b"]" * 30_000 + b"}"
    got = _pubsub_answer(t, [deep])
    observed = repr(got[0][1][:100]) if got else "nothing"
    ok = bool(got) and (got[0][0] == 8 or b"error" in got[0][1])
    return "error or close", observed, ok


@check(*TRANSPORTS)
def pubsub_huge_int(t: Target) -> tuple[str, str, bool]:
    # int('9' * 50000): Python limits int parsing to 4,300 digits (ValueError).
    m = b'{"op":"subscribe","topic":"ticker","since":' + b"9" * 50_000 + b"}"
    return _pubsub_error(t, m, "1008")


@check(*TRANSPORTS)
def pubsub_binary(t: Target) -> tuple[str, str, bool]:
    with websocket(t, pubsub(t)) as ws:
        ws.send(frame(2, b'{"op":"ping"}'))
        got = ws.close_code()
    return "1003/1008", str(got), got in (1003, 1008)


@check(*TRANSPORTS)
def pubsub_unknown_op(t: Target) -> tuple[str, str, bool]:
    return _pubsub_error(t, b'{"op":"explode"}', "error")


@check(*TRANSPORTS)
def pubsub_op_not_string(t: Target) -> tuple[str, str, bool]:
    return _pubsub_error(t, b'{"op":["subscribe"],"topic":"ticker"}', "error")


@check(*TRANSPORTS)
def pubsub_op_missing(t: Target) -> tuple[str, str, bool]:
    return _pubsub_error(t, b'{"topic":"ticker"}', "error")


@check(*TRANSPORTS)
def pubsub_topic_not_string(t: Target) -> tuple[str, str, bool]:
    return _pubsub_error(t, b'{"op":"subscribe","topic":{"a":1}}', "error")


@check(*TRANSPORTS)
def pubsub_topic_huge(t: Target) -> tuple[str, str, bool]:
    return _pubsub_error(t, b'{"op":"subscribe","topic":"' + b"a" * 50_000 + b'"}', "error")


@check(*TRANSPORTS)
def pubsub_topic_unicode(t: Target) -> tuple[str, str, bool]:
    return _pubsub_error(t, '{"op":"subscribe","topic":"t\u00e9\u202e\\u0000"}'.encode(), "error")


@check(*TRANSPORTS)
def pubsub_since_negative(t: Target) -> tuple[str, str, bool]:
    return _pubsub_error(t, b'{"op":"subscribe","topic":"ticker","since":-5}', "error")


@check(*TRANSPORTS)
def pubsub_since_float(t: Target) -> tuple[str, str, bool]:
    return _pubsub_error(t, b'{"op":"subscribe","topic":"ticker","since":1.5}', "error")


@check(*TRANSPORTS)
def pubsub_since_nan(t: Target) -> tuple[str, str, bool]:
    return _pubsub_error(t, b'{"op":"subscribe","topic":"ticker","since":NaN}', "1008")


@check(*TRANSPORTS)
def pubsub_since_bool(t: Target) -> tuple[str, str, bool]:
    return _pubsub_error(t, b'{"op":"subscribe","topic":"ticker","since":true}', "error")


@check(*TRANSPORTS)
def pubsub_since_huge(t: Target) -> tuple[str, str, bool]:
    return _pubsub_error(t, b'{"op":"subscribe","topic":"ticker","since":1e308}', "error")


@check(*TRANSPORTS)
def pubsub_since_big_int(t: Target) -> tuple[str, str, bool]:
    return _pubsub_error(
        t, b'{"op":"subscribe","topic":"ticker","since":99999999999999999999999}', "error"
    )


@check(*TRANSPORTS)
def pubsub_id_huge(t: Target) -> tuple[str, str, bool]:
    return _pubsub_error(
        t, b'{"op":"publish","topic":"x","data":1,"id":"' + b"i" * 10_000 + b'"}', "error"
    )


@check(*TRANSPORTS)
def pubsub_hello_bad(t: Target) -> tuple[str, str, bool]:
    return _pubsub_error(t, b'{"op":"hello","previous":{"x":[1]}}', "error")


@check(*TRANSPORTS)
def pubsub_hello_huge_previous(t: Target) -> tuple[str, str, bool]:
    return _pubsub_error(t, b'{"op":"hello","previous":"' + b"p" * 50_000 + b'"}', "error")


@check(*TRANSPORTS)
def pubsub_presence_bad(t: Target) -> tuple[str, str, bool]:
    return _pubsub_error(t, b'{"op":"presence","topic":5}', "error")


@check(*TRANSPORTS)
def pubsub_unsubscribe_unknown(t: Target) -> tuple[str, str, bool]:
    return _pubsub_error(t, b'{"op":"unsubscribe","topic":"never"}', "error")


@check(*TRANSPORTS)
def pubsub_duplicate_keys(t: Target) -> tuple[str, str, bool]:
    return _pubsub_error(t, b'{"op":"ping","op":"explode"}', "error")


@check(*TRANSPORTS)
def pubsub_many_subscriptions(t: Target) -> tuple[str, str, bool]:
    # Thousands of distinct topics on one connection: refused past max_subscriptions.
    topic = "ticker" if t.profile == "native" else "t"
    msgs = [b'{"op":"subscribe","topic":"%s%d"}' % (topic.encode(), i) for i in range(5000)]
    with websocket(t, pubsub(t)) as ws:
        ws.sock.settimeout(10)
        with contextlib.suppress(OSError):
            ws.sock.sendall(b"".join(frame(1, m) for m in msgs))
        errors = 0
        code = None
        deadline = time.monotonic() + 15
        while time.monotonic() < deadline:
            got = ws.recv_message(3)
            if got is None:
                break
            if got[0] == 8:
                code = struct.unpack("!H", got[1][:2])[0]
                break
            errors += b"error" in got[1]
    observed = f"{errors} errors, close={code}"
    return "errors or close 1008", observed, code == 1008 or errors > 0


@check(*TRANSPORTS)
def pubsub_subscribe_flood_same(t: Target) -> tuple[str, str, bool]:
    # Subscribe/unsubscribe the same topic 3,000 times: nothing left behind.
    topic = b"ticker" if t.profile == "native" else b"t"
    sub = frame(1, b'{"op":"subscribe","topic":"%s"}' % topic)
    unsub = frame(1, b'{"op":"unsubscribe","topic":"%s"}' % topic)
    with websocket(t, pubsub(t)) as ws:
        ws.sock.settimeout(10)
        with contextlib.suppress(OSError):
            ws.sock.sendall((sub + unsub) * 3000 + frame(1, b'{"op":"ping"}'))
        deadline = time.monotonic() + 15
        pong = False
        code = None
        while time.monotonic() < deadline:
            got = ws.recv_message(3)
            if got is None:
                break
            if got[0] == 8:
                code = struct.unpack("!H", got[1][:2])[0]
                break
            if b'"pong"' in got[1]:
                pong = True
                break
    return "pong (or 1008: rate)", f"pong={pong} close={code}", pong or code == 1008


# -- SSE, long poll, poll, publish ------------------------------------------------------------


def _topic(t: Target) -> str:
    return "ticker" if t.profile == "native" else "t"


def _get(t: Target, path: str, *headers: str, timeout: float = 5.0) -> Answer:
    return exchange(
        t,
        req(t, f"GET {t.prefix}{path} HTTP/1.1", "Connection: close", *headers),
        timeout=timeout,
        until=b"\r\n\r\n",
    )


BAD_SINCE = [
    "-1",
    "-99999999999999999999",
    "99999999999999999999999",
    "abc",
    "1.5",
    "1e3",
    "",
    "0x10",
    "%00",
    "1%20",
    "\u0661".encode().hex(),
]


def _bad_param(t: Target, path: str, *headers: str) -> tuple[str, str, bool]:
    answer = _get(t, path, *headers)
    observed, held = status_in(answer, 400)
    body = answer.body
    if b"Traceback" in answer.data:
        return "400 + JSON error", observed + " traceback", False
    return "400 + JSON error", observed + f" {body[:80]!r}", held


for _transport in ("sse", "longpoll", "poll"):
    for _j, _value in enumerate(BAD_SINCE):

        def _make_since(tr: str, value: str) -> Callable[[Target], tuple[str, str, bool]]:
            def run(t: Target) -> tuple[str, str, bool]:
                return _bad_param(t, f"/{tr}?topic={_topic(t)}&since={value}")

            return run

        CHECKS.append(
            Check(
                f"{_transport}_since_{_value or 'empty'}",
                TRANSPORTS,
                _make_since(_transport, _value),
            )
        )


for _j, _value in enumerate(["-1", "abc", "1.5", "99999999999999999999999", "ticker:x", "\x7f"]):

    def _make_leid(value: str) -> Callable[[Target], tuple[str, str, bool]]:
        def run(t: Target) -> tuple[str, str, bool]:
            return _bad_param(t, f"/sse?topic={_topic(t)}", f"Last-Event-ID: {value}")

        return run

    CHECKS.append(Check(f"sse_last_event_id_{_value!r}", TRANSPORTS, _make_leid(_value)))


@check(*TRANSPORTS)
def sse_last_event_id_huge(t: Target) -> tuple[str, str, bool]:
    return _bad_param(t, f"/sse?topic={_topic(t)}", "Last-Event-ID: " + "9" * 6000)


@check(*TRANSPORTS)
def poll_many_topics(t: Target) -> tuple[str, str, bool]:
    q = "&".join(f"topic=t{i}" for i in range(300))
    return _bad_param(t, f"/sse?{q}")


@check(*TRANSPORTS)
def poll_topic_missing(t: Target) -> tuple[str, str, bool]:
    return _bad_param(t, "/poll")


@check(*TRANSPORTS)
def poll_topic_twice(t: Target) -> tuple[str, str, bool]:
    return _bad_param(t, "/poll?topic=a&topic=b")


@check(*TRANSPORTS)
def poll_since_twice(t: Target) -> tuple[str, str, bool]:
    return _bad_param(t, f"/poll?topic={_topic(t)}&since=1&since=2")


@check(*TRANSPORTS)
def poll_bad_limit(t: Target) -> tuple[str, str, bool]:
    return _bad_param(t, f"/poll?topic={_topic(t)}&since=0&limit=99999999999")


@check(*TRANSPORTS)
def poll_bad_query_encoding(t: Target) -> tuple[str, str, bool]:
    answer = _get(t, "/poll?topic=%ff%fe&since=%zz")
    observed, held = status_in(answer, 400)
    return "400", observed, held


@check(*TRANSPORTS)
def longpoll_many_held(t: Target) -> tuple[str, str, bool]:
    # 100 held long polls, then the clients leave: no request left behind (fd count at the end).
    socks = []
    for _ in range(100):
        s = t.connect()
        s.sendall(req(t, f"GET {t.prefix}/longpoll?topic={_topic(t)}&since=999999999 HTTP/1.1"))
        socks.append(s)
    for s in socks:
        s.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
        s.close()
    return "no leak", "100 held then reset", True


@check(*TRANSPORTS)
def sse_many_then_leave(t: Target) -> tuple[str, str, bool]:
    socks = []
    for _ in range(100):
        s = t.connect()
        s.sendall(req(t, f"GET {t.prefix}/sse?topic={_topic(t)} HTTP/1.1"))
        socks.append(s)
    for s in socks:
        s.close()
    return "no leak", "100 opened then closed", True


@check(*TRANSPORTS)
def sse_stalled_reader(t: Target) -> tuple[str, str, bool]:
    # A stream nobody reads: the server drops it in time, its memory bounded.
    s = t.connect()
    s.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
    s.sendall(req(t, f"GET {t.prefix}/sse?topic={_topic(t)}&since=0 HTTP/1.1"))
    time.sleep(1)
    s.close()
    return "no leak", "stalled 1 s then closed", True


def _publish(t: Target, body: bytes, *headers: str) -> Answer:
    p = req(
        t,
        f"POST {t.prefix}/publish HTTP/1.1",
        f"Content-Length: {len(body)}",
        "Connection: close",
        *headers,
        body=body,
    )
    return exchange(t, p)


def _publish_status(
    t: Target, body: bytes, *allowed: int, headers: tuple[str, ...] = ()
) -> tuple[str, str, bool]:
    answer = _publish(t, body, "Content-Type: application/json", *headers)
    observed, held = status_in(answer, *allowed)
    try:
        error = (
            json.loads(answer.body).get("error") if answer.status and answer.status >= 400 else "-"
        )
    except (ValueError, AttributeError):
        error = None
    observed += f" {answer.body[:60]!r}"
    # The server's own 413 (the head declared too much) is plain text; a route's is JSON.
    return (
        "/".join(map(str, allowed)) + " + error",
        observed,
        held and (bool(error) or answer.status == 413),
    )


def _pub(t: Target, data: bytes, topic: bytes | None = None) -> bytes:
    topic = topic if topic is not None else _topic(t).encode()
    return b'{"topic":"%s","data":%s}' % (topic, data)


@check(*TRANSPORTS)
def publish_not_json(t: Target) -> tuple[str, str, bool]:
    return _publish_status(t, b"{nope", 400)


@check(*TRANSPORTS)
def publish_not_object(t: Target) -> tuple[str, str, bool]:
    return _publish_status(t, b"[1,2]", 400)


@check(*TRANSPORTS)
def publish_invalid_utf8(t: Target) -> tuple[str, str, bool]:
    return _publish_status(t, b'{"topic":"\xff\xfe","data":1}', 400)


@check(*TRANSPORTS)
def publish_deep_json(t: Target) -> tuple[str, str, bool]:
    return _publish_status(t, _pub(t, b"[" * 30_000 + b"]" * 30_000), 400, 403)


@check(*TRANSPORTS)
def publish_huge_int(t: Target) -> tuple[str, str, bool]:
    return _publish_status(t, _pub(t, b"9" * 60_000), 400, 403)


@check(*TRANSPORTS)
def publish_nested_990(t: Target) -> tuple[str, str, bool]:
    # Parses under Python's recursion limit, then fails to serialize deeper in the stack.
    return _publish_status(t, _pub(t, b"[" * 990 + b"]" * 990), 400, 403)


@check(*TRANSPORTS)
def pubsub_publish_nested_990(t: Target) -> tuple[str, str, bool]:
    m = (
        b'{"op":"publish","topic":"%s","data":' % _topic(t).encode()
        + b"[" * 990
        + b"]" * 990
        + b"}"
    )
    return _pubsub_error(t, m, "1008")


@check(*TRANSPORTS)
def pubsub_publish_nan(t: Target) -> tuple[str, str, bool]:
    return _pubsub_error(
        t, b'{"op":"publish","topic":"%s","data":NaN}' % _topic(t).encode(), "1008"
    )


@check(*TRANSPORTS)
def publish_nan(t: Target) -> tuple[str, str, bool]:
    # NaN is not JSON (RFC 8259 6): publishing it would send every subscriber invalid JSON.
    return _publish_status(t, _pub(t, b"NaN"), 400, 403)


@check(*TRANSPORTS)
def publish_too_big(t: Target) -> tuple[str, str, bool]:
    return _publish_status(t, _pub(t, b'"' + b"a" * (2 * 2**20) + b'"'), 413)


@check(*TRANSPORTS)
def publish_bad_topic(t: Target) -> tuple[str, str, bool]:
    return _publish_status(t, _pub(t, b"1", b"a\\u0000b"), 400)


@check(*TRANSPORTS)
def publish_topic_not_string(t: Target) -> tuple[str, str, bool]:
    return _publish_status(t, b'{"topic":["t"],"data":1}', 400)


@check(*TRANSPORTS)
def publish_no_data(t: Target) -> tuple[str, str, bool]:
    return _publish_status(t, b'{"topic":"%s"}' % _topic(t).encode(), 400, 403)


@check(*TRANSPORTS)
def publish_wrong_content_type(t: Target) -> tuple[str, str, bool]:
    answer = _publish(t, _pub(t, b"1"), "Content-Type: text/plain")
    observed, held = status_in(answer, 415)
    return "415", observed, held


@check(*TRANSPORTS)
def publish_get(t: Target) -> tuple[str, str, bool]:
    answer = _get(t, "/publish")
    observed, held = status_in(answer, 405)
    return "405", observed, held


@check(*TRANSPORTS)
def publish_huge_key(t: Target) -> tuple[str, str, bool]:
    return _publish_status(t, _pub(t, b"1"), 400, 403, headers=("Idempotency-Key: " + "k" * 5000,))


@check(*TRANSPORTS)
def publish_ok_or_refused(t: Target) -> tuple[str, str, bool]:
    # The demo refuses every publish (403); the harness's HubApp accepts topics t*.
    allowed = 403 if t.profile == "native" else 200
    answer = _publish(t, _pub(t, b'{"x":1}'), "Content-Type: application/json")
    observed, held = status_in(answer, allowed)
    return str(allowed), observed, held


@check("native")
def metrics_answers(t: Target) -> tuple[str, str, bool]:
    return expect_status(t, req(t, "GET /metrics HTTP/1.1", "Connection: close"), 200, 404)


# -- the ASGI app's own routes ----------------------------------------------------------------


@check("asgi")
def asgi_stream_client_leaves(t: Target) -> tuple[str, str, bool]:
    for _ in range(50):
        s = t.connect()
        s.sendall(req(t, "GET /stream HTTP/1.1"))
        s.recv(100)
        s.close()
    return "no leak", "50 streams left mid-way", True


@check("asgi")
def asgi_post_echo_chunked(t: Target) -> tuple[str, str, bool]:
    p = req(t, "POST /http HTTP/1.1", "Transfer-Encoding: chunked", "Connection: close")
    answer = exchange(t, p + b"3\r\nabc\r\n2\r\nde\r\n0\r\n\r\n")
    observed, held = status_in(answer, 200)
    return "200 'abcde'", observed + f" {answer.body!r}", held and answer.body.endswith(b"abcde")


@check("asgi")
def asgi_ws_handler_error(t: Target) -> tuple[str, str, bool]:
    with websocket(t, "/ws") as ws:
        ws.send(frame(1, b"raise"))
        got = ws.close_code()
    return "1011", str(got), got == 1011


@check("asgi")
def asgi_http_handler_error(t: Target) -> tuple[str, str, bool]:
    answer = exchange(t, req(t, "GET /raise HTTP/1.1", "Connection: close"))
    leaked = b"Traceback" in answer.data or b"boom" in answer.data
    observed, held = status_in(answer, 500)
    return "500, no detail", observed + (" LEAK" if leaked else ""), held and not leaked


def _misbehaving_http(
    name: str, allowed: tuple[int | None, ...]
) -> Callable[[Target], tuple[str, str, bool]]:
    def run(t: Target) -> tuple[str, str, bool]:
        answer = exchange(t, req(t, f"GET /bad/{name} HTTP/1.1"), timeout=5)
        leaked = b"Traceback" in answer.data or b"secret" in answer.data
        observed = f"{answer.status} closed={answer.closed}" + (" LEAK" if leaked else "")
        expected = "/".join(map(str, allowed)) + ", closed, no detail"
        return expected, observed, answer.status in allowed and answer.closed and not leaked

    return run


# An application that breaks ASGI: the server answers 500 if nothing was sent yet, else ends
# the connection (the response is cut), and never sends what the application got wrong.
# None: nothing reached the wire before the close (the head waits for the first body part).
for _name, _allowed in [
    ("no-response", (500,)),
    ("raise-after-start", (200, None)),
    ("start-twice", (200, None)),
    ("body-before-start", (500,)),
    ("bad-status", (500, None)),
    ("bad-header", (500, None)),
    ("wrong-length", (200, None)),
]:
    CHECKS.append(Check(f"asgi_app_{_name}", ("asgi",), _misbehaving_http(_name, _allowed)))


@check("asgi")
def asgi_app_bad_header_not_sent(t: Target) -> tuple[str, str, bool]:
    answer = exchange(t, req(t, "GET /bad/bad-header HTTP/1.1"), timeout=5)
    injected = b"\r\nb: c" in answer.data
    return "no injected header", f"{answer.status} injected={injected}", not injected


@check("asgi")
def asgi_app_wrong_length_no_extra(t: Target) -> tuple[str, str, bool]:
    # More body than Content-Length: the extra bytes would be the next response.
    answer = exchange(
        t, req(t, "GET /bad/wrong-length HTTP/1.1") + req(t, "GET /http HTTP/1.1"), timeout=5
    )
    extra = b"1234567890" + b"1234567890" in answer.data
    observed = f"{answer.statuses} extra={extra} closed={answer.closed}"
    return "no bytes past Content-Length", observed, not extra


@check("asgi")
def asgi_app_short_length_closes(t: Target) -> tuple[str, str, bool]:
    # Less body than Content-Length: only closing the connection ends that response; kept
    # alive, the next response would be read as the rest of its body.
    answer = exchange(
        t, req(t, "GET /bad/short-length HTTP/1.1") + req(t, "GET /http HTTP/1.1"), timeout=5
    )
    observed = f"{answer.data[-60:]!r} closed={answer.closed} after {answer.elapsed:.1f}s"
    held = answer.closed and b"ok" not in answer.data.partition(b"12345")[2]
    return "closed after 12345", observed, held and answer.elapsed < 1.5


@check("asgi")
def asgi_app_ignores_body_then_pipelined(t: Target) -> tuple[str, str, bool]:
    # The application never reads the body, which holds a request: never parsed as one.
    body = b"GET /http HTTP/1.1\r\nHost: x\r\n\r\n"
    p = req(t, "POST /bad/ignores-body HTTP/1.1", f"Content-Length: {len(body)}", body=body)
    answer = exchange(t, p + req(t, "GET /http HTTP/1.1", "Connection: close"), timeout=5)
    statuses = answer.statuses
    return "200,200 (two, not three)", ",".join(map(str, statuses)), statuses == [200, 200]


def _misbehaving_ws(
    name: str, allowed: tuple[int | None, ...]
) -> Callable[[Target], tuple[str, str, bool]]:
    def run(t: Target) -> tuple[str, str, bool]:
        status, ws = upgrade(t, f"/bad/{name}", timeout=t.slow * 3)
        try:
            code = ws.close_code(5) if status == 101 else None
        finally:
            ws.close()
        observed = f"{status} close={code}"
        return "/".join(map(str, allowed)), observed, status in allowed or code in allowed

    return run


for _name, _allowed in [
    ("never-accept", (None, 500, 503, 1011)),  # the open timeout ends it
    ("send-before-accept", (500, 403, 1011)),
    ("accept-twice", (1011, 1000)),
]:
    CHECKS.append(Check(f"asgi_ws_{_name}", ("asgi",), _misbehaving_ws(_name, _allowed)))


# ---------------------------------------------------------------------------------------------
# Running


def alive(t: Target) -> bool:
    path = {"native": "/api/data", "asgi": "/http", "hubapp": f"{t.prefix}/poll?topic={_topic(t)}"}[
        t.profile
    ]
    for _ in range(3):
        try:
            answer = exchange(t, req(t, f"GET {path} HTTP/1.1", "Connection: close"), timeout=5)
        except OSError:
            time.sleep(0.5)
            continue
        if answer.status == 200:
            return True
        time.sleep(0.5)
    return False


def proc_status(pid: int | None) -> tuple[int | None, int | None]:
    """(RSS KiB, open file descriptors) of ``pid``, or (None, None)."""
    if pid is None:
        return None, None
    rss = None
    with contextlib.suppress(OSError), open(f"/proc/{pid}/status") as f:
        for line in f:
            if line.startswith("VmRSS:"):
                rss = int(line.split()[1])
    try:
        fds = len(os.listdir(f"/proc/{pid}/fd"))
    except OSError:
        fds = None
    return rss, fds


@dataclass
class Run:
    results: list[Result] = field(default_factory=list)


def run_checks(t: Target, only: list[str] | None = None, verbose: bool = True) -> list[Result]:
    """Run every check of ``t.profile`` (or those whose names contain one of ``only``)."""
    results: list[Result] = []
    for c in CHECKS:
        if t.profile not in c.profiles:
            continue
        if only and not any(o in c.name for o in only):
            continue
        try:
            expected, observed, held = c.run(t)
        except Exception as exc:  # a check that breaks is a finding too
            expected, observed, held = "-", f"harness: {type(exc).__name__}: {exc}"[:200], False
        ok = alive(t)
        rss, _ = proc_status(t.pid)
        r = Result(c.name, expected, observed, held and ok, ok, rss)
        results.append(r)
        if verbose:
            mark = "ok  " if r.held else "FAIL"
            print(
                f"{mark} {c.name:42} expected {expected:28} observed {observed}"
                + ("" if ok else "  SERVER DOWN")
                + (f"  rss={rss}" if rss else ""),
                flush=True,
            )
    return results


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, required=True)
    parser.add_argument("--profile", choices=ALL, required=True)
    parser.add_argument("--prefix", default="", help="hubapp: where HubApp is mounted")
    parser.add_argument("--pid", type=int, help="the server's process: RSS and fds sampled")
    parser.add_argument("--slow", type=float, default=3.0, help="the server's open timeout, s")
    parser.add_argument("--only", action="append", help="run checks whose name contains this")
    args = parser.parse_args(argv)
    t = Target(args.host, args.port, args.profile, args.prefix, args.pid, args.slow)
    rss0, fds0 = proc_status(t.pid)
    results = run_checks(t, args.only)
    # Connections left behind: give the server its close timeouts, then count its fds.
    fds_ok = True
    if t.pid is not None:
        deadline = time.monotonic() + 30
        fds = None
        while time.monotonic() < deadline:
            _, fds = proc_status(t.pid)
            if fds is not None and fds0 is not None and fds <= fds0 + 1:
                break
            time.sleep(1)
        fds_ok = fds is not None and fds0 is not None and fds <= fds0 + 1
        rss1, _ = proc_status(t.pid)
        peak = max((r.rss_kib or 0) for r in results) if results else 0
        print(f"fds: {fds0} before, {fds} after (left behind: {'no' if fds_ok else 'YES'})")
        print(f"RSS: {rss0} KiB before, {rss1} KiB after, peak sampled {peak} KiB")
    held = sum(r.held for r in results)
    print(f"{held} of {len(results)} checks held")
    for r in results:
        if not r.held:
            print(f"  failed: {r.name}: expected {r.expected}, observed {r.observed}")
    return 0 if held == len(results) and fds_ok else 1


if __name__ == "__main__":
    sys.exit(main())
