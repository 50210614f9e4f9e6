// Plugin properties: reads host properties and reports them as response headers.
//
// For each property below the response gets "x-prop-<name>" (dots and underscores become dashes) with the
// value decoded by its type (strings as is, integers from 8-byte little-endian, booleans as true/false). A
// property the host does not have gives the value "!NotFound" (another error: "!<error>"), so a spec can
// pin which properties a data plane provides.
//
//	request.path request.url_path request.method request.host request.scheme request.protocol
//	source.address source.port destination.address destination.port
//	plugin_name plugin_root_id plugin_vm_id
//	xds.cluster_name xds.route_name xds.node.id xds.node.cluster
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
	props []property
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

func (h *httpContext) OnHttpResponseHeaders(int, bool) types.Action {
	for _, p := range h.props {
		raw, err := proxywasm.GetProperty(p.path)
		value := ""
		switch {
		case err == types.ErrorStatusNotFound:
			value = "!NotFound"
		case err != nil:
			value = "!" + err.Error()
		default:
			value = decode(raw, p.kind)
		}
		if err := proxywasm.ReplaceHttpResponseHeader(p.header, value); err != nil {
			proxywasm.LogWarnf("properties: setting %s: %v", p.header, err)
		}
	}
	return types.ActionContinue
}
