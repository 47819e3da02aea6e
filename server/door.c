/* The front door: the server's own listening socket and accept loop, ahead
 * of libmicrohttpd, and the table of every open connection (caps in all and
 * per address, longest idle closed first, absolute deadlines). A connection
 * waits here until its first request head is in, screened (http_head.c),
 * then goes to libmicrohttpd, which reports each request's phases back. */
#include <errno.h>
#include <netinet/in.h>
#include <pthread.h>
#include <stdio.h>
#include <sys/epoll.h>
#include <sys/eventfd.h>
#include <sys/resource.h>
#include <unistd.h>

#include "base/util.h"
#include "server/http_head.h"
#include "server/server_internal.h"

#define DOOR_HEAD_MAX 8192      /* a first request head, at most (8 KiB; libmicrohttpd parses it in 32 KiB) */
#define DOOR_LINGER_S 2.0       /* seconds a refused connection is drained before it is closed */
#define DOOR_LINGER_BYTES (1u << 20)
#define DOOR_FD_RESERVE 256     /* descriptors kept for the model, the tables, io_uring, epoll, logs */
#define DOOR_FD_TARGET 65536    /* the soft descriptor limit is raised up to this (or the hard limit) */

/* HEAD and LINGER are held by the door; BODY, WORK, IDLE and CLOSING by
 * libmicrohttpd. HEAD, LINGER and IDLE are idle: on the idle list, whose
 * oldest is closed for a newcomer when a cap is reached (a newcomer is
 * refused only when none is idle). The deadlines are absolute, so a trickle
 * of bytes cannot extend them: a first head within min(--request-timeout,
 * --connection-timeout) of the accept, a body within --request-timeout of its
 * head, the next request within --connection-timeout of the last response.
 * The head is read with MSG_PEEK, so libmicrohttpd then reads the same bytes;
 * a refused head gets our own one reply (libmicrohttpd 0.9.75 writes its
 * status line twice for a Content-Length it cannot parse) and a lingering
 * close, so the client reads the reply instead of a reset. */
typedef enum { SLOT_FREE, SLOT_HEAD, SLOT_LINGER, SLOT_BODY, SLOT_WORK, SLOT_IDLE, SLOT_CLOSING } slot_phase;

/* An open connection, indexed by its fd. */
typedef struct {
    slot_phase phase;
    double deadline; /* util_now() seconds by which the phase must end (0: never) */
    int prev, next;  /* the idle list, oldest first (-1: none) */
    size_t drained;  /* bytes read and dropped while lingering */
    struct sockaddr_storage addr;
    socklen_t alen;
} slot;

/* Open connections per client address (count 0: an empty entry). */
typedef struct {
    unsigned char key[16]; /* IPv6, or IPv4 mapped */
    int count;
} ip_entry;

struct door {
    server *s;                /* borrowed */
    struct MHD_Daemon *d;     /* borrowed: where screened connections go */
    int lfd, ep, wake;        /* listening socket, epoll, eventfd that stops the thread */
    pthread_t thread;
    bool running;
    bool accept_off;          /* the listening socket is not watched (out of descriptors) */
    pthread_mutex_t mu;       /* the table: the door thread and libmicrohttpd's threads */
    slot *slots;              /* (n_slots) by fd: the descriptor limit */
    int n_slots;
    int idle_head, idle_tail;
    int n_open, n_closing;    /* slots not FREE; of them CLOSING (shut, not yet closed by libmicrohttpd) */
    ip_entry *ips;            /* (ip_cap, a power of two) linear probing */
    size_t ip_cap;
    door_limits lim;
    char peek[DOOR_HEAD_MAX]; /* the head of the connection being screened */
};

/* ---- the per-address counts ---- */

static void ip_key(const struct sockaddr_storage *a, unsigned char key[16]) {
    memset(key, 0, 16);
    if (a->ss_family == AF_INET6) {
        memcpy(key, &((const struct sockaddr_in6 *)a)->sin6_addr, 16);
    } else if (a->ss_family == AF_INET) {
        key[10] = key[11] = 0xff; /* ::ffff:a.b.c.d, as the IPv6 socket would see it */
        memcpy(key + 12, &((const struct sockaddr_in *)a)->sin_addr, 4);
    }
}

static size_t ip_hash(const unsigned char key[16], size_t cap) {
    return (size_t)util_fnv1a(UTIL_FNV1A_INIT, key, 16) & (cap - 1);
}

