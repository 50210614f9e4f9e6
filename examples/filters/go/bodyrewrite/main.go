// Plugin bodyrewrite: buffers each whole request body, replaces text in it and appends a suffix.
//
// Configuration (JSON):
//
//	{"replace": {"from": "secret", "to": "[redacted]"}, "append": "+go"}
//
// A request with a body loses its content-length (the body changes size) and is held until its end; then every
// occurrence of "from" becomes "to", "append" is added at the end, and the body goes upstream with the header
// "x-body-rewritten: go". Bodies over the host's buffer limit are the host's to refuse (413).
package main

import (
	"bytes"
	"encoding/json"

	"github.com/proxy-wasm/proxy-wasm-go-sdk/proxywasm"
	"github.com/proxy-wasm/proxy-wasm-go-sdk/proxywasm/types"
)

type config struct {
	Replace struct {
		From string `json:"from"`
		To   string `json:"to"`
	} `json:"replace"`
	Append string `json:"append"`
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
		proxywasm.LogError("bodyrewrite: no configuration")
		return types.OnPluginStartStatusFailed
	}
	if err := json.Unmarshal(raw, &p.cfg); err != nil {
		proxywasm.LogErrorf("bodyrewrite: invalid configuration: %v", err)
		return types.OnPluginStartStatusFailed
	}
	proxywasm.LogInfof("bodyrewrite: replace %q -> %q, append %q", p.cfg.Replace.From, p.cfg.Replace.To, p.cfg.Append)
	return types.OnPluginStartStatusOK
}

func (p *pluginContext) NewHttpContext(uint32) types.HttpContext {
	return &httpContext{cfg: &p.cfg}
}

type httpContext struct {
	types.DefaultHttpContext
	cfg *config
}

func (h *httpContext) OnHttpRequestHeaders(_ int, endOfStream bool) types.Action {
	if !endOfStream {
		_ = proxywasm.RemoveHttpRequestHeader("content-length")
		_ = proxywasm.ReplaceHttpRequestHeader("x-body-rewritten", "go")
	}
	return types.ActionContinue
}

func (h *httpContext) OnHttpRequestBody(bodySize int, endOfStream bool) types.Action {
	if !endOfStream {
		return types.ActionPause // buffer until the whole body is there
	}
	body, err := proxywasm.GetHttpRequestBody(0, bodySize)
	if err != nil && bodySize > 0 {
		proxywasm.LogErrorf("bodyrewrite: reading the body: %v", err)
		return types.ActionContinue
	}
	out := body
	if h.cfg.Replace.From != "" {
		out = bytes.ReplaceAll(out, []byte(h.cfg.Replace.From), []byte(h.cfg.Replace.To))
	}
	out = append(out, h.cfg.Append...)
	if err := proxywasm.ReplaceHttpRequestBody(out); err != nil {
		proxywasm.LogErrorf("bodyrewrite: replacing the body: %v", err)
		return types.ActionContinue
	}
	proxywasm.LogInfof("bodyrewrite: request body %d -> %d bytes", bodySize, len(out))
	return types.ActionContinue
}
