/*
 * meshplug.agent._h2codec: the agent's HTTP/2 codec over libnghttp2 (the library Envoy's codec is built on),
 * behind the interface of meshplug/agent/h2wire.py (`Codec`). Framing, HPACK, the stream state machines, the
 * protocol checks (RFC 9113 header rules, content-length, frame sizes, SETTINGS), DATA framing and both flow
 * control windows run here; Python sees one list of compact events per read and hands over whole header
 * lists and bodies.
 *
 *   Session(server, settings, connection_window, max_header_bytes, stream_window, flood_limits, max_header_count)
 *       server: a server session (the agent's downstream), else a client (an HTTP/2 cluster). `settings`:
 *       [(id, value)] sent at once; `connection_window`: the connection's receive window (a WINDOW_UPDATE);
 *       `max_header_bytes`: a server: a request header block decoding past this (name + value + 32 per field)
 *       ends the connection (GOAWAY ENHANCE_YOUR_CALM: an HPACK bomb); a client: a response head past this
 *       (names and values) or `max_header_count` fields (0: no limit) resets its stream, RST_STREAM
 *       INTERNAL_ERROR, the rest of the block skipped (Envoy's max_response_headers_kb / _count; the reset
 *       event is flagged as the peer's, as Envoy reports it: remote_reset); `stream_window`: a client stream's receive
 *       window, opened by a WINDOW_UPDATE once its HEADERS went out (0: the SETTINGS' window). `flood_limits`:
 *       (empty, priority, window_update) Envoy's Http2ProtocolOptions max_consecutive_inbound_frames_with_empty_
 *       payload, max_inbound_priority_frames_per_stream, max_inbound_window_update_frames_per_data_frame_sent
 *       (Envoy's ProtocolConstraints: a peer past one of them is a flood; receive raises FloodError, nothing is
 *       queued, and the connection is to be closed without a GOAWAY, as Envoy does).
 *   receive(data) -> [(kind, stream_id, obj, flag, num)]  raises FloodError (a CodecError: its message names the
 *       flood, its `code` is one of FLOOD_*) when the peer floods, else CodecError after queueing the GOAWAY when the
 *       peer broke the protocol (a connection error) -- or, as Envoy's codec for an invalid frame (a bad header
 *       block, a flow-control or protocol error nghttp2 reports to on_invalid_frame), with nothing more to send
 *       (a server session's data_to_send() is empty from then on); its `events` attribute holds the events of the frames
 *       before the one that broke it (as Envoy, a response head and body already received are passed on).
 *       Kinds (h2wire.EV_*):
 *         1 request head  (obj: [(name, value)], flag: END_STREAM)
 *         2 response head (final responses only; 1xx are dropped)
 *         3 trailers
 *         4 DATA          (obj: the frame's payload, flag: END_STREAM, num: flow-controlled bytes to ack)
 *         5 stream reset  (flag: by the peer (RST_STREAM) or by the codec (a stream error), num: error code)
 *         7 GOAWAY        (stream_id: last stream id, num: error code)
 *   send_headers(sid, headers, end_stream) -> bool   (a client's first HEADERS opens stream `sid`, which must
 *       be next_stream_id())
 *   send_data(sid, data, end_stream) -> bool, send_trailers(sid, trailers) -> bool: queued here, sent as the
 *       peer's windows allow (trailers after the body, END_STREAM on them)
 *   reset(sid, code), forget(sid) (nothing more sent or handed over), reset_after_end(sid) (RST_STREAM NO_ERROR once our END_STREAM is out), ack(sid, n)
 *   goaway(code, last_stream_id (-1: the last one processed)), data_to_send() -> bytes, buffered() -> int,
 *   frames_out() -> (frames, control frames) serialized so far (what nghttp2 queued is serialized first; control:
 *       PING and SETTINGS ACKs and RST_STREAM, as Envoy counts them against max_outbound_control_frames),
 *   remote_max_streams() -> int, next_stream_id() -> int
 *
 * nghttp2 options as Envoy 1.40 sets them (source/common/http/http2/codec_impl.cc, Http2Options): no closed
 * streams kept for priorities, window updates by the application (consumed bytes are acknowledged once the
 * receiving side took them), no leading/trailing whitespace check on values, no send-side header block limit;
 * rapid reset is Envoy's premature-reset rule (in h2down), not the library's token bucket. The nghttp2 Envoy 1.40 is
 * built with (1.65 and later) ignores PRIORITY frames, where the 1.52 of Debian ends the connection for one on
 * stream 0 or depending on its own stream: h2c_receive (_h2inbound.c) takes them out of what it reads first.
 */
