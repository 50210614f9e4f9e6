// Plugin vmenv: reads VM environment variables with os.Getenv (WASI environ_get under the hood).
//
// Configuration (JSON, optional): {"names": ["GREETING", "HOST_VALUE"]} (default: ["GREETING"]).
// For each name the response gets "x-env-<name in lower case, '_' as '-'>" with the variable's value, or
// "!unset" when the VM has no such variable. The plugin start logs how many variables the VM sees.
package main

import (
	"encoding/json"
	"os"
	"strings"

	"github.com/proxy-wasm/proxy-wasm-go-sdk/proxywasm"
	"github.com/proxy-wasm/proxy-wasm-go-sdk/proxywasm/types"
)

func main() {}

func init() {
	proxywasm.SetPluginContext(func(uint32) types.PluginContext { return &pluginContext{} })
}

type pluginContext struct {
	types.DefaultPluginContext
	names []string
}

func (p *pluginContext) OnPluginStart(int) types.OnPluginStartStatus {
	cfg := struct {
		Names []string `json:"names"`
	}{Names: []string{"GREETING"}}
	if raw, err := proxywasm.GetPluginConfiguration(); err == nil && len(raw) > 0 {
		if err := json.Unmarshal(raw, &cfg); err != nil {
			proxywasm.LogErrorf("vmenv: invalid configuration: %v", err)
			return types.OnPluginStartStatusFailed
		}
	}
	p.names = cfg.Names
	proxywasm.LogInfof("vmenv: the VM has %d environment variables", len(os.Environ()))
	return types.OnPluginStartStatusOK
}

func (p *pluginContext) NewHttpContext(uint32) types.HttpContext { return &httpContext{names: p.names} }

type httpContext struct {
	types.DefaultHttpContext
	names []string
}

func (h *httpContext) OnHttpResponseHeaders(int, bool) types.Action {
	for _, name := range h.names {
		value, ok := os.LookupEnv(name)
		if !ok {
			value = "!unset"
		}
		header := "x-env-" + strings.ReplaceAll(strings.ToLower(name), "_", "-")
		if err := proxywasm.ReplaceHttpResponseHeader(header, value); err != nil {
			proxywasm.LogWarnf("vmenv: setting %s: %v", header, err)
		}
	}
	return types.ActionContinue
}
