"""Where a server listens: `HOST:PORT` as every command takes it, and whether it is
reachable beyond this machine (which, without authentication, deserves a warning)."""

import ipaddress
import logging
import os

log = logging.getLogger(__name__)

DEFAULT_HOST = "127.0.0.1"


def parse_listen(text: str, example_port: int) -> tuple[str, int]:
    """`HOST:PORT`, `[IPV6]:PORT` or `PORT` (on loopback) -> (host, port); ValueError."""
    host, colon, port = text.rpartition(":")
    host = host.removeprefix("[").removesuffix("]") if colon else DEFAULT_HOST
    if not port.isdecimal() or not 0 <= int(port) <= 65535 or not host:
        raise ValueError(f"expected HOST:PORT, e.g. {DEFAULT_HOST}:{example_port}; got {text!r}")
    return host, int(port)


def is_loopback(host: str) -> bool:
    """True when only this machine can reach `host` (a name other than localhost may
    resolve to anything, so it counts as reachable)."""
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def warn_if_exposed(server: str, host: str, reachable: str, protection: str) -> None:
    """A warning, unless only this machine can reach `host`, that `server` lets in anyone
    who reaches `reachable` (its address, or what it listens on); `protection` says what
    to do about it."""
    if not is_loopback(host):
        log.warning(
            f"{server} listens beyond this machine without authentication: anyone who reaches "
            f"{reachable} sees and controls the guests; {protection}",
        )


def format_address(host: str, port: int) -> str:
    return f"[{host}]:{port}" if ":" in host else f"{host}:{port}"


def bind_failure(error: OSError) -> str:
    """Why listening failed, in the system's words ("Address already in use"): asyncio's
    errors repeat the address in longer ones."""
    return os.strerror(error.errno) if error.errno else str(error)