#include "_h2codec.h"

static PyObject *CodecError;
static PyObject *FloodError;

int h2c_buf_put(buf_t *b, const uint8_t *data, size_t n) {
    if (b->off && b->off == b->len) b->off = b->len = 0;
    if (b->len + n > b->cap) {
        if (b->off) {
            memmove(b->p, b->p + b->off, b->len - b->off);
            b->len -= b->off;
            b->off = 0;
        }
        if (b->len + n > b->cap) {
            size_t cap = b->cap ? b->cap : 1024;
            while (cap < b->len + n) cap *= 2;
            char *p = PyMem_Realloc(b->p, cap);
            if (!p) return -1;
            b->p = p;
            b->cap = cap;
        }
    }
    memcpy(b->p + b->len, data, n);
    b->len += n;
    return 0;
}

void h2c_buf_free(buf_t *b) {
    PyMem_Free(b->p);
    b->p = NULL;
    b->len = b->off = b->cap = 0;
}

stream_t *h2c_stream_new(Session *self, int32_t id) {
    stream_t *s = PyMem_Calloc(1, sizeof(stream_t));
    if (!s) return NULL;
    s->id = id;
    s->next = self->streams;
    if (self->streams) self->streams->prev = s;
    self->streams = s;
    return s;
}

void h2c_stream_free(Session *self, stream_t *s) {
    if (s->prev) s->prev->next = s->next;
    else self->streams = s->next;
    if (s->next) s->next->prev = s->prev;
    Py_CLEAR(s->headers);
    Py_CLEAR(s->cookies);
    Py_CLEAR(s->trailers);
    self->buffered -= s->out.len - s->out.off;
    h2c_buf_free(&s->in);
    h2c_buf_free(&s->out);
    PyMem_Free(s);
}

stream_t *h2c_stream_of(Session *self, int32_t id) {
    stream_t *s = (stream_t *)nghttp2_session_get_stream_user_data(self->session, id);
    if (s || self->server) return s;
    /* a client's stream exists in nghttp2 once its HEADERS are serialized; until then it is only ours */
    for (s = self->streams; s; s = s->next)
        if (s->id == id && !s->opened) return s;
    return NULL;
}

int h2c_emit(Session *self, int kind, int32_t sid, PyObject *obj, int flag, long long num) {
    if (!self->events) return 0;
    PyObject *t = Py_BuildValue("(iiOOL)", kind, (int)sid, obj ? obj : Py_None, flag ? Py_True : Py_False, num);
    if (!t) return -1;
    int rv = PyList_Append(self->events, t);
    Py_DECREF(t);
    return rv;
}

