/* bench_client: the load client of tools/bench: one process, one epoll loop,
 * non-blocking OpenSSL, one JSON line out.
 *
 *   bench_client sessions HOST PORT [--conc N] [--seconds S] [--warmup S]
 *                [--count N] [--resume] [--line TEXT]
 *       N sessions in flight, each followed at once by the next: connect,
 *       handshake, send one line, read to EOF. Rate, p50/p99 latency, how many
 *       were resumed. The window of S seconds opens after --warmup and once
 *       every one of the N lanes ended a session.
 *   bench_client transfer HOST PORT [--send BYTES] [--expect BYTES] [--half-close]
 *       One session: send BYTES while reading, then (--half-close) close_notify
 *       and FIN, and read to the server's EOF; the clock runs from the end of
 *       the handshake to that EOF.
 *   bench_client idle HOST PORT --count N [--conc N]
 *       Open N sessions (N at a time in flight), echo one line on each, print a
 *       "ready" line, keep them open until stdin ends, then close them.
 *
 * Common options: --plain (TCP, no TLS), --tls-version 1.2|1.3, --alpn LIST
 * (comma-separated protocols offered by ALPN, e.g. h2,http/1.1), --cert FILE
 * --key FILE (a client certificate chain and its key, PEM, presented when the
 * server asks for one). The JSON line says which ALPN protocol the first
 * session got ("alpn", "" for none).
 * The client's own CPU time (getrusage) is reported, so the bench can show
 * how much of the machine the client took from the servers under test.
 */
#define _GNU_SOURCE
#include <errno.h>
#include <fcntl.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <arpa/inet.h>
#include <poll.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/epoll.h>
#include <sys/resource.h>
#include <sys/socket.h>
#include <time.h>
#include <unistd.h>

#include <openssl/err.h>
#include <openssl/ssl.h>

static const char *host = "127.0.0.1";
static int port;
static int plain;
static SSL_CTX *ctx;

static double now(void) {
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return ts.tv_sec + ts.tv_nsec / 1e9;
}

static double cpu_seconds(void) {
    struct rusage ru;
    getrusage(RUSAGE_SELF, &ru);
    return ru.ru_utime.tv_sec + ru.ru_utime.tv_usec / 1e6 + ru.ru_stime.tv_sec +
           ru.ru_stime.tv_usec / 1e6;
}

static void die(const char *what) {
    fprintf(stderr, "bench_client: %s: %s\n", what, strerror(errno));
    exit(111);
}

/* A TCP socket connecting to host:port; non-blocking unless `blocking`.
 * *connected says whether the connection is already up. -1 on failure. */
static int tcp_connect(int blocking, int *connected) {
    int fd = socket(AF_INET, SOCK_STREAM | SOCK_CLOEXEC | (blocking ? 0 : SOCK_NONBLOCK), 0);
    if (fd < 0) return -1;
    int one = 1;
    /* The client never delays its own segments: Nagle is the server's business. */
    setsockopt(fd, IPPROTO_TCP, TCP_NODELAY, &one, sizeof one);
    struct sockaddr_in sa = {.sin_family = AF_INET, .sin_port = htons(port)};
    inet_pton(AF_INET, host, &sa.sin_addr);
    *connected = connect(fd, (struct sockaddr *)&sa, sizeof sa) == 0;
    if (!*connected && (blocking || errno != EINPROGRESS)) {
        close(fd);
        return -1;
    }
    return fd;
}

static SSL *tls_new(int fd, SSL_SESSION *session) {
    SSL *ssl = SSL_new(ctx);
    if (!ssl) die("SSL_new");
    SSL_set_fd(ssl, fd);
    SSL_set_connect_state(ssl);
    SSL_set_tlsext_host_name(ssl, "localhost");
    if (session) SSL_set_session(ssl, session);
    return ssl;
}

/* Close a session without a close_notify, keeping it resumable. */
static void tls_close(int fd, SSL *ssl) {
    if (ssl) {
        SSL_set_shutdown(ssl, SSL_SENT_SHUTDOWN | SSL_RECEIVED_SHUTDOWN);
        SSL_free(ssl);
    }
    if (fd >= 0) close(fd);
}

static const char *resume_kind(SSL *ssl) {
    if (SSL_version(ssl) == TLS1_3_VERSION) return "TLSv1.3 ticket";
    SSL_SESSION *s = SSL_get_session(ssl);
    return s && SSL_SESSION_has_ticket(s) ? "TLSv1.2 ticket" : "TLSv1.2 session id";
}

