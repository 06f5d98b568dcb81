/*
 * spec/c/check.h — a minimal assertion harness for the C-level tests run by ctest.
 * Each test_*.c defines its cases as functions called from main and returns check_report().
 */
#ifndef TERN_SPEC_CHECK_H
#define TERN_SPEC_CHECK_H

#include <math.h>
#include <stdio.h>

#include "tern.h"

static int check_passes = 0, check_failures = 0;

#define CHECK(cond)                                                                            \
    do {                                                                                       \
        if (cond) {                                                                            \
            check_passes++;                                                                    \
        } else {                                                                               \
            check_failures++;                                                                  \
            fprintf(stderr, "%s:%d: CHECK failed: %s (last error: %s)\n", __FILE__, __LINE__,  \
                    #cond, tn_last_error());                                                   \
        }                                                                                      \
    } while (0)

#define CHECK_OK(expr) CHECK((expr) == TN_OK)
#define CHECK_NEAR(a, b, tol) CHECK(fabs((double)(a) - (double)(b)) <= (tol))

static inline int check_report(const char *name) {
    printf("%s: %d checks passed, %d failed\n", name, check_passes, check_failures);
    return check_failures == 0 ? 0 : 1;
}

#endif /* TERN_SPEC_CHECK_H */
