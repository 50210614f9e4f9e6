//! body_append: append text to request and response bodies when the body ends, logging every body callback.
//!
//! Configuration (JSON): {"request": "s", "response": "s"} (either may be empty). Content-Length is dropped
//! from a message whose body grows. Every body callback logs
//! "body_append: request body <n> bytes, end_of_stream=<true|false>" (or "response ...") at info and
//! continues (no buffering); the callback with end_of_stream appends the text to what it is shown. On Envoy's
//! HTTP/1 codec that is an empty call of its own after the data, so the text lands after the whole body.

use proxy_wasm::traits::{Context, HttpContext, RootContext};
use proxy_wasm::types::{Action, ContextType, LogLevel};
use serde_json::Value;
use std::rc::Rc;

proxy_wasm::main! {{
    proxy_wasm::set_log_level(LogLevel::Trace);
    proxy_wasm::set_root_context(|_| -> Box<dyn RootContext> { Box::new(Root { config: Rc::new(Config::default()) }) });
}}

#[derive(Default)]
struct Config {
    request: String,
    response: String,
}

fn parse(raw: &[u8]) -> Result<Config, String> {
    let value: Value = serde_json::from_slice(raw).map_err(|e| format!("not JSON: {}", e))?;
    let text = |key: &str| -> Result<String, String> {
        match value.get(key) {
            None => Ok(String::new()),
            Some(Value::String(s)) => Ok(s.clone()),
            Some(_) => Err(format!("`{}` must be a string", key)),
        }
    };
    Ok(Config { request: text("request")?, response: text("response")? })
}

struct Root {
    config: Rc<Config>,
}

impl Context for Root {}

impl RootContext for Root {
    fn on_configure(&mut self, _size: usize) -> bool {
        match parse(&self.get_plugin_configuration().unwrap_or_default()) {
            Ok(c) => {
                log::info!("body_append: request +{} bytes, response +{} bytes", c.request.len(), c.response.len());
                self.config = Rc::new(c);
                true
            }
            Err(e) => {
                log::error!("body_append: bad configuration: {}", e);
                false
            }
        }
    }

    fn create_http_context(&self, _id: u32) -> Option<Box<dyn HttpContext>> {
        Some(Box::new(Filter { config: self.config.clone() }))
    }

    fn get_type(&self) -> Option<ContextType> {
        Some(ContextType::HttpContext)
    }
}

struct Filter {
    config: Rc<Config>,
}

impl Context for Filter {}

impl HttpContext for Filter {
    fn on_http_request_headers(&mut self, _n: usize, _eos: bool) -> Action {
        if !self.config.request.is_empty() {
            self.set_http_request_header("content-length", None);
        }
        Action::Continue
    }

    fn on_http_request_body(&mut self, size: usize, eos: bool) -> Action {
        log::info!("body_append: request body {} bytes, end_of_stream={}", size, eos);
        if eos && !self.config.request.is_empty() {
            self.set_http_request_body(size, 0, self.config.request.as_bytes());
        }
        Action::Continue
    }

    fn on_http_response_headers(&mut self, _n: usize, _eos: bool) -> Action {
        if !self.config.response.is_empty() {
            self.set_http_response_header("content-length", None);
        }
        Action::Continue
    }

    fn on_http_response_body(&mut self, size: usize, eos: bool) -> Action {
        log::info!("body_append: response body {} bytes, end_of_stream={}", size, eos);
        if eos && !self.config.response.is_empty() {
            self.set_http_response_body(size, 0, self.config.response.as_bytes());
        }
        Action::Continue
    }
}
