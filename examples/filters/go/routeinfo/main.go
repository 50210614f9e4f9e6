// Plugin routeinfo: what the route serving a request says about itself -- name, virtual host, cluster and a
// metadata value -- read before and after the plugin changes the request, echoed in response headers.
//
// Configuration (JSON): {"namespace": "route.info", "key": "team"}: the metadata value read is
// xds.route_metadata.filter_metadata.<namespace>.<key>. On request headers the route name is read
// (x-route-before), the request may be changed -- "x-set-pick: N" sets "x-pick: N" (a weighted route's
// header_name), "x-rewrite-path: P" replaces :path -- and the route name is read again (x-route-after). On
// response headers the route, virtual host, cluster and metadata value are read and added as x-route,
// x-vhost, x-cluster, x-route-meta ("-" when absent or empty).
package main

import (
	"encoding/json"

	"github.com/proxy-wasm/proxy-wasm-go-sdk/proxywasm"
	"github.com/proxy-wasm/proxy-wasm-go-sdk/proxywasm/types"
)

type config struct {
	Namespace string `json:"namespace"`
	Key       string `json:"key"`
}

func main() {}

func init() {
	proxywasm.SetPluginContext(func(uint32) types.PluginContext { return &pluginContext{} })
}

type pluginContext struct {
	types.DefaultPluginContext
	cfg config
}

func (p *pluginContext) OnPluginStart(int) types.OnPluginStartStatus {
	raw, err := proxywasm.GetPluginConfiguration()
	if err == nil {
		err = json.Unmarshal(raw, &p.cfg)
	}
	if err != nil || p.cfg.Namespace == "" || p.cfg.Key == "" {
		proxywasm.LogErrorf("routeinfo: bad configuration (want {\"namespace\": ..., \"key\": ...}): %v", err)
		return types.OnPluginStartStatusFailed
	}
	proxywasm.LogInfof("routeinfo: metadata %s.%s", p.cfg.Namespace, p.cfg.Key)
	return types.OnPluginStartStatusOK
}

func (p *pluginContext) NewHttpContext(uint32) types.HttpContext { return &httpContext{cfg: p.cfg} }

type httpContext struct {
	types.DefaultHttpContext
	cfg           config
	before, after string
}

func property(path ...string) string {
	value, err := proxywasm.GetProperty(path)
	if err != nil || len(value) == 0 {
		return "-"
	}
	return string(value)
}

func (h *httpContext) OnHttpRequestHeaders(int, bool) types.Action {
	h.before = property("xds", "route_name")
	if pick, err := proxywasm.GetHttpRequestHeader("x-set-pick"); err == nil {
		_ = proxywasm.ReplaceHttpRequestHeader("x-pick", pick)
	}
	if path, err := proxywasm.GetHttpRequestHeader("x-rewrite-path"); err == nil {
		_ = proxywasm.ReplaceHttpRequestHeader(":path", path)
	}
	h.after = property("xds", "route_name")
	return types.ActionContinue
}

func (h *httpContext) OnHttpResponseHeaders(int, bool) types.Action {
	headers := [][2]string{
		{"x-route-before", h.before},
		{"x-route-after", h.after},
		{"x-route", property("xds", "route_name")},
		{"x-vhost", property("xds", "virtual_host_name")},
		{"x-cluster", property("xds", "cluster_name")},
		{"x-route-meta", property("xds", "route_metadata", "filter_metadata", h.cfg.Namespace, h.cfg.Key)},
	}
	for _, kv := range headers {
		_ = proxywasm.AddHttpResponseHeader(kv[0], kv[1])
	}
	return types.ActionContinue
}