/* --- header lists: Python [(bytes, bytes)] <-> nghttp2_nv --- */
static nghttp2_nv *to_nva(PyObject *headers, size_t *count, PyObject **fast_out) {
    PyObject *fast = PySequence_Fast(headers, "headers must be a sequence");
    if (!fast) return NULL;
    Py_ssize_t n = PySequence_Fast_GET_SIZE(fast);
    nghttp2_nv *nva = PyMem_Malloc(sizeof(nghttp2_nv) * (n ? n : 1));
    if (!nva) {
        Py_DECREF(fast);
        PyErr_NoMemory();
        return NULL;
    }
    for (Py_ssize_t i = 0; i < n; i++) {
        PyObject *h = PySequence_Fast_GET_ITEM(fast, i);
        if (!PyTuple_Check(h) || PyTuple_GET_SIZE(h) < 2 || !PyBytes_Check(PyTuple_GET_ITEM(h, 0)) ||
            !PyBytes_Check(PyTuple_GET_ITEM(h, 1))) {
            PyMem_Free(nva);
            Py_DECREF(fast);
            PyErr_SetString(PyExc_TypeError, "a header must be a (bytes, bytes) tuple");
            return NULL;
        }
        PyObject *name = PyTuple_GET_ITEM(h, 0), *value = PyTuple_GET_ITEM(h, 1);
        nva[i].name = (uint8_t *)PyBytes_AS_STRING(name);
        nva[i].namelen = (size_t)PyBytes_GET_SIZE(name);
        nva[i].value = (uint8_t *)PyBytes_AS_STRING(value);
        nva[i].valuelen = (size_t)PyBytes_GET_SIZE(value);
        /* x-request-id is new on every request: never indexed, it would only churn the dynamic table */
        nva[i].flags = (nva[i].namelen == 12 && memcmp(nva[i].name, "x-request-id", 12) == 0)
                           ? NGHTTP2_NV_FLAG_NO_INDEX
                           : NGHTTP2_NV_FLAG_NONE;
    }
    *count = (size_t)n;
    *fast_out = fast;
    return nva;
}

/* --- nghttp2 callbacks: sending (receiving: _h2inbound.c) --- */
static int on_frame_send(nghttp2_session *session, const nghttp2_frame *frame, void *user_data) {
    Session *self = user_data;
    int32_t sid = frame->hd.stream_id;
    if (frame->hd.type == NGHTTP2_GOAWAY) {
        if (!self->app_goaway && frame->goaway.error_code != NGHTTP2_NO_ERROR) self->terminated = 1;
        return 0;
    }
    if (frame->hd.type != NGHTTP2_HEADERS && frame->hd.type != NGHTTP2_DATA) return 0;
    if (frame->hd.type == NGHTTP2_DATA) self->data_frames_sent++;
    stream_t *s = h2c_stream_of(self, sid);
    if (!s) return 0;
    if (frame->hd.type == NGHTTP2_HEADERS && !self->server && !s->opened) {
        s->opened = 1; /* the response's window (see h2up.client_settings) */
        self->opened_streams++;
        if (self->stream_window > NGHTTP2_INITIAL_WINDOW_SIZE)
            nghttp2_submit_window_update(session, NGHTTP2_FLAG_NONE, sid,
                                         self->stream_window - NGHTTP2_INITIAL_WINDOW_SIZE);
    }
    if (frame->hd.flags & NGHTTP2_FLAG_END_STREAM) s->end_sent = 1;
    if ((frame->hd.flags & NGHTTP2_FLAG_END_STREAM) && s->rst_after_end) {
        s->rst_after_end = 0;
        s->app_closed = 1;
        nghttp2_submit_rst_stream(session, NGHTTP2_FLAG_NONE, sid, NGHTTP2_NO_ERROR);
    }
    return 0;
}

static ssize_t read_body(nghttp2_session *session, int32_t sid, uint8_t *dest, size_t length, uint32_t *data_flags,
                         nghttp2_data_source *source, void *user_data) {
    Session *self = user_data;
    (void)source;
    stream_t *s = h2c_stream_of(self, sid);
    if (!s) return NGHTTP2_ERR_TEMPORAL_CALLBACK_FAILURE;
    size_t avail = s->out.len - s->out.off;
    size_t n = avail < length ? avail : length;
    if (n) {
        memcpy(dest, s->out.p + s->out.off, n);
        s->out.off += n;
        self->buffered -= n;
        if (s->out.off == s->out.len) s->out.off = s->out.len = 0;
    }
    if (n == avail && s->end_pending) {
        *data_flags |= NGHTTP2_DATA_FLAG_EOF;
        if (s->trailers) {
            PyObject *trailers = s->trailers, *fast = NULL;
            s->trailers = NULL;
            size_t count = 0;
            nghttp2_nv *nva = to_nva(trailers, &count, &fast);
            Py_DECREF(trailers);
            if (!nva) {
                PyErr_Clear();
                return NGHTTP2_ERR_TEMPORAL_CALLBACK_FAILURE;
            }
            int rv = nghttp2_submit_trailer(session, sid, nva, count);
            PyMem_Free(nva);
            Py_DECREF(fast);
            if (rv) return NGHTTP2_ERR_TEMPORAL_CALLBACK_FAILURE;
            *data_flags |= NGHTTP2_DATA_FLAG_NO_END_STREAM;
        }
        return (ssize_t)n;
    }
    if (!n) {
        s->deferred = 1;
        return NGHTTP2_ERR_DEFERRED;
    }
    return (ssize_t)n;
}

