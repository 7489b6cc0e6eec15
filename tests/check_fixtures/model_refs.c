/* model_refs.c - reference-tensor helpers of the UNet and VAE checkers
 * (see model_refs.h). */
#include "model_refs.h"

#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

int cf_ref_fail(const cf_ctx *c, const char *tensor, const char *why)
{
    char name[512];
    snprintf(name, sizeof name, "%s:%s", c->file, tensor);
    cf_line("FAIL", name, NAN, NAN, why);
    return 1;
}

int cf_ref_get(const cf_ctx *c, const df_safetensors *st, const char *name, cf_ref *r)
{
    memset(r, 0, sizeof *r);
    const df_st_tensor *t = df_st_find(st, name);
    if (!t)
        return cf_ref_fail(c, name, "tensor missing from the reference file");
    if (!(r->data = malloc((t->numel ? t->numel : 1) * sizeof *r->data)))
        return cf_ref_fail(c, name, "out of memory");
    if (df_st_to_f32(t, r->data) != DF_OK) {
        cf_ref_free(r);
        return cf_ref_fail(c, name, df_last_error());
    }
    r->n = t->numel;
    r->ndim = t->ndim;
    memcpy(r->shape, t->shape, sizeof r->shape);
    return 0;
}

void cf_ref_free(cf_ref *r)
{
    free(r->data);
    r->data = NULL;
}

int cf_ref_compare(const cf_ctx *c, const char *tensor, const float *got, const cf_ref *r)
{
    double max_ref = 0;
    for (size_t i = 0; i < r->n; i++)
        max_ref = fmax(max_ref, fabs(r->data[i]));
    return cf_compare(c->file, tensor, got, r->data, r->n, 1e-4 * fmax(1.0, max_ref), 0);
}

int cf_ref_unknown(const cf_ctx *c, const char *const *known)
{
    json_t *tensors = json_object_get(c->entry, "tensors");
    const char *key;
    json_t *v;
    int fails = 0;
    json_object_foreach(tensors, key, v) {
        int found = 0;
        for (const char *const *k = known; *k && !found; k++)
            found = !strcmp(*k, key);
        if (!found)
            fails += cf_ref_fail(c, key, "no check for this tensor");
    }
    return fails;
}
