from __future__ import annotations

import base64
import re
from collections.abc import Iterable, Sequence

import pytest
from hypothesis import given
from hypothesis import strategies as st
from wsproto import ConnectionType, WSConnection
from wsproto import events as wsevents
from wsproto.extensions import Extension as WsprotoExtension
from wsproto.extensions import PerMessageDeflate

from fullduplex.protocol.exceptions import (
    InvalidHandshake,
    InvalidHeader,
    InvalidOrigin,
    InvalidStatus,
    InvalidUpgrade,
    LocalProtocolError,
    NegotiationError,
)
from fullduplex.protocol.extensions import (
    ClientExtensionFactory,
    Extension,
    ExtensionParameter,
    ServerExtensionFactory,
)
from fullduplex.protocol.frames import Frame
from fullduplex.protocol.handshake import (
    GUID,
    Accepted,
    ClientHandshake,
    ServerHandshake,
    accept_key,
    build_extension_header,
    build_subprotocol_header,
    generate_key,
    parse_connection,
    parse_extension_header,
    parse_subprotocol_header,
    parse_upgrade,
)
from fullduplex.protocol.http11 import Headers, Request, RequestParser, Response, ResponseParser

# RFC 6455 1.3 and 4.2.2.
RFC_KEY = "dGhlIHNhbXBsZSBub25jZQ=="
RFC_ACCEPT = "s3pPLMBiTxaQ9kYGzzhZRbK+xOo="
RFC_REQUEST = (
    b"GET /chat HTTP/1.1\r\n"
    b"Host: server.example.com\r\n"
    b"Upgrade: websocket\r\n"
    b"Connection: Upgrade\r\n"
    b"Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\n"
    b"Origin: http://example.com\r\n"
    b"Sec-WebSocket-Protocol: chat, superchat\r\n"
    b"Sec-WebSocket-Version: 13\r\n"
    b"\r\n"
)


def parse_request(data: bytes) -> Request:
    parser = RequestParser()
    parser.feed(data)
    request = parser.next_request()
    assert request is not None
    return request


def parse_response(data: bytes) -> tuple[Response, bytes]:
    parser = ResponseParser()
    parser.feed(data)
    response = parser.next_response()
    assert response is not None
    return response, parser.trailing_data()


def make_request(*extra: tuple[str, str], drop: Sequence[str] = (), method: str = "GET") -> Request:
    headers = [
        ("Host", "example.com"),
        ("Upgrade", "websocket"),
        ("Connection", "Upgrade"),
        ("Sec-WebSocket-Key", RFC_KEY),
        ("Sec-WebSocket-Version", "13"),
    ]
    headers = [(n, v) for n, v in headers if n not in drop]
    return Request(method, "/chat", Headers([*headers, *extra]))


# -- fake extensions -------------------------------------------------------------------------


class FakeExtension(Extension):
    def __init__(self, name: str, params: Sequence[ExtensionParameter]) -> None:
        self.name = name
        self.params = list(params)

    def decode(self, frame: Frame, *, max_size: int | None) -> Frame:
        return frame

    def encode(self, frame: Frame) -> Frame:
        return frame


class FakeServerFactory(ServerExtensionFactory):
    """Accepts offers unless they carry a "refuse" parameter; answers with "ok"."""

    def __init__(self, name: str, tag: str = "ok") -> None:
        self.name = name
        self.tag = tag
        self.seen: list[tuple[list[ExtensionParameter], list[Extension]]] = []

    def process_request_params(
        self, params: Sequence[ExtensionParameter], accepted: Sequence[Extension]
    ) -> tuple[list[ExtensionParameter], Extension]:
        self.seen.append((list(params), list(accepted)))
        if ("refuse", None) in params:
            raise NegotiationError("refused")
        return [(self.tag, None)], FakeExtension(self.name, params)


class FakeClientFactory(ClientExtensionFactory):
    def __init__(self, name: str, params: Sequence[ExtensionParameter] = ()) -> None:
        self.name = name
        self.params = list(params)

    def get_request_params(self) -> list[ExtensionParameter]:
        return list(self.params)

    def process_response_params(
        self, params: Sequence[ExtensionParameter], accepted: Sequence[Extension]
    ) -> Extension:
        if ("bad", None) in params:
            raise NegotiationError("unexpected parameter bad")
        return FakeExtension(self.name, params)


# -- keys ------------------------------------------------------------------------------------


def test_accept_key_rfc_vector() -> None:
    assert GUID == "258EAFA5-E914-47DA-95CA-C5AB0DC85B11"
    assert accept_key(RFC_KEY) == RFC_ACCEPT


def test_generate_key() -> None:
    keys = {generate_key() for _ in range(100)}
    assert len(keys) == 100
    for key in keys:
        assert len(base64.b64decode(key, validate=True)) == 16


# -- header grammars -------------------------------------------------------------------------


class TestTokenLists:
    @pytest.mark.parametrize(
        ("value", "expected"),
        [
            ("Upgrade", ["Upgrade"]),
            ("keep-alive, Upgrade", ["keep-alive", "Upgrade"]),
            (" , upgrade ,,\t", ["upgrade"]),
            ("a,b", ["a", "b"]),
        ],
    )
    def test_connection(self, value: str, expected: list[str]) -> None:
        assert parse_connection(value) == expected

    @pytest.mark.parametrize("value", ["", " , ", "a b", "a;b", "up/grade", '"upgrade"'])
    def test_connection_malformed(self, value: str) -> None:
        with pytest.raises(InvalidHeader, match="invalid Connection header") as info:
            parse_connection(value)
        assert info.value.status == 400

    def test_upgrade(self) -> None:
        assert parse_upgrade("websocket") == ["websocket"]
        assert parse_upgrade("HTTP/2.0, WebSocket") == ["HTTP/2.0", "WebSocket"]
        with pytest.raises(InvalidHeader, match="expected protocol at position 5"):
            parse_upgrade("h2c, /1")

    def test_subprotocols(self) -> None:
        assert parse_subprotocol_header("chat, superchat") == ["chat", "superchat"]
        assert build_subprotocol_header(["chat", "v2.json"]) == "chat, v2.json"
        with pytest.raises(InvalidHeader, match="expected comma at position 5"):
            parse_subprotocol_header("chat superchat")
        with pytest.raises(ValueError, match="not a token"):
            build_subprotocol_header(["two words"])


