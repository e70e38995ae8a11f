"""Structured logging: one line per event, `key=value` fields after the message."""

import logging
import os
import sys
import threading
import time
from collections.abc import Callable, Hashable
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Self

LEVELS = ("debug", "info", "warning", "error")


class KeyValueFormatter(logging.Formatter):
    """Render `log.info("msg", extra={"fields": {...}})` as `ts level logger msg k=v ...`."""

    def format(self, record: logging.LogRecord) -> str:
        fields: dict[str, Any] = getattr(record, "fields", {})
        parts = [
            self.formatTime(record, "%Y-%m-%dT%H:%M:%S"),
            record.levelname.lower(),
            record.name,
            record.getMessage(),
        ]
        parts.extend(f"{key}={_quote(value)}" for key, value in fields.items())
        line = " ".join(parts)
        if record.exc_info:
            line += "\n" + self.formatException(record.exc_info)
        return line


def _quote(value: object) -> str:
    text = str(value)
    if not text or any(ch.isspace() or ch in '"=' for ch in text):
        return '"' + text.replace("\\", "\\\\").replace('"', '\\"') + '"'
    return text


LOG_FILE_ENV = "PVDISPLAY_LOG_FILE"
"""Names the file the whole log is appended to as well; processes a host starts inherit
it, so one file holds the lines of all of them."""


def configure(level: str) -> None:
    """Write lines of `level` and above to stderr, and the whole log to the file named by
    $PVDISPLAY_LOG_FILE, if set (`LogFile`)."""
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(KeyValueFormatter())
    handler.setLevel(level.upper())
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(handler.level)
    path = os.environ.get(LOG_FILE_ENV)
    if path:
        _add_file(Path(path))


class LogFile:
    """The whole log (info and above, or more if stderr shows more) appended to `path`
    too, by this process and by every process it starts, while open."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self._handler: logging.FileHandler | None = None
        self._restore: tuple[str | None, int] = (None, logging.WARNING)

    def open(self) -> None:
        """OSError if the file cannot be opened; nothing is changed then."""
        root = logging.getLogger()
        self._restore = (os.environ.get(LOG_FILE_ENV), root.level)
        self._handler = _add_file(self.path)
        # Named only once open: processes started later would fail to open it too.
        os.environ[LOG_FILE_ENV] = str(self.path)

    def close(self) -> None:
        if self._handler is None:
            return
        root = logging.getLogger()
        root.removeHandler(self._handler)
        self._handler.close()
        self._handler = None
        environment, level = self._restore
        if environment is None:
            os.environ.pop(LOG_FILE_ENV, None)
        else:
            os.environ[LOG_FILE_ENV] = environment
        root.setLevel(level)

    def __enter__(self) -> Self:
        self.open()
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()


def _add_file(path: Path) -> logging.FileHandler:
    handler = logging.FileHandler(path, encoding="utf-8")
    handler.setFormatter(KeyValueFormatter())
    root = logging.getLogger()
    handler.setLevel(min(root.level, logging.INFO))
    root.addHandler(handler)
    root.setLevel(handler.level)
    return handler


def fields(**values: object) -> dict[str, dict[str, object]]:
    """Wrap fields for `extra=`: `log.info("mapped", extra=logs.fields(refs=3))`."""
    return {"fields": values}


@dataclass
class _Bucket:
    tokens: float
    at: float
    dropped: int = 0


class PeerLog:
    """Log lines a peer (a guest, a client, a front-end) can make us write, limited per peer.

    Each peer may write `burst` lines at once and `per_second` lines a second after that;
    the rest are dropped, and the next line let through says how many (`suppressed=N`).
    A guest that fails every flip then costs a few lines a second, not one a flip, and
    one guest's flood never silences another's.
    """

    MAX_PEERS = 4096
    """Peers tracked at once; past it, peers whose allowance is whole again are forgotten."""

    def __init__(
        self,
        logger: logging.Logger,
        burst: int = 10,
        per_second: float = 1.0,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self._logger = logger
        self._burst = burst
        self._rate = per_second
        self._clock = clock
        self._buckets: dict[Hashable, _Bucket] = {}
        # The display backend logs from its ring thread and its event loop.
        self._lock = threading.Lock()

    def log(self, level: int, peer: Hashable, message: str, **values: object) -> None:
        if not self._logger.isEnabledFor(level):
            return
        with self._lock:
            now = self._clock()
            bucket = self._buckets.get(peer)
            if bucket is None:
                if len(self._buckets) >= self.MAX_PEERS:
                    self._forget_idle(now)
                bucket = self._buckets[peer] = _Bucket(self._burst, now)
            bucket.tokens = min(self._burst, bucket.tokens + (now - bucket.at) * self._rate)
            bucket.at = now
            if bucket.tokens < 1:
                bucket.dropped += 1
                return
            bucket.tokens -= 1
            dropped, bucket.dropped = bucket.dropped, 0
        if dropped:
            values["suppressed"] = dropped
        self._logger.log(level, message, extra=fields(**values))

    def info(self, peer: Hashable, message: str, **values: object) -> None:
        self.log(logging.INFO, peer, message, **values)

    def warning(self, peer: Hashable, message: str, **values: object) -> None:
        self.log(logging.WARNING, peer, message, **values)

    def _forget_idle(self, now: float) -> None:
        for peer, bucket in list(self._buckets.items()):
            if not bucket.dropped and bucket.tokens + (now - bucket.at) * self._rate >= self._burst:
                del self._buckets[peer]
