//! deny_path: answer requests whose path starts with a configured prefix with a local reply.
//!
//! Configuration (JSON): {"prefixes": ["/admin", ...], "status": 403, "body": "text"}
//! `status` defaults to 403, `body` to "denied\n". The local reply carries `x-denied-by: deny_path`; other
//! requests pass untouched. Bad configuration (not JSON, no prefixes, status outside 200..599) is rejected.

use proxy_wasm::traits::{Context, HttpContext, RootContext};
use proxy_wasm::types::{Action, ContextType, LogLevel};
use serde_json::Value;
use std::rc::Rc;

proxy_wasm::main! {{
    proxy_wasm::set_log_level(LogLevel::Trace);
    proxy_wasm::set_root_context(|_| -> Box<dyn RootContext> { Box::new(Root { policy: None }) });
}}

struct Policy {
    prefixes: Vec<String>,
    status: u32,
    body: String,
}

fn parse(config: &[u8]) -> Result<Policy, String> {
    let value: Value = serde_json::from_slice(config).map_err(|e| format!("not JSON: {}", e))?;
    let prefixes: Vec<String> = value
        .get("prefixes")
        .and_then(Value::as_array)
        .ok_or("`prefixes` must be a list")?
        .iter()
        .map(|p| p.as_str().map(String::from).ok_or("prefixes must be strings"))
        .collect::<Result<_, _>>()?;
    if prefixes.is_empty() {
        return Err("`prefixes` is empty".into());
    }
    let status = value.get("status").map_or(Some(403), Value::as_u64).ok_or("`status` must be a number")?;
    if !(200..600).contains(&status) {
        return Err(format!("status {} out of range", status));
    }
    let body = value.get("body").and_then(Value::as_str).unwrap_or("denied\n").to_string();
    Ok(Policy { prefixes, status: status as u32, body })
}

struct Root {
    policy: Option<Rc<Policy>>,
}

impl Context for Root {}

impl RootContext for Root {
    fn on_configure(&mut self, _size: usize) -> bool {
        match parse(&self.get_plugin_configuration().unwrap_or_default()) {
            Ok(p) => {
                log::info!("deny_path: denying {:?} with {}", p.prefixes, p.status);
                self.policy = Some(Rc::new(p));
                true
            }
            Err(e) => {
                log::error!("deny_path: bad configuration: {}", e);
                false
            }
        }
    }

    fn create_http_context(&self, _id: u32) -> Option<Box<dyn HttpContext>> {
        self.policy.clone().map(|policy| Box::new(Filter { policy }) as Box<dyn HttpContext>)
    }

    fn get_type(&self) -> Option<ContextType> {
        Some(ContextType::HttpContext)
    }
}

struct Filter {
    policy: Rc<Policy>,
}

impl Context for Filter {}

impl HttpContext for Filter {
    fn on_http_request_headers(&mut self, _n: usize, _eos: bool) -> Action {
        let path = self.get_http_request_header(":path").unwrap_or_default();
        if let Some(prefix) = self.policy.prefixes.iter().find(|p| path.starts_with(p.as_str())) {
            log::warn!("deny_path: denied {} (prefix {})", path, prefix);
            self.send_http_response(
                self.policy.status,
                vec![("x-denied-by", "deny_path"), ("content-type", "text/plain")],
                Some(self.policy.body.as_bytes()),
            );
            return Action::Pause;
        }
        log::debug!("deny_path: allowed {}", path);
        Action::Continue
    }
}
