/* config.h - internal side of the configuration parser (see flexai_config_parse). */
#ifndef FX_CONFIG_H
#define FX_CONFIG_H

#include "flexai.h"

/* Defaults of every field (the `default` column of contract.def). */
void fx_config_defaults(flexai_config *c);

/* Parse this process's FLEXAI_* environment variables (all of them; a name given twice takes
 * its first value, as getenv() and Python's os.environ do). */
int fx_config_from_env(flexai_config *out, flexai_error *err);

/* 0 when `name` is a valid slice name, else -1 with the reason. */
int fx_slice_name_valid(const char *name, flexai_error *err);

#endif
