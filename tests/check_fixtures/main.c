/* main.c - tests/check-fixtures: walks MANIFEST.json and dispatches every
 * reference to the checker of its kind (see check.h). */
#include "check.h"

#include <math.h>
#include <stdio.h>
#include <string.h>

#include "log.h"
#include "ops.h"
#include "status.h"

void cf_line(const char *verdict, const char *name, double max_abs, double max_rel,
             const char *note)
{
    printf("%s %s max_abs %.3g max_rel %.3g%s%s\n", verdict, name, max_abs, max_rel,
           note ? "  " : "", note ? note : "");
    fflush(stdout);
}

int cf_compare(const char *file, const char *tensor, const float *got, const float *ref,
               size_t n, double tol_abs, double tol_rel_max)
{
    double max_abs = 0, max_ref = 0;
    int nan = 0;
    for (size_t i = 0; i < n; i++) {
        double d = fabs((double)got[i] - (double)ref[i]);
        if (isnan(d))
            nan = 1;
        else if (d > max_abs)
            max_abs = d;
        if (fabs(ref[i]) > max_ref)
            max_ref = fabs(ref[i]);
    }
    double max_rel = max_abs / (max_ref > 1e-30 ? max_ref : 1e-30);
    int fail = nan || max_abs > tol_abs + tol_rel_max * max_ref;
    char name[512];
    snprintf(name, sizeof name, "%s:%s", file, tensor);
    cf_line(fail ? "FAIL" : "PASS", name, nan ? NAN : max_abs, nan ? NAN : max_rel,
            nan ? "NaN in output" : NULL);
    return fail;
}

const char *cf_path(const cf_ctx *c, const char *rel)
{
    static char buf[4][4096];
    static int k;
    k = (k + 1) % 4;
    snprintf(buf[k], sizeof buf[k], "%s/%s", c->root, rel);
    return buf[k];
}

static int no_checker(const cf_ctx *c)
{
    cf_line("FAIL", c->file, NAN, NAN, "no checker implemented for this reference");
    return 1;
}

/* Weak fallbacks: each is replaced by the real checker in its own file. */
__attribute__((weak)) int cf_check_tokenizer(const cf_ctx *c) { return no_checker(c); }
__attribute__((weak)) int cf_check_text_encoder(const cf_ctx *c) { return no_checker(c); }
__attribute__((weak)) int cf_check_vae(const cf_ctx *c) { return no_checker(c); }
__attribute__((weak)) int cf_check_unet(const cf_ctx *c) { return no_checker(c); }
__attribute__((weak)) int cf_check_scheduler(const cf_ctx *c) { return no_checker(c); }
__attribute__((weak)) int cf_check_pipeline(const cf_ctx *c) { return no_checker(c); }
__attribute__((weak)) int cf_check_pipeline_png(const cf_ctx *c) { return no_checker(c); }
__attribute__((weak)) int cf_check_lora_inference(const cf_ctx *c) { return no_checker(c); }
__attribute__((weak)) int cf_check_train(const cf_ctx *c) { return no_checker(c); }

static int starts(const char *s, const char *p) { return strncmp(s, p, strlen(p)) == 0; }
static int ends(const char *s, const char *p)
{
    size_t n = strlen(s), m = strlen(p);
    return n >= m && strcmp(s + n - m, p) == 0;
}

static int dispatch(const cf_ctx *c)
{
    const char *f = c->file;
    if (starts(f, "refs/train_") && ends(f, ".safetensors")) return cf_check_train(c);
    if (starts(f, "refs/tokenizer") && ends(f, ".jsonl")) return cf_check_tokenizer(c);
    if (starts(f, "refs/text_encoder") && ends(f, ".safetensors")) return cf_check_text_encoder(c);
    if (starts(f, "refs/vae") && ends(f, ".safetensors")) return cf_check_vae(c);
    if (starts(f, "refs/unet") && ends(f, ".safetensors")) return cf_check_unet(c);
    if (starts(f, "refs/schedulers/") && ends(f, ".safetensors")) return cf_check_scheduler(c);
    if (starts(f, "refs/pipeline_") && ends(f, ".safetensors")) return cf_check_pipeline(c);
    if (starts(f, "refs/pipeline_") && ends(f, ".png")) return cf_check_pipeline_png(c);
    if (starts(f, "refs/lora_inference") && ends(f, ".safetensors")) return cf_check_lora_inference(c);
    return no_checker(c);
}

int main(int argc, char **argv)
{
    df_log_init("check-fixtures");
    // --winograd on|4x4|off: force the 3x3 convolutions onto Winograd
    // F(2x2, 3x3), F(4x4, 3x3) or the direct path (the default lets ops
    // choose by size, which on tiny fixture models is mostly direct), so
    // that the fixtures judge every path
    if (argc >= 2 && !strcmp(argv[1], "--winograd")) {
        const char *v = argc >= 3 ? argv[2] : "";
        int mode = !strcmp(v, "on") ? 2 : !strcmp(v, "4x4") ? 4 : !strcmp(v, "off") ? 0 : -1;
        if (mode < 0) {
            fprintf(stderr, "check-fixtures: --winograd takes on, 4x4 or off\n");
            return 2;
        }
        df_ops_set_winograd(mode);
        argc -= 2, argv += 2;
    }
    if (argc < 2 || argc > 3 || !strcmp(argv[1], "-h") || !strcmp(argv[1], "--help")) {
        fprintf(argc < 2 ? stderr : stdout,
                "usage: check-fixtures [--winograd on|4x4|off] DIR [FILTER]\n"
                "Checks every reference in DIR/refs/MANIFEST.json against this implementation;\n"
                "FILTER (a substring) restricts to matching reference files.\n"
                "--winograd puts every 3x3 convolution on Winograd F(2x2, 3x3) (on),\n"
                "F(4x4, 3x3) (4x4) or the direct path (off).\n");
        return argc < 2 ? 2 : 0;
    }
    const char *filter = argc == 3 ? argv[2] : NULL;
    char mpath[4096];
    snprintf(mpath, sizeof mpath, "%s/refs/MANIFEST.json", argv[1]);
    json_error_t jerr;
    json_t *m = json_load_file(mpath, 0, &jerr);
    if (!m) {
        df_error("%s: %s", mpath, jerr.text);
        return 1;
    }
    json_t *files = json_object_get(m, "files");
    if (!json_is_array(files) || json_array_size(files) == 0) {
        df_error("%s: no \"files\" array", mpath);
        return 1;
    }
    int fails = 0, checked = 0;
    size_t i;
    json_t *e;
    json_array_foreach(files, i, e) {
        const char *f = json_string_value(json_object_get(e, "file"));
        if (!f) {
            df_error("%s: files[%zu] has no \"file\"", mpath, i);
            fails++;
            continue;
        }
        if (filter && !strstr(f, filter))
            continue;
        cf_ctx c = {.root = argv[1], .manifest = m, .entry = e, .file = f};
        df_clear_error();
        fails += dispatch(&c);
        checked++;
    }
    json_decref(m);
    fprintf(stderr, "check-fixtures: %d reference files, %d failing lines\n", checked, fails);
    return fails ? 1 : 0;
}
