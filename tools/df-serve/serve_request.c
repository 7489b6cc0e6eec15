/* serve_request.c - limits on everything a client sends: the body must be
 * one JSON object (no duplicate keys), each field of the right type and
 * range, sizes multiples of the model's and within --max-pixels, prompts
 * within --max-prompt-chars, base64 strict, uploaded images refused from
 * their header before any pixel is decoded (decompression bombs). Every
 * refusal is a one-line reason naming the field. Tested by
 * tests/tools/test-df-serve-limits.sh. */
#include <errno.h>
#include <math.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <unistd.h>

#include <openssl/evp.h>

#include "edit_image.h"
#include "gen_params.h"
#include "image.h"
#include "jsonl.h"
#include "scheduler.h"
#include "serve.h"

char *req_errf(const char *fmt, ...)
{
    char *s = NULL;
    va_list ap;
    va_start(ap, fmt);
    if (vasprintf(&s, fmt, ap) < 0)
        s = NULL;
    va_end(ap);
    return s;
}

json_t *req_parse_object(const serve_request *rq, char **err)
{
    json_error_t je;
    json_t *v = json_loadb(rq->body, rq->body_len, JSON_REJECT_DUPLICATES, &je);
    if (!v) {
        *err = req_errf("malformed JSON at line %d column %d: %s", je.line, je.column, je.text);
        return NULL;
    }
    if (!json_is_object(v)) {
        json_decref(v);
        *err = req_errf("the body must be a JSON object");
        return NULL;
    }
    return v;
}

bool req_check_size(long long w, long long h, const char *wname, char **err)
{
    int m = g_cfg.size_multiple;
    if (w < m || h < m || w % m || h % m) {
        *err = req_errf("%s: %lldx%lld: width and height must be positive multiples of %d",
                        wname, w, h, m);
        return false;
    }
    if (w > DF_IMAGE_MAX_SIDE || h > DF_IMAGE_MAX_SIDE || w * h > g_cfg.max_pixels) {
        *err = req_errf("%s: %lldx%lld is over this server's --max-pixels %lld", wname, w, h,
                        g_cfg.max_pixels);
        return false;
    }
    return true;
}

bool req_get_int(json_t *o, const char *key, long long lo, long long hi, long long *out,
                 char **err)
{
    json_t *v = json_object_get(o, key);
    if (!v || json_is_null(v))
        return true;
    /* 20.0 from a client that writes every number as a float is 20. */
    double d = json_is_real(v) ? json_real_value(v) : 0;
    if (json_is_real(v) && d == floor(d) && fabs(d) < 9e15) {
        *out = (long long)d;
    } else if (json_is_integer(v)) {
        *out = json_integer_value(v);
    } else {
        *err = req_errf("%s must be a whole number", key);
        return false;
    }
    if (*out < lo || *out > hi) {
        *err = req_errf("%s must be from %lld to %lld (got %lld)", key, lo, hi, *out);
        return false;
    }
    return true;
}

bool req_get_num(json_t *o, const char *key, double lo, double hi, double *out, char **err)
{
    json_t *v = json_object_get(o, key);
    if (!v || json_is_null(v))
        return true;
    if (!json_is_number(v) || !isfinite(json_number_value(v))) {
        *err = req_errf("%s must be a number", key);
        return false;
    }
    *out = json_number_value(v);
    if (*out < lo || *out > hi) {
        *err = req_errf("%s must be from %g to %g (got %g)", key, lo, hi, *out);
        return false;
    }
    return true;
}

/* Characters, not bytes: jansson has checked that strings are UTF-8. */
static size_t utf8_chars(const char *s)
{
    size_t n = 0;
    for (; *s; s++)
        n += ((unsigned char)*s & 0xc0) != 0x80;
    return n;
}

bool req_get_str(json_t *o, const char *key, size_t max_chars, const char **out, char **err)
{
    json_t *v = json_object_get(o, key);
    if (!v || json_is_null(v))
        return true;
    if (!json_is_string(v)) {
        *err = req_errf("%s must be a string", key);
        return false;
    }
    if (strlen(json_string_value(v)) != json_string_length(v)) {
        *err = req_errf("%s must not contain NUL characters", key);
        return false;
    }
    if (max_chars && utf8_chars(json_string_value(v)) > max_chars) {
        *err = req_errf("%s is longer than this server's %zu characters", key, max_chars);
        return false;
    }
    *out = json_string_value(v);
    return true;
}

bool req_prompt(json_t *o, const char *key, const char **out, char **err)
{
    return req_get_str(o, key, (size_t)g_cfg.max_prompt_chars, out, err);
}

