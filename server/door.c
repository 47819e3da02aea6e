/* The front door: the server's own listening socket and accept loop, ahead
 * of libmicrohttpd. Each new connection waits here, on one epoll thread,
 * until its first request head has arrived whole; the head is read with
 * MSG_PEEK and screened (http_head.c: strict syntax and unambiguous framing)
 * before the connection is handed to libmicrohttpd, which then reads the
 * same bytes. A refused head gets our own one error reply (libmicrohttpd
 * 0.9.75 writes its status line twice for a Content-Length it cannot parse)
 * and a lingering close, so the client reads the reply instead of a reset. */
#include <errno.h>
#include <fcntl.h>
#include <pthread.h>
#include <stdio.h>
#include <sys/epoll.h>
#include <sys/eventfd.h>
#include <unistd.h>

#include "base/util.h"
#include "server/http_head.h"
#include "server/server_internal.h"

#define DOOR_HEAD_MAX 8192      /* a first request head, at most (8 KiB; libmicrohttpd parses it in 32 KiB) */
#define DOOR_LINGER_S 2.0       /* seconds a refused connection is drained before it is closed */
#define DOOR_LINGER_BYTES (1u << 20)

typedef enum { PEND_FREE, PEND_HEAD, PEND_LINGER } pend_state;

/* A connection the door holds (indexed by its fd). */
typedef struct {
    pend_state state;
    double deadline; /* util_now() seconds: the head must be in by then (or the linger ends) */
    size_t drained;  /* bytes read and dropped while lingering */
    struct sockaddr_storage addr;
    socklen_t alen;
} pend;

struct door {
    server *s;                /* borrowed */
    struct MHD_Daemon *d;     /* borrowed: where screened connections go */
    int lfd, ep, wake;        /* listening socket, epoll, eventfd that stops the thread */
    pthread_t thread;
    bool running;
    bool accept_off;          /* the listening socket is not watched (out of descriptors) */
    pend *pends;              /* (n_pends) by fd */
    int n_pends;
    int n_held;               /* pends not PEND_FREE */
    char peek[DOOR_HEAD_MAX]; /* the head of the connection being screened */
};

/* The slot of fd, grown on demand; NULL out of memory. */
static pend *pend_slot(door *dr, int fd) {
    if (fd >= dr->n_pends) {
        int n = dr->n_pends ? dr->n_pends : 256;
        while (n <= fd) n *= 2;
        pend *q = realloc(dr->pends, (size_t)n * sizeof(*q));
        if (!q) return NULL;
        memset(q + dr->n_pends, 0, (size_t)(n - dr->n_pends) * sizeof(*q));
        dr->pends = q;
        dr->n_pends = n;
    }
    return &dr->pends[fd];
}

static void pend_close(door *dr, int fd) {
    if (dr->pends[fd].state != PEND_FREE) dr->n_held--;
    dr->pends[fd].state = PEND_FREE;
    epoll_ctl(dr->ep, EPOLL_CTL_DEL, fd, NULL);
    close(fd);
}

static const char *status_text(int status) {
    switch (status) {
    case 400: return "Bad Request";
    case 431: return "Request Header Fields Too Large";
    case 505: return "HTTP Version Not Supported";
    default: return "Error";
    }
}

/* Refuses the connection fd: the peeked head (n bytes) is read off, one JSON
 * error reply with Connection: close is written, our side is shut, and what
 * the client still sends is drained for a while (a close with unread bytes
 * would reset the connection and could destroy the reply in flight). */
static void refuse(door *dr, int fd, size_t n, int status, const char *why) {
    while (n) { /* the bytes were peeked: they are there */
        ssize_t r = recv(fd, dr->peek, n < sizeof(dr->peek) ? n : sizeof(dr->peek), MSG_DONTWAIT);
        if (r <= 0) break;
        n -= (size_t)r;
    }
    api_error err;
    api_error_set(&err, status, NULL, "%s", why);
    char *body = errors_json(&err);
    char head[256];
    int hl = snprintf(head, sizeof(head),
                      "HTTP/1.1 %d %s\r\nContent-Type: application/json\r\nContent-Length: %zu\r\nConnection: close\r\n\r\n",
                      status, status_text(status), body ? strlen(body) : 0);
    /* small: the socket's empty send buffer takes it whole */
    if (send(fd, head, (size_t)hl, MSG_NOSIGNAL | MSG_DONTWAIT | (body ? MSG_MORE : 0)) == hl && body)
        (void)!send(fd, body, strlen(body), MSG_NOSIGNAL | MSG_DONTWAIT);
    free(body);
    metrics_http(dr->s->mx, "other", status);
    shutdown(fd, SHUT_WR);
    pend *p = &dr->pends[fd];
    p->state = PEND_LINGER;
    p->deadline = util_now() + DOOR_LINGER_S;
    p->drained = 0;
}

