/* bench_client: the load client of tools/bench, on OpenSSL, one JSON line out.
 *
 *   bench_client sessions HOST PORT [--conc N] [--seconds S] [--warmup S]
 *                [--count N] [--resume] [--line TEXT]
 *       Sessions back to back on N threads: connect, handshake, send one line,
 *       read to EOF. Rate, p50/p99 latency, how many were resumed. The window
 *       of S seconds opens after --warmup and once every thread ended a session.
 *   bench_client transfer HOST PORT [--send BYTES] [--expect BYTES] [--half-close]
 *       One session: send BYTES while reading, then (--half-close) close_notify
 *       and FIN, and read to the server's EOF; the clock runs from the end of
 *       the handshake to that EOF.
 *   bench_client idle HOST PORT --count N [--conc N]
 *       Open N sessions (on --conc threads), echo one line on each, print a
 *       "ready" line, keep them open until stdin ends, then close them.
 *
 * Common options: --plain (TCP, no TLS), --tls-version 1.2|1.3.
 * The client's own CPU time (getrusage) is reported so the bench can show
 * that the client was not the bottleneck.
 */
#define _GNU_SOURCE
#include <errno.h>
#include <fcntl.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <arpa/inet.h>
#include <poll.h>
#include <pthread.h>
#include <signal.h>
#include <limits.h>
#include <stdatomic.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
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

typedef struct {
    int fd;
    SSL *ssl;
} conn_t;

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

static int tcp_connect(void) {
    int fd = socket(AF_INET, SOCK_STREAM | SOCK_CLOEXEC, 0);
    if (fd < 0) return -1;
    int one = 1;
    /* The client never delays its own segments: Nagle is the server's business. */
    setsockopt(fd, IPPROTO_TCP, TCP_NODELAY, &one, sizeof one);
    struct sockaddr_in sa = {.sin_family = AF_INET, .sin_port = htons(port)};
    inet_pton(AF_INET, host, &sa.sin_addr);
    if (connect(fd, (struct sockaddr *)&sa, sizeof sa) < 0) {
        close(fd);
        return -1;
    }
    return fd;
}

/* Connect and handshake (blocking). 0 on success. */
static int conn_open(conn_t *c, SSL_SESSION *session) {
    c->ssl = NULL;
    c->fd = tcp_connect();
    if (c->fd < 0) return -1;
    if (plain) return 0;
    c->ssl = SSL_new(ctx);
    SSL_set_fd(c->ssl, c->fd);
    SSL_set_tlsext_host_name(c->ssl, "localhost");
    if (session) SSL_set_session(c->ssl, session);
    if (SSL_connect(c->ssl) != 1) {
        SSL_free(c->ssl);
        c->ssl = NULL;
        close(c->fd);
        return -1;
    }
    return 0;
}

static void conn_close(conn_t *c) {
    if (c->ssl) {
        /* Count the session as properly ended (keeps it resumable), send nothing. */
        SSL_set_shutdown(c->ssl, SSL_SENT_SHUTDOWN | SSL_RECEIVED_SHUTDOWN);
        SSL_free(c->ssl);
    }
    if (c->fd >= 0) close(c->fd);
    c->ssl = NULL;
    c->fd = -1;
}

/* Blocking read: >0 bytes, 0 at EOF (close_notify or FIN), -1 on error. */
static long conn_read(conn_t *c, char *buf, size_t n) {
    if (!c->ssl) {
        ssize_t r;
        do r = read(c->fd, buf, n);
        while (r < 0 && errno == EINTR);
        return r;
    }
    int r = SSL_read(c->ssl, buf, (int)n);
    if (r > 0) return r;
    int e = SSL_get_error(c->ssl, r);
    ERR_clear_error();
    return e == SSL_ERROR_ZERO_RETURN ? 0 : -1;
}

static int conn_write_all(conn_t *c, const char *buf, size_t n) {
    while (n) {
        long w;
        if (c->ssl) {
            w = SSL_write(c->ssl, buf, (int)n);
            if (w <= 0) return -1;
        } else {
            w = write(c->fd, buf, n);
            if (w < 0 && errno == EINTR) continue;
            if (w <= 0) return -1;
        }
        buf += w;
        n -= (size_t)w;
    }
    return 0;
}

