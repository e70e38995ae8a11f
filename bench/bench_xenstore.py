"""XenStore reads and writes per second, one client and eight, beside an echo ceiling.

Both servers run as separate processes: `pvdisplay xenstored` and a trivial
asyncio.Protocol server (the transport xenstored uses) that frames 16-byte
headers and sends each message straight back.
The same blocking `Client` drives both, one request in flight per client and
each client in its own process, so the gap between the rows is what our daemon
costs over a server that does nothing.
The echo server answers every request with the request itself, so its rows use
READ requests padded to the size of the real read and write requests.
"""

import asyncio
import multiprocessing
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from multiprocessing.queues import Queue
from multiprocessing.synchronize import Barrier
from pathlib import Path

from pvdisplay.store.client import Client
from pvdisplay.wire import xs_wire

SECONDS_PER_RUN = 0.8
ROUNDS = 3
CONCURRENT_CLIENTS = 8
VALUE = b"0123456789abcdef"


class _Echo(asyncio.Protocol):
    """Send every complete framed message straight back, as one write per message."""

    def __init__(self) -> None:
        self.transport: asyncio.Transport | None = None
        self.pending = b""

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        assert isinstance(transport, asyncio.Transport)
        self.transport = transport

    def data_received(self, data: bytes) -> None:
        assert self.transport is not None
        self.pending += data
        while len(self.pending) >= xs_wire.HEADER.size:
            end = xs_wire.HEADER.size + xs_wire.Header.decode(self.pending[:16]).len
            if len(self.pending) < end:
                return
            self.transport.write(self.pending[:end])
            self.pending = self.pending[end:]


def serve_echo(path: str) -> None:
    async def main() -> None:
        server = await asyncio.get_running_loop().create_unix_server(_Echo, path)
        async with server:
            await server.serve_forever()

    asyncio.run(main())


def wait_for_socket(path: Path, alive: Callable[[], bool]) -> None:
    give_up = time.monotonic() + 60
    while True:
        try:
            Client(path).close()
            return
        except OSError:
            if not alive() or time.monotonic() > give_up:
                raise RuntimeError(f"no server came up on {path}") from None
            time.sleep(0.02)


Operation = Callable[[Client, int], None]


def _client(
    path: Path, index: int, operation: Operation, start: Barrier, rates: "Queue[float]"
) -> None:
    with Client(path) as connection:
        start.wait()
        began = time.monotonic()
        deadline = began + SECONDS_PER_RUN
        done = 0
        while time.monotonic() < deadline:
            for _ in range(20):
                operation(connection, index)
            done += 20
        rates.put(done / (time.monotonic() - began))


def ops_per_second(path: Path, clients: int, operation: Operation) -> float:
    """Each client is its own process, so the figure is the server's, not our GIL's."""
    context = multiprocessing.get_context("fork")
    start = context.Barrier(clients)
    rates: Queue[float] = context.Queue()
    processes = [
        context.Process(target=_client, args=(path, index, operation, start, rates))
        for index in range(clients)
    ]
    for process in processes:
        process.start()
    total = sum(rates.get() for _ in processes)
    for process in processes:
        process.join()
    return total


def key(index: int) -> str:
    return f"/bench/client{index}"


def store_read(connection: Client, index: int) -> None:
    connection.read(key(index))


def store_write(connection: Client, index: int) -> None:
    connection.write(key(index), VALUE)


def echo_read_sized(connection: Client, index: int) -> None:
    connection.read(key(index))


def echo_write_sized(connection: Client, index: int) -> None:
    # A READ whose payload is as long as store_write's path, NUL and value.
    connection.read(key(index) + "v" * len(VALUE))


def main() -> None:
    with tempfile.TemporaryDirectory(prefix="bench-xs-") as scratch:
        socket_dir = Path(scratch) / "xs"
        socket_dir.mkdir()
        log = (Path(scratch) / "xenstored.log").open("wb")
        daemon = subprocess.Popen(
            [
                str(Path(sys.executable).parent / "pvdisplay"),
                "xenstored",
                "--socket-dir",
                str(socket_dir),
            ],
            stdout=log,
            stderr=log,
        )
        echo_path = Path(scratch) / "echo"
        echo = multiprocessing.get_context("fork").Process(
            target=serve_echo, args=(str(echo_path),), daemon=True
        )
        echo.start()
        try:
            store_path = socket_dir / "socket"
            wait_for_socket(store_path, lambda: daemon.poll() is None)
            wait_for_socket(echo_path, echo.is_alive)
            with Client(store_path) as setup:
                for index in range(CONCURRENT_CLIENTS):
                    setup.write(key(index), VALUE)
            rows = [
                ("xenstored read", store_path, store_read),
                ("xenstored write", store_path, store_write),
                ("echo, read-sized", echo_path, echo_read_sized),
                ("echo, write-sized", echo_path, echo_write_sized),
            ]
            # Rounds interleave the rows so a burst of load from elsewhere on the
            # machine hits every row alike; each row keeps its best round.
            results: dict[tuple[str, int], float] = {}
            for _ in range(ROUNDS):
                for name, path, operation in rows:
                    for clients in (1, CONCURRENT_CLIENTS):
                        rate = ops_per_second(path, clients, operation)
                        results[(name, clients)] = max(rate, results.get((name, clients), 0.0))
        finally:
            daemon.terminate()
            daemon.wait()
            log.close()
            echo.terminate()
            echo.join()
    print(f"{'requests/s (lockstep per client)':34} {'1 client':>10} {'8 clients':>10}")
    for name, _, _ in rows:
        one, many = results[(name, 1)], results[(name, CONCURRENT_CLIENTS)]
        print(f"{name:34} {one:10,.0f} {many:10,.0f}")
    for kind in ("read", "write"):
        ceiling = f"echo, {kind}-sized"
        shares = [
            results[(f"xenstored {kind}", n)] / results[(ceiling, n)]
            for n in (1, CONCURRENT_CLIENTS)
        ]
        print(f"{'xenstored ' + kind + ' / echo':34} {shares[0]:10.0%} {shares[1]:10.0%}")
