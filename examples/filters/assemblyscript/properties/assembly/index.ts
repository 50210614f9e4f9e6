// Plugin properties (root id "properties"): reads host properties and reports them as response headers.
//
// At response headers it adds "x-prop-<name>" (dots and underscores as dashes) for each string property
// below, with its value, or "!NotFound" (another failure: "!<WasmResult>") when the host lacks it:
//   plugin_root_id plugin_name plugin_vm_id request.path request.method source.address destination.address
//   xds.cluster_name
// The start logs "properties: root id <plugin_root_id>". proxy-runtime's get_property aborts the VM on any
// non-Ok result, so missing properties are read through the raw import here.
export * from "@solo-io/proxy-runtime/proxy";
import {
  RootContext, Context, registerRootContext, FilterHeadersStatusValues, stream_context, log, LogLevelValues,
} from "@solo-io/proxy-runtime";
import { readPluginConfiguration } from "../../_shared/config";
import { WasmResultValues } from "@solo-io/proxy-runtime/runtime";
import { free } from "@solo-io/proxy-runtime/malloc";

// @ts-ignore: decorator
@external("env", "proxy_get_property")
declare function proxy_get_property(path: usize, path_size: usize, value_ptr_ptr: usize, value_size_ptr: usize): u32;

const NAMES: string[] = [
  "plugin_root_id", "plugin_name", "plugin_vm_id", "request.path", "request.method", "source.address",
  "destination.address", "xds.cluster_name",
];

// Out-parameters of proxy_get_property: the host writes the value's pointer and size here.
const out = new ArrayBuffer(8);

function encodePath(dotted: string): ArrayBuffer {
  // the ABI's path is its segments separated by NUL bytes
  return String.UTF8.encode(dotted.replaceAll(".", "\0"));
}

function readProperty(dotted: string): string {
  const path = encodePath(dotted);
  const slot = changetype<usize>(out);
  store<u32>(slot, 0);
  store<u32>(slot + 4, 0);
  const result = proxy_get_property(changetype<usize>(path), path.byteLength, slot, slot + 4);
  if (result == WasmResultValues.NotFound) return "!NotFound";
  if (result != WasmResultValues.Ok) return "!" + result.toString();
  const ptr = <usize>load<u32>(slot);
  const size = <usize>load<u32>(slot + 4);
  if (ptr == 0 || size == 0) return "";
  const value = String.UTF8.decodeUnsafe(ptr, size);
  free(ptr);
  return value;
}

class PropertiesRoot extends RootContext {
  onConfigure(configuration_size: u32): bool {
    const configuration = readPluginConfiguration(configuration_size);
    log(LogLevelValues.info, "properties: root id " + readProperty("plugin_root_id"));
    return true;
  }

  createContext(context_id: u32): Context {
    return new Properties(context_id, this);
  }
}

class Properties extends Context {
  constructor(context_id: u32, root_context: PropertiesRoot) {
    super(context_id, root_context);
  }

  onResponseHeaders(count: u32, end_of_stream: bool): FilterHeadersStatusValues {
    for (let i = 0; i < NAMES.length; i++) {
      const name = "x-prop-" + NAMES[i].replaceAll(".", "-").replaceAll("_", "-");
      stream_context.headers.response.replace(name, readProperty(NAMES[i]));
    }
    return FilterHeadersStatusValues.Continue;
  }
}

registerRootContext((context_id: u32) => { return new PropertiesRoot(context_id); }, "properties");