class TestExtensionHeader:
    @pytest.mark.parametrize(
        ("value", "expected"),
        [
            ("foo", [("foo", [])]),
            ("foo; bar", [("foo", [("bar", None)])]),
            (
                "permessage-deflate; client_max_window_bits, permessage-deflate",
                [
                    ("permessage-deflate", [("client_max_window_bits", None)]),
                    ("permessage-deflate", []),
                ],
            ),
            ("foo;a=1;b = 2 ; c", [("foo", [("a", "1"), ("b", "2"), ("c", None)])]),
            ('foo; a="10"', [("foo", [("a", "10")])]),
            ('foo; a="x\\yz"', [("foo", [("a", "xyz")])]),
            ("a, , b,", [("a", []), ("b", [])]),
            (
                "\tmux; max-channels=4; flow-control, deflate-stream",
                [
                    ("mux", [("max-channels", "4"), ("flow-control", None)]),
                    ("deflate-stream", []),
                ],
            ),
        ],
    )
    def test_parse(self, value: str, expected: list[tuple[str, list[ExtensionParameter]]]) -> None:
        assert parse_extension_header(value) == expected

    @pytest.mark.parametrize(
        ("value", "message"),
        [
            ("", "expected at least one element at position 0"),
            (",", "expected at least one element at position 1"),
            ("foo bar", "expected comma at position 4"),
            ("foo;", "expected parameter name at position 4"),
            ("foo; =1", "expected parameter name at position 5"),
            ("foo; a=", "expected parameter value at position 7"),
            ("foo; a=1 2", "expected comma at position 9"),
            ('foo; a="1', "expected quoted string at position 7"),
            ('foo; a="a b"', "quoted parameter value is not a token at position 7"),
            ('foo; a=""', "quoted parameter value is not a token at position 7"),
            ("foo; a=@", "expected parameter value at position 7"),
            ("=foo", "expected extension token at position 0"),
            ("foo; a=1;", "expected parameter name at position 9"),
        ],
    )
    def test_malformed(self, value: str, message: str) -> None:
        with pytest.raises(InvalidHeader) as info:
            parse_extension_header(value)
        assert str(info.value) == f"invalid Sec-WebSocket-Extensions header: {message}"

    def test_build(self) -> None:
        header = build_extension_header(
            [("permessage-deflate", [("client_max_window_bits", None), ("x", "10")]), ("b", [])]
        )
        assert header == "permessage-deflate; client_max_window_bits; x=10, b"

    @pytest.mark.parametrize(
        "extensions",
        [[("two words", [])], [("a", [("p p", None)])], [("a", [("p", "v v")])]],
    )
    def test_build_refuses_non_tokens(
        self, extensions: list[tuple[str, list[ExtensionParameter]]]
    ) -> None:
        with pytest.raises(ValueError, match="not a token"):
            build_extension_header(extensions)

    @given(
        st.lists(
            st.tuples(
                st.from_regex(r"[a-z0-9_.-]{1,10}", fullmatch=True),
                st.lists(
                    st.tuples(
                        st.from_regex(r"[A-Za-z0-9_-]{1,8}", fullmatch=True),
                        st.none()
                        | st.from_regex(r"[-!#$%&'*+.^_`|~0-9A-Za-z]{1,8}", fullmatch=True),
                    ),
                    max_size=4,
                ),
            ),
            min_size=1,
            max_size=4,
        )
    )
    def test_round_trip(self, extensions: list[tuple[str, list[ExtensionParameter]]]) -> None:
        assert parse_extension_header(build_extension_header(extensions)) == extensions


# -- server ----------------------------------------------------------------------------------


def reject_status(handshake: ServerHandshake, request: Request) -> tuple[int, str]:
    with pytest.raises(InvalidHandshake) as info:
        handshake.process_request(request)
    return info.value.status, str(info.value)


