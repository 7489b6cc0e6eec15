/* fuzz_util.h - helpers shared by the libFuzzer harnesses in tests/fuzz:
 * a private temp directory per process (for parsers that only take a path),
 * writing the input there, and the fixture folder ($DF_FIXTURES, default
 * ../shared/fixtures). The harnesses are built and run by tests/fuzz/fuzz.mk. */
#ifndef DF_FUZZ_UTIL_H
#define DF_FUZZ_UTIL_H

#include <fcntl.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

static char fuzz_tmp_dir[256];

static void fuzz_tmp_cleanup(void)
{
    char cmd[300];
    if (fuzz_tmp_dir[0]) {
        snprintf(cmd, sizeof cmd, "rm -rf '%s'", fuzz_tmp_dir);
        if (system(cmd) != 0) {
        }
    }
}

/* The process's temp directory, created on first use, removed at exit. */
static const char *fuzz_tmpdir(void)
{
    if (!fuzz_tmp_dir[0]) {
        const char *t = getenv("TMPDIR");
        snprintf(fuzz_tmp_dir, sizeof fuzz_tmp_dir, "%s/dffuzz.XXXXXX", t && *t ? t : "/tmp");
        if (!mkdtemp(fuzz_tmp_dir)) {
            perror("mkdtemp");
            abort();
        }
        atexit(fuzz_tmp_cleanup);
    }
    return fuzz_tmp_dir;
}

/* Write data to <tmpdir>/<name> (truncating) and return the path. */
static const char *fuzz_write_file(const char *name, const uint8_t *data, size_t n)
{
    static char path[512];
    snprintf(path, sizeof path, "%s/%s", fuzz_tmpdir(), name);
    int fd = open(path, O_WRONLY | O_CREAT | O_TRUNC, 0600);
    if (fd < 0) {
        perror(path);
        abort();
    }
    for (size_t off = 0; off < n;) {
        ssize_t w = write(fd, data + off, n - off);
        if (w <= 0) {
            perror(path);
            abort();
        }
        off += (size_t)w;
    }
    close(fd);
    return path;
}

/* $DF_FIXTURES/<sub>, or ../shared/fixtures/<sub> when unset. */
static const char *fuzz_fixture(const char *sub)
{
    static char path[4096];
    const char *f = getenv("DF_FIXTURES");
    snprintf(path, sizeof path, "%s/%s", f && *f ? f : "../shared/fixtures", sub);
    return path;
}

/* A NUL-terminated copy of the input (free it). */
static char *fuzz_strdup(const uint8_t *data, size_t n)
{
    char *s = malloc(n + 1);
    if (!s)
        abort();
    memcpy(s, data, n);
    s[n] = 0;
    return s;
}

#endif