static const char *resume_kind(SSL *ssl) {
    if (SSL_version(ssl) == TLS1_3_VERSION) return "TLSv1.3 ticket";
    SSL_SESSION *s = SSL_get_session(ssl);
    return s && SSL_SESSION_has_ticket(s) ? "TLSv1.2 ticket" : "TLSv1.2 session id";
}

static void print_tls(SSL *ssl) {
    if (!ssl) {
        printf("\"protocol\": \"TCP\", \"cipher\": \"-\"");
        return;
    }
    printf("\"protocol\": \"%s\", \"cipher\": \"%s\"", SSL_get_version(ssl),
           SSL_CIPHER_get_name(SSL_get_current_cipher(ssl)));
}

/* ---- sessions */

static int conc = 1;
static double seconds = 1.0, warmup = 0.0;
static long max_count = 0;
static int resume;
static const char *line = "s6tls bench\n";
/* The measuring window, in ns of CLOCK_MONOTONIC; set by the main thread once
 * warm (both start unreachable). */
static atomic_llong window_start = LLONG_MAX, window_end = LLONG_MAX;
static atomic_int warmed_threads;
static atomic_long started;

static pthread_mutex_t first_lock = PTHREAD_MUTEX_INITIALIZER;
static char first_protocol[64] = "", first_cipher[128] = "", kind[64] = "";

typedef struct {
    double *lat;
    long n, cap;
    long done;   /* sessions that ended in the window */
    long errors, resumed, short_reads;
    long total; /* completed sessions, warm-up and tail included */
} worker_t;

static void record(worker_t *w, double latency) {
    if (w->n == w->cap) {
        w->cap = w->cap ? w->cap * 2 : 1024;
        w->lat = realloc(w->lat, (size_t)w->cap * sizeof *w->lat);
        if (!w->lat) die("realloc");
    }
    w->lat[w->n++] = latency;
}

static long long ns(double t) { return (long long)(t * 1e9); }

/* Within the measuring window: a session counts towards the rate when it ends
 * inside the window, and gives a latency sample when it starts inside it (it is
 * finished after the window if need be, so long sessions are not censored).
 * With --count, every session counts. */
static void *session_worker(void *arg) {
    worker_t *w = arg;
    SSL_SESSION *session = NULL;
    size_t want = strlen(line);
    char buf[4096];
    int warmed = 0;
    for (;;) {
        double t0 = now();
        if (ns(t0) >= atomic_load(&window_end)) break;
        if (max_count && atomic_fetch_add(&started, 1) >= max_count) break;
        int sampled = max_count || ns(t0) >= atomic_load(&window_start);
        conn_t c;
        int failed = conn_open(&c, resume ? session : NULL) < 0;
        size_t got = 0;
        long r = -1;
        if (!failed && conn_write_all(&c, line, want) == 0)
            while ((r = conn_read(&c, buf, sizeof buf)) > 0) got += (size_t)r;
        double t1 = now();
        int ok = !failed && r == 0 && got == want;
        if (ok) w->total++;
        if (!warmed) {
            warmed = 1;
            atomic_fetch_add(&warmed_threads, 1);
        }
        long long end_ns = ns(t1);
        if (max_count ||
            (end_ns >= atomic_load(&window_start) && end_ns < atomic_load(&window_end))) {
            if (ok) w->done++;
            else if (failed || r < 0) w->errors++;
            else w->short_reads++;
        }
        if (sampled && ok) {
            record(w, t1 - t0);
            if (c.ssl && SSL_session_reused(c.ssl)) w->resumed++;
        }
        if (failed) continue;
        if (c.ssl) {
            pthread_mutex_lock(&first_lock);
            if (!first_protocol[0]) {
                snprintf(first_protocol, sizeof first_protocol, "%s", SSL_get_version(c.ssl));
                snprintf(first_cipher, sizeof first_cipher, "%s",
                         SSL_CIPHER_get_name(SSL_get_current_cipher(c.ssl)));
            }
            if (!kind[0] && SSL_session_reused(c.ssl))
                snprintf(kind, sizeof kind, "%s", resume_kind(c.ssl));
            pthread_mutex_unlock(&first_lock);
            if (resume) {
                SSL_SESSION *next = SSL_get1_session(c.ssl);
                if (next) {
                    if (session) SSL_SESSION_free(session);
                    session = next;
                }
            }
        }
        conn_close(&c);
    }
    if (session) SSL_SESSION_free(session);
    return NULL;
}

