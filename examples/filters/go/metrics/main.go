// Plugin metrics: defines a counter, a gauge and a histogram and updates them on every request.
//
//	meshplug_go_requests_total         counter    +1 per request
//	meshplug_go_requests_active        gauge      +1 at request headers, -1 when the stream is done
//	meshplug_go_request_path_bytes     histogram  records len(:path) per request
//
// The host's view is echoed back: the response carries "x-requests-total" and "x-requests-active" read with
// proxy_get_metric (the counter's value after this request's increment, the gauge's value while this request
// is in flight), so a data plane's metric store can be checked through plain HTTP as well as its stats.
package main

import (
	"strconv"

	"github.com/proxy-wasm/proxy-wasm-go-sdk/proxywasm"
	"github.com/proxy-wasm/proxy-wasm-go-sdk/proxywasm/types"
)

var (
	requests  proxywasm.MetricCounter
	active    proxywasm.MetricGauge
	pathBytes proxywasm.MetricHistogram
)

func main() {}

func init() {
	proxywasm.SetPluginContext(func(uint32) types.PluginContext { return &pluginContext{} })
}

type pluginContext struct{ types.DefaultPluginContext }

func (*pluginContext) OnPluginStart(int) types.OnPluginStartStatus {
	requests = proxywasm.DefineCounterMetric("meshplug_go_requests_total")
	active = proxywasm.DefineGaugeMetric("meshplug_go_requests_active")
	pathBytes = proxywasm.DefineHistogramMetric("meshplug_go_request_path_bytes")
	return types.OnPluginStartStatusOK
}

func (*pluginContext) NewHttpContext(uint32) types.HttpContext { return &httpContext{} }

type httpContext struct {
	types.DefaultHttpContext
	counted bool
}

func (h *httpContext) OnHttpRequestHeaders(int, bool) types.Action {
	requests.Increment(1)
	active.Add(1)
	h.counted = true
	path, _ := proxywasm.GetHttpRequestHeader(":path")
	pathBytes.Record(uint64(len(path)))
	return types.ActionContinue
}

func (h *httpContext) OnHttpResponseHeaders(int, bool) types.Action {
	_ = proxywasm.ReplaceHttpResponseHeader("x-requests-total", strconv.FormatUint(requests.Value(), 10))
	_ = proxywasm.ReplaceHttpResponseHeader("x-requests-active", strconv.FormatInt(active.Value(), 10))
	return types.ActionContinue
}

func (h *httpContext) OnHttpStreamDone() {
	if h.counted {
		active.Add(-1)
	}
}
