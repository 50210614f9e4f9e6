// Plugin tickcache: a timer refreshes a value from a cluster into shared data; requests read it from there.
//
// Configuration (JSON):
//
//	{"cluster": "token", "authority": "token.local", "path": "/token", "period_ms": 200,
//	 "headers": {"authorization": "Bearer tick-client"}}
//
// The root context sets a tick period; on every tick it calls `GET <path>` on <cluster> with the configured
// extra headers (one call in flight at a time) and stores a 2xx answer's body in the shared data key
// "tickcache.token", logging "tickcache: token refreshed (<n> bytes)" at debug. Each request reads that key:
// when present the request goes on with "x-cached-token: <value>" added and the response gets
// "x-token-source: shared-data"; before the first refresh the request is answered locally with 503
// "token not ready\n".
package main

import (
	"encoding/json"

	"github.com/proxy-wasm/proxy-wasm-go-sdk/proxywasm"
	"github.com/proxy-wasm/proxy-wasm-go-sdk/proxywasm/types"
)

const sharedKey = "tickcache.token"

type config struct {
	Cluster   string            `json:"cluster"`
	Authority string            `json:"authority"`
	Path      string            `json:"path"`
	PeriodMs  uint32            `json:"period_ms"`
	Headers   map[string]string `json:"headers"`
}

func main() {}

func init() {
	proxywasm.SetPluginContext(func(uint32) types.PluginContext { return &pluginContext{} })
}

type pluginContext struct {
	types.DefaultPluginContext
	cfg      config
	inFlight bool
}

func (p *pluginContext) OnPluginStart(int) types.OnPluginStartStatus {
	p.cfg = config{Cluster: "token", Authority: "token", Path: "/token", PeriodMs: 200}
	if raw, err := proxywasm.GetPluginConfiguration(); err == nil && len(raw) > 0 {
		if err := json.Unmarshal(raw, &p.cfg); err != nil {
			proxywasm.LogErrorf("tickcache: invalid configuration: %v", err)
			return types.OnPluginStartStatusFailed
		}
	}
	if err := proxywasm.SetTickPeriodMilliSeconds(p.cfg.PeriodMs); err != nil {
		proxywasm.LogErrorf("tickcache: setting the tick period: %v", err)
		return types.OnPluginStartStatusFailed
	}
	return types.OnPluginStartStatusOK
}

func (p *pluginContext) OnTick() {
	if p.inFlight {
		return
	}
	headers := [][2]string{{":method", "GET"}, {":path", p.cfg.Path}, {":authority", p.cfg.Authority}}
	for k, v := range p.cfg.Headers {
		headers = append(headers, [2]string{k, v})
	}
	if _, err := proxywasm.DispatchHttpCall(p.cfg.Cluster, headers, nil, nil, 5000, p.onToken); err != nil {
		proxywasm.LogWarnf("tickcache: dispatch to %q failed: %v", p.cfg.Cluster, err)
		return
	}
	p.inFlight = true
}

func (p *pluginContext) onToken(numHeaders, bodySize, numTrailers int) {
	p.inFlight = false
	status := ""
	headers, err := proxywasm.GetHttpCallResponseHeaders()
	for _, kv := range headers {
		if kv[0] == ":status" {
			status = kv[1]
		}
	}
	if err != nil || len(status) == 0 || status[0] != '2' {
		proxywasm.LogWarnf("tickcache: token call failed (status %q, %v)", status, err)
		return
	}
	body, err := proxywasm.GetHttpCallResponseBody(0, bodySize)
	if err != nil && bodySize > 0 {
		proxywasm.LogWarnf("tickcache: reading the token body: %v", err)
		return
	}
	// CAS 0 = unconditional write; a concurrent writer (another worker's VM) simply wins or loses.
	if err := proxywasm.SetSharedData(sharedKey, body, 0); err != nil {
		proxywasm.LogWarnf("tickcache: storing the token: %v", err)
		return
	}
	proxywasm.LogDebugf("tickcache: token refreshed (%d bytes)", len(body))
}

func (p *pluginContext) NewHttpContext(uint32) types.HttpContext { return &httpContext{} }

type httpContext struct {
	types.DefaultHttpContext
	fromCache bool
}

func (h *httpContext) OnHttpRequestHeaders(int, bool) types.Action {
	value, _, err := proxywasm.GetSharedData(sharedKey)
	if err != nil || len(value) == 0 {
		if err := proxywasm.SendHttpResponse(503, [][2]string{{"content-type", "text/plain"}}, []byte("token not ready\n"), -1); err != nil {
			proxywasm.LogErrorf("tickcache: local reply: %v", err)
		}
		return types.ActionPause
	}
	h.fromCache = true
	if err := proxywasm.ReplaceHttpRequestHeader("x-cached-token", string(value)); err != nil {
		proxywasm.LogErrorf("tickcache: setting x-cached-token: %v", err)
	}
	return types.ActionContinue
}

func (h *httpContext) OnHttpResponseHeaders(int, bool) types.Action {
	if h.fromCache {
		_ = proxywasm.ReplaceHttpResponseHeader("x-token-source", "shared-data")
	}
	return types.ActionContinue
}
