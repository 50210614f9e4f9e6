// Plugin grpctrailers: gRPC seen from the Go SDK -- gRPC local replies, a gRPC call made as an HTTP call to an
// HTTP/2 cluster (the Go SDK has no gRPC call API), and response trailers read and edited.
//
// Configuration (JSON): {"cluster": "checker", "timeout_ms": 3000}
//
//   - `x-deny: <text>`: a local reply with gRPC status 7 (PERMISSION_DENIED) and <text> as its message, and
//     metadata `x-denied-by: grpctrailers` (a gRPC client gets it trailers-only).
//   - `x-check: <text>`: pauses the request and POSTs <text> as a gRPC message to meshplug.test.Echo/Unary on
//     the cluster; the reply message goes upstream as `x-check-reply`, the call's grpc-status (read from the
//     call's response trailers, or its headers when the answer is trailers-only) as `x-check-status`.
//   - response trailers: grpc-status is logged, `x-go-trailer-seen: <grpc-status>` added, `x-trailer`
//     replaced by `go-edited`.
package main

import (
	"encoding/binary"
	"encoding/json"

	"github.com/proxy-wasm/proxy-wasm-go-sdk/proxywasm"
	"github.com/proxy-wasm/proxy-wasm-go-sdk/proxywasm/types"
)

type config struct {
	Cluster   string `json:"cluster"`
	TimeoutMs uint32 `json:"timeout_ms"`
}

func main() {}

func init() {
	proxywasm.SetPluginContext(func(uint32) types.PluginContext { return &pluginContext{} })
}

type pluginContext struct {
	types.DefaultPluginContext
	cfg *config
}

func (p *pluginContext) OnPluginStart(int) types.OnPluginStartStatus {
	raw, err := proxywasm.GetPluginConfiguration()
	if err != nil {
		proxywasm.LogCriticalf("grpctrailers: reading configuration: %v", err)
		return types.OnPluginStartStatusFailed
	}
	cfg := &config{TimeoutMs: 3000}
	if err := json.Unmarshal(raw, cfg); err != nil || cfg.Cluster == "" {
		proxywasm.LogCriticalf("grpctrailers: bad configuration: need {\"cluster\": ...} (%v)", err)
		return types.OnPluginStartStatusFailed
	}
	p.cfg = cfg
	proxywasm.LogInfof("grpctrailers: checking with cluster %s", cfg.Cluster)
	return types.OnPluginStartStatusOK
}

func (p *pluginContext) NewHttpContext(uint32) types.HttpContext {
	return &httpContext{cfg: p.cfg}
}

type httpContext struct {
	types.DefaultHttpContext
	cfg *config
}

func (h *httpContext) OnHttpRequestHeaders(int, bool) types.Action {
	if text, err := proxywasm.GetHttpRequestHeader("x-deny"); err == nil {
		proxywasm.LogInfof("grpctrailers: denying: %s", text)
		headers := [][2]string{{"x-denied-by", "grpctrailers"}}
		if err := proxywasm.SendHttpResponse(403, headers, []byte(text), 7); err != nil {
			proxywasm.LogErrorf("grpctrailers: local reply: %v", err)
		}
		return types.ActionPause
	}
	text, err := proxywasm.GetHttpRequestHeader("x-check")
	if err != nil {
		return types.ActionContinue
	}
	frame := make([]byte, 5+len(text))
	binary.BigEndian.PutUint32(frame[1:5], uint32(len(text)))
	copy(frame[5:], text)
	headers := [][2]string{
		{":method", "POST"},
		{":path", "/meshplug.test.Echo/Unary"},
		{":authority", h.cfg.Cluster},
		{"content-type", "application/grpc"},
		{"te", "trailers"},
	}
	if _, err := proxywasm.DispatchHttpCall(h.cfg.Cluster, headers, frame, nil, h.cfg.TimeoutMs, h.onCheck); err != nil {
		proxywasm.LogErrorf("grpctrailers: dispatch failed: %v", err)
		_ = proxywasm.SendHttpResponse(503, nil, []byte("check unavailable"), 14)
	}
	return types.ActionPause
}

func (h *httpContext) onCheck(numHeaders, bodySize, numTrailers int) {
	// grpc-status is in the trailers, or in the headers of a trailers-only response
	status := "none"
	headers, _ := proxywasm.GetHttpCallResponseHeaders()
	trailers, _ := proxywasm.GetHttpCallResponseTrailers()
	for _, kv := range append(headers, trailers...) {
		if kv[0] == "grpc-status" {
			status = kv[1]
		}
	}
	reply := ""
	if bodySize >= 5 {
		body, err := proxywasm.GetHttpCallResponseBody(0, bodySize)
		if err == nil && len(body) >= 5 {
			n := int(binary.BigEndian.Uint32(body[1:5]))
			if 5+n <= len(body) {
				reply = string(body[5 : 5+n])
			}
		}
	}
	proxywasm.LogInfof("grpctrailers: check answered %q with grpc-status %s (%d trailers)", reply, status, numTrailers)
	_ = proxywasm.ReplaceHttpRequestHeader("x-check-reply", reply)
	_ = proxywasm.ReplaceHttpRequestHeader("x-check-status", status)
	if err := proxywasm.ResumeHttpRequest(); err != nil {
		proxywasm.LogErrorf("grpctrailers: resume: %v", err)
	}
}

func (h *httpContext) OnHttpResponseTrailers(int) types.Action {
	status, _ := proxywasm.GetHttpResponseTrailer("grpc-status")
	proxywasm.LogInfof("grpctrailers: response grpc-status %s", status)
	_ = proxywasm.AddHttpResponseTrailer("x-go-trailer-seen", status)
	if _, err := proxywasm.GetHttpResponseTrailer("x-trailer"); err == nil {
		_ = proxywasm.ReplaceHttpResponseTrailer("x-trailer", "go-edited")
	}
	return types.ActionContinue
}
