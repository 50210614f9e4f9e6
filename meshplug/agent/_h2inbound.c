/*
 * meshplug.agent._h2codec, receiving: nghttp2's callbacks for what the peer sends -- Envoy's inbound flood limits
 * (ProtocolConstraints), header blocks (cookies joined, a server's HPACK-bomb bound, a client's response head
 * limits), DATA, resets, GOAWAY, and the connection errors Envoy's codec turns into a failed read (see _h2codec.c).
 */
#include "_h2codec.h"

/* One received frame against Envoy's inbound flood limits (ProtocolConstraints::trackInboundFrame); returns
 * nonzero (self->flood set) when the peer went past one: the read stops there. */
static int track_inbound(Session *self, uint8_t type, uint8_t flags, size_t payload) {
    switch (type) {
    case NGHTTP2_HEADERS:
    case NGHTTP2_CONTINUATION:
    case NGHTTP2_DATA:
        if (payload == 0 && !(flags & NGHTTP2_FLAG_END_STREAM)) self->empty_run++;
        else self->empty_run = 0;
        break;
    case NGHTTP2_PRIORITY:
        self->priority_frames++;
        break;
    case NGHTTP2_WINDOW_UPDATE:
        self->window_frames++;
        break;
    default:
        return 0;
    }
    if (self->empty_run > self->max_empty) {
        self->flood = "Too many consecutive frames with an empty payload";
        self->flood_code = FLOOD_EMPTY_FRAMES;
    } else if (self->priority_frames > self->max_priority * (1 + self->opened_streams)) {
        self->flood = "Too many PRIORITY frames";
        self->flood_code = FLOOD_PRIORITY;
    } else if (self->window_frames > 5 + 2 * (self->opened_streams + self->max_window * self->data_frames_sent)) {
        self->flood = "Too many WINDOW_UPDATE frames";
        self->flood_code = FLOOD_WINDOW_UPDATE;
    }
    return self->flood != NULL;
}

/* every frame but HEADERS and DATA is tracked as it begins (the only callback some get: CONTINUATION, frames on
 * closed streams); HEADERS and DATA once their padding is known */
static int on_begin_frame(nghttp2_session *session, const nghttp2_frame_hd *hd, void *user_data) {
    Session *self = user_data;
    (void)session;
    if (hd->type == NGHTTP2_HEADERS || hd->type == NGHTTP2_DATA) return 0;
    return track_inbound(self, hd->type, hd->flags, hd->length) ? NGHTTP2_ERR_CALLBACK_FAILURE : 0;
}

static int on_begin_headers(nghttp2_session *session, const nghttp2_frame *frame, void *user_data) {
    Session *self = user_data;
    if (frame->hd.type != NGHTTP2_HEADERS) return 0;
    if (track_inbound(self, NGHTTP2_HEADERS, frame->hd.flags, frame->hd.length - frame->headers.padlen))
        return NGHTTP2_ERR_CALLBACK_FAILURE;
    int32_t sid = frame->hd.stream_id;
    stream_t *s = h2c_stream_of(self, sid);
    if (!s) {
        if (!self->server || frame->headers.cat != NGHTTP2_HCAT_REQUEST) return 0;
        s = h2c_stream_new(self, sid);
        if (!s) return NGHTTP2_ERR_CALLBACK_FAILURE;
        s->opened = 1;
        self->opened_streams++;
        nghttp2_session_set_stream_user_data(session, sid, s);
    }
    Py_CLEAR(s->cookies);
    Py_XSETREF(s->headers, PyList_New(0));
    s->header_bytes = s->header_count = 0;
    if (!s->headers) {
        self->failed = 1;
        return NGHTTP2_ERR_CALLBACK_FAILURE;
    }
    return 0;
}

