/* df-fetch - download the `url` of each input record under --out DIR, N
 * transfers in flight, verified, resumable.
 *
 * Each input record comes out once (in completion order) with file_name,
 * bytes and sha256 added, or with an `error`. A download is written to
 * FILE.part, hashed while it streams, and renamed to FILE only when it is
 * complete and matches the record's sha256/bytes. An interrupted run
 * leaves FILE.part behind and the next run continues it with HTTP Range;
 * a file already present and verified is not requested again. Records
 * naming a file that another record is downloading wait for it, then take
 * its result (the file is there and verifies) or try their own url. The
 * run ends with a summary line on stderr, whatever stderr is.
 *
 * Tested by tests/tools/test-df-fetch.sh against tests/servers/file_server.py. */
#include <errno.h>
#include <fcntl.h>
#include <getopt.h>
#include <openssl/evp.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/file.h>
#include <sys/stat.h>
#include <unistd.h>

#include "http.h"
#include "jsonl.h"
#include "log.h"
#include "status.h"

static const char usage_text[] =
    "Usage: df-fetch --out DIR [-j N] [--retries N] [--timeout SEC] [--max-time SEC]\n"
    "                [--rpm N] [--max-bytes N] [--header 'Name: value']... [--backoff SEC]\n"
    "                [--strict] [--quiet|--progress] [FILE...]\n"
    "Download the url of each JSONL record (stdin or FILEs) under DIR.\n"
    "\n"
    "  -o, --out DIR        directory the files go to (created if missing)\n"
    "  -j, --jobs N         transfers in flight (default 8)\n"
    "      --retries N      retries after a 429, 5xx or transport error (default 3)\n"
    "      --timeout SEC    connect timeout, and abort a transfer that stalls for SEC (default 30)\n"
    "      --max-time SEC   limit of one whole attempt (default: none)\n"
    "      --rpm N          at most N requests started per minute (default: no limit)\n"
    "      --max-bytes N    refuse files larger than N bytes (suffixes K, M, G)\n"
    "  -H, --header LINE    extra request header, repeatable; its value is never printed\n"
    "      --backoff SEC    first retry delay, doubled per retry up to 60 s (default 1)\n"
    "      --strict         exit 1 when any record failed\n"
    "  -q, --quiet          no progress line\n"
    "      --progress       progress line even when stderr is not a terminal\n"
    "  -h, --help           this help\n"
    "Input fields: url (required), file_name, sha256, bytes (optional).\n"
    "Output: the record with file_name, bytes, sha256, or with error.\n";

typedef struct {
    const char *out_dir;
    int jobs, retries;
    double timeout, max_time, rpm, backoff;
    unsigned long long max_bytes;
    const char **headers;
    size_t n_headers;
    bool strict;
    df_progress_mode progress;
} options;

/* One download in flight. */
typedef struct job {
    struct run *run;
    json_t *rec;
    char *file_name, *final_path, *part_path;
    int fd;
    EVP_MD_CTX *md;
    char want_sha[65];      /* lower-case hex, "" when not given */
    long long want_bytes;   /* -1 when not given */
    bool registered;        /* file_name entered in run->active */
    char *wbuf;             /* body bytes not yet written (curl hands out 16 KiB
                               pieces; one write per WBUF_SIZE saves syscalls) */
    size_t wlen;
} job;

#define WBUF_SIZE (256u * 1024)

typedef struct run {
    options opt;
    df_http_pool *pool;
    json_t *active;         /* file_name -> array of the records waiting for it,
                               while a job writes it */
    df_progress prog;
    long long n_in, n_failed, n_fetched, n_present;
    bool out_error;
} run;

static volatile int stop_flag;
static df_http_pool *signal_pool;

static void on_signal(int sig)
{
    (void)sig;
    stop_flag = 1;
    if (signal_pool)
        df_http_pool_wakeup(signal_pool);
}

/* ---- options ------------------------------------------------------------- */

static double parse_seconds(const char *s, const char *opt)
{
    char *end;
    errno = 0;
    double v = strtod(s, &end);
    if (errno || end == s || *end || !(v >= 0) || v > 1e7)
        df_usage_error("%s: not a number of seconds: '%s'", opt, s);
    return v;
}

static long parse_count(const char *s, const char *opt, long lo, long hi)
{
    char *end;
    errno = 0;
    long v = strtol(s, &end, 10);
    if (errno || end == s || *end || v < lo || v > hi)
        df_usage_error("%s: expected an integer in %ld..%ld, got '%s'", opt, lo, hi, s);
    return v;
}