/* The entry of key, or where it would go. */
static size_t ip_find(door *dr, const unsigned char key[16]) {
    size_t i = ip_hash(key, dr->ip_cap);
    while (dr->ips[i].count && memcmp(dr->ips[i].key, key, 16)) i = (i + 1) & (dr->ip_cap - 1);
    return i;
}

static int ip_count(door *dr, const unsigned char key[16]) { return dr->ips[ip_find(dr, key)].count; }

static void ip_add(door *dr, const unsigned char key[16], int delta) {
    size_t i = ip_find(dr, key), cap = dr->ip_cap;
    memcpy(dr->ips[i].key, key, 16);
    if ((dr->ips[i].count += delta) > 0) return;
    dr->ips[i].count = 0; /* emptied: shift later entries of the run back (no tombstones) */
    for (size_t j = (i + 1) & (cap - 1); dr->ips[j].count; j = (j + 1) & (cap - 1)) {
        size_t home = ip_hash(dr->ips[j].key, cap);
        if (((j - home) & (cap - 1)) >= ((j - i) & (cap - 1))) { /* home not in (i, j]: it may move to i */
            dr->ips[i] = dr->ips[j];
            dr->ips[j].count = 0;
            i = j;
        }
    }
}

/* ---- slots ---- */

static bool is_idle(slot_phase p) { return p == SLOT_HEAD || p == SLOT_LINGER || p == SLOT_IDLE; }

static void idle_unlink(door *dr, int fd) {
    slot *x = &dr->slots[fd];
    if (x->prev >= 0) dr->slots[x->prev].next = x->next;
    else dr->idle_head = x->next;
    if (x->next >= 0) dr->slots[x->next].prev = x->prev;
    else dr->idle_tail = x->prev;
    x->prev = x->next = -1;
}

/* Moves fd to phase p with deadline (0: none), keeping the idle list. */
static void slot_set(door *dr, int fd, slot_phase p, double deadline) {
    slot *x = &dr->slots[fd];
    if (is_idle(x->phase)) idle_unlink(dr, fd);
    if (p == SLOT_CLOSING && x->phase != SLOT_CLOSING) dr->n_closing++;
    x->phase = p;
    x->deadline = deadline;
    if (is_idle(p)) { /* newest last */
        x->prev = dr->idle_tail;
        x->next = -1;
        if (dr->idle_tail >= 0) dr->slots[dr->idle_tail].next = fd;
        else dr->idle_head = fd;
        dr->idle_tail = fd;
    }
}

static void slot_free(door *dr, int fd) {
    slot *x = &dr->slots[fd];
    if (x->phase == SLOT_FREE) return;
    if (is_idle(x->phase)) idle_unlink(dr, fd);
    if (x->phase == SLOT_CLOSING) dr->n_closing--;
    unsigned char key[16];
    ip_key(&x->addr, key);
    ip_add(dr, key, -1);
    dr->n_open--;
    x->phase = SLOT_FREE;
    metrics_connections_open(dr->s->mx, dr->n_open);
}

/* Closes a connection the door holds. */
static void door_drop(door *dr, int fd) {
    epoll_ctl(dr->ep, EPOLL_CTL_DEL, fd, NULL);
    slot_free(dr, fd);
    close(fd);
}

/* Ends a connection, whoever holds it: the door closes its own; one of
 * libmicrohttpd's is shut (it sees the end and closes it, then door_event
 * frees the slot: the fd cannot be reused before, so the shutdown never
 * hits another connection). */
static void slot_end(door *dr, int fd) {
    slot *x = &dr->slots[fd];
    if (x->phase == SLOT_HEAD || x->phase == SLOT_LINGER) {
        door_drop(dr, fd);
    } else if (x->phase != SLOT_CLOSING && x->phase != SLOT_FREE) {
        shutdown(fd, SHUT_RDWR);
        slot_set(dr, fd, SLOT_CLOSING, 0);
    }
}

/* Closes the longest idle connection (of the address key, when given).
 * Returns whether there was one. */
static bool evict(door *dr, const unsigned char *key) {
    for (int fd = dr->idle_head; fd >= 0; fd = dr->slots[fd].next) {
        unsigned char k[16];
        ip_key(&dr->slots[fd].addr, k);
        if (key && memcmp(k, key, 16)) continue;
        slot_end(dr, fd);
        metrics_connection(dr->s->mx, METRICS_CONN_EVICTED);
        return true;
    }
    return false;
}

/* ---- replies the door writes itself ---- */