static void sleep_until(double t) {
    double d = t - now();
    if (d <= 0) return;
    struct timespec ts = {(time_t)d, (long)((d - (double)(time_t)d) * 1e9)};
    while (nanosleep(&ts, &ts) < 0 && errno == EINTR) {
    }
}

static int cmp_double(const void *a, const void *b) {
    double x = *(const double *)a, y = *(const double *)b;
    return (x > y) - (x < y);
}

static int run_sessions(void) {
    pthread_t *threads = calloc((size_t)conc, sizeof *threads);
    worker_t *workers = calloc((size_t)conc, sizeof *workers);
    double t0 = now();
    for (int i = 0; i < conc; i++)
        if (pthread_create(&threads[i], NULL, session_worker, &workers[i]) != 0)
            die("pthread_create");
    double cpu0, wall0, cpu1, wall1;
    if (max_count) {
        cpu0 = cpu_seconds(), wall0 = t0;
        for (int i = 0; i < conc; i++) pthread_join(threads[i], NULL);
        cpu1 = cpu_seconds(), wall1 = now();
    } else {
        /* Warm: the warm-up time is over and every thread has ended a session
         * (at high concurrency the first wave alone takes a while). */
        sleep_until(t0 + warmup);
        while (atomic_load(&warmed_threads) < conc && now() < t0 + warmup + 30)
            sleep_until(now() + 0.005);
        cpu0 = cpu_seconds(), wall0 = now();
        atomic_store(&window_start, ns(wall0));
        atomic_store(&window_end, ns(wall0 + seconds));
        sleep_until(wall0 + seconds);
        cpu1 = cpu_seconds(), wall1 = now();
        /* Sessions still running finish, so the server is left clean. */
        for (int i = 0; i < conc; i++) pthread_join(threads[i], NULL);
    }

    long n = 0, done = 0, errors = 0, resumed = 0, short_reads = 0, total = 0;
    for (int i = 0; i < conc; i++) {
        n += workers[i].n;
        done += workers[i].done;
        errors += workers[i].errors;
        resumed += workers[i].resumed;
        short_reads += workers[i].short_reads;
        total += workers[i].total;
    }
    double *all = malloc((size_t)(n ? n : 1) * sizeof *all);
    long k = 0;
    for (int i = 0; i < conc; i++) {
        memcpy(all + k, workers[i].lat, (size_t)workers[i].n * sizeof *all);
        k += workers[i].n;
        free(workers[i].lat);
    }
    qsort(all, (size_t)n, sizeof *all, cmp_double);
    double elapsed = wall1 - wall0;
    double p50 = n ? all[(long)(0.50 * (double)(n - 1))] : 0;
    double p99 = n ? all[(long)(0.99 * (double)(n - 1))] : 0;
    printf("{\"mode\": \"sessions\", \"sessions\": %ld, \"samples\": %ld, \"elapsed\": %.6f, "
           "\"rate\": %.3f, "
           "\"p50_ms\": %.4f, \"p99_ms\": %.4f, \"errors\": %ld, \"short_reads\": %ld, "
           "\"resumed\": %ld, \"resume_kind\": \"%s\", \"total\": %ld, \"cpu\": %.6f, "
           "\"wall\": %.6f, ",
           max_count ? n : done, n, elapsed,
           elapsed > 0 ? (double)(max_count ? n : done) / elapsed : 0, p50 * 1e3, p99 * 1e3, errors,
           short_reads, resumed, kind, total, cpu1 - cpu0, wall1 - wall0);
    if (plain) printf("\"protocol\": \"TCP\", \"cipher\": \"-\"}\n");
    else printf("\"protocol\": \"%s\", \"cipher\": \"%s\"}\n", first_protocol, first_cipher);
    free(all);
    free(threads);
    free(workers);
    return 0;
}

/* ---- transfer */

static long long send_total, expect_total = -1;
static int half_close;