static unsigned long long parse_size(const char *s, const char *opt)
{
    char *end;
    errno = 0;
    if (*s == '-')
        df_usage_error("%s: not a size: '%s'", opt, s);
    unsigned long long v = strtoull(s, &end, 10);
    unsigned long long mul = 1;
    if (*end == 'K' || *end == 'k')
        mul = 1ull << 10, end++;
    else if (*end == 'M')
        mul = 1ull << 20, end++;
    else if (*end == 'G')
        mul = 1ull << 30, end++;
    if (errno || end == s || *end || v == 0 || v > ~0ull / mul)
        df_usage_error("%s: not a size: '%s'", opt, s);
    return v * mul;
}

/* A header line must be "Name: value" with a token name; it is checked here
 * without ever echoing the value (it is usually a secret). */
static void check_header(const char *h)
{
    const char *colon = strchr(h, ':');
    bool ok = colon && colon > h;
    for (const char *c = h; ok && c < colon; c++)
        ok = *c > ' ' && *c < 127;
    for (const char *c = h; ok && *c; c++)
        ok = *c != '\r' && *c != '\n';
    if (!ok)
        df_usage_error("--header: expected 'Name: value' (the value is not shown)");
}

static void parse_args(int argc, char **argv, options *o)
{
    enum { O_RETRIES = 256, O_TIMEOUT, O_MAXTIME, O_RPM, O_MAXBYTES, O_BACKOFF, O_STRICT, O_PROGRESS };
    static const struct option longs[] = {
        {"out", required_argument, 0, 'o'}, {"jobs", required_argument, 0, 'j'},
        {"retries", required_argument, 0, O_RETRIES}, {"timeout", required_argument, 0, O_TIMEOUT},
        {"max-time", required_argument, 0, O_MAXTIME}, {"rpm", required_argument, 0, O_RPM},
        {"max-bytes", required_argument, 0, O_MAXBYTES}, {"header", required_argument, 0, 'H'},
        {"backoff", required_argument, 0, O_BACKOFF}, {"strict", no_argument, 0, O_STRICT},
        {"quiet", no_argument, 0, 'q'}, {"progress", no_argument, 0, O_PROGRESS},
        {"help", no_argument, 0, 'h'}, {0, 0, 0, 0},
    };
    *o = (options){.jobs = 8, .retries = 3, .timeout = 30, .backoff = 1,
                   .progress = DF_PROGRESS_AUTO};
    o->headers = calloc((size_t)argc + 1, sizeof *o->headers);
    if (!o->headers)
        exit(1);
    int c;
    while ((c = getopt_long(argc, argv, "o:j:H:qh", longs, NULL)) != -1) {
        switch (c) {
        case 'o': o->out_dir = optarg; break;
        case 'j': o->jobs = (int)parse_count(optarg, "--jobs", 1, 1024); break;
        case O_RETRIES: o->retries = (int)parse_count(optarg, "--retries", 0, 100); break;
        case O_TIMEOUT: o->timeout = parse_seconds(optarg, "--timeout"); break;
        case O_MAXTIME: o->max_time = parse_seconds(optarg, "--max-time"); break;
        case O_RPM: o->rpm = parse_seconds(optarg, "--rpm"); break;
        case O_MAXBYTES: o->max_bytes = parse_size(optarg, "--max-bytes"); break;
        case 'H': check_header(optarg); o->headers[o->n_headers++] = optarg; break;
        case O_BACKOFF: o->backoff = parse_seconds(optarg, "--backoff"); break;
        case O_STRICT: o->strict = true; break;
        case 'q': o->progress = DF_PROGRESS_NEVER; break;
        case O_PROGRESS: o->progress = DF_PROGRESS_ALWAYS; break;
        case 'h': fputs(usage_text, stdout); exit(0);
        default: df_usage_error("unknown option");
        }
    }
    if (!o->out_dir)
        df_usage_error("--out DIR is required");
}

/* ---- file names ---------------------------------------------------------- */

/* A record's file_name must stay inside --out: relative, no empty, "." or
 * ".." component, no control characters. */