class TestServerHandshake:
    def test_rfc_sample_request(self) -> None:
        request = parse_request(RFC_REQUEST)
        handshake = ServerHandshake(subprotocols=["chat"], origins=["http://example.com"])
        accepted = handshake.process_request(request)
        assert isinstance(accepted, Accepted)
        assert accepted.subprotocol == "chat"
        assert accepted.extensions == []
        assert accepted.response.serialize() == (
            b"HTTP/1.1 101 Switching Protocols\r\n"
            b"Upgrade: websocket\r\n"
            b"Connection: Upgrade\r\n"
            b"Sec-WebSocket-Accept: s3pPLMBiTxaQ9kYGzzhZRbK+xOo=\r\n"
            b"Sec-WebSocket-Protocol: chat\r\n"
            b"Server: fullduplex\r\n"
            b"\r\n"
        )

    def test_rfc_sample_is_cross_origin_by_default(self) -> None:
        # The page at http://example.com is not server.example.com.
        status, message = reject_status(ServerHandshake(), parse_request(RFC_REQUEST))
        assert (status, message) == (403, "cross-origin WebSocket request refused")

    def test_minimal_request(self) -> None:
        accepted = ServerHandshake(server_header=None).process_request(make_request())
        assert accepted.subprotocol is None
        assert accepted.response.status == 101
        assert accepted.response.headers.items() == [
            ("Upgrade", "websocket"),
            ("Connection", "Upgrade"),
            ("Sec-WebSocket-Accept", RFC_ACCEPT),
        ]

    def test_lenient_spellings_accepted(self) -> None:
        request = make_request(drop=["Upgrade", "Connection", "Sec-WebSocket-Key"])
        request.headers.add("upgrade", "WebSocket, h2c")
        request.headers.add("connection", "keep-alive")
        request.headers.add("CONNECTION", "UPGRADE")
        request.headers.add("sec-websocket-key", f" {RFC_KEY} ")
        assert ServerHandshake().process_request(request).response.status == 101

    @pytest.mark.parametrize(
        ("request_", "status", "message", "exc_type"),
        [
            (make_request(method="POST"), 400, "WebSocket handshake requires GET", InvalidUpgrade),
            (make_request(method="HEAD"), 400, "WebSocket handshake requires GET", InvalidUpgrade),
            (
                Request("GET", "/", make_request().headers, version="1.0"),
                400,
                "WebSocket handshake requires HTTP/1.1",
                InvalidUpgrade,
            ),
            (make_request(drop=["Host"]), 400, "missing or duplicate Host header", InvalidHeader),
            (
                make_request(("Host", "other")),
                400,
                "missing or duplicate Host header",
                InvalidHeader,
            ),
            (
                make_request(drop=["Upgrade"]),
                426,
                "Upgrade header must include websocket",
                InvalidUpgrade,
            ),
            (
                make_request(("Upgrade", "h2c"), drop=["Upgrade"]),
                426,
                "Upgrade header must include websocket",
                InvalidUpgrade,
            ),
            (
                make_request(("Upgrade", "web socket"), drop=["Upgrade"]),
                400,
                "invalid Upgrade header: expected comma at position 4",
                InvalidHeader,
            ),
            (
                make_request(drop=["Connection"]),
                400,
                "Connection header must include upgrade",
                InvalidUpgrade,
            ),
            (
                make_request(("Connection", "keep-alive"), drop=["Connection"]),
                400,
                "Connection header must include upgrade",
                InvalidUpgrade,
            ),
            (
                make_request(drop=["Sec-WebSocket-Version"]),
                426,
                "missing Sec-WebSocket-Version header",
                InvalidUpgrade,
            ),
            (
                make_request(("Sec-WebSocket-Version", "8"), drop=["Sec-WebSocket-Version"]),
                426,
                "unsupported WebSocket version: this server speaks 13",
                InvalidUpgrade,
            ),
            (
                make_request(("Sec-WebSocket-Version", "13")),
                426,
                "unsupported WebSocket version: this server speaks 13",
                InvalidUpgrade,
            ),
            (
                make_request(drop=["Sec-WebSocket-Key"]),
                400,
                "missing Sec-WebSocket-Key header",
                InvalidHeader,
            ),
            (
                make_request(("Sec-WebSocket-Key", RFC_KEY)),
                400,
                "duplicate Sec-WebSocket-Key",
                InvalidHeader,
            ),
            *[
                (
                    make_request(("Sec-WebSocket-Key", key), drop=["Sec-WebSocket-Key"]),
                    400,
                    "Sec-WebSocket-Key must be the base64 encoding of 16 bytes",
                    InvalidHeader,
                )
                for key in [
                    "",
                    "not base64!",
                    base64.b64encode(b"x" * 15).decode(),
                    base64.b64encode(b"x" * 17).decode(),
                    "dGhlIHNhbXBsZSBub25jZQ",  # padding missing
                    "dGhlIHNhbXBsZSBub25jZQ==é",
                ]
            ],
            (
                make_request(("Sec-WebSocket-Protocol", "a b")),
                400,
                "invalid Sec-WebSocket-Protocol header: expected comma at position 2",
                InvalidHeader,
            ),
            (
                make_request(("Sec-WebSocket-Extensions", "a;")),
                400,
                "invalid Sec-WebSocket-Extensions header: expected parameter name at position 2",
                InvalidHeader,
            ),
            (
                make_request(("Origin", "http://example.com"), ("Origin", "http://example.com")),
                400,
                "duplicate Origin header",
                InvalidHeader,
            ),
        ],
    )
    def test_failures(
        self, request_: Request, status: int, message: str, exc_type: type[InvalidHandshake]
    ) -> None:
        with pytest.raises(InvalidHandshake) as info:
            ServerHandshake().process_request(request_)
        assert type(info.value) is exc_type
        assert (info.value.status, str(info.value)) == (status, message)

    def test_reject(self) -> None:
        handshake = ServerHandshake()
        response = handshake.reject(InvalidOrigin("Origin not allowed"))
        assert response.serialize() == (
            b"HTTP/1.1 403 Forbidden\r\n"
            b"Content-Type: text/plain; charset=utf-8\r\n"
            b"Connection: close\r\n"
            b"Server: fullduplex\r\n"
            b"Content-Length: 19\r\n"
            b"\r\n"
            b"Origin not allowed\n"
        )

    def test_reject_426_advertises_version(self) -> None:
        request = make_request(("Sec-WebSocket-Version", "8"), drop=["Sec-WebSocket-Version"])
        handshake = ServerHandshake(server_header=None)
        with pytest.raises(InvalidUpgrade) as info:
            handshake.process_request(request)
        response = handshake.reject(info.value)
        assert response.status == 426
        assert response.reason == "Upgrade Required"
        assert response.headers["Sec-WebSocket-Version"] == "13"
        assert response.headers["Upgrade"] == "websocket"
        assert parse_connection(response.headers["Connection"]) == ["Upgrade", "close"]
        assert "Server" not in response.headers

    def test_reject_keeps_one_line(self) -> None:
        response = ServerHandshake().reject(InvalidHandshake("first\nsecond", 503))
        assert (response.status, response.body) == (503, b"first\n")
        response = ServerHandshake().reject(InvalidHandshake("", 500))
        assert response.body == b"WebSocket handshake failed\n"


