/* log.h - leveled logging to stderr for code that runs inside someone else's process, and error
 * values (flexai_error: a category and a one-line message). */
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

/* Fill `err` (may be NULL) with a category (FLEXAI_E_*) and a message, and return -1:
 * `return fx_fail(err, FLEXAI_E_BAD_VALUE, "FLEXAI_X: ... (expected e.g. ...)", ...)`.
 * Bytes of a value that would break the one-line message (newlines, escapes) are shown as '?'. */
int fx_fail(flexai_error *err, int32_t code, const char *fmt, ...)
    __attribute__((format(printf, 3, 4)));

#endif
