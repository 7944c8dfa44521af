from __future__ import annotations

import os
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from fullduplex.protocol.exceptions import InvalidMessage, MessageTooBig
from fullduplex.protocol.http11 import (
    DEFAULT_MAX_BODY_SIZE,
    DEFAULT_MAX_HEAD_SIZE,
    DEFAULT_MAX_HEADER_COUNT,
    DEFAULT_MAX_LINE_SIZE,
    Headers,
    Request,
    RequestParser,
    Response,
    ResponseParser,
    split_head_python,
)

GET = b"GET / HTTP/1.1\r\nHost: example.com\r\n\r\n"
UPGRADE = (
    b"GET /chat HTTP/1.1\r\nHost: example.com\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n\r\n"
)
SWITCHING = b"HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n\r\n"


def requests(data: bytes, **limits: Any) -> list[Request]:
    parser = RequestParser(**limits)
    parser.feed(data)
    out = []
    while (request := parser.next_request()) is not None:
        out.append(request)
    return out


def request_error(data: bytes, **limits: Any) -> InvalidMessage:
    with pytest.raises(InvalidMessage) as info:
        requests(data, **limits)
    return info.value


# -- Headers -------------------------------------------------------------------------------


class TestHeaders:
    def test_case_insensitive_and_ordered(self) -> None:
        h = Headers([("Content-Type", "text/plain"), ("X-A", "1"), ("x-a", "2")])
        assert h.get("content-type") == "text/plain"
        assert h["CONTENT-TYPE"] == "text/plain"
        assert h.get_all("X-a") == ["1", "2"]
        assert h.get("x-a") == "1"
        assert "x-A" in h
        assert "missing" not in h
        assert 42 not in h
        assert h.get("missing") is None
        assert h.get("missing", "default") == "default"
        assert h.get_all("missing") == []
        assert len(h) == 3
        assert list(h) == ["Content-Type", "X-A", "x-a"]
        assert h.items() == [("Content-Type", "text/plain"), ("X-A", "1"), ("x-a", "2")]

    def test_getitem_missing(self) -> None:
        with pytest.raises(KeyError):
            Headers()["Host"]

    def test_setitem_replaces_all_at_first_position(self) -> None:
        h = Headers([("A", "1"), ("B", "2"), ("a", "3"), ("C", "4")])
        h["A"] = "new"
        assert h.items() == [("A", "new"), ("B", "2"), ("C", "4")]
        h["D"] = "5"
        assert h.items()[-1] == ("D", "5")

    def test_add_and_delete(self) -> None:
        h = Headers()
        h.add("Set-Cookie", "a=1")
        h.add("set-cookie", "b=2")
        assert h.get_all("SET-COOKIE") == ["a=1", "b=2"]
        del h["Set-Cookie"]
        assert len(h) == 0
        with pytest.raises(KeyError):
            del h["Set-Cookie"]

    def test_copy_is_independent(self) -> None:
        h = Headers([("A", "1")])
        c = h.copy()
        c.add("B", "2")
        assert len(h) == 1
        assert c == Headers([("a", "1"), ("B", "2")])

    def test_equality_and_repr(self) -> None:
        assert Headers([("A", "1")]) == Headers([("a", "1")])
        assert Headers([("A", "1")]) != Headers([("A", "2")])
        assert Headers() != object()
        assert repr(Headers([("A", "1")])) == "Headers([('A', '1')])"
        with pytest.raises(TypeError):
            hash(Headers())

    @pytest.mark.parametrize("value", ["a\r\nSet-Cookie: x", "a\nb", "a\rb", "a\x00b"])
    def test_response_splitting_values_refused(self, value: str) -> None:
        with pytest.raises(ValueError, match="CR, LF or NUL"):
            Headers([("X", value)])
        h = Headers()
        with pytest.raises(ValueError):
            h.add("X", value)
        with pytest.raises(ValueError):
            h["X"] = value

    @pytest.mark.parametrize("name", ["", "Bad Name", "X:", "X\r\n", "é"])
    def test_invalid_names_refused(self, name: str) -> None:
        with pytest.raises(ValueError, match="invalid header name"):
            Headers().add(name, "v")
        with pytest.raises(ValueError):
            Headers()[name] = "v"


# -- Request and Response --------------------------------------------------------------------


