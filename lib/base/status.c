/* status.c - status names and the per-thread failure detail.
 * Tested by tests/unit/test_status.c. */
#include "status.h"

#include <stdarg.h>
#include <stdio.h>
#include <string.h>

static const char *const names[DF_STATUS_COUNT] = {
    [DF_OK] = "success",
    [DF_ERR_IO] = "input/output error",
    [DF_ERR_NOMEM] = "out of memory",
    [DF_ERR_FORMAT] = "malformed input",
    [DF_ERR_RANGE] = "value out of range",
    [DF_ERR_NOTFOUND] = "not found",
    [DF_ERR_SHAPE] = "shape or dtype mismatch",
    [DF_ERR_UNSUPPORTED] = "unsupported",
    [DF_ERR_NET] = "network error",
    [DF_ERR_NUMERIC] = "non-finite value",
    [DF_ERR_CUDA] = "CUDA error",
    [DF_ERR_INTERRUPTED] = "interrupted",
    [DF_ERR_ARG] = "invalid argument",
};

static _Thread_local char detail[1024];
static _Thread_local df_status detail_status;

const char *df_strerror(df_status s)
{
    if ((unsigned)s >= DF_STATUS_COUNT)
        return "unknown error";
    return names[s];
}

df_status df_fail(df_status s, const char *fmt, ...)
{
    /* Formatted aside first: callers wrap the previous detail, passing
     * df_last_error() as an argument, and vsnprintf must not write over
     * its own input. */
    char buf[sizeof detail];
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(buf, sizeof buf, fmt, ap);
    va_end(ap);
    memcpy(detail, buf, sizeof detail);
    detail_status = s;
    return s;
}

const char *df_last_error(void)
{
    if (detail[0])
        return detail;
    return df_strerror(detail_status);
}

void df_clear_error(void)
{
    detail[0] = '\0';
    detail_status = DF_OK;
}
