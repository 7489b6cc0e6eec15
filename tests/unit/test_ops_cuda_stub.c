/* test_ops_cuda_stub.c - the parts of lib/ops/ops_cuda.h every build has:
 * --dtype parsing and names, and the context's answer where it cannot run
 * (built without CUDA: DF_ERR_UNSUPPORTED naming the function; built with
 * CUDA on a machine without a GPU: DF_ERR_CUDA "no CUDA device"). The ops
 * themselves are tested by test_cuda_ops.c on a GPU. */
#include <string.h>

#include "ops_cuda.h"
#include "unit.h"

int main(void)
{
    df_dtype dt = DF_DTYPE_F16;
    CHECK(df_compute_dtype_parse("fp32", &dt) == DF_OK && dt == DF_DTYPE_F32);
    CHECK(df_compute_dtype_parse("fp16", &dt) == DF_OK && dt == DF_DTYPE_F16);
    CHECK(df_compute_dtype_parse("bf16", &dt) == DF_OK && dt == DF_DTYPE_BF16);
    CHECK(df_compute_dtype_parse("float16", &dt) == DF_ERR_ARG);
    CHECK(strstr(df_last_error(), "float16") != NULL);
    CHECK(df_compute_dtype_parse(NULL, &dt) == DF_ERR_ARG);
    CHECK(df_dtype_size(DF_DTYPE_F32) == 4 && df_dtype_size(DF_DTYPE_F16) == 2 &&
          df_dtype_size(DF_DTYPE_BF16) == 2);
    CHECK(strcmp(df_compute_dtype_name(DF_DTYPE_BF16), "bf16") == 0);

    df_cuda_ctx *ctx = (df_cuda_ctx *)&dt;   /* anything but NULL: init must clear it */
    int n = df_cuda_device_count();
#ifdef DF_CUDA
    if (n > 0) {
        CHECK(df_cuda_init(n, &ctx) == DF_ERR_ARG && ctx == NULL);   /* one past the last */
        printf("built with CUDA, %d GPU(s)\n", n);
    } else {
        CHECK(df_cuda_init(0, &ctx) == DF_ERR_CUDA && ctx == NULL);
        CHECK(strstr(df_last_error(), "no CUDA device") != NULL);
        printf("built with CUDA, no GPU: %s\n", df_last_error());
    }
#else
    CHECK(n == 0);
    CHECK(df_cuda_init(0, &ctx) == DF_ERR_UNSUPPORTED && ctx == NULL);
    CHECK(strstr(df_last_error(), "built without CUDA") != NULL);
    CHECK(strstr(df_last_error(), "df_cuda_init") != NULL);
    void *p = &n;
    CHECK(df_cuda_malloc(NULL, &p, 16) == DF_ERR_UNSUPPORTED && p == NULL);
    CHECK(df_cuda_linear_forward(NULL, DF_DTYPE_F32, NULL, NULL, NULL, NULL, 1, 1, 1) ==
          DF_ERR_UNSUPPORTED);
    printf("built without CUDA: %s\n", df_last_error());
#endif
    UNIT_END();
}
