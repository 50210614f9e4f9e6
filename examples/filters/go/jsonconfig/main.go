// Plugin jsonconfig: configures itself from strict JSON and refuses to start on a bad configuration.
//
// Configuration (JSON object, no other fields allowed, nothing after it):
//
//	{"name": "svc-a",                                 required, 1..64 characters
//	 "reply": {"status": 418, "body": "short\n"}}     optional; status 200..599
//
// With "reply" every request is answered locally with that status and body; without it requests go on and
// responses get "x-config-name: <name>". Any violation makes OnPluginStart fail after logging
// "jsonconfig: invalid configuration: <reason>", so the host must not serve with this plugin.
package main

import (
	"bytes"
	"encoding/json"
	"errors"
	"fmt"
	"io"

	"github.com/proxy-wasm/proxy-wasm-go-sdk/proxywasm"
	"github.com/proxy-wasm/proxy-wasm-go-sdk/proxywasm/types"
)

type reply struct {
	Status *int   `json:"status"`
	Body   string `json:"body"`
}

type config struct {
	Name  *string `json:"name"`
	Reply *reply  `json:"reply"`
}

func parse(raw []byte) (config, error) {
	var cfg config
	dec := json.NewDecoder(bytes.NewReader(raw))
	dec.DisallowUnknownFields()
	if err := dec.Decode(&cfg); err != nil {
		return cfg, err
	}
	if _, err := dec.Token(); err != io.EOF {
		return cfg, errors.New("unexpected data after the JSON object")
	}
	if cfg.Name == nil || len(*cfg.Name) == 0 || len(*cfg.Name) > 64 {
		return cfg, errors.New(`"name" is required (1..64 characters)`)
	}
	if cfg.Reply != nil {
		if cfg.Reply.Status == nil || *cfg.Reply.Status < 200 || *cfg.Reply.Status > 599 {
			return cfg, errors.New(`"reply.status" must be 200..599`)
		}
	}
	return cfg, nil
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
	if err != nil && err != types.ErrorStatusNotFound {
		proxywasm.LogErrorf("jsonconfig: invalid configuration: %v", err)
		return types.OnPluginStartStatusFailed
	}
	cfg, err := parse(raw)
	if err != nil {
		proxywasm.LogErrorf("jsonconfig: invalid configuration: %v", err)
		return types.OnPluginStartStatusFailed
	}
	p.cfg = cfg
	proxywasm.LogInfo(fmt.Sprintf("jsonconfig: configured %q", *cfg.Name))
	return types.OnPluginStartStatusOK
}

func (p *pluginContext) NewHttpContext(uint32) types.HttpContext { return &httpContext{cfg: &p.cfg} }

type httpContext struct {
	types.DefaultHttpContext
	cfg *config
}

func (h *httpContext) OnHttpRequestHeaders(int, bool) types.Action {
	if r := h.cfg.Reply; r != nil {
		headers := [][2]string{{"content-type", "text/plain"}, {"x-config-name", *h.cfg.Name}}
		if err := proxywasm.SendHttpResponse(uint32(*r.Status), headers, []byte(r.Body), -1); err != nil {
			proxywasm.LogErrorf("jsonconfig: local reply: %v", err)
		}
		return types.ActionPause
	}
	return types.ActionContinue
}

func (h *httpContext) OnHttpResponseHeaders(int, bool) types.Action {
	_ = proxywasm.ReplaceHttpResponseHeader("x-config-name", *h.cfg.Name)
	return types.ActionContinue
}