static char first_protocol[64] = "", first_cipher[128] = "", first_alpn[256] = "";
static char kind[64] = "";

static void note_tls(SSL *ssl) {
    if (!first_protocol[0]) {
        const unsigned char *alpn;
        unsigned int alpn_len;
        snprintf(first_protocol, sizeof first_protocol, "%s", SSL_get_version(ssl));
        snprintf(first_cipher, sizeof first_cipher, "%s",
                 SSL_CIPHER_get_name(SSL_get_current_cipher(ssl)));
        SSL_get0_alpn_selected(ssl, &alpn, &alpn_len);
        /* A protocol name in JSON: printable ASCII but quote and backslash. */
        for (unsigned int i = 0; i < alpn_len && i < sizeof first_alpn - 1; i++)
            first_alpn[i] = alpn[i] > ' ' && alpn[i] < 127 && alpn[i] != '"' && alpn[i] != '\\'
                                ? (char)alpn[i] : '?';
    }
    if (!kind[0] && SSL_session_reused(ssl))
        snprintf(kind, sizeof kind, "%s", resume_kind(ssl));
}

static void print_tls(void) {
    if (plain) printf("\"protocol\": \"TCP\", \"cipher\": \"-\", \"alpn\": \"\"");
    else
        printf("\"protocol\": \"%s\", \"cipher\": \"%s\", \"alpn\": \"%s\"", first_protocol,
               first_cipher, first_alpn);
}

/* ---- lanes: one session at a time each, all driven by one epoll loop */

typedef enum { IDLE, CONNECTING, HANDSHAKING, WRITING, READING, HELD } state_t;
typedef enum { WAIT, DONE, FAILED } step_t;

typedef struct {
    int fd;
    SSL *ssl;
    state_t state;
    size_t sent, got;
    size_t hold_after; /* idle mode: read this much, then hold the session */
    double t0;
    int sampled;
    SSL_SESSION *session; /* the last session, to resume (--resume) */
} lane_t;

static int epfd;
static const char *line = "s6tls bench\n";

static int lane_start(lane_t *l, size_t hold_after, int resume) {
    int connected;
    l->fd = tcp_connect(0, &connected);
    if (l->fd < 0) return -1;
    l->ssl = plain ? NULL : tls_new(l->fd, resume ? l->session : NULL);
    l->state = connected ? (plain ? WRITING : HANDSHAKING) : CONNECTING;
    l->sent = l->got = 0;
    l->hold_after = hold_after;
    struct epoll_event ev = {.events = EPOLLIN | EPOLLOUT | EPOLLET, .data.ptr = l};
    if (epoll_ctl(epfd, EPOLL_CTL_ADD, l->fd, &ev) < 0) die("epoll_ctl");
    return 0;
}

static void lane_close(lane_t *l, int resume) {
    if (l->ssl && resume) {
        SSL_SESSION *next = SSL_get1_session(l->ssl);
        if (next) {
            if (l->session) SSL_SESSION_free(l->session);
            l->session = next;
        }
    }
    tls_close(l->fd, l->ssl); /* close() also takes the fd out of epoll */
    l->fd = -1;
    l->ssl = NULL;
    l->state = IDLE;
}

/* WAIT unless the SSL call failed for good. */
static step_t tls_wait(SSL *ssl, int r) {
    int e = SSL_get_error(ssl, r);
    ERR_clear_error();
    return e == SSL_ERROR_WANT_READ || e == SSL_ERROR_WANT_WRITE ? WAIT : FAILED;
}

