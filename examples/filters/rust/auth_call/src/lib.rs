//! auth_call: pause each request, ask an auth service over an HTTP call, then resume or reject.
//!
//! Configuration (JSON): {"cluster": "authz", "path": "/check", "timeout_ms": 2000}
//! The call carries the request's `authorization` header. A 200 answer resumes the request with
//! `x-auth-user` copied from the answer; any other answer ends it with a local reply of that status (401/403),
//! and a failed dispatch or a call that gets no answer ends it with 503.

use proxy_wasm::traits::{Context, HttpContext, RootContext};
use proxy_wasm::types::{Action, ContextType, LogLevel};
use serde_json::Value;
use std::rc::Rc;
use std::time::Duration;

proxy_wasm::main! {{
    proxy_wasm::set_log_level(LogLevel::Trace);
    proxy_wasm::set_root_context(|_| -> Box<dyn RootContext> { Box::new(Root { config: None }) });
}}

struct Config {
    cluster: String,
    path: String,
    timeout: Duration,
}

fn parse(raw: &[u8]) -> Result<Config, String> {
    let value: Value = serde_json::from_slice(raw).map_err(|e| format!("not JSON: {}", e))?;
    let cluster = value.get("cluster").and_then(Value::as_str).ok_or("`cluster` (string) is required")?;
    let path = value.get("path").and_then(Value::as_str).unwrap_or("/check");
    let timeout_ms = value.get("timeout_ms").and_then(Value::as_u64).unwrap_or(2000);
    Ok(Config { cluster: cluster.into(), path: path.into(), timeout: Duration::from_millis(timeout_ms) })
}

struct Root {
    config: Option<Rc<Config>>,
}

impl Context for Root {}

impl RootContext for Root {
    fn on_configure(&mut self, _size: usize) -> bool {
        match parse(&self.get_plugin_configuration().unwrap_or_default()) {
            Ok(c) => {
                log::info!("auth_call: checking with cluster {} path {}", c.cluster, c.path);
                self.config = Some(Rc::new(c));
                true
            }
            Err(e) => {
                log::error!("auth_call: bad configuration: {}", e);
                false
            }
        }
    }

    fn create_http_context(&self, _id: u32) -> Option<Box<dyn HttpContext>> {
        self.config.clone().map(|config| Box::new(Filter { config }) as Box<dyn HttpContext>)
    }

    fn get_type(&self) -> Option<ContextType> {
        Some(ContextType::HttpContext)
    }
}

struct Filter {
    config: Rc<Config>,
}

impl Context for Filter {
    fn on_http_call_response(&mut self, _token: u32, _headers: usize, _body: usize, _trailers: usize) {
        let status = self.get_http_call_response_header(":status").unwrap_or_default();
        if status == "200" {
            let user = self.get_http_call_response_header("x-auth-user").unwrap_or_default();
            log::info!("auth_call: allowed user {}", user);
            self.set_http_request_header("x-auth-user", Some(&user));
            self.resume_http_request();
            return;
        }
        let code = match status.parse::<u32>() {
            Ok(c) if (400..600).contains(&c) => c,
            _ => 503,
        };
        log::warn!("auth_call: rejected with {} (auth service said {:?})", code, status);
        self.send_http_response(code, vec![("x-auth-by", "auth_call")], Some(b"unauthorized\n"));
    }
}

impl HttpContext for Filter {
    fn on_http_request_headers(&mut self, _n: usize, _eos: bool) -> Action {
        let authorization = self.get_http_request_header("authorization").unwrap_or_default();
        let mut headers = vec![
            (":method", "GET"),
            (":path", self.config.path.as_str()),
            (":authority", self.config.cluster.as_str()),
        ];
        if !authorization.is_empty() {
            headers.push(("authorization", authorization.as_str()));
        }
        match self.dispatch_http_call(&self.config.cluster, headers, None, vec![], self.config.timeout) {
            Ok(token) => {
                log::debug!("auth_call: dispatched call {}", token);
                Action::Pause
            }
            Err(status) => {
                log::error!("auth_call: dispatch failed: {:?}", status);
                self.send_http_response(503, vec![("x-auth-by", "auth_call")], Some(b"auth unavailable\n"));
                Action::Pause
            }
        }
    }
}