class TestRequest:
    @pytest.mark.parametrize(
        ("target", "path", "query"),
        [
            ("/", "/", {}),
            (
                "/chat%20room/a?x=1&x=2&y=&z",
                "/chat room/a",
                {"x": ["1", "2"], "y": [""], "z": [""]},
            ),
            ("/a%2Fb?q=%C3%A9", "/a/b", {"q": ["é"]}),
            ("http://example.com/p?a=1", "/p", {"a": ["1"]}),
            ("http://example.com", "/", {}),
            ("*", "*", {}),
            ("example.com:443", "example.com:443", {}),
        ],
    )
    def test_path_and_query(self, target: str, path: str, query: dict[str, list[str]]) -> None:
        request = Request("GET", target, Headers())
        assert request.path == path
        assert request.query == query

    @pytest.mark.parametrize(
        ("version", "connection", "keep_alive"),
        [
            ("1.1", None, True),
            ("1.1", "close", False),
            ("1.1", "Upgrade, Close", False),
            ("1.1", "keep-alive", True),
            ("1.0", None, False),
            ("1.0", "Keep-Alive", True),
            ("1.0", "keep-alive, close", False),
        ],
    )
    def test_keep_alive(self, version: str, connection: str | None, keep_alive: bool) -> None:
        headers = Headers() if connection is None else Headers([("Connection", connection)])
        assert Request("GET", "/", headers, version=version).keep_alive is keep_alive

    def test_path_params_default_empty_and_read_only(self) -> None:
        request = Request("GET", "/items/42", Headers())
        assert dict(request.path_params) == {}
        with pytest.raises(TypeError):
            request.path_params["id"] = 1  # type: ignore[index]
        request.path_params = {"id": 42}
        assert request.path_params == {"id": 42}
        # Set by the router, not part of equality: two requests for one target stay equal.
        assert request == Request("GET", "/items/42", Headers())

    def test_serialize_get(self) -> None:
        request = Request("GET", "/chat?x=1", Headers([("Host", "example.com")]))
        assert request.serialize() == b"GET /chat?x=1 HTTP/1.1\r\nHost: example.com\r\n\r\n"

    def test_serialize_adds_content_length(self) -> None:
        request = Request("POST", "/", Headers([("Host", "h")]), b"hello")
        assert request.serialize() == (
            b"POST / HTTP/1.1\r\nHost: h\r\nContent-Length: 5\r\n\r\nhello"
        )
        empty = Request("POST", "/", Headers([("Host", "h")]))
        assert b"Content-Length: 0\r\n" in empty.serialize()

    def test_serialize_keeps_framing_headers(self) -> None:
        chunked = Request("POST", "/", Headers([("Transfer-Encoding", "chunked")]), b"0\r\n\r\n")
        assert b"Content-Length" not in chunked.serialize()
        given_length = Request("PUT", "/", Headers([("content-length", "5")]), b"hello")
        assert given_length.serialize().count(b"ength") == 1

    @pytest.mark.parametrize(
        ("method", "target", "version"),
        [
            ("GET", "/a b", "1.1"),
            ("GET", "/\r\nX: y", "1.1"),
            ("G ET", "/", "1.1"),
            ("GET", "/", "1.1\n"),
        ],
    )
    def test_serialize_refuses_injection(self, method: str, target: str, version: str) -> None:
        with pytest.raises(ValueError, match="start line"):
            Request(method, target, Headers(), version=version).serialize()

    def test_round_trip_through_parser(self) -> None:
        request = Request("POST", "/x?y=1", Headers([("Host", "h"), ("X-A", "é")]), b"body")
        (parsed,) = requests(request.serialize())
        assert parsed.method == "POST"
        assert parsed.target == "/x?y=1"
        assert parsed.headers == Headers([("Host", "h"), ("X-A", "é"), ("Content-Length", "4")])
        assert parsed.body == b"body"
        assert parsed.version == "1.1"


class TestResponse:
    def test_reason_defaults_to_standard_phrase(self) -> None:
        assert Response(101, Headers()).reason == "Switching Protocols"
        assert Response(404, Headers()).reason == "Not Found"
        assert Response(299, Headers()).reason == ""
        assert Response(200, Headers(), reason="Fine").reason == "Fine"

    def test_serialize_adds_content_length(self) -> None:
        response = Response(200, Headers([("Content-Type", "text/plain")]), b"hi")
        assert response.serialize() == (
            b"HTTP/1.1 200 OK\r\nContent-Type: text/plain\r\nContent-Length: 2\r\n\r\nhi"
        )
        assert b"Content-Length: 0\r\n" in Response(404, Headers()).serialize()

    @pytest.mark.parametrize("status", [101, 100, 204, 304])
    def test_no_content_length_without_body(self, status: int) -> None:
        assert b"Content-Length" not in Response(status, Headers()).serialize()

    def test_transfer_encoding_kept(self) -> None:
        response = Response(200, Headers([("Transfer-Encoding", "chunked")]), b"0\r\n\r\n")
        assert b"Content-Length" not in response.serialize()

    def test_serialize_refuses_body_where_forbidden(self) -> None:
        with pytest.raises(ValueError, match="cannot have a body"):
            Response(204, Headers(), b"x").serialize()

    @pytest.mark.parametrize(("status", "reason"), [(200, "OK\r\nX: y"), (99, "x"), (1000, "x")])
    def test_serialize_refuses_bad_status_line(self, status: int, reason: str) -> None:
        with pytest.raises(ValueError, match="status line"):
            Response(status, Headers(), reason=reason).serialize()


# -- RequestParser ---------------------------------------------------------------------------


