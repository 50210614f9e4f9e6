// Plugin body (root id "body"): appends to or replaces text in request and response bodies, whole bodies
// however many chunks they arrive in.
//
// Configuration: one rule per line,
//   request.append=TEXT     response.append=TEXT      (TEXT added at the end of the body)
//   request.replace=OLD|NEW response.replace=OLD|NEW  (every OLD in the whole body becomes NEW)
// A direction with rules has its body buffered until the end of the stream (StopIterationAndBuffer), so an
// OLD split across chunks is still found; its content-length is dropped at the headers (the length changes)
// and "x-body-rewritten: request|response" is added. The rewritten body is written with proxy_set_buffer_bytes,
// declared here: proxy-runtime 0.1.8 binds its own set-buffer wrapper to proxy_get_buffer_status by mistake.
export * from "@solo-io/proxy-runtime/proxy";
import {
  RootContext, Context, registerRootContext, FilterHeadersStatusValues, FilterDataStatusValues,
  stream_context, log, LogLevelValues,
} from "@solo-io/proxy-runtime";
import { readPluginConfiguration } from "../../_shared/config";
import { get_buffer_bytes, BufferTypeValues, WasmResultValues } from "@solo-io/proxy-runtime/runtime";

// @ts-ignore: decorator
@external("env", "proxy_set_buffer_bytes")
declare function proxy_set_buffer_bytes(typ: i32, start: u32, length: u32, data: usize, size: usize): u32;

// Every `search` in `text` replaced by `replacement`. Not String#replaceAll: assemblyscript 0.14.9's writes
// past its output buffer when the replacement is longer than the search string (heap corruption, then a trap).
function replaceEvery(text: string, search: string, replacement: string): string {
  if (search.length == 0) return text;
  const parts = new Array<string>();
  let from = 0;
  let at = text.indexOf(search, from);
  while (at >= 0) {
    parts.push(text.substring(from, at));
    from = at + search.length;
    at = text.indexOf(search, from);
  }
  parts.push(text.substring(from));
  return parts.join(replacement);
}

class Rules {
  appendText: string = "";
  replaceOld: string = "";
  replaceNew: string = "";

  active(): bool {
    return this.appendText.length > 0 || this.replaceOld.length > 0;
  }

  apply(body: string): string {
    return replaceEvery(body, this.replaceOld, this.replaceNew) + this.appendText;
  }
}

class BodyRoot extends RootContext {
  request: Rules = new Rules();
  response: Rules = new Rules();

  onConfigure(configuration_size: u32): bool {
    const configuration = readPluginConfiguration(configuration_size);
    const request = new Rules();
    const response = new Rules();
    const lines = configuration.split("\n");
    for (let i = 0; i < lines.length; i++) {
      const line = lines[i];
      const eq = line.indexOf("=");
      if (eq <= 0) continue;
      const key = line.substring(0, eq).trim();
      const value = line.substring(eq + 1);
      let rules: Rules;
      if (key.startsWith("request.")) {
        rules = request;
      } else if (key.startsWith("response.")) {
        rules = response;
      } else {
        log(LogLevelValues.error, "body: unknown rule " + key);
        return false;
      }
      const op = key.substring(key.indexOf(".") + 1);
      if (op == "append") {
        rules.appendText = value;
      } else if (op == "replace") {
        const bar = value.indexOf("|");
        if (bar <= 0) {
          log(LogLevelValues.error, "body: replace needs OLD|NEW: " + value);
          return false;
        }
        rules.replaceOld = value.substring(0, bar);
        rules.replaceNew = value.substring(bar + 1);
      } else {
        log(LogLevelValues.error, "body: unknown rule " + key);
        return false;
      }
    }
    this.request = request;
    this.response = response;
    return true;
  }

  createContext(context_id: u32): Context {
    return new Body(context_id, this);
  }
}

function rewrite(buffer: BufferTypeValues, size: usize, rules: Rules, what: string): void {
  const original = String.UTF8.decode(get_buffer_bytes(buffer, 0, <u32>size));
  const data = String.UTF8.encode(rules.apply(original));
  const result = proxy_set_buffer_bytes(buffer, 0, <u32>size, changetype<usize>(data), data.byteLength);
  if (result != WasmResultValues.Ok) {
    log(LogLevelValues.error, "body: rewriting the " + what + " body failed: " + result.toString());
    return;
  }
  log(LogLevelValues.info, "body: " + what + " body " + size.toString() + " -> " + data.byteLength.toString() + " bytes");
}

class Body extends Context {
  constructor(context_id: u32, root_context: BodyRoot) {
    super(context_id, root_context);
  }

  onRequestHeaders(count: u32, end_of_stream: bool): FilterHeadersStatusValues {
    const root = this.root_context as BodyRoot;
    if (root.request.active() && !end_of_stream) {
      stream_context.headers.request.remove("content-length");
      stream_context.headers.request.replace("x-body-rewritten", "request");
    }
    return FilterHeadersStatusValues.Continue;
  }

  onRequestBody(body_buffer_length: usize, end_of_stream: bool): FilterDataStatusValues {
    const root = this.root_context as BodyRoot;
    if (!root.request.active()) return FilterDataStatusValues.Continue;
    if (!end_of_stream) return FilterDataStatusValues.StopIterationAndBuffer;
    rewrite(BufferTypeValues.HttpRequestBody, body_buffer_length, root.request, "request");
    return FilterDataStatusValues.Continue;
  }

  onResponseHeaders(count: u32, end_of_stream: bool): FilterHeadersStatusValues {
    const root = this.root_context as BodyRoot;
    if (root.response.active() && !end_of_stream) {
      stream_context.headers.response.remove("content-length");
      stream_context.headers.response.replace("x-body-rewritten", "response");
    }
    return FilterHeadersStatusValues.Continue;
  }

  onResponseBody(body_buffer_length: usize, end_of_stream: bool): FilterDataStatusValues {
    const root = this.root_context as BodyRoot;
    if (!root.response.active()) return FilterDataStatusValues.Continue;
    if (!end_of_stream) return FilterDataStatusValues.StopIterationAndBuffer;
    rewrite(BufferTypeValues.HttpResponseBody, body_buffer_length, root.response, "response");
    return FilterDataStatusValues.Continue;
  }
}

registerRootContext((context_id: u32) => { return new BodyRoot(context_id); }, "body");
