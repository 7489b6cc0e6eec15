/* status.h - status codes every libdf function returns, and the detail
 * message of the last failure on this thread.
 *
 * The library never exits: it returns a df_status and, for the caller's
 * one-line error, records a human-readable detail with df_fail().
 * Tested by tests/unit/test_status.c. */
#ifndef DF_STATUS_H
#define DF_STATUS_H

typedef enum {
    DF_OK = 0,
    DF_ERR_IO,        /* open/read/write/mmap failed */
    DF_ERR_NOMEM,     /* allocation failed or a size overflowed */
    DF_ERR_FORMAT,    /* malformed input: JSON, image, safetensors, config */
    DF_ERR_RANGE,     /* a value or size outside the accepted limits */
    DF_ERR_NOTFOUND,  /* missing file, key or tensor */
    DF_ERR_SHAPE,     /* tensor shape or dtype does not match */
    DF_ERR_UNSUPPORTED,
    DF_ERR_NET,       /* transport error, HTTP failure */
    DF_ERR_NUMERIC,   /* NaN or Inf appeared */
    DF_ERR_CUDA,      /* CUDA, cuBLAS or cuDNN call failed */
    DF_ERR_INTERRUPTED,
    DF_ERR_ARG,       /* invalid argument (programmer or user) */
    DF_STATUS_COUNT
} df_status;

/* Short fixed name of a status ("malformed input"). */
const char *df_strerror(df_status s);

/* Record the detail of a failure (printf-style) for this thread and return
 * s, so that a failing path reads `return df_fail(DF_ERR_FORMAT, "...")`. */
df_status df_fail(df_status s, const char *fmt, ...)
    __attribute__((format(printf, 2, 3)));

/* The detail recorded by the last df_fail() on this thread, or the
 * df_strerror() text when none was recorded. Valid until the next df_fail. */
const char *df_last_error(void);

/* Forget the recorded detail (before an operation whose errors you report). */
void df_clear_error(void);

#endif
