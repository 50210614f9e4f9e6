// Plugin sharedqueue: HTTP contexts hand messages to the root context through a shared queue.
//
// The root context registers the queue "sharedqueue.messages" at start. A request carrying the header
// "x-enqueue: <message>" has the message enqueued (the response gets "x-enqueued: <message>"). When the host
// signals the queue ready, the root context dequeues every message, logs "sharedqueue: dequeued <message>"
// and counts it; the count so far is stored in the shared data key "sharedqueue.count", which every request
// echoes in the response header "x-dequeued-count" (absent before the first message). A request may also name
// another VM's queue with "x-queue-vm" to exercise resolve_shared_queue: an unknown queue is answered with 404.
package main

import (
	"strconv"

	"github.com/proxy-wasm/proxy-wasm-go-sdk/proxywasm"
	"github.com/proxy-wasm/proxy-wasm-go-sdk/proxywasm/types"
)

const (
	queueName = "sharedqueue.messages"
	countKey  = "sharedqueue.count"
)

func main() {}

func init() {
	proxywasm.SetPluginContext(func(uint32) types.PluginContext { return &pluginContext{} })
}

type pluginContext struct {
	types.DefaultPluginContext
	queueID uint32
	count   uint64
}

func (p *pluginContext) OnPluginStart(int) types.OnPluginStartStatus {
	id, err := proxywasm.RegisterSharedQueue(queueName)
	if err != nil {
		proxywasm.LogErrorf("sharedqueue: registering %q: %v", queueName, err)
		return types.OnPluginStartStatusFailed
	}
	p.queueID = id
	proxywasm.LogInfof("sharedqueue: queue %q registered", queueName)
	return types.OnPluginStartStatusOK
}

func (p *pluginContext) OnQueueReady(queueID uint32) {
	for {
		data, err := proxywasm.DequeueSharedQueue(queueID)
		if err == types.ErrorStatusEmpty {
			break
		}
		if err != nil {
			proxywasm.LogErrorf("sharedqueue: dequeue: %v", err)
			break
		}
		p.count++
		proxywasm.LogInfof("sharedqueue: dequeued %s", string(data))
	}
	if err := proxywasm.SetSharedData(countKey, []byte(strconv.FormatUint(p.count, 10)), 0); err != nil {
		proxywasm.LogErrorf("sharedqueue: storing the count: %v", err)
	}
}

func (p *pluginContext) NewHttpContext(uint32) types.HttpContext { return &httpContext{} }

type httpContext struct {
	types.DefaultHttpContext
	enqueued string
}

func (h *httpContext) OnHttpRequestHeaders(int, bool) types.Action {
	msg, err := proxywasm.GetHttpRequestHeader("x-enqueue")
	if err != nil {
		return types.ActionContinue
	}
	vm, _ := proxywasm.GetHttpRequestHeader("x-queue-vm")
	id, err := proxywasm.ResolveSharedQueue(vm, queueName)
	if err != nil {
		proxywasm.LogWarnf("sharedqueue: resolving %q in vm %q: %v", queueName, vm, err)
		_ = proxywasm.SendHttpResponse(404, [][2]string{{"content-type", "text/plain"}}, []byte("no such queue\n"), -1)
		return types.ActionPause
	}
	if err := proxywasm.EnqueueSharedQueue(id, []byte(msg)); err != nil {
		proxywasm.LogErrorf("sharedqueue: enqueue: %v", err)
		return types.ActionContinue
	}
	h.enqueued = msg
	return types.ActionContinue
}

func (h *httpContext) OnHttpResponseHeaders(int, bool) types.Action {
	if h.enqueued != "" {
		_ = proxywasm.ReplaceHttpResponseHeader("x-enqueued", h.enqueued)
	}
	if count, _, err := proxywasm.GetSharedData(countKey); err == nil {
		_ = proxywasm.ReplaceHttpResponseHeader("x-dequeued-count", string(count))
	}
	return types.ActionContinue
}