static int on_header(nghttp2_session *session, const nghttp2_frame *frame, const uint8_t *name, size_t namelen,
                     const uint8_t *value, size_t valuelen, uint8_t flags, void *user_data) {
    Session *self = user_data;
    (void)flags;
    if (frame->hd.type != NGHTTP2_HEADERS) return 0;
    stream_t *s = h2c_stream_of(self, frame->hd.stream_id);
    if (!s || !s->headers) return 0;
    if (!self->server) { /* a response head: Envoy's saveHeader (max_response_headers_kb / _count, cookies apart) */
        if (!(namelen == 6 && memcmp(name, "cookie", 6) == 0)) {
            s->header_bytes += namelen + valuelen;
            s->header_count++;
        }
        if (s->header_bytes > self->max_header_bytes ||
            (self->max_header_count && s->header_count > self->max_header_count)) {
            s->overflow = 1; /* nghttp2 resets the stream (INTERNAL_ERROR) and skips the rest of the block */
            Py_CLEAR(s->headers);
            Py_CLEAR(s->cookies);
            return NGHTTP2_ERR_TEMPORAL_CALLBACK_FAILURE;
        }
    } else if ((s->header_bytes += namelen + valuelen + 32) > self->max_header_bytes) {
        /* a request's HPACK bomb: stop decoding, end the connection */
        nghttp2_session_terminate_session(session, NGHTTP2_ENHANCE_YOUR_CALM);
        self->terminated = 1;
        return NGHTTP2_ERR_CALLBACK_FAILURE;
    }
    /* userinfo in a request's authority (RFC 9113 8.3.1): the nghttp2 Envoy 1.40 is built with refuses '@' in
     * :authority and host (an invalid header, as every bad field: see on_invalid_frame); Debian's 1.52 lets
     * it through */
    if (self->server && valuelen && memchr(value, '@', valuelen) &&
        ((namelen == 10 && memcmp(name, ":authority", 10) == 0) || (namelen == 4 && memcmp(name, "host", 4) == 0))) {
        self->terminated = self->silent = 1;
        return NGHTTP2_ERR_CALLBACK_FAILURE;
    }
    PyObject *v = PyBytes_FromStringAndSize((const char *)value, (Py_ssize_t)valuelen);
    if (!v) goto fail;
    if (namelen == 6 && memcmp(name, "cookie", 6) == 0) { /* joined at the block's end, as h2 and Envoy do */
        if (!s->cookies && !(s->cookies = PyList_New(0))) {
            Py_DECREF(v);
            goto fail;
        }
        int rv = PyList_Append(s->cookies, v);
        Py_DECREF(v);
        return rv ? (self->failed = 1, NGHTTP2_ERR_CALLBACK_FAILURE) : 0;
    }
    PyObject *n = PyBytes_FromStringAndSize((const char *)name, (Py_ssize_t)namelen);
    if (!n) {
        Py_DECREF(v);
        goto fail;
    }
    PyObject *t = PyTuple_New(2);
    if (!t) {
        Py_DECREF(n);
        Py_DECREF(v);
        goto fail;
    }
    PyTuple_SET_ITEM(t, 0, n);
    PyTuple_SET_ITEM(t, 1, v);
    int rv = PyList_Append(s->headers, t);
    Py_DECREF(t);
    if (rv) goto fail;
    return 0;
fail:
    self->failed = 1;
    return NGHTTP2_ERR_CALLBACK_FAILURE;
}

static int on_data_chunk(nghttp2_session *session, uint8_t flags, int32_t sid, const uint8_t *data, size_t len,
                         void *user_data) {
    Session *self = user_data;
    (void)flags;
    stream_t *s = h2c_stream_of(self, sid);
    if (!s || s->app_closed) { /* nobody reads it: its window is given back at once */
        nghttp2_session_consume(session, sid, len);
        return 0;
    }
    if (h2c_buf_put(&s->in, data, len)) {
        self->failed = 1;
        PyErr_NoMemory();
        return NGHTTP2_ERR_CALLBACK_FAILURE;
    }
    return 0;
}

static int header_event(Session *self, stream_t *s, const nghttp2_frame *frame) {
    PyObject *headers = s->headers;
    s->headers = NULL;
    if (!headers) return 0;
    int rv = 0;
    if (s->cookies) {
        PyObject *sep = PyBytes_FromStringAndSize("; ", 2);
        PyObject *joined = sep ? PyObject_CallMethod(sep, "join", "O", s->cookies) : NULL;
        Py_XDECREF(sep);
        Py_CLEAR(s->cookies);
        PyObject *t = joined ? Py_BuildValue("(y#N)", "cookie", (Py_ssize_t)6, joined) : NULL;
        if (!t || PyList_Append(headers, t)) rv = -1;
        Py_XDECREF(t);
    }
    int end = (frame->hd.flags & NGHTTP2_FLAG_END_STREAM) != 0;
    int kind;
    if (self->server) {
        kind = frame->headers.cat == NGHTTP2_HCAT_REQUEST ? EV_REQUEST : EV_TRAILERS;
    } else if (s->final_seen) {
        kind = EV_TRAILERS;
    } else {
        kind = EV_RESPONSE;
        if (PyList_GET_SIZE(headers) > 0) { /* nghttp2 puts :status first; 1xx are not handed over */
            PyObject *st = PyTuple_GET_ITEM(PyList_GET_ITEM(headers, 0), 1);
            if (PyBytes_GET_SIZE(st) == 3 && PyBytes_AS_STRING(st)[0] == '1') kind = 0;
        }
        if (kind) s->final_seen = 1;
    }
    if (!rv && kind) rv = h2c_emit(self, kind, s->id, headers, end, 0);
    Py_DECREF(headers);
    return rv;
}

