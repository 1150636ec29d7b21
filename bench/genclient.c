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
 * Latency is timed twice: by each sender on its own echoes (which also drive its window),
 * and by --observers ordinary clients spread over the join order, on every line they get.
 * A server may serve some clients first in each fan-out pass (geventchat serves the
 * batch's speakers first; Redis writes to the latest subscribers first), so the echo is
 * one position in that order and the observers sample all of it.
 *
 * Counting starts when a client reads the sync line, not at registration: joins of clients
 * registered later are broadcast to it before that line, so after it the server sends
 * nothing but chat lines and every newline is a delivery.
 *
 * --proto redis runs the same workload against Redis pub/sub (RESP2), for a baseline
 * measured by the same generator on the same machine:
 *   - a client SUBSCRIBEs to channel "chat"; the subscribe confirmation is "registered";
 *   - a subscribed connection can't PUBLISH, so each sender (and the sync client) also has
 *     a publisher connection (PING/+PONG is its handshake); its lines go out as PUBLISH,
 *     and its subscriber connection's receipt of them is the echo (window and latency);
 *   - the sync line is a published message whose payload is the sync token;
 *   - a delivery is one "message" push, *3 $7 message $4 chat $LEN PAYLOAD: seven
 *     CRLF-terminated parts, and payloads never hold CR or LF, so after the sync message
 *     deliveries = newlines / 7. The same word-at-a-time newline counter serves both
 *     protocols, with no frame split across reads to handle; only senders parse frames.
 *
 * Build: gcc -O2 -Wall -Wextra -o genclient genclient.c
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
#define MAX_MSG (MAX_LINE + 128)  /* one formatted line, or PUBLISH frame, at most */
#define MAX_ERRORS 8             /* distinct error messages kept for the report */
#define RATE_SENDQ_CAP (1 << 20) /* rate mode: skip a due line rather than queue past 1 MB */
#define DRAIN_GRACE_NS 200000000ull /* keep reading this long after counts match, to see dups */
#define STDIN_TAG UINT32_MAX

/* Redis pub/sub (RESP2): the channel every client subscribes to, the frames sent, and the
 * newlines per "message" push (*3, $7, message, $4, chat, $LEN, payload). */
#define REDIS_CHANNEL "chat"
#define REDIS_SUBSCRIBE "*2\r\n$9\r\nSUBSCRIBE\r\n$4\r\n" REDIS_CHANNEL "\r\n"
#define REDIS_PING "*1\r\n$4\r\nPING\r\n"
#define REDIS_PUBLISH_HEAD "*3\r\n$7\r\nPUBLISH\r\n$4\r\n" REDIS_CHANNEL "\r\n"
#define REDIS_LINES_PER_MESSAGE 7

/* Latency histogram: log-linear, 64 sub-buckets per power of two (bucket width <= 1.6%).
 * Must stay identical to bench/histogram.py, which merges the buckets of all workers. */
#define SUB_BITS 6
#define SUB_COUNT (1u << SUB_BITS)
#define HIST_BUCKETS ((64 - SUB_BITS + 1) * SUB_COUNT)

struct latency {
    uint64_t hist[HIST_BUCKETS];
    uint64_t count, max;
};

/* ST_PUB: a Redis publisher connection, ready to PUBLISH (it never counts deliveries). */
enum state { ST_IDLE, ST_CONNECTING, ST_PROMPT, ST_JOIN, ST_SYNC, ST_COUNT, ST_PUB, ST_FAILED };
enum phase { P_CONNECT, P_READY, P_SYNC, P_SYNCED, P_RUN, P_STOPPED, P_DRAIN, P_DONE };

struct conn {
    int fd;
    enum state st;
    int sender;          /* index into g.senders, or -1 */
    int observer;        /* times every delivery it reads (never a sender) */
    int pub;             /* a Redis publisher connection (not a client) */
    int want_out;        /* EPOLLOUT currently registered */
    uint64_t count;      /* newlines read since the sync line (g.unit per delivery) */
    char name[40];
    size_t name_len;
    char *carry;         /* partial line between reads (line mode only) */
    size_t carry_len;
    char *out;           /* bytes the kernel has not taken yet */
    size_t out_len, out_off, out_cap;
};

struct sender {
    int conn;            /* where its echoes arrive */
    int out;             /* where its lines go: conn itself, or its Redis publisher */
    unsigned gid;        /* global sender id, written into each line */
    uint64_t sent;       /* sequence number of the last line sent */
    uint64_t echoed;     /* sequence number of the last own echo read */
    uint64_t next_ns;    /* rate mode: when the next line is due */
    char mark[24];       /* Redis: "\ns<gid>:", how its own payload lines start */
    size_t mark_len;
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
    int redis;           /* --proto redis */
    int nobservers;
    int eager;           /* send the name right after connecting, before the prompt */

    /* runtime */
    int ep;
    struct sockaddr_in dst;
    struct conn *conns;  /* the clients, then (Redis) the publishers */
    int nconns;          /* clients + publishers */
    int npubs;
    uint64_t unit;       /* newlines per delivery: 1, or REDIS_LINES_PER_MESSAGE */
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
    uint64_t recv_at_stop, expect;
    uint64_t echo_errors, deferred;
    uint64_t run_reads;  /* client reads between go and stop: how the server batches writes */
    uint64_t t_start, t_connected, t_registered, t_go, t_stop, t_drain, drain_deadline;
    uint64_t drain_matched, next_progress;
    int connected_all;
    struct rusage ru_go, ru_stop;
    struct latency echo; /* senders, their own lines */
    struct latency seen; /* observers, every line */
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

static void record_latency(struct latency *l, uint64_t ns)
{
    l->hist[hist_index(ns)]++;
    l->count++;
    if (ns > l->max)
        l->max = ns;
}

/* ---- newline counting ---- */

/*
 * Count '\n' bytes eight at a time: after XOR with 0x0a.., a byte is zero exactly where a
 * newline was, and the classic exact zero-byte test sets its top bit. The top bits are
 * summed per byte lane and folded every 255 words so no lane overflows. The fold widens
 * the lanes to 16 bits first: a block can hold up to 2040 newlines (RESP frames have one
 * every ~8 bytes), and a byte-wide horizontal sum would count them modulo 256. No popcount
 * instruction is needed, so plain -O2 builds stay fast on any x86-64 or arm64.
 */
static uint64_t count_newlines(const char *p, size_t n)
{
    const uint64_t ones = 0x0101010101010101ull, nl = 0x0a0a0a0a0a0a0a0aull;
    const uint64_t low7 = 0x7f7f7f7f7f7f7f7full, even = 0x00ff00ff00ff00ffull;
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
        uint64_t pairs = (acc & even) + ((acc >> 8) & even); /* 4 lanes of <= 510 */
        total += (pairs * 0x0001000100010001ull) >> 48;      /* their sum, <= 2040 */
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

/* The next payload "s<gid>:<seq>:<send_ns>[ padding]" (no CR, LF or '*'); its length. */
static size_t format_payload(char *buf, struct sender *s, uint64_t t)
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
    return len;
}

/* PUBLISH chat PAYLOAD as a RESP array; returns its length (at most len + 64). */
static size_t format_publish(char *buf, const char *payload, size_t len)
{
    size_t n = sizeof REDIS_PUBLISH_HEAD - 1;
    memcpy(buf, REDIS_PUBLISH_HEAD, n);
    n += (size_t)snprintf(buf + n, 32, "$%zu\r\n", len);
    memcpy(buf + n, payload, len);
    n += len;
    buf[n++] = '\r';
    buf[n++] = '\n';
    return n;
}

/* Append the sender's next message to buf, in the target's protocol; returns its length. */
static size_t format_line(char *buf, struct sender *s, uint64_t t)
{
    if (g.redis) {
        char payload[MAX_LINE];
        return format_publish(buf, payload, format_payload(payload, s, t));
    }
    size_t len = format_payload(buf, s, t);
    buf[len++] = '\n';
    return len;
}

/* A sender may send while its echo connection counts and its output connection is up. */
static int sender_ready(const struct sender *s)
{
    return g.conns[s->conn].st == ST_COUNT && g.conns[s->out].st != ST_FAILED;
}

/* Window mode: top the sender up to --window unechoed lines, in one write. */
static void sender_fill(struct sender *s)
{
    static char batch[64 * MAX_MSG];
    if (g.phase != P_RUN || g.window <= 0 || !sender_ready(s))
        return;
    uint64_t t = now_ns();
    while (s->sent - s->echoed < (uint64_t)g.window && sender_ready(s)) {
        size_t len = 0;
        while (s->sent - s->echoed < (uint64_t)g.window && len + MAX_MSG < sizeof batch)
            len += format_line(batch + len, s, t);
        conn_send(&g.conns[s->out], batch, len);
    }
}

/* Rate mode: send every line that is due; skip (and count) lines the socket can't take. */
static void rate_tick(uint64_t t)
{
    static char batch[64 * MAX_MSG];
    uint64_t interval = (uint64_t)(1e9 / g.rate);
    for (int i = 0; i < g.nsenders; i++) {
        struct sender *s = &g.senders[i];
        struct conn *c = &g.conns[s->out];
        if (!sender_ready(s))
            continue;
        size_t len = 0;
        while (s->next_ns <= t && len + MAX_MSG < sizeof batch) {
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
    /* A publisher counts as its client: a sender that can't publish is a broken client. */
    if (c->st == ST_COUNT || c->st == ST_SYNC || c->st == ST_PUB) {
        g.disconnected++;
        note_error("%s disconnected after registration: %s", c->name, why);
    } else {
        g.failed++;
        g.pending--;
        note_error("%s failed before registration: %s", c->pub ? "publisher" : "client", why);
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

/* Lines read since the sync line, in deliveries (complete Redis messages). */
static uint64_t delivered(const struct conn *c)
{
    return c->count / g.unit;
}

static uint64_t total_delivered(void)
{
    uint64_t n = 0;
    for (int i = 0; i < g.nclients; i++)
        n += delivered(&g.conns[i]);
    return n;
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
    record_latency(&g.echo, t - sent_ns);
}

/* An observer's line: the payload "s<gid>:<seq>:<send_ns>..." of any sender, timed. */
static void observe(const char *p, size_t len, uint64_t t)
{
    const char *end = p + len;
    if (p == end || *p++ != 's')
        return;
    for (int field = 0; field < 2; field++) { /* skip <gid>: and <seq>: */
        while (p < end && *p >= '0' && *p <= '9')
            p++;
        if (p == end || *p++ != ':')
            return;
    }
    uint64_t sent_ns = 0;
    const char *digits = p;
    for (; p < end && *p >= '0' && *p <= '9'; p++)
        sent_ns = sent_ns * 10 + (uint64_t)(*p - '0');
    if (p > digits && sent_ns <= t)
        record_latency(&g.seen, t - sent_ns);
}

/* Clients that must look at their lines: senders (own echoes) and observers. */
static int parses(const struct conn *c)
{
    return c->sender >= 0 || c->observer;
}

static void on_registered(struct conn *c)
{
    c->st = ST_SYNC;
    g.t_registered = now_ns(); /* the last registration so far; stalls don't count */
    g.registered++;
    g.in_sync++;
    g.pending--;
}

static void on_publisher_ready(struct conn *c)
{
    c->st = ST_PUB;
    g.pending--;
}

/* The sync line (chat) or sync message payload (Redis): counting starts after it. */
static void on_sync_line(struct conn *c, const char *line, size_t len)
{
    if (line_is(line, len, g.sync_line, g.sync_len)) {
        c->st = ST_COUNT;
        g.in_sync--;
    }
}

/* Is this Redis payload line "s<gid>:..." one of sender gid's own lines? */
static int payload_from(const char *line, size_t len, unsigned gid)
{
    if (len < 2 || line[0] != 's')
        return 0;
    unsigned v = 0;
    size_t i = 1;
    for (; i < len && line[i] >= '0' && line[i] <= '9'; i++)
        v = v * 10 + (unsigned)(line[i] - '0');
    return i > 1 && i < len && line[i] == ':' && v == gid;
}

/* One CRLF-terminated part of a Redis reply or push, without the CRLF. */
static void on_redis_line(struct conn *c, const char *line, size_t len, uint64_t t)
{
    switch (c->st) {
    case ST_JOIN:
        if (len > 0 && line[0] == '-') {
            char why[120];
            snprintf(why, sizeof why, "redis: %.*s", (int)(len < 100 ? len : 100), line);
            conn_fail(c, why); /* e.g. "-ERR max number of clients reached" */
        } else if (c->pub && line_is(line, len, "+PONG", 5)) {
            on_publisher_ready(c);
        } else if (!c->pub && len > 0 && line[0] == ':') {
            on_registered(c); /* ":1" ends the subscribe confirmation */
        }
        break;
    case ST_SYNC:
        on_sync_line(c, line, len);
        break;
    case ST_COUNT:
        c->count++;
        if (c->sender >= 0 && payload_from(line, len, g.senders[c->sender].gid))
            own_echo(&g.senders[c->sender], line, len, t);
        else if (c->observer)
            observe(line, len, t); /* ignores the parts that are not a payload */
        break;
    default:
        break; /* ST_PUB: PUBLISH replies, nothing to check */
    }
}

static void on_payload(struct conn *c, const char *p, size_t len, uint64_t t)
{
    if (c->sender >= 0)
        own_echo(&g.senders[c->sender], p, len, t);
    else
        observe(p, len, t);
}

/* A Redis sender's or observer's complete lines p[0..n), n ending after a '\n', in bulk:
 * count the newlines and find the payloads it wants by how their line starts: "\ns<gid>:"
 * for a sender's own, "\ns" for any (nothing else in a "message" push starts with 's'),
 * instead of splitting seven parts per message. */
static void scan_payloads(struct conn *c, const char *p, size_t n, uint64_t t)
{
    const char *mark = c->sender >= 0 ? g.senders[c->sender].mark : "\ns";
    size_t mark_len = c->sender >= 0 ? g.senders[c->sender].mark_len : 2;
    const char *end = p + n;
    c->count += count_newlines(p, n);
    if (n >= mark_len - 1 && memcmp(p, mark + 1, mark_len - 1) == 0)
        on_payload(c, p, n, t); /* p starts a line too */
    for (const char *q = p; (q = memmem(q, (size_t)(end - q), mark, mark_len)); q += mark_len)
        on_payload(c, q + 1, (size_t)(end - q - 1), t);
}

/* One complete line (without its newline). */
static void on_line(struct conn *c, const char *line, size_t len, uint64_t t)
{
    if (g.redis) {
        on_redis_line(c, line, len > 0 && line[len - 1] == '\r' ? len - 1 : len, t);
        return;
    }
    switch (c->st) {
    case ST_PROMPT:
        if (line_is(line, len, "? name:", 7) && g.eager) {
            c->st = ST_JOIN; /* the name went out on connect: this prompt came after it */
        } else if (line_is(line, len, "? name:", 7)) {
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
        on_sync_line(c, line, len);
        break;
    case ST_COUNT:
        c->count++;
        if (c->sender >= 0 && len > c->name_len + 2 && memcmp(line, c->name, c->name_len) == 0
            && line[c->name_len] == ':' && line[c->name_len + 1] == ' ') {
            struct sender *s = &g.senders[c->sender];
            own_echo(s, line + c->name_len + 2, len - c->name_len - 2, t);
        } else if (c->observer) {
            const char *colon = memchr(line, ':', len); /* "NAME: PAYLOAD" */
            if (colon && (size_t)(colon - line) + 2 < len && colon[1] == ' ')
                observe(colon + 2, len - (size_t)(colon - line) - 2, t);
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
        if (c->st == ST_COUNT && !parses(c)) {
            c->count += count_newlines(p, (size_t)(end - p));
            return;
        }
        /* Redis senders and observers scan complete lines in bulk; a partial one is carried. */
        const char *last = NULL;
        if (g.redis && c->st == ST_COUNT)
            last = memrchr(p, '\n', (size_t)(end - p));
        if (last) {
            scan_payloads(c, p, (size_t)(last + 1 - p), t);
            p = last + 1;
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
    g.run_reads += g.phase == P_RUN && !c->pub;
    if (c->st == ST_COUNT && !parses(c)) {
        c->count += count_newlines(g.rbuf, (size_t)n); /* the hot path */
        return;
    }
    if (c->st == ST_PUB)
        return; /* PUBLISH replies (":N"): read only so they don't pile up */
    if (parses(c))
        t = now_ns(); /* when the lines were read, not when this epoll batch began */
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
    set_events(c, 0);
    if (!g.redis) {
        c->st = ST_PROMPT; /* wait for "? name:" */
        if (g.eager) { /* a program: the name at once (the server sniffs it, then prompts) */
            char msg[48];
            memcpy(msg, c->name, c->name_len);
            msg[c->name_len] = '\n';
            conn_send(c, msg, c->name_len + 1);
        }
        return;
    }
    c->st = ST_JOIN;
    if (c->pub)
        conn_send(c, REDIS_PING, sizeof REDIS_PING - 1);
    else
        conn_send(c, REDIS_SUBSCRIBE, sizeof REDIS_SUBSCRIBE - 1);
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

struct tally {
    uint64_t missing, extra, cmin, cmax;
};

/* Every client's deliveries against the expected count: loss and duplication. */
static struct tally tally_clients(void)
{
    struct tally r = {0, 0, UINT64_MAX, 0};
    int counted = 0, partial = 0;
    for (int i = 0; i < g.nclients; i++) {
        struct conn *c = &g.conns[i];
        if (c->st != ST_COUNT && !(c->st == ST_FAILED && c->count))
            continue;
        uint64_t n = delivered(c);
        counted++;
        partial += c->count % g.unit != 0;
        if (n < g.expect)
            r.missing += g.expect - n;
        else
            r.extra += n - g.expect;
        r.cmin = n < r.cmin ? n : r.cmin;
        r.cmax = n > r.cmax ? n : r.cmax;
    }
    /* Clients that registered but dropped before counting anything still owed lines. */
    r.missing += (uint64_t)(g.registered - counted) * g.expect;
    if (!counted)
        r.cmin = 0;
    if (partial) /* a message cut short, or a push that is not a 7-part "message" */
        note_error("%d client(s) ended inside a Redis message (newlines not a multiple of 7)",
                   partial);
    return r;
}

/* "PREFIX_count":N,"PREFIX_max_ns":N,"PREFIX_hist":[[midpoint_ns,count],...], */
static void print_latency(const char *prefix, const struct latency *l)
{
    printf("\"%s_count\":%llu,\"%s_max_ns\":%llu,\"%s_hist\":[", prefix,
           (unsigned long long)l->count, prefix, (unsigned long long)l->max, prefix);
    int first = 1;
    for (unsigned i = 0; i < HIST_BUCKETS; i++) {
        if (!l->hist[i])
            continue;
        printf("%s[%llu,%llu]", first ? "" : ",", (unsigned long long)hist_mid(i),
               (unsigned long long)l->hist[i]);
        first = 0;
    }
    printf("],");
}

static void print_results(void)
{
    struct tally r = tally_clients();
    uint64_t sent = total_sent();
    printf("{\"clients\":%d,\"registered\":%d,\"failed\":%d,\"disconnected\":%d,"
           "\"connect_s\":%.6f,\"register_s\":%.6f,\"sent\":%llu,\"expect\":%llu,"
           "\"received\":%llu,\"received_at_stop\":%llu,\"missing\":%llu,\"extra\":%llu,"
           "\"count_min\":%llu,\"count_max\":%llu,\"echo_errors\":%llu,\"deferred\":%llu,"
           "\"run_s\":%.6f,\"drain_s\":%.6f,\"cpu_s\":%.6f,\"run_reads\":%llu,",
           g.nclients, g.registered, g.failed, g.disconnected, secs(g.t_start, g.t_connected),
           secs(g.t_start, g.t_registered), (unsigned long long)sent,
           (unsigned long long)g.expect, (unsigned long long)total_delivered(),
           (unsigned long long)g.recv_at_stop, (unsigned long long)r.missing,
           (unsigned long long)r.extra, (unsigned long long)r.cmin,
           (unsigned long long)r.cmax, (unsigned long long)g.echo_errors,
           (unsigned long long)g.deferred, secs(g.t_go, g.t_stop), secs(g.t_stop, g.t_drain),
           cpu_secs(&g.ru_go, &g.ru_stop), (unsigned long long)g.run_reads);
    printf("\"sent_per_sender\":[");
    for (int i = 0; i < g.nsenders; i++)
        printf("%s%llu", i ? "," : "", (unsigned long long)g.senders[i].sent);
    printf("],");
    print_latency("lat", &g.echo);
    print_latency("seen", &g.seen);
    print_errors();
    printf("}\n");
    fflush(stdout);
}

/* ---- orchestration ---- */

/* Client 0 says the sync token: as a chat line, or published by its Redis publisher. */
static void send_sync_line(void)
{
    struct conn *c = &g.conns[g.redis ? g.nclients : 0];
    int ready = g.redis ? c->st == ST_PUB : c->st == ST_SYNC || c->st == ST_COUNT;
    if (!ready) {
        fprintf(stderr, "genclient: sync client is not registered\n");
        exit(2);
    }
    char msg[256];
    size_t n = strlen(g.sync_token);
    if (g.redis)
        n = format_publish(msg, g.sync_token, n);
    else
        n = (size_t)snprintf(msg, sizeof msg, "%s\n", g.sync_token);
    conn_send(c, msg, n);
}

/* Registration timed out: count every client not registered yet as failed, so "ready"
 * still reports how far it got (a server out of descriptors leaves connects hanging). */
static void abort_registration(void)
{
    if (g.phase != P_CONNECT)
        return;
    for (int i = 0; i < g.nconns; i++) {
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
        g.recv_at_stop = total_delivered();
        uint64_t sent = total_sent();
        printf("sent %llu %llu\n", (unsigned long long)sent, (unsigned long long)g.recv_at_stop);
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
            if (g.conns[i].st == ST_COUNT && delivered(&g.conns[i]) < g.expect)
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
                   (unsigned long long)total_delivered());
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
            "  [--progress-ms MS] [--sync-sender] [--proto line|redis] [--observers K]\n"
            "  [--eager-name]\n");
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

static void parse_proto(const char *name)
{
    if (strcmp(name, "redis") == 0)
        g.redis = 1;
    else if (strcmp(name, "line") != 0)
        usage();
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
        {"sync-sender", no_argument, 0, 'Y'},    {"proto", required_argument, 0, 'P'},
        {"observers", required_argument, 0, 'o'}, {"eager-name", no_argument, 0, 'E'},
        {0, 0, 0, 0}};
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
        case 'P': parse_proto(optarg); break;
        case 'o': g.nobservers = atoi(optarg); break;
        case 'E': g.eager = 1; break;
        default: usage();
        }
    }
    if (!g.port || g.nclients <= 0 || !g.prefix || !g.sync_name || !g.sync_token
        || g.nsenders < 0 || g.nsenders > g.nclients || g.pad < 0 || g.pad > 4000
        || g.inflight <= 0 || strlen(g.prefix) > 24 || g.nobservers < 0)
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

/* The clients, then (Redis) one publisher per sender, or one for the sync client. */
static void setup_conns(void)
{
    g.npubs = !g.redis ? 0 : g.nsenders ? g.nsenders : g.sync_sender;
    g.nconns = g.nclients + g.npubs;
    g.unit = g.redis ? REDIS_LINES_PER_MESSAGE : 1;
    g.conns = calloc((size_t)g.nconns, sizeof *g.conns);
    g.senders = calloc((size_t)(g.nsenders ? g.nsenders : 1), sizeof *g.senders);
    g.rbuf = malloc(READ_CHUNK);
    if (!g.conns || !g.senders || !g.rbuf)
        die("malloc");
    memset(g.padding, 'x', sizeof g.padding);
    for (int i = 0; i < g.nconns; i++) {
        struct conn *c = &g.conns[i];
        int client = i < g.nclients ? i : i - g.nclients; /* a publisher's client */
        c->fd = -1;
        c->pub = i >= g.nclients;
        c->sender = !c->pub && i < g.nsenders ? i : -1; /* the first clients send */
        c->name_len = (size_t)snprintf(c->name, sizeof c->name, "%s%d%s", g.prefix, client,
                                       c->pub ? "-pub" : "");
    }
    /* Observers: non-senders spread evenly over the join (connect) order. */
    int others = g.nclients - g.nsenders;
    int nobs = g.nobservers < others ? g.nobservers : others;
    for (int j = 0; j < nobs; j++)
        g.conns[g.nsenders + (int)((2 * (int64_t)j + 1) * others / (2 * nobs))].observer = 1;
    for (int i = 0; i < g.nsenders; i++) {
        g.senders[i].conn = i;
        g.senders[i].out = g.redis ? g.nclients + i : i;
        g.senders[i].gid = g.sender_base + (unsigned)i;
        g.senders[i].mark_len = (size_t)snprintf(g.senders[i].mark, sizeof g.senders[i].mark,
                                                 "\ns%u:", g.senders[i].gid);
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
    setup_conns();
    if (g.redis) /* the sync message's payload is the bare token */
        g.sync_len = (size_t)snprintf(g.sync_line, sizeof g.sync_line, "%s", g.sync_token);
    else
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
    for (int i = g.nclients; i < g.nconns; i++)
        start_connect(i); /* the few Redis publishers first */
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
    for (int i = 0; i < g.nconns; i++)
        if (g.conns[i].fd >= 0)
            close(g.conns[i].fd);
    return 0;
}