class TestRequestParser:
    def test_defaults(self) -> None:
        parser = RequestParser()
        assert parser.max_head_size == DEFAULT_MAX_HEAD_SIZE == 16 * 1024
        assert parser.max_header_count == DEFAULT_MAX_HEADER_COUNT == 100
        assert parser.max_line_size == DEFAULT_MAX_LINE_SIZE == 8 * 1024
        assert parser.max_body_size == DEFAULT_MAX_BODY_SIZE == 2**20

    def test_simple_request(self) -> None:
        (request,) = requests(b"GET /a?b=c HTTP/1.1\r\nHost: x\r\nX-Pad:  v \t\r\n\r\n")
        assert request == Request("GET", "/a?b=c", Headers([("Host", "x"), ("X-Pad", "v")]))

    def test_obs_text_values_are_latin1(self) -> None:
        (request,) = requests(b"GET / HTTP/1.1\r\nHost: x\r\nX: caf\xe9\r\n\r\n")
        assert request.headers["X"] == "café"

    def test_incomplete_request(self) -> None:
        parser = RequestParser()
        assert not parser.head_in_progress
        parser.feed(GET[:-1])
        assert parser.head_in_progress
        assert parser.next_request() is None
        parser.feed(GET[-1:])
        assert not parser.head_in_progress
        assert parser.next_request() is not None
        assert parser.next_request() is None

    def test_pipelining(self) -> None:
        post = b"POST /p HTTP/1.1\r\nHost: x\r\nContent-Length: 3\r\n\r\nabc"
        out = requests(GET + post + GET)
        assert [(r.method, r.body) for r in out] == [("GET", b""), ("POST", b"abc"), ("GET", b"")]

    def test_leading_empty_lines_ignored(self) -> None:
        # RFC 7230 3.5: a server SHOULD ignore at least one empty line before a request-line.
        (request,) = requests(b"\r\n" + GET)
        assert request.path == "/"

    def test_chunked_body_and_trailers_dropped(self) -> None:
        data = (
            b"POST / HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n\r\n"
            b"3;ext=1\r\nabc\r\n1\r\n\n\r\n0\r\nTrailer: t\r\n\r\n"
        )
        (request,) = requests(data + GET)[:1]
        assert request.body == b"abc\n"
        assert "Trailer" not in request.headers
        assert len(requests(data + GET)) == 2

    def test_content_length_body_in_pieces(self) -> None:
        parser = RequestParser()
        parser.feed(b"PUT / HTTP/1.1\r\nHost: x\r\nContent-Length: 10\r\n\r\n01234")
        assert parser.head_in_progress
        assert parser.next_request() is None
        parser.feed(b"56789GET")
        request = parser.next_request()
        assert request is not None
        assert request.body == b"0123456789"
        assert parser.head_in_progress  # "GET" of the next one

    def test_upgrade_stops_with_trailing_data(self) -> None:
        parser = RequestParser()
        parser.feed(GET + UPGRADE + b"\x81\x85frame")
        assert parser.upgraded
        assert not parser.head_in_progress
        assert parser.next_request() is not None
        request = parser.next_request()
        assert request is not None
        assert request.headers["Upgrade"] == "websocket"
        assert parser.next_request() is None
        parser.feed(b"more")
        assert parser.trailing_data() == b"\x81\x85framemore"
        assert parser.trailing_data() == b""
        parser.feed_eof()
        assert parser.upgraded

    def test_upgrade_without_trailing_data(self) -> None:
        parser = RequestParser()
        parser.feed(UPGRADE)
        assert parser.upgraded
        assert parser.trailing_data() == b""

    def test_upgrade_request_body_belongs_to_new_protocol(self) -> None:
        head = UPGRADE[:-2] + b"Content-Length: 2\r\n\r\n"
        parser = RequestParser()
        parser.feed(head + b"ab\x88\x80")
        assert parser.upgraded
        assert parser.trailing_data() == b"ab\x88\x80"

    def test_upgrade_needs_connection_upgrade(self) -> None:
        # Without "Connection: upgrade" the Upgrade header is not a protocol switch (RFC 7230
        # 6.7); the handshake refuses it and the parser carries on.
        data = b"GET / HTTP/1.1\r\nHost: x\r\nUpgrade: websocket\r\n\r\n" + GET
        parser = RequestParser()
        parser.feed(data)
        assert not parser.upgraded
        assert parser.next_request() is not None
        assert parser.next_request() is not None

    def test_connect_switches_protocols(self) -> None:
        parser = RequestParser()
        parser.feed(b"CONNECT example.com:443 HTTP/1.1\r\nHost: example.com:443\r\n\r\ntls")
        assert parser.upgraded
        assert parser.trailing_data() == b"tls"

    @pytest.mark.parametrize(
        "first",
        [
            b"GET / HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n",
            b"GET / HTTP/1.0\r\n\r\n",
        ],
    )
    def test_data_after_close_ignored(self, first: bytes) -> None:
        # RFC 7230 6.6: "The server SHOULD NOT process further requests received on that
        # connection."
        parser = RequestParser()
        parser.feed(first + GET)
        parser.feed(b"garbage")
        parser.feed_eof()
        assert parser.next_request() is not None
        assert parser.next_request() is None
        assert not parser.upgraded

    def test_http10_keep_alive(self) -> None:
        data = b"GET / HTTP/1.0\r\nConnection: keep-alive\r\n\r\n"
        out = requests(data + data)
        assert [r.version for r in out] == ["1.0", "1.0"]
        assert out[0].keep_alive

    @pytest.mark.parametrize(
        "data",
        [
            b"NOT HTTP AT ALL\r\n\r\n",
            b"GET / HTTP/1.1\nHost: x\n\n",
            b"GET / HTTP/1.1\r\nHost: x\r\n folded\r\n\r\n",
            b"GET /\xff HTTP/1.1\r\n\r\n",
            b"GET / HTTP/1.1\r\nBad Name: x\r\n\r\n",
            b"GET / HTTP/1.1\r\nX: \x01\r\n\r\n",
            b"POST / HTTP/1.1\r\nHost: x\r\nContent-Length: 1\r\nContent-Length: 2\r\n\r\n",
            b"POST / HTTP/1.1\r\nHost: x\r\nContent-Length: 2\r\n"
            b"Transfer-Encoding: chunked\r\n\r\n",
            b"POST / HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: gzip\r\n\r\n",
            b"POST / HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n\r\nzz\r\n",
            b"POST / HTTP/1.1\r\nHost: x\r\nContent-Length: -1\r\n\r\n",
        ],
    )
    def test_malformed_is_400(self, data: bytes) -> None:
        exc = request_error(data)
        assert type(exc) is InvalidMessage
        assert exc.status == 400
        assert str(exc).startswith("malformed HTTP message: ")
        assert "\n" not in str(exc)

    @pytest.mark.parametrize(
        ("data", "status", "message"),
        [
            # RFC 9110 15.6.6; llhttp takes any digit.digit. The body was read as HTTP/1.1.
            (b"GET / HTTP/2.0\r\nHost: x\r\n\r\n", 505, "HTTP version not supported"),
            (b"GET / HTTP/0.9\r\nHost: x\r\n\r\n", 505, "HTTP version not supported"),
            (
                b"POST / HTTP/2.0\r\nHost: x\r\nContent-Length: 2\r\n\r\n{}",
                505,
                "HTTP version not supported",
            ),
            # RFC 9112 6.1: an unknown coding gets 501. llhttp checks that chunked is last,
            # then passed the body on still gzip-encoded.
            (
                b"POST / HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: gzip, chunked\r\n\r\n0\r\n\r\n",
                501,
                "Transfer-Encoding not supported: only chunked",
            ),
            (
                b"POST / HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: x\r\n"
                b"Transfer-Encoding: chunked\r\n\r\n0\r\n\r\n",
                501,
                "Transfer-Encoding not supported: only chunked",
            ),
        ],
    )
    def test_version_and_coding_refused(self, data: bytes, status: int, message: str) -> None:
        for chunks in ([data], [data[i : i + 1] for i in range(len(data))]):
            parser = RequestParser()
            with pytest.raises(InvalidMessage) as info:
                for chunk in chunks:
                    parser.feed(chunk)
                parser.next_request()
            assert (info.value.status, str(info.value)) == (status, message)

    def test_chunked_in_any_case_is_read(self) -> None:
        data = (
            b"POST / HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: Chunked \r\n\r\n2\r\n{}\r\n0\r\n\r\n"
        )
        assert [r.body for r in requests(data)] == [b"{}"]

    def test_host_required_once(self) -> None:
        # RFC 7230 5.4.
        assert str(request_error(b"GET / HTTP/1.1\r\n\r\n")) == "missing Host header"
        dup = b"GET / HTTP/1.1\r\nHost: a\r\nHost: b\r\n\r\n"
        assert str(request_error(dup)) == "duplicate Host header"
        assert requests(b"GET / HTTP/1.0\r\n\r\n")[0].headers.get("Host") is None

    def test_parser_is_dead_after_error(self) -> None:
        parser = RequestParser()
        with pytest.raises(InvalidMessage) as first:
            parser.feed(b"BAD\r\n")
        with pytest.raises(InvalidMessage) as again:
            parser.feed(GET)
        assert again.value is first.value
        with pytest.raises(InvalidMessage):
            parser.next_request()
        with pytest.raises(InvalidMessage):
            parser.feed_eof()
        assert not parser.head_in_progress
        assert not parser.upgraded

    def test_error_after_queued_requests_is_deferred(self) -> None:
        # Earlier pipelined requests are answered before the error is reported.
        parser = RequestParser()
        parser.feed(GET + GET + b"BAD\r\n")
        parser.feed(b"ignored")
        assert parser.next_request() is not None
        assert parser.next_request() is not None
        with pytest.raises(InvalidMessage):
            parser.next_request()
        with pytest.raises(InvalidMessage):
            parser.feed(b"")

    def test_eof_errors_wait_for_queued_requests(self) -> None:
        parser = RequestParser()
        parser.feed(GET + b"GET / HT")
        parser.feed_eof()
        parser.feed_eof()
        assert parser.next_request() is not None
        with pytest.raises(InvalidMessage, match="middle"):
            parser.next_request()

    def test_eof_in_the_middle(self) -> None:
        parser = RequestParser()
        parser.feed(b"GET / HT")
        with pytest.raises(InvalidMessage, match="connection closed in the middle"):
            parser.feed_eof()

    def test_eof_between_requests(self) -> None:
        parser = RequestParser()
        parser.feed(GET)
        parser.feed_eof()
        parser.feed(GET)  # ignored: the connection is closed
        assert parser.next_request() is not None
        assert parser.next_request() is None


