/* serve_gallery.c - the images this server made, under --out. Each saved
 * image appends one line to --out/df-serve.jsonl ({"name", "url", "seed",
 * "width", "height", "time", "params"}), so that the gallery survives a
 * restart: at start the index is read back and every entry whose PNG is
 * still there is listed again (a line torn by a crash is skipped). Only
 * names listed here are ever served from --out. Tested by
 * tests/tools/test-df-serve.sh (gallery after a restart). */
#include <errno.h>
#include <fcntl.h>
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <time.h>
#include <unistd.h>

#include "gen_params.h"
#include "jsonl.h"
#include "log.h"
#include "serve.h"

static pthread_mutex_t lock = PTHREAD_MUTEX_INITIALIZER;
static json_t *entries;            /* oldest first */
static int index_fd = -1;
static int counter;

/* Names this server writes: digits, '-', digits, ".png". Anything else in
 * an index (edited by hand, another tool's) is not served. */
static bool safe_name(const char *s)
{
    size_t n = strlen(s);
    if (n < 5 || n > 60 || strcmp(s + n - 4, ".png"))
        return false;
    for (size_t i = 0; i < n - 4; i++)
        if (!((s[i] >= '0' && s[i] <= '9') || s[i] == '-'))
            return false;
    return s[0] != '-';
}

df_status gallery_open(const char *dir)
{
    entries = json_array();
    char *path = NULL;
    if (asprintf(&path, "%s/df-serve.jsonl", dir) < 0)
        return df_fail(DF_ERR_NOMEM, "out of memory");
    json_t *old = NULL;
    if (access(path, F_OK) == 0 && df_jsonl_read_file(path, &old) == DF_OK) {
        size_t i;
        json_t *e;
        json_array_foreach(old, i, e) {
            const char *name = df_rec_str(e, "name");
            char *png = NULL;
            if (!name || df_rec_str(e, "error") || !safe_name(name) ||
                asprintf(&png, "%s/%s", dir, name) < 0)
                continue;
            if (access(png, R_OK) == 0)
                json_array_append(entries, e);
            free(png);
        }
        json_decref(old);
    }
    index_fd = open(path, O_WRONLY | O_CREAT | O_APPEND | O_CLOEXEC, 0644);
    df_status st = index_fd < 0 ? df_fail(DF_ERR_IO, "%s: %s", path, strerror(errno)) : DF_OK;
    free(path);
    return st;
}

void gallery_close(void)
{
    if (index_fd >= 0)
        close(index_fd);
    index_fd = -1;
    json_decref(entries);
    entries = NULL;
}

void gallery_next_name(uint64_t seed, char name[64])
{
    for (;;) {
        snprintf(name, 64, "%05d-%llu.png", counter++, (unsigned long long)seed);
        char *p = NULL;
        if (asprintf(&p, "%s/%s", g_cfg.out_dir, name) < 0)
            return;
        bool taken = access(p, F_OK) == 0;
        free(p);
        if (!taken)
            return;
    }
}

df_status gallery_add(const char *name, uint64_t seed, int batch_index, int width, int height,
                      json_t *params)
{
    char when[32], url[96];
    time_t now = time(NULL);
    struct tm tm;
    gmtime_r(&now, &tm);
    strftime(when, sizeof when, "%Y-%m-%dT%H:%M:%SZ", &tm);
    snprintf(url, sizeof url, "/images/%s", name);
    json_t *e = json_object();
    df_rec_set_str(e, "name", name);
    df_rec_set_str(e, "url", url);
    df_rec_set_int(e, "seed", (long long)seed);
    if (batch_index > 0)
        df_rec_set_int(e, "batch_index", batch_index);
    df_rec_set_int(e, "width", width);
    df_rec_set_int(e, "height", height);
    df_rec_set_str(e, "time", when);
    json_object_set(e, "params", params);
    df_status st = df_rec_write_line(index_fd, e);
    pthread_mutex_lock(&lock);
    json_array_append_new(entries, e);
    pthread_mutex_unlock(&lock);
    return st;
}

json_t *gallery_json(void)
{
    json_t *a = json_array();
    pthread_mutex_lock(&lock);
    for (size_t i = json_array_size(entries); i-- > 0;) {
        json_t *e = json_deep_copy(json_array_get(entries, i));
        json_object_del(e, "name");
        json_array_append_new(a, e);
    }
    pthread_mutex_unlock(&lock);
    json_t *o = json_object();
    json_object_set_new(o, "images", a);
    return o;
}

bool gallery_has(const char *name)
{
    if (!safe_name(name))
        return false;
    bool found = false;
    pthread_mutex_lock(&lock);
    size_t i;
    json_t *e;
    json_array_foreach(entries, i, e) {
        const char *n = df_rec_str(e, "name");
        if (n && !strcmp(n, name)) {
            found = true;
            break;
        }
    }
    pthread_mutex_unlock(&lock);
    return found;
}
