// Plugin properties: reads host properties and reports them as response headers.
//
// The properties are read at request headers (Envoy serves request.* only while the request headers are
// being processed) and reported on the response. For each property below the response gets "x-prop-<name>" (dots and underscores become dashes) with the
// value decoded by its type (strings as is, integers from 8-byte little-endian, booleans as true/false). A
// property the host does not have gives the value "!NotFound" (another error: "!<error>"), so a spec can
// pin which properties a data plane provides.
//
//	request.path request.url_path request.method request.host request.scheme request.protocol
//	source.address source.port destination.address destination.port
//	plugin_name plugin_root_id plugin_vm_id
//	xds.cluster_name xds.route_name xds.node.id xds.node.cluster
//
// "x-prop-request-path-at-response" holds request.path read again at response headers, to pin whether a
// data plane still serves request properties then (Envoy 1.40: "!NotFound").
// Each "*.address" property ("host:port") also gives "x-prop-<name>-ip" with the port cut off.
//
// Configuration (JSON, optional): {"node_metadata_key": "KEY"} adds "x-prop-node-meta" with the string value
// of xds.node.metadata.KEY.
package main

import (
	"encoding/binary"
	"encoding/json"
	"strconv"
	"strings"

	"github.com/proxy-wasm/proxy-wasm-go-sdk/proxywasm"
	"github.com/proxy-wasm/proxy-wasm-go-sdk/proxywasm/types"
)

type kind int

const (
	str kind = iota
	integer
)

type property struct {
	header string
	path   []string
	kind   kind
}

func prop(dotted string, k kind) property {
	name := strings.NewReplacer(".", "-", "_", "-").Replace(dotted)
	return property{header: "x-prop-" + name, path: strings.Split(dotted, "."), kind: k}
}

var known = []property{
	prop("request.path", str),
	prop("request.url_path", str),
	prop("request.method", str),
	prop("request.host", str),
	prop("request.scheme", str),
	prop("request.protocol", str),
	prop("source.address", str),
	prop("source.port", integer),
	prop("destination.address", str),
	prop("destination.port", integer),
	prop("plugin_name", str),
	prop("plugin_root_id", str),
	prop("plugin_vm_id", str),
	prop("xds.cluster_name", str),
	prop("xds.route_name", str),
	prop("xds.node.id", str),
	prop("xds.node.cluster", str),
}

func main() {}

func init() {
	proxywasm.SetPluginContext(func(uint32) types.PluginContext { return &pluginContext{} })
}

type pluginContext struct {
	types.DefaultPluginContext
	props []property
}

func (p *pluginContext) OnPluginStart(int) types.OnPluginStartStatus {
	p.props = append([]property(nil), known...)
	raw, err := proxywasm.GetPluginConfiguration()
	if err == nil && len(raw) > 0 {
		var cfg struct {
			NodeMetadataKey string `json:"node_metadata_key"`
		}
		if err := json.Unmarshal(raw, &cfg); err != nil {
			proxywasm.LogErrorf("properties: invalid configuration: %v", err)
			return types.OnPluginStartStatusFailed
		}
		if cfg.NodeMetadataKey != "" {
			p.props = append(p.props, property{
				header: "x-prop-node-meta",
				path:   []string{"xds", "node", "metadata", cfg.NodeMetadataKey},
				kind:   str,
			})
		}
	}
	root, err := proxywasm.GetProperty([]string{"plugin_root_id"})
	proxywasm.LogInfof("properties: started, plugin_root_id=%q (%v)", string(root), err)
	return types.OnPluginStartStatusOK
}

func (p *pluginContext) NewHttpContext(uint32) types.HttpContext { return &httpContext{props: p.props} }

type httpContext struct {
	types.DefaultHttpContext
	props  []property
	values []string
}

func decode(raw []byte, k kind) string {
	if k == integer {
		if len(raw) != 8 {
			return "!bad-int-size-" + strconv.Itoa(len(raw))
		}
		return strconv.FormatInt(int64(binary.LittleEndian.Uint64(raw)), 10)
	}
	return string(raw)
}

func read(p property) string {
	raw, err := proxywasm.GetProperty(p.path)
	switch {
	case err == types.ErrorStatusNotFound:
		return "!NotFound"
	case err != nil:
		return "!" + err.Error()
	default:
		return decode(raw, p.kind)
	}
}

func (h *httpContext) OnHttpRequestHeaders(int, bool) types.Action {
	h.values = make([]string, len(h.props))
	for i, p := range h.props {
		h.values[i] = read(p)
	}
	return types.ActionContinue
}

func setHeader(name, value string) {
	if err := proxywasm.ReplaceHttpResponseHeader(name, value); err != nil {
		proxywasm.LogWarnf("properties: setting %s: %v", name, err)
	}
}

func (h *httpContext) OnHttpResponseHeaders(int, bool) types.Action {
	for i, p := range h.props {
		if i >= len(h.values) {
			break
		}
		value := h.values[i]
		setHeader(p.header, value)
		if strings.HasSuffix(p.header, "-address") {
			if j := strings.LastIndexByte(value, ':'); j > 0 && value[0] != '!' {
				setHeader(p.header+"-ip", value[:j])
			}
		}
	}
	setHeader("x-prop-request-path-at-response", read(prop("request.path", str)))
	return types.ActionContinue
}
