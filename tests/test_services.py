"""flows.services helpers that need no server (tests/test_flows_e2e.py starts them all
with ``make services-up``)."""

import socket
import time

from flows.services import HOST, port_is_free


def test_a_port_left_in_time_wait_is_free_and_a_listening_one_is_not():
    """Right after a server stops, its connections linger in TIME-WAIT for a minute; a
    new server (SO_REUSEADDR, as they all set) can listen there, so the probe says free."""
    server = socket.socket()
    server.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    server.bind((HOST, 0))
    server.listen()
    port = server.getsockname()[1]
    client = socket.create_connection((HOST, port))
    conn, _ = server.accept()
    assert not port_is_free(port)  # listening
    conn.close()  # the server side closes first: its end of the connection waits in TIME-WAIT
    time.sleep(0.1)
    client.close()
    server.close()
    time.sleep(0.1)
    with socket.socket() as plain:  # the state the old probe (no SO_REUSEADDR) refused
        try:
            plain.bind((HOST, port))
            lingering = False
        except OSError:
            lingering = True
    assert lingering, "no TIME-WAIT connection was left: the test proves nothing"
    assert port_is_free(port)
