//! header_rules: add, replace and remove request and response headers as the JSON configuration says.
//!
//! Configuration: {"request": {"add": {name: value}, "set": {name: value}, "remove": [name]},
//!                 "response": {...same...}}
//! `add` appends a value (keeps existing ones), `set` replaces all values, `remove` deletes the header.
//! A configuration that is not such a JSON object is rejected at start: on_configure returns false.

use proxy_wasm::traits::{Context, HttpContext, RootContext};
use proxy_wasm::types::{Action, ContextType, LogLevel};
use serde_json::Value;
use std::rc::Rc;

proxy_wasm::main! {{
    proxy_wasm::set_log_level(LogLevel::Trace);
    proxy_wasm::set_root_context(|_| -> Box<dyn RootContext> { Box::new(Root { rules: Rc::new(Rules::default()) }) });
}}

#[derive(Default)]
struct Edits {
    add: Vec<(String, String)>,
    set: Vec<(String, String)>,
    remove: Vec<String>,
}

#[derive(Default)]
struct Rules {
    request: Edits,
    response: Edits,
}

fn pairs(value: Option<&Value>, what: &str) -> Result<Vec<(String, String)>, String> {
    match value {
        None => Ok(Vec::new()),
        Some(Value::Object(map)) => map
            .iter()
            .map(|(k, v)| match v {
                Value::String(s) => Ok((k.to_lowercase(), s.clone())),
                _ => Err(format!("{}.{}: value must be a string", what, k)),
            })
            .collect(),
        Some(_) => Err(format!("{}: must be an object of name -> value", what)),
    }
}

fn edits(value: Option<&Value>, what: &str) -> Result<Edits, String> {
    let obj = match value {
        None => return Ok(Edits::default()),
        Some(Value::Object(obj)) => obj,
        Some(_) => return Err(format!("{}: must be an object", what)),
    };
    for key in obj.keys() {
        if !["add", "set", "remove"].contains(&key.as_str()) {
            return Err(format!("{}: unknown key {:?}", what, key));
        }
    }
    let remove = match obj.get("remove") {
        None => Vec::new(),
        Some(Value::Array(items)) => items
            .iter()
            .map(|v| v.as_str().map(|s| s.to_lowercase()).ok_or(format!("{}.remove: names must be strings", what)))
            .collect::<Result<_, _>>()?,
        Some(_) => return Err(format!("{}.remove: must be a list", what)),
    };
    Ok(Edits {
        add: pairs(obj.get("add"), &format!("{}.add", what))?,
        set: pairs(obj.get("set"), &format!("{}.set", what))?,
        remove,
    })
}

fn parse(config: &[u8]) -> Result<Rules, String> {
    let value: Value = serde_json::from_slice(config).map_err(|e| format!("not JSON: {}", e))?;
    let obj = value.as_object().ok_or_else(|| "must be a JSON object".to_string())?;
    for key in obj.keys() {
        if key != "request" && key != "response" {
            return Err(format!("unknown key {:?}", key));
        }
    }
    Ok(Rules { request: edits(obj.get("request"), "request")?, response: edits(obj.get("response"), "response")? })
}

struct Root {
    rules: Rc<Rules>,
}

impl Context for Root {}

impl RootContext for Root {
    fn on_configure(&mut self, _size: usize) -> bool {
        let config = self.get_plugin_configuration().unwrap_or_default();
        match parse(&config) {
            Ok(rules) => {
                log::info!(
                    "header_rules configured: request +{} ={} -{}, response +{} ={} -{}",
                    rules.request.add.len(),
                    rules.request.set.len(),
                    rules.request.remove.len(),
                    rules.response.add.len(),
                    rules.response.set.len(),
                    rules.response.remove.len()
                );
                self.rules = Rc::new(rules);
                true
            }
            Err(e) => {
                log::error!("header_rules: bad configuration: {}", e);
                false
            }
        }
    }

    fn create_http_context(&self, _id: u32) -> Option<Box<dyn HttpContext>> {
        Some(Box::new(Filter { rules: self.rules.clone() }))
    }

    fn get_type(&self) -> Option<ContextType> {
        Some(ContextType::HttpContext)
    }
}

struct Filter {
    rules: Rc<Rules>,
}

impl Context for Filter {}

impl HttpContext for Filter {
    fn on_http_request_headers(&mut self, _n: usize, _eos: bool) -> Action {
        let e = &self.rules.request;
        for name in &e.remove {
            self.set_http_request_header(name, None);
        }
        for (k, v) in &e.set {
            self.set_http_request_header(k, Some(v));
        }
        for (k, v) in &e.add {
            self.add_http_request_header(k, v);
        }
        Action::Continue
    }

    fn on_http_response_headers(&mut self, _n: usize, _eos: bool) -> Action {
        let e = &self.rules.response;
        for name in &e.remove {
            self.set_http_response_header(name, None);
        }
        for (k, v) in &e.set {
            self.set_http_response_header(k, Some(v));
        }
        for (k, v) in &e.add {
            self.add_http_response_header(k, v);
        }
        Action::Continue
    }
}
