//! propdump: log the raw bytes of listed properties in the request, response and log callbacks.
//!
//! Configuration: one property path per line, segments separated by dots; a segment in brackets keeps its
//! dots ("xds.route_metadata.filter_metadata.[route.info]"). In each callback every path is read with
//! get_property and logged at info as "prop <phase> <path> = <hex>" or "prop <phase> <path> none" (the SDK
//! answers None for NotFound and for an empty value alike), in phases rh, sh, lg. The Rust SDK panics on any
//! other status, so only list paths a host answers with a value or NotFound.

use proxy_wasm::traits::{Context, HttpContext, RootContext};
use proxy_wasm::types::{Action, ContextType, LogLevel};
use std::rc::Rc;

proxy_wasm::main! {{
    proxy_wasm::set_log_level(LogLevel::Trace);
    proxy_wasm::set_root_context(|_| -> Box<dyn RootContext> { Box::new(Root { paths: Rc::new(Vec::new()) }) });
}}

fn split(line: &str) -> Vec<String> {
    let mut out = Vec::new();
    let mut cur = String::new();
    let mut bracket = false;
    for c in line.chars() {
        match c {
            '[' if !bracket => bracket = true,
            ']' if bracket => bracket = false,
            '.' if !bracket => out.push(std::mem::take(&mut cur)),
            _ => cur.push(c),
        }
    }
    out.push(cur);
    out
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{:02x}", b)).collect()
}

struct Root {
    paths: Rc<Vec<(String, Vec<String>)>>,
}

impl Context for Root {}

impl RootContext for Root {
    fn on_configure(&mut self, _size: usize) -> bool {
        let raw = self.get_plugin_configuration().unwrap_or_default();
        let text = String::from_utf8_lossy(&raw).into_owned();
        let paths: Vec<(String, Vec<String>)> = text
            .lines()
            .map(str::trim)
            .filter(|l| !l.is_empty() && !l.starts_with('#'))
            .map(|l| (l.to_string(), split(l)))
            .collect();
        if paths.is_empty() {
            log::error!("propdump: no configuration (expected property paths, one per line)");
            return false;
        }
        log::info!("propdump: {} paths", paths.len());
        self.paths = Rc::new(paths);
        true
    }

    fn create_http_context(&self, _id: u32) -> Option<Box<dyn HttpContext>> {
        Some(Box::new(Filter { paths: self.paths.clone() }))
    }

    fn get_type(&self) -> Option<ContextType> {
        Some(ContextType::HttpContext)
    }
}

struct Filter {
    paths: Rc<Vec<(String, Vec<String>)>>,
}

impl Filter {
    fn dump(&self, phase: &str) {
        for (text, segs) in self.paths.iter() {
            let path: Vec<&str> = segs.iter().map(String::as_str).collect();
            match self.get_property(path) {
                Some(value) => log::info!("prop {} {} = {}", phase, text, hex(&value)),
                None => log::info!("prop {} {} none", phase, text),
            }
        }
    }
}

impl Context for Filter {}

impl HttpContext for Filter {
    fn on_http_request_headers(&mut self, _n: usize, _eos: bool) -> Action {
        self.dump("rh");
        Action::Continue
    }

    fn on_http_response_headers(&mut self, _n: usize, _eos: bool) -> Action {
        self.dump("sh");
        Action::Continue
    }

    fn on_log(&mut self) {
        self.dump("lg");
    }
}