bool req_seed(json_t *o, const char *key, uint64_t *out, char **err)
{
    long long s = -1;
    if (!req_get_int(o, key, -1, (long long)(~0ULL >> 1), &s, err))
        return false;
    *out = s < 0 ? req_random_seed() : (uint64_t)s;
    return true;
}

uint64_t req_random_seed(void)
{
    unsigned long long s = 0;
    FILE *f = fopen("/dev/urandom", "rb");
    if (!f || fread(&s, sizeof s, 1, f) != 1)
        s = (unsigned long long)time(NULL) ^ ((unsigned long long)getpid() << 32);
    if (f)
        fclose(f);
    return s & 0xffffffffffffULL;   /* as df-sample: readable */
}

bool req_scheduler(serve_params *p, const char *name, const char *field, char **err)
{
    free(p->sched_arg);
    p->sched_arg = NULL;
    if (!name || !*name) {
        snprintf(p->sched, sizeof p->sched, "%s", g_cfg.default_sched);
        return true;
    }
    /* Built as the pipeline will build it (from the model's scheduler
     * config), so that a name it would refuse is a 400 now, and the record
     * names it as df-sample does. */
    df_scheduler *s = NULL;
    const json_t *cfg = g_cfg.pipe ? df_pipeline_scheduler_config(g_cfg.pipe) : NULL;
    if (df_scheduler_create(name, cfg, NULL, &s) != DF_OK) {
        *err = req_errf("%s: unknown scheduler '%s'", field, name);
        return false;
    }
    snprintf(p->sched, sizeof p->sched, "%s", df_scheduler_short_name(s));
    df_scheduler_free(s);
    p->sched_arg = strdup(name);
    return p->sched_arg != NULL || (*err = req_errf("out of memory"), false);
}

bool req_lora_scales(json_t *o, const char *key, float *scales, char **err)
{
    for (int i = 0; i < g_cfg.n_loras; i++)
        scales[i] = g_cfg.lora_scale[i];
    json_t *v = json_object_get(o, key);
    if (!v || json_is_null(v))
        return true;
    if (!json_is_array(v) || json_array_size(v) != (size_t)g_cfg.n_loras) {
        *err = req_errf("%s must be an array of %d numbers (one per --lora)", key, g_cfg.n_loras);
        return false;
    }
    for (int i = 0; i < g_cfg.n_loras; i++) {
        json_t *e = json_array_get(v, (size_t)i);
        if (!json_is_number(e) || !isfinite(json_number_value(e)) ||
            fabs(json_number_value(e)) > 100) {
            *err = req_errf("%s[%d] must be a number from -100 to 100", key, i);
            return false;
        }
        scales[i] = (float)json_number_value(e);
    }
    return true;
}

char *req_base64(const uint8_t *buf, size_t n)
{
    if (n > ((size_t)1 << 40))
        return NULL;
    char *s = malloc(4 * ((n + 2) / 3) + 1);
    if (!s)
        return NULL;
    /* EVP_EncodeBlock takes an int length: encode in slices of whole triples. */
    size_t o = 0;
    for (size_t i = 0; i < n;) {
        size_t k = n - i > (1u << 29) ? (1u << 29) : n - i;
        o += (size_t)EVP_EncodeBlock((unsigned char *)s + o, buf + i, (int)k);
        i += k;
    }
    s[o] = 0;
    return s;
}

static int b64val(unsigned char c)
{
    if (c >= 'A' && c <= 'Z') return c - 'A';
    if (c >= 'a' && c <= 'z') return c - 'a' + 26;
    if (c >= '0' && c <= '9') return c - '0' + 52;
    if (c == '+') return 62;
    if (c == '/') return 63;
    return -1;
}

uint8_t *req_unbase64(const char *s, size_t len, size_t *n)
{
    while (len && s[len - 1] == '=' && len % 4 != 1)
        len--;                                   /* padding is optional */
    if (len % 4 == 1)
        return NULL;
    uint8_t *out = malloc(len / 4 * 3 + 3);
    if (!out)
        return NULL;
    size_t o = 0;
    uint32_t acc = 0;
    int bits = 0;
    for (size_t i = 0; i < len; i++) {
        int v = b64val((unsigned char)s[i]);
        if (v < 0) {
            free(out);
            return NULL;
        }
        acc = (acc << 6) | (uint32_t)v;
        bits += 6;
        if (bits >= 8) {
            bits -= 8;
            out[o++] = (uint8_t)(acc >> bits);
        }
    }
    *n = o;
    return out;
}