/* Drive a lane as far as it goes without waiting (epoll is edge-triggered). */
static step_t lane_step(lane_t *l) {
    char buf[4096];
    size_t want = strlen(line);
    for (;;) switch (l->state) {
        case CONNECTING: {
            int err = 0;
            socklen_t len = sizeof err;
            if (getsockopt(l->fd, SOL_SOCKET, SO_ERROR, &err, &len) < 0 || err) return FAILED;
            l->state = plain ? WRITING : HANDSHAKING;
            break;
        }
        case HANDSHAKING: {
            int r = SSL_do_handshake(l->ssl);
            if (r != 1) return tls_wait(l->ssl, r);
            l->state = WRITING;
            break;
        }
        case WRITING: {
            const char *text = l->hold_after ? "x\n" : line;
            size_t n = l->hold_after ? 2 : want;
            long w;
            if (l->ssl) {
                w = SSL_write(l->ssl, text + l->sent, (int)(n - l->sent));
                if (w <= 0) return tls_wait(l->ssl, (int)w);
            } else {
                w = write(l->fd, text + l->sent, n - l->sent);
                if (w < 0) return errno == EAGAIN || errno == EINTR ? WAIT : FAILED;
            }
            l->sent += (size_t)w;
            if (l->sent == n) l->state = READING;
            break;
        }
        case READING: {
            long r;
            if (l->ssl) {
                r = SSL_read(l->ssl, buf, sizeof buf);
                if (r <= 0) {
                    int e = SSL_get_error(l->ssl, (int)r);
                    ERR_clear_error();
                    if (e == SSL_ERROR_ZERO_RETURN) r = 0;
                    else return e == SSL_ERROR_WANT_READ || e == SSL_ERROR_WANT_WRITE ? WAIT
                                                                                       : FAILED;
                }
            } else {
                r = read(l->fd, buf, sizeof buf);
                if (r < 0) return errno == EAGAIN || errno == EINTR ? WAIT : FAILED;
            }
            if (r == 0) return l->hold_after || l->got != want ? FAILED : DONE;
            l->got += (size_t)r;
            if (l->hold_after && l->got >= l->hold_after) {
                l->state = HELD;
                return DONE;
            }
            break;
        }
        default:
            return WAIT;
    }
}

/* ---- sessions */

static int conc = 1;
static double seconds = 1.0, warmup = 0.0;
static long max_count = 0;
static int resume;

typedef struct {
    double *v;
    long n, cap;
} samples_t;

static void record(samples_t *s, double latency) {
    if (s->n == s->cap) {
        s->cap = s->cap ? s->cap * 2 : 4096;
        s->v = realloc(s->v, (size_t)s->cap * sizeof *s->v);
        if (!s->v) die("realloc");
    }
    s->v[s->n++] = latency;
}

static int cmp_double(const void *a, const void *b) {
    double x = *(const double *)a, y = *(const double *)b;
    return (x > y) - (x < y);
}

/* A session counts towards the rate when it ends inside the window, and gives
 * a latency sample when it starts inside it (it is finished after the window
 * if need be, so long sessions are not censored). With --count, every session
 * counts. */