class TestSubprotocols:
    def test_server_preference_wins(self) -> None:
        handshake = ServerHandshake(subprotocols=["v2", "v1"])
        request = make_request(("Sec-WebSocket-Protocol", "v1, v2"))
        accepted = handshake.process_request(request)
        assert accepted.subprotocol == "v2"
        assert accepted.response.headers["Sec-WebSocket-Protocol"] == "v2"

    def test_several_header_fields(self) -> None:
        handshake = ServerHandshake(subprotocols=["v3", "v1"])
        request = make_request(("Sec-WebSocket-Protocol", "v0"), ("Sec-WebSocket-Protocol", "v1"))
        assert handshake.process_request(request).subprotocol == "v1"

    def test_no_match_no_header(self) -> None:
        handshake = ServerHandshake(subprotocols=["v2"])
        for request in [make_request(("Sec-WebSocket-Protocol", "v1")), make_request()]:
            accepted = handshake.process_request(request)
            assert accepted.subprotocol is None
            assert "Sec-WebSocket-Protocol" not in accepted.response.headers

    def test_case_sensitive(self) -> None:
        handshake = ServerHandshake(subprotocols=["Chat"])
        assert (
            handshake.process_request(make_request(("Sec-WebSocket-Protocol", "chat"))).subprotocol
            is None
        )

    def test_hook(self) -> None:
        calls: list[tuple[str, list[str]]] = []

        def select(request: Request, offered: Sequence[str]) -> str | None:
            calls.append((request.path, list(offered)))
            return offered[-1] if offered else None

        handshake = ServerHandshake(subprotocols=["a"], select_subprotocol=select)
        request = make_request(("Sec-WebSocket-Protocol", "a, b"))
        assert handshake.process_request(request).subprotocol == "b"
        accepted = handshake.process_request(make_request())
        assert accepted.subprotocol is None
        assert "Sec-WebSocket-Protocol" not in accepted.response.headers
        assert calls == [("/chat", ["a", "b"]), ("/chat", [])]

    def test_hook_answering_unoffered_is_a_server_bug(self) -> None:
        handshake = ServerHandshake(select_subprotocol=lambda request, offered: "c")
        status, message = reject_status(handshake, make_request(("Sec-WebSocket-Protocol", "a")))
        assert (status, message) == (500, "server selected a subprotocol the client did not offer")

    def test_hook_may_refuse(self) -> None:
        def select(request: Request, offered: Sequence[str]) -> str | None:
            raise NegotiationError("no supported subprotocol")

        handshake = ServerHandshake(select_subprotocol=select)
        assert reject_status(handshake, make_request()) == (400, "no supported subprotocol")

    def test_invalid_server_subprotocol(self) -> None:
        with pytest.raises(ValueError, match="not a token"):
            ServerHandshake(subprotocols=["a b"])


class TestServerExtensions:
    def test_accepted_in_client_order(self) -> None:
        x, y = FakeServerFactory("x"), FakeServerFactory("y")
        handshake = ServerHandshake(extensions=[y, x])
        request = make_request(("Sec-WebSocket-Extensions", "x; p=1, y"))
        accepted = handshake.process_request(request)
        assert [e.name for e in accepted.extensions] == ["x", "y"]
        assert accepted.response.headers["Sec-WebSocket-Extensions"] == "x; ok, y; ok"
        assert x.seen == [([("p", "1")], [])]
        assert [e.name for e in y.seen[0][1]] == ["x"]  # y sees what was accepted before

    def test_refused_offer_falls_back_to_next(self) -> None:
        x = FakeServerFactory("x")
        request = make_request(("Sec-WebSocket-Extensions", "x; refuse, x; p=2, x; p=3"))
        accepted = ServerHandshake(extensions=[x]).process_request(request)
        assert len(accepted.extensions) == 1
        assert isinstance(accepted.extensions[0], FakeExtension)
        assert accepted.extensions[0].params == [("p", "2")]
        assert len(x.seen) == 2  # the third offer is not tried: x is accepted already

    def test_several_factories_for_one_name(self) -> None:
        class Refusing(FakeServerFactory):
            def process_request_params(
                self, params: Sequence[ExtensionParameter], accepted: Sequence[Extension]
            ) -> tuple[list[ExtensionParameter], Extension]:
                raise NegotiationError("no")

        factories = [FakeServerFactory("y"), Refusing("x"), FakeServerFactory("x", "lenient")]
        request = make_request(("Sec-WebSocket-Extensions", "x; p=1"))
        accepted = ServerHandshake(extensions=factories).process_request(request)
        assert accepted.response.headers["Sec-WebSocket-Extensions"] == "x; lenient"

    def test_unknown_and_refused_leave_no_header(self) -> None:
        request = make_request(
            ("Sec-WebSocket-Extensions", "unknown"), ("Sec-WebSocket-Extensions", "x; refuse")
        )
        accepted = ServerHandshake(extensions=[FakeServerFactory("x")]).process_request(request)
        assert accepted.extensions == []
        assert "Sec-WebSocket-Extensions" not in accepted.response.headers