bool req_image(const char *field, const char *b64, int w, int h, bool gray, uint8_t **out,
               char **err)
{
    *out = NULL;
    const char *s = b64;
    if (!strncmp(s, "data:", 5)) {
        const char *comma = strchr(s, ',');
        if (!comma || !strstr(s, ";base64") || strstr(s, ";base64") > comma) {
            *err = req_errf("%s: a data: URL must be base64 (data:image/png;base64,...)", field);
            return false;
        }
        s = comma + 1;
    }
    size_t n = 0;
    uint8_t *buf = req_unbase64(s, strlen(s), &n);
    if (!buf || n == 0) {
        free(buf);
        *err = req_errf("%s: malformed base64", field);
        return false;
    }
    df_image_format fmt;
    int iw, ih;
    /* The header first: a small file that claims a huge image is refused
     * before anything its size is allocated. */
    uint64_t limit = 4 * (uint64_t)g_cfg.max_pixels;
    if (df_image_probe_mem(buf, n, &fmt, &iw, &ih) != DF_OK) {
        *err = req_errf("%s: not a PNG or JPEG image (%s)", field, df_last_error());
        free(buf);
        return false;
    }
    if ((uint64_t)iw * (uint64_t)ih > limit) {
        *err = req_errf("%s: %dx%d image is over the upload limit of %llu pixels", field, iw, ih,
                        (unsigned long long)limit);
        free(buf);
        return false;
    }
    df_image_limits lim = {.max_pixels = limit};
    df_image img = {0}, sized = {0};
    df_status st = df_image_decode_mem(buf, n, &lim, &img);
    free(buf);
    if (st != DF_OK) {
        *err = req_errf("%s: cannot decode: %s", field, df_last_error());
        return false;
    }
    /* As df-sample and diffusers' image processor (and A1111's default
     * "just resize"): the whole image stretched to the output size; a mask
     * resized as RGB, then made gray. */
    if (gray)
        st = df_edit_fit_mask(&img, w, h, out);
    else if ((st = df_edit_fit_image(&img, w, h, &sized)) == DF_OK)
        *out = sized.px;
    df_image_free(&img);
    if (st != DF_OK) {
        *err = req_errf("%s: cannot bring to %dx%d: %s", field, w, h, df_last_error());
        return false;
    }
    return true;
}

bool req_image_size(const char *field, const char *b64, int *w, int *h, char **err)
{
    const char *s = b64;
    if (!strncmp(s, "data:", 5) && strchr(s, ','))
        s = strchr(s, ',') + 1;
    /* Only the header is needed: decode the first few KB of base64. */
    size_t len = strlen(s), n = 0;
    size_t take = len < 65536 ? len : 65536;
    take -= take % 4;
    uint8_t *buf = req_unbase64(s, take, &n);
    int iw, ih;
    if (!buf || df_image_probe_mem(buf, n, NULL, &iw, &ih) != DF_OK) {
        free(buf);
        *err = req_errf("%s: not a PNG or JPEG image", field);
        return false;
    }
    free(buf);
    if (df_edit_default_size(iw, ih, g_cfg.size_multiple, w, h) != DF_OK) {
        *err = req_errf("%s: %dx%d is too small", field, iw, ih);
        return false;
    }
    return true;
}

void serve_params_free(serve_params *p)
{
    free(p->prompt);
    free(p->negative);
    free(p->sched_arg);
    free(p->init_rgb);
    free(p->mask);
    memset(p, 0, sizeof *p);
}

json_t *serve_params_json(const serve_params *p)
{
    json_t *o = json_object();
    df_rec_set_str(o, "prompt", p->prompt ? p->prompt : "");
    df_rec_set_str(o, "negative_prompt", p->negative ? p->negative : "");
    df_rec_set_int(o, "steps", p->steps);
    df_rec_set_float(o, "guidance", p->guidance);
    df_rec_set_str(o, "scheduler", p->sched);
    df_rec_set_int(o, "seed", (long long)p->seed);
    df_rec_set_int(o, "width", p->width);
    df_rec_set_int(o, "height", p->height);
    df_rec_set_int(o, "batch", p->batch * p->runs);
    if (g_cfg.n_loras) {
        json_t *a = json_array();
        for (int i = 0; i < g_cfg.n_loras; i++) {
            char b[32];
            df_float_str(p->lora_scales[i], b);
            json_array_append_new(a, json_real(strtod(b, NULL)));
        }
        json_object_set_new(o, "lora_scales", a);
    }
    if (p->edit) {
        df_rec_set_float(o, "strength", p->strength);
        json_object_set_new(o, "inpaint", json_boolean(p->inpaint));
    }
    return o;
}