class TestRequestLimits:
    def test_line_too_long(self) -> None:
        data = b"GET /" + b"a" * 100 + b" HTTP/1.1\r\nHost: x\r\n\r\n"
        exc = request_error(data, max_line_size=100)
        assert isinstance(exc, MessageTooBig)
        assert (exc.status, str(exc)) == (431, "HTTP line too long")
        # The line may be max_line_size bytes, CRLF included.
        line = b"X: " + b"a" * 95 + b"\r\n"
        assert (
            len(requests(b"GET / HTTP/1.1\r\nHost: x\r\n" + line + b"\r\n", max_line_size=100)) == 1
        )
        line = b"X: " + b"a" * 96 + b"\r\n"
        assert (
            request_error(b"GET / HTTP/1.1\r\nHost: x\r\n" + line, max_line_size=100).status == 431
        )

    def test_line_too_long_detected_without_newline(self) -> None:
        parser = RequestParser(max_line_size=100)
        parser.feed(b"GET / HTTP/1.1\r\nX-Big: ")
        with pytest.raises(MessageTooBig, match="line too long"):
            parser.feed(b"a" * 1000)

    def test_head_too_large(self) -> None:
        headers = b"".join(b"X-%d: %s\r\n" % (i, b"a" * 50) for i in range(10))
        data = b"GET / HTTP/1.1\r\nHost: x\r\n" + headers + b"\r\n"
        exc = request_error(data, max_head_size=200)
        assert (type(exc), exc.status, str(exc)) == (MessageTooBig, 431, "HTTP head too large")
        assert len(requests(data, max_head_size=len(data))) == 1
        assert request_error(data, max_head_size=len(data) - 1).status == 431

    def test_too_many_headers(self) -> None:
        def head(count: int) -> bytes:
            fields = b"".join(b"X-%d: v\r\n" % i for i in range(count - 1))
            return b"GET / HTTP/1.1\r\nHost: x\r\n" + fields + b"\r\n"

        assert len(requests(head(5), max_header_count=5)) == 1
        exc = request_error(head(6), max_header_count=5)
        assert (exc.status, str(exc)) == (431, "too many HTTP header fields")

    def test_body_too_large_from_content_length(self) -> None:
        parser = RequestParser(max_body_size=10)
        # Refused as soon as the head is complete, before any body byte arrives.
        with pytest.raises(MessageTooBig) as info:
            parser.feed(b"POST / HTTP/1.1\r\nHost: x\r\nContent-Length: 11\r\n\r\n")
        assert (info.value.status, str(info.value)) == (413, "HTTP body too large")
        ok = b"POST / HTTP/1.1\r\nHost: x\r\nContent-Length: 10\r\n\r\n0123456789"
        assert requests(ok, max_body_size=10)[0].body == b"0123456789"

    def test_chunked_body_too_large_as_it_grows(self) -> None:
        parser = RequestParser(max_body_size=10)
        parser.feed(b"POST / HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n\r\n")
        parser.feed(b"8\r\n01234567\r\n")
        with pytest.raises(MessageTooBig) as info:
            parser.feed(b"100\r\n012")
        assert info.value.status == 413

    def test_chunk_size_line_too_long(self) -> None:
        data = b"POST / HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n\r\n1;" + b"e" * 200
        assert request_error(data, max_line_size=100).status == 431

    def test_chunk_data_is_not_a_line(self) -> None:
        body = b"a" * 500
        data = (
            b"POST / HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n\r\n"
            + b"%x\r\n" % len(body)
            + body
            + b"\r\n0\r\n\r\n"
        )
        assert requests(data, max_line_size=100)[0].body == body

    def test_limits_disabled(self) -> None:
        fields = b"".join(b"X-%d: %s\r\n" % (i, b"v" * 100) for i in range(300))
        data = b"POST / HTTP/1.1\r\nHost: x\r\n" + fields + b"Content-Length: 5000\r\n\r\n"
        data += b"b" * 5000
        unlimited = dict(
            max_head_size=None, max_header_count=None, max_line_size=None, max_body_size=None
        )
        (request,) = requests(data, **unlimited)
        assert len(request.headers) == 302
        limited = dict(max_head_size=100, max_header_count=10, max_line_size=50, max_body_size=10)
        for name, value in limited.items():
            assert request_error(data, **{name: value}).status in (413, 431)

    def test_chunked_body_unlimited(self) -> None:
        data = b"POST / HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n\r\n"
        data += b"ffff\r\n" + b"z" * 0xFFFF + b"\r\n0\r\n\r\n"
        (request,) = requests(data, max_body_size=None, max_line_size=None)
        assert len(request.body) == 0xFFFF

    def test_limits_apply_to_each_request(self) -> None:
        # Counters restart with each pipelined request.
        assert len(requests(GET * 50, max_head_size=len(GET), max_header_count=1)) == 50