static const char *status_text(int status) {
    switch (status) {
    case 400: return "Bad Request";
    case 431: return "Request Header Fields Too Large";
    case 503: return "Service Unavailable";
    case 505: return "HTTP Version Not Supported";
    default: return "Error";
    }
}

/* One JSON error reply with Connection: close, small enough for the empty
 * send buffer of a new socket; an access log line for it (the head unread:
 * no method, no route, no request id). */
static void send_error(door *dr, int fd, const struct sockaddr_storage *addr, int status, const char *why) {
    double t0 = util_now();
    api_error err;
    api_error_set(&err, status, NULL, "%s", why);
    char *body = errors_json(&err);
    char head[256];
    int hl = snprintf(head, sizeof(head),
                      "HTTP/1.1 %d %s\r\nContent-Type: application/json\r\nContent-Length: %zu\r\nConnection: close\r\n%s\r\n",
                      status, status_text(status), body ? strlen(body) : 0, status == 503 ? "Retry-After: 1\r\n" : "");
    if (send(fd, head, (size_t)hl, MSG_NOSIGNAL | MSG_DONTWAIT | (body ? MSG_MORE : 0)) == hl && body)
        (void)!send(fd, body, strlen(body), MSG_NOSIGNAL | MSG_DONTWAIT);
    if (dr->s->access_fd >= 0) {
        char client[64];
        http_addr_str((const struct sockaddr *)addr, client, sizeof(client));
        server_access a = {.request_id = "-", .client = client, .method = "-", .route = "-", .status = status,
                           .bytes = body ? strlen(body) : 0, .seconds = util_now() - t0, .end = "refused"};
        server_access_write(dr->s->access_fd, &a);
    }
    free(body);
    metrics_http(dr->s->mx, "other", status);
}

/* Refuses the head of fd: the peeked bytes (n) are read off, the reply is
 * written, our side is shut, and what the client still sends is drained for
 * a while (a close with unread bytes would reset the connection and could
 * destroy the reply in flight). */
static void refuse(door *dr, int fd, size_t n, int status, const char *why) {
    while (n) { /* the bytes were peeked: they are there */
        ssize_t r = recv(fd, dr->peek, n < sizeof(dr->peek) ? n : sizeof(dr->peek), MSG_DONTWAIT);
        if (r <= 0) break;
        n -= (size_t)r;
    }
    send_error(dr, fd, &dr->slots[fd].addr, status, why);
    shutdown(fd, SHUT_WR);
    dr->slots[fd].drained = 0;
    slot_set(dr, fd, SLOT_LINGER, util_now() + DOOR_LINGER_S);
}

/* Reads and drops what a refused client still sends; closes at its end. */
static void linger(door *dr, int fd) {
    slot *x = &dr->slots[fd];
    for (;;) {
        ssize_t r = recv(fd, dr->peek, sizeof(dr->peek), MSG_DONTWAIT);
        if (r > 0 && (x->drained += (size_t)r) <= DOOR_LINGER_BYTES) continue;
        if (r < 0 && (errno == EAGAIN || errno == EWOULDBLOCK)) return;
        if (r < 0 && errno == EINTR) continue;
        door_drop(dr, fd); /* the client's end, an error, or enough */
        return;
    }
}

/* ---- screening and hand-over ---- */

/* Hands fd to libmicrohttpd; the body must follow its head within
 * --request-timeout. Called with mu held; drops it around the call. */
static void hand_over(door *dr, int fd) {
    slot *x = &dr->slots[fd];
    epoll_ctl(dr->ep, EPOLL_CTL_DEL, fd, NULL);
    slot_set(dr, fd, SLOT_BODY, util_now() + dr->lim.request_timeout);
    struct sockaddr_storage addr = x->addr;
    socklen_t alen = x->alen;
    pthread_mutex_unlock(&dr->mu); /* libmicrohttpd's threads report to door_event */
    bool ok = MHD_add_connection(dr->d, fd, (const struct sockaddr *)&addr, alen) == MHD_YES;
    int e = errno;
    pthread_mutex_lock(&dr->mu);
    if (!ok) { /* libmicrohttpd has closed it; no event will come */
        slot_free(dr, fd);
        server_log_at(SERVER_LOG_WARN, "a connection could not be handed to libmicrohttpd: %s", strerror(e));
    }
}

