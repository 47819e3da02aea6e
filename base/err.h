/* The error-message convention of every module: a function that can fail
 * takes (char *err, size_t errlen), writes one line there and returns a
 * negative status. err_set is the one helper that does both. */
#ifndef BASE_ERR_H
#define BASE_ERR_H

#include <stddef.h>

/* Formats the message into err (errlen bytes, truncated; nothing when err is
 * NULL or errlen 0) and returns status, so that `return err_set(err, errlen,
 * MOD_EINVAL, "bad %s", x);` is one line. */
int err_set(char *err, size_t errlen, int status, const char *fmt, ...) __attribute__((format(printf, 4, 5)));

#endif