/* --- the Session type --- */
static void Session_dealloc(Session *self) {
    if (self->session) nghttp2_session_del(self->session);
    while (self->streams) h2c_stream_free(self, self->streams);
    h2c_buf_free(&self->out);
    Py_XDECREF(self->events);
    Py_TYPE(self)->tp_free((PyObject *)self);
}

static int Session_init(Session *self, PyObject *args, PyObject *kwds) {
    static char *kwlist[] = {"server", "settings", "connection_window", "max_header_bytes", "stream_window",
                             "flood_limits", "max_header_count", NULL};
    int server;
    PyObject *settings;
    long long conn_window, max_header_bytes;
    int stream_window;
    unsigned long long max_empty, max_priority, max_window;
    long long max_header_count = 0;
    if (!PyArg_ParseTupleAndKeywords(args, kwds, "pOLLi(KKK)|L", kwlist, &server, &settings, &conn_window,
                                     &max_header_bytes, &stream_window, &max_empty, &max_priority, &max_window,
                                     &max_header_count))
        return -1;
    if (self->session) {
        PyErr_SetString(PyExc_RuntimeError, "Session already initialised");
        return -1;
    }
    self->server = server;
    self->max_header_bytes = (size_t)max_header_bytes;
    self->max_header_count = (size_t)max_header_count;
    self->stream_window = stream_window;
    self->max_empty = max_empty;
    self->max_priority = max_priority;
    self->max_window = max_window;
    self->in_pass = server ? NGHTTP2_CLIENT_MAGIC_LEN : 0;
    self->in_first = 1;
    nghttp2_session_callbacks *cb;
    if (nghttp2_session_callbacks_new(&cb)) {
        PyErr_NoMemory();
        return -1;
    }
    nghttp2_session_callbacks_set_on_frame_send_callback(cb, on_frame_send);
    h2c_inbound_callbacks(cb);
    nghttp2_option *opt;
    if (nghttp2_option_new(&opt)) {
        nghttp2_session_callbacks_del(cb);
        PyErr_NoMemory();
        return -1;
    }
    nghttp2_option_set_no_closed_streams(opt, 1);
    nghttp2_option_set_no_auto_window_update(opt, 1);
    nghttp2_option_set_no_rfc9113_leading_and_trailing_ws_validation(opt, 1);
    nghttp2_option_set_max_send_header_block_length(opt, 0x2000000);
    /* rapid reset is answered by Envoy's premature-reset rule (h2down, limits.H2_PREMATURE_RESET_*), not by
     * the library's own token bucket, which would end the connection with GOAWAY mid-read */
    nghttp2_option_set_stream_reset_rate_limit(opt, UINT64_MAX, UINT64_MAX);
    /* Envoy raises the library's own cap on queued ACKs (1000 since nghttp2 1.39.2) back to 10,000: its outbound
     * control-frame limit (h2wire.H2Peer, 1000 after a read) answers first */
    nghttp2_option_set_max_outbound_ack(opt, 10000);
    int rv = server ? nghttp2_session_server_new2(&self->session, cb, self, opt)
                    : nghttp2_session_client_new2(&self->session, cb, self, opt);
    nghttp2_option_del(opt);
    nghttp2_session_callbacks_del(cb);
    if (rv) {
        PyErr_Format(CodecError, "nghttp2 session: %s", nghttp2_strerror(rv));
        return -1;
    }
    PyObject *fast = PySequence_Fast(settings, "settings must be a sequence");
    if (!fast) return -1;
    Py_ssize_t n = PySequence_Fast_GET_SIZE(fast);
    nghttp2_settings_entry iv[16];
    if (n > 16) n = 16;
    for (Py_ssize_t i = 0; i < n; i++) {
        PyObject *e = PySequence_Fast_GET_ITEM(fast, i);
        if (!PyArg_ParseTuple(e, "iI", &iv[i].settings_id, &iv[i].value)) {
            Py_DECREF(fast);
            return -1;
        }
    }
    Py_DECREF(fast);
    rv = nghttp2_submit_settings(self->session, NGHTTP2_FLAG_NONE, iv, (size_t)n);
    if (!rv && conn_window > NGHTTP2_INITIAL_CONNECTION_WINDOW_SIZE)
        rv = nghttp2_submit_window_update(self->session, NGHTTP2_FLAG_NONE, 0,
                                          (int32_t)(conn_window - NGHTTP2_INITIAL_CONNECTION_WINDOW_SIZE));
    if (rv) {
        PyErr_Format(CodecError, "nghttp2 settings: %s", nghttp2_strerror(rv));
        return -1;
    }
    return 0;
}

