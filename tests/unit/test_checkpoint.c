/* test_checkpoint.c - lib/train/checkpoint: a LoRA set on the fixture model with
 * random params, moments, a generator advanced by a random number of draws
 * (with a cached normal), an order and a configuration is saved and loaded
 * into fresh objects bit for bit (the next draws of the generator are the
 * same); alpha != rank keeps exact params; leftovers named *.tmp are never
 * loaded; `keep` deletes the oldest; a set with another rank, an optimizer
 * of another size and an empty directory fail clearly. */
#include <ftw.h>
#include <stdint.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#include "checkpoint.h"
#include "lora_params.h"
#include "rng.h"
#include "unit.h"
#include "weights.h"

static char fx[2048];
static char tmp[64];

static const char *fxpath(const char *rel)
{
    static char buf[2][4096];
    static int k;
    k = (k + 1) % 2;
    snprintf(buf[k], sizeof buf[k], "%s/%s", fx, rel);
    return buf[k];
}

static const char *tpath(const char *rel)
{
    static char buf[4][512];
    static int k;
    k = (k + 1) % 4;
    snprintf(buf[k], sizeof buf[k], "%s/%s", tmp, rel);
    return buf[k];
}

static const char *const UNET_T[] = {"to_q", "to_k", "to_v", "to_out.0"};
static const char *const TE_T[] = {"q_proj", "k_proj", "v_proj", "out_proj"};
static df_weights *unet, *te;

static df_status make_set(df_lora_set *s, int rank, float alpha)
{
    return df_lora_set_create(s, unet, UNET_T, 4, te, TE_T, 4, rank, alpha);
}

static bool exists(const char *p)
{
    struct stat sb;
    return stat(p, &sb) == 0;
}

static const char *slurp(const char *p)
{
    FILE *f = fopen(p, "r");
    if (!f)
        return "";
    static char buf[256];
    size_t n = fread(buf, 1, sizeof buf - 1, f);
    buf[n] = '\0';
    fclose(f);
    return buf;
}

/* A training state worth saving: everything random and non-trivial. */
static void fill(df_lora_set *s, df_adamw *o, df_train_state *st, uint64_t seed,
                 const char *config)
{
    df_rng r;
    df_rng_seed(&r, seed);
    df_rng_randn(&r, s->params, s->nfloats);
    CHECK(df_adamw_init(o, s->nfloats) == DF_OK);
    df_rng_randn(&r, o->m, s->nfloats);
    df_rng_randn(&r, o->v, s->nfloats);
    for (size_t i = 0; i < s->nfloats; i++)
        o->v[i] = fabsf(o->v[i]) * 1e-6f;
    o->step = 7;
    memset(st, 0, sizeof *st);
    st->step = 7;
    st->epoch = 2;
    st->pos = 13;
    st->seed = UINT64_C(0xfedcba9876543210);   /* above INT64_MAX on purpose */
    df_rng_seed(&st->rng, st->seed);
    /* A random number of raw draws, then a scalar normal so that the
     * generator holds a cached second normal. */
    uint32_t k = df_rng_u32(&r) % 5000 + 1;
    for (uint32_t i = 0; i < k; i++)
        df_rng_u32(&st->rng);
    float one;
    df_rng_randn(&st->rng, &one, 1);
    CHECK(st->rng.has_next_normal);
    st->n_order = 100;
    st->order = malloc(st->n_order * sizeof *st->order);
    for (size_t i = 0; i < st->n_order; i++)
        st->order[i] = (int64_t)((i * 37) % 100);
    st->config_json = config ? strdup(config) : NULL;
}

static void same(const df_lora_set *a, const df_adamw *oa, const df_train_state *sa,
                 const df_lora_set *b, const df_adamw *ob, const df_train_state *sb)
{
    CHECK(!memcmp(a->params, b->params, a->nfloats * sizeof(float)));
    CHECK(oa->n == ob->n && !memcmp(oa->m, ob->m, oa->n * sizeof(float)) &&
          !memcmp(oa->v, ob->v, oa->n * sizeof(float)) && oa->step == ob->step);
    CHECK(sa->step == sb->step && sa->epoch == sb->epoch && sa->pos == sb->pos &&
          sa->seed == sb->seed);
    CHECK(sa->n_order == sb->n_order &&
          !memcmp(sa->order, sb->order, sa->n_order * sizeof *sa->order));
    CHECK((!sa->config_json && !sb->config_json) ||
          (sa->config_json && sb->config_json && !strcmp(sa->config_json, sb->config_json)));
    CHECK(!memcmp(sa->rng.mt, sb->rng.mt, sizeof sa->rng.mt) && sa->rng.index == sb->rng.index &&
          sa->rng.seed == sb->rng.seed && sa->rng.has_next_normal == sb->rng.has_next_normal &&
          !memcmp(&sa->rng.next_normal, &sb->rng.next_normal, sizeof(double)));
    /* The next 1000 draws, scalar (cached normal first) and vector paths. */
    df_rng ra = sa->rng, rb = sb->rng;
    float xa[1000], xb[1000];
    for (int i = 0; i < 1000; i++) {
        df_rng_randn(&ra, &xa[i], 1);
        df_rng_randn(&rb, &xb[i], 1);
    }
    CHECK(!memcmp(xa, xb, sizeof xa));
    df_rng_randn(&ra, xa, 1000);
    df_rng_randn(&rb, xb, 1000);
    CHECK(!memcmp(xa, xb, sizeof xa));
}

