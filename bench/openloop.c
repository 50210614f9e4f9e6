/* An open-loop HTTP/1.1 load generator in C: requests at a fixed rate, latency from each request's due time.
 *
 * Built and driven by bench/openloop.py (which documents the method); this is its precise core: one thread, epoll,
 * an absolute timerfd per due time (timer slack 1 ns), nonblocking sockets with TCP_NODELAY, no allocation on the
 * request path, so its own tail is the kernel's scheduling and nothing of a runtime (no GC, no millisecond timers).
 *
 * Targets are served in alternating blocks: block k goes to target k % n, `per_block` requests at `rate`, the
 * first due when the block starts; a block ends when its last request is answered (or `drain` seconds after its last
 * due time), then the next block starts at once. Every target so sees the same machine, interleaved finely, and never
 * two at a time. Around each block the CPU time of the target's processes (their threads' /proc schedstat) is read.
 *
 * argv: rate per_block blocks_per_target max_conns drain_s then per target: port expect request_file pids
 * (pids comma-separated, "-" for none). Output lines on stdout:
 *   r <target> <latency_ns> <status> <due_ns> <late_ns>
 *                                               per request, its due time from the run's start (status < 0:
 *                                               -1 connect, -2 reset/EOF, -3 bad response, -4 no connection
 *                                               free, -5 no answer within drain) and how late the client itself
 *                                               began sending it (its own wake-up after the due time: part of
 *                                               the latency that is the client's, the same for every target)
 *   s <target> <due_ns>                         a block starts: its first request's due time
 *   b <target> <cpu_ns>                         per block: CPU time of the target's processes during the block
 *   c <target> <connections_opened>             at the end
 */
#define _GNU_SOURCE
#include <arpa/inet.h>
#include <dirent.h>
#include <errno.h>
#include <fcntl.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/epoll.h>
#include <sys/prctl.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <sys/timerfd.h>
#include <time.h>
#include <unistd.h>

#define MAX_TARGETS 8
#define MAX_PIDS 64
#define RECV_CAP 65536
#define HEAD_CAP 16384
#define MAX_CONNS 4096

typedef struct {
    int port, expect;
    char *req;
    size_t req_len;
    int pids[MAX_PIDS], npids;
    long opened;
} Target;

enum { IDLE, SENDING, READING };

typedef struct Conn {
    int fd, slot, target, state, busy;
    size_t sent;
    int64_t due, late; /* late: when the client began sending it, from the due time */
    /* response parsing */
    char head[HEAD_CAP];
    size_t head_len;
    int status, chunked, close_after, in_body;
    int64_t remaining; /* body bytes left (content-length) or of the current chunk */
    int chunk_state;   /* 0 size line, 1 data, 2 CRLF after data, 3 trailers */
    char line[64];
    size_t line_len;
    struct Conn *next_idle;
} Conn;

static Target targets[MAX_TARGETS];
static int ntargets;
static Conn **idle_head; /* per target */
static int inflight, conns_open;
static int epfd, tfd;

static int64_t now_ns(void) {
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (int64_t)ts.tv_sec * 1000000000 + ts.tv_nsec;
}

static int64_t t0; /* the run's start: due times are printed from it */

static void record(int t, int64_t due, int64_t latency, int status, int64_t late) {
    printf("r %d %lld %d %lld %lld\n", t, (long long)latency, status, (long long)(due - t0), (long long)late);
}

static int64_t cpu_of(const Target *t) {
    int64_t total = 0;
    for (int i = 0; i < t->npids; i++) {
        char path[64];
        snprintf(path, sizeof path, "/proc/%d/task", t->pids[i]);
        DIR *d = opendir(path);
        if (!d) continue;
        struct dirent *e;
        while ((e = readdir(d))) {
            if (e->d_name[0] == '.') continue;
            char p[300], buf[128];
            snprintf(p, sizeof p, "/proc/%d/task/%s/schedstat", t->pids[i], e->d_name);
            int fd = open(p, O_RDONLY);
            if (fd < 0) continue;
            ssize_t n = read(fd, buf, sizeof buf - 1);
            close(fd);
            if (n > 0) {
                buf[n] = 0;
                total += strtoll(buf, NULL, 10);
            }
        }
        closedir(d);
    }
    return total;
}

