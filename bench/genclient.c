/*
 * genclient: one load-generator worker for bench/loadtest.py.
 *
 * Why C: at 1,000 clients a fast server delivers 10-16 M lines/s on loopback, and the
 * generator shares two cores with it. Python cannot even count that many lines, so each
 * worker is a single-threaded epoll loop that reads in big chunks and counts newlines
 * eight bytes at a time; it parses lines only where it must (the handshake, and the echoes
 * of its own senders, which carry the send time and sequence number).
 *
 * The worker owns --clients connections. It speaks a line protocol with the orchestrator
 * on stdin/stdout, so that all workers move through the same phases together:
 *
 *   worker -> "r REGISTERED FAILED"    progress while connecting (every --progress-ms)
 *   worker -> "ready {json}"           every client is registered or has failed
 *   python -> "abort"                  (registration timed out) fail the unregistered rest
 *   python -> "sync"                   the --sync-sender worker sends the sync chat line
 *   worker -> "synced"                 every registered client has read the sync line
 *   python -> "go"                     senders start; newline counting began at "sync"
 *   worker -> "p SENT RECEIVED"        progress while running
 *   python -> "stop"                   senders stop
 *   worker -> "sent SENT RECEIVED"     lines sent, deliveries counted so far
 *   python -> "expect TOTAL SECONDS"   drain until every client counted TOTAL, or timeout
 *   worker -> "{json}"                 the results
 *   python -> "quit" (or EOF)          close every connection and exit
 *
 * Counting starts when a client reads the sync line, not at registration: joins of clients
 * registered later are broadcast to it before that line, so after it the server sends
 * nothing but chat lines and every newline is a delivery.
 *
 * Build: gcc -O2 -Wall -o genclient genclient.c
 */
#define _GNU_SOURCE
#include <arpa/inet.h>
#include <errno.h>
#include <getopt.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <signal.h>
#include <stdarg.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/epoll.h>
#include <sys/resource.h>
#include <sys/socket.h>
#include <time.h>
#include <unistd.h>

#ifndef IP_BIND_ADDRESS_NO_PORT
#define IP_BIND_ADDRESS_NO_PORT 24
#endif

#define READ_CHUNK (256 * 1024) /* big reads: one syscall moves thousands of lines */
#define MAX_EVENTS 1024
#define MAX_LINE 8192            /* the server caps lines at 4096 bytes plus a name */
#define MAX_ERRORS 8             /* distinct error messages kept for the report */
#define RATE_SENDQ_CAP (1 << 20) /* rate mode: skip a due line rather than queue past 1 MB */
#define DRAIN_GRACE_NS 200000000ull /* keep reading this long after counts match, to see dups */
#define STDIN_TAG UINT32_MAX

/* Latency histogram: log-linear, 64 sub-buckets per power of two (bucket width <= 1.6%).
 * Must stay identical to bench/histogram.py, which merges the buckets of all workers. */
#define SUB_BITS 6
#define SUB_COUNT (1u << SUB_BITS)
#define HIST_BUCKETS ((64 - SUB_BITS + 1) * SUB_COUNT)

enum state { ST_IDLE, ST_CONNECTING, ST_PROMPT, ST_JOIN, ST_SYNC, ST_COUNT, ST_FAILED };
enum phase { P_CONNECT, P_READY, P_SYNC, P_SYNCED, P_RUN, P_STOPPED, P_DRAIN, P_DONE };

struct conn {
    int fd;
    enum state st;
    int sender;          /* index into g.senders, or -1 */
    int want_out;        /* EPOLLOUT currently registered */
    uint64_t count;      /* newlines read since the sync line */
    char name[40];
    size_t name_len;
    char *carry;         /* partial line between reads (line mode only) */
    size_t carry_len;
    char *out;           /* bytes the kernel has not taken yet */
    size_t out_len, out_off, out_cap;
};

struct sender {
    int conn;
    unsigned gid;        /* global sender id, written into each line */
    uint64_t sent;       /* sequence number of the last line sent */
    uint64_t echoed;     /* sequence number of the last own echo read */
    uint64_t next_ns;    /* rate mode: when the next line is due */
};

static struct {
    /* options */
    const char *host;
    int port;
    int nclients;
    const char *prefix;
    int nsenders;
    unsigned sender_base;
    int window;          /* > 0: window mode */
    double rate;         /* > 0: rate mode, lines/s per sender */
    int pad;
    int inflight;
    int progress_ms;
    int sync_sender;
    const char *sync_name;
    const char *sync_token;
    struct in_addr sources[256];
    int nsources;

