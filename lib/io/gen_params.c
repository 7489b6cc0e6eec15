/* gen_params.c - records and PNG text of generated images (see
 * gen_params.h). Tested by tests/unit/test_gen_params.c. */
#include "gen_params.h"

#include <errno.h>
#include <openssl/evp.h>
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "jsonl.h"

static pthread_mutex_t write_lock = PTHREAD_MUTEX_INITIALIZER;

void df_float_str(float f, char buf[32])
{
    for (int p = 1; p <= 9; p++) {
        snprintf(buf, 32, "%.*g", p, (double)f);
        if (strtof(buf, NULL) == f)
            return;
    }
}

void df_rec_set_float(json_t *rec, const char *key, float f)
{
    char buf[32];
    df_float_str(f, buf);
    df_rec_set_num(rec, key, strtod(buf, NULL));
}

/* Digits needed for every real in v to read back exactly (0: no reals). */
static int real_digits(const json_t *v)
{
    int d = 0;
    if (json_is_real(v)) {
        double x = json_real_value(v);
        char buf[40];
        for (d = 1; d < 17; d++) {
            snprintf(buf, sizeof buf, "%.*g", d, x);
            if (strtod(buf, NULL) == x)
                break;
        }
    } else if (json_is_object(v)) {
        const char *k;
        json_t *e;
        json_object_foreach((json_t *)v, k, e) {
            int n = real_digits(e);
            d = n > d ? n : d;
        }
    } else if (json_is_array(v)) {
        size_t i;
        json_t *e;
        json_array_foreach(v, i, e) {
            int n = real_digits(e);
            d = n > d ? n : d;
        }
    }
    return d;
}

/* jansson prints every real with one precision; the fewest digits that keep
 * all of a record's reals exact print each in its shortest form as long as
 * that is at most 15 digits (DBL_DIG); a passed-through real that needs 16
 * or 17 keeps its value. */
char *df_rec_dumps(const json_t *rec)
{
    int d = real_digits(rec);
    size_t flags = JSON_COMPACT | JSON_PRESERVE_ORDER | (d ? JSON_REAL_PRECISION(d) : 0);
    return json_dumps(rec, flags);
}

df_status df_rec_write_line(int fd, const json_t *rec)
{
    char *s = df_rec_dumps(rec);
    if (!s)
        return df_fail(DF_ERR_NOMEM, "cannot serialize record");
    size_t len = strlen(s);
    s[len] = '\n';                  /* the NUL's place; only len+1 bytes are written */
    df_status st = DF_OK;
    pthread_mutex_lock(&write_lock);
    for (size_t off = 0; off < len + 1;) {
        ssize_t w = write(fd, s + off, len + 1 - off);
        if (w < 0 && errno == EINTR)
            continue;
        if (w < 0) {
            st = df_fail(DF_ERR_IO, "write error: %s", strerror(errno));
            break;
        }
        off += (size_t)w;
    }
    pthread_mutex_unlock(&write_lock);
    free(s);
    return st;
}

void df_gen_lora_name(const char *path, char *buf, size_t cap)
{
    const char *b = strrchr(path, '/');
    b = b ? b + 1 : path;
    size_t n = strlen(b);
    const char *ext = ".safetensors";
    if (n > strlen(ext) && !strcmp(b + n - strlen(ext), ext))
        n -= strlen(ext);
    snprintf(buf, cap, "%.*s", (int)n, b);
}

df_status df_gen_file_hash12(const char *path, char out[13])
{
    FILE *f = fopen(path, "rb");
    if (!f)
        return df_fail(DF_ERR_IO, "%s: %s", path, strerror(errno));
    EVP_MD_CTX *md = EVP_MD_CTX_new();
    int ok = md && EVP_DigestInit_ex(md, EVP_sha256(), NULL);
    unsigned char d[EVP_MAX_MD_SIZE];
    unsigned char *b = malloc(1 << 16);
    size_t n;
    ok = ok && b;
    while (ok && (n = fread(b, 1, 1 << 16, f)) > 0)
        ok = EVP_DigestUpdate(md, b, n);
    unsigned dl = 0;
    ok = ok && !ferror(f) && EVP_DigestFinal_ex(md, d, &dl) && dl >= 6;
    EVP_MD_CTX_free(md);
    free(b);
    fclose(f);
    if (!ok)
        return df_fail(DF_ERR_IO, "%s: cannot read for its sha256", path);
    for (int i = 0; i < 6; i++)
        snprintf(out + 2 * i, 3, "%02x", d[i]);
    return DF_OK;
}

char *df_gen_a1111_text(const df_gen_text *g)
{
    char cfg[32], strength[64] = "", *hashes = NULL, *s = NULL;
    df_float_str(g->guidance, cfg);
    if (g->strength > 0) {
        char v[32];
        df_float_str(g->strength, v);
        snprintf(strength, sizeof strength, ", Denoising strength: %s", v);
    }
    if (g->lora_hashes && asprintf(&hashes, ", Lora hashes: \"%s\"", g->lora_hashes) < 0)
        return NULL;
    if (asprintf(&s, "%s%s\nNegative prompt: %s\nSteps: %d, Sampler: %s, CFG scale: %s, "
                 "Seed: %llu, Size: %dx%d%s%s", g->prompt ? g->prompt : "",
                 g->lora_prompt ? g->lora_prompt : "",
                 g->negative_prompt ? g->negative_prompt : "", g->steps,
                 g->sampler ? g->sampler : "", cfg, (unsigned long long)g->seed, g->width,
                 g->height, strength, hashes ? hashes : "") < 0)
        s = NULL;
    free(hashes);
    return s;
}

df_status df_gen_png_encode(const df_image *img, const char *a1111, const char *record_json,
                            const char *software, uint8_t **buf, size_t *n)
{
    const char *kv[] = {"parameters", a1111 ? a1111 : "", "diffyface",
                        record_json ? record_json : "{}", "Software", software, NULL};
    return df_image_encode_png_mem(img, kv, buf, n);
}

df_status df_gen_png_write(const char *path, const df_image *img, const char *a1111,
                           const char *record_json, const char *software)
{
    const char *kv[] = {"parameters", a1111 ? a1111 : "", "diffyface",
                        record_json ? record_json : "{}", "Software", software, NULL};
    return df_image_write_png(path, img, kv);
}
