/* test_gen_params.c - lib/io/gen_params: shortest float text, record
 * dumps, the A1111 parameters text, PNG text chunks read back by libpng's
 * decoder path (our own df_image_decode ignores text, so the chunks are
 * found in the bytes). */
#include <string.h>
#include <unistd.h>

#include "gen_params.h"
#include "jsonl.h"
#include "unit.h"

static int contains(const uint8_t *b, size_t n, const char *s)
{
    size_t k = strlen(s);
    for (size_t i = 0; i + k <= n; i++)
        if (!memcmp(b + i, s, k))
            return 1;
    return 0;
}

int main(void)
{
    char buf[32];
    df_float_str(0.8f, buf);
    CHECK(!strcmp(buf, "0.8"));
    df_float_str(7.5f, buf);
    CHECK(!strcmp(buf, "7.5"));
    df_float_str(1.0f / 3.0f, buf);
    CHECK_MSG(!strcmp(buf, "0.33333334"), "%s", buf);

    json_t *r = json_object();
    df_rec_set_float(r, "guidance", 0.8f);
    df_rec_set_int(r, "seed", 12);
    df_rec_set_str(r, "prompt", "a \"face\"");
    char *s = df_rec_dumps(r);
    CHECK_MSG(s && !strcmp(s, "{\"guidance\":0.8,\"seed\":12,\"prompt\":\"a \\\"face\\\"\"}"), "%s", s);
    free(s);
    json_decref(r);

    df_gen_lora_name("/x/y/my_lora.safetensors", buf, sizeof buf);
    CHECK(!strcmp(buf, "my_lora"));
    df_gen_lora_name("plain", buf, sizeof buf);
    CHECK(!strcmp(buf, "plain"));

    /* sha256("abc") = ba7816bf8f01cfea... */
    char path[] = "/tmp/df-test-gen-XXXXXX";
    int fd = mkstemp(path);
    CHECK(fd >= 0 && write(fd, "abc", 3) == 3);
    close(fd);
    char h[13];
    CHECK(df_gen_file_hash12(path, h) == DF_OK && !strcmp(h, "ba7816bf8f01"));
    unlink(path);
    CHECK(df_gen_file_hash12("/nonexistent/x", h) == DF_ERR_IO);

    df_gen_text g = {.prompt = "p", .negative_prompt = NULL, .lora_prompt = " <lora:a:0.5>",
                     .lora_hashes = "a: 0123456789ab", .sampler = "ddim", .steps = 20,
                     .width = 64, .height = 48, .guidance = 7.5f, .seed = 42};
    s = df_gen_a1111_text(&g);
    CHECK_MSG(s && !strcmp(s, "p <lora:a:0.5>\nNegative prompt: \nSteps: 20, Sampler: ddim, "
                          "CFG scale: 7.5, Seed: 42, Size: 64x48, Lora hashes: "
                          "\"a: 0123456789ab\""), "%s", s);
    free(s);
    g.lora_prompt = g.lora_hashes = NULL;
    g.strength = 0.75f;
    s = df_gen_a1111_text(&g);
    CHECK_MSG(s && !strcmp(s, "p\nNegative prompt: \nSteps: 20, Sampler: ddim, CFG scale: 7.5, "
                          "Seed: 42, Size: 64x48, Denoising strength: 0.75"), "%s", s);

    df_image img = {0};
    CHECK(df_image_alloc(&img, 4, 2) == DF_OK);
    memset(img.px, 7, 4 * 2 * 3);
    uint8_t *png = NULL;
    size_t n = 0;
    CHECK(df_gen_png_encode(&img, s, "{\"seed\":42}", "diffyface test", &png, &n) == DF_OK);
    CHECK(png && contains(png, n, "tEXtparameters") && contains(png, n, "Seed: 42, Size: 64x48"));
    CHECK(contains(png, n, "tEXtdiffyface") && contains(png, n, "{\"seed\":42}"));
    CHECK(contains(png, n, "tEXtSoftware") && contains(png, n, "diffyface test"));
    df_image back = {0};
    CHECK(df_image_decode_mem(png, n, NULL, &back) == DF_OK && back.w == 4 && back.h == 2 &&
          !memcmp(back.px, img.px, 24));
    df_image_free(&back);
    df_image_free(&img);
    free(png);
    free(s);
    UNIT_END();
}