    /* runtime */
    int ep;
    struct sockaddr_in dst;
    struct conn *conns;
    struct sender *senders;
    char *rbuf;
    char padding[MAX_LINE];
    char sync_line[128];
    size_t sync_len;
    enum phase phase;
    int next_connect;    /* next client index to connect */
    int pending;         /* clients connecting or in the handshake */
    int registered, failed, disconnected;
    int in_sync;         /* registered clients that have not read the sync line yet */
    uint64_t recv_total, recv_at_stop, expect;
    uint64_t echo_errors, deferred;
    uint64_t t_start, t_connected, t_registered, t_go, t_stop, t_drain, drain_deadline;
    uint64_t drain_matched, next_progress;
    int connected_all;
    struct rusage ru_go, ru_stop;
    uint64_t hist[HIST_BUCKETS];
    uint64_t lat_count, lat_max;
    char errors[MAX_ERRORS][160];
    int nerrors;
    char stdin_buf[4096];
    size_t stdin_len;
    int quit;
} g;

static uint64_t now_ns(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts); /* system-wide, so comparable across processes */
    return (uint64_t)ts.tv_sec * 1000000000ull + (uint64_t)ts.tv_nsec;
}

static void die(const char *msg)
{
    fprintf(stderr, "genclient: %s: %s\n", msg, strerror(errno));
    exit(2);
}

/* Keep the first few distinct error messages; counts live elsewhere. */
static void note_error(const char *fmt, ...)
{
    char msg[160];
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(msg, sizeof msg, fmt, ap);
    va_end(ap);
    for (int i = 0; i < g.nerrors; i++)
        if (strcmp(g.errors[i], msg) == 0)
            return;
    if (g.nerrors < MAX_ERRORS)
        snprintf(g.errors[g.nerrors++], sizeof g.errors[0], "%s", msg);
}

/* ---- latency histogram ---- */

static unsigned hist_index(uint64_t v)
{
    if (v < SUB_COUNT)
        return (unsigned)v;
    unsigned e = 63 - (unsigned)__builtin_clzll(v); /* e >= SUB_BITS */
    return (e - SUB_BITS + 1) * SUB_COUNT + (unsigned)((v >> (e - SUB_BITS)) & (SUB_COUNT - 1));
}

/* Midpoint of a bucket, in ns: what the report uses for every value in it. */
static uint64_t hist_mid(unsigned idx)
{
    if (idx < SUB_COUNT)
        return idx;
    unsigned e = idx / SUB_COUNT + SUB_BITS - 1;
    uint64_t lo = ((uint64_t)(SUB_COUNT + idx % SUB_COUNT)) << (e - SUB_BITS);
    return lo + ((1ull << (e - SUB_BITS)) >> 1);
}

static void record_latency(uint64_t ns)
{
    g.hist[hist_index(ns)]++;
    g.lat_count++;
    if (ns > g.lat_max)
        g.lat_max = ns;
}

/* ---- newline counting ---- */

/*
 * Count '\n' bytes eight at a time: after XOR with 0x0a.., a byte is zero exactly where a
 * newline was, and the classic exact zero-byte test sets its top bit. The top bits are
 * summed per byte lane and folded every 255 words so no lane overflows. No popcount
 * instruction is needed, so plain -O2 builds stay fast on any x86-64 or arm64.
 */
static uint64_t count_newlines(const char *p, size_t n)
{
    const uint64_t ones = 0x0101010101010101ull, nl = 0x0a0a0a0a0a0a0a0aull;
    const uint64_t low7 = 0x7f7f7f7f7f7f7f7full;
    uint64_t total = 0;
    while (n >= 8) {
        uint64_t acc = 0;
        size_t words = n / 8 > 255 ? 255 : n / 8;
        for (size_t i = 0; i < words; i++, p += 8) {
            uint64_t w;
            memcpy(&w, p, 8);
            uint64_t x = w ^ nl;
            uint64_t t = ((x & low7) + low7) | x; /* top bit clear only for zero bytes */
            acc += (~t >> 7) & ones;
        }
        total += (acc * ones) >> 56; /* horizontal sum of the byte lanes */
        n -= words * 8;
    }
    while (n--)
        total += *p++ == '\n';
    return total;
}

/* ---- sending ---- */

static void set_events(struct conn *c, int want_out)
{
    if (c->want_out == want_out)
        return;
    struct epoll_event ev = {.events = EPOLLIN | (want_out ? EPOLLOUT : 0),
                             .data.u32 = (uint32_t)(c - g.conns)};
    if (epoll_ctl(g.ep, EPOLL_CTL_MOD, c->fd, &ev) < 0)
        die("epoll_ctl mod");
    c->want_out = want_out;
}

static void conn_fail(struct conn *c, const char *why);