/* count the frames in bytes about to be handed over (their headers, wherever the chunks cut them) */
static void count_frames(Session *self, const uint8_t *p, size_t n) {
    while (n) {
        if (self->scan_skip) {
            size_t k = self->scan_skip < n ? self->scan_skip : n;
            self->scan_skip -= k;
            p += k;
            n -= k;
            continue;
        }
        size_t k = 9 - self->scan_hlen < n ? 9 - self->scan_hlen : n;
        memcpy(self->scan_hdr + self->scan_hlen, p, k);
        self->scan_hlen += k;
        p += k;
        n -= k;
        if (self->scan_hlen < 9) break;
        const uint8_t *h = self->scan_hdr;
        self->scan_hlen = 0;
        self->scan_skip = ((size_t)h[0] << 16) | ((size_t)h[1] << 8) | h[2];
        self->frames_out++;
        if (((h[3] == NGHTTP2_PING || h[3] == NGHTTP2_SETTINGS) && (h[4] & NGHTTP2_FLAG_ACK)) ||
            h[3] == NGHTTP2_RST_STREAM)
            self->control_out++;
    }
}

/* serialize what nghttp2 has queued into self->out */
static int drain(Session *self) {
    for (;;) {
        const uint8_t *data;
        ssize_t n = nghttp2_session_mem_send(self->session, &data);
        if (n < 0) {
            if (!self->failed) PyErr_Format(CodecError, "nghttp2 send: %s", nghttp2_strerror((int)n));
            return -1;
        }
        if (n == 0) return 0;
        if (h2c_buf_put(&self->out, data, (size_t)n)) {
            PyErr_NoMemory();
            return -1;
        }
        count_frames(self, data, (size_t)n);
    }
}

static PyObject *Session_receive(Session *self, PyObject *arg) {
    Py_buffer view;
    if (PyObject_GetBuffer(arg, &view, PyBUF_SIMPLE)) return NULL;
    PyObject *events = PyList_New(0);
    if (!events) {
        PyBuffer_Release(&view);
        return NULL;
    }
    self->events = events;
    ssize_t rv = h2c_receive(self, view.buf, (size_t)view.len);
    PyBuffer_Release(&view);
    int err = 0;
    if (self->flood) { /* nothing more is read or sent: the connection is closed without a GOAWAY (Envoy) */
        self->events = NULL;
        Py_DECREF(events);
        PyObject *exc = PyObject_CallFunction(FloodError, "s", self->flood);
        PyObject *code = PyLong_FromLong(self->flood_code);
        if (exc && code && PyObject_SetAttrString(exc, "code", code) == 0) PyErr_SetObject(FloodError, exc);
        Py_XDECREF(code);
        Py_XDECREF(exc);
        return NULL;
    }
    if (self->failed) {
        err = 1;
    } else if (rv < 0) { /* the read failed (Envoy's codec: a dispatch error, nothing more is written) */
        if (!self->terminated) self->silent = 1;
        self->terminated = 1;
    }
    if (self->terminated) self->events = NULL; /* the resets the GOAWAY brings are the connection error's */
    if (self->silent)
        self->out.len = self->out.off = 0;
    else if (!err && drain(self))
        err = 1;
    self->events = NULL;
    if (err) {
        Py_DECREF(events);
        self->failed = 0;
        if (!PyErr_Occurred()) PyErr_SetString(CodecError, "callback failed");
        return NULL;
    }
    if (self->terminated) { /* CodecError(message), its `events`: what the frames before the error gave */
        const char *msg = rv < 0 ? nghttp2_strerror((int)rv) : "connection error";
        PyObject *exc = PyObject_CallFunction(CodecError, "s", msg);
        if (exc && PyObject_SetAttrString(exc, "events", events) == 0) PyErr_SetObject(CodecError, exc);
        Py_XDECREF(exc);
        Py_DECREF(events);
        return NULL;
    }
    return events;
}