class TestOrigin:
    @pytest.mark.parametrize(
        ("host", "origin"),
        [
            ("example.com", "http://example.com"),
            ("example.com", "https://example.com"),
            ("Example.COM", "https://example.com"),
            ("example.com:8000", "http://example.com:8000"),
            ("example.com:443", "https://example.com"),
            ("example.com", "https://example.com:443"),
            ("example.com:80", "http://example.com"),
            ("127.0.0.1:8000", "http://127.0.0.1:8000"),
            ("[::1]:8000", "http://[::1]:8000"),
            ("[::1]", "https://[::1]"),
        ],
    )
    def test_same_host_accepted_by_default(self, host: str, origin: str) -> None:
        request = make_request(("Origin", origin), drop=["Host"])
        request.headers.add("Host", host)
        assert ServerHandshake().process_request(request).response.status == 101

    @pytest.mark.parametrize(
        ("host", "origin"),
        [
            ("example.com", "http://evil.com"),
            ("example.com", "http://example.com.evil.com"),
            ("example.com", "http://sub.example.com"),
            ("example.com:8000", "http://example.com:8001"),
            ("example.com:8000", "http://example.com"),
            ("example.com", "http://example.com:8000"),
            ("example.com", "null"),
            ("example.com", "file://example.com"),
            ("example.com", "http://"),
            ("example.com", "example.com"),
            ("[::1]:8000", "http://[::1]:8001"),
            ("example.com:x", "http://example.com"),
        ],
    )
    def test_cross_origin_refused_by_default(self, host: str, origin: str) -> None:
        request = make_request(("Origin", origin), drop=["Host"])
        request.headers.add("Host", host)
        status, message = reject_status(ServerHandshake(), request)
        assert (status, message) == (403, "cross-origin WebSocket request refused")

    def test_missing_origin(self) -> None:
        assert ServerHandshake().process_request(make_request()).response.status == 101
        strict = ServerHandshake(allow_missing_origin=False)
        assert reject_status(strict, make_request()) == (403, "missing Origin header")
        listed = ServerHandshake(origins=["https://example.com"], allow_missing_origin=False)
        assert reject_status(listed, make_request()) == (403, "missing Origin header")
        assert ServerHandshake(origins=[]).process_request(make_request()).subprotocol is None

    @pytest.mark.parametrize(
        ("origin", "ok"),
        [
            ("https://example.com", True),
            ("HTTPS://EXAMPLE.COM", True),
            ("http://example.com", False),
            ("https://a.example.com", True),
            ("https://a.b.example.com", True),
            ("https://.example.com", False),
            ("https://example.com.evil.com", False),
            ("https://evil.com/.example.com", False),
            ("https://evil.com:1.example.com", False),
            ("https://evilexample.com", False),
            ("https://a.example.com:8443", False),
            ("https://app.test:3000", True),
            ("https://app.test:3000/", False),
            ("http://localhost:5173", True),
            ("http://localhost:1234", False),
            ("null", False),
        ],
    )
    def test_allow_list(self, origin: str, ok: bool) -> None:
        origins: list[str | re.Pattern[str]] = [
            "https://example.com",
            "https://*.example.com",
            "https://app.test:*",
            re.compile(r"http://localhost:5\d+"),
        ]
        handshake = ServerHandshake(origins=origins)
        request = make_request(("Origin", origin))
        if ok:
            assert handshake.process_request(request).response.status == 101
        else:
            assert reject_status(handshake, request) == (403, "Origin not allowed")

    def test_null_only_when_listed(self) -> None:
        request = make_request(("Origin", "null"))
        assert ServerHandshake(origins=["null"]).process_request(request).response.status == 101
        # Neither wildcards nor patterns admit "null".
        wildcards = ServerHandshake(origins=["*", re.compile(".*"), re.compile("null")])
        assert reject_status(wildcards, request) == (403, "Origin not allowed")

    def test_regex_must_match_whole_origin(self) -> None:
        handshake = ServerHandshake(origins=[re.compile(r"https://example\.com")])
        request = make_request(("Origin", "https://example.com.evil.com"))
        assert reject_status(handshake, request)[0] == 403


# -- client ----------------------------------------------------------------------------------


class TestClientURI:
    @pytest.mark.parametrize(
        ("uri", "secure", "host", "port", "resource", "host_header"),
        [
            ("ws://example.com", False, "example.com", 80, "/", "example.com"),
            ("wss://example.com/", True, "example.com", 443, "/", "example.com"),
            ("WS://Example.com:80/chat", False, "example.com", 80, "/chat", "example.com"),
            ("ws://example.com:443/", False, "example.com", 443, "/", "example.com:443"),
            (
                "wss://example.com:8443/a?b=c&d",
                True,
                "example.com",
                8443,
                "/a?b=c&d",
                "example.com:8443",
            ),
            ("ws://127.0.0.1:8000?x=1", False, "127.0.0.1", 8000, "/?x=1", "127.0.0.1:8000"),
            ("ws://[::1]:8000/", False, "::1", 8000, "/", "[::1]:8000"),
            ("wss://[2001:db8::1]/", True, "2001:db8::1", 443, "/", "[2001:db8::1]"),
            ("ws://example.com/a b/é", False, "example.com", 80, "/a%20b/%C3%A9", "example.com"),
            ("ws://example.com/a%20b", False, "example.com", 80, "/a%20b", "example.com"),
            (
                "ws://bücher.example/",
                False,
                "xn--bcher-kva.example",
                80,
                "/",
                "xn--bcher-kva.example",
            ),
        ],
    )
    def test_parse(
        self, uri: str, secure: bool, host: str, port: int, resource: str, host_header: str
    ) -> None:
        handshake = ClientHandshake(uri)
        assert (handshake.secure, handshake.host, handshake.port) == (secure, host, port)
        assert handshake.resource == resource
        assert handshake.host_header == host_header
        request = handshake.request()
        assert request.target == resource
        assert request.headers["Host"] == host_header

    @pytest.mark.parametrize(
        ("uri", "message"),
        [
            ("http://example.com/", "the scheme must be ws or wss"),
            ("example.com", "the scheme must be ws or wss"),
            ("ws:///path", "no host"),
            ("ws://example.com/#frag", "fragments are not allowed"),
            ("ws://example.com/#", "fragments are not allowed"),
            ("ws://example.com:99999/", "Port out of range"),
            ("ws://example.com:port/", "Port could not be cast"),
            ("ws://[::1/", "Invalid IPv6 URL"),
            ("ws://" + "a" * 64 + ".com/", "invalid host name"),
        ],
    )
    def test_invalid(self, uri: str, message: str) -> None:
        with pytest.raises(ValueError, match=re.escape(message)) as info:
            ClientHandshake(uri)
        assert str(info.value).startswith("invalid WebSocket URI")

    def test_credentials_become_basic_auth(self) -> None:
        request = ClientHandshake("wss://user:p%40ss@example.com/").request()
        expected = "Basic " + base64.b64encode(b"user:p@ss").decode()
        assert request.headers["Authorization"] == expected
        assert request.headers["Host"] == "example.com"
        request = ClientHandshake("wss://user@example.com/").request()
        assert request.headers["Authorization"] == "Basic " + base64.b64encode(b"user:").decode()


