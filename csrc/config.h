/* config.h - internal side of the configuration parser (see flexai_config_parse). */
#ifndef FX_CONFIG_H
#define FX_CONFIG_H

#include "flexai.h"

/* Charged per process and device for the CUDA context (about 0.5 GiB measured on an H100). */
#define FX_DEFAULT_CONTEXT_MEMORY (512ULL << 20)

/* Defaults of every field. */
void fx_config_defaults(flexai_config *c);

/* Parse this process's FLEXAI_* environment variables. */
int fx_config_from_env(flexai_config *out, char *err);

/* 0 when `name` is a valid slice name, else -1 with the reason. */
int fx_slice_name_valid(const char *name, char *err);

#endif