/* Write what the kernel takes; queue the rest and ask for EPOLLOUT. */
static void conn_send(struct conn *c, const char *data, size_t len)
{
    if (c->out_len == c->out_off) {
        ssize_t n = send(c->fd, data, len, MSG_NOSIGNAL);
        if (n < 0 && errno != EAGAIN && errno != EWOULDBLOCK) {
            conn_fail(c, strerror(errno));
            return;
        }
        if (n > 0) {
            data += n;
            len -= (size_t)n;
        }
        if (len == 0)
            return;
        c->out_len = c->out_off = 0;
    }
    if (c->out_off > 0 && c->out_len + len > c->out_cap) { /* reuse the sent prefix */
        memmove(c->out, c->out + c->out_off, c->out_len - c->out_off);
        c->out_len -= c->out_off;
        c->out_off = 0;
    }
    if (c->out_len + len > c->out_cap) {
        size_t cap = c->out_cap ? c->out_cap : 4096;
        while (cap < c->out_len + len)
            cap *= 2;
        c->out = realloc(c->out, cap);
        if (!c->out)
            die("realloc");
        c->out_cap = cap;
    }
    memcpy(c->out + c->out_len, data, len);
    c->out_len += len;
    set_events(c, 1);
}

static void conn_flush(struct conn *c)
{
    while (c->out_off < c->out_len) {
        ssize_t n = send(c->fd, c->out + c->out_off, c->out_len - c->out_off, MSG_NOSIGNAL);
        if (n < 0) {
            if (errno != EAGAIN && errno != EWOULDBLOCK)
                conn_fail(c, strerror(errno));
            return;
        }
        c->out_off += (size_t)n;
    }
    c->out_len = c->out_off = 0;
    set_events(c, 0);
}

/* Append one chat line "s<gid>:<seq>:<send_ns>[ padding]\n" to buf; returns its length. */
static size_t format_line(char *buf, struct sender *s, uint64_t t)
{
    s->sent++;
    int n = snprintf(buf, 64, "s%u:%llu:%llu", s->gid, (unsigned long long)s->sent,
                     (unsigned long long)t);
    size_t len = (size_t)n;
    if (g.pad > 0) {
        buf[len++] = ' ';
        memcpy(buf + len, g.padding, (size_t)g.pad);
        len += (size_t)g.pad;
    }
    buf[len++] = '\n';
    return len;
}

/* Window mode: top the sender up to --window unechoed lines, in one write. */
static void sender_fill(struct sender *s)
{
    static char batch[64 * (MAX_LINE + 72)];
    struct conn *c = &g.conns[s->conn];
    if (g.phase != P_RUN || g.window <= 0 || c->st != ST_COUNT)
        return;
    uint64_t t = now_ns();
    while (s->sent - s->echoed < (uint64_t)g.window && c->st == ST_COUNT) {
        size_t len = 0;
        while (s->sent - s->echoed < (uint64_t)g.window && len + MAX_LINE + 72 < sizeof batch)
            len += format_line(batch + len, s, t);
        conn_send(c, batch, len);
    }
}

/* Rate mode: send every line that is due; skip (and count) lines the socket can't take. */
static void rate_tick(uint64_t t)
{
    static char batch[64 * (MAX_LINE + 72)];
    uint64_t interval = (uint64_t)(1e9 / g.rate);
    for (int i = 0; i < g.nsenders; i++) {
        struct sender *s = &g.senders[i];
        struct conn *c = &g.conns[s->conn];
        if (c->st != ST_COUNT)
            continue;
        size_t len = 0;
        while (s->next_ns <= t && len + MAX_LINE + 72 < sizeof batch) {
            if (c->out_len - c->out_off > RATE_SENDQ_CAP)
                g.deferred++;
            else
                len += format_line(batch + len, s, t);
            s->next_ns += interval;
        }
        if (s->next_ns + 1000000000ull < t) { /* over a second behind: resynchronise */
            g.deferred += (t - s->next_ns) / interval;
            s->next_ns = t + interval;
        }
        if (len)
            conn_send(c, batch, len);
    }
}

/* ---- receiving ---- */

static void conn_fail(struct conn *c, const char *why)
{
    if (c->st == ST_FAILED)
        return;
    if (c->st == ST_SYNC)
        g.in_sync--;
    if (c->st == ST_COUNT || c->st == ST_SYNC) {
        g.disconnected++;
        note_error("%s disconnected after registration: %s", c->name, why);
    } else {
        g.failed++;
        g.pending--;
        note_error("client failed before registration: %s", why);
    }
    c->st = ST_FAILED;
    epoll_ctl(g.ep, EPOLL_CTL_DEL, c->fd, NULL);
    close(c->fd);
    c->fd = -1;
}

static int line_is(const char *line, size_t len, const char *want, size_t want_len)
{
    while (len > 0 && line[len - 1] == ' ') /* tolerate a trailing space after a prompt */
        len--;
    return len == want_len && memcmp(line, want, len) == 0;
}

/* An echo of one of this client's own lines: check its order, record its latency. */
static void own_echo(struct sender *s, const char *p, size_t len, uint64_t t)
{
    char tmp[72];
    size_t n = len < sizeof tmp - 1 ? len : sizeof tmp - 1;
    memcpy(tmp, p, n);
    tmp[n] = 0;
    unsigned gid;
    unsigned long long seq, sent_ns;
    if (sscanf(tmp, "s%u:%llu:%llu", &gid, &seq, &sent_ns) != 3 || gid != s->gid) {
        g.echo_errors++;
        note_error("unparsable own echo: %.40s", tmp);
        return;
    }
    if (seq != s->echoed + 1) {
        g.echo_errors++;
        note_error("sender %u: echo %llu after %llu (loss, dup or reorder)", gid, seq,
                   (unsigned long long)s->echoed);
    }
    if (seq > s->echoed)
        s->echoed = seq;
    record_latency(t - sent_ns);
}

