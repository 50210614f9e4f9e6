"""A proxy-wasm guest that leaks (test_agent_recycle and bench/soak.py share it)."""

from __future__ import annotations

from tests.guests import minimal

#: each request grows linear memory by 64 KiB and writes it (resident pages); a response header says the VM's
#: request count (one character per 10 requests: "0" for 0-9), so a recycled VM shows as a count starting over
LEAKER = f"""(module
  (import "env" "proxy_add_header_map_value" (func $add (param i32 i32 i32 i32 i32) (result i32)))
  {minimal.BUMP_HEAP}
  {minimal.STARTS}
  (global $n (mut i32) (i32.const 0))
  (data (i32.const 1024) "x-vm-requests")
  (func (export "proxy_on_context_create") (param i32 i32))
  (func (export "proxy_on_request_headers") (param i32 i32 i32) (result i32) (local $p i32)
    (local.set $p (memory.grow (i32.const 1)))
    (if (i32.ne (local.get $p) (i32.const -1))
      (then (memory.fill (i32.shl (local.get $p) (i32.const 16)) (i32.const 1) (i32.const 65536))))
    (global.set $n (i32.add (global.get $n) (i32.const 1)))
    (i32.const 0))
  (func (export "proxy_on_response_headers") (param i32 i32 i32) (result i32)
    (i32.store8 (i32.const 1100) (i32.add (i32.const 48) (i32.div_u (global.get $n) (i32.const 10))))
    (drop (call $add (i32.const 2) (i32.const 1024) (i32.const 13) (i32.const 1100) (i32.const 1)))
    (i32.const 0)))"""