static bool safe_rel_path(const char *s)
{
    size_t n = strlen(s);
    if (n == 0 || n > 4000 || s[0] == '/')
        return false;
    for (size_t i = 0; i < n; i++)
        if ((unsigned char)s[i] < 0x20 || s[i] == 0x7f)
            return false;
    for (const char *c = s; c;) {
        const char *slash = strchr(c, '/');
        size_t len = slash ? (size_t)(slash - c) : strlen(c);
        if (len == 0 || (len == 1 && c[0] == '.') || (len == 2 && c[0] == '.' && c[1] == '.'))
            return false;
        c = slash ? slash + 1 : NULL;
    }
    return true;
}

static int hexval(char c)
{
    if (c >= '0' && c <= '9') return c - '0';
    if (c >= 'a' && c <= 'f') return c - 'a' + 10;
    if (c >= 'A' && c <= 'F') return c - 'A' + 10;
    return -1;
}

/* The last path segment of url, percent-decoded; NULL when that is not a
 * plain file name (empty, ".", "..", or decodes to a "/" or a control). */
static char *name_from_url(const char *url)
{
    const char *p = strstr(url, "://");
    p = p ? p + 3 : url;
    p += strcspn(p, "/?#");                    /* skip the authority */
    size_t plen = strcspn(p, "?#");
    const char *seg = p;
    for (size_t i = 0; i < plen; i++)
        if (p[i] == '/')
            seg = p + i + 1;
    size_t slen = (size_t)(p + plen - seg);
    char *out = malloc(slen + 1);
    if (!out)
        return NULL;
    size_t k = 0;
    for (size_t i = 0; i < slen; i++) {
        if (seg[i] == '%' && i + 2 < slen && hexval(seg[i + 1]) >= 0 && hexval(seg[i + 2]) >= 0) {
            out[k++] = (char)(hexval(seg[i + 1]) * 16 + hexval(seg[i + 2]));
            i += 2;
        } else {
            out[k++] = seg[i];
        }
    }
    out[k] = 0;
    if (k != strlen(out) || strchr(out, '/') || !safe_rel_path(out)) {
        free(out);
        return NULL;
    }
    return out;
}

/* mkdir -p of the directories above path (inside --out). */
static bool make_parents(const char *path)
{
    char *tmp = strdup(path);
    if (!tmp)
        return false;
    bool ok = true;
    for (char *s = strchr(tmp + 1, '/'); s && ok; s = strchr(s + 1, '/')) {
        *s = 0;
        if (mkdir(tmp, 0777) != 0 && errno != EEXIST)
            ok = false;
        *s = '/';
    }
    free(tmp);
    return ok;
}

static char *path_join(const char *dir, const char *name, const char *suffix)
{
    size_t n = strlen(dir) + strlen(name) + strlen(suffix) + 2;
    char *p = malloc(n);
    if (p)
        snprintf(p, n, "%s/%s%s", dir, name, suffix);
    return p;
}

/* ---- hashing --------------------------------------------------------------- */

static void hex_digest(EVP_MD_CTX *md, char out[65])
{
    unsigned char d[EVP_MAX_MD_SIZE];
    unsigned int n = 0;
    EVP_MD_CTX *copy = EVP_MD_CTX_new();   /* keep md usable */
    if (copy && EVP_MD_CTX_copy_ex(copy, md) && EVP_DigestFinal_ex(copy, d, &n) && n == 32) {
        for (unsigned i = 0; i < 32; i++)
            snprintf(out + 2 * i, 3, "%02x", d[i]);
    } else {
        out[0] = 0;
    }
    EVP_MD_CTX_free(copy);
}

/* Feed the first `limit` bytes of fd (from offset 0) into md; the number
 * read, or -1 on a read error. */
static long long hash_fd(int fd, EVP_MD_CTX *md, unsigned long long limit)
{
    static __thread unsigned char chunk[1 << 20];
    unsigned long long done = 0;
    while (done < limit) {
        size_t want = limit - done < sizeof chunk ? (size_t)(limit - done) : sizeof chunk;
        ssize_t n = pread(fd, chunk, want, (off_t)done);
        if (n < 0 && errno == EINTR)
            continue;
        if (n < 0)
            return -1;
        if (n == 0)
            break;
        EVP_DigestUpdate(md, chunk, (size_t)n);
        done += (unsigned long long)n;
    }
    return (long long)done;
}