/* Save with (rank, alpha), load into fresh objects, compare. */
static void round_trip(const char *dir, int rank, float alpha, const char *config)
{
    df_lora_set s, t;
    df_adamw o, p = {0};
    df_train_state st, su;
    CHECK(make_set(&s, rank, alpha) == DF_OK);
    CHECK(make_set(&t, rank, alpha) == DF_OK);
    fill(&s, &o, &st, 99 + (uint64_t)rank, config);
    df_status r = df_checkpoint_save(dir, &s, &o, &st, 0);
    CHECK_MSG(r == DF_OK, "%s", df_last_error());
    r = df_checkpoint_load(dir, &t, &p, &su);
    CHECK_MSG(r == DF_OK, "%s", df_last_error());
    if (r == DF_OK) {
        same(&s, &o, &st, &t, &p, &su);
        df_train_state_free(&su);
    }
    /* Into an optimizer that is already allocated, too. */
    df_adamw q;
    CHECK(df_adamw_init(&q, t.nfloats) == DF_OK);
    r = df_checkpoint_load(dir, &t, &q, &su);
    CHECK_MSG(r == DF_OK, "%s", df_last_error());
    if (r == DF_OK) {
        same(&s, &o, &st, &t, &q, &su);
        df_train_state_free(&su);
    }
    df_adamw_free(&q);
    df_adamw_free(&p);
    df_adamw_free(&o);
    df_train_state_free(&st);
    df_lora_set_free(&s);
    df_lora_set_free(&t);
}

static df_status save_step(const char *dir, long step, int keep)
{
    df_lora_set s;
    df_adamw o;
    df_train_state st;
    CHECK(make_set(&s, 4, 4) == DF_OK);
    fill(&s, &o, &st, (uint64_t)step, "{}");
    st.step = step;
    o.step = step;
    df_status r = df_checkpoint_save(dir, &s, &o, &st, keep);
    df_adamw_free(&o);
    df_train_state_free(&st);
    df_lora_set_free(&s);
    return r;
}

static long loaded_step(const char *dir)
{
    df_lora_set s;
    df_adamw o = {0};
    df_train_state st;
    CHECK(make_set(&s, 4, 4) == DF_OK);
    long step = -1;
    df_status r = df_checkpoint_load(dir, &s, &o, &st);
    CHECK_MSG(r == DF_OK, "%s", df_last_error());
    if (r == DF_OK) {
        step = st.step;
        CHECK(o.step == step);
        df_train_state_free(&st);
    }
    df_adamw_free(&o);
    df_lora_set_free(&s);
    return step;
}

static void leftovers_and_keep(const char *dir)
{
    char p[1100];
    CHECK(save_step(dir, 5, 0) == DF_OK);
    CHECK(!strcmp(slurp(tpath("keep/latest")), "checkpoint-5\n"));
    CHECK(exists(tpath("keep/checkpoint-5/lora.safetensors")) &&
          exists(tpath("keep/checkpoint-5/optimizer.safetensors")) &&
          exists(tpath("keep/checkpoint-5/state.json")));
    CHECK(!exists(tpath("keep/checkpoint-5.tmp")) && !exists(tpath("keep/latest.tmp")));

    /* An interrupted later save: a complete-looking .tmp directory. */
    snprintf(p, sizeof p, "%s/checkpoint-9.tmp", dir);
    CHECK(mkdir(p, 0755) == 0);
    snprintf(p, sizeof p, "%s/checkpoint-9.tmp/state.json", dir);
    FILE *f = fopen(p, "w");
    CHECK(f);
    if (!f)
        return;
    fputs("{garbage", f);
    fclose(f);
    CHECK(loaded_step(dir) == 5);
    /* latest naming a .tmp or a missing checkpoint: the newest complete one. */
    snprintf(p, sizeof p, "%s/latest", dir);
    if ((f = fopen(p, "w"))) {
        fputs("checkpoint-9.tmp\n", f);
        fclose(f);
    }
    CHECK(loaded_step(dir) == 5);
    if ((f = fopen(p, "w"))) {
        fputs("checkpoint-12\n", f);
        fclose(f);
    }
    CHECK(loaded_step(dir) == 5);
    unlink(p);
    CHECK(loaded_step(dir) == 5);

    /* keep 2: after 6, 7, 8 only 7 and 8 remain (and the foreign .tmp). */
    CHECK(save_step(dir, 6, 2) == DF_OK);
    CHECK(exists(tpath("keep/checkpoint-5")) && exists(tpath("keep/checkpoint-6")));
    CHECK(save_step(dir, 7, 2) == DF_OK);
    CHECK(save_step(dir, 8, 2) == DF_OK);
    CHECK(!exists(tpath("keep/checkpoint-5")) && !exists(tpath("keep/checkpoint-6")));
    CHECK(exists(tpath("keep/checkpoint-7")) && exists(tpath("keep/checkpoint-8")));
    CHECK(exists(tpath("keep/checkpoint-9.tmp")));
    CHECK(!strcmp(slurp(tpath("keep/latest")), "checkpoint-8\n"));
    CHECK(loaded_step(dir) == 8);
    /* The same step again replaces it; keep 1 leaves only it. */
    CHECK(save_step(dir, 8, 1) == DF_OK);
    CHECK(!exists(tpath("keep/checkpoint-7")) && exists(tpath("keep/checkpoint-8")) &&
          !exists(tpath("keep/checkpoint-8.old.tmp")));
    CHECK(loaded_step(dir) == 8);
    /* A resumed run saving a lower step than a stale later checkpoint: the
     * new one is kept and is latest. */
    CHECK(save_step(dir, 20, 0) == DF_OK);
    CHECK(save_step(dir, 10, 1) == DF_OK);
    CHECK(exists(tpath("keep/checkpoint-10")) && !exists(tpath("keep/checkpoint-20")));
    CHECK(loaded_step(dir) == 10);
}

