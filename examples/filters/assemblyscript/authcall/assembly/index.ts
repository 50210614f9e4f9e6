// Plugin authcall (root id "authcall"): pauses each request while an auth service is asked by HTTP call, then
// resumes or rejects it.
//
// Configuration: the auth service's cluster name (one line). Each request's headers are held while
// "GET /check" goes to that cluster (":authority" auth, the request's "authorization" header when present, its
// path in "x-original-path"; timeout 5 s). A 2xx answer resumes the request, copying the answer's "x-auth-user"
// header onto it; any other status rejects the request with that status, the body "denied by authcall\n" and
// "x-auth-by: authcall"; no answer rejects it with 503. An empty configuration fails the plugin start.
export * from "@solo-io/proxy-runtime/proxy";
import {
  RootContext, Context, registerRootContext, FilterHeadersStatusValues, GrpcStatusValues, HeaderPair,
  stream_context, send_local_response, continue_request, log, LogLevelValues, WasmResultValues,
} from "@solo-io/proxy-runtime";
import { readPluginConfiguration } from "../../_shared/config";

function pair(key: string, value: string): HeaderPair {
  return new HeaderPair(String.UTF8.encode(key), String.UTF8.encode(value));
}

function reject(status: u32): void {
  const headers: HeaderPair[] = [pair("x-auth-by", "authcall"), pair("content-type", "text/plain")];
  send_local_response(status, "authcall", String.UTF8.encode("denied by authcall\n"), headers,
    GrpcStatusValues.InvalidCode);
}

function onAuthResponse(origin: Context, headers: u32, body_size: usize, trailers: u32): void {
  const status = headers > 0 ? stream_context.headers.http_callback.get(":status") : "";
  const code = status.length > 0 ? I32.parseInt(status) : 0;
  if (code == 0) {
    log(LogLevelValues.warn, "authcall: no answer from the auth service");
    reject(503);
    return;
  }
  if (code < 200 || code > 299) {
    log(LogLevelValues.info, "authcall: rejected with " + code.toString());
    reject(<u32>code);
    return;
  }
  const user = stream_context.headers.http_callback.get("x-auth-user");
  if (user.length > 0) stream_context.headers.request.replace("x-auth-user", user);
  log(LogLevelValues.info, "authcall: allowed " + (user.length > 0 ? user : "(no user)"));
  continue_request();
}

class AuthCallRoot extends RootContext {
  cluster: string = "";

  onConfigure(configuration_size: u32): bool {
    const cluster = readPluginConfiguration(configuration_size).trim();
    if (cluster.length == 0) {
      log(LogLevelValues.error, "authcall: bad configuration: expected the auth cluster's name");
      return false;
    }
    this.cluster = cluster;
    log(LogLevelValues.info, "authcall: checking requests with cluster " + cluster);
    return true;
  }

  createContext(context_id: u32): Context {
    return new AuthCall(context_id, this);
  }
}

class AuthCall extends Context {
  constructor(context_id: u32, root_context: AuthCallRoot) {
    super(context_id, root_context);
  }

  onRequestHeaders(count: u32, end_of_stream: bool): FilterHeadersStatusValues {
    const root = this.root_context as AuthCallRoot;
    const path = stream_context.headers.request.get(":path");
    const auth = stream_context.headers.request.get("authorization");
    const headers: HeaderPair[] = [
      pair(":method", "GET"), pair(":path", "/check"), pair(":authority", "auth"), pair("x-original-path", path),
    ];
    if (auth.length > 0) headers.push(pair("authorization", auth));
    const result = root.httpCall(root.cluster, headers, new ArrayBuffer(0), [], 5000, this, onAuthResponse);
    if (result != WasmResultValues.Ok) {
      log(LogLevelValues.error, "authcall: dispatch to " + root.cluster + " failed");
      reject(503);
    }
    return FilterHeadersStatusValues.StopIteration;
  }
}

registerRootContext((context_id: u32) => { return new AuthCallRoot(context_id); }, "authcall");