/* New bytes on a connection waiting for its head: screen what is there. */
static void screen(door *dr, int fd) {
    ssize_t n = recv(fd, dr->peek, sizeof(dr->peek), MSG_PEEK | MSG_DONTWAIT);
    if (n < 0 && (errno == EAGAIN || errno == EWOULDBLOCK || errno == EINTR)) return;
    if (n <= 0) { /* gone before a whole head */
        door_drop(dr, fd);
        return;
    }
    http_head h;
    switch (http_head_scan(dr->peek, (size_t)n, sizeof(dr->peek), &h)) {
    case HTTP_HEAD_INCOMPLETE: return; /* the next bytes come as a new edge */
    case HTTP_HEAD_OK: hand_over(dr, fd); return;
    case HTTP_HEAD_FRAMING: refuse(dr, fd, (size_t)n, 400, h.framing.why); return;
    case HTTP_HEAD_TOO_LARGE:
        refuse(dr, fd, (size_t)n, 431, "The request head is larger than the limit of 8 KiB.");
        return;
    case HTTP_HEAD_VERSION: refuse(dr, fd, (size_t)n, 505, "Only HTTP/1.0 and HTTP/1.1 are served."); return;
    case HTTP_HEAD_BAD: break;
    }
    refuse(dr, fd, (size_t)n, 400, "The request line or a header line is malformed (or holds a control byte).");
}

/* Whether a newcomer from key may be let in: the caps, after closing the
 * longest idle connection (of that address for its own cap) when one is
 * reached. Otherwise the reason is counted and false returned. */
static bool admit(door *dr, const unsigned char key[16], const char **why) {
    if (dr->n_open - dr->n_closing >= dr->lim.max_connections && !evict(dr, NULL)) {
        metrics_connection(dr->s->mx, METRICS_CONN_REFUSED_TOTAL);
        *why = "The server has reached its connection limit (--max-connections); try again shortly.";
        return false;
    }
    if (ip_count(dr, key) >= dr->lim.max_connections_per_ip && !evict(dr, key)) {
        metrics_connection(dr->s->mx, METRICS_CONN_REFUSED_PER_IP);
        *why = "This address has reached its connection limit (--max-connections-per-ip); try again shortly.";
        return false;
    }
    return true;
}

/* Takes every connection waiting in the listen queue. */
static void accept_all(door *dr) {
    for (;;) {
        struct sockaddr_storage addr;
        socklen_t alen = sizeof(addr);
        int fd = accept4(dr->lfd, (struct sockaddr *)&addr, &alen, SOCK_NONBLOCK | SOCK_CLOEXEC);
        if (fd < 0) {
            if (errno == EINTR || errno == ECONNABORTED) continue;
            if (errno == EMFILE || errno == ENFILE) { /* out of descriptors: rest until the next sweep */
                server_log_at(SERVER_LOG_WARN, "accept: %s", strerror(errno));
                struct epoll_event off = {.events = 0, .data.fd = dr->lfd};
                dr->accept_off = epoll_ctl(dr->ep, EPOLL_CTL_MOD, dr->lfd, &off) == 0;
            }
            return;
        }
        if (fd >= dr->n_slots) { /* not possible below the descriptor limit the table is sized by */
            close(fd);
            continue;
        }
        if (dr->slots[fd].phase != SLOT_FREE) /* closed by libmicrohttpd without an event: stale */
            slot_free(dr, fd);
        unsigned char key[16];
        ip_key(&addr, key);
        const char *why;
        if (!admit(dr, key, &why)) {
            send_error(dr, fd, &addr, 503, why);
            close(fd);
            continue;
        }
        struct epoll_event ev = {.events = EPOLLIN | EPOLLRDHUP | EPOLLET, .data.fd = fd};
        if (epoll_ctl(dr->ep, EPOLL_CTL_ADD, fd, &ev) != 0) {
            close(fd);
            continue;
        }
        slot *x = &dr->slots[fd];
        x->addr = addr;
        x->alen = alen;
        x->prev = x->next = -1;
        ip_add(dr, key, 1);
        dr->n_open++;
        metrics_connections_open(dr->s->mx, dr->n_open);
        double wait = dr->lim.request_timeout < dr->lim.idle_timeout ? dr->lim.request_timeout : dr->lim.idle_timeout;
        slot_set(dr, fd, SLOT_HEAD, util_now() + wait);
        screen(dr, fd); /* the head may be there already */
    }
}

/* Ends what is past its deadline: a head or a body not in, a kept-alive
 * connection idle too long, a linger over. */
