//! tcp_upper: a network (TCP) filter that upper-cases what the upstream sends back and counts bytes.
//!
//! Logs the new connection, each chunk's size at debug, and on close "closed: in=<bytes> out=<bytes>".
//! Counter `rust_tcp_connections` counts connections.

use proxy_wasm::hostcalls;
use proxy_wasm::traits::{Context, RootContext, StreamContext};
use proxy_wasm::types::{Action, ContextType, LogLevel, MetricType, PeerType};

proxy_wasm::main! {{
    proxy_wasm::set_log_level(LogLevel::Trace);
    proxy_wasm::set_root_context(|_| -> Box<dyn RootContext> { Box::new(Root { connections: 0 }) });
}}

struct Root {
    connections: u32,
}

impl Context for Root {}

impl RootContext for Root {
    fn on_vm_start(&mut self, _size: usize) -> bool {
        match hostcalls::define_metric(MetricType::Counter, "rust_tcp_connections") {
            Ok(id) => {
                self.connections = id;
                true
            }
            Err(e) => {
                log::error!("tcp_upper: define_metric failed: {:?}", e);
                false
            }
        }
    }

    fn create_stream_context(&self, _id: u32) -> Option<Box<dyn StreamContext>> {
        Some(Box::new(Conn { metric: self.connections, bytes_in: 0, bytes_out: 0, closed: false }))
    }

    fn get_type(&self) -> Option<ContextType> {
        Some(ContextType::StreamContext)
    }
}

struct Conn {
    metric: u32,
    bytes_in: usize,
    bytes_out: usize,
    closed: bool,
}

impl Conn {
    fn closed(&mut self, by: &str) {
        if !self.closed {
            self.closed = true;
            log::info!("tcp_upper: closed by {}: in={} out={}", by, self.bytes_in, self.bytes_out);
        }
    }
}

impl Context for Conn {}

impl StreamContext for Conn {
    fn on_new_connection(&mut self) -> Action {
        let _ = hostcalls::increment_metric(self.metric, 1);
        log::info!("tcp_upper: new connection");
        Action::Continue
    }

    fn on_downstream_data(&mut self, size: usize, _eos: bool) -> Action {
        self.bytes_in += size;
        log::debug!("tcp_upper: {} bytes from downstream", size);
        Action::Continue
    }

    fn on_upstream_data(&mut self, size: usize, _eos: bool) -> Action {
        if size > 0 {
            if let Some(data) = self.get_upstream_data(0, size) {
                self.set_upstream_data(0, size, &data.to_ascii_uppercase());
            }
        }
        self.bytes_out += size;
        Action::Continue
    }

    fn on_downstream_close(&mut self, _peer: PeerType) {
        self.closed("downstream");
    }

    fn on_upstream_close(&mut self, _peer: PeerType) {
        self.closed("upstream");
    }
}
