//! route_info: what the route serving a request says about itself -- its name, virtual host, cluster and a
//! metadata value -- read before and after the plugin changes the request, echoed in response headers.
//!
//! Configuration (JSON): {"namespace": "route.info", "key": "team"}: the metadata value read is
//! xds.route_metadata.filter_metadata.<namespace>.<key>. On request headers: the route name is read
//! (`x-route-before`), then the request may be changed -- `x-set-pick: N` sets `x-pick: N` (a weighted
//! route's header_name), `x-rewrite-path: P` replaces :path -- and the route name is read again
//! (`x-route-after`). On response headers the route, virtual host, cluster and metadata value are read and
//! added as `x-route`, `x-vhost`, `x-cluster`, `x-route-meta` ("-" when absent).

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
    namespace: String,
    key: String,
}

fn parse(raw: &[u8]) -> Result<Config, String> {
    let value: Value = serde_json::from_slice(raw).map_err(|e| format!("not JSON: {}", e))?;
    let text = |key: &str| -> Result<String, String> {
        match value.get(key) {
            Some(Value::String(s)) if !s.is_empty() => Ok(s.clone()),
            _ => Err(format!("`{}` must be a non-empty string", key)),
        }
    };
    Ok(Config { namespace: text("namespace")?, key: text("key")? })
}

struct Root {
    config: Rc<Config>,
}

impl Context for Root {}

impl RootContext for Root {
    fn on_configure(&mut self, _size: usize) -> bool {
        match parse(&self.get_plugin_configuration().unwrap_or_default()) {
            Ok(c) => {
                log::info!("route_info: metadata {}.{}", c.namespace, c.key);
                self.config = Rc::new(c);
                true
            }
            Err(e) => {
                log::error!("route_info: bad configuration: {}", e);
                false
            }
        }
    }

    fn create_http_context(&self, _id: u32) -> Option<Box<dyn HttpContext>> {
        Some(Box::new(Filter { config: self.config.clone(), before: String::new(), after: String::new() }))
    }

    fn get_type(&self) -> Option<ContextType> {
        Some(ContextType::HttpContext)
    }
}

struct Filter {
    config: Rc<Config>,
    before: String,
    after: String,
}

impl Filter {
    fn text(&self, path: Vec<&str>) -> String {
        match self.get_property(path) {
            Some(v) if !v.is_empty() => String::from_utf8_lossy(&v).into_owned(),
            _ => "-".to_string(),
        }
    }
}

impl Context for Filter {}

impl HttpContext for Filter {
    fn on_http_request_headers(&mut self, _n: usize, _eos: bool) -> Action {
        self.before = self.text(vec!["xds", "route_name"]);
        if let Some(pick) = self.get_http_request_header("x-set-pick") {
            self.set_http_request_header("x-pick", Some(&pick));
        }
        if let Some(path) = self.get_http_request_header("x-rewrite-path") {
            self.set_http_request_header(":path", Some(&path));
        }
        self.after = self.text(vec!["xds", "route_name"]);
        Action::Continue
    }

    fn on_http_response_headers(&mut self, _n: usize, _eos: bool) -> Action {
        let route = self.text(vec!["xds", "route_name"]);
        let vhost = self.text(vec!["xds", "virtual_host_name"]);
        let cluster = self.text(vec!["xds", "cluster_name"]);
        let meta = self.text(vec!["xds", "route_metadata", "filter_metadata", &self.config.namespace, &self.config.key]);
        self.add_http_response_header("x-route-before", &self.before);
        self.add_http_response_header("x-route-after", &self.after);
        self.add_http_response_header("x-route", &route);
        self.add_http_response_header("x-vhost", &vhost);
        self.add_http_response_header("x-cluster", &cluster);
        self.add_http_response_header("x-route-meta", &meta);
        Action::Continue
    }
}
