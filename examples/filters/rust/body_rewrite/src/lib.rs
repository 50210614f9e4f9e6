//! body_rewrite: append to request bodies, replace text in and append to response bodies.
//!
//! Configuration (JSON): {"request_append": "s", "response_replace": {"from": "a", "to": "b"}, "response_append": "s"}
//! Bodies may arrive in many chunks: each chunk is buffered (Action::Pause) until end of stream, then the whole
//! body is rewritten at once, so a `from` split across two chunks is still found. Content-Length is dropped
//! whenever a body is going to change size.

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
    request_append: String,
    response_from: String,
    response_to: String,
    response_append: String,
}

fn text(value: &Value, key: &str) -> Result<String, String> {
    match value.get(key) {
        None => Ok(String::new()),
        Some(Value::String(s)) => Ok(s.clone()),
        Some(_) => Err(format!("`{}` must be a string", key)),
    }
}

fn parse(raw: &[u8]) -> Result<Config, String> {
    let value: Value = serde_json::from_slice(raw).map_err(|e| format!("not JSON: {}", e))?;
    if !value.is_object() {
        return Err("must be a JSON object".into());
    }
    let (from, to) = match value.get("response_replace") {
        None => (String::new(), String::new()),
        Some(r) => (text(r, "from")?, text(r, "to")?),
    };
    Ok(Config {
        request_append: text(&value, "request_append")?,
        response_from: from,
        response_to: to,
        response_append: text(&value, "response_append")?,
    })
}

struct Root {
    config: Rc<Config>,
}

impl Context for Root {}

impl RootContext for Root {
    fn on_configure(&mut self, _size: usize) -> bool {
        match parse(&self.get_plugin_configuration().unwrap_or_default()) {
            Ok(c) => {
                self.config = Rc::new(c);
                true
            }
            Err(e) => {
                log::error!("body_rewrite: bad configuration: {}", e);
                false
            }
        }
    }

    fn create_http_context(&self, _id: u32) -> Option<Box<dyn HttpContext>> {
        Some(Box::new(Filter { config: self.config.clone(), request_chunks: 0, response_chunks: 0 }))
    }

    fn get_type(&self) -> Option<ContextType> {
        Some(ContextType::HttpContext)
    }
}

struct Filter {
    config: Rc<Config>,
    request_chunks: u32,
    response_chunks: u32,
}

impl Filter {
    fn response_changes(&self) -> bool {
        !self.config.response_from.is_empty() || !self.config.response_append.is_empty()
    }
}

impl Context for Filter {}

impl HttpContext for Filter {
    fn on_http_request_headers(&mut self, _n: usize, _eos: bool) -> Action {
        if !self.config.request_append.is_empty() {
            self.set_http_request_header("content-length", None);
        }
        Action::Continue
    }

    fn on_http_request_body(&mut self, size: usize, eos: bool) -> Action {
        self.request_chunks += 1;
        if self.config.request_append.is_empty() {
            return Action::Continue;
        }
        if !eos {
            return Action::Pause; // buffer until the whole body is there
        }
        let mut body = self.get_http_request_body(0, size).unwrap_or_default();
        body.extend_from_slice(self.config.request_append.as_bytes());
        self.set_http_request_body(0, size, &body);
        log::info!("body_rewrite: request body {} -> {} bytes after {} callbacks", size, body.len(), self.request_chunks);
        Action::Continue
    }

    fn on_http_response_headers(&mut self, _n: usize, _eos: bool) -> Action {
        if self.response_changes() {
            self.set_http_response_header("content-length", None);
        }
        Action::Continue
    }

    fn on_http_response_body(&mut self, size: usize, eos: bool) -> Action {
        self.response_chunks += 1;
        if !self.response_changes() {
            return Action::Continue;
        }
        if !eos {
            return Action::Pause;
        }
        let body = self.get_http_response_body(0, size).unwrap_or_default();
        let mut text = String::from_utf8_lossy(&body).into_owned();
        if !self.config.response_from.is_empty() {
            text = text.replace(&self.config.response_from, &self.config.response_to);
        }
        text.push_str(&self.config.response_append);
        self.set_http_response_body(0, size, text.as_bytes());
        log::info!(
            "body_rewrite: response body {} -> {} bytes after {} callbacks",
            size,
            text.len(),
            self.response_chunks
        );
        Action::Continue
    }
}
