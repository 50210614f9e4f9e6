"""The smallest proxy-wasm module the operator and agent tests deploy: ABI 0.2.1 with `malloc`; it starts,
configures and passes every request on (and, with `network`, every connection)."""

from __future__ import annotations

import wasmtime


def passthrough(extra: str = "", *, vm_start: int = 1, network: bool = False) -> bytes:
    """`extra`: more module text (a data segment makes modules distinct, or large); `vm_start`: the result of
    proxy_on_vm_start (0 fails the VM start, which the ABI check cannot see)."""
    connection = (
        ' (func (export "proxy_on_new_connection") (param i32) (result i32) i32.const 0)\n'
        ' (func (export "proxy_on_downstream_data") (param i32 i32 i32) (result i32) i32.const 0)\n'
        ' (func (export "proxy_on_upstream_data") (param i32 i32 i32) (result i32) i32.const 0)\n'
        if network
        else ""
    )
    wat = f"""(module
 (memory (export "memory") 1)
 (func (export "proxy_abi_version_0_2_1"))
 (func (export "malloc") (param i32) (result i32) i32.const 1024)
 (func (export "proxy_on_context_create") (param i32 i32))
 (func (export "proxy_on_vm_start") (param i32 i32) (result i32) i32.const {vm_start})
 (func (export "proxy_on_configure") (param i32 i32) (result i32) i32.const 1)
 (func (export "proxy_on_request_headers") (param i32 i32 i32) (result i32) i32.const 0)
{connection} (func (export "proxy_on_done") (param i32) (result i32) i32.const 1)
 (func (export "proxy_on_delete") (param i32))
 {extra})"""
    return bytes(wasmtime.wat2wasm(wat))


#: The start of a hand-written test guest, after its imports: 2 pages of exported memory, a bump allocator from
#: page 2 (8-byte aligned, never frees) and the ABI 0.2.1 marker.
BUMP_HEAP = """(memory (export "memory") 2)
  (global $heap (mut i32) (i32.const 65536))
  (func (export "proxy_on_memory_allocate") (param $n i32) (result i32) (local $p i32)
    (local.set $p (global.get $heap))
    (global.set $heap (i32.add (local.get $p) (i32.and (i32.add (local.get $n) (i32.const 7)) (i32.const -8))))
    (local.get $p))
  (func (export "proxy_abi_version_0_2_1"))"""
#: A VM start and a configure that succeed.
STARTS = """(func (export "proxy_on_vm_start") (param i32 i32) (result i32) (i32.const 1))
  (func (export "proxy_on_configure") (param i32 i32) (result i32) (i32.const 1))"""
