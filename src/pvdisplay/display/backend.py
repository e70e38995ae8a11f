"""The displif backend core: one frontend device's buffers, framebuffers and connectors.

`DisplayDevice.handle(connector, slot)` takes one 64-byte request already copied out of
that connector's ring and returns the response to put back and the events to send. It
never touches rings, event channels or XenStore; grant mapping and allocation go through
the `pvdisplay.hv.Hypervisor` it is given, and what each connector shows is published to
a `PlaneRegistry`.

Every request gets a response with its id and operation echoed and status 0 or a
negative errno: malformed requests, unknown (-ENOENT) or duplicate (-EEXIST) cookies,
bad sizes (-EINVAL), buffers past the device's page budget (-ENOMEM) and refused
hypervisor calls all become a status, never an exception. The budget keeps one guest
from taking the pages the backend domain can map or allocate for everyone else.
Requests that are not connector-specific (DBUF_*, FB_*) must arrive on connector 0's
ring, as displif.h requires, and serve the whole device.

Zero-copy: a display buffer is exported once (`Buffers.export_from_refs`, or a grant of
the backend's own pages to itself for `be-alloc` buffers) and that handle is what the
plane shows, for every flip of every framebuffer on that buffer. With `copy_frames`
the backend instead copies each presented frame into a buffer of its own and counts the
bytes, as displ_be does without zero-copy.
"""

import errno
import logging
import struct
import threading
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Final, NamedTuple

import numpy as np

from pvdisplay import logs
from pvdisplay.display.limits import (
    DEFAULT_DESCRIPTOR_BUDGET,
    DEFAULT_PAGE_BUDGET,
    MAX_BUFFER_SIZE,
)
from pvdisplay.hv import BufferHandle, GuestMemory, Hypervisor, HypervisorError, Mapping
from pvdisplay.ipc.buffers import SharedBuffer
from pvdisplay.planes.model import Plane, PlaneInfo, PlaneKey, PlaneRegistry
from pvdisplay.wire import displif, edid, fourcc
from pvdisplay.wire.errors import ProtocolError

log = logging.getLogger(__name__)
guest_log = logs.PeerLog(log)
"""Lines a guest's requests make us write, limited per guest (domid)."""

MAX_EDID_BUFFER_SIZE = 1 << 20
"""Largest GET_EDID buffer accepted; displif.h requires at least XENDISPL_EDID_MAX_SIZE."""

_GREF_OFFSET = displif.DIRECTORY_LAYOUT.fields["gref[0]"].offset


@dataclass(frozen=True)
class ConnectorConfig:
    """A connector as the toolstack configured it: index, resolution, unique id."""

    index: int
    width: int
    height: int
    unique_id: str


@dataclass(frozen=True)
class FrontendConfig:
    """One vdispl device of one frontend, with the protocol version it chose."""

    frontend: int
    devid: int
    connectors: tuple[ConnectorConfig, ...]
    be_alloc: bool
    version: int = displif.PROTOCOL_VERSION_INT


class Reply(NamedTuple):
    """What to put on the ring for one request, and the events to send after it, encoded."""

    response: bytes
    events: tuple[bytes, ...] = ()


_PG_FLIP: Final = int(displif.Operation.PG_FLIP)
_OPERATION_OFFSET: Final = displif.PageFlip.LAYOUT.fields["operation"].offset


@dataclass
class _DisplayBuffer:
    cookie: int
    size: int
    data_ofs: int
    pitch: int | None  # None: PRIME import, pending until FB_ATTACH gives the format
    handle: BufferHandle
    memory: GuestMemory | None = None  # be-alloc: our pages, granted to the frontend
    frontend_refs: list[int] = field(default_factory=list)
    mapping: Mapping | None = None  # a view for copy mode, made on first use
    descriptors: int = 0  # what this buffer holds open here, counted in the budget


@dataclass
class _Framebuffer:
    cookie: int
    dbuf: _DisplayBuffer
    width: int
    height: int
    format: fourcc.PixelFormat
    stride: int
    fourcc_text: str  # the plane's `fourcc`, made once rather than per flip


@dataclass(frozen=True)
class _Position:
    x: int
    y: int
    width: int
    height: int