static Conn *all[MAX_CONNS];

static void conn_close(Conn *c) {
    for (Conn **p = &idle_head[c->target]; *p; p = &(*p)->next_idle) {
        if (*p == c) {
            *p = c->next_idle;
            break;
        }
    }
    all[c->slot] = NULL;
    epoll_ctl(epfd, EPOLL_CTL_DEL, c->fd, NULL);
    close(c->fd);
    conns_open--;
    free(c);
}

static void fail(Conn *c, int code) {
    if (c->busy) {
        record(c->target, c->due, now_ns() - c->due, code, c->late);
        inflight--;
    }
    conn_close(c);
}

static void arm(Conn *c, uint32_t events) {
    struct epoll_event ev = {.events = events, .data.ptr = c};
    epoll_ctl(epfd, EPOLL_CTL_MOD, c->fd, &ev);
}

static void finish(Conn *c) {
    record(c->target, c->due, now_ns() - c->due, c->status, c->late);
    inflight--;
    c->busy = 0;
    if (c->close_after || c->sent < targets[c->target].req_len) {
        conn_close(c);
        return;
    }
    c->state = IDLE;
    arm(c, EPOLLIN | EPOLLRDHUP);
    c->next_idle = idle_head[c->target];
    idle_head[c->target] = c;
}

static int header_has(const char *head, const char *name, const char *value) {
    /* a header `name` (lower-case, with ':') whose value contains `value` (case-insensitive) */
    const char *p = head;
    size_t nl = strlen(name);
    while ((p = strstr(p, "\r\n"))) {
        p += 2;
        if (strncasecmp(p, name, nl) == 0) {
            const char *end = strstr(p, "\r\n");
            char v[256];
            size_t len = end ? (size_t)(end - p - nl) : 0;
            if (len >= sizeof v) len = sizeof v - 1;
            memcpy(v, p + nl, len);
            v[len] = 0;
            return value == NULL ? 1 : strcasestr(v, value) != NULL;
        }
    }
    return 0;
}

static int64_t header_int(const char *head, const char *name) {
    const char *p = head;
    size_t nl = strlen(name);
    while ((p = strstr(p, "\r\n"))) {
        p += 2;
        if (strncasecmp(p, name, nl) == 0) return strtoll(p + nl, NULL, 10);
    }
    return -1;
}

/* feed body bytes; returns 1 when the response is complete, -1 on a framing error */
static int body(Conn *c, const char *p, size_t n) {
    if (!c->chunked) {
        c->remaining -= (int64_t)n;
        return c->remaining <= 0 ? 1 : 0;
    }
    for (size_t i = 0; i < n;) {
        if (c->chunk_state == 1) {
            size_t take = (size_t)c->remaining < n - i ? (size_t)c->remaining : n - i;
            c->remaining -= (int64_t)take;
            i += take;
            if (c->remaining == 0) c->chunk_state = 2, c->line_len = 0;
            continue;
        }
        char ch = p[i++];
        if (c->line_len >= sizeof c->line - 1) return -1;
        c->line[c->line_len++] = ch;
        if (ch != '\n') continue;
        c->line[c->line_len] = 0;
        if (c->chunk_state == 0) {
            c->remaining = strtoll(c->line, NULL, 16);
            c->line_len = 0;
            c->chunk_state = c->remaining == 0 ? 3 : 1;
        } else if (c->chunk_state == 2) {
            c->line_len = 0;
            c->chunk_state = 0;
        } else { /* trailers: an empty line ends them */
            int empty = c->line_len <= 2;
            c->line_len = 0;
            if (empty) return 1;
        }
    }
    return 0;
}

