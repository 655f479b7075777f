/* log.h - leveled logging to stderr for code that runs inside someone else's process. */
#ifndef FX_LOG_H
#define FX_LOG_H

#include "flexai.h"

/* Current level (FLEXAI_LOG_*); set once from the configuration, read without a lock. */
extern int fx_log_level;

/* Write one line "flexai[pid]: level: message" to stderr with a single write(2), so lines of
 * concurrent threads and processes never interleave. Never touches stdout, never allocates. */
void fx_log(int level, const char *fmt, ...) __attribute__((format(printf, 2, 3)));

#define FX_ERROR(...) fx_log(FLEXAI_LOG_ERROR, __VA_ARGS__)
#define FX_WARN(...) fx_log(FLEXAI_LOG_WARN, __VA_ARGS__)
#define FX_INFO(...) fx_log(FLEXAI_LOG_INFO, __VA_ARGS__)
#define FX_DEBUG(...)                                                                          \
    do {                                                                                       \
        if (fx_log_level >= FLEXAI_LOG_DEBUG) fx_log(FLEXAI_LOG_DEBUG, __VA_ARGS__);          \
    } while (0)

/* Fill `err` (FLEXAI_ERR_MAX bytes, may be NULL) and return -1: `return fx_fail(err, ...)`. */
int fx_fail(char *err, const char *fmt, ...) __attribute__((format(printf, 2, 3)));

#endif