static void on_registered(struct conn *c)
{
    c->st = ST_SYNC;
    g.t_registered = now_ns(); /* the last registration so far; stalls don't count */
    g.registered++;
    g.in_sync++;
    g.pending--;
}

/* One complete line (without its newline) in line mode. */
static void on_line(struct conn *c, const char *line, size_t len, uint64_t t)
{
    switch (c->st) {
    case ST_PROMPT:
        if (line_is(line, len, "? name:", 7)) {
            char msg[48];
            memcpy(msg, c->name, c->name_len);
            msg[c->name_len] = '\n';
            c->st = ST_JOIN;
            conn_send(c, msg, c->name_len + 1);
        }
        break;
    case ST_JOIN: {
        char want[64];
        int n = snprintf(want, sizeof want, "* %s joined", c->name);
        if (line_is(line, len, want, (size_t)n))
            on_registered(c);
        else if (len >= 2 && line[0] == '?' && line[1] == ' ')
            conn_fail(c, "prompted again after the name (taken, invalid or admin?)");
        else if (len >= 2 && line[0] == '!' && line[1] == ' ')
            note_error("handshake: %.*s", (int)(len < 100 ? len : 100), line);
        break; /* anything else is history replay */
    }
    case ST_SYNC:
        if (line_is(line, len, g.sync_line, g.sync_len)) {
            c->st = ST_COUNT;
            g.in_sync--;
        }
        break;
    case ST_COUNT:
        c->count++;
        g.recv_total++;
        if (c->sender >= 0 && len > c->name_len + 2 && memcmp(line, c->name, c->name_len) == 0
            && line[c->name_len] == ':' && line[c->name_len + 1] == ' ') {
            struct sender *s = &g.senders[c->sender];
            own_echo(s, line + c->name_len + 2, len - c->name_len - 2, t);
        }
        break;
    default:
        break;
    }
}

/* Split a chunk into lines, joining the partial line carried over from the last read. */
static void feed_lines(struct conn *c, const char *p, size_t n, uint64_t t)
{
    const char *end = p + n;
    while (p < end && c->st != ST_FAILED) {
        const char *nl = memchr(p, '\n', (size_t)(end - p));
        if (!nl) {
            size_t rest = (size_t)(end - p);
            if (c->carry_len + rest > MAX_LINE) {
                conn_fail(c, "line longer than MAX_LINE");
                return;
            }
            if (!c->carry && !(c->carry = malloc(MAX_LINE)))
                die("malloc");
            memcpy(c->carry + c->carry_len, p, rest);
            c->carry_len += rest;
            return;
        }
        if (c->carry_len) {
            size_t part = (size_t)(nl - p);
            if (c->carry_len + part > MAX_LINE) {
                conn_fail(c, "line longer than MAX_LINE");
                return;
            }
            memcpy(c->carry + c->carry_len, p, part);
            on_line(c, c->carry, c->carry_len + part, t);
            c->carry_len = 0;
        } else {
            on_line(c, p, (size_t)(nl - p), t);
        }
        p = nl + 1;
        /* A plain receiver that just synced needs no more parsing: count the rest. */
        if (c->st == ST_COUNT && c->sender < 0) {
            uint64_t k = count_newlines(p, (size_t)(end - p));
            c->count += k;
            g.recv_total += k;
            return;
        }
    }
}

static void on_readable(struct conn *c, uint64_t t)
{
    ssize_t n = recv(c->fd, g.rbuf, READ_CHUNK, 0);
    if (n <= 0) {
        if (n < 0 && (errno == EAGAIN || errno == EWOULDBLOCK || errno == EINTR))
            return;
        conn_fail(c, n == 0 ? "server closed the connection" : strerror(errno));
        return;
    }
    if (c->st == ST_COUNT && c->sender < 0) {
        uint64_t k = count_newlines(g.rbuf, (size_t)n); /* the hot path */
        c->count += k;
        g.recv_total += k;
        return;
    }
    feed_lines(c, g.rbuf, (size_t)n, t);
    if (c->sender >= 0 && c->st == ST_COUNT)
        sender_fill(&g.senders[c->sender]);
}

/* ---- connecting ---- */