static void on_read(Conn *c) {
    char buf[RECV_CAP];
    for (;;) {
        ssize_t n = recv(c->fd, buf, sizeof buf, 0);
        if (n < 0) {
            if (errno == EAGAIN) return;
            fail(c, -2);
            return;
        }
        if (n == 0) {
            fail(c, -2);
            return;
        }
        if (!c->busy) { /* bytes on an idle connection */
            fail(c, -3);
            return;
        }
        const char *p = buf;
        size_t left = (size_t)n;
        if (!c->in_body) {
            size_t take = left < HEAD_CAP - 1 - c->head_len ? left : HEAD_CAP - 1 - c->head_len;
            memcpy(c->head + c->head_len, p, take);
            size_t old = c->head_len;
            c->head_len += take;
            c->head[c->head_len] = 0;
            char *end = strstr(c->head, "\r\n\r\n");
            if (!end) {
                if (c->head_len >= HEAD_CAP - 1) fail(c, -3);
                continue;
            }
            size_t head_end = (size_t)(end - c->head) + 4;
            *(end + 2) = 0; /* keep the last header's CRLF for the lookups */
            if (c->head_len < 12 || strncmp(c->head, "HTTP/1.", 7) != 0) {
                fail(c, -3);
                return;
            }
            c->status = atoi(c->head + 9);
            c->close_after = header_has(c->head, "connection:", "close");
            c->chunked = header_has(c->head, "transfer-encoding:", "chunked");
            c->remaining = c->chunked ? 0 : header_int(c->head, "content-length:");
            if (!c->chunked && c->remaining < 0) c->remaining = 0; /* (no length: none of our upstreams) */
            c->in_body = 1;
            p += head_end - old;
            left -= head_end - old;
            if (!c->chunked && c->remaining == 0) {
                finish(c);
                return;
            }
        }
        int r = body(c, p, left);
        if (r < 0) {
            fail(c, -3);
            return;
        }
        if (r == 1) {
            finish(c);
            return;
        }
    }
}

static void on_write(Conn *c) {
    const Target *t = &targets[c->target];
    while (c->sent < t->req_len) {
        ssize_t n = send(c->fd, t->req + c->sent, t->req_len - c->sent, MSG_NOSIGNAL);
        if (n < 0) {
            if (errno == EAGAIN) {
                arm(c, EPOLLIN | EPOLLOUT | EPOLLRDHUP);
                return;
            }
            fail(c, -2);
            return;
        }
        c->sent += (size_t)n;
    }
    c->state = READING;
    arm(c, EPOLLIN | EPOLLRDHUP);
}

static void start_request(Conn *c, int64_t due, int64_t late) {
    c->busy = 1;
    c->due = due;
    c->late = late;
    c->sent = 0;
    c->head_len = 0;
    c->in_body = 0;
    c->chunk_state = 0;
    c->line_len = 0;
    c->state = SENDING;
    inflight++;
    on_write(c);
}

static void dispatch(int t, int64_t due, int max_conns) {
    int64_t late = now_ns() - due;
    Conn *c = idle_head[t];
    if (c) {
        idle_head[t] = c->next_idle;
        start_request(c, due, late);
        return;
    }
    int slot = 0;
    while (slot < MAX_CONNS && all[slot]) slot++;
    if (conns_open >= max_conns || slot == MAX_CONNS) {
        record(t, due, 0, -4, late);
        return;
    }
    int fd = socket(AF_INET, SOCK_STREAM | SOCK_NONBLOCK | SOCK_CLOEXEC, 0);
    int one = 1;
    setsockopt(fd, IPPROTO_TCP, TCP_NODELAY, &one, sizeof one);
    struct sockaddr_in sa = {.sin_family = AF_INET, .sin_port = htons((uint16_t)targets[t].port)};
    sa.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
    if (connect(fd, (struct sockaddr *)&sa, sizeof sa) < 0 && errno != EINPROGRESS) {
        close(fd);
        record(t, due, now_ns() - due, -1, late);
        return;
    }
    c = calloc(1, sizeof *c);
    c->fd = fd;
    c->slot = slot;
    all[slot] = c;
    c->target = t;
    conns_open++;
    targets[t].opened++;
    struct epoll_event ev = {.events = EPOLLOUT | EPOLLIN | EPOLLRDHUP, .data.ptr = c};
    epoll_ctl(epfd, EPOLL_CTL_ADD, fd, &ev);
    c->busy = 1;
    c->due = due;
    c->late = late;
    c->state = SENDING;
    c->sent = 0;
    inflight++; /* the first EPOLLOUT (connected) sends */
}

static void set_timer(int64_t at) {
    struct itimerspec its = {0};
    if (at <= 0) at = 1;
    its.it_value.tv_sec = at / 1000000000;
    its.it_value.tv_nsec = at % 1000000000;
    timerfd_settime(tfd, TFD_TIMER_ABSTIME, &its, NULL);
}

