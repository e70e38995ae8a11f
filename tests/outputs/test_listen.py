"""`HOST:PORT` as every server command takes it, and what counts as loopback."""

import errno

import pytest

from pvdisplay.outputs.listen import bind_failure, format_address, is_loopback, parse_listen


def test_listen_addresses_parse_as_every_command_takes_them() -> None:
    assert parse_listen("0.0.0.0:80", 8080) == ("0.0.0.0", 80)
    assert parse_listen("[::1]:5900", 5900) == ("::1", 5900)
    assert parse_listen("localhost:0", 8080) == ("localhost", 0)
    assert parse_listen("9000", 8080) == ("127.0.0.1", 9000)
    for bad in ("", ":", "host:", "host:port", "127.0.0.1:65536", ":80", "[]:80"):
        with pytest.raises(ValueError, match=r"expected HOST:PORT, e\.g\. 127\.0\.0\.1:5900"):
            parse_listen(bad, 5900)


def test_only_loopback_addresses_count_as_this_machine() -> None:
    assert all(map(is_loopback, ("127.0.0.1", "127.5.5.5", "::1", "localhost")))
    # A name may resolve to anything: it is treated as reachable from elsewhere.
    assert not any(map(is_loopback, ("0.0.0.0", "::", "192.168.1.2", "example.org")))


def test_addresses_print_as_they_are_typed() -> None:
    assert format_address("127.0.0.1", 5900) == "127.0.0.1:5900"
    assert format_address("::1", 5900) == "[::1]:5900"


def test_a_bind_failure_is_the_systems_words_alone() -> None:
    long = OSError(errno.EADDRINUSE, "error while attempting to bind on address: in use")
    assert bind_failure(long) == "Address already in use"
    assert bind_failure(OSError("no port left")) == "no port left"