class TestClientRequest:
    def test_request(self) -> None:
        handshake = ClientHandshake(
            "ws://example.com:8000/chat?room=1",
            subprotocols=["chat", "superchat"],
            extensions=[FakeClientFactory("x", [("a", "1"), ("b", None)]), FakeClientFactory("y")],
            origin="http://example.com:8000",
        )
        request = handshake.request()
        assert (request.method, request.target, request.version) == ("GET", "/chat?room=1", "1.1")
        assert request.headers.items() == [
            ("Host", "example.com:8000"),
            ("Upgrade", "websocket"),
            ("Connection", "Upgrade"),
            ("Sec-WebSocket-Key", handshake.key),
            ("Sec-WebSocket-Version", "13"),
            ("Origin", "http://example.com:8000"),
            ("Sec-WebSocket-Extensions", "x; a=1; b, y"),
            ("Sec-WebSocket-Protocol", "chat, superchat"),
            ("User-Agent", "fullduplex/0.1"),
        ]
        assert request.serialize().startswith(
            b"GET /chat?room=1 HTTP/1.1\r\nHost: example.com:8000\r\n"
        )

    def test_fresh_key_each_time(self) -> None:
        handshake = ClientHandshake("ws://example.com/")
        first = handshake.request().headers["Sec-WebSocket-Key"]
        second = handshake.request().headers["Sec-WebSocket-Key"]
        assert first != second
        assert handshake.key == second

    def test_extra_headers(self) -> None:
        pairs = [("Cookie", "a=1"), ("user-agent", "bot/1"), ("Cookie", "b=2")]
        variants: list[Iterable[tuple[str, str]] | Headers] = [pairs, Headers(pairs), iter(pairs)]
        for headers in variants:
            request = ClientHandshake("ws://h/", headers=headers).request()
            assert request.headers.get_all("User-Agent") == ["bot/1"]
            assert request.headers.get_all("cookie") == ["a=1", "b=2"]
        request = ClientHandshake("ws://h/", headers={"X-Token": "t"}, user_agent=None).request()
        assert request.headers["X-Token"] == "t"
        assert "User-Agent" not in request.headers
        with pytest.raises(ValueError):
            ClientHandshake("ws://h/", headers={"X": "a\r\nb"})

    def test_invalid_subprotocol(self) -> None:
        with pytest.raises(ValueError, match="not a token"):
            ClientHandshake("ws://h/", subprotocols=["a,b"])


def server_response(
    handshake: ClientHandshake, *extra: tuple[str, str], drop: Sequence[str] = ()
) -> Response:
    assert handshake.key is not None
    headers = [
        ("Upgrade", "websocket"),
        ("Connection", "Upgrade"),
        ("Sec-WebSocket-Accept", accept_key(handshake.key)),
    ]
    headers = [(n, v) for n, v in headers if n not in drop]
    return Response(101, Headers([*headers, *extra]))


class TestClientResponse:
    def setup_method(self) -> None:
        self.handshake = ClientHandshake(
            "ws://example.com/",
            subprotocols=["chat", "superchat"],
            extensions=[FakeClientFactory("x"), FakeClientFactory("y")],
        )
        self.handshake.request()

    def check(self, response: Response) -> tuple[type[InvalidHandshake], str]:
        with pytest.raises(InvalidHandshake) as info:
            self.handshake.process_response(response)
        return type(info.value), str(info.value)

    def test_accepted(self) -> None:
        response = server_response(
            self.handshake,
            ("Sec-WebSocket-Protocol", "superchat"),
            ("Sec-WebSocket-Extensions", "y; p=1"),
            ("Sec-WebSocket-Extensions", "x"),
        )
        accepted = self.handshake.process_response(response)
        assert accepted.response is response
        assert accepted.subprotocol == "superchat"
        assert [
            (e.name, e.params) for e in accepted.extensions if isinstance(e, FakeExtension)
        ] == [
            ("y", [("p", "1")]),
            ("x", []),
        ]

    def test_lenient_spellings(self) -> None:
        response = server_response(self.handshake, drop=["Upgrade", "Connection"])
        response.headers.add("upgrade", "WebSocket")
        response.headers.add("connection", "keep-alive, upgrade")
        accept = response.headers["Sec-WebSocket-Accept"]
        response.headers["Sec-WebSocket-Accept"] = f" {accept} "
        accepted = self.handshake.process_response(response)
        assert (accepted.subprotocol, accepted.extensions) == (None, [])

    def test_not_101(self) -> None:
        response = Response(403, Headers([("Content-Type", "text/plain")]), b"go away\n")
        with pytest.raises(InvalidStatus) as info:
            self.handshake.process_response(response)
        assert info.value.status == 403
        assert info.value.headers == [("Content-Type", "text/plain")]
        assert info.value.body == b"go away\n"
        assert str(info.value) == "server rejected WebSocket connection: HTTP 403"

    def test_before_request(self) -> None:
        with pytest.raises(LocalProtocolError, match=r"request\(\)"):
            ClientHandshake("ws://h/").process_response(Response(101, Headers()))

    @pytest.mark.parametrize(
        ("extra", "drop", "exc_type", "message"),
        [
            ((), ["Upgrade"], InvalidUpgrade, "response Upgrade header is not websocket"),
            (
                (("Upgrade", "h2c"),),
                ["Upgrade"],
                InvalidUpgrade,
                "response Upgrade header is not websocket",
            ),
            ((("Upgrade", "h2c"),), [], InvalidUpgrade, "response Upgrade header is not websocket"),
            (
                (("Upgrade", "web socket"),),
                ["Upgrade"],
                InvalidHeader,
                "invalid Upgrade header: expected comma at position 4",
            ),
            (
                (),
                ["Connection"],
                InvalidUpgrade,
                "response Connection header does not include upgrade",
            ),
            (
                (("Connection", "close"),),
                ["Connection"],
                InvalidUpgrade,
                "response Connection header does not include upgrade",
            ),
            (
                (),
                ["Sec-WebSocket-Accept"],
                InvalidHeader,
                "missing or duplicate Sec-WebSocket-Accept header",
            ),
            (
                (("Sec-WebSocket-Accept", "again"),),
                [],
                InvalidHeader,
                "missing or duplicate Sec-WebSocket-Accept header",
            ),
            (
                (("Sec-WebSocket-Accept", RFC_ACCEPT),),
                ["Sec-WebSocket-Accept"],
                InvalidHeader,
                "Sec-WebSocket-Accept does not match the key",
            ),
            (
                (("Sec-WebSocket-Protocol", "other"),),
                [],
                NegotiationError,
                "server selected a subprotocol that was not offered",
            ),
            (
                (("Sec-WebSocket-Protocol", "chat, superchat"),),
                [],
                NegotiationError,
                "server selected more than one subprotocol",
            ),
            (
                (("Sec-WebSocket-Protocol", "chat"), ("Sec-WebSocket-Protocol", "chat")),
                [],
                NegotiationError,
                "server selected more than one subprotocol",
            ),
            (
                (("Sec-WebSocket-Protocol", "chat;"),),
                [],
                InvalidHeader,
                "invalid Sec-WebSocket-Protocol header: expected comma at position 4",
            ),
            (
                (("Sec-WebSocket-Extensions", "z"),),
                [],
                NegotiationError,
                "server accepted an extension that was not offered",
            ),
            (
                (("Sec-WebSocket-Extensions", "x, x"),),
                [],
                NegotiationError,
                "server accepted an extension twice",
            ),
            (
                (("Sec-WebSocket-Extensions", "x; bad"),),
                [],
                NegotiationError,
                "unexpected parameter bad",
            ),
            (
                (("Sec-WebSocket-Extensions", "x;"),),
                [],
                InvalidHeader,
                "invalid Sec-WebSocket-Extensions header: expected parameter name at position 2",
            ),
        ],
    )
    def test_failures(
        self,
        extra: tuple[tuple[str, str], ...],
        drop: list[str],
        exc_type: type[InvalidHandshake],
        message: str,
    ) -> None:
        response = server_response(self.handshake, *extra, drop=drop)
        assert self.check(response) == (exc_type, message)

    def test_subprotocol_when_none_offered(self) -> None:
        handshake = ClientHandshake("ws://h/")
        handshake.request()
        response = server_response(handshake, ("Sec-WebSocket-Protocol", "chat"))
        with pytest.raises(NegotiationError, match="not offered"):
            handshake.process_response(response)


