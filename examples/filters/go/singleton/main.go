// Plugin singleton: a singleton (Envoy's bootstrap WasmService) that ticks, calls a cluster and collects what
// HTTP-filter VMs put on its shared queue; the same module is the HTTP filter that feeds it.
//
// The root id picks the role. Root "collector" (the singleton): registers the shared queue "hits", ticks every
// 100 ms (shared data "ticks" = the count; "collector: tick <n>" logged for the first three), calls
// "GET /count" on cluster "counter" on every tick with no call in flight (shared data "calls" = the answer's
// body), and on queue-ready dequeues every item ("collector: got <item>"; shared data "hits" = the total).
// Root "reporter" (the HTTP filter; same vm_id, so the same shared data): on request headers resolves the
// queue "hits" of its own vm_id and enqueues the request path ("x-queue: ok", or "missing" when no singleton
// registered it); on response headers copies shared data ticks / hits / calls into x-ticks, x-hits, x-calls.
package main

import (
	"strconv"

	"github.com/proxy-wasm/proxy-wasm-go-sdk/proxywasm"
	"github.com/proxy-wasm/proxy-wasm-go-sdk/proxywasm/types"
)

func main() {}

func init() {
	proxywasm.SetPluginContext(func(uint32) types.PluginContext { return &pluginContext{} })
}

type pluginContext struct {
	types.DefaultPluginContext
	collector   bool
	ticks, hits int
	inFlight    bool
}

func (p *pluginContext) OnPluginStart(int) types.OnPluginStartStatus {
	root, _ := proxywasm.GetProperty([]string{"plugin_root_id"})
	switch string(root) {
	case "collector":
		p.collector = true
		if _, err := proxywasm.RegisterSharedQueue("hits"); err != nil {
			proxywasm.LogErrorf("collector: registering the queue: %v", err)
			return types.OnPluginStartStatusFailed
		}
		if err := proxywasm.SetTickPeriodMilliSeconds(100); err != nil {
			proxywasm.LogErrorf("collector: setting the tick period: %v", err)
			return types.OnPluginStartStatusFailed
		}
		proxywasm.LogInfo("collector: queue hits registered")
	case "reporter":
	default:
		proxywasm.LogErrorf("singleton: unknown root id %q (collector or reporter)", root)
		return types.OnPluginStartStatusFailed
	}
	return types.OnPluginStartStatusOK
}

func (p *pluginContext) OnTick() {
	p.ticks++
	if p.ticks <= 3 {
		proxywasm.LogInfof("collector: tick %d", p.ticks)
	}
	_ = proxywasm.SetSharedData("ticks", []byte(strconv.Itoa(p.ticks)), 0)
	if p.inFlight {
		return
	}
	headers := [][2]string{{":method", "GET"}, {":path", "/count"}, {":authority", "counter"}}
	if _, err := proxywasm.DispatchHttpCall("counter", headers, nil, nil, 5000, p.onCount); err != nil {
		proxywasm.LogWarnf("collector: call failed: %v", err)
		return
	}
	p.inFlight = true
}

func (p *pluginContext) onCount(_, bodySize, _ int) {
	p.inFlight = false
	body, _ := proxywasm.GetHttpCallResponseBody(0, bodySize)
	_ = proxywasm.SetSharedData("calls", body, 0)
}

func (p *pluginContext) OnQueueReady(queueID uint32) {
	for {
		item, err := proxywasm.DequeueSharedQueue(queueID)
		if err != nil {
			break
		}
		p.hits++
		proxywasm.LogInfof("collector: got %s", item)
	}
	_ = proxywasm.SetSharedData("hits", []byte(strconv.Itoa(p.hits)), 0)
}

func (p *pluginContext) NewHttpContext(uint32) types.HttpContext { return &reporter{queue: "-"} }

type reporter struct {
	types.DefaultHttpContext
	queue string // Envoy gives no request headers to response callbacks: the outcome is kept here
}

func (r *reporter) OnHttpRequestHeaders(int, bool) types.Action {
	path, _ := proxywasm.GetHttpRequestHeader(":path")
	r.queue = "missing"
	if id, err := proxywasm.ResolveSharedQueue("", "hits"); err == nil {
		if proxywasm.EnqueueSharedQueue(id, []byte(path)) == nil {
			r.queue = "ok"
		}
	}
	_ = proxywasm.ReplaceHttpRequestHeader("x-queue", r.queue)
	return types.ActionContinue
}

func shared(key string) string {
	value, _, err := proxywasm.GetSharedData(key)
	if err != nil || len(value) == 0 {
		return "-"
	}
	return string(value)
}

func (r *reporter) OnHttpResponseHeaders(int, bool) types.Action {
	_ = proxywasm.AddHttpResponseHeader("x-queue", r.queue)
	_ = proxywasm.AddHttpResponseHeader("x-ticks", shared("ticks"))
	_ = proxywasm.AddHttpResponseHeader("x-hits", shared("hits"))
	_ = proxywasm.AddHttpResponseHeader("x-calls", shared("calls"))
	return types.ActionContinue
}