/* sha256 and size of an existing file; false when unreadable. */
static bool hash_file(const char *path, char hex[65], long long *size)
{
    int fd = open(path, O_RDONLY | O_CLOEXEC);
    if (fd < 0)
        return false;
    EVP_MD_CTX *md = EVP_MD_CTX_new();
    bool ok = md && EVP_DigestInit_ex(md, EVP_sha256(), NULL);
    *size = ok ? hash_fd(fd, md, ~0ull) : -1;
    ok = ok && *size >= 0;
    if (ok)
        hex_digest(md, hex);
    EVP_MD_CTX_free(md);
    close(fd);
    return ok && hex[0];
}

/* ---- records -------------------------------------------------------------- */

static void emit(run *R, json_t *rec, bool failed)
{
    if (df_jsonl_write_fd(STDOUT_FILENO, rec) != DF_OK && !R->out_error) {
        /* Records that cannot be written would be lost: stop the run. */
        R->out_error = true;
        stop_flag = 1;
        df_error("cannot write output: %s", df_last_error());
    }
    if (failed)
        R->n_failed++;
    df_progress_add(&R->prog, 1, failed ? 1 : 0);
    json_decref(rec);
}

static void emit_error(run *R, json_t *rec, const char *fmt, const char *arg)
{
    df_rec_set_error(rec, fmt, arg);
    emit(R, rec, true);
}

static bool write_all(int fd, const char *p, size_t n)
{
    while (n) {
        ssize_t w = write(fd, p, n);
        if (w < 0 && errno == EINTR)
            continue;
        if (w < 0)
            return false;
        p += w;
        n -= (size_t)w;
    }
    return true;
}

/* Write out the buffered bytes; false (with df_fail detail) on error. */
static bool flush_part(job *J)
{
    bool ok = write_all(J->fd, J->wbuf, J->wlen);
    J->wlen = 0;
    if (!ok)
        df_fail(DF_ERR_IO, "write %s: %s", J->part_path, strerror(errno));
    return ok;
}

static void handle_rec(run *R, json_t *rec);

static void job_free(job *J)
{
    if (J->fd >= 0) {
        if (J->wlen)      /* keep every received byte in the .part for a resume */
            flush_part(J);
        close(J->fd);
    }
    json_t *waiting = NULL;
    if (J->registered) {
        waiting = json_incref(json_object_get(J->run->active, J->file_name));
        json_object_del(J->run->active, J->file_name);
    }
    /* The records that waited for this file go again now: the first finds
     * the file done (no request) or downloads it itself, the others wait
     * for that one. After a stop they are dropped like every unfinished
     * record (the rerun does them). */
    size_t i;
    json_t *rec;
    json_array_foreach(waiting, i, rec) {
        if (stop_flag)
            break;
        handle_rec(J->run, json_incref(rec));
    }
    json_decref(waiting);
    EVP_MD_CTX_free(J->md);
    free(J->wbuf);
    free(J->file_name);
    free(J->final_path);
    free(J->part_path);
    free(J);
}

static bool sink_write(void *user, const void *data, size_t n)
{
    job *J = user;
    EVP_DigestUpdate(J->md, data, n);
    if (!J->wbuf && !(J->wbuf = malloc(WBUF_SIZE))) {
        df_fail(DF_ERR_NOMEM, "out of memory");
        return false;
    }
    if (J->wlen + n > WBUF_SIZE && !flush_part(J))
        return false;
    if (n >= WBUF_SIZE) {
        if (!write_all(J->fd, data, n)) {
            df_fail(DF_ERR_IO, "write %s: %s", J->part_path, strerror(errno));
            return false;
        }
        return true;
    }
    memcpy(J->wbuf + J->wlen, data, n);
    J->wlen += n;
    return true;
}

/* The server sent the whole file instead of the rest: start the .part over. */
static bool sink_rewind(void *user, uint64_t at)
{
    job *J = user;
    J->wlen = 0;
    if (at != 0 || ftruncate(J->fd, 0) != 0 || lseek(J->fd, 0, SEEK_SET) != 0 ||
        !EVP_DigestInit_ex(J->md, EVP_sha256(), NULL)) {
        df_fail(DF_ERR_IO, "cannot restart %s: %s", J->part_path, strerror(errno));
        return false;
    }
    return true;
}

/* A finished download: verify size and sha256, then rename into place. A
 * .part that fails verification is deleted (its bytes are wrong, resuming
 * it would not help). */
