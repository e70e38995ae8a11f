"""The broker's tables: domains, memory objects, grant entries, mappings, ports, handles.

Sans-IO. Every call names the calling domain as the broker learned it from the socket
the request arrived on; nothing in a request can claim another identity. Calls raise
`HypervisorError` with the errno the Linux driver would give and change nothing when
they fail. What the I/O layer must do as a consequence (close a memfd, tell a domain
its port changed) is queued as effects, collected with `take_effects()`.

Lifetimes, as in Xen:
- A memory object lives while its owner holds it or any grant entry points into it.
- A grant entry lives until ended *and* unpinned; ending a pinned entry is deferred
  and completes on the last unmap (gntalloc's and gntdev IMP_RELEASE's behaviour).
- A mapping or export pins the entries it covers; a dead domain's mappings unpin.
- A dead domain's grants are ended at once; entries still mapped by others stay,
  without the domain, until unmapped. They stay in the dead domain's own grant table,
  as Xen keeps a dying domain until its pages are released: its id may be reused at
  once, and the new domain starts with an empty table that the old refs never touch.
"""

import errno
from collections import deque
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from operator import attrgetter
from typing import cast

from pvdisplay.hv import DOMID_FIRST_RESERVED, HypervisorError, PortState
from pvdisplay.ipc.buffers import new_handle_id
from pvdisplay.ipc.memory import Segment


@dataclass(frozen=True)
class Limits:
    """Per-domain caps. Defaults follow Xen's and Linux's own defaults."""

    memory_pages: int = 262_144
    """Grantable memory a domain may own (1 GiB)."""
    granted_pages: int = 32_768
    """Grant entries, deferred ones included: max_grant_frames 64 x 512 v1 entries."""
    mapped_pages: int = 524_288
    """Foreign pages mapped or exported at once: max_maptrack_frames 1024 x 512."""
    event_channels: int = 4_096
    """Ports per domain: the 2-level event channel ABI on 64-bit."""
    refs_per_call: int = 65_536
    """Refs in one map/export/grant call: gntdev's `limit` module parameter."""
    descriptors: int = 1_024
    """Descriptors the broker may hold for one domain: one per memory object it owns (two
    once the object is also handed out read-only), one per port, one per live export.
    Xen has no descriptors, but its heap is finite too; one-page objects would otherwise
    fill the broker's table long before `memory_pages`."""
    backend_descriptors: int = 16_384
    """`descriptors` for the backend domain, which holds what it serves every guest (ports,
    exports, backend-allocated buffers); each guest's share of that is bounded by the
    backend's own per-device budgets."""
    backend_domid: int = 0


@dataclass(frozen=True)
class AllocationFreed:
    alloc: int


@dataclass(frozen=True)
class PortClosed:
    domid: int
    port: int


@dataclass(frozen=True)
class PortBound:
    """`domid`'s unbound `port` is now connected to `remote_domid`:`remote_port`."""

    domid: int
    port: int
    remote_domid: int
    remote_port: int


@dataclass(frozen=True)
class PortUnbound:
    """`domid`'s `port` lost its peer (unbind or death) and is unbound again."""

    domid: int
    port: int
    remote_domid: int


Effect = AllocationFreed | PortClosed | PortBound | PortUnbound


@dataclass(frozen=True)
class Layout:
    """Where mapped refs live: distinct memory objects and runs of pages in ref order."""

    objects: list[int]
    segments: list[Segment]


@dataclass(frozen=True)
class NewObject:
    """A memory object the broker has not seen, offered by an import."""

    pages: int
    writable: bool


@dataclass(frozen=True)
class Imported:
    id: str
    refs: list[int]
    adopted: dict[int, int]
    """Index into the import's object list -> id of the memory object created for it."""


@dataclass(slots=True, eq=False)
class _Entry:
    granter: "_Domain" = field(repr=False)
    ref: int
    alloc: int
    page: int
    access: tuple[int, bool] | None
    """(grantee, readonly) while the grant stands; None once ended."""
    frame: int
    """alloc << 32 | page: consecutive frames are consecutive pages of one object."""
    pins: int = 0


@dataclass(slots=True, eq=False)
class _Allocation:
    id: int
    owner: "_Domain" = field(repr=False)
    pages: int
    writable: bool
    held: bool
    adopted: bool = False
    """Came in through an import: lives as long as its grants, may be imported again."""
    readonly_view: bool = False
    """The broker holds a read-only reopen of the object too (charged to the owner)."""
    entries: dict[int, _Entry] = field(default_factory=dict)