# -- round trips -----------------------------------------------------------------------------


def test_round_trip() -> None:
    client = ClientHandshake(
        "ws://localhost:8000/chat?room=1",
        subprotocols=["v1", "v2"],
        extensions=[FakeClientFactory("x", [("a", "1")])],
        origin="http://localhost:8000",
    )
    server = ServerHandshake(subprotocols=["v2", "v1"], extensions=[FakeServerFactory("x")])
    request = parse_request(client.request().serialize())
    assert request.path == "/chat"
    assert request.query == {"room": ["1"]}
    accepted_server = server.process_request(request)
    response, trailing = parse_response(accepted_server.response.serialize() + b"\x81\x00")
    assert trailing == b"\x81\x00"
    accepted_client = client.process_response(response)
    assert accepted_client.subprotocol == accepted_server.subprotocol == "v2"
    assert [e.name for e in accepted_client.extensions] == ["x"]
    assert [e.name for e in accepted_server.extensions] == ["x"]


def test_round_trip_rejected() -> None:
    client = ClientHandshake("ws://localhost:8000/", origin="https://evil.example")
    server = ServerHandshake()
    request = parse_request(client.request().serialize())
    with pytest.raises(InvalidOrigin) as info:
        server.process_request(request)
    parser = ResponseParser()
    parser.feed(server.reject(info.value).serialize())
    response = parser.next_response()
    assert response is not None
    with pytest.raises(InvalidStatus) as status:
        client.process_response(response)
    assert status.value.status == 403
    assert status.value.body == b"cross-origin WebSocket request refused\n"


# -- cross-checks with wsproto ---------------------------------------------------------------


class WsprotoFake(WsprotoExtension):
    name = "x"

    def offer(self) -> str:
        return "a=1"

    def accept(self, offer: str) -> str:
        return "ok"

    def finalize(self, offer: str) -> None:
        self.offer_seen = offer


def test_wsproto_client_to_our_server() -> None:
    ws = WSConnection(ConnectionType.CLIENT)
    data = ws.send(
        wsevents.Request(
            host="example.com",
            target="/chat?x=1",
            subprotocols=["v1", "v2"],
            extensions=[WsprotoFake()],
        )
    )
    server = ServerHandshake(subprotocols=["v2"], extensions=[FakeServerFactory("x")])
    accepted = server.process_request(parse_request(data))
    assert accepted.subprotocol == "v2"
    ws.receive_data(accepted.response.serialize() + b"\x81\x02hi")
    events = list(ws.events())
    assert isinstance(events[0], wsevents.AcceptConnection)
    assert events[0].subprotocol == "v2"
    assert [e.name for e in events[0].extensions] == ["x"]
    assert isinstance(events[1], wsevents.TextMessage)
    assert events[1].data == "hi"


def test_our_client_to_wsproto_server() -> None:
    client = ClientHandshake(
        "ws://example.com:8080/chat",
        subprotocols=["v1", "v2"],
        extensions=[FakeClientFactory("x", [("a", "1")])],
        origin="http://example.com:8080",
    )
    ws = WSConnection(ConnectionType.SERVER)
    ws.receive_data(client.request().serialize())
    (event,) = list(ws.events())
    assert isinstance(event, wsevents.Request)
    assert (event.host, event.target) == ("example.com:8080", "/chat")
    assert event.subprotocols == ["v1", "v2"]
    assert event.extensions == ["x; a=1"]
    fake = WsprotoFake()
    data = ws.send(wsevents.AcceptConnection(subprotocol="v1", extensions=[fake]))
    data += ws.send(wsevents.TextMessage("hi"))
    response, trailing = parse_response(data)
    accepted = client.process_response(response)
    assert accepted.subprotocol == "v1"
    assert [(e.name, e.params) for e in accepted.extensions if isinstance(e, FakeExtension)] == [
        ("x", [("ok", None)])
    ]
    assert trailing == b"\x81\x02hi"


