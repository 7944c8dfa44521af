"""The sans-I/O core on its own: a client and a server Connection talking through bytes.

Run: python examples/sansio_echo.py
"""

from __future__ import annotations

from fullduplex.protocol import Connection, Side, TextMessage
from fullduplex.protocol.handshake import ClientHandshake, ServerHandshake
from fullduplex.protocol.http11 import RequestParser, ResponseParser


def main() -> None:
    # Opening handshake: bytes of an HTTP request one way, of a 101 response the other.
    client_hs = ClientHandshake("ws://127.0.0.1/chat", subprotocols=["chat"])
    server_hs = ServerHandshake(subprotocols=["chat"])
    requests = RequestParser()
    requests.feed(client_hs.request().serialize())
    request = requests.next_request()
    assert request is not None
    accepted = server_hs.process_request(request)
    responses = ResponseParser()
    responses.feed(accepted.response.serialize())
    response = responses.next_response()
    assert response is not None
    print("subprotocol:", client_hs.process_response(response).subprotocol)

    # Frames: whatever one side writes, the other receives, in chunks of any size.
    client, server = Connection(Side.CLIENT), Connection(Side.SERVER)
    client.send_text("hello, sans-I/O")
    wire = client.data_to_send()
    for i in range(len(wire)):  # one byte at a time gives the same events
        server.receive_data(wire[i : i + 1])
    for event in server.events_received():
        if isinstance(event, TextMessage):
            server.send_text(event.data.upper())
    client.receive_data(server.data_to_send())
    print("echo:", client.events_received())

    # Closing handshake: the server answers the client's close and asks to close TCP.
    client.send_close(1000, "done")
    server.receive_data(client.data_to_send())
    client.receive_data(server.data_to_send())
    print("server closes TCP:", server.transport_should_close, "code:", client.close_code)


if __name__ == "__main__":
    main()
