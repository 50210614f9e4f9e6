// Plugin respheaders (root id "respheaders"): adds response headers taken from the plugin configuration.
//
// Configuration: one header per line, "name: value" (lines without ':' are ignored; names are trimmed and
// lower-cased, values trimmed). Every response gets each header added with proxy_add_header_map_value (an
// upstream header of the same name keeps its value: Envoy joins both into one comma-separated value), plus
// "x-respheaders-count: <n>" with the number of configured headers.
export * from "@solo-io/proxy-runtime/proxy";
import {
  RootContext, Context, registerRootContext, FilterHeadersStatusValues, stream_context, log, LogLevelValues,
} from "@solo-io/proxy-runtime";
import { readPluginConfiguration } from "../../_shared/config";

class HeaderPairText {
  constructor(public name: string, public value: string) {}
}

class RespHeadersRoot extends RootContext {
  headers: Array<HeaderPairText> = [];

  onConfigure(configuration_size: u32): bool {
    const configuration = readPluginConfiguration(configuration_size);
    const lines = configuration.split("\n");
    const parsed = new Array<HeaderPairText>();
    for (let i = 0; i < lines.length; i++) {
      const line = lines[i];
      const colon = line.indexOf(":");
      if (colon <= 0) continue;
      const name = line.substring(0, colon).trim().toLowerCase();
      const value = line.substring(colon + 1).trim();
      if (name.length == 0) continue;
      parsed.push(new HeaderPairText(name, value));
    }
    this.headers = parsed;
    log(LogLevelValues.info, "respheaders: " + parsed.length.toString() + " headers configured");
    return true;
  }

  createContext(context_id: u32): Context {
    return new RespHeaders(context_id, this);
  }
}

class RespHeaders extends Context {
  constructor(context_id: u32, root_context: RespHeadersRoot) {
    super(context_id, root_context);
  }

  onResponseHeaders(count: u32, end_of_stream: bool): FilterHeadersStatusValues {
    const root = this.root_context as RespHeadersRoot;
    for (let i = 0; i < root.headers.length; i++) {
      stream_context.headers.response.add(root.headers[i].name, root.headers[i].value);
    }
    stream_context.headers.response.replace("x-respheaders-count", root.headers.length.toString());
    return FilterHeadersStatusValues.Continue;
  }
}

registerRootContext((context_id: u32) => { return new RespHeadersRoot(context_id); }, "respheaders");