def test_wsproto_rejection_reaches_our_client() -> None:
    client = ClientHandshake("ws://example.com/")
    ws = WSConnection(ConnectionType.SERVER)
    ws.receive_data(client.request().serialize())
    list(ws.events())
    data = ws.send(
        wsevents.RejectConnection(
            status_code=403, has_body=True, headers=[(b"content-length", b"4")]
        )
    )
    data += ws.send(wsevents.RejectData(data=b"nope"))
    response, _ = parse_response(data)
    with pytest.raises(InvalidStatus) as info:
        client.process_response(response)
    assert (info.value.status, info.value.body) == (403, b"nope")


def test_wsproto_permessage_deflate_both_ways() -> None:
    deflate = pytest.importorskip("fullduplex.protocol.deflate")
    # wsproto client, our server.
    ws = WSConnection(ConnectionType.CLIENT)
    data = ws.send(wsevents.Request(host="h", target="/", extensions=[PerMessageDeflate()]))
    server = ServerHandshake(extensions=[deflate.ServerPerMessageDeflateFactory()])
    accepted = server.process_request(parse_request(data))
    assert [e.name for e in accepted.extensions] == ["permessage-deflate"]
    ws.receive_data(accepted.response.serialize())
    (event,) = list(ws.events())
    assert isinstance(event, wsevents.AcceptConnection)
    assert [e.name for e in event.extensions] == ["permessage-deflate"]
    # Our client, wsproto server.
    client = ClientHandshake("ws://h/", extensions=[deflate.ClientPerMessageDeflateFactory()])
    ws = WSConnection(ConnectionType.SERVER)
    ws.receive_data(client.request().serialize())
    (request_event,) = list(ws.events())
    assert isinstance(request_event, wsevents.Request)
    response, _ = parse_response(
        ws.send(wsevents.AcceptConnection(extensions=[PerMessageDeflate()]))
    )
    assert [e.name for e in client.process_response(response).extensions] == ["permessage-deflate"]


def _decodes_to_16_bytes(key: str) -> bool:
    """The key rule as the base64 module states it (validate=True: no stray characters)."""
    import binascii

    try:
        return len(base64.b64decode(key.encode("ascii"), validate=True)) == 16
    except (binascii.Error, UnicodeEncodeError):
        return False


@given(
    st.one_of(
        st.text("ABCxyz019+/=", min_size=20, max_size=28),
        st.text(min_size=0, max_size=30),
        st.binary(min_size=14, max_size=18).map(lambda b: base64.b64encode(b).decode()),
    )
)
def test_the_key_check_is_the_base64_rule(key: str) -> None:
    if key.strip() != key or "\x00" in key or "\r" in key or "\n" in key:
        return  # not a header value the parser would hand over as is
    request = make_request(("Sec-WebSocket-Key", key), drop=["Sec-WebSocket-Key"])
    try:
        ServerHandshake().process_request(request)
    except InvalidHeader as exc:
        assert "Sec-WebSocket-Key" in str(exc)
        assert not _decodes_to_16_bytes(key)
    else:
        assert _decodes_to_16_bytes(key)


def test_the_server_header_is_checked_once_and_read_only() -> None:
    with pytest.raises(ValueError, match="CR, LF or NUL"):
        ServerHandshake(server_header="x\r\nSet-Cookie: a=b")
    handshake = ServerHandshake(server_header="demo/1.0")
    assert handshake.server_header == "demo/1.0"
    assert handshake.process_request(make_request()).response.headers["Server"] == "demo/1.0"
    with pytest.raises(AttributeError):
        handshake.server_header = "x\r\ny"  # type: ignore[misc]


def test_large_compressed_messages_with_wsproto_both_ways() -> None:
    """Compressed frames over ASSEMBLE_MIN_SIZE are assembled in a PayloadBuffer, then inflated."""
    import os

    from fullduplex.protocol import BinaryMessage, Connection, Side
    from fullduplex.protocol.deflate import ServerPerMessageDeflateFactory

    ws = WSConnection(ConnectionType.CLIENT)
    data = ws.send(wsevents.Request(host="h", target="/", extensions=[PerMessageDeflate()]))
    server = ServerHandshake(extensions=[ServerPerMessageDeflateFactory()])
    accepted = server.process_request(parse_request(data))
    ws.receive_data(accepted.response.serialize())
    list(ws.events())
    ours = Connection(Side.SERVER, extensions=accepted.extensions, max_message_size=None)
    payload = os.urandom(300_000)  # incompressible: the compressed frame stays ~300 KB
    wire = ws.send(wsevents.BytesMessage(data=payload))
    assert len(wire) > 2 * 65536
    for i in range(0, len(wire), 40_000):
        ours.receive_data(wire[i : i + 40_000])
    assert ours.events_received() == [BinaryMessage(payload)]
    ours.send_binary(payload)
    ws.receive_data(ours.data_to_send())
    (echo,) = list(ws.events())
    assert isinstance(echo, wsevents.BytesMessage) and echo.data == payload


@pytest.mark.parametrize("server_header", ["fullduplex", None, "x/1.0 (y)"])
@pytest.mark.parametrize(
    "extra",
    [
        "",
        "Sec-WebSocket-Protocol: chat\r\n",
        "Sec-WebSocket-Extensions: permessage-deflate\r\n",
    ],
)
def test_accepted_data_is_the_serialized_response(server_header: str | None, extra: str) -> None:
    from fullduplex.protocol.deflate import ServerPerMessageDeflateFactory
    from fullduplex.protocol.http11 import RequestParser

    parser = RequestParser()
    parser.feed(
        (
            "GET /chat HTTP/1.1\r\nHost: example.com\r\nUpgrade: websocket\r\n"
            "Connection: Upgrade\r\nSec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\n"
            f"Sec-WebSocket-Version: 13\r\n{extra}\r\n"
        ).encode()
    )
    request = parser.next_request()
    assert request is not None
    handshake = ServerHandshake(
        subprotocols=["chat"],
        extensions=[ServerPerMessageDeflateFactory()],
        server_header=server_header,
    )
    accepted = handshake.process_request(request)
    assert accepted.data == accepted.response.serialize()
    assert b"s3pPLMBiTxaQ9kYGzzhZRbK+xOo=" in accepted.data  # RFC 6455 1.3's example