static PyObject *Session_data_to_send(Session *self, PyObject *noargs) {
    (void)noargs;
    if (self->silent) return PyBytes_FromStringAndSize(NULL, 0);
    if (drain(self)) return NULL;
    size_t n = self->out.len - self->out.off;
    if (!n) return PyBytes_FromStringAndSize(NULL, 0);
    PyObject *b = PyBytes_FromStringAndSize(self->out.p + self->out.off, (Py_ssize_t)n);
    if (b) self->out.len = self->out.off = 0;
    return b;
}

static PyObject *Session_frames_out(Session *self, PyObject *noargs) {
    (void)noargs;
    if (!self->silent && drain(self)) return NULL;
    return Py_BuildValue("(KK)", self->frames_out, self->control_out);
}

static PyObject *Session_send_headers(Session *self, PyObject *args) {
    int sid, end;
    PyObject *headers, *fast = NULL;
    if (!PyArg_ParseTuple(args, "iOp", &sid, &headers, &end)) return NULL;
    size_t count = 0;
    nghttp2_nv *nva = to_nva(headers, &count, &fast);
    if (!nva) return NULL;
    nghttp2_data_provider prd;
    prd.source.ptr = NULL;
    prd.read_callback = read_body;
    int rv;
    if (self->server) {
        stream_t *s = h2c_stream_of(self, sid);
        if (!s || s->app_closed || s->has_provider) rv = -1;
        else {
            if (!end) s->has_provider = 1;
            rv = nghttp2_submit_response(self->session, sid, nva, count, end ? NULL : &prd);
        }
    } else if ((uint32_t)sid != nghttp2_session_get_next_stream_id(self->session)) {
        rv = -1;
    } else {
        stream_t *s = h2c_stream_new(self, sid);
        if (!s) rv = -1;
        else {
            s->has_provider = !end;
            rv = nghttp2_submit_request(self->session, NULL, nva, count, end ? NULL : &prd, s);
            if (rv < 0) h2c_stream_free(self, s);
            else rv = rv == sid ? 0 : -1;
        }
    }
    PyMem_Free(nva);
    Py_DECREF(fast);
    if (rv) Py_RETURN_FALSE;
    Py_RETURN_TRUE;
}

static stream_t *sending(Session *self, int sid) {
    stream_t *s = h2c_stream_of(self, sid);
    return s && s->has_provider && !s->app_closed && !s->end_pending ? s : NULL;
}

static int resume(Session *self, stream_t *s) {
    if (s->deferred) {
        s->deferred = 0;
        return nghttp2_session_resume_data(self->session, s->id);
    }
    return 0;
}

static PyObject *Session_send_data(Session *self, PyObject *args) {
    int sid, end;
    Py_buffer view;
    if (!PyArg_ParseTuple(args, "iy*p", &sid, &view, &end)) return NULL;
    stream_t *s = sending(self, sid);
    int ok = s != NULL;
    if (ok && view.len) {
        if (h2c_buf_put(&s->out, view.buf, (size_t)view.len)) ok = 0;
        else self->buffered += (size_t)view.len;
    }
    PyBuffer_Release(&view);
    if (ok) {
        if (end) s->end_pending = 1;
        if (resume(self, s)) ok = 0;
    }
    if (ok) Py_RETURN_TRUE;
    Py_RETURN_FALSE;
}