static int run_transfer(void) {
    static char sbuf[1 << 16], rbuf[1 << 18];
    memset(sbuf, 'x', sizeof sbuf);
    conn_t c;
    if (conn_open(&c, NULL) < 0) {
        fprintf(stderr, "bench_client: unable to connect or handshake\n");
        return 111;
    }
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
    print_tls(c.ssl);
    printf("}\n");
    conn_close(&c);
    return 0;
}

/* ---- idle */

typedef struct {
    conn_t *conns;
    long from, to, ok, errors;
} opener_t;

/* Open conns[from..to), each with one line there and back: prog runs, the relay is set up. */
static void *open_idle(void *arg) {
    opener_t *o = arg;
    char buf[8];
    for (long i = o->from; i < o->to; i++) {
        conn_t *c = &o->conns[i];
        if (conn_open(c, NULL) < 0) {
            c->fd = -1;
            o->errors++;
            continue;
        }
        size_t got = 0;
        if (conn_write_all(c, "x\n", 2) == 0)
            while (got < 2) {
                long r = conn_read(c, buf + got, 2 - got);
                if (r <= 0) break;
                got += (size_t)r;
            }
        if (got == 2) o->ok++;
        else o->errors++;
    }
    return NULL;
}

static int run_idle(long count) {
    conn_t *conns = calloc((size_t)(count ? count : 1), sizeof *conns);
    int n = count < conc ? (int)(count ? count : 1) : conc;
    pthread_t *threads = calloc((size_t)n, sizeof *threads);
    opener_t *openers = calloc((size_t)n, sizeof *openers);
    for (int t = 0; t < n; t++) {
        openers[t] = (opener_t){conns, count * t / n, count * (t + 1) / n, 0, 0};
        if (pthread_create(&threads[t], NULL, open_idle, &openers[t]) != 0) die("pthread_create");
    }
    long ok = 0, errors = 0;
    for (int t = 0; t < n; t++) {
        pthread_join(threads[t], NULL);
        ok += openers[t].ok;
        errors += openers[t].errors;
    }
    printf("{\"mode\": \"idle\", \"ready\": %ld, \"errors\": %ld, ", ok, errors);
    SSL *any = NULL;
    for (long i = 0; i < count && !any; i++) any = conns[i].fd >= 0 ? conns[i].ssl : NULL;
    print_tls(any);
    printf("}\n");
    fflush(stdout);
    char buf[64];
    while (read(0, buf, sizeof buf) > 0) {
    }
    for (long i = 0; i < count; i++)
        if (conns[i].fd >= 0) conn_close(&conns[i]);
    free(conns);
    free(threads);
    free(openers);
    return 0;
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
    const char *version = NULL;
    long count = 0;
    for (int i = 4; i < argc; i++) {
        const char *a = argv[i];
        const char *v = i + 1 < argc ? argv[i + 1] : NULL;
        if (!strcmp(a, "--plain")) plain = 1;
        else if (!strcmp(a, "--resume")) resume = 1;
        else if (!strcmp(a, "--half-close")) half_close = 1;
        else if (!v) usage();
        else if (!strcmp(a, "--tls-version")) version = v, i++;
        else if (!strcmp(a, "--conc")) conc = atoi(v), i++;
        else if (!strcmp(a, "--seconds")) seconds = atof(v), i++;
        else if (!strcmp(a, "--warmup")) warmup = atof(v), i++;
        else if (!strcmp(a, "--count")) count = max_count = atol(v), i++;
        else if (!strcmp(a, "--line")) line = v, i++;
        else if (!strcmp(a, "--send")) send_total = atoll(v), i++;
        else if (!strcmp(a, "--expect")) expect_total = atoll(v), i++;
        else usage();
    }
    if (conc < 1) usage();
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
        if (version && !strcmp(version, "1.2")) SSL_CTX_set_max_proto_version(ctx, TLS1_2_VERSION);
        if (version && !strcmp(version, "1.3")) SSL_CTX_set_min_proto_version(ctx, TLS1_3_VERSION);
    }
    if (!strcmp(mode, "sessions")) {
        if (max_count) seconds = 1e9;
        return run_sessions();
    }
    if (!strcmp(mode, "transfer")) return run_transfer();
    if (!strcmp(mode, "idle")) return run_idle(count);
    usage();
    return 100;
}