/* Reads and drops what a refused client still sends; closes at its end. */
static void linger(door *dr, int fd) {
    pend *p = &dr->pends[fd];
    for (;;) {
        ssize_t r = recv(fd, dr->peek, sizeof(dr->peek), MSG_DONTWAIT);
        if (r > 0 && (p->drained += (size_t)r) <= DOOR_LINGER_BYTES) continue;
        if (r < 0 && (errno == EAGAIN || errno == EWOULDBLOCK)) return;
        if (r < 0 && errno == EINTR) continue;
        pend_close(dr, fd); /* the client's end, an error, or enough */
        return;
    }
}

/* Hands fd to libmicrohttpd (which closes it on failure). */
static void hand_over(door *dr, int fd) {
    pend *p = &dr->pends[fd];
    p->state = PEND_FREE;
    dr->n_held--;
    epoll_ctl(dr->ep, EPOLL_CTL_DEL, fd, NULL);
    if (MHD_add_connection(dr->d, fd, (const struct sockaddr *)&p->addr, p->alen) != MHD_YES)
        fprintf(stderr, "engram-server: a connection could not be handed to libmicrohttpd: %s\n", strerror(errno));
}

/* New bytes on a connection waiting for its head: screen what is there. */
static void screen(door *dr, int fd) {
    ssize_t n = recv(fd, dr->peek, sizeof(dr->peek), MSG_PEEK | MSG_DONTWAIT);
    if (n < 0 && (errno == EAGAIN || errno == EWOULDBLOCK || errno == EINTR)) return;
    if (n <= 0) { /* gone before a whole head */
        pend_close(dr, fd);
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
    refuse(dr, fd, (size_t)n, 400, "The request line or a header line is malformed.");
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
                fprintf(stderr, "engram-server: accept: %s\n", strerror(errno));
                struct epoll_event off = {.events = 0, .data.fd = dr->lfd};
                dr->accept_off = epoll_ctl(dr->ep, EPOLL_CTL_MOD, dr->lfd, &off) == 0;
            }
            return;
        }
        pend *p = pend_slot(dr, fd);
        struct epoll_event ev = {.events = EPOLLIN | EPOLLRDHUP | EPOLLET, .data.fd = fd};
        if (!p || epoll_ctl(dr->ep, EPOLL_CTL_ADD, fd, &ev) != 0) {
            close(fd);
            continue;
        }
        *p = (pend){.state = PEND_HEAD, .deadline = util_now() + dr->s->p.connection_timeout, .alen = alen};
        memcpy(&p->addr, &addr, alen);
        dr->n_held++;
        screen(dr, fd); /* the head may be there already */
    }
}

/* Closes what waited past its deadline: a head not in, a linger over. */
static void sweep(door *dr) {
    double now = util_now();
    struct epoll_event on = {.events = EPOLLIN, .data.fd = dr->lfd};
    if (dr->accept_off && epoll_ctl(dr->ep, EPOLL_CTL_MOD, dr->lfd, &on) == 0) dr->accept_off = false;
    for (int fd = 0; fd < dr->n_pends && dr->n_held; fd++)
        if (dr->pends[fd].state != PEND_FREE && now >= dr->pends[fd].deadline) pend_close(dr, fd);
}

static void *door_main(void *arg) {
    door *dr = arg;
    struct epoll_event evs[64];
    double next_sweep = util_now() + 0.25;
    for (;;) {
        int n = epoll_wait(dr->ep, evs, 64, 250);
        for (int i = 0; i < n; i++) {
            int fd = evs[i].data.fd;
            if (fd == dr->wake) return NULL;
            if (fd == dr->lfd) accept_all(dr);
            else if (fd < dr->n_pends && dr->pends[fd].state == PEND_HEAD) screen(dr, fd);
            else if (fd < dr->n_pends && dr->pends[fd].state == PEND_LINGER) linger(dr, fd);
        }
        if (util_now() >= next_sweep) {
            sweep(dr);
            next_sweep = util_now() + 0.25;
        }
    }
}

int door_open(server *s, const struct sockaddr *addr, socklen_t alen, door **out, char *err, size_t errlen) {
    door *dr = calloc(1, sizeof(*dr));
    *out = NULL;
    if (!dr) {
        snprintf(err, errlen, "out of memory");
        return -1;
    }
    dr->s = s;
    dr->ep = dr->wake = -1;
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
    door_close(dr);
    return -1;
}

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
    }
    for (int fd = 0; fd < dr->n_pends; fd++)
        if (dr->pends[fd].state != PEND_FREE) close(fd);
    if (dr->lfd >= 0) close(dr->lfd);
    if (dr->ep >= 0) close(dr->ep);
    if (dr->wake >= 0) close(dr->wake);
    free(dr->pends);
    free(dr);
}