static PyObject *Session_send_trailers(Session *self, PyObject *args) {
    int sid;
    PyObject *trailers;
    if (!PyArg_ParseTuple(args, "iO", &sid, &trailers)) return NULL;
    stream_t *s = sending(self, sid);
    if (!s) Py_RETURN_FALSE;
    PyObject *copy = PySequence_List(trailers);
    if (!copy) return NULL;
    Py_XSETREF(s->trailers, copy);
    s->end_pending = 1;
    if (resume(self, s)) Py_RETURN_FALSE;
    Py_RETURN_TRUE;
}

static void forget(Session *self, int32_t sid) {
    stream_t *s = h2c_stream_of(self, sid);
    if (s) {
        s->app_closed = 1;
        self->buffered -= s->out.len - s->out.off;
        s->out.len = s->out.off = 0;
        Py_CLEAR(s->trailers);
    }
}

static PyObject *Session_reset(Session *self, PyObject *args) {
    int sid;
    unsigned int code;
    if (!PyArg_ParseTuple(args, "iI", &sid, &code)) return NULL;
    forget(self, sid);
    /* a server's stream nghttp2 closed already (its own RST_STREAM for a stream error went out in the same
     * read): nothing more to send on it, as in Envoy (the h2 fallback refuses the same) */
    if (!self->server || nghttp2_session_find_stream(self->session, sid))
        nghttp2_submit_rst_stream(self->session, NGHTTP2_FLAG_NONE, sid, code);
    Py_RETURN_NONE;
}

static PyObject *Session_forget(Session *self, PyObject *arg) {
    long sid = PyLong_AsLong(arg);
    if (sid == -1 && PyErr_Occurred()) return NULL;
    forget(self, (int32_t)sid);
    Py_RETURN_NONE;
}

static PyObject *Session_reset_after_end(Session *self, PyObject *arg) {
    long sid = PyLong_AsLong(arg);
    if (sid == -1 && PyErr_Occurred()) return NULL;
    stream_t *s = h2c_stream_of(self, (int32_t)sid);
    if (s && !s->app_closed) {
        if (!s->end_sent) s->rst_after_end = 1; /* once our END_STREAM is out (it may still be queued) */
        else {
            s->app_closed = 1;
            nghttp2_submit_rst_stream(self->session, NGHTTP2_FLAG_NONE, (int32_t)sid, NGHTTP2_NO_ERROR);
        }
    }
    Py_RETURN_NONE;
}

static PyObject *Session_ack(Session *self, PyObject *args) {
    int sid;
    Py_ssize_t n;
    if (!PyArg_ParseTuple(args, "in", &sid, &n)) return NULL;
    if (n > 0) nghttp2_session_consume(self->session, sid, (size_t)n);
    Py_RETURN_NONE;
}

static PyObject *Session_goaway(Session *self, PyObject *args) {
    unsigned int code;
    int last = -1;
    if (!PyArg_ParseTuple(args, "I|i", &code, &last)) return NULL;
    if (last < 0) last = nghttp2_session_get_last_proc_stream_id(self->session);
    self->app_goaway = 1;
    nghttp2_submit_goaway(self->session, NGHTTP2_FLAG_NONE, last, code, NULL, 0);
    Py_RETURN_NONE;
}

static PyObject *Session_buffered(Session *self, PyObject *noargs) {
    (void)noargs;
    return PyLong_FromSize_t(self->buffered);
}

static PyObject *Session_remote_max_streams(Session *self, PyObject *noargs) {
    (void)noargs;
    return PyLong_FromUnsignedLong(
        nghttp2_session_get_remote_settings(self->session, NGHTTP2_SETTINGS_MAX_CONCURRENT_STREAMS));
}