static int on_frame_recv(nghttp2_session *session, const nghttp2_frame *frame, void *user_data) {
    Session *self = user_data;
    int32_t sid = frame->hd.stream_id;
    stream_t *s;
    int rv = 0;
    switch (frame->hd.type) {
    case NGHTTP2_HEADERS:
        s = h2c_stream_of(self, sid);
        if (s && !s->app_closed) rv = header_event(self, s, frame);
        else if (s) Py_CLEAR(s->headers);
        break;
    case NGHTTP2_DATA:
        if (track_inbound(self, NGHTTP2_DATA, frame->hd.flags, frame->hd.length - frame->data.padlen))
            return NGHTTP2_ERR_CALLBACK_FAILURE;
        s = h2c_stream_of(self, sid);
        if (s && !s->app_closed) {
            size_t n = s->in.len - s->in.off;
            PyObject *data = PyBytes_FromStringAndSize(s->in.p + s->in.off, (Py_ssize_t)n);
            s->in.len = s->in.off = 0;
            rv = data ? h2c_emit(self, EV_DATA, sid, data, (frame->hd.flags & NGHTTP2_FLAG_END_STREAM) != 0,
                             (long long)n)
                      : -1;
            Py_XDECREF(data);
        }
        break;
    case NGHTTP2_RST_STREAM:
        s = h2c_stream_of(self, sid);
        if (s) {
            s->reset_recv = 1;
            if (!s->app_closed) rv = h2c_emit(self, EV_RESET, sid, NULL, 1, frame->rst_stream.error_code);
        }
        break;
    case NGHTTP2_GOAWAY:
        rv = h2c_emit(self, EV_GOAWAY, frame->goaway.last_stream_id, NULL, 0, frame->goaway.error_code);
        break;
    default:
        break;
    }
    (void)session;
    if (rv) {
        self->failed = 1;
        return NGHTTP2_ERR_CALLBACK_FAILURE;
    }
    return 0;
}

static int on_stream_close(nghttp2_session *session, int32_t sid, uint32_t error_code, void *user_data) {
    Session *self = user_data;
    stream_t *s = h2c_stream_of(self, sid);
    if (!s) return 0;
    int rv = 0;
    if (error_code && !s->reset_recv && !s->app_closed) /* the codec reset it: a stream error (a response head */
        rv = h2c_emit(self, EV_RESET, sid, NULL, s->overflow, error_code); /* past the limits: as Envoy, the peer's) */
    nghttp2_session_set_stream_user_data(session, sid, NULL);
    h2c_stream_free(self, s);
    if (rv) {
        self->failed = 1;
        return NGHTTP2_ERR_CALLBACK_FAILURE;
    }
    return 0;
}

/* Envoy's ConnectionImpl::onInvalidFrame (stream_error_on_invalid_http_messaging off, its default): a refused
 * stream is only that stream's; a bad header block or message, a flow-control, protocol or closed-stream error
 * fails the callback, so nghttp2 queues no GOAWAY and the read fails: Envoy's codec then writes nothing more
 * (not even what was queued before, its own SETTINGS in a connection's first read) and closes -- as a server
 * (tests/integration/test_differential_h2.py) and as a client (its codec client closes the upstream connection
 * without a flush: test_differential_upstream_flags) */
static int on_invalid_frame(nghttp2_session *session, const nghttp2_frame *frame, int lib_error_code,
                            void *user_data) {
    Session *self = user_data;
    (void)frame;
    (void)session;
    if (lib_error_code == NGHTTP2_ERR_REFUSED_STREAM) return 0;
    if (!self->terminated) self->silent = 1;
    self->terminated = 1;
    return NGHTTP2_ERR_CALLBACK_FAILURE;
}


