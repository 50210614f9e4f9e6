// Plugin authcall: an external authorization check. Each request is paused while the plugin asks an auth
// service (an HTTP call to a named cluster); the request then resumes or is rejected with the auth service's
// status.
//
// Configuration (JSON):
//
//	{"cluster": "auth", "authority": "auth.local", "path": "/check", "timeout_ms": 5000}
//
// The call is `GET <path>` with ":authority" <authority> and the request's "authorization" header (when
// present) and its path in "x-original-path". A 2xx answer resumes the request, copying the auth service's
// "x-auth-user" header (when present) onto it. Any other status rejects the request with that status and the
// body "denied by auth service\n". A failed dispatch or a call that gets no answer rejects it with 503.
package main

import (
	"encoding/json"
	"strconv"

	"github.com/proxy-wasm/proxy-wasm-go-sdk/proxywasm"
	"github.com/proxy-wasm/proxy-wasm-go-sdk/proxywasm/types"
)

type config struct {
	Cluster   string `json:"cluster"`
	Authority string `json:"authority"`
	Path      string `json:"path"`
	TimeoutMs uint32 `json:"timeout_ms"`
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
	p.cfg = config{Cluster: "auth", Authority: "auth", Path: "/check", TimeoutMs: 5000}
	raw, err := proxywasm.GetPluginConfiguration()
	if err == nil && len(raw) > 0 {
		if err := json.Unmarshal(raw, &p.cfg); err != nil {
			proxywasm.LogErrorf("authcall: invalid configuration: %v", err)
			return types.OnPluginStartStatusFailed
		}
	}
	proxywasm.LogInfof("authcall: checking requests with cluster %q path %q", p.cfg.Cluster, p.cfg.Path)
	return types.OnPluginStartStatusOK
}

func (p *pluginContext) NewHttpContext(uint32) types.HttpContext {
	return &httpContext{cfg: &p.cfg}
}

type httpContext struct {
	types.DefaultHttpContext
	cfg *config
}

func reject(status uint32, body string) {
	if err := proxywasm.SendHttpResponse(status, [][2]string{{"content-type", "text/plain"}}, []byte(body), -1); err != nil {
		proxywasm.LogErrorf("authcall: sending local reply: %v", err)
	}
}

func (h *httpContext) OnHttpRequestHeaders(int, bool) types.Action {
	path, _ := proxywasm.GetHttpRequestHeader(":path")
	headers := [][2]string{
		{":method", "GET"},
		{":path", h.cfg.Path},
		{":authority", h.cfg.Authority},
		{"x-original-path", path},
	}
	if auth, err := proxywasm.GetHttpRequestHeader("authorization"); err == nil {
		headers = append(headers, [2]string{"authorization", auth})
	}
	_, err := proxywasm.DispatchHttpCall(h.cfg.Cluster, headers, nil, nil, h.cfg.TimeoutMs, h.onAuthResponse)
	if err != nil {
		proxywasm.LogErrorf("authcall: dispatch to %q failed: %v", h.cfg.Cluster, err)
		reject(503, "auth service unavailable\n")
		return types.ActionPause
	}
	proxywasm.LogDebugf("authcall: request %s paused for the auth check", path)
	return types.ActionPause
}

func (h *httpContext) onAuthResponse(numHeaders, bodySize, numTrailers int) {
	headers, err := proxywasm.GetHttpCallResponseHeaders()
	if err != nil {
		proxywasm.LogErrorf("authcall: no answer from the auth service: %v", err)
		reject(503, "auth service unavailable\n")
		return
	}
	var status, user string
	for _, kv := range headers {
		switch kv[0] {
		case ":status":
			status = kv[1]
		case "x-auth-user":
			user = kv[1]
		}
	}
	code, err := strconv.Atoi(status)
	if err != nil {
		proxywasm.LogErrorf("authcall: bad status %q from the auth service", status)
		reject(503, "auth service unavailable\n")
		return
	}
	if code >= 200 && code < 300 {
		if user != "" {
			_ = proxywasm.ReplaceHttpRequestHeader("x-auth-user", user)
		}
		proxywasm.LogInfof("authcall: allowed (auth status %d)", code)
		if err := proxywasm.ResumeHttpRequest(); err != nil {
			proxywasm.LogErrorf("authcall: resume: %v", err)
		}
		return
	}
	proxywasm.LogInfof("authcall: denied (auth status %d)", code)
	reject(uint32(code), "denied by auth service\n")
}