static PyObject *Session_next_stream_id(Session *self, PyObject *noargs) {
    (void)noargs;
    return PyLong_FromUnsignedLong(nghttp2_session_get_next_stream_id(self->session));
}

static PyMethodDef Session_methods[] = {
    {"receive", (PyCFunction)Session_receive, METH_O, "events for received bytes"},
    {"data_to_send", (PyCFunction)Session_data_to_send, METH_NOARGS, "bytes to write"},
    {"frames_out", (PyCFunction)Session_frames_out, METH_NOARGS, "frames serialized so far: (all, control)"},
    {"send_headers", (PyCFunction)Session_send_headers, METH_VARARGS, "queue a header block"},
    {"send_data", (PyCFunction)Session_send_data, METH_VARARGS, "queue body bytes"},
    {"send_trailers", (PyCFunction)Session_send_trailers, METH_VARARGS, "queue trailers (end the stream)"},
    {"reset", (PyCFunction)Session_reset, METH_VARARGS, "RST_STREAM"},
    {"forget", (PyCFunction)Session_forget, METH_O, "nothing more is sent or handed over on a stream"},
    {"reset_after_end", (PyCFunction)Session_reset_after_end, METH_O, "RST_STREAM NO_ERROR after our end"},
    {"ack", (PyCFunction)Session_ack, METH_VARARGS, "received bytes consumed"},
    {"goaway", (PyCFunction)Session_goaway, METH_VARARGS, "GOAWAY"},
    {"buffered", (PyCFunction)Session_buffered, METH_NOARGS, "body bytes waiting for window"},
    {"remote_max_streams", (PyCFunction)Session_remote_max_streams, METH_NOARGS, "peer's stream limit"},
    {"next_stream_id", (PyCFunction)Session_next_stream_id, METH_NOARGS, "a client's next stream id"},
    {NULL, NULL, 0, NULL},
};

static PyTypeObject SessionType = {
    PyVarObject_HEAD_INIT(NULL, 0).tp_name = "meshplug.agent._h2codec.Session",
    .tp_basicsize = sizeof(Session),
    .tp_flags = Py_TPFLAGS_DEFAULT,
    .tp_doc = "An HTTP/2 connection's codec (nghttp2).",
    .tp_new = PyType_GenericNew,
    .tp_init = (initproc)Session_init,
    .tp_dealloc = (destructor)Session_dealloc,
    .tp_methods = Session_methods,
};

static struct PyModuleDef h2codec_module = {
    PyModuleDef_HEAD_INIT, "meshplug.agent._h2codec", "The agent's HTTP/2 codec over libnghttp2.", -1, NULL,
    NULL, NULL, NULL, NULL,
};

PyMODINIT_FUNC PyInit__h2codec(void) {
    if (PyType_Ready(&SessionType) < 0) return NULL;
    PyObject *m = PyModule_Create(&h2codec_module);
    if (!m) return NULL;
    CodecError = PyErr_NewException("meshplug.agent._h2codec.CodecError", NULL, NULL);
    FloodError = CodecError ? PyErr_NewException("meshplug.agent._h2codec.FloodError", CodecError, NULL) : NULL;
    if (!CodecError || !FloodError || PyModule_AddObjectRef(m, "CodecError", CodecError) < 0 ||
        PyModule_AddObjectRef(m, "FloodError", FloodError) < 0 ||
        PyModule_AddObjectRef(m, "Session", (PyObject *)&SessionType) < 0 ||
        PyModule_AddStringConstant(m, "NGHTTP2_VERSION", NGHTTP2_VERSION) < 0 ||
        PyModule_AddIntConstant(m, "FLOOD_EMPTY_FRAMES", FLOOD_EMPTY_FRAMES) < 0 ||
        PyModule_AddIntConstant(m, "FLOOD_PRIORITY", FLOOD_PRIORITY) < 0 ||
        PyModule_AddIntConstant(m, "FLOOD_WINDOW_UPDATE", FLOOD_WINDOW_UPDATE) < 0) {
        Py_DECREF(m);
        return NULL;
    }
    return m;
}
