"""Every proxy-wasm host import, as thin shims over the host (docs/proxy-wasm-abi.md §2).

Called by meshplug.agent.host: `HostCalls(vm).bind(declared_imports)` returns (import, function) pairs for
meshplug.agent.vm to link. Binding follows the module's *declared* imports: an import known to
meshplug.abi_table with the declared type gets its shim (`SHIMS`: name -> method, one loop binds them);
WASI imports go to meshplug.agent.wasi; anything else gets a stub of the declared type that logs once and
returns UNIMPLEMENTED (``env.abort`` traps, as AssemblyScript expects).

Each shim: check enum ranges, bounds-check guest memory (a `MemoryFault` becomes INVALID_MEMORY_ACCESS),
delegate to the effective context / host, write results, return a status the SDKs accept (lenient where
Envoy's answer would crash the Rust SDK: map mutations on an unavailable map, set_property on a root).
The hottest shims (`SPANS`: header map values, logging, properties, local replies) take their guest strings
as bytes, read by the backend (the fast one in its C trampoline, no Python call per string), and have their
enum check (`GUARDS`) made there too, before any read, in Envoy's order.
All ABI versions' imports are offered whatever the module's marker.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Sequence
from typing import Final

from meshplug import abi_table, errors
from meshplug.agent import grpcwire, headermap, hostapi, pairs, properties, vm, wasi
from meshplug.agent.hostapi import (
    BAD_ARGUMENT,
    BUF_FOREIGN_FUNCTION_ARGUMENTS,
    BUF_GRPC_RECEIVE,
    BUF_HTTP_CALL_RESPONSE_BODY,
    BUF_PLUGIN_CONFIGURATION,
    BUF_VM_CONFIGURATION,
    CAS_MISMATCH,
    EMPTY,
    INVALID_MEMORY_ACCESS,
    MAP_REQUEST_HEADERS,
    MAP_REQUEST_TRAILERS,
    MAP_RESPONSE_HEADERS,
    MAP_RESPONSE_TRAILERS,
    NOT_FOUND,
    OK,
    PARSE_FAILURE,
    SERIALIZATION_FAILURE,
    STREAM_REQUEST,
    STREAM_RESPONSE,
    Context,
)
from meshplug.agent.streamapi import LocalReply

_MAX_BUFFER_TYPE: Final = hostapi.MAX_BUFFER_TYPE
_MAX_MAP_TYPE: Final = hostapi.MAX_MAP_TYPE
_NO_INLINE: frozenset[bytes] = frozenset()
#: per map type (index; 0..MAX_MAP_TYPE), the names Envoy keeps as one inline entry (adding to one appends
#: ",value": headermap.add_header); none for the gRPC and http-call maps
_INLINE_NAMES = {
    MAP_REQUEST_HEADERS: headermap.REQUEST_INLINE_HEADERS,
    MAP_REQUEST_TRAILERS: headermap.REQUEST_TRAILER_INLINE_HEADERS,
    MAP_RESPONSE_HEADERS: headermap.RESPONSE_INLINE_HEADERS,
    MAP_RESPONSE_TRAILERS: headermap.RESPONSE_TRAILER_INLINE_HEADERS,
}
_INLINE: Final = tuple(_INLINE_NAMES.get(t, _NO_INLINE) for t in range(_MAX_MAP_TYPE + 1))

_U32: Final = 0xFFFF_FFFF
_READ_ONLY_BUFFERS: Final = frozenset(
    {
        BUF_HTTP_CALL_RESPONSE_BODY,
        BUF_GRPC_RECEIVE,
        BUF_VM_CONFIGURATION,
        BUF_PLUGIN_CONFIGURATION,
        BUF_FOREIGN_FUNCTION_ARGUMENTS,
    }
)

HostFunc = vm.HostFunc


#: guest memory faults become INVALID_MEMORY_ACCESS, malformed pairs BAD_ARGUMENT (mapped by the vm's trampoline)
_SHIM_FAULTS: tuple[tuple[type[BaseException], int], ...] = (
    (vm.MemoryFault, INVALID_MEMORY_ACCESS),
    (pairs.PairsError, BAD_ARGUMENT),
)


def _shim(name: str, fn: Callable[..., int]) -> vm.Faulting:
    return vm.Faulting(fn, _SHIM_FAULTS, SPANS.get(name, ()), GUARDS.get(name))


class HostCalls:
    """The import implementations for one VM. Methods are named after the imports they implement."""

    def __init__(self, wvm: hostapi.Vm) -> None:
        self.vm = wvm
        self.wasi = wasi.Wasi(wvm)
        self._warned: set[str] = set()
        self.guest: vm.Guest  # set by the VM once its guest exists (`use`; shims run only after that)
        # the guest's memory access, as attributes: one call each from the shims, no method lookup per access
        self.read: Callable[[int, int], bytes]
        self.write: Callable[[int, bytes | bytearray | memoryview], None]
        self.write_u32: Callable[[int, int], None]
        self.write_u64: Callable[[int, int], None]
        self.replace_into: Callable[[int, int, bytearray, int], None]

    def use(self, guest: vm.Guest) -> None:
        """Take `guest`'s memory access; again once it is instantiated (the fast backend then hands out its
        C functions over the known memory)."""
        self.guest = guest
        self.read = guest.read
        self.write = guest.write
        self.write_u32 = guest.write_u32
        self.write_u64 = guest.write_u64
        self.replace_into = guest.replace_into

    # -- binding -----------------------------------------------------------------------------------
    def bind(self, decls: Sequence[vm.ImportDecl]) -> list[tuple[vm.ImportDecl, vm.HostImpl]]:
        out: list[tuple[vm.ImportDecl, vm.HostImpl]] = []
        for decl in decls:
            out.append((decl, self._resolve(decl)))
        return out

    def _resolve(self, decl: vm.ImportDecl) -> vm.HostImpl:
        known = abi_table.lookup(decl.module, decl.name)
        sig_ok = known is not None and known.sig.params == decl.sig.params and known.sig.results == decl.sig.results
        if decl.module in abi_table.WASI_MODULES:
            fn = self.wasi.shim(decl.name) if sig_ok else None
            if fn is not None:
                return fn
            return self._stub(decl, wasi.ERRNO_NOSYS)
        if decl.module == abi_table.ENV and sig_ok:
            method = SHIMS.get(decl.name)
            if method is not None:
                return _shim(decl.name, getattr(self, method))
        if decl.module == abi_table.ENV and decl.name == "abort":
            return self._abort
        # Envoy's linker refuses a module whose env imports it cannot satisfy; so do we
        why = "has a type the ABI does not define" if known is not None else "is not a host function"
        raise errors.PluginStartError(f"import {decl.module}.{decl.name} {why}", reason="unsupported_import")

    def _stub(self, decl: vm.ImportDecl, result: int) -> HostFunc:
        label = f"{decl.module}.{decl.name}"
        has_result = bool(decl.sig.results)

        def stub(*_args: int) -> int | None:
            if label not in self._warned:
                self._warned.add(label)
                self.vm.log(3, f"unimplemented import {label} called")
            return result if has_result else None

        return stub

    def _abort(self, *_args: int) -> None:
        raise errors.PluginRuntimeError("guest called env.abort", reason="abort")

    # -- helpers -----------------------------------------------------------------------------------
    def _ctx(self) -> Context | None:
        return self.vm.effective

    def _give(self, data: bytes | bytearray, ptr_ptr: int, size_ptr: int) -> int:
        """Copy `data` into a fresh guest allocation of exactly len(data) (ABI ref. 3.3)."""
        n = len(data)
        p = 0
        if n:
            p = self.vm.allocate(n)
            if p == 0:
                return INVALID_MEMORY_ACCESS
            self.write(p, data)
        self.write_u32(ptr_ptr, p)
        self.write_u32(size_ptr, n)
        return OK

    def _give_range(self, parts: list[bytes | bytearray], start: int, end: int, ptr_ptr: int, size_ptr: int) -> int:
        """`_give` of bytes [start, end) (start < end) of a buffer held as `parts`, in order: each piece's share is
        written where it goes in the guest's allocation (a body held as the chunks it came in is not joined
        first: one copy, into guest memory)."""
        p = self.vm.allocate(end - start)
        if p == 0:
            return INVALID_MEMORY_ACCESS
        at = 0  # where the current piece starts in the buffer
        for part in parts:
            size = len(part)
            lo = max(start, at)
            hi = min(end, at + size)
            if lo < hi:
                whole = lo == at and hi == at + size
                self.write(p + lo - start, part if whole else memoryview(part)[lo - at : hi - at])
            at += size
            if at >= end:
                break
        self.write_u32(ptr_ptr, p)
        self.write_u32(size_ptr, end - start)
        return OK

    # -- logging, time, ticks ----------------------------------------------------------------------
    def proxy_log(self, level: int, data: bytes) -> int:
        # level <= 5 (GUARDS); data bounds-checked as cpp-host's getMemory, logged or not
        if level >= self.vm.host.log_level:  # below the agent's level: nothing decoded, formatted or kept
            self.vm.log(level, data.decode(errors="replace"))
        return OK

    def proxy_get_log_level(self, ret: int) -> int:
        self.write_u32(ret, self.vm.host.log_level)
        return OK

    def proxy_get_current_time_nanoseconds(self, ret: int) -> int:
        self.write_u64(ret, time.time_ns())
        return OK

    def proxy_set_tick_period_milliseconds(self, period: int) -> int:
        ctx = self._ctx()
        if ctx is not None:
            self.vm.host.set_tick_period(ctx.root, period)
        return OK

    # -- configuration (0.1.0) and buffers -----------------------------------------------------------
    def proxy_get_configuration(self, ptr_ptr: int, size_ptr: int) -> int:
        ctx = self._ctx()
        if ctx is None:
            return NOT_FOUND
        root = ctx.root
        config = root.plugin_ref.config
        data = config.vm_configuration if root.in_callback == "vm_start" else config.configuration
        return self._give(data, ptr_ptr, size_ptr)

    def proxy_get_buffer_bytes(self, btype: int, start: int, max_size: int, ptr_ptr: int, size_ptr: int) -> int:
        if btype > _MAX_BUFFER_TYPE:
            return BAD_ARGUMENT
        ctx = self._ctx()
        held = ctx.buffer_parts(btype) if ctx is not None else None
        if held is None:
            return NOT_FOUND
        if start > start + max_size:
            return BAD_ARGUMENT
        length, parts = held
        end = min(length, start + max_size)
        if start >= end:
            return self._give(b"", ptr_ptr, size_ptr)
        if len(parts) == 1 and start == 0 and end == length:  # the whole buffer, held in one piece
            return self._give(parts[0], ptr_ptr, size_ptr)
        return self._give_range(parts, start, end, ptr_ptr, size_ptr)

    def proxy_set_buffer_bytes(self, btype: int, start: int, size: int, ptr: int, vsize: int) -> int:
        if btype > _MAX_BUFFER_TYPE or btype in _READ_ONLY_BUFFERS:
            return BAD_ARGUMENT
        ctx = self._ctx()
        held = ctx.writable_size(btype) if ctx is not None else None
        if ctx is None or held is None:
            return NOT_FOUND
        if start == 0 and size >= held and ctx.replaces_whole(btype):
            # the whole body: one copy out of guest memory, into the bytes that pass on (no buffer copy later;
            # the chunks held are not joined first)
            ctx.replace_buffer(btype, self.read(ptr, vsize))
            return OK
        buf = ctx.writable_buffer(btype)
        if buf is None:
            return NOT_FOUND
        if start == 0:  # in place, from guest memory: one copy, the buffer's memory reused
            self.replace_into(ptr, vsize, buf, size)
        elif start >= len(buf):
            buf += self.read(ptr, vsize)
        else:
            return BAD_ARGUMENT
        return OK

    def proxy_get_buffer_status(self, btype: int, len_ptr: int, flags_ptr: int) -> int:
        if btype > _MAX_BUFFER_TYPE:
            return BAD_ARGUMENT
        ctx = self._ctx()
        held = ctx.buffer_parts(btype) if ctx is not None else None
        if held is None:
            return NOT_FOUND
        self.write_u32(len_ptr, held[0])
        self.write_u32(flags_ptr, 0)
        return OK

    # -- header maps -------------------------------------------------------------------------------
    def _map(self, mtype: int) -> list[tuple[bytes, bytes]] | None:
        ctx = self._ctx()
        return ctx.header_map(mtype) if ctx is not None else None

    def proxy_get_header_map_pairs(self, mtype: int, ptr_ptr: int, size_ptr: int) -> int:
        if mtype > _MAX_MAP_TYPE:
            return BAD_ARGUMENT
        hmap = self._map(mtype)
        return self._give(pairs.encode(hmap or []), ptr_ptr, size_ptr)

    def proxy_set_header_map_pairs(self, mtype: int, data: bytes) -> int:
        new = pairs.decode(data)
        hmap = self._map(mtype)
        if hmap is not None:
            hmap.clear()
            inline = _INLINE[mtype]
            for k, v in new:  # Envoy: remove every entry, then addCopy each pair (inline names coalesce)
                headermap.add_header(hmap, k.lower(), v, inline)
            self._request_headers_changed(mtype)
        return OK

    def _request_headers_changed(self, mtype: int) -> None:
        """Envoy's wasm context clears the route cache when a plugin changes the request headers: the
        router picks the route again on what the plugins left."""
        if mtype == MAP_REQUEST_HEADERS:
            ctx = self._ctx()
            if ctx is not None:
                ctx.clear_route_cache()

    def proxy_get_header_map_value(self, mtype: int, key: bytes, ptr_ptr: int, size_ptr: int) -> int:
        hmap = self._map(mtype)
        if hmap is not None:
            for k, v in hmap:
                if k == key:
                    return self._give(v, ptr_ptr, size_ptr)
        if "proxy_abi_version_0_1_0" in self.guest.exports:
            return self._give(b"", ptr_ptr, size_ptr)  # 0.1.0: OK with an empty value (Envoy)
        return NOT_FOUND

    def proxy_add_header_map_value(self, mtype: int, key: bytes, value: bytes) -> int:
        hmap = self._map(mtype)
        if hmap is not None:
            headermap.add_header(hmap, key, value, _INLINE[mtype])
            if mtype == MAP_REQUEST_HEADERS:
                self._request_headers_changed(mtype)
        return OK

    def proxy_replace_header_map_value(self, mtype: int, key: bytes, value: bytes) -> int:
        hmap = self._map(mtype)
        if hmap is not None:
            for i, (k, _) in enumerate(hmap):
                if k == key:
                    hmap[i] = (key, value)
                    hmap[i + 1 :] = [(k2, v2) for k2, v2 in hmap[i + 1 :] if k2 != key]
                    break
            else:
                hmap.append((key, value))
            if mtype == MAP_REQUEST_HEADERS:
                self._request_headers_changed(mtype)
        return OK

    def proxy_remove_header_map_value(self, mtype: int, key: bytes) -> int:
        hmap = self._map(mtype)
        if hmap is not None:
            hmap[:] = [(k, v) for k, v in hmap if k != key]
            if mtype == MAP_REQUEST_HEADERS:
                self._request_headers_changed(mtype)
        return OK

    def proxy_get_header_map_size(self, mtype: int, ret: int) -> int:
        if mtype > _MAX_MAP_TYPE:
            return BAD_ARGUMENT
        self.write_u32(ret, pairs.encoded_size(self._map(mtype) or []))
        return OK

    # -- properties --------------------------------------------------------------------------------
    def proxy_get_property(self, path: bytes, ptr_ptr: int, size_ptr: int) -> int:
        ctx = self._ctx()
        if ctx is None:
            return NOT_FOUND
        try:
            value = properties.lookup(ctx, path)
        except properties.Unserializable:
            return SERIALIZATION_FAILURE
        if value is None:
            return NOT_FOUND
        return self._give(value, ptr_ptr, size_ptr)

    def proxy_set_property(self, path: bytes, value: bytes) -> int:
        ctx = self._ctx()
        if ctx is not None:
            props = ctx.properties
            if props is None:
                props = ctx.properties = {}
            elif ctx.root.declared.get(path) and path in props:
                return BAD_ARGUMENT  # declared read-only (declare_property) and already set: Envoy refuses
            props[path] = value
        return OK

    # -- stream control, local replies -------------------------------------------------------------
    def _stream(self, stype: int, *, close: bool) -> int:
        ctx = self._ctx()
        if ctx is None:
            return OK
        return ctx.close_stream(stype) if close else ctx.continue_stream(stype)

    def proxy_continue_stream(self, stype: int) -> int:
        return self._stream(stype, close=False)

    def proxy_close_stream(self, stype: int) -> int:
        return self._stream(stype, close=True)

    def proxy_continue_request(self) -> int:
        return self._stream(STREAM_REQUEST, close=False)

    def proxy_continue_response(self) -> int:
        return self._stream(STREAM_RESPONSE, close=False)

    def proxy_clear_route_cache(self) -> int:
        ctx = self._ctx()
        if ctx is not None:
            ctx.clear_route_cache()
        return OK

    def proxy_send_local_response(self, status: int, details_raw: bytes, body: bytes, raw: bytes, grpc: int) -> int:
        details = b"_".join(details_raw.split()).decode(errors="replace")
        headers = tuple((k.lower(), v) for k, v in pairs.decode(raw))
        grpc_status = grpc if grpc <= 16 else None
        ctx = self._ctx()
        if ctx is None:
            return BAD_ARGUMENT
        return ctx.send_local_response(LocalReply(status, headers, body, details, grpc_status))

    def proxy_get_status(self, code_ptr: int, ptr_ptr: int, size_ptr: int) -> int:
        ctx = self._ctx()
        code, msg = ctx.root.status if ctx is not None else (0, b"")
        self.write_u32(code_ptr, code)
        return self._give(msg, ptr_ptr, size_ptr)

    # -- http / grpc callouts ----------------------------------------------------------------------
    def proxy_http_call(  # noqa: PLR0917 -- the ABI's argument list
        self,
        uptr: int,
        usize: int,
        hptr: int,
        hsize: int,
        bptr: int,
        bsize: int,
        tptr: int,
        tsize: int,
        timeout_ms: int,
        token_ptr: int,
    ) -> int:
        upstream = self.read(uptr, usize).decode(errors="replace")
        headers = [(k.lower(), v) for k, v in pairs.decode(self.read(hptr, hsize))]
        body = self.read(bptr, bsize)
        trailers = [(k.lower(), v) for k, v in pairs.decode(self.read(tptr, tsize))]
        self.write_u32(token_ptr, 0)  # validate the out-pointer before dispatch (cpp-host)
        names = {k for k, _ in headers}
        if not {b":method", b":path", b":authority"} <= names:
            return BAD_ARGUMENT
        host = self.vm.host
        if host.upstreams is not None and upstream not in host.upstreams:
            return BAD_ARGUMENT
        ctx = self._ctx()
        if ctx is None:
            return BAD_ARGUMENT
        if body and b"content-length" not in names:
            headers.append((b"content-length", str(len(body)).encode()))
        token = host.dispatch_http_call(
            self.vm, ctx.root, upstream=upstream, headers=headers, body=body, trailers=trailers, timeout_ms=timeout_ms
        )
        self.write_u32(token_ptr, token)
        return OK

    def _grpc_open(  # noqa: PLR0917 -- the ABI's argument list
        self, uptr: int, usize: int, sptr: int, ssize: int, mptr: int, msize: int, hptr: int, hsize: int,
        message: bytes | None, timeout_ms: int, token_ptr: int,
    ) -> int:  # fmt: skip
        target = grpcwire.upstream_cluster(self.read(uptr, usize))
        service, method = self.read(sptr, ssize), self.read(mptr, msize)
        metadata = [(k.lower(), v) for k, v in pairs.decode(self.read(hptr, hsize))]
        self.write_u32(token_ptr, 0)  # validate the out-pointer before dispatch (cpp-host)
        host = self.vm.host
        ctx = self._ctx()
        if target is None or ctx is None or (host.upstreams is not None and target[0] not in host.upstreams):
            return PARSE_FAILURE  # Envoy: an upstream it cannot parse or resolve (the Rust SDK accepts this one)
        token = host.dispatch_grpc(self.vm, ctx.root, target[0], target[1], service, method, metadata, message,
                                   timeout_ms)  # fmt: skip
        self.write_u32(token_ptr, token)
        return OK

    def proxy_grpc_call(  # noqa: PLR0917 -- the ABI's argument list
        self, uptr: int, usize: int, sptr: int, ssize: int, mptr: int, msize: int, hptr: int, hsize: int,
        bptr: int, bsize: int, timeout_ms: int, token_ptr: int,
    ) -> int:  # fmt: skip
        message = self.read(bptr, bsize)
        return self._grpc_open(uptr, usize, sptr, ssize, mptr, msize, hptr, hsize, message, timeout_ms, token_ptr)

    def proxy_grpc_stream(  # noqa: PLR0917 -- the ABI's argument list
        self, uptr: int, usize: int, sptr: int, ssize: int, mptr: int, msize: int, hptr: int, hsize: int,
        token_ptr: int,
    ) -> int:  # fmt: skip
        return self._grpc_open(uptr, usize, sptr, ssize, mptr, msize, hptr, hsize, None, 0, token_ptr)

    def proxy_grpc_send(self, token: int, ptr: int, size: int, end: int) -> int:
        return self.vm.host.grpc_op(self.vm, token, "send", self.read(ptr, size), bool(end))

    def proxy_grpc_cancel(self, token: int) -> int:
        return self.vm.host.grpc_op(self.vm, token, "cancel")

    def proxy_grpc_close(self, token: int) -> int:
        return self.vm.host.grpc_op(self.vm, token, "close")

    # -- shared data and queues --------------------------------------------------------------------
    def proxy_get_shared_data(self, kptr: int, ksize: int, ptr_ptr: int, size_ptr: int, cas_ptr: int) -> int:
        found = self.vm.host.shared_data.get(self.vm.vm_id, self.read(kptr, ksize))
        if found is None:
            return NOT_FOUND
        value, cas = found
        status = self._give(value, ptr_ptr, size_ptr)
        if status == OK:
            self.write_u32(cas_ptr, cas)
        return status

    def proxy_set_shared_data(self, kptr: int, ksize: int, vptr: int, vsize: int, cas: int) -> int:
        key, value = self.read(kptr, ksize), self.read(vptr, vsize)
        ok = self.vm.host.shared_data.set(self.vm.vm_id, key, value, cas)
        return OK if ok else CAS_MISMATCH

    def proxy_register_shared_queue(self, nptr: int, nsize: int, ret: int) -> int:
        ctx = self._ctx()
        if ctx is None:
            return BAD_ARGUMENT
        qid = self.vm.host.register_queue(self.vm, ctx.root, self.read(nptr, nsize))
        self.write_u32(ret, qid)
        return OK

    def proxy_resolve_shared_queue(self, vptr: int, vsize: int, nptr: int, nsize: int, ret: int) -> int:
        vm_id = self.read(vptr, vsize).decode(errors="replace") or self.vm.vm_id
        qid = self.vm.host.resolve_queue(vm_id, self.read(nptr, nsize))
        if qid is None:
            return NOT_FOUND
        self.write_u32(ret, qid)
        return OK

    def proxy_enqueue_shared_queue(self, qid: int, ptr: int, size: int) -> int:
        return OK if self.vm.host.enqueue(qid, self.read(ptr, size)) else NOT_FOUND

    def proxy_dequeue_shared_queue(self, qid: int, ptr_ptr: int, size_ptr: int) -> int:
        item = self.vm.host.dequeue(qid)
        if item is False:
            return NOT_FOUND
        if item is None or item is True:
            return EMPTY
        return self._give(item, ptr_ptr, size_ptr)

    # -- metrics -----------------------------------------------------------------------------------
    def proxy_define_metric(self, mtype: int, nptr: int, nsize: int, ret: int) -> int:
        if mtype > 2:
            return BAD_ARGUMENT
        mid = self.vm.host.metrics.define(mtype, self.read(nptr, nsize))
        self.write_u32(ret, mid)
        return OK

    def proxy_increment_metric(self, mid: int, offset: int) -> int:
        m = self.vm.host.metrics
        kind = m.kind.get(mid)
        if kind is None:
            return NOT_FOUND
        delta = offset - (1 << 64) if offset >= 1 << 63 else offset
        if kind == m.HISTOGRAM or (kind == m.COUNTER and delta <= 0):
            return BAD_ARGUMENT
        m.add(mid, delta)
        return OK

    def proxy_record_metric(self, mid: int, value: int) -> int:
        m = self.vm.host.metrics
        kind = m.kind.get(mid)
        if kind is None:
            return NOT_FOUND
        if kind == m.GAUGE:
            m.set(mid, value)
        elif kind == m.COUNTER:
            m.add(mid, value)  # Envoy adds
        else:
            m.record(mid, value)
        return OK

    def proxy_get_metric(self, mid: int, ret: int) -> int:
        m = self.vm.host.metrics
        kind = m.kind.get(mid)
        if kind is None:
            return NOT_FOUND
        if kind == m.HISTOGRAM:
            return BAD_ARGUMENT
        self.write_u64(ret, m.get(mid))
        return OK

    # -- context control, foreign functions --------------------------------------------------------
    def proxy_set_effective_context(self, cid: int) -> int:
        ctx = self.vm.contexts.get(cid)
        if ctx is None or ctx.deleted:
            return BAD_ARGUMENT
        self.vm.effective = ctx
        return OK

    def proxy_done(self) -> int:
        ctx = self._ctx()
        return ctx.done() if ctx is not None else NOT_FOUND

    def proxy_call_foreign_function(  # noqa: PLR0917 -- the ABI's argument list
        self, nptr: int, nsize: int, aptr: int, asize: int, ptr_ptr: int, size_ptr: int
    ) -> int:
        name, args = self.read(nptr, nsize), self.read(aptr, asize)
        if name in _CONTEXT_FOREIGN:
            return self._context_foreign(name, args)
        fn = self.vm.host.foreign.get(name)
        if fn is None:
            return NOT_FOUND
        try:
            result = fn(args)
        except Exception:
            return SERIALIZATION_FAILURE
        if result is None or ptr_ptr == 0:
            return OK
        return self._give(result, ptr_ptr, size_ptr)

    def _context_foreign(self, name: bytes, args: bytes) -> int:
        """Envoy's context-bound foreign functions. Their arguments are protobuf messages
        (envoy.source.extensions.common.wasm.DeclarePropertyArguments / SetEnvoyFilterStateArguments):
        unparsable -> BAD_ARGUMENT, as Envoy.

        declare_property(name=1, readonly=2, type=3, schema=4, span=5): records the property on the root
        context; declaring a name twice -> BAD_ARGUMENT; a read-only one accepts one proxy_set_property per
        stream, later writes -> BAD_ARGUMENT (Envoy's CelState). Values read back as the raw bytes written
        (what Envoy's serializer gives for the bytes/string/protobuf types too).
        set_envoy_filter_state(path=1, value=2, span=3): NOT_FOUND -- Envoy answers that for a key with
        no registered filter-state object factory, and nothing in the agent consumes Envoy filter state.
        """
        try:
            fields = _proto_fields(args)
        except ValueError:
            return BAD_ARGUMENT
        if name == b"set_envoy_filter_state":
            return NOT_FOUND
        ctx = self._ctx()
        path = fields.get(1, b"")
        if ctx is None or not isinstance(path, bytes) or not path:
            return BAD_ARGUMENT
        declared = ctx.root.declared
        if path in declared:
            return BAD_ARGUMENT
        declared[path] = bool(fields.get(2, 0))
        return OK

    # -- toolchain extras --------------------------------------------------------------------------
    def emscripten_notify_memory_growth(self, _index: int) -> None:
        return None

    def pthread_equal(self, a: int, b: int) -> int:
        return int(a == b)


#: import name -> HostCalls method (types come from meshplug.abi_table; one loop in `_resolve` binds them)
SHIMS: dict[str, str] = {
    name: name
    for name in (
        "proxy_log",
        "proxy_get_log_level",
        "proxy_get_current_time_nanoseconds",
        "proxy_set_tick_period_milliseconds",
        "proxy_get_configuration",
        "proxy_get_buffer_bytes",
        "proxy_set_buffer_bytes",
        "proxy_get_buffer_status",
        "proxy_get_header_map_pairs",
        "proxy_set_header_map_pairs",
        "proxy_get_header_map_value",
        "proxy_add_header_map_value",
        "proxy_replace_header_map_value",
        "proxy_remove_header_map_value",
        "proxy_get_header_map_size",
        "proxy_get_property",
        "proxy_set_property",
        "proxy_continue_stream",
        "proxy_close_stream",
        "proxy_continue_request",
        "proxy_continue_response",
        "proxy_clear_route_cache",
        "proxy_send_local_response",
        "proxy_get_status",
        "proxy_http_call",
        "proxy_grpc_call",
        "proxy_grpc_stream",
        "proxy_grpc_send",
        "proxy_grpc_cancel",
        "proxy_grpc_close",
        "proxy_get_shared_data",
        "proxy_set_shared_data",
        "proxy_register_shared_queue",
        "proxy_resolve_shared_queue",
        "proxy_enqueue_shared_queue",
        "proxy_dequeue_shared_queue",
        "proxy_define_metric",
        "proxy_increment_metric",
        "proxy_record_metric",
        "proxy_get_metric",
        "proxy_set_effective_context",
        "proxy_done",
        "proxy_call_foreign_function",
        "emscripten_notify_memory_growth",
        "pthread_equal",
    )
}


#: the shims whose guest strings the backend reads (SPANS: (parameter index of the pointer, lowercase it), the size
#: follows), and those whose first argument is an enum checked before any read (GUARDS: (bound, result))
_MAP_KEY: Final = ((1, True),)
SPANS: dict[str, tuple[tuple[int, bool], ...]] = {
    "proxy_log": ((1, False),),
    "proxy_set_header_map_pairs": ((1, False),),
    "proxy_get_header_map_value": _MAP_KEY,
    "proxy_add_header_map_value": ((1, True), (3, False)),
    "proxy_replace_header_map_value": ((1, True), (3, False)),
    "proxy_remove_header_map_value": _MAP_KEY,
    "proxy_get_property": ((0, False),),
    "proxy_set_property": ((0, False), (2, False)),
    "proxy_send_local_response": ((1, False), (3, False), (5, False)),
}
_MAP_GUARD: Final = (_MAX_MAP_TYPE, BAD_ARGUMENT)
GUARDS: dict[str, tuple[int, int]] = {
    "proxy_log": (5, BAD_ARGUMENT),
    "proxy_set_header_map_pairs": _MAP_GUARD,
    "proxy_get_header_map_value": _MAP_GUARD,
    "proxy_add_header_map_value": _MAP_GUARD,
    "proxy_replace_header_map_value": _MAP_GUARD,
    "proxy_remove_header_map_value": _MAP_GUARD,
}

#: foreign functions that act on the calling context (handled by HostCalls._context_foreign)
_CONTEXT_FOREIGN: Final = frozenset({b"declare_property", b"set_envoy_filter_state"})


_proto_fields = grpcwire.proto_fields
