/* log.h - diagnostics on stderr as "df-xxx: message", and a progress line
 * (count, rate, ETA) that is drawn only when stderr is a terminal unless
 * forced. stdout is never touched here: it carries only records.
 * Tested by tests/unit/test_log.c. */
#ifndef DF_LOG_H
#define DF_LOG_H

#include <stdbool.h>
#include <stdint.h>

/* Set the program name used as prefix (call first in main). */
void df_log_init(const char *progname);
const char *df_progname(void);

/* "df-xxx: message\n" on stderr. */
void df_error(const char *fmt, ...) __attribute__((format(printf, 1, 2)));
void df_warn(const char *fmt, ...) __attribute__((format(printf, 1, 2)));

/* Bad usage: "df-xxx: message\nTry 'df-xxx --help'.\n", then exit(2).
 * Only tools call this, never the library. */
void df_usage_error(const char *fmt, ...)
    __attribute__((format(printf, 1, 2), noreturn));

/* The value of a whole-number flag: all of s in base 10, within [lo, hi];
 * anything else is a usage error naming the flag. Only tools call this. */
long df_parse_long_arg(const char *flag, const char *s, long lo, long hi);

/* Progress modes: auto draws when stderr is a tty; --quiet and --progress
 * map to NEVER and ALWAYS. */
typedef enum { DF_PROGRESS_AUTO, DF_PROGRESS_NEVER, DF_PROGRESS_ALWAYS } df_progress_mode;

typedef struct {
    const char *label;   /* "resize", "step", ... */
    int64_t total;       /* 0 when unknown */
    int64_t done;
    int64_t failed;
    double t_start, t_last_draw;
    bool enabled;
    bool drawn;          /* a line is on screen and needs a newline at the end */
} df_progress;

void df_progress_start(df_progress *p, const char *label, int64_t total, df_progress_mode mode);
/* Advance by n (failed of them counted too); redraws at most every 0.2 s.
 * Thread-safe for concurrent callers. */
void df_progress_add(df_progress *p, int64_t n, int64_t failed);
void df_progress_finish(df_progress *p);

/* Monotonic seconds. */
double df_now(void);

#endif