@dataclass(slots=True)
class _Port:
    state: PortState
    remote_domid: int
    remote_port: int | None = None


@dataclass(slots=True, eq=False)
class _Domain:
    domid: int
    memory_pages: int = 0
    granted_pages: int = 0
    mapped_pages: int = 0
    descriptors: int = 0
    next_ref: int = 1
    free_refs: deque[int] = field(default_factory=deque)
    ports: dict[int, _Port] = field(default_factory=dict)
    maps: dict[int, list[_Entry]] = field(default_factory=dict)
    next_map: int = 1
    grants: dict[int, _Entry] = field(default_factory=dict)


@dataclass(slots=True, eq=False)
class _Export:
    """A live export; the broker holds one descriptor for it (the lease's watch end)."""

    exporter: _Domain
    entries: list[_Entry]


@dataclass(slots=True, eq=False)
class _Import:
    importer: _Domain
    entries: list[_Entry]


_ACCESS = attrgetter("access")
_FRAME = attrgetter("frame")
_FIRST = attrgetter("first_page")


def _partial(memory: int | NewObject, pages: int) -> HypervisorError:
    # A grantee gets the descriptor of a whole memory object, so granting part of one
    # would expose the rest; page-exact isolation takes separate objects.
    name = "new memory" if isinstance(memory, NewObject) else f"memory {memory}"
    return HypervisorError(
        errno.EINVAL, f"a grant must cover all {pages} pages of {name}, not part of it"
    )


