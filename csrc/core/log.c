/* log.c - stderr logging and error values (see log.h). */
#include "log.h"

#include <errno.h>
#include <stdarg.h>
#include <stdio.h>
#include <unistd.h>

int fx_log_level = FLEXAI_LOG_WARN;

static const char *const fx_level_names[] = {"error", "warn", "info", "debug"};

void fx_log(int level, const char *fmt, ...)
{
    if (level > fx_log_level || level < 0) return;
    int saved_errno = errno; /* logging must not disturb the caller's errno */
    char line[512];
    int n = snprintf(line, sizeof line, "flexai[%d]: %s: ", (int)getpid(), fx_level_names[level]);
    if (n < 0) n = 0;
    va_list ap;
    va_start(ap, fmt);
    int m = vsnprintf(line + n, sizeof line - (size_t)n - 1, fmt, ap);
    va_end(ap);
    size_t len = (size_t)n + (m < 0 ? 0 : (size_t)m);
    if (len > sizeof line - 2) len = sizeof line - 2;
    line[len++] = '\n';
    ssize_t w = write(STDERR_FILENO, line, len);
    (void)w; /* nothing sensible to do if stderr is closed */
    errno = saved_errno;
}

int fx_fail(flexai_error *err, int32_t code, const char *fmt, ...)
{
    if (err) {
        va_list ap;
        va_start(ap, fmt);
        vsnprintf(err->message, sizeof err->message, fmt, ap);
        va_end(ap);
        for (char *c = err->message; *c; c++)
            if ((unsigned char)*c < 0x20 || *c == 0x7f) *c = '?';
        err->code = code;
    }
    return -1;
}

const char *flexai_error_name(int32_t code)
{
    static const char *const names[] = {"ok",         "bad value",    "unusable state",
                                        "node full",  "not found",    "system error",
                                        "over quota", "driver error", "permission denied"};
    if (code < 0 || (size_t)code >= sizeof names / sizeof names[0]) return "unknown error";
    return names[code];
}
