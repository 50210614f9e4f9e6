//! grpc_gate: a gRPC-aware filter -- gRPC local replies, gRPC calls and streams to a cluster, and trailers.
//!
//! Configuration (JSON): {"cluster": "checker", "timeout_ms": 2000}
//! Per request:
//! - `x-deny: <text>` ends it with a gRPC local reply: PERMISSION_DENIED, grpc-message <text>, and metadata
//!   `x-denied-by: grpc_gate` (trailers-only, as Envoy sends it).
//! - `x-check: <text>` pauses it and makes a unary gRPC call (meshplug.test.Echo/Unary, metadata
//!   `x-from-plugin: 1`) with <text> to the cluster; the answer goes upstream as `x-check-reply`; a call that
//!   fails ends the request with a gRPC local reply carrying the call's status and message.
//! - `x-stream-check: <a,b,...>` pauses it and opens a gRPC stream (meshplug.test.Echo/Bidi), sends each item
//!   and closes; what came back goes upstream as `x-stream-reply` (joined with ","), the stream's status as
//!   `x-stream-status`.
//! Response trailers: logs grpc-status, adds `x-trailer-seen: <grpc-status>` and replaces `x-trailer` with
//! `edited`. Request trailers, if any, are logged and get `x-request-trailer-seen: 1`.

use proxy_wasm::traits::{Context, HttpContext, RootContext};
use proxy_wasm::types::{Action, ContextType, GrpcStatusCode, LogLevel};
use serde_json::Value;
use std::rc::Rc;
use std::time::Duration;

proxy_wasm::main! {{
    proxy_wasm::set_log_level(LogLevel::Trace);
    proxy_wasm::set_root_context(|_| -> Box<dyn RootContext> { Box::new(Root { config: None }) });
}}

struct Config {
    cluster: String,
    timeout: Duration,
}

fn parse(raw: &[u8]) -> Result<Config, String> {
    let value: Value = serde_json::from_slice(raw).map_err(|e| format!("not JSON: {}", e))?;
    let cluster = value.get("cluster").and_then(Value::as_str).ok_or("`cluster` (string) is required")?;
    let timeout_ms = value.get("timeout_ms").and_then(Value::as_u64).unwrap_or(2000);
    Ok(Config { cluster: cluster.into(), timeout: Duration::from_millis(timeout_ms) })
}

fn status_code(code: u32) -> GrpcStatusCode {
    match code {
        0 => GrpcStatusCode::Ok,
        1 => GrpcStatusCode::Cancelled,
        3 => GrpcStatusCode::InvalidArgument,
        4 => GrpcStatusCode::DeadlineExceeded,
        5 => GrpcStatusCode::NotFound,
        6 => GrpcStatusCode::AlreadyExists,
        7 => GrpcStatusCode::PermissionDenied,
        8 => GrpcStatusCode::ResourceExhausted,
        9 => GrpcStatusCode::FailedPrecondition,
        10 => GrpcStatusCode::Aborted,
        11 => GrpcStatusCode::OutOfRange,
        12 => GrpcStatusCode::Unimplemented,
        13 => GrpcStatusCode::Internal,
        14 => GrpcStatusCode::Unavailable,
        15 => GrpcStatusCode::DataLoss,
        16 => GrpcStatusCode::Unauthenticated,
        _ => GrpcStatusCode::Unknown,
    }
}

struct Root {
    config: Option<Rc<Config>>,
}

impl Context for Root {}

impl RootContext for Root {
    fn on_configure(&mut self, _size: usize) -> bool {
        match parse(&self.get_plugin_configuration().unwrap_or_default()) {
            Ok(c) => {
                log::info!("grpc_gate: calling cluster {}", c.cluster);
                self.config = Some(Rc::new(c));
                true
            }
            Err(e) => {
                log::error!("grpc_gate: bad configuration: {}", e);
                false
            }
        }
    }

    fn create_http_context(&self, _id: u32) -> Option<Box<dyn HttpContext>> {
        self.config.clone().map(|config| Box::new(Filter { config, replies: Vec::new() }) as Box<dyn HttpContext>)
    }

    fn get_type(&self) -> Option<ContextType> {
        Some(ContextType::HttpContext)
    }
}

struct Filter {
    config: Rc<Config>,
    replies: Vec<String>,
}

