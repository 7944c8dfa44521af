"""JWTAuth, identity patterns and log redaction, without sockets."""

from __future__ import annotations

import base64
import hashlib
import hmac
import json
import time

import jwt
import pytest
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import rsa

from fullduplex.auth import (
    ANONYMOUS,
    CORS,
    Forbidden,
    Identity,
    JWTAuth,
    PatternSet,
    Unauthorized,
    redact_target,
)
from fullduplex.protocol.http11 import Headers, Request
from fullduplex.transports import TopicRules

from .conftest import AUDIENCE, SECRET


def req(target: str = "/", *headers: tuple[str, str]) -> Request:
    return Request("GET", target, Headers(list(headers)))


def _b64(data: bytes) -> bytes:
    return base64.urlsafe_b64encode(data).rstrip(b"=")


def forge_hs256(claims: dict[str, object], secret: bytes) -> str:
    """An HS256 token built by hand (PyJWT refuses to sign with a PEM key: good)."""
    head = _b64(json.dumps({"alg": "HS256", "typ": "JWT"}).encode())
    body = _b64(json.dumps(claims).encode())
    sig = _b64(hmac.new(secret, head + b"." + body, hashlib.sha256).digest())
    return (head + b"." + body + b"." + sig).decode()


def rsa_pair() -> tuple[bytes, bytes]:
    key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    private = key.private_bytes(
        serialization.Encoding.PEM,
        serialization.PrivateFormat.PKCS8,
        serialization.NoEncryption(),
    )
    public = key.public_key().public_bytes(
        serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo
    )
    return private, public


def test_token_from_header_cookie_and_query_in_that_order() -> None:
    auth = JWTAuth(SECRET)
    a, b, c = auth.issue("a"), auth.issue("b"), auth.issue("c")
    assert auth(req("/", ("Authorization", f"Bearer {a}"), ("Cookie", f"x=1; token={b}"))).id == "a"
    assert auth(req(f"/?token={c}", ("Cookie", f"x=1; token={b}"))).id == "b"
    assert auth(req(f"/?topic=t&token={c}")).id == "c"
    identity = auth(req("/", ("Authorization", f"bearer {a}")))
    assert identity is not None and identity.claims["sub"] == "a" and not identity.anonymous


@pytest.mark.parametrize(
    ("make", "message"),
    [
        (lambda a: None, "authentication required"),
        (lambda a: a.issue("ann", expires_in=-10), "token expired"),
        (
            lambda a: JWTAuth("another secret, also long enough for HS256").issue("ann"),
            "token signature invalid",
        ),
        (lambda a: a.issue("ann", aud="someone-else"), "token audience not accepted"),
        (lambda a: a.issue("ann", nbf=time.time() + 60), "token not yet valid"),
        (lambda a: a.issue("", iss="x"), "token has no subject"),
        (lambda a: "not.a.token", "token invalid"),
        (lambda a: jwt.encode({"sub": "ann", "aud": AUDIENCE}, SECRET), "token lacks the exp"),
        (
            lambda a: jwt.encode(
                {"sub": "ann", "aud": AUDIENCE, "exp": time.time() + 60}, None, algorithm="none"
            ),
            "token invalid",
        ),
    ],
)
def test_refusals_are_401_with_a_safe_message(make, message) -> None:  # type: ignore[no-untyped-def]
    auth = JWTAuth(SECRET, audience=AUDIENCE)
    token = make(auth)
    headers = [("Authorization", f"Bearer {token}")] if token else []
    with pytest.raises(Unauthorized) as info:
        auth(req("/", *headers))
    assert info.value.status == 401
    assert str(info.value).startswith(message)
    assert token is None or token not in str(info.value)
    assert info.value.www_authenticate.startswith("Bearer")


def test_leeway_issuer_and_anonymous() -> None:
    auth = JWTAuth(SECRET, issuer="https://id.example", leeway=30)
    token = auth.issue("ann", expires_in=-5)  # expired 5 s ago, within the leeway
    assert auth.verify(token).id == "ann"
    with pytest.raises(Unauthorized, match="issuer"):
        auth.verify(JWTAuth(SECRET, issuer="https://evil.example").issue("ann"))
    open_auth = JWTAuth(SECRET, anonymous=True)
    assert open_auth(req("/")) is None  # no token: anonymous
    with pytest.raises(Unauthorized):  # a bad token is never taken for no token
        open_auth(req("/?token=garbage"))


