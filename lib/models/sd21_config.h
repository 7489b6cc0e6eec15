/* sd21_config.h - the configuration files of stabilityai/stable-diffusion-2-1
 * (diffusers layout), built in: a single-file checkpoint carries weights
 * only, and these are what its UNet, VAE, text encoder and scheduler were
 * trained with (the 768 px v-prediction model; the 512 px "base" differs
 * in sample_size and prediction type only). Values and key sets are those of
 * the published files; tests/unit/test_single_file.c compares them with the
 * fixture configs (same keys) and the real values the fixture README lists. */
#ifndef DF_SD21_CONFIG_H
#define DF_SD21_CONFIG_H

extern const char df_sd21_unet_config[];
extern const char df_sd21_vae_config[];
extern const char df_sd21_text_encoder_config[];
extern const char df_sd21_scheduler_config[];

#endif