@dataclass
class _OwnBuffer:
    memory: GuestMemory
    handle: BufferHandle

    @property
    def descriptors(self) -> int:
        return _held(self.handle, self.memory)


_LEAST_HELD = 3
"""What the cheapest buffer holds (one object, its lease, the release watch)."""


def _held(handle: BufferHandle, memory: GuestMemory | None) -> int:
    """Descriptors a buffer holds here: its handle's, the hypervisor's watch of the
    handle's release, and our own memory's if we allocated the pages.

    A local handle holds one descriptor per memory object it spans, which only the
    handle knows; a Xen handle holds its gntdev mapping and lease.
    """
    own = handle.descriptors if isinstance(handle, SharedBuffer) else _LEAST_HELD - 1
    return own + 1 + (memory is not None)


@dataclass
class _Connector:
    config: ConnectorConfig
    key: PlaneKey
    frames_lock: threading.Lock
    """The registry's for `key`, kept for the connector's life (`PlaneRegistry.frames_lock`)."""
    next_event_id: int = 0
    frames: int = 0
    position: _Position | None = None
    shown: _Framebuffer | None = None
    # Each framebuffer's plane as described at `position`: flipping between framebuffers
    # then only renews the frame counter (`PlaneRegistry.present`).
    planes: dict[int, Plane] = field(default_factory=dict)
    copy: _OwnBuffer | None = None


def _invalid(message: str) -> ProtocolError:
    return ProtocolError(errno.EINVAL, message)