def test_rs256_with_a_key_pair() -> None:
    private, public = rsa_pair()
    auth = JWTAuth(public, algorithms=["RS256"], signing_key=private, audience="api")
    token = auth.issue("bob", role="admin")
    identity = auth.verify(token)
    assert (identity.id, identity.claims["role"]) == ("bob", "admin")
    assert jwt.get_unverified_header(token)["alg"] == "RS256"
    # An HS256 token signed with the public key (the classic confusion) is refused.
    forged = forge_hs256({"sub": "eve", "aud": "api", "exp": time.time() + 60}, public)
    with pytest.raises(Unauthorized):
        auth.verify(forged)
    with pytest.raises(ValueError):
        JWTAuth(SECRET, algorithms=["none"])
    with pytest.raises(ValueError, match="32 bytes"):
        JWTAuth("short")


def test_errors_and_identity() -> None:
    assert Forbidden().status == 403 and Unauthorized().status == 401
    with pytest.raises(ValueError):
        Unauthorized("x", 500)
    assert ANONYMOUS.anonymous and ANONYMOUS.id == ""
    assert Identity("ann", {"a": 1}) == Identity("ann", {"b": 2})  # compared by id
    with pytest.raises(AttributeError):
        Identity("ann").id = "bob"  # type: ignore[misc]


def test_patterns_name_the_identity_and_never_more() -> None:
    ann = Identity("ann", {"team": "red", "level": 3, "admin": True})
    patterns = PatternSet(["public.*", "user.{id}", "team.{team}.*", "l{level}", "x.{admin}"])
    assert patterns.match("public.news", None)
    assert patterns.match("user.ann", ann) and not patterns.match("user.bob", ann)
    assert patterns.match("team.red.chat", ann) and not patterns.match("team.blue.chat", ann)
    assert patterns.match("l3", ann)
    assert not patterns.match("x.True", ann)  # booleans are not names
    assert not patterns.match("user.ann", None) and not patterns.match("user.", ANONYMOUS)
    # An id with pattern characters is matched literally, never as a wildcard.
    star = Identity("*")
    assert not patterns.match("user.bob", star)
    assert PatternSet(["user.{id}"]).match("user.*", star)
    assert PatternSet(["[ab]?"]).match("ax", None) and not PatternSet(["[!ab]?"]).match("ax", None)
    with pytest.raises(ValueError):
        PatternSet(["user.{not valid}"])


def test_topic_rules_defaults_and_check() -> None:
    default = TopicRules()
    assert default.can_subscribe("anything") and default.can_read_history("anything")
    assert not default.can_publish("anything")
    assert default.open_publish == ()
    calls = []

    def check(identity: Identity | None, action: str, topic: str) -> bool:
        calls.append((action, topic))
        return identity is not None and identity.claims.get("role") == "admin"

    rules = TopicRules(subscribe=[], publish=["user.{id}"], check=check)
    admin, ann = Identity("root", {"role": "admin"}), Identity("ann")
    assert rules.can_publish("user.ann", ann) and calls == []  # a pattern grants: no call
    assert rules.can_publish("anything", admin) and not rules.can_publish("anything", ann)
    assert not rules.can_subscribe("x", None)
    assert calls[-1] == ("subscribe", "x")


def test_tokens_are_redacted_from_targets() -> None:
    JWTAuth(SECRET, query_param="My_Token")
    assert redact_target("/sse?topic=a&token=eyJ.x.y") == "/sse?topic=a&token=[redacted]"
    assert redact_target("/x?access_token=1&my_token=2&a=3") == (
        "/x?access_token=[redacted]&my_token=[redacted]&a=3"
    )
    assert redact_target("/x?to%6Ben=1") == "/x?to%6Ben=[redacted]"
    assert redact_target("/plain") == "/plain"


def test_cors_refuses_star_with_credentials() -> None:
    with pytest.raises(ValueError):
        CORS(["*"], credentials=True)
