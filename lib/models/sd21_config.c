/* sd21_config.c - stabilityai/stable-diffusion-2-1's config files as JSON
 * text (see sd21_config.h). Tested by tests/unit/test_single_file.c. */
#include "sd21_config.h"

const char df_sd21_unet_config[] =
    "{\"_class_name\": \"UNet2DConditionModel\", \"_diffusers_version\": \"0.10.0.dev0\","
    " \"act_fn\": \"silu\", \"attention_head_dim\": [5, 10, 20, 20],"
    " \"block_out_channels\": [320, 640, 1280, 1280], \"center_input_sample\": false,"
    " \"cross_attention_dim\": 1024,"
    " \"down_block_types\": [\"CrossAttnDownBlock2D\", \"CrossAttnDownBlock2D\","
    " \"CrossAttnDownBlock2D\", \"DownBlock2D\"],"
    " \"downsample_padding\": 1, \"dual_cross_attention\": false, \"flip_sin_to_cos\": true,"
    " \"freq_shift\": 0, \"in_channels\": 4, \"layers_per_block\": 2,"
    " \"mid_block_scale_factor\": 1, \"norm_eps\": 1e-05, \"norm_num_groups\": 32,"
    " \"num_class_embeds\": null, \"only_cross_attention\": false, \"out_channels\": 4,"
    " \"sample_size\": 96,"
    " \"up_block_types\": [\"UpBlock2D\", \"CrossAttnUpBlock2D\", \"CrossAttnUpBlock2D\","
    " \"CrossAttnUpBlock2D\"],"
    " \"use_linear_projection\": true, \"upcast_attention\": true}";

const char df_sd21_vae_config[] =
    "{\"_class_name\": \"AutoencoderKL\", \"_diffusers_version\": \"0.8.0\","
    " \"_name_or_path\": \"hf-models/stable-diffusion-v2-768x768/vae\", \"act_fn\": \"silu\","
    " \"block_out_channels\": [128, 256, 512, 512],"
    " \"down_block_types\": [\"DownEncoderBlock2D\", \"DownEncoderBlock2D\","
    " \"DownEncoderBlock2D\", \"DownEncoderBlock2D\"],"
    " \"in_channels\": 3, \"latent_channels\": 4, \"layers_per_block\": 2,"
    " \"norm_num_groups\": 32, \"out_channels\": 3, \"sample_size\": 768,"
    " \"up_block_types\": [\"UpDecoderBlock2D\", \"UpDecoderBlock2D\", \"UpDecoderBlock2D\","
    " \"UpDecoderBlock2D\"]}";

const char df_sd21_text_encoder_config[] =
    "{\"_name_or_path\": \"hf-models/stable-diffusion-v2-768x768/text_encoder\","
    " \"architectures\": [\"CLIPTextModel\"], \"attention_dropout\": 0.0, \"bos_token_id\": 0,"
    " \"dropout\": 0.0, \"eos_token_id\": 2, \"hidden_act\": \"gelu\", \"hidden_size\": 1024,"
    " \"initializer_factor\": 1.0, \"initializer_range\": 0.02, \"intermediate_size\": 4096,"
    " \"layer_norm_eps\": 1e-05, \"max_position_embeddings\": 77,"
    " \"model_type\": \"clip_text_model\", \"num_attention_heads\": 16,"
    " \"num_hidden_layers\": 23, \"pad_token_id\": 1, \"projection_dim\": 512,"
    " \"torch_dtype\": \"float32\", \"transformers_version\": \"4.25.0.dev0\","
    " \"vocab_size\": 49408}";

const char df_sd21_scheduler_config[] =
    "{\"_class_name\": \"DDIMScheduler\", \"_diffusers_version\": \"0.8.0\","
    " \"beta_end\": 0.012, \"beta_schedule\": \"scaled_linear\", \"beta_start\": 0.00085,"
    " \"clip_sample\": false, \"num_train_timesteps\": 1000,"
    " \"prediction_type\": \"v_prediction\", \"set_alpha_to_one\": false,"
    " \"skip_prk_steps\": true, \"steps_offset\": 1, \"trained_betas\": null}";
