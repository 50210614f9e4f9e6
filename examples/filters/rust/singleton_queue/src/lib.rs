//! singleton_queue: a singleton (Envoy's bootstrap WasmService) that ticks, calls a cluster and collects
//! what HTTP-filter VMs put on its shared queue; the same module as the HTTP filter that feeds it.
//!
//! The root id picks the role. Root `collector` (the singleton): registers the shared queue "hits", ticks
//! every 100 ms (shared data "ticks" = the count, "collector: tick <n>" logged for the first three), calls
//! `GET /count` on cluster "counter" on every tick with no call in flight (shared data "calls" = the answer's
//! body), and on queue-ready dequeues every item ("collector: got <item>", shared data "hits" = the total).
//! Root `reporter` (the HTTP filter, same vm_id, hence the same shared data): on request headers resolves
//! the queue "hits" of its own vm_id and enqueues the request path (`x-queue: ok`, or `missing` when no
//! singleton registered it); on response headers copies shared data ticks / hits / calls into `x-ticks`,
//! `x-hits`, `x-calls` ("-" when unset).
//! A reporter whose plugin configuration is `<header>=<vm_id>` resolves the queue "hits" of that vm_id instead
//! (empty: its own) and reports only the outcome, in `<header>` on the request and the response (`ok` /
//! `missing` for NotFound): how a spec shows which vm_id a filter of another VM may resolve.

use proxy_wasm::traits::{Context, HttpContext, RootContext};
use proxy_wasm::types::{Action, ContextType, LogLevel};
use std::time::Duration;

proxy_wasm::main! {{
    proxy_wasm::set_log_level(LogLevel::Trace);
    proxy_wasm::set_root_context(|_| -> Box<dyn RootContext> {
        Box::new(Root { collector: false, queue: 0, ticks: 0, hits: 0, in_flight: false, resolve: None })
    });
}}

struct Root {
    collector: bool,
    queue: u32,
    ticks: u64,
    hits: u64,
    in_flight: bool,
    resolve: Option<(String, String)>, // (header, vm_id) from the reporter's configuration
}

fn shared_text(ctx: &dyn Context, key: &str) -> String {
    match ctx.get_shared_data(key) {
        (Some(v), _) => String::from_utf8_lossy(&v).into_owned(),
        _ => "-".to_string(),
    }
}

impl Context for Root {
    fn on_http_call_response(&mut self, _token: u32, _headers: usize, body_size: usize, _trailers: usize) {
        self.in_flight = false;
        let body = self.get_http_call_response_body(0, body_size).unwrap_or_default();
        if let Err(e) = self.set_shared_data("calls", Some(&body), None) {
            log::warn!("collector: storing the call's answer: {:?}", e);
        }
    }
}

impl RootContext for Root {
    fn on_configure(&mut self, _size: usize) -> bool {
        let root_id = self.get_property(vec!["plugin_root_id"]).unwrap_or_default();
        match root_id.as_slice() {
            b"collector" => {
                self.collector = true;
                self.queue = self.register_shared_queue("hits");
                self.set_tick_period(Duration::from_millis(100));
                log::info!("collector: queue hits registered");
                true
            }
            b"reporter" => {
                let config = self.get_plugin_configuration().unwrap_or_default();
                let config = String::from_utf8_lossy(&config);
                self.resolve = config.split_once('=').map(|(h, v)| (h.trim().to_string(), v.trim().to_string()));
                true
            }
            other => {
                log::error!("singleton_queue: unknown root id {:?} (collector or reporter)", String::from_utf8_lossy(other));
                false
            }
        }
    }

    fn on_tick(&mut self) {
        self.ticks += 1;
        if self.ticks <= 3 {
            log::info!("collector: tick {}", self.ticks);
        }
        let _ = self.set_shared_data("ticks", Some(self.ticks.to_string().as_bytes()), None);
        if !self.in_flight {
            let headers = vec![(":method", "GET"), (":path", "/count"), (":authority", "counter")];
            match self.dispatch_http_call("counter", headers, None, vec![], Duration::from_secs(5)) {
                Ok(_) => self.in_flight = true,
                Err(e) => log::warn!("collector: call failed: {:?}", e),
            }
        }
    }

    fn on_queue_ready(&mut self, queue_id: u32) {
        while let Ok(Some(item)) = self.dequeue_shared_queue(queue_id) {
            self.hits += 1;
            log::info!("collector: got {}", String::from_utf8_lossy(&item));
        }
        let _ = self.set_shared_data("hits", Some(self.hits.to_string().as_bytes()), None);
    }

    fn create_http_context(&self, _id: u32) -> Option<Box<dyn HttpContext>> {
        Some(Box::new(Reporter { queue: "-", resolve: self.resolve.clone() }))
    }

    fn get_type(&self) -> Option<ContextType> {
        Some(ContextType::HttpContext)
    }
}

struct Reporter {
    queue: &'static str,
    resolve: Option<(String, String)>,
}

impl Context for Reporter {}

impl HttpContext for Reporter {
    fn on_http_request_headers(&mut self, _n: usize, _eos: bool) -> Action {
        let path = self.get_http_request_header(":path").unwrap_or_default();
        let (header, vm_id) = self.resolve.clone().unwrap_or_else(|| ("x-queue".to_string(), String::new()));
        let found = match self.resolve_shared_queue(&vm_id, "hits") {
            Some(queue) => self.enqueue_shared_queue(queue, Some(path.as_bytes())).is_ok(),
            None => false,
        };
        self.queue = if found { "ok" } else { "missing" };
        self.set_http_request_header(&header, Some(self.queue));
        Action::Continue
    }

    fn on_http_response_headers(&mut self, _n: usize, _eos: bool) -> Action {
        // (Envoy gives no request headers to response callbacks: the outcome is kept here)
        if let Some((header, _)) = &self.resolve {
            self.add_http_response_header(header, self.queue);
            return Action::Continue;
        }
        self.add_http_response_header("x-queue", self.queue);
        for (header, key) in [("x-ticks", "ticks"), ("x-hits", "hits"), ("x-calls", "calls")] {
            self.add_http_response_header(header, &shared_text(self, key));
        }
        Action::Continue
    }
}
