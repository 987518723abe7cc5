"""A Ray cluster address that cannot be reached is a clear error within a timeout, not a hang (issue 19, bad input):
Ray's own join keeps retrying an address where nothing listens for minutes (measured: over 5 minutes for a closed
port on this machine). Needs no Ray: the check runs before Ray is asked."""

import socket
import time

import pytest

from wmenv.envs.ray_backend import check_reachable


def _closed_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_an_address_where_nothing_listens_is_a_connection_error_naming_it_within_the_timeout():
    address = f"127.0.0.1:{_closed_port()}"
    start = time.monotonic()
    with pytest.raises(ConnectionError, match=f"ray_address: nothing accepted a connection at '{address}'"):
        check_reachable(address, timeout=2.0)
    assert time.monotonic() - start < 2.5
    with pytest.raises(ConnectionError, match="ray start --head"):
        check_reachable(f"ray://{address}", timeout=2.0)


def test_a_listening_address_passes_and_rays_own_lookups_are_left_to_ray():
    with socket.socket() as server:
        server.bind(("127.0.0.1", 0))
        server.listen(1)
        port = server.getsockname()[1]
        check_reachable(f"127.0.0.1:{port}", timeout=2.0)
        check_reachable(f"ray://127.0.0.1:{port}", timeout=2.0)
    check_reachable("auto")
    check_reachable("local")


@pytest.mark.parametrize("address", ["127.0.0.1", "ray://:10001", "host:port", ""])
def test_an_address_without_host_and_port_is_a_value_error(address):
    with pytest.raises(ValueError, match="expected 'host:port' or 'ray://host:port'"):
        check_reachable(address, timeout=1.0)