static void finish_ok(job *J, const df_http_result *r)
{
    run *R = J->run;
    char hex[65];
    hex_digest(J->md, hex);
    long long size = (long long)r->offset;
    char msg[256];
    msg[0] = 0;
    if (!flush_part(J))
        snprintf(msg, sizeof msg, "%s", df_last_error());
    else if (!hex[0])
        snprintf(msg, sizeof msg, "sha256 failed");
    else if (J->want_bytes >= 0 && size != J->want_bytes)
        snprintf(msg, sizeof msg, "size mismatch: got %lld bytes, expected %lld", size, J->want_bytes);
    else if (J->want_sha[0] && strcmp(hex, J->want_sha) != 0)
        snprintf(msg, sizeof msg, "sha256 mismatch: got %s", hex);
    else if (r->total_size >= 0 && size != r->total_size)
        snprintf(msg, sizeof msg, "size mismatch: got %lld bytes, server announced %lld",
                 size, (long long)r->total_size);
    int fd = J->fd;
    J->fd = -1;
    if (!msg[0] && close(fd) != 0)
        snprintf(msg, sizeof msg, "close %s: %s", J->part_path, strerror(errno));
    else if (msg[0])
        close(fd);
    if (!msg[0] && rename(J->part_path, J->final_path) != 0)
        snprintf(msg, sizeof msg, "rename to %s: %s", J->final_path, strerror(errno));
    if (msg[0]) {
        unlink(J->part_path);
        emit_error(R, J->rec, "%s", msg);
    } else {
        df_rec_set_str(J->rec, "file_name", J->file_name);
        df_rec_set_int(J->rec, "bytes", size);
        df_rec_set_str(J->rec, "sha256", hex);
        R->n_fetched++;
        emit(R, J->rec, false);
    }
    J->rec = NULL;
}

static void on_done(const df_http_result *r)
{
    job *J = r->user;
    run *R = J->run;
    if (r->err == DF_OK) {
        finish_ok(J, r);
    } else if (r->err == DF_ERR_INTERRUPTED) {
        /* stopped by a signal: no record; the .part stays for the next run */
        json_decref(J->rec);
    } else {
        /* A definite answer (404, too large) makes the .part useless; a
         * transport error or 5xx keeps it, if it holds anything, for a
         * resumed rerun. */
        bool keep = r->err == DF_ERR_NET && r->offset > 0 &&
                    (r->status == 0 || r->status >= 500 || r->status == 429);
        if (!keep)
            unlink(J->part_path);
        emit_error(R, J->rec, "%s", r->error);
    }
    job_free(J);
}

/* Is the final file already there and good? Then fill the record. */
static bool already_done(job *J)
{
    struct stat st;
    if (stat(J->final_path, &st) != 0 || !S_ISREG(st.st_mode))
        return false;
    if (J->want_bytes >= 0 && st.st_size != J->want_bytes)
        return false;
    char hex[65];
    long long size;
    if (!hash_file(J->final_path, hex, &size))
        return false;
    if (J->want_sha[0] && strcmp(hex, J->want_sha) != 0)
        return false;
    df_rec_set_str(J->rec, "file_name", J->file_name);
    df_rec_set_int(J->rec, "bytes", size);
    df_rec_set_str(J->rec, "sha256", hex);
    return true;
}

/* Open FILE.part for appending and hash what it holds; the offset to resume
 * from, or -1 (detail in df_last_error). A .part longer than the expected
 * size is started over. */
static long long open_part(job *J)
{
    J->fd = open(J->part_path, O_RDWR | O_CREAT | O_CLOEXEC, 0666);
    if (J->fd < 0) {
        df_fail(DF_ERR_IO, "open %s: %s", J->part_path, strerror(errno));
        return -1;
    }
    /* Another df-fetch (a GNU parallel sibling given the same file_name)
     * may be writing this .part: never write it from two processes. */
    if (flock(J->fd, LOCK_EX | LOCK_NB) != 0) {
        df_fail(DF_ERR_IO, "%s is being written by another process", J->part_path);
        return -1;
    }
    struct stat st;
    if (fstat(J->fd, &st) != 0)
        return -1;
    long long have = st.st_size;
    unsigned long long max = J->run->opt.max_bytes;
    if ((J->want_bytes >= 0 && have > J->want_bytes) || (max && (unsigned long long)have > max))
        have = 0;
    if (have == 0 && st.st_size != 0 && ftruncate(J->fd, 0) != 0)
        return -1;
    if (have > 0 && hash_fd(J->fd, J->md, (unsigned long long)have) != have) {
        df_fail(DF_ERR_IO, "read %s: %s", J->part_path, strerror(errno));
        return -1;
    }
    if (lseek(J->fd, have, SEEK_SET) != have)
        return -1;
    return have;
}