void h2c_inbound_callbacks(nghttp2_session_callbacks *cb) {
    nghttp2_session_callbacks_set_on_begin_frame_callback(cb, on_begin_frame);
    nghttp2_session_callbacks_set_on_begin_headers_callback(cb, on_begin_headers);
    nghttp2_session_callbacks_set_on_header_callback(cb, on_header);
    nghttp2_session_callbacks_set_on_data_chunk_recv_callback(cb, on_data_chunk);
    nghttp2_session_callbacks_set_on_frame_recv_callback(cb, on_frame_recv);
    nghttp2_session_callbacks_set_on_stream_close_callback(cb, on_stream_close);
    nghttp2_session_callbacks_set_on_invalid_frame_recv_callback(cb, on_invalid_frame);
}

/* hand bytes to nghttp2; nonzero when the read stops there (its error in *rv, or a flood or a callback's failure) */
static int feed(Session *self, const uint8_t *p, size_t n, ssize_t *rv) {
    if (!n) return 0;
    ssize_t r = nghttp2_session_mem_recv(self->session, p, n);
    if (r < 0) {
        *rv = r;
        return 1;
    }
    return self->flood || self->failed;
}

/* A PRIORITY frame (RFC 7540's priority signal, deprecated by RFC 9113) nghttp2 1.65 and later read and drop --
 * on any stream, 0 included, whatever it depends on: one of 5 bytes that is neither the peer's first frame (that
 * must be SETTINGS) nor inside a header block (a CONTINUATION is expected there); both nghttp2s refuse those. */
#define PRIORITY_PAYLOAD 5 /* RFC 9113 6.3: a dependency (4 bytes) and a weight */
static int ignored_priority(const Session *self, const uint8_t *h, size_t len) {
    return h[3] == NGHTTP2_PRIORITY && len == PRIORITY_PAYLOAD && !self->in_first && !self->in_block;
}

/* The received bytes to nghttp2, each PRIORITY frame Envoy's nghttp2 ignores taken out (Debian's 1.52 ends the
 * connection for some; all are counted against the flood limit, as Envoy's on_begin_frame counts them). Frame
 * headers are scanned as the bytes come, whatever the reads cut: a header cut by the end of a read is held back
 * until it is whole (nghttp2 could do nothing with its start); the payloads are handed over in place.
 * Known difference: once nghttp2 ended the connection itself (its GOAWAY queued, the rest of the read ignored),
 * PRIORITY frames later in the same read are still counted here, where Envoy's nghttp2 counts none. */
ssize_t h2c_receive(Session *self, const uint8_t *p, size_t n) {
    ssize_t rv = (ssize_t)n;
    const uint8_t *seg = p; /* the bytes not handed over yet start here */
    while (n) {
        size_t k;
        if (self->in_pass || self->in_drop) {
            size_t *left = self->in_pass ? &self->in_pass : &self->in_drop;
            k = *left < n ? *left : n;
            if (left == &self->in_drop) { /* a PRIORITY frame taken out: what came before it goes first */
                if (feed(self, seg, (size_t)(p - seg), &rv)) return rv;
                seg = p + k;
            }
            *left -= k;
            p += k;
            n -= k;
            continue;
        }
        size_t had = self->in_hlen;
        k = 9 - had < n ? 9 - had : n;
        memcpy(self->in_hdr + had, p, k);
        self->in_hlen += k;
        if (self->in_hlen < 9) break; /* held back: the rest comes with the next read */
        self->in_hlen = 0;
        const uint8_t *h = self->in_hdr;
        size_t len = ((size_t)h[0] << 16) | ((size_t)h[1] << 8) | h[2];
        if (ignored_priority(self, h, len)) {
            if (feed(self, seg, (size_t)(p - seg), &rv)) return rv;
            if (track_inbound(self, NGHTTP2_PRIORITY, h[4], len)) return rv;
            self->in_drop = len;
            seg = p + k;
        } else {
            if (had) { /* its start came with an earlier read: handed over from the copy (seg == p here) */
                if (feed(self, h, 9, &rv)) return rv;
                seg = p + k;
            }
            self->in_pass = len;
            if (h[3] == NGHTTP2_HEADERS || h[3] == NGHTTP2_PUSH_PROMISE || h[3] == NGHTTP2_CONTINUATION)
                self->in_block = !(h[4] & NGHTTP2_FLAG_END_HEADERS);
        }
        self->in_first = 0;
        p += k;
        n -= k;
    }
    feed(self, seg, (size_t)(p - seg), &rv);
    return rv;
}