static int run_sessions(void) {
    lane_t *lanes = calloc((size_t)conc, sizeof *lanes);
    struct epoll_event *events = calloc((size_t)conc, sizeof *events);
    samples_t lat = {0};
    long started = 0, done = 0, errors = 0, resumed = 0, total = 0, warmed = 0;
    char *ended_once = calloc((size_t)conc, 1);
    double t0 = now();
    double window_start = max_count ? t0 : 1e300, window_end = 1e300;
    double cpu0 = max_count ? cpu_seconds() : 0, cpu1 = 0, wall1 = 0;
    int stopping = 0, active = 0;

    for (;;) {
        double t = now();
        if (!max_count && window_start > 1e299 && t >= t0 + warmup &&
            (warmed == conc || t >= t0 + warmup + 30)) {
            window_start = t;
            window_end = t + seconds;
            cpu0 = cpu_seconds();
        }
        if (!stopping && t >= window_end) {
            stopping = 1;
            cpu1 = cpu_seconds(), wall1 = t;
        }
        /* Start sessions on idle lanes. */
        for (int i = 0; i < conc; i++) {
            lane_t *l = &lanes[i];
            if (l->state != IDLE || stopping) continue;
            if (max_count && started >= max_count) continue;
            started++;
            l->t0 = now();
            l->sampled = l->t0 >= window_start;
            if (lane_start(l, 0, resume) < 0) {
                if (max_count || (l->t0 >= window_start && l->t0 < window_end)) errors++;
                continue;
            }
            active++;
        }
        if (!active) break;
        /* Wake for the end of the warm-up and of the window; lanes that end
         * sessions wake the loop anyway. */
        double until = now() + 1;
        if (!max_count && !stopping && window_start > 1e299 && now() < t0 + warmup)
            until = t0 + warmup;
        else if (!max_count && !stopping && window_start < 1e299)
            until = window_end;
        int timeout = (int)((until - now()) * 1000) + 1;
        if (timeout < 0) timeout = 0;
        int n = epoll_wait(epfd, events, conc, timeout);
        if (n < 0 && errno != EINTR) die("epoll_wait");
        for (int k = 0; k < n; k++) {
            lane_t *l = events[k].data.ptr;
            if (l->state == IDLE) continue;
            step_t s = lane_step(l);
            if (s == WAIT) continue;
            double t1 = now();
            int ok = s == DONE;
            if (ok) total++;
            int i = (int)(l - lanes);
            if (!ended_once[i]) ended_once[i] = 1, warmed++;
            if (max_count || (t1 >= window_start && t1 < window_end)) {
                if (ok) done++;
                else errors++;
            }
            if (l->ssl && ok) {
                note_tls(l->ssl);
                if (l->sampled && SSL_session_reused(l->ssl)) resumed++;
            }
            if (l->sampled && ok) record(&lat, t1 - l->t0);
            lane_close(l, resume);
            active--;
        }
    }
    if (max_count) cpu1 = cpu_seconds(), wall1 = now();
    double start = max_count ? t0 : window_start;
    qsort(lat.v, (size_t)lat.n, sizeof *lat.v, cmp_double);
    double elapsed = wall1 - start;
    double p50 = lat.n ? lat.v[(long)(0.50 * (double)(lat.n - 1))] : 0;
    double p99 = lat.n ? lat.v[(long)(0.99 * (double)(lat.n - 1))] : 0;
    long counted = max_count ? lat.n : done;
    printf("{\"mode\": \"sessions\", \"sessions\": %ld, \"samples\": %ld, \"elapsed\": %.6f, "
           "\"rate\": %.3f, \"p50_ms\": %.4f, \"p99_ms\": %.4f, \"errors\": %ld, "
           "\"short_reads\": 0, \"resumed\": %ld, \"resume_kind\": \"%s\", \"total\": %ld, "
           "\"cpu\": %.6f, \"wall\": %.6f, ",
           counted, lat.n, elapsed, elapsed > 0 ? (double)counted / elapsed : 0, p50 * 1e3,
           p99 * 1e3, errors, resumed, kind, total, cpu1 - cpu0, elapsed);
    print_tls();
    printf("}\n");
    return 0;
}

/* ---- transfer */

typedef struct {
    int fd;
    SSL *ssl;
} conn_t;

static long long send_total, expect_total = -1;
static int half_close;