impl Filter {
    fn fail_with_call_status(&self, what: &str, code: u32) {
        let (_, message) = self.get_grpc_status();
        let message = message.unwrap_or_default();
        log::warn!("grpc_gate: {} failed: status {} {:?}", what, code, message);
        self.send_grpc_response(status_code(code), Some(&message), vec![("x-denied-by", b"grpc_gate")]);
    }
}

impl Context for Filter {
    fn on_grpc_call_response(&mut self, _token: u32, status: u32, size: usize) {
        if status != 0 {
            self.fail_with_call_status("check call", status);
            return;
        }
        let body = self.get_grpc_call_response_body(0, size).unwrap_or_default();
        let reply = String::from_utf8_lossy(&body).to_string();
        log::info!("grpc_gate: check call answered {:?}", reply);
        self.set_http_request_header("x-check-reply", Some(&reply));
        self.resume_http_request();
    }

    fn on_grpc_stream_initial_metadata(&mut self, _token: u32, n: u32) {
        log::info!("grpc_gate: stream initial metadata ({} entries)", n);
    }

    fn on_grpc_stream_message(&mut self, _token: u32, size: usize) {
        let body = self.get_grpc_stream_message(0, size).unwrap_or_default();
        self.replies.push(String::from_utf8_lossy(&body).to_string());
    }

    fn on_grpc_stream_trailing_metadata(&mut self, _token: u32, n: u32) {
        let trailer = self.get_grpc_stream_trailing_metadata_value("x-trailer").unwrap_or_default();
        log::info!("grpc_gate: stream trailing metadata ({} entries, x-trailer {:?})", n, String::from_utf8_lossy(&trailer));
    }

    fn on_grpc_stream_close(&mut self, _token: u32, status: u32) {
        log::info!("grpc_gate: stream closed with status {} after {} messages", status, self.replies.len());
        self.set_http_request_header("x-stream-reply", Some(&self.replies.join(",")));
        self.set_http_request_header("x-stream-status", Some(&status.to_string()));
        self.resume_http_request();
    }
}

impl HttpContext for Filter {
    fn on_http_request_headers(&mut self, _n: usize, _end_of_stream: bool) -> Action {
        if let Some(text) = self.get_http_request_header("x-deny") {
            log::info!("grpc_gate: denying: {}", text);
            self.send_grpc_response(GrpcStatusCode::PermissionDenied, Some(&text), vec![("x-denied-by", b"grpc_gate")]);
            return Action::Pause;
        }
        if let Some(text) = self.get_http_request_header("x-check") {
            let metadata = vec![("x-from-plugin", &b"1"[..])];
            let config = self.config.clone();
            let call = self.dispatch_grpc_call(
                &config.cluster, "meshplug.test.Echo", "Unary", metadata, Some(text.as_bytes()), config.timeout,
            );
            return match call {
                Ok(_) => Action::Pause,
                Err(e) => {
                    log::error!("grpc_gate: dispatch failed: {:?}", e);
                    self.send_grpc_response(GrpcStatusCode::Unavailable, Some("dispatch failed"), vec![]);
                    Action::Pause
                }
            };
        }
        if let Some(items) = self.get_http_request_header("x-stream-check") {
            let config = self.config.clone();
            return match self.open_grpc_stream(&config.cluster, "meshplug.test.Echo", "Bidi", vec![]) {
                Ok(token) => {
                    let parts: Vec<&str> = items.split(',').collect();
                    for (i, part) in parts.iter().enumerate() {
                        self.send_grpc_stream_message(token, Some(part.as_bytes()), i + 1 == parts.len());
                    }
                    Action::Pause
                }
                Err(e) => {
                    log::error!("grpc_gate: open stream failed: {:?}", e);
                    self.send_grpc_response(GrpcStatusCode::Unavailable, Some("stream failed"), vec![]);
                    Action::Pause
                }
            };
        }
        Action::Continue
    }

    fn on_http_request_trailers(&mut self, n: usize) -> Action {
        log::info!("grpc_gate: request trailers ({} entries)", n);
        self.add_http_request_trailer("x-request-trailer-seen", "1");
        Action::Continue
    }

    fn on_http_response_trailers(&mut self, n: usize) -> Action {
        let status = self.get_http_response_trailer("grpc-status").unwrap_or_default();
        log::info!("grpc_gate: response trailers ({} entries), grpc-status {}", n, status);
        self.add_http_response_trailer("x-trailer-seen", &status);
        if self.get_http_response_trailer("x-trailer").is_some() {
            self.set_http_response_trailer("x-trailer", Some("edited"));
        }
        Action::Continue
    }
}
