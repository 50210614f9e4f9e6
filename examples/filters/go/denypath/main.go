// Plugin denypath: answers requests under denied path prefixes with a local reply that never reaches the upstream.
//
// Configuration (JSON):
//
//	{"prefixes": ["/admin", "/internal/"], "status": 403, "body": "denied\n"}
//
// A request whose ":path" starts with one of the prefixes gets the status (default 403) with the body and the
// header "x-denied-by: denypath"; others pass. An empty prefix list or bad JSON fails the plugin start.
package main

import (
	"encoding/json"
	"strings"

	"github.com/proxy-wasm/proxy-wasm-go-sdk/proxywasm"
	"github.com/proxy-wasm/proxy-wasm-go-sdk/proxywasm/types"
)

type config struct {
	Prefixes []string `json:"prefixes"`
	Status   uint32   `json:"status"`
	Body     string   `json:"body"`
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
	if err != nil || len(raw) == 0 {
		proxywasm.LogError("denypath: no configuration")
		return types.OnPluginStartStatusFailed
	}
	p.cfg = config{Status: 403}
	if err := json.Unmarshal(raw, &p.cfg); err != nil {
		proxywasm.LogErrorf("denypath: invalid configuration: %v", err)
		return types.OnPluginStartStatusFailed
	}
	if len(p.cfg.Prefixes) == 0 {
		proxywasm.LogError("denypath: `prefixes` is empty")
		return types.OnPluginStartStatusFailed
	}
	proxywasm.LogInfof("denypath: denying %d prefixes with %d", len(p.cfg.Prefixes), p.cfg.Status)
	return types.OnPluginStartStatusOK
}

func (p *pluginContext) NewHttpContext(uint32) types.HttpContext {
	return &httpContext{cfg: &p.cfg}
}

type httpContext struct {
	types.DefaultHttpContext
	cfg *config
}

func (h *httpContext) OnHttpRequestHeaders(int, bool) types.Action {
	path, _ := proxywasm.GetHttpRequestHeader(":path")
	for _, prefix := range h.cfg.Prefixes {
		if strings.HasPrefix(path, prefix) {
			headers := [][2]string{{"x-denied-by", "denypath"}, {"content-type", "text/plain"}}
			if err := proxywasm.SendHttpResponse(h.cfg.Status, headers, []byte(h.cfg.Body), -1); err != nil {
				proxywasm.LogErrorf("denypath: local reply: %v", err)
				return types.ActionContinue
			}
			proxywasm.LogInfof("denypath: denied %s (prefix %s)", path, prefix)
			return types.ActionPause
		}
	}
	return types.ActionContinue
}
