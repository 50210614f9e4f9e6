//! tick_cache: a timer calls a cluster and keeps the answer in shared data; requests read it.
//!
//! Configuration (JSON): {"cluster": "values", "path": "/value", "period_ms": 200}
//! On every tick (if no call is in flight) the root context calls the cluster and stores the answer body under
//! the shared-data key `tick_cache.value` (logging "stored value ..."). Each request then gets the stored value
//! as request header and response header `x-cached-value`; before the first answer, no header is added.

use proxy_wasm::traits::{Context, HttpContext, RootContext};
use proxy_wasm::types::{Action, ContextType, LogLevel};
use serde_json::Value;
use std::time::Duration;

const KEY: &str = "tick_cache.value";

proxy_wasm::main! {{
    proxy_wasm::set_log_level(LogLevel::Trace);
    proxy_wasm::set_root_context(|_| -> Box<dyn RootContext> {
        Box::new(Root { cluster: String::new(), path: String::new(), in_flight: false })
    });
}}

struct Root {
    cluster: String,
    path: String,
    in_flight: bool,
}

impl Context for Root {
    fn on_http_call_response(&mut self, _token: u32, _headers: usize, body: usize, _trailers: usize) {
        self.in_flight = false;
        let status = self.get_http_call_response_header(":status").unwrap_or_default();
        if status != "200" {
            log::warn!("tick_cache: refresh answered {}", status);
            return;
        }
        let value = self.get_http_call_response_body(0, body).unwrap_or_default();
        match self.set_shared_data(KEY, Some(&value), None) {
            Ok(()) => log::info!("tick_cache: stored value {}", String::from_utf8_lossy(&value)),
            Err(e) => log::error!("tick_cache: set_shared_data failed: {:?}", e),
        }
    }
}

impl RootContext for Root {
    fn on_configure(&mut self, _size: usize) -> bool {
        let raw = self.get_plugin_configuration().unwrap_or_default();
        let value: Value = match serde_json::from_slice(&raw) {
            Ok(v) => v,
            Err(e) => {
                log::error!("tick_cache: bad configuration: {}", e);
                return false;
            }
        };
        let cluster = match value.get("cluster").and_then(Value::as_str) {
            Some(c) => c,
            None => {
                log::error!("tick_cache: bad configuration: `cluster` is required");
                return false;
            }
        };
        self.cluster = cluster.to_string();
        self.path = value.get("path").and_then(Value::as_str).unwrap_or("/value").to_string();
        let period = value.get("period_ms").and_then(Value::as_u64).unwrap_or(200);
        self.set_tick_period(Duration::from_millis(period));
        log::info!("tick_cache: refreshing from {} every {} ms", self.cluster, period);
        true
    }

    fn on_tick(&mut self) {
        if self.in_flight {
            return;
        }
        let headers = vec![(":method", "GET"), (":path", self.path.as_str()), (":authority", self.cluster.as_str())];
        match self.dispatch_http_call(&self.cluster, headers, None, vec![], Duration::from_secs(2)) {
            Ok(_) => self.in_flight = true,
            Err(e) => log::warn!("tick_cache: dispatch failed: {:?}", e),
        }
    }

    fn create_http_context(&self, _id: u32) -> Option<Box<dyn HttpContext>> {
        Some(Box::new(Filter { value: None }))
    }

    fn get_type(&self) -> Option<ContextType> {
        Some(ContextType::HttpContext)
    }
}

struct Filter {
    value: Option<String>,
}

impl Context for Filter {}

impl HttpContext for Filter {
    fn on_http_request_headers(&mut self, _n: usize, _eos: bool) -> Action {
        if let (Some(bytes), _) = self.get_shared_data(KEY) {
            let value = String::from_utf8_lossy(&bytes).into_owned();
            self.set_http_request_header("x-cached-value", Some(&value));
            self.value = Some(value);
        } else {
            log::debug!("tick_cache: no value yet");
        }
        Action::Continue
    }

    fn on_http_response_headers(&mut self, _n: usize, _eos: bool) -> Action {
        if let Some(value) = &self.value {
            self.set_http_response_header("x-cached-value", Some(value));
        }
        Action::Continue
    }
}