static void mismatches(const char *dir)
{
    df_lora_set s8, s4, u;
    df_adamw o = {0}, wrong;
    df_train_state st;
    CHECK(make_set(&s8, 8, 8) == DF_OK);
    CHECK(make_set(&s4, 4, 4) == DF_OK);
    for (size_t i = 0; i < s8.nfloats; i++)
        s8.params[i] = 3;
    df_status r = df_checkpoint_load(dir, &s8, &o, &st);
    CHECK(r == DF_ERR_SHAPE && strstr(df_last_error(), "rank 4") &&
          strstr(df_last_error(), "rank 8"));
    CHECK(s8.params[0] == 3 && o.m == NULL);   /* unchanged */
    CHECK(df_adamw_init(&wrong, s4.nfloats + 1) == DF_OK);
    CHECK(df_checkpoint_load(dir, &s4, &wrong, &st) == DF_ERR_ARG);
    CHECK(df_checkpoint_save(dir, &s4, &wrong, &st, 0) == DF_ERR_ARG);
    df_adamw_free(&wrong);
    /* Other targets, same rank: the set's own check names the difference. */
    CHECK(df_lora_set_create(&u, unet, UNET_T, 4, NULL, NULL, 0, 4, 4) == DF_OK);
    r = df_checkpoint_load(dir, &u, &o, &st);
    CHECK(r == DF_ERR_SHAPE && strstr(df_last_error(), "params"));
    df_lora_set_free(&u);
    /* Nothing to resume from. */
    CHECK(mkdir(tpath("empty"), 0755) == 0);
    CHECK(df_checkpoint_load(tpath("empty"), &s4, &o, &st) == DF_ERR_NOTFOUND);
    CHECK(df_checkpoint_load(tpath("absent"), &s4, &o, &st) == DF_ERR_NOTFOUND);
    df_lora_set_free(&s8);
    df_lora_set_free(&s4);
}

static int rm_cb(const char *p, const struct stat *sb, int flag, struct FTW *ftw)
{
    return remove(p);
}

int main(void)
{
    const char *env = getenv("DF_FIXTURES");
    snprintf(fx, sizeof fx, "%s", env ? env : "../shared/fixtures");
    if (access(fxpath("pipeline/unet"), R_OK) != 0) {
        fprintf(stderr, "fixtures not found at %s (set DF_FIXTURES)\n", fx);
        return 1;
    }
    snprintf(tmp, sizeof tmp, "/tmp/df-checkpoint-XXXXXX");
    if (!mkdtemp(tmp)) {
        perror("mkdtemp");
        return 1;
    }
    CHECK(df_weights_open_dir(fxpath("pipeline/unet"), NULL, &unet) == DF_OK);
    CHECK(df_weights_open_dir(fxpath("pipeline/text_encoder"), NULL, &te) == DF_OK);

    /* dir and its parent created on the way */
    round_trip(tpath("a/out"), 4, 4, "{\"lr\": 1e-4, \"name\": \"caf\xc3\xa9\", \"q\": \"\\\"x\\\"\"}");
    CHECK(!strcmp(slurp(tpath("a/out/latest")), "checkpoint-7\n"));
    round_trip(tpath("b"), 4, 6, NULL);   /* alpha != rank: B saved scaled, restored exact */
    round_trip(tpath("c"), 2, 3, "");
    /* (tpath's buffers rotate: these two keep their own copy) */
    char keep[512], out[512];
    snprintf(keep, sizeof keep, "%s", tpath("keep"));
    snprintf(out, sizeof out, "%s", tpath("a/out"));
    leftovers_and_keep(keep);
    mismatches(out);

    df_weights_free(unet);
    df_weights_free(te);
    CHECK(nftw(tmp, rm_cb, 16, FTW_DEPTH | FTW_PHYS) == 0);
    UNIT_END();
}