static void start_connect(int i)
{
    struct conn *c = &g.conns[i];
    c->fd = socket(AF_INET, SOCK_STREAM | SOCK_NONBLOCK | SOCK_CLOEXEC, 0);
    if (c->fd < 0) {
        c->st = ST_CONNECTING;
        g.pending++;
        conn_fail(c, strerror(errno)); /* typically EMFILE: the fd limit */
        return;
    }
    int one = 1;
    setsockopt(c->fd, IPPROTO_TCP, TCP_NODELAY, &one, sizeof one); /* lines go out now */
    if (g.nsources > 0) {
        /* Several source addresses multiply the ~28k ephemeral ports per address pair;
         * NO_PORT lets connect() pick the port per 4-tuple instead of bind() per address. */
        struct sockaddr_in src = {.sin_family = AF_INET, .sin_addr = g.sources[i % g.nsources]};
        setsockopt(c->fd, IPPROTO_IP, IP_BIND_ADDRESS_NO_PORT, &one, sizeof one);
        if (bind(c->fd, (struct sockaddr *)&src, sizeof src) < 0) {
            c->st = ST_CONNECTING;
            g.pending++;
            conn_fail(c, strerror(errno));
            return;
        }
    }
    c->st = ST_CONNECTING;
    g.pending++;
    if (connect(c->fd, (struct sockaddr *)&g.dst, sizeof g.dst) < 0 && errno != EINPROGRESS) {
        conn_fail(c, strerror(errno));
        return;
    }
    struct epoll_event ev = {.events = EPOLLIN | EPOLLOUT, .data.u32 = (uint32_t)i};
    if (epoll_ctl(g.ep, EPOLL_CTL_ADD, c->fd, &ev) < 0)
        die("epoll_ctl add");
    c->want_out = 1;
}

/* Keep at most --inflight clients connecting or in the handshake, so a listen backlog
 * overflow (SYN drops, 1 s retransmits) doesn't masquerade as slow registration. */
static void connect_more(void)
{
    while (g.next_connect < g.nclients && g.pending < g.inflight)
        start_connect(g.next_connect++);
    if (!g.connected_all && g.next_connect == g.nclients) {
        int connecting = 0;
        for (int i = 0; i < g.nclients; i++)
            connecting += g.conns[i].st == ST_CONNECTING;
        if (!connecting) {
            g.connected_all = 1;
            g.t_connected = now_ns();
        }
    }
}

static void on_connected(struct conn *c)
{
    int err = 0;
    socklen_t len = sizeof err;
    getsockopt(c->fd, SOL_SOCKET, SO_ERROR, &err, &len);
    if (err) {
        errno = err;
        conn_fail(c, strerror(err));
        return;
    }
    c->st = ST_PROMPT;
    set_events(c, 0);
}

static void on_conn_event(uint32_t idx, uint32_t events, uint64_t t)
{
    struct conn *c = &g.conns[idx];
    if (c->st == ST_FAILED)
        return;
    if (c->st == ST_CONNECTING) {
        if (events & (EPOLLOUT | EPOLLERR | EPOLLHUP))
            on_connected(c);
        return;
    }
    if (events & EPOLLOUT)
        conn_flush(c);
    if (c->st != ST_FAILED && (events & (EPOLLIN | EPOLLHUP | EPOLLERR)))
        on_readable(c, t);
}

/* ---- reporting ---- */

static uint64_t total_sent(void)
{
    uint64_t sent = 0;
    for (int i = 0; i < g.nsenders; i++)
        sent += g.senders[i].sent;
    return sent;
}

static double secs(uint64_t from, uint64_t to)
{
    return to > from ? (double)(to - from) / 1e9 : 0.0;
}

static double cpu_secs(const struct rusage *a, const struct rusage *b)
{
    double ua = (double)a->ru_utime.tv_sec + (double)a->ru_utime.tv_usec / 1e6;
    double sa = (double)a->ru_stime.tv_sec + (double)a->ru_stime.tv_usec / 1e6;
    double ub = (double)b->ru_utime.tv_sec + (double)b->ru_utime.tv_usec / 1e6;
    double sb = (double)b->ru_stime.tv_sec + (double)b->ru_stime.tv_usec / 1e6;
    return (ub + sb) - (ua + sa);
}

static void print_json_string(const char *s)
{
    putchar('"');
    for (; *s; s++) {
        if (*s == '"' || *s == '\\')
            printf("\\%c", *s);
        else if ((unsigned char)*s < 0x20)
            printf("\\u%04x", *s);
        else
            putchar(*s);
    }
    putchar('"');
}

static void print_errors(void)
{
    printf("\"errors\":[");
    for (int i = 0; i < g.nerrors; i++) {
        if (i)
            putchar(',');
        print_json_string(g.errors[i]);
    }
    putchar(']');
}

static void print_ready(void)
{
    printf("ready {\"clients\":%d,\"registered\":%d,\"failed\":%d,\"connect_s\":%.6f,"
           "\"register_s\":%.6f,",
           g.nclients, g.registered, g.failed, secs(g.t_start, g.t_connected),
           secs(g.t_start, g.t_registered));
    print_errors();
    printf("}\n");
    fflush(stdout);
}

