/* fuzz_scheduler_config.c - scheduler_config.json parsing
 * (lib/models/scheduler.c): the input is the config text, read by
 * df_scheduler_parse_config (bare NaN/Infinity allowed); an accepted config
 * is given to df_scheduler_create under its own class name and each short
 * name, and a created scheduler builds a short schedule. */
#include "fuzz_util.h"
#include "scheduler.h"
#include "status.h"

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    char *text = fuzz_strdup(data, size);
    json_t *cfg = NULL;
    if (df_scheduler_parse_config(text, &cfg) == DF_OK) {
        const char *const *names = df_scheduler_names();
        for (int i = -1; i < 0 || names[i]; i++) {
            df_scheduler *s = NULL;
            if (df_scheduler_create(i < 0 ? NULL : names[i], cfg, NULL, &s) == DF_OK) {
                (void)df_scheduler_set_timesteps(s, 3);
                for (int k = 0; k < df_scheduler_count(s); k++)
                    (void)df_scheduler_timestep(s, k);
                df_scheduler_free(s);
            }
        }
        json_decref(cfg);
    }
    free(text);
    return 0;
}
