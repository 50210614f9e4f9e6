// Plugin logging (root id "logging"): logs one line at every proxy-wasm log level for each request.
//
// At request headers it logs "logging: <level> <method> <path>" at trace, debug, info, warn, error and
// critical, in that order; at configure time it logs "logging: configured <configuration>" at info. The
// request continues unchanged. Which lines a data plane shows depends on its log level for wasm.
export * from "@solo-io/proxy-runtime/proxy";
import {
  RootContext, Context, registerRootContext, FilterHeadersStatusValues, stream_context, log, LogLevelValues,
} from "@solo-io/proxy-runtime";
import { readPluginConfiguration } from "../../_shared/config";

class LoggingRoot extends RootContext {
  onConfigure(configuration_size: u32): bool {
    const configuration = readPluginConfiguration(configuration_size);
    log(LogLevelValues.info, "logging: configured " + configuration);
    return true;
  }

  createContext(context_id: u32): Context {
    return new Logging(context_id, this);
  }
}

class Logging extends Context {
  constructor(context_id: u32, root_context: LoggingRoot) {
    super(context_id, root_context);
  }

  onRequestHeaders(count: u32, end_of_stream: bool): FilterHeadersStatusValues {
    const what = stream_context.headers.request.get(":method") + " " + stream_context.headers.request.get(":path");
    log(LogLevelValues.trace, "logging: trace " + what);
    log(LogLevelValues.debug, "logging: debug " + what);
    log(LogLevelValues.info, "logging: info " + what);
    log(LogLevelValues.warn, "logging: warn " + what);
    log(LogLevelValues.error, "logging: error " + what);
    log(LogLevelValues.critical, "logging: critical " + what);
    return FilterHeadersStatusValues.Continue;
  }
}

registerRootContext((context_id: u32) => { return new LoggingRoot(context_id); }, "logging");