static void print_results(void)
{
    uint64_t missing = 0, extra = 0, cmin = UINT64_MAX, cmax = 0;
    int counted = 0;
    for (int i = 0; i < g.nclients; i++) {
        struct conn *c = &g.conns[i];
        if (c->st != ST_COUNT && !(c->st == ST_FAILED && c->count))
            continue;
        counted++;
        if (c->count < g.expect)
            missing += g.expect - c->count;
        else
            extra += c->count - g.expect;
        cmin = c->count < cmin ? c->count : cmin;
        cmax = c->count > cmax ? c->count : cmax;
    }
    /* Clients that registered but dropped before counting anything still owed lines. */
    missing += (uint64_t)(g.registered - counted) * g.expect;
    uint64_t sent = total_sent();
    printf("{\"clients\":%d,\"registered\":%d,\"failed\":%d,\"disconnected\":%d,"
           "\"connect_s\":%.6f,\"register_s\":%.6f,\"sent\":%llu,\"expect\":%llu,"
           "\"received\":%llu,\"received_at_stop\":%llu,\"missing\":%llu,\"extra\":%llu,"
           "\"count_min\":%llu,\"count_max\":%llu,\"echo_errors\":%llu,\"deferred\":%llu,"
           "\"run_s\":%.6f,\"drain_s\":%.6f,\"cpu_s\":%.6f,\"lat_count\":%llu,"
           "\"lat_max_ns\":%llu,",
           g.nclients, g.registered, g.failed, g.disconnected, secs(g.t_start, g.t_connected),
           secs(g.t_start, g.t_registered), (unsigned long long)sent,
           (unsigned long long)g.expect, (unsigned long long)g.recv_total,
           (unsigned long long)g.recv_at_stop, (unsigned long long)missing,
           (unsigned long long)extra, (unsigned long long)(counted ? cmin : 0),
           (unsigned long long)cmax, (unsigned long long)g.echo_errors,
           (unsigned long long)g.deferred, secs(g.t_go, g.t_stop), secs(g.t_stop, g.t_drain),
           cpu_secs(&g.ru_go, &g.ru_stop), (unsigned long long)g.lat_count,
           (unsigned long long)g.lat_max);
    printf("\"sent_per_sender\":[");
    for (int i = 0; i < g.nsenders; i++)
        printf("%s%llu", i ? "," : "", (unsigned long long)g.senders[i].sent);
    printf("],\"lat_hist\":[");
    int first = 1;
    for (unsigned i = 0; i < HIST_BUCKETS; i++) {
        if (!g.hist[i])
            continue;
        printf("%s[%llu,%llu]", first ? "" : ",", (unsigned long long)hist_mid(i),
               (unsigned long long)g.hist[i]);
        first = 0;
    }
    printf("],");
    print_errors();
    printf("}\n");
    fflush(stdout);
}

/* ---- orchestration ---- */

static void send_sync_line(void)
{
    struct conn *c = &g.conns[0];
    if (c->st != ST_SYNC && c->st != ST_COUNT) {
        fprintf(stderr, "genclient: sync client is not registered\n");
        exit(2);
    }
    char msg[128];
    int n = snprintf(msg, sizeof msg, "%s\n", g.sync_token);
    conn_send(c, msg, (size_t)n);
}

/* Registration timed out: count every client not registered yet as failed, so "ready"
 * still reports how far it got (a server out of descriptors leaves connects hanging). */
static void abort_registration(void)
{
    if (g.phase != P_CONNECT)
        return;
    for (int i = 0; i < g.nclients; i++) {
        struct conn *c = &g.conns[i];
        if (c->st == ST_CONNECTING || c->st == ST_PROMPT || c->st == ST_JOIN)
            conn_fail(c, "registration timed out");
    }
    if (g.next_connect < g.nclients) {
        g.failed += g.nclients - g.next_connect;
        for (; g.next_connect < g.nclients; g.next_connect++)
            g.conns[g.next_connect].st = ST_FAILED;
        note_error("registration timed out before some clients could start");
    }
}

static void on_command(char *line)
{
    uint64_t t = now_ns();
    if (strcmp(line, "sync") == 0) {
        g.phase = P_SYNC;
        if (g.sync_sender)
            send_sync_line();
    } else if (strcmp(line, "go") == 0) {
        g.phase = P_RUN;
        g.t_go = t;
        getrusage(RUSAGE_SELF, &g.ru_go);
        for (int i = 0; i < g.nsenders; i++) {
            g.senders[i].next_ns = t;
            sender_fill(&g.senders[i]);
        }
    } else if (strcmp(line, "stop") == 0) {
        g.phase = P_STOPPED;
        g.t_stop = t;
        getrusage(RUSAGE_SELF, &g.ru_stop);
        g.recv_at_stop = g.recv_total;
        uint64_t sent = total_sent();
        printf("sent %llu %llu\n", (unsigned long long)sent, (unsigned long long)g.recv_total);
        fflush(stdout);
    } else if (strncmp(line, "expect ", 7) == 0) {
        double timeout = 5.0;
        unsigned long long total = 0;
        sscanf(line + 7, "%llu %lf", &total, &timeout);
        g.expect = total;
        g.phase = P_DRAIN;
        g.drain_deadline = t + (uint64_t)(timeout * 1e9);
        g.drain_matched = 0;
    } else if (strcmp(line, "abort") == 0) {
        abort_registration();
    } else if (strcmp(line, "quit") == 0) {
        g.quit = 1;
    } else {
        fprintf(stderr, "genclient: unknown command: %s\n", line);
    }
}

