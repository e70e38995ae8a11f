"""Domain names for the index, read from XenStore as `xl list` reads them.

The planes socket knows domains only by id; the toolstack writes each domain's name at
`/local/domain/N/name` before the domain runs (read-only to the guest, so a guest cannot
rename itself in the index). The viewer reads it over xenstored's read-only socket,
once per domain while that domain has planes.
"""

import asyncio
import logging
import os
from collections.abc import Iterable
from pathlib import Path

from pvdisplay import logs
from pvdisplay.store.aio import AsyncClient
from pvdisplay.store.protocol import XenStoreError
from pvdisplay.wire.errors import ProtocolError

log = logging.getLogger(__name__)


class DomainNames:
    """Names of domains, from the xenstored at `xenstore_socket` (None: no names)."""

    def __init__(self, xenstore_socket: str | os.PathLike[str] | None) -> None:
        self.xenstore_socket = None if xenstore_socket is None else Path(xenstore_socket)
        self._names: dict[int, str] = {}
        self._client: AsyncClient | None = None
        self._lock = asyncio.Lock()

    async def lookup(self, domids: Iterable[int]) -> dict[int, str]:
        """The names of `domids` that XenStore has; forgets every other domain, so a
        domid used again by a new domain is read again."""
        wanted = set(domids)
        async with self._lock:
            for domid in set(self._names) - wanted:
                del self._names[domid]
            for domid in sorted(wanted - set(self._names)):
                name = await self._read(domid)
                if name is not None:
                    self._names[domid] = name
            return dict(self._names)

    async def close(self) -> None:
        if self._client is not None:
            await self._client.close()
            self._client = None

    async def _read(self, domid: int) -> str | None:
        if self.xenstore_socket is None:
            return None
        try:
            if self._client is None:
                self._client = await AsyncClient.connect(self.xenstore_socket)
            value = await self._client.read(f"/local/domain/{domid}/name")
        except XenStoreError as error:  # no such node (yet): blank until it exists
            log.debug("no domain name", extra=logs.fields(domid=domid, reason=error))
            return None
        except (OSError, ProtocolError) as error:  # xenstored absent or gone: retried later
            log.debug("xenstore unavailable", extra=logs.fields(reason=error))
            await self.close()
            return None
        return value.decode(errors="replace")
