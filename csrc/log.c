/* log.c - stderr logging and error values. */
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

int fx_fail(char *err, const char *fmt, ...)
{
    if (err) {
        va_list ap;
        va_start(ap, fmt);
        vsnprintf(err, FLEXAI_ERR_MAX, fmt, ap);
        va_end(ap);
    }
    return -1;
}