static void on_stdin(void)
{
    ssize_t n = read(0, g.stdin_buf + g.stdin_len, sizeof g.stdin_buf - g.stdin_len - 1);
    if (n <= 0) {
        g.quit = 1; /* the orchestrator went away */
        return;
    }
    g.stdin_len += (size_t)n;
    char *start = g.stdin_buf, *nl;
    while ((nl = memchr(start, '\n', g.stdin_len - (size_t)(start - g.stdin_buf)))) {
        *nl = 0;
        on_command(start);
        start = nl + 1;
    }
    g.stdin_len -= (size_t)(start - g.stdin_buf);
    memmove(g.stdin_buf, start, g.stdin_len);
}

/* Advance the phase machine after a batch of events. */
static void check_phase(uint64_t t)
{
    if (g.phase == P_CONNECT && g.next_connect == g.nclients && g.pending == 0) {
        if (!g.connected_all)
            g.t_connected = t;
        g.phase = P_READY;
        print_ready();
    } else if (g.phase == P_SYNC && g.in_sync == 0) {
        g.phase = P_SYNCED;
        printf("synced\n");
        fflush(stdout);
    } else if (g.phase == P_DRAIN) {
        int done = 1;
        for (int i = 0; i < g.nclients && done; i++)
            if (g.conns[i].st == ST_COUNT && g.conns[i].count < g.expect)
                done = 0;
        if (done && !g.drain_matched)
            g.drain_matched = t;
        if (!done)
            g.drain_matched = 0;
        if ((done && t - g.drain_matched >= DRAIN_GRACE_NS) || t >= g.drain_deadline) {
            g.t_drain = done ? g.drain_matched : t;
            g.phase = P_DONE;
            print_results();
        }
    }
    if (t >= g.next_progress) {
        g.next_progress = t + (uint64_t)g.progress_ms * 1000000ull;
        if (g.phase == P_CONNECT)
            printf("r %d %d\n", g.registered, g.failed);
        else if (g.phase == P_RUN)
            printf("p %llu %llu\n", (unsigned long long)total_sent(),
                   (unsigned long long)g.recv_total);
        fflush(stdout);
    }
}

/* Milliseconds until the next timer (progress, rate, drain), rounded up. */
static int next_timeout(uint64_t t)
{
    uint64_t due = g.next_progress;
    if (g.phase == P_RUN && g.rate > 0)
        for (int i = 0; i < g.nsenders; i++)
            if (g.senders[i].next_ns < due)
                due = g.senders[i].next_ns;
    if (g.phase == P_DRAIN) {
        uint64_t d = g.drain_matched ? g.drain_matched + DRAIN_GRACE_NS : g.drain_deadline;
        due = d < due ? d : due;
    }
    return due <= t ? 0 : (int)((due - t + 999999) / 1000000);
}

static void usage(void)
{
    fprintf(stderr,
            "usage: genclient --port P --clients N --prefix NAME --sync-name NAME\n"
            "  --sync-token TEXT [--host H] [--senders S] [--sender-base B] [--window W |\n"
            "  --rate LINES_PER_S_PER_SENDER] [--pad BYTES] [--sources A,B] [--inflight K]\n"
            "  [--progress-ms MS] [--sync-sender]\n");
    exit(2);
}

static void parse_sources(char *list)
{
    for (char *tok = strtok(list, ","); tok && g.nsources < 256; tok = strtok(NULL, ",")) {
        if (inet_pton(AF_INET, tok, &g.sources[g.nsources]) != 1)
            usage();
        g.nsources++;
    }
}

