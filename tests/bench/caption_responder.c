/* caption_responder.c - an instant chat-completions responder for
 * tests/bench/bench-caption.sh: the smallest server that lets a benchmark
 * see df-caption's own cost rather than a server's.
 *
 * One thread, poll(2) over keep-alive HTTP/1.1 connections on 127.0.0.1.
 * Each request (headers, then Content-Length bytes of body) gets the same
 * canned OpenAI-style answer. It prints its port on stdout, then runs until
 * killed; on SIGTERM it prints to stderr the requests served and the time
 * spent handling them (from a request's last byte to the answer written),
 * so the bench can subtract the server's share. Built and run only by the
 * bench script; it is no part of libdf or the tools. */
#include <arpa/inet.h>
#include <errno.h>
#include <fcntl.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <poll.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>
#include <sys/socket.h>
#include <time.h>
#include <unistd.h>

#define MAX_CONN 256
#define MAX_HEAD 16384

typedef struct {
    int fd;
    char head[MAX_HEAD];
    size_t head_len;
    long body_left;        /* -1: still reading headers */
} conn;

static volatile sig_atomic_t stop;
static void on_term(int s) { (void)s; stop = 1; }

static double now(void)
{
    struct timespec t;
    clock_gettime(CLOCK_MONOTONIC, &t);
    return t.tv_sec + t.tv_nsec * 1e-9;
}

static const char answer_body[] =
    "{\"id\":\"bench\",\"object\":\"chat.completion\",\"model\":\"bench\",\"choices\":"
    "[{\"index\":0,\"finish_reason\":\"stop\",\"message\":{\"role\":\"assistant\","
    "\"content\":\"A person with short dark hair, smiling, about thirty years old.\"}}]}";

static char answer[512];
static size_t answer_len;
static long served;
static double busy_s;

static void respond(conn *c)
{
    double t0 = now();
    size_t off = 0;
    while (off < answer_len) {
        ssize_t w = write(c->fd, answer + off, answer_len - off);
        if (w < 0 && errno == EINTR)
            continue;
        if (w <= 0)
            break;
        off += (size_t)w;
    }
    served++;
    busy_s += now() - t0;
}

/* Headers complete in c->head? Then set body_left from Content-Length and
 * keep any body bytes that came along. */
static void parse_head(conn *c)
{
    char *end = memmem(c->head, c->head_len, "\r\n\r\n", 4);
    if (!end)
        return;
    size_t hl = (size_t)(end - c->head) + 4;
    long len = 0;
    for (char *p = c->head; p < end; p = strstr(p, "\r\n") + 2)
        if (strncasecmp(p, "Content-Length:", 15) == 0)
            len = strtol(p + 15, NULL, 10);
    long extra = (long)(c->head_len - hl);
    c->body_left = len - extra;
    c->head_len = 0;
}

/* Read what is there; false when the connection is done. */
static int serve(conn *c)
{
    char buf[65536];
    ssize_t n = read(c->fd, buf, sizeof buf);
    if (n <= 0)
        return n < 0 && errno == EAGAIN;
    char *p = buf;
    while (n > 0) {
        if (c->body_left < 0) {
            size_t take = (size_t)n < MAX_HEAD - c->head_len ? (size_t)n : MAX_HEAD - c->head_len;
            if (take == 0)
                return 0;             /* absurd header: drop the connection */
            memcpy(c->head + c->head_len, p, take);
            c->head_len += take;
            p += take, n -= (ssize_t)take;
            parse_head(c);      /* counts body bytes that came with the head */
            if (c->body_left < 0)
                continue;
            if (c->body_left <= 0) {
                respond(c);
                c->body_left = -1;
            }
        } else {
            long take = n < c->body_left ? n : c->body_left;
            c->body_left -= take;
            p += take, n -= take;
            if (c->body_left == 0) {
                respond(c);
                c->body_left = -1;
            }
        }
    }
    return 1;
}

int main(void)
{
    answer_len = (size_t)snprintf(answer, sizeof answer,
                                  "HTTP/1.1 200 OK\r\nContent-Type: application/json\r\n"
                                  "Content-Length: %zu\r\n\r\n%s",
                                  strlen(answer_body), answer_body);
    signal(SIGTERM, on_term);
    signal(SIGPIPE, SIG_IGN);
    int ls = socket(AF_INET, SOCK_STREAM, 0);
    int one = 1;
    setsockopt(ls, SOL_SOCKET, SO_REUSEADDR, &one, sizeof one);
    struct sockaddr_in a = {.sin_family = AF_INET, .sin_addr.s_addr = htonl(INADDR_LOOPBACK)};
    socklen_t al = sizeof a;
    if (bind(ls, (struct sockaddr *)&a, sizeof a) || listen(ls, 128) ||
        getsockname(ls, (struct sockaddr *)&a, &al)) {
        perror("caption_responder");
        return 1;
    }
    printf("%d\n", ntohs(a.sin_port));
    fflush(stdout);
    static conn conns[MAX_CONN];
    static struct pollfd pfd[MAX_CONN + 1];
    int nc = 0;
    while (!stop) {
        pfd[0] = (struct pollfd){.fd = ls, .events = POLLIN};
        for (int i = 0; i < nc; i++)
            pfd[i + 1] = (struct pollfd){.fd = conns[i].fd, .events = POLLIN};
        if (poll(pfd, (nfds_t)nc + 1, 500) < 0)
            continue;
        for (int i = nc - 1; i >= 0; i--) {
            if (!(pfd[i + 1].revents & (POLLIN | POLLHUP | POLLERR)) || serve(&conns[i]))
                continue;
            close(conns[i].fd);
            conns[i] = conns[--nc];
        }
        if ((pfd[0].revents & POLLIN) && nc < MAX_CONN) {
            int fd = accept(ls, NULL, NULL);
            if (fd >= 0) {
                setsockopt(fd, IPPROTO_TCP, TCP_NODELAY, &one, sizeof one);
                conns[nc++] = (conn){.fd = fd, .body_left = -1};
            }
        }
    }
    fprintf(stderr, "responder: %ld requests, %.6f s handling\n", served, busy_s);
    return 0;
}
