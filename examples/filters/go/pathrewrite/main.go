// Plugin pathrewrite: rewrites the request path with the first matching regular expression of its configuration.
//
// Configuration (JSON):
//
//	{"rules": [{"match": "^/old/(.*)$", "replace": "/new/$1"}, ...]}
//
// The rules are compiled once at plugin start (Go's RE2 syntax; "$1" expands groups). On each request the
// first rule whose pattern matches ":path" rewrites it; the original path is kept in "x-original-path".
// No rule matching leaves the request as it is. A bad pattern or bad JSON fails the plugin start.
package main

import (
	"encoding/json"
	"fmt"
	"regexp"

	"github.com/proxy-wasm/proxy-wasm-go-sdk/proxywasm"
	"github.com/proxy-wasm/proxy-wasm-go-sdk/proxywasm/types"
)

type rule struct {
	Match   string `json:"match"`
	Replace string `json:"replace"`
}

type compiled struct {
	re      *regexp.Regexp
	replace string
}

func main() {}

func init() {
	proxywasm.SetPluginContext(func(uint32) types.PluginContext { return &pluginContext{} })
}

type pluginContext struct {
	types.DefaultPluginContext
	rules []compiled
}

func (p *pluginContext) OnPluginStart(int) types.OnPluginStartStatus {
	raw, err := proxywasm.GetPluginConfiguration()
	if err != nil {
		proxywasm.LogErrorf("pathrewrite: no configuration: %v", err)
		return types.OnPluginStartStatusFailed
	}
	var cfg struct {
		Rules []rule `json:"rules"`
	}
	if err := json.Unmarshal(raw, &cfg); err != nil {
		proxywasm.LogErrorf("pathrewrite: invalid configuration: %v", err)
		return types.OnPluginStartStatusFailed
	}
	for i, r := range cfg.Rules {
		re, err := regexp.Compile(r.Match)
		if err != nil {
			proxywasm.LogErrorf("pathrewrite: rule %d: %v", i, err)
			return types.OnPluginStartStatusFailed
		}
		p.rules = append(p.rules, compiled{re: re, replace: r.Replace})
	}
	proxywasm.LogInfof("pathrewrite: %d rules loaded", len(p.rules))
	return types.OnPluginStartStatusOK
}

func (p *pluginContext) NewHttpContext(uint32) types.HttpContext {
	return &httpContext{rules: p.rules}
}

type httpContext struct {
	types.DefaultHttpContext
	rules []compiled
}

func (h *httpContext) OnHttpRequestHeaders(int, bool) types.Action {
	path, err := proxywasm.GetHttpRequestHeader(":path")
	if err != nil {
		proxywasm.LogWarnf("pathrewrite: no :path: %v", err)
		return types.ActionContinue
	}
	for _, r := range h.rules {
		if !r.re.MatchString(path) {
			continue
		}
		rewritten := r.re.ReplaceAllString(path, r.replace)
		if err := proxywasm.ReplaceHttpRequestHeader(":path", rewritten); err != nil {
			proxywasm.LogErrorf("pathrewrite: setting :path: %v", err)
			return types.ActionContinue
		}
		_ = proxywasm.ReplaceHttpRequestHeader("x-original-path", path)
		proxywasm.LogInfo(fmt.Sprintf("pathrewrite: %s -> %s", path, rewritten))
		return types.ActionContinue
	}
	return types.ActionContinue
}
