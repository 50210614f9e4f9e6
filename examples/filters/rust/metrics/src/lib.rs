//! metrics: a counter, a gauge and a histogram defined by the plugin and updated per request.
//!
//! rust_metrics_requests   counter    +1 per request
//! rust_metrics_inflight   gauge      requests between request headers and the end of the stream
//! rust_metrics_status     gauge      the last response status
//! rust_metrics_path_len   histogram  length of the request path
//! Each response carries `x-request-count` (the counter after this request), read back with get_metric.

use proxy_wasm::hostcalls;
use proxy_wasm::traits::{Context, HttpContext, RootContext};
use proxy_wasm::types::{Action, ContextType, LogLevel, MetricType};
use std::rc::Rc;

proxy_wasm::main! {{
    proxy_wasm::set_log_level(LogLevel::Trace);
    proxy_wasm::set_root_context(|_| -> Box<dyn RootContext> { Box::new(Root { ids: None }) });
}}

struct Ids {
    requests: u32,
    inflight: u32,
    status: u32,
    path_len: u32,
}

struct Root {
    ids: Option<Rc<Ids>>,
}

impl Context for Root {}

impl RootContext for Root {
    fn on_vm_start(&mut self, _size: usize) -> bool {
        let define = |t, name| hostcalls::define_metric(t, name);
        match (
            define(MetricType::Counter, "rust_metrics_requests"),
            define(MetricType::Gauge, "rust_metrics_inflight"),
            define(MetricType::Gauge, "rust_metrics_status"),
            define(MetricType::Histogram, "rust_metrics_path_len"),
        ) {
            (Ok(requests), Ok(inflight), Ok(status), Ok(path_len)) => {
                log::info!("metrics: defined 4 metrics");
                self.ids = Some(Rc::new(Ids { requests, inflight, status, path_len }));
                true
            }
            _ => {
                let _ = hostcalls::log(LogLevel::Critical, "metrics: define_metric failed");
                false
            }
        }
    }

    fn create_http_context(&self, _id: u32) -> Option<Box<dyn HttpContext>> {
        self.ids.clone().map(|ids| Box::new(Filter { ids, counted: false }) as Box<dyn HttpContext>)
    }

    fn get_type(&self) -> Option<ContextType> {
        Some(ContextType::HttpContext)
    }
}

struct Filter {
    ids: Rc<Ids>,
    counted: bool,
}

impl Context for Filter {}

impl HttpContext for Filter {
    fn on_http_request_headers(&mut self, _n: usize, _eos: bool) -> Action {
        let path = self.get_http_request_header(":path").unwrap_or_default();
        let _ = hostcalls::increment_metric(self.ids.requests, 1);
        let _ = hostcalls::increment_metric(self.ids.inflight, 1);
        let _ = hostcalls::record_metric(self.ids.path_len, path.len() as u64);
        self.counted = true;
        Action::Continue
    }

    fn on_http_response_headers(&mut self, _n: usize, _eos: bool) -> Action {
        let status = self.get_http_response_header(":status").and_then(|s| s.parse::<u64>().ok()).unwrap_or(0);
        let _ = hostcalls::record_metric(self.ids.status, status);
        let count = hostcalls::get_metric(self.ids.requests).unwrap_or(0);
        self.set_http_response_header("x-request-count", Some(&count.to_string()));
        Action::Continue
    }

    fn on_log(&mut self) {
        if self.counted {
            let _ = hostcalls::increment_metric(self.ids.inflight, -1);
        }
    }
}
