// Plugin tcp (root id "tcp"): a network (L4) filter that upper-cases what the upstream sends back and counts
// bytes both ways.
//
// proxy-runtime 0.1.8 has the TCP callbacks on Context (onNewConnection, onDownstreamData, onUpstreamData,
// on*ConnectionClose) but does not export the ABI entry points for them, so this module exports them itself
// and dispatches to its contexts. Every chunk of upstream data has its ASCII letters upper-cased in place
// (chunk by chunk, so the result does not depend on how the bytes are split); downstream data passes
// unchanged. On connection open it logs "tcp: new connection", and when the downstream side closes it logs
// "tcp: closed downstream_bytes=<n> upstream_bytes=<m>".
export * from "@solo-io/proxy-runtime/proxy";
import {
  RootContext, Context, registerRootContext, FilterStatusValues, log, LogLevelValues,
} from "@solo-io/proxy-runtime";
import { getContext, get_buffer_bytes, BufferTypeValues, PeerTypeValues, WasmResultValues } from "@solo-io/proxy-runtime/runtime";

// @ts-ignore: decorator
@external("env", "proxy_set_buffer_bytes")
declare function proxy_set_buffer_bytes(typ: i32, start: u32, length: u32, data: usize, size: usize): u32;

class TcpRoot extends RootContext {
  // no configuration; the base onConfigure is broken (see ../../_shared/config.ts)
  onConfigure(configuration_size: u32): bool {
    return true;
  }

  createContext(context_id: u32): Context {
    return new Tcp(context_id, this);
  }
}

class Tcp extends Context {
  downstreamBytes: u64 = 0;
  upstreamBytes: u64 = 0;

  constructor(context_id: u32, root_context: TcpRoot) {
    super(context_id, root_context);
  }

  onNewConnection(): FilterStatusValues {
    log(LogLevelValues.info, "tcp: new connection");
    return FilterStatusValues.Continue;
  }

  onDownstreamData(size: usize, end: bool): FilterStatusValues {
    this.downstreamBytes += size;
    return FilterStatusValues.Continue;
  }

  onUpstreamData(size: usize, end: bool): FilterStatusValues {
    this.upstreamBytes += size;
    if (size == 0) return FilterStatusValues.Continue;
    const data = Uint8Array.wrap(get_buffer_bytes(BufferTypeValues.NetworkUpstreamData, 0, <u32>size));
    for (let i = 0; i < data.length; i++) {
      const c = data[i];
      if (c >= 0x61 && c <= 0x7a) data[i] = c - 0x20;
    }
    const result = proxy_set_buffer_bytes(BufferTypeValues.NetworkUpstreamData, 0, <u32>size,
      data.dataStart, data.byteLength);
    if (result != WasmResultValues.Ok) {
      log(LogLevelValues.error, "tcp: rewriting upstream data failed: " + result.toString());
    }
    return FilterStatusValues.Continue;
  }

  onDownstreamConnectionClose(t: PeerTypeValues): void {
    log(LogLevelValues.info, "tcp: closed downstream_bytes=" + this.downstreamBytes.toString() +
      " upstream_bytes=" + this.upstreamBytes.toString());
  }
}

// The ABI entry points proxy-runtime 0.1.8 leaves out. The contexts are cast to Tcp: called through the base
// class, assemblyscript 0.14.9 dispatches to Context's own (logging-only) methods, because it never compiles
// these overrides into the virtual-call tables.
function tcpContext(context_id: u32): Tcp {
  return changetype<Tcp>(getContext(context_id));
}
export function proxy_on_new_connection(context_id: u32): u32 {
  return tcpContext(context_id).onNewConnection();
}
export function proxy_on_downstream_data(context_id: u32, data_size: u32, end_of_stream: u32): u32 {
  return tcpContext(context_id).onDownstreamData(data_size, end_of_stream != 0);
}
export function proxy_on_upstream_data(context_id: u32, data_size: u32, end_of_stream: u32): u32 {
  return tcpContext(context_id).onUpstreamData(data_size, end_of_stream != 0);
}
export function proxy_on_downstream_connection_close(context_id: u32, peer_type: u32): void {
  tcpContext(context_id).onDownstreamConnectionClose(peer_type);
}
export function proxy_on_upstream_connection_close(context_id: u32, peer_type: u32): void {
  tcpContext(context_id).onUpstreamConnectionClose(peer_type);
}

registerRootContext((context_id: u32) => { return new TcpRoot(context_id); }, "tcp");