static const char *lower_sha(const char *s, char out[65])
{
    size_t n = strlen(s);
    if (n != 64)
        return NULL;
    for (size_t i = 0; i < 64; i++) {
        if (hexval(s[i]) < 0)
            return NULL;
        out[i] = (char)(s[i] >= 'A' && s[i] <= 'F' ? s[i] + 32 : s[i]);
    }
    out[64] = 0;
    return out;
}

/* Read what the record asks for into J; an error text or NULL. */
static const char *job_setup(job *J, const char **url_out)
{
    run *R = J->run;
    json_t *rec = J->rec;
    const char *url = df_rec_str(rec, "url");
    if (!url)
        return "no url";
    *url_out = url;
    const char *fname = df_rec_str(rec, "file_name");
    if (json_object_get(rec, "file_name") && !fname)
        return "file_name is not a string";
    if (fname) {
        if (!safe_rel_path(fname))
            return "unsafe file_name (absolute, empty, '.' or '..' component)";
        J->file_name = strdup(fname);
    } else if (!(J->file_name = name_from_url(url))) {
        return "cannot derive a safe file name from the url; give file_name";
    }
    const char *sha = df_rec_str(rec, "sha256");
    if (json_object_get(rec, "sha256") && (!sha || !lower_sha(sha, J->want_sha)))
        return "sha256 is not 64 hex digits";
    J->want_bytes = -1;
    if (json_object_get(rec, "bytes") && (!df_rec_int(rec, "bytes", &J->want_bytes) || J->want_bytes < 0))
        return "bytes is not a non-negative integer";
    if (R->opt.max_bytes && J->want_bytes >= 0 && (unsigned long long)J->want_bytes > R->opt.max_bytes)
        return "too large: bytes exceeds --max-bytes";
    J->final_path = path_join(R->opt.out_dir, J->file_name, "");
    J->part_path = path_join(R->opt.out_dir, J->file_name, ".part");
    J->md = EVP_MD_CTX_new();
    if (!J->file_name || !J->final_path || !J->part_path || !J->md ||
        !EVP_DigestInit_ex(J->md, EVP_sha256(), NULL))
        return "out of memory";
    return NULL;
}

/* Handle one input record: answer it at once, submit its download, or
 * queue it behind the record downloading the same file. */
static void handle_rec(run *R, json_t *rec)
{
    if (json_object_get(rec, "error")) {   /* a malformed line or an earlier failure */
        emit(R, rec, true);
        return;
    }
    job *J = calloc(1, sizeof *J);
    if (!J) {
        emit_error(R, rec, "%s", "out of memory");
        return;
    }
    J->run = R;
    J->rec = rec;
    J->fd = -1;
    const char *url = NULL;
    const char *why = job_setup(J, &url);
    char detail[512];
    json_t *waiting = why ? NULL : json_object_get(R->active, J->file_name);
    if (waiting) {
        json_array_append(waiting, rec);
        J->rec = NULL;
        job_free(J);
        json_decref(rec);
        return;
    }
    if (why) {
        J->rec = NULL;
        job_free(J);
        emit_error(R, rec, "%s", why);
        return;
    }
    json_object_set_new(R->active, J->file_name, json_array());
    J->registered = true;
    if (already_done(J)) {
        J->rec = NULL;
        job_free(J);
        R->n_present++;
        emit(R, rec, false);
        return;
    }
    long long have = -1;
    if (!make_parents(J->part_path))
        df_fail(DF_ERR_IO, "cannot create the directory of %s: %s", J->part_path, strerror(errno));
    else
        have = open_part(J);
    df_http_request q = {
        .url = url, .write = sink_write, .rewind = sink_rewind,
        .resume_from = have > 0 ? (uint64_t)have : 0, .max_bytes = R->opt.max_bytes,
        .user = J, .done = on_done,
    };
    if (have < 0 || df_http_submit(R->pool, &q) != DF_OK) {
        snprintf(detail, sizeof detail, "%s", df_last_error());
        if (have == 0)
            unlink(J->part_path);
        J->rec = NULL;
        job_free(J);
        emit_error(R, rec, "%s", detail);
    }
}