static int run_transfer(void) {
    static char sbuf[1 << 16], rbuf[1 << 18];
    memset(sbuf, 'x', sizeof sbuf);
    int connected;
    conn_t c = {tcp_connect(1, &connected), NULL};
    if (c.fd >= 0 && !plain) {
        c.ssl = tls_new(c.fd, NULL);
        if (SSL_connect(c.ssl) != 1) {
            tls_close(c.fd, c.ssl);
            c.fd = -1;
        }
    }
    if (c.fd < 0) {
        fprintf(stderr, "bench_client: unable to connect or handshake\n");
        return 111;
    }
    if (c.ssl) note_tls(c.ssl);
    fcntl(c.fd, F_SETFL, fcntl(c.fd, F_GETFL) | O_NONBLOCK);
    double cpu0 = cpu_seconds(), t0 = now();
    long long sent = 0, got = 0;
    int eof = 0, shut = 0, error = 0;
    while (!eof && !error) {
        int progress = 0, want_out = 0;
        for (;;) { /* drain what can be read */
            long r;
            if (c.ssl) {
                r = SSL_read(c.ssl, rbuf, sizeof rbuf);
                if (r <= 0) {
                    int e = SSL_get_error(c.ssl, (int)r);
                    ERR_clear_error();
                    if (e == SSL_ERROR_ZERO_RETURN) eof = 1;
                    else if (e == SSL_ERROR_WANT_WRITE) want_out = 1;
                    else if (e != SSL_ERROR_WANT_READ) error = 1;
                    break;
                }
            } else {
                r = read(c.fd, rbuf, sizeof rbuf);
                if (r == 0) eof = 1;
                if (r <= 0) {
                    if (r < 0 && errno != EAGAIN && errno != EINTR) error = 1;
                    break;
                }
            }
            got += r;
            progress = 1;
        }
        while (!eof && !error && sent < send_total) {
            size_t n = send_total - sent < (long long)sizeof sbuf ? (size_t)(send_total - sent)
                                                                   : sizeof sbuf;
            long w;
            if (c.ssl) {
                w = SSL_write(c.ssl, sbuf, (int)n);
                if (w <= 0) {
                    int e = SSL_get_error(c.ssl, (int)w);
                    ERR_clear_error();
                    if (e == SSL_ERROR_WANT_WRITE) want_out = 1;
                    else if (e != SSL_ERROR_WANT_READ) error = 1;
                    break;
                }
            } else {
                w = write(c.fd, sbuf, n);
                if (w < 0) {
                    if (errno == EAGAIN) want_out = 1;
                    else if (errno != EINTR) error = 1;
                    break;
                }
            }
            sent += w;
            progress = 1;
        }
        if (!eof && !error && !shut && half_close && sent == send_total) {
            if (c.ssl) {
                int r = SSL_shutdown(c.ssl);
                if (r < 0) {
                    int e = SSL_get_error(c.ssl, r);
                    ERR_clear_error();
                    if (e == SSL_ERROR_WANT_WRITE) want_out = 1;
                    else error = 1;
                }
                if (r >= 0) shut = 1;
            } else {
                shut = 1;
            }
            if (shut) {
                shutdown(c.fd, SHUT_WR);
                progress = 1;
            }
        }
        if (!progress && !eof && !error) {
            struct pollfd p = {c.fd, POLLIN | (want_out ? POLLOUT : 0), 0};
            if (poll(&p, 1, 60000) == 0) {
                fprintf(stderr, "bench_client: transfer stalled for 60 s\n");
                error = 1;
            }
        }
    }
    double t1 = now(), cpu1 = cpu_seconds();
    printf("{\"mode\": \"transfer\", \"sent\": %lld, \"received\": %lld, \"elapsed\": %.6f, "
           "\"errors\": %d, \"cpu\": %.6f, \"wall\": %.6f, ",
           sent, got, t1 - t0, error || (expect_total >= 0 && got != expect_total),
           cpu1 - cpu0, t1 - t0);
    print_tls();
    printf("}\n");
    tls_close(c.fd, c.ssl);
    return 0;
}

/* ---- idle */

static int run_idle(long count) {
    lane_t *lanes = calloc((size_t)(count ? count : 1), sizeof *lanes);
    struct epoll_event *events = calloc((size_t)conc, sizeof *events);
    long next = 0, ok = 0, errors = 0;
    int active = 0;
    while (next < count || active) {
        while (next < count && active < conc) {
            lane_t *l = &lanes[next++];
            if (lane_start(l, 2, 0) < 0) {
                l->fd = -1;
                errors++;
            } else {
                active++;
            }
        }
        int n = epoll_wait(epfd, events, conc, 60000);
        if (n < 0 && errno != EINTR) die("epoll_wait");
        if (n == 0) {
            fprintf(stderr, "bench_client: no progress opening idle sessions for 60 s\n");
            return 111;
        }
        for (int k = 0; k < n; k++) {
            lane_t *l = events[k].data.ptr;
            if (l->state == HELD || l->state == IDLE) continue;
            step_t s = lane_step(l);
            if (s == WAIT) continue;
            active--;
            if (s == DONE) {
                ok++;
                if (l->ssl) note_tls(l->ssl);
                epoll_ctl(epfd, EPOLL_CTL_DEL, l->fd, NULL);
            } else {
                errors++;
                lane_close(l, 0);
                l->fd = -1;
            }
        }
    }
    printf("{\"mode\": \"idle\", \"ready\": %ld, \"errors\": %ld, ", ok, errors);
    print_tls();
    printf("}\n");
    fflush(stdout);
    char buf[64];
    while (read(0, buf, sizeof buf) > 0) {
    }
    for (long i = 0; i < count; i++)
        if (lanes[i].fd >= 0) lane_close(&lanes[i], 0);
    return 0;
}

/* "h2,http/1.1" in ALPN's wire form (each name after its length byte); its
 * length, or 0 when a name is empty or longer than 255 bytes. */
static unsigned int alpn_wire(const char *list, unsigned char *out, size_t room) {
    size_t n = 0;
    for (const char *p = list;;) {
        const char *end = strchr(p, ',');
        size_t len = end ? (size_t)(end - p) : strlen(p);
        if (len == 0 || len > 255 || n + 1 + len > room) return 0;
        out[n++] = (unsigned char)len;
        memcpy(out + n, p, len);
        n += len;
        if (!end) return (unsigned int)n;
        p = end + 1;
    }
}

