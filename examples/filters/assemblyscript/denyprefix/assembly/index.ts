// Plugin denyprefix (root id "denyprefix"): answers requests under denied path prefixes with a local reply.
//
// Configuration: one path prefix per line (blank lines ignored). A request whose ":path" starts with any of
// them gets a local 403 with the body "denied: <path>\n" and the header "x-denied-by: denyprefix"; it never
// reaches the upstream. Other requests pass unchanged.
export * from "@solo-io/proxy-runtime/proxy";
import {
  RootContext, Context, registerRootContext, FilterHeadersStatusValues, GrpcStatusValues, HeaderPair,
  stream_context, send_local_response, log, LogLevelValues,
} from "@solo-io/proxy-runtime";
import { readPluginConfiguration } from "../../_shared/config";

class DenyPrefixRoot extends RootContext {
  prefixes: Array<string> = [];

  onConfigure(configuration_size: u32): bool {
    const configuration = readPluginConfiguration(configuration_size);
    const lines = configuration.split("\n");
    const prefixes = new Array<string>();
    for (let i = 0; i < lines.length; i++) {
      const p = lines[i].trim();
      if (p.length > 0) prefixes.push(p);
    }
    this.prefixes = prefixes;
    log(LogLevelValues.info, "denyprefix: " + prefixes.length.toString() + " prefixes denied");
    return true;
  }

  createContext(context_id: u32): Context {
    return new DenyPrefix(context_id, this);
  }
}

class DenyPrefix extends Context {
  constructor(context_id: u32, root_context: DenyPrefixRoot) {
    super(context_id, root_context);
  }

  onRequestHeaders(count: u32, end_of_stream: bool): FilterHeadersStatusValues {
    const root = this.root_context as DenyPrefixRoot;
    const path = stream_context.headers.request.get(":path");
    for (let i = 0; i < root.prefixes.length; i++) {
      if (path.startsWith(root.prefixes[i])) {
        log(LogLevelValues.info, "denyprefix: denied " + path + " (prefix " + root.prefixes[i] + ")");
        const headers: HeaderPair[] = [
          new HeaderPair(String.UTF8.encode("x-denied-by"), String.UTF8.encode("denyprefix")),
          new HeaderPair(String.UTF8.encode("content-type"), String.UTF8.encode("text/plain")),
        ];
        send_local_response(403, "denied_by_prefix", String.UTF8.encode("denied: " + path + "\n"), headers,
          GrpcStatusValues.InvalidCode);
        return FilterHeadersStatusValues.StopIteration;
      }
    }
    return FilterHeadersStatusValues.Continue;
  }
}

registerRootContext((context_id: u32) => { return new DenyPrefixRoot(context_id); }, "denyprefix");
