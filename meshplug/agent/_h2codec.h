/*
 * meshplug.agent._h2codec's shared parts: the session and stream types, the byte buffer, and what its two sources
 * use of each other -- _h2codec.c (the Python type Session, sending: header lists, bodies, the outbound frame
 * count) and _h2inbound.c (nghttp2's receiving callbacks: events, header blocks and their limits, Envoy's inbound
 * flood limits, connection errors). The interface is described in _h2codec.c.
 */
#ifndef MESHPLUG_H2CODEC_H
#define MESHPLUG_H2CODEC_H
#define PY_SSIZE_T_CLEAN
#include <Python.h>
#include <nghttp2/nghttp2.h>
#include <string.h>

#define EV_REQUEST 1
#define EV_RESPONSE 2
#define EV_TRAILERS 3
#define EV_DATA 4
#define EV_RESET 5
#define EV_GOAWAY 7

/* the floods FloodError.code names (h2conn.FLOOD_*: the same numbers) */
#define FLOOD_EMPTY_FRAMES 1
#define FLOOD_PRIORITY 2
#define FLOOD_WINDOW_UPDATE 3

typedef struct buf_s {
    char *p;
    size_t len, off, cap;
} buf_t;

typedef struct stream_s {
    int32_t id;
    struct stream_s *prev, *next; /* every stream of the session (freed with it) */
    PyObject *headers;            /* the header block being received */
    PyObject *cookies;            /* its cookie fields, joined at its end */
    size_t header_bytes;
    buf_t in;                     /* the DATA frame being received */
    buf_t out;                    /* body waiting to be sent */
    PyObject *trailers;           /* trailers to send after the body */
    size_t header_count;
    char final_seen, reset_recv, app_closed, end_pending, has_provider, deferred, rst_after_end, opened, end_sent;
    char overflow; /* a response head past the limits: reset (RST_STREAM INTERNAL_ERROR) */
} stream_t;

typedef struct {
    PyObject_HEAD nghttp2_session *session;
    int server;
    size_t max_header_bytes, max_header_count;
    int32_t stream_window;
    PyObject *events; /* the list receive() fills (NULL outside receive) */
    buf_t out;        /* serialized frames not yet handed over */
    stream_t *streams;
    size_t buffered;  /* body bytes waiting in streams */
    int app_goaway;   /* a GOAWAY we submitted is on its way */
    int terminated;   /* the codec ended the connection (a connection error) */
    int silent;       /* ... without a GOAWAY: nothing more is written (Envoy's dispatch error) */
    int failed;       /* a Python error inside a callback */
    /* Envoy's ProtocolConstraints (inbound): its limits, counts, and the flood found (NULL: none) */
    unsigned long long max_empty, max_priority, max_window;
    unsigned long long empty_run, priority_frames, window_frames, opened_streams, data_frames_sent;
    const char *flood;
    int flood_code;
    /* frames serialized so far (Envoy's outbound frame accounting: all, and the control frames it watches --
     * PING and SETTINGS ACKs, RST_STREAM); the scan of the bytes handed over: the rest of the current frame's
     * payload to pass, or the part of its 9-byte header seen */
    unsigned long long frames_out, control_out;
    size_t scan_skip, scan_hlen;
    uint8_t scan_hdr[9];
    /* the scan of the bytes received (h2c_receive): the client magic or current frame's payload to hand over as
     * it is, a dropped PRIORITY frame's payload to pass, the part of the next frame header seen (held back), the
     * peer's first frame yet to come, a header block open (CONTINUATION expected) */
    size_t in_pass, in_drop, in_hlen;
    uint8_t in_hdr[9];
    char in_first, in_block;
} Session;

int h2c_buf_put(buf_t *b, const uint8_t *data, size_t n);
void h2c_buf_free(buf_t *b);
stream_t *h2c_stream_new(Session *self, int32_t id);
void h2c_stream_free(Session *self, stream_t *s);
/* the stream `id` of the session, or NULL */
stream_t *h2c_stream_of(Session *self, int32_t id);
/* append an event to the list receive() fills (nothing outside receive); -1 on a Python error */
int h2c_emit(Session *self, int kind, int32_t sid, PyObject *obj, int flag, long long num);
/* register the receiving callbacks (_h2inbound.c) */
void h2c_inbound_callbacks(nghttp2_session_callbacks *cb);
/* hand `n` received bytes to nghttp2 (the RFC 7540 priority signals Envoy's nghttp2 ignores taken out first);
 * nghttp2_session_mem_recv's result: `n`, or the error the read stopped at (a flood, a callback's failure: their
 * flags are set) */
ssize_t h2c_receive(Session *self, const uint8_t *p, size_t n);

#endif