static void parse_args(int argc, char **argv)
{
    static const struct option opts[] = {
        {"host", required_argument, 0, 'h'},     {"port", required_argument, 0, 'p'},
        {"clients", required_argument, 0, 'c'},  {"prefix", required_argument, 0, 'n'},
        {"senders", required_argument, 0, 's'},  {"sender-base", required_argument, 0, 'b'},
        {"window", required_argument, 0, 'w'},   {"rate", required_argument, 0, 'r'},
        {"pad", required_argument, 0, 'z'},      {"sources", required_argument, 0, 'a'},
        {"inflight", required_argument, 0, 'i'}, {"progress-ms", required_argument, 0, 'g'},
        {"sync-name", required_argument, 0, 'y'}, {"sync-token", required_argument, 0, 't'},
        {"sync-sender", no_argument, 0, 'Y'},    {0, 0, 0, 0}};
    g.host = "127.0.0.1";
    g.inflight = 256;
    g.progress_ms = 250;
    int o;
    while ((o = getopt_long(argc, argv, "", opts, NULL)) != -1) {
        switch (o) {
        case 'h': g.host = optarg; break;
        case 'p': g.port = atoi(optarg); break;
        case 'c': g.nclients = atoi(optarg); break;
        case 'n': g.prefix = optarg; break;
        case 's': g.nsenders = atoi(optarg); break;
        case 'b': g.sender_base = (unsigned)atoi(optarg); break;
        case 'w': g.window = atoi(optarg); break;
        case 'r': g.rate = atof(optarg); break;
        case 'z': g.pad = atoi(optarg); break;
        case 'a': parse_sources(optarg); break;
        case 'i': g.inflight = atoi(optarg); break;
        case 'g': g.progress_ms = atoi(optarg); break;
        case 'y': g.sync_name = optarg; break;
        case 't': g.sync_token = optarg; break;
        case 'Y': g.sync_sender = 1; break;
        default: usage();
        }
    }
    if (!g.port || g.nclients <= 0 || !g.prefix || !g.sync_name || !g.sync_token
        || g.nsenders < 0 || g.nsenders > g.nclients || g.pad < 0 || g.pad > 4000
        || g.inflight <= 0 || strlen(g.prefix) > 24)
        usage();
    if (g.nsenders > 0 && (g.window > 0) == (g.rate > 0))
        usage(); /* exactly one of window or rate */
}

/* Use the whole hard limit: every client is a descriptor. */
static void raise_nofile(void)
{
    struct rlimit rl;
    if (getrlimit(RLIMIT_NOFILE, &rl) == 0 && rl.rlim_cur < rl.rlim_max) {
        rl.rlim_cur = rl.rlim_max;
        setrlimit(RLIMIT_NOFILE, &rl);
    }
}

static void setup(void)
{
    g.dst.sin_family = AF_INET;
    g.dst.sin_port = htons((uint16_t)g.port);
    if (inet_pton(AF_INET, g.host, &g.dst.sin_addr) != 1) {
        fprintf(stderr, "genclient: --host must be an IPv4 address: %s\n", g.host);
        exit(2);
    }
    g.conns = calloc((size_t)g.nclients, sizeof *g.conns);
    g.senders = calloc((size_t)(g.nsenders ? g.nsenders : 1), sizeof *g.senders);
    g.rbuf = malloc(READ_CHUNK);
    if (!g.conns || !g.senders || !g.rbuf)
        die("malloc");
    memset(g.padding, 'x', sizeof g.padding);
    for (int i = 0; i < g.nclients; i++) {
        struct conn *c = &g.conns[i];
        c->fd = -1;
        c->sender = i < g.nsenders ? i : -1; /* the first clients are the senders */
        c->name_len = (size_t)snprintf(c->name, sizeof c->name, "%s%d", g.prefix, i);
    }
    for (int i = 0; i < g.nsenders; i++) {
        g.senders[i].conn = i;
        g.senders[i].gid = g.sender_base + (unsigned)i;
    }
    g.sync_len = (size_t)snprintf(g.sync_line, sizeof g.sync_line, "%s: %s", g.sync_name,
                                  g.sync_token);
    g.ep = epoll_create1(EPOLL_CLOEXEC);
    if (g.ep < 0)
        die("epoll_create1");
    struct epoll_event ev = {.events = EPOLLIN, .data.u32 = STDIN_TAG};
    if (epoll_ctl(g.ep, EPOLL_CTL_ADD, 0, &ev) < 0)
        die("epoll_ctl stdin");
}

int main(int argc, char **argv)
{
    parse_args(argc, argv);
    signal(SIGPIPE, SIG_IGN);
    raise_nofile();
    setup();
    struct epoll_event evs[MAX_EVENTS];
    unsigned rotation = 0;
    g.t_start = now_ns();
    g.next_progress = g.t_start;
    connect_more();
    while (!g.quit) {
        int n = epoll_wait(g.ep, evs, MAX_EVENTS, next_timeout(now_ns()));
        if (n < 0 && errno != EINTR)
            die("epoll_wait");
        uint64_t t = now_ns();
        /* Start each batch at a different event: epoll lists sockets in the order they
         * became ready, and always serving that order first would favour some senders. */
        int start = n > 0 ? (int)(rotation++ % (unsigned)n) : 0;
        for (int k = 0; k < n; k++) {
            struct epoll_event *e = &evs[(start + k) % n];
            if (e->data.u32 == STDIN_TAG)
                on_stdin();
            else
                on_conn_event(e->data.u32, e->events, t);
        }
        if (g.phase == P_CONNECT)
            connect_more();
        if (g.phase == P_RUN && g.rate > 0)
            rate_tick(t);
        check_phase(t);
    }
    for (int i = 0; i < g.nclients; i++)
        if (g.conns[i].fd >= 0)
            close(g.conns[i].fd);
    return 0;
}
