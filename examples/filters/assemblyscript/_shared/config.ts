// Shared by the AssemblyScript plugins of the corpus (imported as "../../_shared/config"): reading the plugin
// configuration correctly.
//
// proxy-runtime 0.1.8's RootContext.onConfigure passes the configuration *size* where proxy_get_buffer_bytes
// wants the pointer the host writes the returned size to, so the host writes 4 bytes at guest address
// <configuration size> (corrupting static data: Envoy then traps with "unreachable" in ~lib/rt/pure.ts or
// "memory access out of bounds"), and with an empty configuration the wrapper reuses a stale pointer. Plugins
// override onConfigure and call this instead of super.onConfigure.
import { get_buffer_bytes, BufferTypeValues } from "@solo-io/proxy-runtime/runtime";

export function readPluginConfiguration(configuration_size: u32): string {
  if (configuration_size == 0) return "";
  return String.UTF8.decode(get_buffer_bytes(BufferTypeValues.PluginConfiguration, 0, configuration_size));
}
