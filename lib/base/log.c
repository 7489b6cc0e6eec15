/* log.c - error messages and the progress line.
 * Tested by tests/unit/test_log.c (message format). */
#include <errno.h>
#include "log.h"

#include <pthread.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <unistd.h>

static const char *prog = "diffyface";
static pthread_mutex_t progress_lock = PTHREAD_MUTEX_INITIALIZER;

void df_log_init(const char *progname)
{
    const char *slash = strrchr(progname, '/');
    prog = slash ? slash + 1 : progname;
}

const char *df_progname(void) { return prog; }

/* Build the whole line first so that one write() puts it out: messages of
 * parallel workers sharing a stderr then never interleave mid-line. */
static void vemit(const char *kind, const char *fmt, va_list ap)
{
    char line[4096];
    int n = snprintf(line, sizeof line, "%s: %s", prog, kind);
    if (n < 0)
        return;
    if ((size_t)n < sizeof line)
        vsnprintf(line + n, sizeof line - n, fmt, ap);
    size_t len = strnlen(line, sizeof line - 2);
    line[len++] = '\n';
    pthread_mutex_lock(&progress_lock);
    ssize_t w = write(STDERR_FILENO, line, len);
    (void)w;
    pthread_mutex_unlock(&progress_lock);
}

void df_error(const char *fmt, ...)
{
    va_list ap;
    va_start(ap, fmt);
    vemit("", fmt, ap);
    va_end(ap);
}

void df_warn(const char *fmt, ...)
{
    va_list ap;
    va_start(ap, fmt);
    vemit("warning: ", fmt, ap);
    va_end(ap);
}

void df_usage_error(const char *fmt, ...)
{
    va_list ap;
    va_start(ap, fmt);
    vemit("", fmt, ap);
    va_end(ap);
    fprintf(stderr, "Try '%s --help' for more information.\n", prog);
    exit(2);
}

long df_parse_long_arg(const char *flag, const char *s, long lo, long hi)
{
    char *end;
    errno = 0;
    long v = strtol(s, &end, 10);
    if (errno || end == s || *end || v < lo || v > hi)
        df_usage_error("%s: '%s' is not a whole number from %ld to %ld", flag, s, lo, hi);
    return v;
}

double df_now(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return ts.tv_sec + ts.tv_nsec * 1e-9;
}

static void draw(df_progress *p, bool final)
{
    double el = df_now() - p->t_start;
    double rate = el > 0 ? p->done / el : 0;
    char eta[32] = "";
    if (p->total > 0 && rate > 0 && !final) {
        double left = (p->total - p->done) / rate;
        snprintf(eta, sizeof eta, " ETA %dm%02ds", (int)(left / 60), (int)left % 60);
    }
    char tot[32] = "";
    if (p->total > 0)
        snprintf(tot, sizeof tot, "/%lld", (long long)p->total);
    fprintf(stderr, "\r%s: %s %lld%s (%lld failed) %.1f/s%s\033[K%s", prog, p->label,
            (long long)p->done, tot, (long long)p->failed, rate, eta, final ? "\n" : "");
    fflush(stderr);
    p->drawn = !final;
}

void df_progress_start(df_progress *p, const char *label, int64_t total, df_progress_mode mode)
{
    memset(p, 0, sizeof *p);
    p->label = label;
    p->total = total;
    p->t_start = p->t_last_draw = df_now();
    p->enabled = mode == DF_PROGRESS_ALWAYS || (mode == DF_PROGRESS_AUTO && isatty(STDERR_FILENO));
}

void df_progress_add(df_progress *p, int64_t n, int64_t failed)
{
    pthread_mutex_lock(&progress_lock);
    p->done += n;
    p->failed += failed;
    double t = df_now();
    if (p->enabled && t - p->t_last_draw >= 0.2) {
        p->t_last_draw = t;
        draw(p, false);
    }
    pthread_mutex_unlock(&progress_lock);
}

void df_progress_finish(df_progress *p)
{
    pthread_mutex_lock(&progress_lock);
    if (p->enabled)
        draw(p, true);
    pthread_mutex_unlock(&progress_lock);
}