class HypervisorTables:
    def __init__(self, limits: Limits, descriptor_capacity: int | None = None) -> None:
        """`descriptor_capacity` caps the descriptors of all domains together (None: no cap).

        The broker passes part of its RLIMIT_NOFILE, so that domains' budgets, which may
        add up to more than the process can hold, fail with ENFILE instead of the broker
        meeting EMFILE.
        """
        self.limits = limits
        self.descriptor_capacity = descriptor_capacity
        self._descriptors = 0
        self._domains: dict[int, _Domain] = {}
        self._allocs: dict[int, _Allocation] = {}
        self._next_alloc = 1
        self._exports: dict[str, _Export] = {}
        self._imports: dict[str, _Import] = {}
        self._effects: list[Effect] = []

    # -- domains -------------------------------------------------------------------

    def add_domain(self, domid: int) -> None:
        if domid in self._domains or not 0 <= domid < DOMID_FIRST_RESERVED:
            raise HypervisorError(errno.EEXIST, f"domain {domid} exists or is reserved")
        self._domains[domid] = _Domain(domid)

    def destroy_domain(self, domid: int) -> None:
        """Tear down everything a dead domain held; mapped grants of it linger."""
        dom = self._domains.pop(domid, None)
        if dom is None:
            return
        for port in list(dom.ports):
            self._close_port(dom, port)
        for entries in dom.maps.values():
            self._unpin(entries)
        dom.maps.clear()
        for import_id in [i for i, imp in self._imports.items() if imp.importer is dom]:
            del self._imports[import_id]
        for entry in list(dom.grants.values()):
            self._end(entry)
        for alloc in [a for a in self._allocs.values() if a.owner is dom and a.held]:
            alloc.held = False
            self._maybe_free(alloc)

    def domains(self) -> list[int]:
        return sorted(self._domains)

    # -- memory and grants ---------------------------------------------------------

    def alloc(self, caller: int, pages: int) -> int:
        dom = self._domain(caller)
        if pages < 1:
            raise HypervisorError(errno.EINVAL, "zero-page allocation")
        self._check_memory(dom, pages)
        self._check_descriptors(dom, 1, errno.ENOMEM)
        return self._new_allocation(dom, pages, writable=True, held=True).id

    def free(self, caller: int, alloc_id: int) -> list[int]:
        """Drop the owner's hold on an object and end every grant of it."""
        alloc = self._allocs.get(alloc_id)
        if alloc is None or alloc.owner is not self._domains.get(caller) or not alloc.held:
            raise HypervisorError(errno.EINVAL, f"domain {caller} holds no memory {alloc_id}")
        deferred = [e.ref for e in list(alloc.entries.values()) if self._end(e)]
        alloc.held = False
        self._maybe_free(alloc)
        return deferred

    def grant(
        self, caller: int, grantee: int, alloc_id: int, pages: Sequence[int], readonly: bool
    ) -> list[int]:
        dom = self._domain(caller)
        alloc = self._allocs.get(alloc_id)
        if alloc is None or alloc.owner is not dom or not alloc.held:
            raise HypervisorError(errno.EINVAL, f"domain {caller} holds no memory {alloc_id}")
        self._check_batch(len(pages))
        if any(not 0 <= page < alloc.pages for page in pages):
            raise HypervisorError(errno.EINVAL, f"page outside memory {alloc_id}")
        if len(set(pages)) != alloc.pages:
            raise _partial(alloc_id, alloc.pages)
        self._check_grantable(dom, grantee, alloc.writable, readonly, len(pages))
        return [self._new_entry(dom, grantee, alloc, page, readonly).ref for page in pages]

    def share(self, caller: int, grantee: int, pages: int, readonly: bool) -> tuple[int, list[int]]:
        """Allocate and grant every page (gntalloc); all or nothing."""
        dom = self._domain(caller)
        self._check_batch(pages)
        self._check_memory(dom, pages)
        self._check_grantable(dom, grantee, True, readonly, pages)
        # gntalloc answers ENOMEM when it cannot allocate what a new grant needs.
        self._check_descriptors(dom, 1, errno.ENOMEM)
        alloc = self._new_allocation(dom, pages, writable=True, held=True)
        return alloc.id, [
            self._new_entry(dom, grantee, alloc, page, readonly).ref for page in range(pages)
        ]

    def end_access(self, caller: int, refs: Sequence[int]) -> list[int]:
        """End grants; returns the refs whose ending waits for their last unmap."""
        table = self._domain(caller).grants
        self._check_batch(len(refs))
        entries: list[_Entry] = []
        for ref in refs:
            entry = table.get(ref)
            if entry is None:
                raise HypervisorError(errno.EINVAL, f"domain {caller} has no grant ref {ref}")
            entries.append(entry)
        return [entry.ref for entry in entries if self._end(entry)]

    def map(
        self, caller: int, granter: int, refs: Sequence[int], writable: bool
    ) -> tuple[int, Layout]:
        dom = self._domain(caller)
        entries, layout = self._resolve(caller, granter, refs, writable)
        self._check_mapped(dom, len(entries))
        self._check_handout(dom, layout, writable)
        self._pin(dom, entries)
        map_id = dom.next_map
        dom.next_map += 1
        dom.maps[map_id] = entries
        return map_id, layout

    def unmap(self, caller: int, map_id: int) -> None:
        dom = self._domain(caller)
        entries = dom.maps.pop(map_id, None)
        if entries is None:
            raise HypervisorError(errno.ENOENT, f"domain {caller} has no mapping {map_id}")
        dom.mapped_pages -= len(entries)
        self._unpin(entries)

    # -- buffer handles ------------------------------------------------------------

    def export(
        self, caller: int, granter: int, refs: Sequence[int], writable: bool
    ) -> tuple[str, Layout]:
        dom = self._domain(caller)
        entries, layout = self._resolve(caller, granter, refs, writable)
        self._check_mapped(dom, len(entries))
        self._check_handout(dom, layout, writable, extra=1)
        self._pin(dom, entries)
        self._charge(dom, 1)
        export_id = new_handle_id()
        self._exports[export_id] = _Export(dom, entries)
        return export_id, layout

    def release_export(self, export_id: str) -> None:
        """Every holder of the handle closed it: unpin, even if the exporter is dead."""
        export = self._exports.pop(export_id, None)
        if export is None:
            return
        export.exporter.mapped_pages -= len(export.entries)
        self._charge(export.exporter, -1)
        self._unpin(export.entries)

    def import_buffer(
        self,
        caller: int,
        grantee: int,
        objects: Sequence[int | NewObject],
        segments: Sequence[Segment],
        readonly: bool,
    ) -> Imported:
        """Grant a local buffer's pages; objects are known ids or new ones to adopt."""
        dom = self._domain(caller)
        sizes = []
        for obj in objects:
            if isinstance(obj, NewObject):
                sizes.append((obj.pages, obj.writable))
                continue
            alloc = self._allocs.get(obj)
            if alloc is None or not (alloc.held or alloc.adopted):
                raise HypervisorError(errno.EINVAL, f"memory {obj} is gone")
            if alloc.owner is not dom:
                raise HypervisorError(errno.EPERM, "only the owner of memory may grant it")
            sizes.append((alloc.pages, alloc.writable))
        total = 0
        spans: list[list[Segment]] = [[] for _ in objects]
        for seg in segments:
            if seg.object_index >= len(objects) or seg.pages < 1:
                raise HypervisorError(errno.EINVAL, f"bad segment {seg}")
            pages, writable = sizes[seg.object_index]
            if seg.first_page + seg.pages > pages:
                raise HypervisorError(errno.EINVAL, f"segment {seg} outside its object")
            if not writable and not readonly:
                raise HypervisorError(errno.EINVAL, "read-only buffer granted writable")
            total += seg.pages
            spans[seg.object_index].append(seg)
        for obj, (pages, _), span in zip(objects, sizes, spans, strict=True):
            covered = 0
            for seg in sorted(span, key=_FIRST):
                if seg.first_page > covered:
                    break
                covered = max(covered, seg.first_page + seg.pages)
            if covered != pages:
                raise _partial(obj, pages)
        self._check_batch(total)
        self._check_memory(dom, sum(o.pages for o in objects if isinstance(o, NewObject)))
        self._check_grantable(dom, grantee, True, readonly, total)
        self._check_descriptors(dom, sum(isinstance(o, NewObject) for o in objects), errno.ENOMEM)
        adopted = {}
        for index, obj in enumerate(objects):
            if isinstance(obj, NewObject):
                alloc = self._new_allocation(dom, obj.pages, obj.writable, held=False)
                alloc.adopted = True
                adopted[index] = alloc.id
        alloc_ids = [
            adopted[index] if isinstance(obj, NewObject) else obj
            for index, obj in enumerate(objects)
        ]
        entries: list[_Entry] = []
        for seg in segments:
            alloc = self._allocs[alloc_ids[seg.object_index]]
            entries.extend(
                self._new_entry(dom, grantee, alloc, page, readonly)
                for page in range(seg.first_page, seg.first_page + seg.pages)
            )
        import_id = new_handle_id()
        self._imports[import_id] = _Import(dom, entries)
        return Imported(import_id, [e.ref for e in entries], adopted)

    def release_import(self, caller: int, import_id: str) -> list[int]:
        imported = self._imports.get(import_id)
        if imported is None or imported.importer is not self._domains.get(caller):
            raise HypervisorError(errno.ENOENT, f"domain {caller} has no import {import_id}")
        del self._imports[import_id]
        return [e.ref for e in imported.entries if self._end(e)]

    # -- event channels ------------------------------------------------------------

    def alloc_unbound(self, caller: int, remote_domid: int) -> int:
        dom = self._domain(caller)
        if not 0 <= remote_domid < DOMID_FIRST_RESERVED:
            raise HypervisorError(errno.EINVAL, f"bad remote domain {remote_domid}")
        port = self._free_port(dom)
        dom.ports[port] = _Port(PortState.UNBOUND, remote_domid)
        self._charge(dom, 1)
        return port

    def bind_interdomain(self, caller: int, remote_domid: int, remote_port: int) -> int:
        dom = self._domain(caller)
        peer = self._domains.get(remote_domid)
        if peer is None:
            raise HypervisorError(errno.ESRCH, f"no domain {remote_domid}")
        remote = peer.ports.get(remote_port)
        if remote is None or remote.state is not PortState.UNBOUND or remote.remote_domid != caller:
            raise HypervisorError(
                errno.EINVAL, f"port {remote_port} of domain {remote_domid} is not open to {caller}"
            )
        port = self._free_port(dom)
        dom.ports[port] = _Port(PortState.INTERDOMAIN, remote_domid, remote_port)
        self._charge(dom, 1)
        remote.state = PortState.INTERDOMAIN
        remote.remote_port = port
        self._effects.append(PortBound(remote_domid, remote_port, caller, port))
        return port

    def unbind(self, caller: int, port: int) -> None:
        dom = self._domain(caller)
        if port not in dom.ports:
            raise HypervisorError(errno.ENOTCONN, f"domain {caller} has no port {port}")
        self._close_port(dom, port)

    # -- inspection ----------------------------------------------------------------

    def take_effects(self) -> list[Effect]:
        effects, self._effects = self._effects, []
        return effects

    def stats(self) -> dict[str, int]:
        return {
            "domains": len(self._domains),
            "allocations": len(self._allocs),
            # Every grant is in its memory's entries, a dead granter's lingering ones too.
            "grants": sum(len(a.entries) for a in self._allocs.values()),
            "maps": sum(len(d.maps) for d in self._domains.values()),
            "exports": len(self._exports),
            "imports": len(self._imports),
            "ports": sum(len(d.ports) for d in self._domains.values()),
            "descriptors": self._descriptors,
        }

    def usage(self, domid: int) -> dict[str, int]:
        dom = self._domain(domid)
        return {
            "memory_pages": dom.memory_pages,
            "granted_pages": dom.granted_pages,
            "mapped_pages": dom.mapped_pages,
            "event_channels": len(dom.ports),
            "descriptors": dom.descriptors,
        }

    # -- internals -----------------------------------------------------------------

    def _domain(self, domid: int) -> _Domain:
        dom = self._domains.get(domid)
        if dom is None:
            raise HypervisorError(errno.ESRCH, f"no domain {domid}")
        return dom

    def _check_batch(self, count: int) -> None:
        if not 0 < count <= self.limits.refs_per_call:
            raise HypervisorError(
                errno.EINVAL, f"{count} pages in one call (1..{self.limits.refs_per_call})"
            )

    def _check_memory(self, dom: _Domain, pages: int) -> None:
        if dom.memory_pages + pages > self.limits.memory_pages:
            raise HypervisorError(
                errno.ENOMEM,
                f"domain {dom.domid} would own {dom.memory_pages + pages} pages"
                f" (limit {self.limits.memory_pages})",
            )

    def _check_grantable(
        self, dom: _Domain, grantee: int, writable: bool, readonly: bool, count: int
    ) -> None:
        if not 0 <= grantee < DOMID_FIRST_RESERVED:
            raise HypervisorError(errno.EINVAL, f"bad grantee domain {grantee}")
        if not writable and not readonly:
            raise HypervisorError(errno.EINVAL, "read-only memory granted writable")
        if dom.granted_pages + count > self.limits.granted_pages:
            raise HypervisorError(
                errno.ENOSPC,
                f"domain {dom.domid} would have {dom.granted_pages + count} grants"
                f" (limit {self.limits.granted_pages})",
            )

    def _check_mapped(self, dom: _Domain, count: int) -> None:
        if dom.mapped_pages + count > self.limits.mapped_pages:
            raise HypervisorError(
                errno.ENOMEM,
                f"domain {dom.domid} would map {dom.mapped_pages + count} pages"
                f" (limit {self.limits.mapped_pages})",
            )

    def _check_descriptors(self, dom: _Domain, count: int, code: int) -> None:
        """Room for `count` more descriptors held for `dom`; else `code` (ENFILE when the
        broker as a whole is full, which no single domain's budget could prevent)."""
        limits = self.limits
        limit = (
            limits.backend_descriptors if dom.domid == limits.backend_domid else limits.descriptors
        )
        if dom.descriptors + count > limit:
            raise HypervisorError(
                code,
                f"domain {dom.domid} would make the broker hold {dom.descriptors + count}"
                f" descriptors (limit {limit})",
            )
        capacity = self.descriptor_capacity
        if capacity is not None and self._descriptors + count > capacity:
            raise HypervisorError(
                errno.ENFILE, f"the broker holds {self._descriptors} descriptors (capacity)"
            )

    def _check_handout(self, dom: _Domain, layout: Layout, writable: bool, extra: int = 0) -> None:
        """A map or export passes one descriptor per object it spans (and `extra`);
        the broker holds copies of them until the mapper reads its reply, so they must
        fit the mapper's budget. Read-only reopens are charged to each object's owner."""
        self._check_descriptors(dom, len(layout.objects) + extra, errno.ENOMEM)
        if writable:
            return
        fresh = [self._allocs[a] for a in layout.objects if not self._allocs[a].readonly_view]
        for owner in {id(a.owner): a.owner for a in fresh}.values():
            count = sum(a.owner is owner for a in fresh)
            self._check_descriptors(owner, count, errno.ENOMEM)
        for alloc in fresh:
            alloc.readonly_view = True
            self._charge(alloc.owner, 1)

    def _charge(self, dom: _Domain, count: int) -> None:
        dom.descriptors += count
        self._descriptors += count

    def _new_allocation(self, dom: _Domain, pages: int, writable: bool, held: bool) -> _Allocation:
        alloc = _Allocation(self._next_alloc, dom, pages, writable, held)
        self._next_alloc += 1
        self._allocs[alloc.id] = alloc
        dom.memory_pages += pages
        self._charge(dom, 1)
        return alloc

    def _new_entry(
        self, dom: _Domain, grantee: int, alloc: _Allocation, page: int, readonly: bool
    ) -> _Entry:
        # Fresh refs first, the longest-free after: a stale ref held by a buggy peer
        # then fails instead of reaching a newer grant. Refs stay within the limit.
        if dom.next_ref <= self.limits.granted_pages:
            ref = dom.next_ref
            dom.next_ref += 1
        else:
            ref = dom.free_refs.popleft()
        entry = _Entry(dom, ref, alloc.id, page, (grantee, readonly), alloc.id << 32 | page)
        dom.grants[ref] = entry
        alloc.entries[ref] = entry
        dom.granted_pages += 1
        return entry

    def _resolve(
        self, caller: int, granter: int, refs: Sequence[int], writable: bool
    ) -> tuple[list[_Entry], Layout]:
        """Check every ref may be mapped by `caller`, and lay them out; all or nothing.

        This runs over every page of a mapping, so it makes as few passes as it can,
        each a C-level iteration (map, attrgetter, set) rather than a Python loop.
        """
        self._check_batch(len(refs))
        dom = self._domains.get(granter)
        table = dom.grants if dom is not None else {}
        found = list(map(table.get, refs))
        allowed = {(caller, False)} if writable else {(caller, False), (caller, True)}
        try:
            mappable = set(map(_ACCESS, found)) <= allowed
        except AttributeError:  # a ref with no entry
            mappable = False
        if not mappable:
            raise HypervisorError(
                errno.EINVAL,
                f"refs of domain {granter} not all mappable"
                f" {'writable ' if writable else ''}by domain {caller}",
            )
        entries = cast(list[_Entry], found)  # every ref was found, or we raised
        frames = list(map(_FRAME, entries))
        if frames == list(range(frames[0], frames[0] + len(frames))):
            return entries, Layout([entries[0].alloc], [Segment(0, entries[0].page, len(frames))])
        objects = list(dict.fromkeys(entry.alloc for entry in entries))
        index = {alloc: i for i, alloc in enumerate(objects)}
        runs: list[list[int]] = []
        previous = -2
        for entry, frame in zip(entries, frames, strict=True):
            if frame == previous + 1:
                runs[-1][2] += 1
            else:
                runs.append([index[entry.alloc], entry.page, 1])
            previous = frame
        return entries, Layout(objects, [Segment(*run) for run in runs])

    def _pin(self, dom: _Domain, entries: Iterable[_Entry]) -> None:
        count = 0
        for entry in entries:
            entry.pins += 1
            count += 1
        dom.mapped_pages += count

    def _unpin(self, entries: Iterable[_Entry]) -> None:
        for entry in entries:
            entry.pins -= 1
            if entry.pins == 0 and entry.access is None:
                self._remove(entry)

    def _end(self, entry: _Entry) -> bool:
        """End one grant; True when still pinned, so the removal is deferred."""
        if entry.access is None:
            return entry.pins > 0
        entry.access = None
        if entry.pins:
            return True
        self._remove(entry)
        return False

    def _remove(self, entry: _Entry) -> None:
        granter = entry.granter
        del granter.grants[entry.ref]
        granter.granted_pages -= 1
        granter.free_refs.append(entry.ref)
        alloc = self._allocs[entry.alloc]
        del alloc.entries[entry.ref]
        self._maybe_free(alloc)

    def _maybe_free(self, alloc: _Allocation) -> None:
        if alloc.held or alloc.entries:
            return
        del self._allocs[alloc.id]
        alloc.owner.memory_pages -= alloc.pages
        self._charge(alloc.owner, -1 - alloc.readonly_view)
        self._effects.append(AllocationFreed(alloc.id))

    def _free_port(self, dom: _Domain) -> int:
        if len(dom.ports) >= self.limits.event_channels:
            raise HypervisorError(
                errno.ENOSPC, f"domain {dom.domid} has {len(dom.ports)} ports (limit)"
            )
        # Xen's get_free_port() answers ENOSPC when it cannot make a port.
        self._check_descriptors(dom, 1, errno.ENOSPC)
        port = 1
        while port in dom.ports:
            port += 1
        return port

    def _close_port(self, dom: _Domain, port: int) -> None:
        closed = dom.ports.pop(port)
        self._charge(dom, -1)
        self._effects.append(PortClosed(dom.domid, port))
        if closed.state is not PortState.INTERDOMAIN or closed.remote_port is None:
            return
        peer = self._domains.get(closed.remote_domid)
        remote = peer.ports.get(closed.remote_port) if peer is not None else None
        if remote is not None and remote.remote_domid == dom.domid and remote.remote_port == port:
            remote.state = PortState.UNBOUND
            remote.remote_port = None
            self._effects.append(PortUnbound(closed.remote_domid, closed.remote_port, dom.domid))
