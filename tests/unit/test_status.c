/* test_status.c - df_fail/df_last_error: the detail recorded, the status
 * returned, and wrapping the previous detail (df_fail(s, "ctx: %s",
 * df_last_error()), the way every loader adds its file name) without the
 * formatter reading the buffer it is writing. Run by tests/run-tests.sh. */
#include <string.h>

#include "status.h"
#include "unit.h"

int main(void)
{
    CHECK(df_fail(DF_ERR_SHAPE, "tensor \"%s\": expected [%d]", "w", 3) == DF_ERR_SHAPE);
    CHECK(!strcmp(df_last_error(), "tensor \"w\": expected [3]"));

    /* Wrapped twice: each level prepends its context to the whole detail. */
    df_fail(DF_ERR_FORMAT, "%s: %s", "unet", df_last_error());
    df_fail(DF_ERR_FORMAT, "%s/config.json: %s (%d)", "m", df_last_error(), 7);
    CHECK_MSG(!strcmp(df_last_error(), "m/config.json: unet: tensor \"w\": expected [3] (7)"),
              "got '%s'", df_last_error());

    /* A detail at the buffer's limit, wrapped: truncated, still terminated. */
    char big[2000];
    memset(big, 'x', sizeof big - 1);
    big[sizeof big - 1] = '\0';
    df_fail(DF_ERR_IO, "%s", big);
    size_t n1 = strlen(df_last_error());
    df_fail(DF_ERR_IO, "ctx: %s", df_last_error());
    const char *e = df_last_error();
    CHECK(n1 > 100 && strlen(e) == n1 && !strncmp(e, "ctx: xxx", 8));

    /* Cleared: the fixed name of "no error" stands in for the detail. */
    df_clear_error();
    CHECK_MSG(!strcmp(df_last_error(), df_strerror(DF_OK)), "got '%s'", df_last_error());
    UNIT_END();
}