static void sweep(door *dr) {
    double now = util_now();
    struct epoll_event on = {.events = EPOLLIN, .data.fd = dr->lfd};
    if (dr->accept_off && epoll_ctl(dr->ep, EPOLL_CTL_MOD, dr->lfd, &on) == 0) dr->accept_off = false;
    for (int fd = 0; fd < dr->n_slots && dr->n_open; fd++) {
        slot *x = &dr->slots[fd];
        if (x->phase == SLOT_FREE || x->phase == SLOT_CLOSING || !x->deadline || now < x->deadline) continue;
        if (x->phase == SLOT_HEAD || x->phase == SLOT_BODY)
            metrics_connection(dr->s->mx, METRICS_CONN_REQUEST_TIMEOUT);
        else if (x->phase == SLOT_IDLE)
            metrics_connection(dr->s->mx, METRICS_CONN_IDLE_TIMEOUT);
        slot_end(dr, fd);
    }
}

static void *door_main(void *arg) {
    door *dr = arg;
    struct epoll_event evs[64];
    double next_sweep = util_now() + 0.25;
    for (;;) {
        int n = epoll_wait(dr->ep, evs, 64, 250);
        pthread_mutex_lock(&dr->mu);
        for (int i = 0; i < n; i++) {
            int fd = evs[i].data.fd;
            if (fd == dr->wake) {
                pthread_mutex_unlock(&dr->mu);
                return NULL;
            }
            if (fd == dr->lfd) accept_all(dr);
            else if (fd < dr->n_slots && dr->slots[fd].phase == SLOT_HEAD) screen(dr, fd);
            else if (fd < dr->n_slots && dr->slots[fd].phase == SLOT_LINGER) linger(dr, fd);
        }
        if (util_now() >= next_sweep) {
            sweep(dr);
            next_sweep = util_now() + 0.25;
        }
        pthread_mutex_unlock(&dr->mu);
    }
}

/* ---- libmicrohttpd's side ---- */

void door_event(door *dr, int fd, door_event_kind ev) {
    if (!dr || fd < 0 || fd >= dr->n_slots) return;
    pthread_mutex_lock(&dr->mu);
    slot *x = &dr->slots[fd];
    bool held = x->phase == SLOT_BODY || x->phase == SLOT_WORK || x->phase == SLOT_IDLE || x->phase == SLOT_CLOSING;
    if (held && ev == DOOR_CLOSED) slot_free(dr, fd);
    else if (held && x->phase != SLOT_CLOSING) {
        double now = util_now();
        if (ev == DOOR_HEAD && x->phase == SLOT_IDLE) slot_set(dr, fd, SLOT_BODY, now + dr->lim.request_timeout);
        else if (ev == DOOR_BODY) slot_set(dr, fd, SLOT_WORK, 0);
        else if (ev == DOOR_DONE) slot_set(dr, fd, SLOT_IDLE, now + dr->lim.idle_timeout);
    }
    pthread_mutex_unlock(&dr->mu);
}

/* ---- setup ---- */

/* The descriptor limit, raised to the hard limit (at most DOOR_FD_TARGET):
 * what servers do, so that the caps' defaults can be useful. */
static int fd_limit(void) {
    struct rlimit rl;
    if (getrlimit(RLIMIT_NOFILE, &rl) != 0) return 1024;
    rlim_t want = rl.rlim_max == RLIM_INFINITY || rl.rlim_max > DOOR_FD_TARGET ? DOOR_FD_TARGET : rl.rlim_max;
    if (rl.rlim_cur != RLIM_INFINITY && rl.rlim_cur < want) {
        rlim_t cur = rl.rlim_cur;
        rl.rlim_cur = want;
        if (setrlimit(RLIMIT_NOFILE, &rl) != 0) rl.rlim_cur = cur;
    }
    return rl.rlim_cur == RLIM_INFINITY || rl.rlim_cur > DOOR_FD_TARGET ? DOOR_FD_TARGET : (int)rl.rlim_cur;
}

/* The caps from the descriptor limit where the params leave them 0. */
static int limits_resolve(door *dr, char *err, size_t errlen) {
    const server_params *p = &dr->s->p;
    int room = dr->n_slots - DOOR_FD_RESERVE;
    if (room < 16) room = 16;
    dr->lim.max_connections = p->max_connections > 0 ? p->max_connections : room;
    if (dr->lim.max_connections > room) {
        snprintf(err, errlen, "--max-connections %d is more than the descriptor limit allows (%d: %d less %d kept "
                 "for the rest; raise ulimit -n)", p->max_connections, room, dr->n_slots, DOOR_FD_RESERVE);
        return -1;
    }
    int per_ip = p->max_connections_per_ip > 0 ? p->max_connections_per_ip : (dr->lim.max_connections + 1) / 2;
    dr->lim.max_connections_per_ip = per_ip < dr->lim.max_connections ? per_ip : dr->lim.max_connections;
    dr->lim.request_timeout = p->request_timeout > 0 ? p->request_timeout : 60;
    dr->lim.idle_timeout = p->connection_timeout > 0 ? p->connection_timeout : 300;
    return 0;
}