# -- ResponseParser --------------------------------------------------------------------------


def responses(data: bytes, *, eof: bool = False, **limits: Any) -> list[Response]:
    parser = ResponseParser(**limits)
    parser.feed(data)
    if eof:
        parser.feed_eof()
    out = []
    while (response := parser.next_response()) is not None:
        out.append(response)
    return out


class TestResponseParser:
    def test_switching_protocols_keeps_frames(self) -> None:
        parser = ResponseParser()
        parser.feed(SWITCHING + b"\x81\x05hello")
        assert parser.upgraded
        response = parser.next_response()
        assert response is not None
        assert (response.status, response.reason) == (101, "Switching Protocols")
        assert response.headers["Upgrade"] == "websocket"
        assert parser.trailing_data() == b"\x81\x05hello"
        parser.feed(b"\x81")
        assert parser.trailing_data() == b"\x81"

    def test_switching_protocols_byte_by_byte(self) -> None:
        parser = ResponseParser()
        for byte in SWITCHING + b"\x8a\x00":
            parser.feed(bytes([byte]))
        assert parser.upgraded
        assert parser.trailing_data() == b"\x8a\x00"

    def test_101_without_upgrade_headers(self) -> None:
        # llhttp reports this case differently; it still ends the HTTP part.
        parser = ResponseParser()
        parser.feed(b"HTTP/1.1 101 Switching Protocols\r\n\r\n\x81\x00")
        assert parser.upgraded
        response = parser.next_response()
        assert response is not None
        assert "Upgrade" not in response.headers
        assert parser.trailing_data() == b"\x81\x00"

    def test_error_response_with_content_length(self) -> None:
        (response,) = responses(
            b"HTTP/1.1 403 Forbidden\r\nContent-Length: 6\r\nConnection: close\r\n\r\ngo away"
        )
        assert (response.status, response.reason, response.body) == (403, "Forbidden", b"go awa")

    def test_body_read_to_eof(self) -> None:
        data = b"HTTP/1.1 400 Bad Request\r\nContent-Type: text/plain\r\n\r\nno\r\nway"
        parser = ResponseParser()
        parser.feed(data)
        assert parser.head_in_progress
        assert parser.next_response() is None
        parser.feed_eof()
        response = parser.next_response()
        assert response is not None
        assert response.body == b"no\r\nway"
        parser.feed_eof()
        parser.feed(b"ignored")
        assert parser.next_response() is None

    @pytest.mark.parametrize(
        "head, body",
        [
            (b"HTTP/1.1 400 Bad\r\n\r\n", b"x" * 20),  # read to EOF
            (b"HTTP/1.1 403 No\r\nContent-Length: 20\r\n\r\n", b"x" * 20),
            (b"HTTP/1.1 503 Busy\r\nTransfer-Encoding: chunked\r\n\r\n", b"14\r\n" + b"x" * 20),
        ],
    )
    def test_body_over_limit_is_cut_and_ends_the_response(self, head: bytes, body: bytes) -> None:
        # Issue 15: a refused handshake with a large body must give the client its status
        # (InvalidStatus), not MessageTooBig. The body is cut at the limit; nothing after it
        # is parsed.
        parser = ResponseParser(max_body_size=10)
        for byte in head + body:  # the same at every chunk boundary
            parser.feed(bytes([byte]))
        response = parser.next_response()
        assert response is not None
        assert (response.status, response.body) == (int(head[9:12]), b"x" * 10)
        parser.feed(SWITCHING)
        parser.feed_eof()
        assert parser.next_response() is None
        assert not parser.upgraded

    def test_interim_responses_skipped(self) -> None:
        data = b"HTTP/1.1 100 Continue\r\n\r\nHTTP/1.1 103 Early Hints\r\nLink: </a>\r\n\r\n"
        (response,) = responses(data + SWITCHING)
        assert response.status == 101

    def test_chunked_response_and_pipelined(self) -> None:
        chunked = b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n2\r\nhi\r\n0\r\n\r\n"
        empty = b"HTTP/1.1 204 No Content\r\n\r\n"
        out = responses(chunked + empty + SWITCHING)
        assert [(r.status, r.body) for r in out] == [(200, b"hi"), (204, b""), (101, b"")]

    def test_chunked_response_cut_by_eof(self) -> None:
        parser = ResponseParser()
        parser.feed(b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n2\r\nhi\r\n")
        with pytest.raises(InvalidMessage, match="middle"):
            parser.feed_eof()

    def test_content_length_cut_by_eof(self) -> None:
        parser = ResponseParser()
        parser.feed(b"HTTP/1.1 200 OK\r\nContent-Length: 5\r\n\r\nab")
        with pytest.raises(InvalidMessage, match="middle"):
            parser.feed_eof()

    def test_eof_before_anything(self) -> None:
        parser = ResponseParser()
        parser.feed_eof()
        assert parser.next_response() is None

    def test_malformed(self) -> None:
        with pytest.raises(InvalidMessage, match="malformed"):
            responses(b"HTTP/1.1 abc OK\r\n\r\n")

    def test_too_large_head(self) -> None:
        with pytest.raises(MessageTooBig):
            responses(SWITCHING, max_head_size=20)

    def test_error_after_response_deferred(self) -> None:
        parser = ResponseParser()
        parser.feed(b"HTTP/1.1 200 OK\r\nContent-Length: 0\r\n\r\nnot http\r\n")
        assert parser.next_response() is not None
        with pytest.raises(InvalidMessage):
            parser.next_response()


# -- chunk boundaries (hypothesis) -----------------------------------------------------------

# Messages built from these lines: mostly valid, sometimes over a limit or corrupted.
_REQUEST_LINES = [b"GET / HTTP/1.1\r\n", b"POST /p?q=1 HTTP/1.1\r\n", b"GET / HTTP/1.0\r\n"]
_STATUS_LINES = [
    b"HTTP/1.1 101 Switching Protocols\r\n",
    b"HTTP/1.1 200 OK\r\n",
    b"HTTP/1.1 100 Continue\r\n",
    b"HTTP/1.1 204 No Content\r\n",
    b"HTTP/1.0 403 Forbidden\r\n",
]
_HEADER_LINES = [
    b"X-A: 1\r\n",
    b"X-Long: " + b"v" * 30 + b"\r\n",
    b"X-Too-Long: " + b"v" * 40 + b"\r\n",
    b"Content-Length: 3\r\n",
    b"Content-Length: 30\r\n",
    b"Transfer-Encoding: chunked\r\n",
    b"Connection: close\r\n",
    b"Upgrade: websocket\r\nConnection: Upgrade\r\n",
]
_BODY_PIECES = [
    b"abc",
    b"3\r\na\nc\r\n",
    b"f;ext=" + b"e" * 40 + b"\r\n" + b"x" * 15 + b"\r\n",
    b"0\r\n\r\n",
    b"0\r\nTrailer: x\r\n\r\n",
    b"\x81\x82frame",
]
_SMALL_LIMITS = dict(max_head_size=150, max_header_count=4, max_line_size=50, max_body_size=20)


@st.composite
def http_streams(draw: st.DrawFn, start_lines: list[bytes]) -> bytes:
    parts: list[bytes] = []
    for _ in range(draw(st.integers(1, 3))):
        parts.append(draw(st.sampled_from(start_lines)))
        if draw(st.integers(0, 9)):
            parts.append(b"Host: example.com\r\n")
        parts += draw(st.lists(st.sampled_from(_HEADER_LINES), max_size=5))
        parts.append(b"\r\n")
        parts += draw(st.lists(st.sampled_from(_BODY_PIECES), max_size=3))
    data = b"".join(parts)
    if draw(st.integers(0, 4)) == 0:  # corrupt it
        at = draw(st.integers(0, len(data)))
        data = data[:at] + draw(st.binary(min_size=1, max_size=3)) + data[at:]
    return data


streams = http_streams(_REQUEST_LINES)
response_streams = http_streams(_STATUS_LINES)
valid_requests = st.lists(
    st.sampled_from(
        [
            GET,
            UPGRADE + b"\x81\x80mask",
            b"POST / HTTP/1.1\r\nHost: h\r\nContent-Length: 3\r\n\r\nabc",
            b"POST / HTTP/1.1\r\nHost: h\r\nTransfer-Encoding: chunked\r\n\r\n"
            b"3\r\na\nc\r\n0\r\n\r\n",
        ]
    ),
    min_size=1,
    max_size=6,
).map(b"".join)


def split(data: bytes, cuts: list[int]) -> list[bytes]:
    points = sorted({c % (len(data) + 1) for c in cuts})
    return [data[a:b] for a, b in zip([0, *points], [*points, len(data)], strict=True)]


def run(parser: RequestParser | ResponseParser, chunks: list[bytes], eof: bool) -> Any:
    """Everything observable: messages, the error, the upgrade and the trailing data."""
    messages: list[Any] = []
    take = parser.next_request if isinstance(parser, RequestParser) else parser.next_response
    try:
        for chunk in chunks:
            parser.feed(chunk)
            while (message := take()) is not None:
                messages.append(message)
        if eof:
            parser.feed_eof()
        while (message := take()) is not None:
            messages.append(message)
    except InvalidMessage as exc:
        return messages, (type(exc), exc.status, str(exc))
    return messages, None, parser.upgraded, parser.trailing_data(), parser.head_in_progress


@settings(max_examples=300, deadline=None)
@given(data=streams, cuts=st.lists(st.integers(min_value=0), max_size=30), eof=st.booleans())
def test_requests_same_at_any_chunk_boundary(data: bytes, cuts: list[int], eof: bool) -> None:
    whole = run(RequestParser(**_SMALL_LIMITS), [data], eof)
    assert run(RequestParser(**_SMALL_LIMITS), split(data, cuts), eof) == whole


@settings(max_examples=300, deadline=None)
@given(
    data=response_streams, cuts=st.lists(st.integers(min_value=0), max_size=30), eof=st.booleans()
)
def test_responses_same_at_any_chunk_boundary(data: bytes, cuts: list[int], eof: bool) -> None:
    whole = run(ResponseParser(**_SMALL_LIMITS), [data], eof)
    assert run(ResponseParser(**_SMALL_LIMITS), split(data, cuts), eof) == whole


@settings(max_examples=100, deadline=None)
@given(data=streams)
def test_requests_same_byte_by_byte(data: bytes) -> None:
    whole = run(RequestParser(**_SMALL_LIMITS), [data], True)
    one_by_one = [data[i : i + 1] for i in range(len(data))]
    assert run(RequestParser(**_SMALL_LIMITS), one_by_one, True) == whole


@settings(max_examples=100, deadline=None)
@given(data=valid_requests, cuts=st.lists(st.integers(min_value=0), max_size=10))
def test_valid_requests_parse_at_any_boundary(data: bytes, cuts: list[int]) -> None:
    outcome = run(RequestParser(), split(data, cuts), False)
    assert outcome[1] is None
    assert outcome[0]


@settings(max_examples=300, deadline=None)
@given(data=st.binary(max_size=200), response=st.booleans())
def test_arbitrary_bytes_give_messages_or_our_error(data: bytes, response: bool) -> None:
    parser = ResponseParser(**_SMALL_LIMITS) if response else RequestParser(**_SMALL_LIMITS)
    run(parser, [data], True)  # raises nothing but InvalidMessage, which run() catches


def test_headers_share_equal_fields_through_a_table() -> None:
    table: dict[tuple[str, str], tuple[str, str]] = {}
    first = Headers([("Host", "example.com"), ("Sec-WebSocket-Key", "abc"), ("X-A", "1")])
    second = Headers([("Host", "example.com"), ("Sec-WebSocket-Key", "abc"), ("X-A", "1")])
    first.share(table, {"host", "x-a"}, limit=1)  # room for one entry only
    second.share(table, {"host", "x-a"}, limit=1)
    assert first.items() == second.items()  # nothing changed but identity
    assert first.items()[0] is second.items()[0]  # Host shared
    assert first.items()[1] is not second.items()[1]  # the key is never shared
    assert first.items()[2] is not second.items()[2]  # the table was full
    assert list(table) == [("Host", "example.com")]


@pytest.mark.parametrize("split", [None, 5, 40])
def test_whole_head_fast_path_matches_line_by_line(split: int | None) -> None:
    raw = (
        b"POST /chat?room=1 HTTP/1.1\r\nHost: example.com\r\nX-Room: 1\r\n"
        b"Content-Length: 5\r\n\r\nhello"
    )
    results = []
    for limits in ({}, {"max_head_size": None, "max_line_size": None, "max_header_count": None}):
        parser = RequestParser(**limits)  # type: ignore[arg-type]
        chunks = [raw] if split is None else [raw[:split], raw[split:]]
        for chunk in chunks:
            parser.feed(chunk)
        request = parser.next_request()
        assert request is not None
        results.append((request.method, request.target, request.headers.items(), request.body))
    assert results[0] == results[1]
    assert results[0][3] == b"hello"


def test_whole_head_fast_path_still_enforces_header_count() -> None:
    parser = RequestParser(max_header_count=2)
    with pytest.raises(MessageTooBig) as info:
        parser.feed(b"GET / HTTP/1.1\r\nHost: x\r\nA: 1\r\nB: 2\r\n\r\n")
        parser.next_request()
    assert info.value.status == 431


@pytest.mark.parametrize(
    "raw", [b"GET / HTTP/1.1\nHost: x\r\n\r\n", b"GET / HTTP/1.1\r\n\n\r\n\r\n"]
)
def test_whole_head_with_a_bare_lf_fails_as_line_by_line(raw: bytes) -> None:
    errors = []
    for chunks in ([raw], [raw[i : i + 1] for i in range(len(raw))]):
        parser = RequestParser()
        with pytest.raises(InvalidMessage) as info:
            for chunk in chunks:
                parser.feed(chunk)
            parser.next_request()
        errors.append((type(info.value), info.value.status))
    assert errors[0] == errors[1]


class _FieldsByCallback:
    """What llhttp's own header callbacks report (through httptools), for a cross-check."""

    def __init__(self) -> None:
        self.fields: list[tuple[str, str]] = []
        self.done = False

    def on_header(self, name: bytes, value: bytes) -> None:
        if not self.done:  # trailers are not header fields
            self.fields.append((name.decode("latin-1"), value.decode("latin-1").rstrip(" \t")))

    def on_headers_complete(self) -> None:
        self.done = True


_NAMES = st.text("-!#$%&'*+.^_`|~0123456789abcXYZ", min_size=1, max_size=8)
# Values: visible ASCII (colons included), obs-text, and spaces and tabs anywhere.
_VALUES = st.text(' \t:;,=/"abcXYZ0129\x80\xe9\xff', max_size=12)


@settings(max_examples=300, deadline=None)
@given(
    fields=st.lists(st.tuples(_NAMES, _VALUES, st.sampled_from([": ", ":", ":\t", ":  "]))),
    blank_lines=st.lists(st.sampled_from([b"\r\n", b"\n"]), max_size=2),
    response=st.booleans(),
    one_by_one=st.booleans(),
)
def test_fields_are_what_llhttp_reports(
    fields: list[tuple[str, str, str]], blank_lines: list[bytes], response: bool, one_by_one: bool
) -> None:
    """The fields split from the head equal those of llhttp's header callbacks (or both fail).

    Leading empty lines (skipped before a start line), OWS around values, colons in values,
    obs-text; a chunked body with a trailer field, which is not a header field.
    """
    import httptools

    start = b"HTTP/1.1 200 OK\r\n" if response else b"POST /x HTTP/1.1\r\n"
    head = b"".join(blank_lines) + start
    head += b"Host: h\r\n" if not response else b""
    head += b"".join(f"{n}{sep}{v}\r\n".encode("latin-1") for n, v, sep in fields)
    data = head + b"Transfer-Encoding: chunked\r\n\r\n1\r\na\r\n0\r\nTrailer-X: 1\r\n\r\n"
    reference = _FieldsByCallback()
    llhttp = (httptools.HttpResponseParser if response else httptools.HttpRequestParser)(reference)
    try:
        llhttp.feed_data(data)
        expected: Any = reference.fields
    except httptools.HttpParserError:
        expected = InvalidMessage
    parser = ResponseParser() if response else RequestParser()
    try:
        for chunk in [data[i : i + 1] for i in range(len(data))] if one_by_one else [data]:
            parser.feed(chunk)
        message = (
            parser.next_response()
            if isinstance(parser, ResponseParser)
            else (parser.next_request())
        )
        assert message is not None
        got: Any = message.headers.items()
    except InvalidMessage:
        got = InvalidMessage
    assert got == expected


def _split_head_c() -> Any:
    from fullduplex.protocol.mask import load_speedups

    return getattr(load_speedups(), "split_head", None)


@settings(max_examples=500, deadline=None)
@given(
    head=st.lists(
        st.sampled_from(
            [b"\r\n", b"\r", b"\n", b":", b" ", b"\t", b"Host", b"hOsT", b"x", b"\xe9"]
        ),
        max_size=40,
    ).map(b"".join)
)
def test_split_head_c_and_python_agree_on_any_bytes(head: bytes) -> None:
    split_c = _split_head_c()
    if split_c is None:  # pragma: no cover
        if os.environ.get("FULLDUPLEX_REQUIRE_SPEEDUPS") == "1":
            pytest.fail("C accelerator required but not built (or too old for split_head)")
        pytest.skip("C accelerator not built (or too old to have split_head)")
    assert split_c(head) == split_head_python(head)
    assert split_c(bytearray(head)) == split_head_python(bytearray(head))


@settings(max_examples=300, deadline=None)
@given(
    pairs=st.lists(
        st.tuples(
            st.sampled_from(["Host", "HOST", "host", "X-a", "x-A", "É", "ÉT", "a-Z_9"]),
            st.text(max_size=5),
        )
        | st.tuples(st.text(max_size=6), st.text(max_size=3)),
        max_size=12,
    )
)
def test_index_fields_c_and_python_agree(pairs: list[tuple[str, str]]) -> None:
    from fullduplex.protocol.http11 import index_fields_python
    from fullduplex.protocol.mask import load_speedups

    index_c = getattr(load_speedups(), "index_fields", None)
    if index_c is None:  # pragma: no cover
        if os.environ.get("FULLDUPLEX_REQUIRE_SPEEDUPS") == "1":
            pytest.fail("C accelerator required but not built (or too old for index_fields)")
        pytest.skip("C accelerator not built (or too old to have index_fields)")
    expected = index_fields_python(pairs)
    assert index_c(pairs) == expected
    assert list(index_c(pairs)) == list(expected)  # the same order
    headers = Headers.from_wire(list(pairs))
    assert headers.by_name() == expected
    for name in ("host", "Host", "x-a", "é", "missing"):
        assert headers.get(name) == Headers.from_wire(list(pairs)).get(name)
        assert headers.get_all(name) == Headers.from_wire(list(pairs)).get_all(name)


@settings(max_examples=300, deadline=None)
@given(
    fields=st.lists(
        st.tuples(st.sampled_from(["Host", "HOST", "X-A", "Key", "É"]), st.sampled_from("ab")),
        max_size=10,
    ),
    known=st.lists(st.tuples(st.sampled_from(["Host", "X-A", "Key"]), st.sampled_from("ab"))),
    limit=st.integers(0, 6),
)
def test_share_fields_c_and_python_agree(
    fields: list[tuple[str, str]], known: list[tuple[str, str]], limit: int
) -> None:
    from fullduplex.protocol.http11 import share_fields_python
    from fullduplex.protocol.mask import load_speedups

    share_c = getattr(load_speedups(), "share_fields", None)
    if share_c is None:  # pragma: no cover
        if os.environ.get("FULLDUPLEX_REQUIRE_SPEEDUPS") == "1":
            pytest.fail("C accelerator required but not built (or too old for share_fields)")
        pytest.skip("C accelerator not built (or too old to have share_fields)")
    names = frozenset({"host", "x-a", "é"})
    outcomes = []
    for share in (share_c, share_fields_python):
        pairs = [(n, v) for n, v in fields]  # new tuples: equal to the table's, not them
        table = {pair: pair for pair in {(n, v) for n, v in known}}
        table_before = dict(table)
        share(pairs, table, names, limit)
        assert pairs == fields  # equal fields, in order
        outcomes.append(
            (
                [p is table_before.get(p) for p in pairs],  # which ones are the old copies
                sorted(table),
                [table[p] is p for p in pairs if p in table],
            )
        )
    assert outcomes[0] == outcomes[1]
