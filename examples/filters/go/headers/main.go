// Plugin headers: adds, replaces and removes request and response headers as the plugin configuration says.
//
// Configuration (JSON):
//
//	{"request":  {"add": {"x-a": "1"}, "replace": {"x-b": "2"}, "remove": ["x-c"]},
//	 "response": {"add": {...}, "replace": {...}, "remove": [...]}}
//
// "add" appends a value (a header may then carry several), "replace" sets the header whether or not it was
// there, "remove" deletes it. Keys of "add" and "replace" are applied in sorted order, so a spec can rely on
// the order. A configuration that is not this JSON fails the plugin start.
package main

import (
	"encoding/json"
	"fmt"
	"sort"

	"github.com/proxy-wasm/proxy-wasm-go-sdk/proxywasm"
	"github.com/proxy-wasm/proxy-wasm-go-sdk/proxywasm/types"
)

type edits struct {
	Add     map[string]string `json:"add"`
	Replace map[string]string `json:"replace"`
	Remove  []string          `json:"remove"`
}

type config struct {
	Request  edits `json:"request"`
	Response edits `json:"response"`
}

// headerOps are the SDK's host calls for one direction (request or response).
type headerOps struct {
	add     func(key, value string) error
	replace func(key, value string) error
	remove  func(key string) error
}

var (
	requestOps  = headerOps{proxywasm.AddHttpRequestHeader, proxywasm.ReplaceHttpRequestHeader, proxywasm.RemoveHttpRequestHeader}
	responseOps = headerOps{proxywasm.AddHttpResponseHeader, proxywasm.ReplaceHttpResponseHeader, proxywasm.RemoveHttpResponseHeader}
)

func main() {}

func init() {
	proxywasm.SetPluginContext(func(uint32) types.PluginContext { return &pluginContext{} })
}

type pluginContext struct {
	types.DefaultPluginContext
	cfg config
}

func (p *pluginContext) OnPluginStart(size int) types.OnPluginStartStatus {
	raw, err := proxywasm.GetPluginConfiguration()
	if err != nil && err != types.ErrorStatusNotFound {
		proxywasm.LogCriticalf("headers: reading configuration: %v", err)
		return types.OnPluginStartStatusFailed
	}
	if len(raw) == 0 {
		return types.OnPluginStartStatusOK
	}
	if err := json.Unmarshal(raw, &p.cfg); err != nil {
		proxywasm.LogErrorf("headers: invalid configuration: %v", err)
		return types.OnPluginStartStatusFailed
	}
	return types.OnPluginStartStatusOK
}

func (p *pluginContext) NewHttpContext(uint32) types.HttpContext {
	return &httpContext{cfg: &p.cfg}
}

type httpContext struct {
	types.DefaultHttpContext
	cfg *config
}

func sortedKeys(m map[string]string) []string {
	keys := make([]string, 0, len(m))
	for k := range m {
		keys = append(keys, k)
	}
	sort.Strings(keys)
	return keys
}

func apply(direction string, e edits, ops headerOps) {
	for _, k := range e.Remove {
		if err := ops.remove(k); err != nil {
			proxywasm.LogWarnf("headers: %s remove %q: %v", direction, k, err)
		}
	}
	for _, k := range sortedKeys(e.Replace) {
		if err := ops.replace(k, e.Replace[k]); err != nil {
			proxywasm.LogWarnf("headers: %s replace %q: %v", direction, k, err)
		}
	}
	for _, k := range sortedKeys(e.Add) {
		if err := ops.add(k, e.Add[k]); err != nil {
			proxywasm.LogWarnf("headers: %s add %q: %v", direction, k, err)
		}
	}
	n := len(e.Remove) + len(e.Replace) + len(e.Add)
	if n > 0 {
		proxywasm.LogDebug(fmt.Sprintf("headers: %s edits applied: %d", direction, n))
	}
}

func (h *httpContext) OnHttpRequestHeaders(int, bool) types.Action {
	apply("request", h.cfg.Request, requestOps)
	return types.ActionContinue
}

func (h *httpContext) OnHttpResponseHeaders(int, bool) types.Action {
	apply("response", h.cfg.Response, responseOps)
	return types.ActionContinue
}