int door_open(server *s, const struct sockaddr *addr, socklen_t alen, door **out, char *err, size_t errlen) {
    door *dr = calloc(1, sizeof(*dr));
    *out = NULL;
    if (!dr) {
        snprintf(err, errlen, "out of memory");
        return -1;
    }
    dr->s = s;
    dr->lfd = dr->ep = dr->wake = -1;
    dr->idle_head = dr->idle_tail = -1;
    pthread_mutex_init(&dr->mu, NULL);
    dr->n_slots = fd_limit();
    for (dr->ip_cap = 64; dr->ip_cap < 2 * (size_t)dr->n_slots;) dr->ip_cap *= 2;
    dr->slots = calloc((size_t)dr->n_slots, sizeof(*dr->slots)); /* pages touched as descriptors are used */
    dr->ips = calloc(dr->ip_cap, sizeof(*dr->ips));
    if (!dr->slots || !dr->ips) {
        snprintf(err, errlen, "out of memory");
        goto fail;
    }
    if (limits_resolve(dr, err, errlen)) goto fail;
    int one = 1;
    dr->lfd = socket(addr->sa_family, SOCK_STREAM | SOCK_NONBLOCK | SOCK_CLOEXEC, 0);
    if (dr->lfd < 0 || setsockopt(dr->lfd, SOL_SOCKET, SO_REUSEADDR, &one, sizeof(one)) ||
        bind(dr->lfd, addr, alen) || listen(dr->lfd, 4096)) {
        snprintf(err, errlen, "cannot listen on %s:%d (%s)", s->p.host, s->p.port,
                 errno == EADDRINUSE ? "address in use" : strerror(errno));
        goto fail;
    }
    dr->ep = epoll_create1(EPOLL_CLOEXEC);
    dr->wake = eventfd(0, EFD_NONBLOCK | EFD_CLOEXEC);
    struct epoll_event lev = {.events = EPOLLIN, .data.fd = dr->lfd}, wev = {.events = EPOLLIN, .data.fd = dr->wake};
    if (dr->ep < 0 || dr->wake < 0 || epoll_ctl(dr->ep, EPOLL_CTL_ADD, dr->lfd, &lev) ||
        epoll_ctl(dr->ep, EPOLL_CTL_ADD, dr->wake, &wev)) {
        snprintf(err, errlen, "cannot set up the accept loop: %s", strerror(errno));
        goto fail;
    }
    *out = dr;
    return 0;
fail:
    door_destroy(dr);
    return -1;
}

door_limits door_get_limits(const door *dr) { return dr->lim; }

int door_start(door *dr, struct MHD_Daemon *d, char *err, size_t errlen) {
    dr->d = d;
    int rc = pthread_create(&dr->thread, NULL, door_main, dr);
    if (rc) {
        snprintf(err, errlen, "cannot start the accept thread: %s", strerror(rc));
        return -1;
    }
    dr->running = true;
    return 0;
}

void door_close(door *dr) {
    if (!dr) return;
    if (dr->running) {
        uint64_t one = 1;
        (void)!write(dr->wake, &one, sizeof(one));
        pthread_join(dr->thread, NULL);
        dr->running = false;
    }
    pthread_mutex_lock(&dr->mu);
    for (int fd = 0; fd < dr->n_slots; fd++)
        if (dr->slots[fd].phase == SLOT_HEAD || dr->slots[fd].phase == SLOT_LINGER) door_drop(dr, fd);
    pthread_mutex_unlock(&dr->mu);
    if (dr->lfd >= 0) close(dr->lfd);
    dr->lfd = -1;
}

void door_destroy(door *dr) {
    if (!dr) return;
    door_close(dr);
    if (dr->ep >= 0) close(dr->ep);
    if (dr->wake >= 0) close(dr->wake);
    pthread_mutex_destroy(&dr->mu);
    free(dr->slots);
    free(dr->ips);
    free(dr);
}
