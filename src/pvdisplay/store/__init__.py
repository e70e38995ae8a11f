"""XenStore: the tree model, the xenstored engine and server, and clients."""

from pvdisplay.store.aio import AsyncClient, AsyncTransaction, AsyncWatch
from pvdisplay.store.client import Client, Transaction, Watch, default_socket_path
from pvdisplay.store.permissions import Access, Permission
from pvdisplay.store.protocol import WatchEvent, XenStoreError

__all__ = [
    "Access",
    "AsyncClient",
    "AsyncTransaction",
    "AsyncWatch",
    "Client",
    "Permission",
    "Transaction",
    "Watch",
    "WatchEvent",
    "XenStoreError",
    "default_socket_path",
]
