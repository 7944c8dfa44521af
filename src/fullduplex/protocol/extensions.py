"""The extension interface (RFC 6455 section 9).

An extension is negotiated in the opening handshake through a factory (one per side) and then
transforms frames: :meth:`Extension.decode` on each received data frame, in reverse order of
negotiation, and :meth:`Extension.encode` on each sent data frame, in order of negotiation.
Control frames are never passed to extensions. ``permessage-deflate`` (RFC 7692) in
:mod:`fullduplex.protocol.deflate` is the one extension shipped.
"""

from __future__ import annotations

import abc
from collections.abc import Sequence

from .frames import Frame

__all__ = [
    "ClientExtensionFactory",
    "Extension",
    "ExtensionParameter",
    "ServerExtensionFactory",
]

#: One extension parameter: a name and a value, or None for a parameter without a value.
ExtensionParameter = tuple[str, "str | None"]


class Extension(abc.ABC):
    """A negotiated extension, active for the lifetime of one connection."""

    #: The registered extension token, e.g. ``"permessage-deflate"``.
    name: str
    #: The RSV bits this extension claims (0x40 for RSV1, 0x20 for RSV2, 0x10 for RSV3).
    rsv_mask: int = 0

    @abc.abstractmethod
    def decode(self, frame: Frame, *, max_size: int | None) -> Frame:
        """Transform a received data frame.

        Args:
            frame: a data frame (TEXT, BINARY or CONT), unmasked.
            max_size: the most payload bytes the decoded frame may have (what remains of the
                message size limit), or None for no limit.

        Raises:
            ProtocolError: the frame violates the extension (for example RSV1 on a
                continuation frame).
            PayloadTooBig: the decoded payload would exceed ``max_size``; raised before the
                whole output is allocated.
        """

    @abc.abstractmethod
    def encode(self, frame: Frame) -> Frame:
        """Transform a data frame about to be sent."""

    def memory_estimate(self) -> int:
        """Bytes this extension keeps per connection (for documentation and benchmarks)."""
        return 0


class ServerExtensionFactory(abc.ABC):
    """Negotiates an extension on the server side."""

    #: The extension token this factory answers to.
    name: str

    @abc.abstractmethod
    def process_request_params(
        self, params: Sequence[ExtensionParameter], accepted: Sequence[Extension]
    ) -> tuple[list[ExtensionParameter], Extension]:
        """Answer one offer from the client.

        Args:
            params: the parameters of the offer.
            accepted: the extensions accepted so far in this handshake.

        Returns:
            The parameters for the response header and the extension instance.

        Raises:
            NegotiationError: this offer cannot be accepted; the server tries the next one.
        """


class ClientExtensionFactory(abc.ABC):
    """Offers an extension on the client side and checks the server's answer."""

    #: The extension token this factory offers.
    name: str

    @abc.abstractmethod
    def get_request_params(self) -> list[ExtensionParameter]:
        """Return the parameters of the offer sent in the request."""

    @abc.abstractmethod
    def process_response_params(
        self, params: Sequence[ExtensionParameter], accepted: Sequence[Extension]
    ) -> Extension:
        """Check the server's answer and return the extension instance.

        Raises:
            NegotiationError: the answer is malformed or does not match the offer.
        """