static void tls_die(const char *what, const char *file) {
    fprintf(stderr, "bench_client: %s %s: ", what, file);
    ERR_print_errors_fp(stderr);
    exit(111);
}

static void usage(void) {
    fprintf(stderr, "usage: bench_client sessions|transfer|idle HOST PORT [options]\n");
    exit(100);
}

int main(int argc, char **argv) {
    if (argc < 4) usage();
    const char *mode = argv[1];
    host = argv[2];
    port = atoi(argv[3]);
    const char *version = NULL, *alpn = NULL, *cert = NULL, *key = NULL;
    long count = 0;
    for (int i = 4; i < argc; i++) {
        const char *a = argv[i];
        const char *v = i + 1 < argc ? argv[i + 1] : NULL;
        if (!strcmp(a, "--plain")) plain = 1;
        else if (!strcmp(a, "--resume")) resume = 1;
        else if (!strcmp(a, "--half-close")) half_close = 1;
        else if (!v) usage();
        else if (!strcmp(a, "--tls-version")) version = v, i++;
        else if (!strcmp(a, "--alpn")) alpn = v, i++;
        else if (!strcmp(a, "--cert")) cert = v, i++;
        else if (!strcmp(a, "--key")) key = v, i++;
        else if (!strcmp(a, "--conc")) conc = atoi(v), i++;
        else if (!strcmp(a, "--seconds")) seconds = atof(v), i++;
        else if (!strcmp(a, "--warmup")) warmup = atof(v), i++;
        else if (!strcmp(a, "--count")) count = max_count = atol(v), i++;
        else if (!strcmp(a, "--line")) line = v, i++;
        else if (!strcmp(a, "--send")) send_total = atoll(v), i++;
        else if (!strcmp(a, "--expect")) expect_total = atoll(v), i++;
        else usage();
    }
    if (conc < 1 || !*line || !cert != !key) usage();
    signal(SIGPIPE, SIG_IGN);
    struct rlimit rl;
    if (getrlimit(RLIMIT_NOFILE, &rl) == 0) {
        rl.rlim_cur = rl.rlim_max;
        setrlimit(RLIMIT_NOFILE, &rl);
    }
    if (!plain) {
        ctx = SSL_CTX_new(TLS_client_method());
        SSL_CTX_set_verify(ctx, SSL_VERIFY_NONE, NULL);
        /* Servers that half-close with a bare FIN (s6-tlsserver -s) end cleanly. */
        SSL_CTX_set_options(ctx, SSL_OP_IGNORE_UNEXPECTED_EOF);
        SSL_CTX_set_session_cache_mode(ctx, SSL_SESS_CACHE_OFF);
        /* Whole records per read(): a third of the system calls. */
        SSL_CTX_set_read_ahead(ctx, 1);
        if (version && !strcmp(version, "1.2")) SSL_CTX_set_max_proto_version(ctx, TLS1_2_VERSION);
        if (version && !strcmp(version, "1.3")) SSL_CTX_set_min_proto_version(ctx, TLS1_3_VERSION);
        if (alpn) {
            unsigned char wire[1024];
            unsigned int len = alpn_wire(alpn, wire, sizeof wire);
            if (!len) usage();
            /* 0 on success, unlike most of OpenSSL */
            if (SSL_CTX_set_alpn_protos(ctx, wire, len) != 0) tls_die("unable to offer ALPN", alpn);
        }
        if (cert) {
            if (SSL_CTX_use_certificate_chain_file(ctx, cert) != 1)
                tls_die("unable to load the certificate", cert);
            if (SSL_CTX_use_PrivateKey_file(ctx, key, SSL_FILETYPE_PEM) != 1 ||
                SSL_CTX_check_private_key(ctx) != 1)
                tls_die("unable to load the key", key);
        }
    }
    epfd = epoll_create1(EPOLL_CLOEXEC);
    if (epfd < 0) die("epoll_create1");
    if (!strcmp(mode, "sessions")) return run_sessions();
    if (!strcmp(mode, "transfer")) return run_transfer();
    if (!strcmp(mode, "idle")) return run_idle(count);
    usage();
    return 100;
}