static void poll_once(int timeout_ms) {
    struct epoll_event evs[256];
    int n = epoll_wait(epfd, evs, 256, timeout_ms);
    for (int i = 0; i < n; i++) {
        if (evs[i].data.ptr == NULL) {
            uint64_t x;
            (void)!read(tfd, &x, sizeof x);
            continue;
        }
        Conn *c = evs[i].data.ptr;
        uint32_t e = evs[i].events;
        if (e & EPOLLIN) {
            on_read(c);
            continue; /* (c may be gone) */
        }
        if (e & (EPOLLERR | EPOLLHUP | EPOLLRDHUP)) {
            int err = 0;
            socklen_t len = sizeof err;
            getsockopt(c->fd, SOL_SOCKET, SO_ERROR, &err, &len);
            if (c->busy && c->state == SENDING && c->sent == 0 && err) {
                fail(c, -1);
            } else {
                fail(c, -2);
            }
            continue;
        }
        if ((e & EPOLLOUT) && c->state == SENDING) on_write(c);
    }
}

int main(int argc, char **argv) {
    if (argc < 6 + 4 || (argc - 6) % 4 != 0) {
        fprintf(stderr, "usage: %s rate per_block blocks max_conns drain_s {port expect request_file pids}...\n",
                argv[0]);
        return 2;
    }
    double rate = atof(argv[1]);
    long per_block = atol(argv[2]), blocks = atol(argv[3]);
    int max_conns = atoi(argv[4]);
    double drain = atof(argv[5]);
    ntargets = (argc - 6) / 4;
    if (ntargets > MAX_TARGETS) return 2;
    for (int t = 0; t < ntargets; t++) {
        char **a = argv + 6 + 4 * t;
        Target *tg = &targets[t];
        tg->port = atoi(a[0]);
        tg->expect = atoi(a[1]);
        FILE *f = fopen(a[2], "rb");
        if (!f) {
            perror(a[2]);
            return 2;
        }
        struct stat st;
        fstat(fileno(f), &st);
        tg->req = malloc((size_t)st.st_size);
        tg->req_len = fread(tg->req, 1, (size_t)st.st_size, f);
        fclose(f);
        if (strcmp(a[3], "-") != 0) {
            for (char *s = strtok(a[3], ","); s && tg->npids < MAX_PIDS; s = strtok(NULL, ","))
                tg->pids[tg->npids++] = atoi(s);
        }
    }
    prctl(PR_SET_TIMERSLACK, 1UL, 0, 0, 0);
    idle_head = calloc((size_t)ntargets, sizeof *idle_head);
    epfd = epoll_create1(EPOLL_CLOEXEC);
    tfd = timerfd_create(CLOCK_MONOTONIC, TFD_NONBLOCK | TFD_CLOEXEC);
    struct epoll_event tev = {.events = EPOLLIN, .data.ptr = NULL};
    epoll_ctl(epfd, EPOLL_CTL_ADD, tfd, &tev);
    double period = 1e9 / rate;
    t0 = now_ns();
    for (long b = 0; b < blocks * ntargets; b++) {
        int t = (int)(b % ntargets);
        int64_t cpu0 = cpu_of(&targets[t]);
        int64_t start = now_ns() + 100000; /* 0.1 ms: the first due time is in the future */
        printf("s %d %lld\n", t, (long long)(start - t0));
        for (long i = 0; i < per_block; i++) {
            int64_t due = start + (int64_t)(i * period);
            set_timer(due);
            while (now_ns() < due) poll_once(-1);
            dispatch(t, due, max_conns);
        }
        int64_t deadline = now_ns() + (int64_t)(drain * 1e9);
        while (inflight > 0 && now_ns() < deadline) {
            set_timer(deadline);
            poll_once(-1);
        }
        for (int k = 0; k < MAX_CONNS && inflight > 0; k++) { /* no answer within drain: failed, connection gone */
            if (all[k] && all[k]->busy) fail(all[k], -5);
        }
        printf("b %d %lld\n", t, (long long)(cpu_of(&targets[t]) - cpu0));
    }
    for (int t = 0; t < ntargets; t++) printf("c %d %ld\n", t, targets[t].opened);
    return 0;
}
