/* static_httpd.c - a small, fast static file server for bench-fetch.sh: the
 * Python test server would be the bottleneck at thousands of requests per
 * second. HTTP/1.1 keep-alive, GET/HEAD, single "bytes=S-" / "bytes=S-E"
 * ranges, sendfile(2), one thread per connection, 127.0.0.1 only.
 * Usage: static_httpd ROOT  (prints the port on stdout, serves until killed)
 * Not part of libdf; the bench script compiles it. Not a production server:
 * it refuses paths with "..", and nothing else is promised. */
#define _GNU_SOURCE
#include <arpa/inet.h>
#include <errno.h>
#include <fcntl.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <pthread.h>
#include <signal.h>
#include <stdbool.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>
#include <sys/sendfile.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <unistd.h>

static const char *root;

static int send_all(int fd, const char *p, size_t n)
{
    while (n) {
        ssize_t w = send(fd, p, n, MSG_NOSIGNAL);
        if (w < 0 && errno == EINTR)
            continue;
        if (w <= 0)
            return -1;
        p += w;
        n -= (size_t)w;
    }
    return 0;
}

static int send_file(int sock, int fd, off_t off, size_t n)
{
    while (n) {
        ssize_t w = sendfile(sock, fd, &off, n > (1u << 30) ? (1u << 30) : n);
        if (w < 0 && errno == EINTR)
            continue;
        if (w <= 0)
            return -1;
        n -= (size_t)w;
    }
    return 0;
}

static int reply_status(int sock, int code, const char *text)
{
    char h[256];
    int n = snprintf(h, sizeof h, "HTTP/1.1 %d %s\r\nContent-Length: 0\r\n\r\n", code, text);
    return send_all(sock, h, (size_t)n);
}

/* One request whose head is in req (NUL-terminated); -1 closes the connection. */
static int serve(int sock, char *req)
{
    char method[8], path[2048];
    if (sscanf(req, "%7s %2047s", method, path) != 2)
        return -1;
    bool head = strcmp(method, "HEAD") == 0;
    if (!head && strcmp(method, "GET") != 0)
        return reply_status(sock, 405, "Method Not Allowed"), -1;
    char *q = strpbrk(path, "?#");
    if (q)
        *q = 0;
    if (strstr(path, ".."))
        return reply_status(sock, 403, "Forbidden");
    char full[4096];
    snprintf(full, sizeof full, "%s%s", root, path);
    int fd = open(full, O_RDONLY | O_CLOEXEC);
    struct stat st;
    if (fd < 0 || fstat(fd, &st) != 0 || !S_ISREG(st.st_mode)) {
        if (fd >= 0)
            close(fd);
        return reply_status(sock, 404, "Not Found");
    }
    off_t start = 0, end = st.st_size - 1;
    bool ranged = false;
    char *r = strcasestr(req, "\r\nRange: bytes=");
    if (r) {
        long long s = -1, e = -1;
        if (sscanf(r + 15, "%lld-%lld", &s, &e) >= 1 && s >= 0) {
            if (s >= st.st_size) {
                close(fd);
                return reply_status(sock, 416, "Range Not Satisfiable");
            }
            start = s;
            if (e >= s && e < end)
                end = e;
            ranged = true;
        }
    }
    size_t len = st.st_size ? (size_t)(end - start + 1) : 0;
    char h[512];
    int n = ranged
        ? snprintf(h, sizeof h, "HTTP/1.1 206 Partial Content\r\nContent-Length: %zu\r\n"
                   "Content-Range: bytes %lld-%lld/%lld\r\n\r\n", len,
                   (long long)start, (long long)end, (long long)st.st_size)
        : snprintf(h, sizeof h, "HTTP/1.1 200 OK\r\nContent-Length: %zu\r\n"
                   "Accept-Ranges: bytes\r\n\r\n", len);
    int rc = send_all(sock, h, (size_t)n);
    if (rc == 0 && !head)
        rc = send_file(sock, fd, start, len);
    close(fd);
    return rc;
}

static void *conn_main(void *arg)
{
    int sock = (int)(intptr_t)arg;
    char buf[16384];
    size_t have = 0;
    for (;;) {
        char *eoh;
        while (!(eoh = memmem(buf, have, "\r\n\r\n", 4))) {
            if (have == sizeof buf - 1)
                goto out;
            ssize_t m = recv(sock, buf + have, sizeof buf - 1 - have, 0);
            if (m <= 0)
                goto out;
            have += (size_t)m;
        }
        size_t used = (size_t)(eoh + 4 - buf);
        char save = buf[used];
        buf[used] = 0;
        bool close_after = strcasestr(buf, "\r\nConnection: close") != NULL;
        if (serve(sock, buf) != 0 || close_after)
            goto out;
        buf[used] = save;
        memmove(buf, buf + used, have - used);
        have -= used;
    }
out:
    close(sock);
    return NULL;
}

int main(int argc, char **argv)
{
    if (argc != 2) {
        fprintf(stderr, "usage: static_httpd ROOT\n");
        return 2;
    }
    root = argv[1];
    signal(SIGPIPE, SIG_IGN);
    int ls = socket(AF_INET, SOCK_STREAM, 0);
    int one = 1;
    setsockopt(ls, SOL_SOCKET, SO_REUSEADDR, &one, sizeof one);
    struct sockaddr_in a = {.sin_family = AF_INET, .sin_addr.s_addr = htonl(INADDR_LOOPBACK)};
    socklen_t al = sizeof a;
    if (bind(ls, (struct sockaddr *)&a, sizeof a) != 0 || listen(ls, 1024) != 0 ||
        getsockname(ls, (struct sockaddr *)&a, &al) != 0) {
        perror("static_httpd");
        return 1;
    }
    printf("%d\n", ntohs(a.sin_port));
    fflush(stdout);
    pthread_attr_t at;
    pthread_attr_init(&at);
    pthread_attr_setdetachstate(&at, PTHREAD_CREATE_DETACHED);
    pthread_attr_setstacksize(&at, 256 * 1024);
    for (;;) {
        int s = accept(ls, NULL, NULL);
        if (s < 0) {
            if (errno == EINTR || errno == ECONNABORTED || errno == EMFILE)
                continue;
            return 1;
        }
        setsockopt(s, IPPROTO_TCP, TCP_NODELAY, &one, sizeof one);
        pthread_t t;
        if (pthread_create(&t, &at, conn_main, (void *)(intptr_t)s) != 0)
            close(s);
    }
}
