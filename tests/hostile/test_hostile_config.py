"""Every budget is set in the host config, not only on a command line: xenstored's quotas
(`[xenstored]`) reach the xenstored the host starts, and the web viewer's client limit
(`[web]`) the viewer `pvdisplay backend` and `pvdisplay demo` serve."""

import asyncio
import errno
import os
import queue
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
from pathlib import Path

import aiohttp
import pytest
from hostile_world import guest, world

from pvdisplay import toolstack
from pvdisplay.store.tree import Quotas
from rigs import PATIENCE

pytestmark = pytest.mark.processes

SCRIPT = Path(sys.executable).parent / "pvdisplay"


def test_the_host_config_sets_xenstored_quotas_and_the_web_viewer_s_clients() -> None:
    config = toolstack.parse_config(
        "[xenstored]\nwatches = 5\nnode_size = 100\n[web]\nmax_clients = 3\n"
    )
    assert config.quotas == Quotas(watches=5, node_size=100)
    assert config.web_clients == 3
    for text, key in [
        ("[xenstored]\nwatch = 5\n", r"xenstored\.watch: unknown key"),
        ("[xenstored]\nwatches = 0\n", r"xenstored\.watches"),
        ("[web]\nmax_clients = -1\n", r"web\.max_clients"),
        ("[web]\nclients = 1\n", r"web\.clients: unknown key"),
    ]:
        with pytest.raises(toolstack.ConfigError, match=key):
            toolstack.parse_config(text)


def test_a_watch_quota_from_the_host_config_stops_a_guest_there(tmp_path: Path) -> None:
    config = toolstack.parse_config("[xenstored]\nwatches = 5\n")
    with world(tmp_path, config) as hostile:
        attacker = hostile.host.start_guest(guest("watcher"), "hostile_agents:watch_flood")
        assert attacker.process.control.poll(PATIENCE)
        assert attacker.process.control.recv() == (5, errno.E2BIG)
        hostile.wait_flips()


def test_the_web_client_limit_from_the_host_config_turns_sockets_away(tmp_path: Path) -> None:
    config = tmp_path / "host.toml"
    config.write_text('[web]\nmax_clients = 2\n[[guest]]\nname = "kite"\ndomid = 4\n'
                      'vdispl = ["connectors=c0:64x48"]\n')  # fmt: skip
    run_dir = Path(tempfile.mkdtemp(prefix="pvcfg-", dir="/tmp"))  # short: socket paths
    try:
        process = subprocess.Popen(
            [SCRIPT, "backend", "--config", config, "--run-dir", run_dir, "--listen",
             "127.0.0.1:0"],
            stdout=subprocess.PIPE,
            stderr=subprocess.DEVNULL,
            text=True,
            start_new_session=True,
        )  # fmt: skip
        try:
            view = f"ws{_web_url(process).removeprefix('http')}ws/view/4/0/0"
            assert asyncio.run(_sockets_refused(view, 5)) == 3
        finally:
            process.send_signal(signal.SIGINT)
            try:
                process.wait(PATIENCE)
            except subprocess.TimeoutExpired:  # it must not outlive the test, nor its group
                os.killpg(process.pid, signal.SIGKILL)
                process.wait()
                raise
    finally:
        shutil.rmtree(run_dir)


def _web_url(process: "subprocess.Popen[str]") -> str:
    lines: queue.Queue[str] = queue.Queue()
    assert process.stdout is not None
    stdout = process.stdout

    def read() -> None:
        for line in stdout:
            lines.put(line)

    threading.Thread(target=read, daemon=True).start()
    while True:
        line = lines.get(timeout=PATIENCE)
        if "web viewer" in line:
            return line.split()[-1]


async def _sockets_refused(url: str, count: int) -> int:
    """Open `count` WebSockets at once, holding them; how many got 503."""
    refused = 0
    async with aiohttp.ClientSession() as client:
        held = []
        for _ in range(count):
            try:
                held.append(await client.ws_connect(url))
            except aiohttp.WSServerHandshakeError as error:
                refused += error.status == 503
        for socket_ in held:
            await socket_.close()
    return refused