static void handle(run *R, json_t *rec)
{
    R->n_in++;
    handle_rec(R, rec);
}

/* ---- main loop -------------------------------------------------------------- */

/* Feed records from one input while keeping about 2*jobs submitted, so that
 * memory stays bounded however long the input is. false on a read error. */
static bool pump(run *R, FILE *in, const char *name)
{
    df_jsonl_reader rd;
    df_jsonl_reader_init(&rd, in);
    bool ok = true;
    size_t window = 2 * (size_t)R->opt.jobs;
    for (bool eof = false; !stop_flag && !eof;) {
        while (!stop_flag && !eof && df_http_pool_pending(R->pool) < window) {
            json_t *rec = NULL;
            if (df_jsonl_next(&rd, &rec) != DF_OK) {
                if (!stop_flag) {
                    df_error("%s: %s", name, df_last_error());
                    ok = false;
                }
                eof = true;
            } else if (!rec) {
                eof = true;
            } else {
                handle(R, rec);
            }
        }
        if (!eof || df_http_pool_pending(R->pool) >= window)
            df_http_pool_perform(R->pool, 1.0);
    }
    df_jsonl_reader_free(&rd);
    return ok;
}

static df_http_pool *make_pool(const options *o)
{
    df_http_options ho;
    df_http_options_default(&ho);
    ho.max_in_flight = o->jobs;
    ho.max_retries = o->retries;
    ho.connect_timeout_s = o->timeout > 0 ? o->timeout : 30;
    ho.stall_timeout_s = o->timeout;
    ho.total_timeout_s = o->max_time;
    ho.rpm = o->rpm;
    ho.backoff_base_s = o->backoff;
    ho.user_agent = "df-fetch/1";
    ho.headers = o->headers;
    return df_http_pool_new(&ho);
}

static void install_signals(void)
{
    struct sigaction sa;
    memset(&sa, 0, sizeof sa);
    sa.sa_handler = on_signal;   /* no SA_RESTART: a blocked read returns */
    sigemptyset(&sa.sa_mask);
    sigaction(SIGINT, &sa, NULL);
    sigaction(SIGTERM, &sa, NULL);
    signal(SIGPIPE, SIG_IGN);
}

int main(int argc, char **argv)
{
    df_log_init(argv[0]);
    run R = {0};
    parse_args(argc, argv, &R.opt);
    if (mkdir(R.opt.out_dir, 0777) != 0 && errno != EEXIST) {
        df_error("cannot create %s: %s", R.opt.out_dir, strerror(errno));
        return 1;
    }
    R.pool = make_pool(&R.opt);
    R.active = json_object();
    if (!R.pool || !R.active) {
        df_error("%s", df_last_error());
        return 1;
    }
    signal_pool = R.pool;
    install_signals();
    df_progress_start(&R.prog, "fetch", 0, R.opt.progress);
    bool ok = true;
    if (optind == argc) {
        ok = pump(&R, stdin, "stdin");
    } else {
        for (int i = optind; i < argc && !stop_flag; i++) {
            FILE *f = strcmp(argv[i], "-") == 0 ? stdin : fopen(argv[i], "r");
            if (!f) {
                df_error("%s: %s", argv[i], strerror(errno));
                ok = false;
                continue;
            }
            ok = pump(&R, f, argv[i]) && ok;
            if (f != stdin)
                fclose(f);
        }
    }
    if (!stop_flag)
        df_http_pool_run(R.pool, &stop_flag);
    if (stop_flag)
        df_http_pool_abort(R.pool);
    signal_pool = NULL;
    df_http_pool_free(R.pool);
    df_progress_finish(&R.prog);
    json_decref(R.active);
    free(R.opt.headers);
    if (fflush(stdout) != 0 || ferror(stdout) || fclose(stdout) != 0)
        R.out_error = true;
    bool interrupted = stop_flag && !R.out_error;
    if (interrupted)
        df_error("interrupted: finished records written, partial downloads kept as .part");
    /* The last line, on a terminal or not (like df-resize and df-merge). */
    df_error("%lld records: %lld downloaded, %lld already present, %lld failed%s", R.n_in,
             R.n_fetched, R.n_present, R.n_failed,
             interrupted ? ", the rest interrupted" : "");
    if (interrupted)
        return 1;
    if (R.out_error || !ok || (R.opt.strict && R.n_failed))
        return 1;
    return 0;
}