class DisplayDevice:
    """The backend side of one connected vdispl device."""

    def __init__(
        self,
        hv: Hypervisor,
        config: FrontendConfig,
        planes: PlaneRegistry,
        copy_frames: bool = False,
        *,
        page_budget: int = DEFAULT_PAGE_BUDGET,
        descriptor_budget: int = DEFAULT_DESCRIPTOR_BUDGET,
    ) -> None:
        self.config = config
        self.bytes_copied = 0
        """Pixel bytes copied since connecting: stays 0 unless `copy_frames`."""
        self.page_budget = page_budget
        """Most pages `pages` may reach; a request that would pass it gets -ENOMEM."""
        self.descriptor_budget = descriptor_budget
        """Most `descriptors` may reach; a request that would pass it gets -ENOMEM."""
        self._descriptors = 0
        self._hv = hv
        self._planes = planes
        self._copy_frames = copy_frames
        self._pages = 0
        self._dbufs: dict[int, _DisplayBuffer] = {}
        self._fbs: dict[int, _Framebuffer] = {}
        self._connectors = [
            _Connector(c, key, planes.frames_lock(key))
            for c in config.connectors
            for key in [PlaneKey(config.frontend, config.devid, c.index)]
        ]
        for connector in self._connectors:
            self._publish_blank(connector)

    @property
    def buffers(self) -> int:
        """Display buffers currently held."""
        return len(self._dbufs)

    @property
    def pages(self) -> int:
        """Pages held for this device: its display buffers' and, with `copy_frames`, the
        copies'. Rings, directory pages and GET_EDID buffers are mapped only per request."""
        return self._pages

    @property
    def descriptors(self) -> int:
        """Descriptors held open in this process for this device's buffers and copies."""
        return self._descriptors

    def handle(self, connector: int, slot: bytes) -> Reply:
        """Answer one request that arrived on `connector`'s ring."""
        if len(slot) != displif.REQUEST_SIZE:
            return Reply(displif.encode_response(0, 0, -errno.EINVAL))
        try:
            if slot[_OPERATION_OFFSET] == _PG_FLIP:
                # A request every frame: decoded straight into its two values.
                request_id, fb_cookie = displif.PageFlip.LAYOUT.unpack(slot)
                return self._page_flip(self._connectors[connector], request_id, fb_cookie)
            request = displif.decode_request(slot)
            return self._dispatch(self._connectors[connector], request)
        except ProtocolError as exc:
            status = exc.status
            reason = exc.message
        except HypervisorError as exc:
            status = -(exc.errno or errno.EIO)
            reason = str(exc)
        header = displif.decode_request_header(slot)
        guest_log.info(
            self.config.frontend,
            "request refused",
            domid=self.config.frontend,
            connector=connector,
            id=header.id,
            operation=header.operation,
            status=status,
            reason=reason,
        )
        return Reply(displif.encode_response(header.id, header.operation, status))

    def close(self) -> None:
        """Unpublish every plane and give back every buffer (frontend gone or closed)."""
        for connector in self._connectors:
            self._planes.remove(connector.key)
            connector.shown = None
            connector.planes.clear()
            if connector.copy is not None:
                self._release_own(connector.copy)
                connector.copy = None
        self._fbs.clear()
        for dbuf in list(self._dbufs.values()):
            self._release_dbuf(dbuf)
        self._dbufs.clear()

    # -- requests ------------------------------------------------------------------

    def _dispatch(self, connector: _Connector, request: displif.Request) -> Reply:
        # PG_FLIP never gets here: `handle` answers it without decoding a packet.
        assert not isinstance(request, displif.PageFlip)
        if isinstance(request, displif.SetConfig):
            self._set_config(connector, request)
        elif isinstance(request, displif.GetEdid):
            return self._get_edid(connector, request)
        else:
            if connector.config.index != 0:
                raise _invalid(f"{request.operation.name} must be sent on connector 0's ring")
            if isinstance(request, displif.DbufCreate):
                self._dbuf_create(request)
            elif isinstance(request, displif.DbufDestroy):
                self._dbuf_destroy(request)
            elif isinstance(request, displif.FbAttach):
                self._fb_attach(request)
            else:
                self._fb_detach(request)
        return Reply(displif.encode_response(request.id, request.operation, 0))

    def _dbuf_create(self, request: displif.DbufCreate) -> None:
        cookie = request.dbuf_cookie
        if cookie == 0:
            raise _invalid("display buffer cookie 0 is invalid")
        if cookie in self._dbufs:
            raise ProtocolError(errno.EEXIST, f"display buffer {cookie:#x} exists")
        size = request.buffer_sz
        if not 0 < size <= MAX_BUFFER_SIZE:
            raise _invalid(f"buffer_sz {size} outside 1..{MAX_BUFFER_SIZE}")
        geometry = (request.width, request.height, request.bpp)
        pitch: int | None
        if geometry == (0, 0, 0):
            pitch = None
            if request.data_ofs >= size:
                raise _invalid(f"data_ofs {request.data_ofs} beyond buffer_sz {size}")
        elif 0 in geometry:
            raise _invalid(f"width, height, bpp {geometry}: all or none must be 0")
        else:
            pitch = -(-request.width * request.bpp // 8)
            needed = request.data_ofs + pitch * request.height
            if needed > size:
                raise _invalid(
                    f"{request.width}x{request.height}x{request.bpp} needs {needed}"
                    f" bytes, buffer_sz is {size}"
                )
        num_grefs = displif.grefs_for_buffer(size)
        self._check_budget(num_grefs, f"display buffer {cookie:#x}")
        self._check_descriptors(_LEAST_HELD, f"display buffer {cookie:#x}")
        if request.backend_allocates:
            if not self.config.be_alloc:
                raise _invalid("backend allocation is not enabled (be-alloc)")
            if pitch is None:
                raise _invalid("a backend-allocated buffer needs width, height and bpp")
            if request.data_ofs:
                raise _invalid(f"data_ofs {request.data_ofs} with backend allocation")
            memory, refs = self._hv.grants.share(self.config.frontend, num_grefs)
            try:
                self._walk_directory(request.gref_directory, num_grefs, fill=refs)
                handle = self._export_own(memory)
            except BaseException:
                memory.close()
                raise
            dbuf = _DisplayBuffer(cookie, size, 0, pitch, handle, memory, refs)
        else:
            grefs = self._walk_directory(request.gref_directory, num_grefs)
            handle = self._hv.buffers.export_from_refs(self.config.frontend, grefs, writable=False)
            dbuf = _DisplayBuffer(cookie, size, request.data_ofs, pitch, handle)
        # Only now known: a frontend's buffer may span one memory object per page.
        dbuf.descriptors = _held(handle, dbuf.memory)
        self._pages += num_grefs
        self._descriptors += dbuf.descriptors
        try:
            self._check_descriptors(0, f"display buffer {cookie:#x}")
        except ProtocolError:
            self._release_dbuf(dbuf)
            raise
        self._dbufs[cookie] = dbuf
        log.debug(
            "display buffer created",
            extra=logs.fields(
                domid=self.config.frontend,
                cookie=cookie,
                pages=num_grefs,
                be_alloc=dbuf.memory is not None,
                prime=pitch is None,
            ),
        )

    def _dbuf_destroy(self, request: displif.DbufDestroy) -> None:
        dbuf = self._dbufs.pop(request.dbuf_cookie, None)
        if dbuf is None:
            raise ProtocolError(errno.ENOENT, f"no display buffer {request.dbuf_cookie:#x}")
        for fb in [fb for fb in self._fbs.values() if fb.dbuf is dbuf]:
            self._drop_framebuffer(fb)
        self._release_dbuf(dbuf)

    def _fb_attach(self, request: displif.FbAttach) -> None:
        dbuf = self._dbufs.get(request.dbuf_cookie)
        if dbuf is None:
            raise ProtocolError(errno.ENOENT, f"no display buffer {request.dbuf_cookie:#x}")
        if request.fb_cookie == 0:
            raise _invalid("framebuffer cookie 0 is invalid")
        if request.fb_cookie in self._fbs:
            raise ProtocolError(errno.EEXIST, f"framebuffer {request.fb_cookie:#x} exists")
        pixel_format = fourcc.by_fourcc(request.pixel_format)
        if request.width == 0 or request.height == 0:
            raise _invalid(f"framebuffer {request.width}x{request.height} is empty")
        row = pixel_format.min_pitch(request.width)
        stride = row if dbuf.pitch is None else dbuf.pitch
        if row > stride:
            raise _invalid(
                f"{request.width} {pixel_format.name} pixels need {row} bytes a row,"
                f" the buffer's pitch is {stride}"
            )
        end = dbuf.data_ofs + stride * (request.height - 1) + row
        if end > dbuf.size:
            raise _invalid(f"framebuffer ends at byte {end}, buffer_sz is {dbuf.size}")
        dbuf.pitch = stride
        self._fbs[request.fb_cookie] = _Framebuffer(
            request.fb_cookie,
            dbuf,
            request.width,
            request.height,
            pixel_format,
            stride,
            fourcc.fourcc_text(pixel_format.fourcc),
        )

    def _fb_detach(self, request: displif.FbDetach) -> None:
        fb = self._fbs.get(request.fb_cookie)
        if fb is None:
            raise ProtocolError(errno.ENOENT, f"no framebuffer {request.fb_cookie:#x}")
        self._drop_framebuffer(fb)

    def _set_config(self, connector: _Connector, request: displif.SetConfig) -> None:
        fields = (request.fb_cookie, request.x, request.y, request.width, request.height)
        if fields == (0, 0, 0, 0, 0) and request.bpp == 0:
            connector.position = None
            connector.shown = None
            connector.planes.clear()
            self._publish_blank(connector)
            return
        fb = self._fbs.get(request.fb_cookie)
        if fb is None:
            raise ProtocolError(errno.ENOENT, f"no framebuffer {request.fb_cookie:#x}")
        mode = connector.config
        if request.width == 0 or request.height == 0:
            raise _invalid(f"config {request.width}x{request.height} is empty")
        if request.x + request.width > mode.width or request.y + request.height > mode.height:
            raise _invalid(
                f"config {request.width}x{request.height}+{request.x}+{request.y}"
                f" exceeds the connector's {mode.width}x{mode.height}"
            )
        if request.width > fb.width or request.height > fb.height:
            raise _invalid(f"config larger than framebuffer {fb.width}x{fb.height}")
        if request.bpp != fb.format.bits_per_pixel:
            raise _invalid(f"bpp {request.bpp}, framebuffer is {fb.format.name}")
        connector.position = _Position(request.x, request.y, request.width, request.height)
        connector.planes.clear()
        self._present(connector, fb)

    def _page_flip(self, connector: _Connector, request_id: int, fb_cookie: int) -> Reply:
        fb = self._fbs.get(fb_cookie)
        if fb is None:
            raise ProtocolError(errno.ENOENT, f"no framebuffer {fb_cookie:#x}")
        position = connector.position
        if position is not None and (fb.width < position.width or fb.height < position.height):
            raise _invalid(f"framebuffer {fb.width}x{fb.height} smaller than the config")
        self._present(connector, fb)
        event_id = connector.next_event_id
        connector.next_event_id = (event_id + 1) & 0xFFFF
        return Reply(
            displif.encode_response(request_id, _PG_FLIP, 0),
            (displif.encode_page_flip_event(event_id, fb_cookie),),
        )

    def _get_edid(self, connector: _Connector, request: displif.GetEdid) -> Reply:
        if self.config.version < 2:
            raise ProtocolError(errno.EOPNOTSUPP, "GET_EDID needs protocol version 2")
        size = request.buffer_sz
        if not displif.EDID_MAX_SIZE <= size <= MAX_EDID_BUFFER_SIZE:
            raise _invalid(
                f"EDID buffer_sz {size} outside {displif.EDID_MAX_SIZE}..{MAX_EDID_BUFFER_SIZE}"
            )
        mode = connector.config
        try:
            block = edid.build_edid(mode.width, mode.height, unique_id=mode.unique_id)
        except ValueError as exc:
            raise ProtocolError(errno.EOPNOTSUPP, f"no EDID for this connector: {exc}") from None
        grefs = self._walk_directory(request.gref_directory, displif.grefs_for_buffer(size))
        pages = displif.grefs_for_buffer(len(block))
        frontend = self.config.frontend
        with self._hv.grants.map(frontend, grefs[:pages]) as mapping, mapping.view() as view:
            view[: len(block)] = block
        response = displif.Response(request.id, request.operation, 0, edid_sz=len(block))
        return Reply(response.encode())

    # -- presenting ----------------------------------------------------------------

    def _present(self, connector: _Connector, fb: _Framebuffer) -> None:
        # Under the lock, up to the plane's change: a planes client copying the frame on
        # screen holds it, so the guest's flip completes only once that copy is done.
        with connector.frames_lock:
            self._present_locked(connector, fb)

    def _present_locked(self, connector: _Connector, fb: _Framebuffer) -> None:
        mode = connector.config
        position = connector.position or _Position(
            0, 0, min(fb.width, mode.width), min(fb.height, mode.height)
        )
        handle, offset, copied = fb.dbuf.handle, fb.dbuf.data_ofs, 0
        if self._copy_frames:
            handle, offset, copied = self._copy_frame(connector, fb, position.height)
        connector.frames += 1
        now = time.time()
        plane = connector.planes.get(fb.cookie)
        if plane is None or plane.handle is not handle:
            info = PlaneInfo(
                domid=self.config.frontend,
                devid=self.config.devid,
                connector=mode.index,
                unique_id=mode.unique_id,
                mode_width=mode.width,
                mode_height=mode.height,
                fb_cookie=fb.cookie,
                fourcc=fb.fourcc_text,
                width=position.width,
                height=position.height,
                stride=fb.stride,
                offset=offset,
                x=position.x,
                y=position.y,
                buffer_id=handle.id,
                frame=connector.frames,
                presented_at=now,
                bytes_copied=copied,
            )
            plane = connector.planes[fb.cookie] = Plane(info, handle)
        connector.shown = fb
        self._planes.present(connector.key, plane, connector.frames, now)

    def _copy_frame(
        self, connector: _Connector, fb: _Framebuffer, rows: int
    ) -> tuple[BufferHandle, int, int]:
        dbuf = fb.dbuf
        length = min(fb.stride * rows, dbuf.size - dbuf.data_ofs)
        pages = displif.grefs_for_buffer(length)
        own = connector.copy
        if own is None or own.memory.pages < pages:
            held = 0 if own is None else own.memory.pages
            self._check_budget(pages - held, "the copy of this frame")
            self._check_descriptors(
                _LEAST_HELD + 1 - (own.descriptors if own else 0), "the copy of this frame"
            )
            if own is not None:
                self._planes.remove(connector.key)
                self._release_own(own)
                connector.copy = None
            memory = self._hv.grants.alloc(pages)
            try:
                own = _OwnBuffer(memory, self._export_own(memory))
            except BaseException:
                memory.close()
                raise
            connector.copy = own
            self._pages += pages
            self._descriptors += own.descriptors
        if dbuf.memory is not None:
            source = dbuf.memory.array()
        else:
            if dbuf.mapping is None:
                dbuf.mapping = dbuf.handle.map()
                dbuf.descriptors += 1  # the mapping's hold on the lease
                self._descriptors += 1
            source = dbuf.mapping.array()
        target = own.memory.array()
        np.copyto(target[:length], source[dbuf.data_ofs : dbuf.data_ofs + length])
        del source, target
        self.bytes_copied += length
        return own.handle, 0, length

    def _publish_blank(self, connector: _Connector) -> None:
        mode = connector.config
        self._planes.publish(
            PlaneInfo(
                domid=self.config.frontend,
                devid=self.config.devid,
                connector=mode.index,
                unique_id=mode.unique_id,
                mode_width=mode.width,
                mode_height=mode.height,
                frame=connector.frames,
                presented_at=time.time(),
            ),
            None,
        )

    # -- buffers -------------------------------------------------------------------

    def _walk_directory(
        self, first_ref: int, num_grefs: int, fill: Sequence[int] | None = None
    ) -> list[int]:
        """Collect (or, with `fill`, write) the refs of a page directory chain.

        The chain is as long as `num_grefs` needs, whatever the next pointers say, and
        each page is copied out once before it is parsed.
        """
        reader = displif.PageDirectoryReader(num_grefs)
        ref: int | None = first_ref
        while ref is not None:
            first = len(reader.grefs)
            with (
                self._hv.grants.map(self.config.frontend, [ref], writable=fill is not None) as page,
                page.view() as view,
            ):
                ref = reader.feed(view.tobytes())
                if fill is not None:
                    chunk = fill[first : len(reader.grefs)]
                    struct.pack_into(f"<{len(chunk)}I", view, _GREF_OFFSET, *chunk)
        return reader.grefs

    def _check_budget(self, pages: int, what: str) -> None:
        if self._pages + pages > self.page_budget:
            raise ProtocolError(
                errno.ENOMEM,
                f"{what} needs {pages} pages; the device holds {self._pages} of its"
                f" budget of {self.page_budget}",
            )

    def _check_descriptors(self, count: int, what: str) -> None:
        if self._descriptors + count > self.descriptor_budget:
            raise ProtocolError(
                errno.ENOMEM,
                f"{what} needs descriptors; the device holds {self._descriptors} of its"
                f" budget of {self.descriptor_budget}",
            )

    def _export_own(self, memory: GuestMemory) -> BufferHandle:
        """A handle of our own pages, made by granting them to ourselves and exporting."""
        own = self._hv.domid
        refs = self._hv.grants.grant(own, memory, range(memory.pages), readonly=True)
        try:
            return self._hv.buffers.export_from_refs(own, refs, writable=False)
        finally:
            # The export holds the pages; the self-grants end when it is released.
            self._hv.grants.end_access(refs)

    def _drop_framebuffer(self, fb: _Framebuffer) -> None:
        del self._fbs[fb.cookie]
        for connector in self._connectors:
            connector.planes.pop(fb.cookie, None)
            if connector.shown is fb:
                connector.shown = None
                self._publish_blank(connector)

    def _release_dbuf(self, dbuf: _DisplayBuffer) -> None:
        self._pages -= displif.grefs_for_buffer(dbuf.size)
        self._descriptors -= dbuf.descriptors
        try:
            if dbuf.mapping is not None:
                dbuf.mapping.close()
            with self._planes.handles_lock:
                dbuf.handle.close()
            if dbuf.memory is not None:
                deferred = self._hv.grants.end_access(dbuf.frontend_refs)
                dbuf.memory.close()
                if deferred:
                    log.debug(
                        "grants end when the frontend unmaps",
                        extra=logs.fields(domid=self.config.frontend, refs=len(deferred)),
                    )
        except HypervisorError as exc:
            guest_log.warning(
                self.config.frontend,
                "releasing a display buffer failed",
                domid=self.config.frontend,
                cookie=dbuf.cookie,
                reason=exc,
            )

    def _release_own(self, own: _OwnBuffer) -> None:
        self._pages -= own.memory.pages
        self._descriptors -= own.descriptors
        try:
            with self._planes.handles_lock:
                own.handle.close()
            own.memory.close()
        except HypervisorError as exc:
            log.warning("releasing a copy buffer failed", extra=logs.fields(reason=exc))
