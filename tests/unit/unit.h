/* unit.h - minimal unit-test harness: CHECK records failures with file and
 * line, and UNIT_END() makes the process exit non-zero if any failed (the
 * runner counts on that; a test that prints "fail" and exits 0 is a defect). */
#ifndef DF_UNIT_H
#define DF_UNIT_H

#include <math.h>
#include <stdio.h>
#include <stdlib.h>

static int unit_failures, unit_checks;

#define CHECK(cond) do { unit_checks++; if (!(cond)) { unit_failures++; \
    fprintf(stderr, "%s:%d: CHECK failed: %s\n", __FILE__, __LINE__, #cond); } } while (0)

#define CHECK_MSG(cond, ...) do { unit_checks++; if (!(cond)) { unit_failures++; \
    fprintf(stderr, "%s:%d: CHECK failed: %s: ", __FILE__, __LINE__, #cond); \
    fprintf(stderr, __VA_ARGS__); fputc('\n', stderr); } } while (0)

#define CHECK_NEAR(a, b, tol) do { double _a = (a), _b = (b); unit_checks++; \
    if (!(fabs(_a - _b) <= (tol))) { unit_failures++; \
    fprintf(stderr, "%s:%d: CHECK_NEAR failed: %s = %g, %s = %g, tol %g\n", \
            __FILE__, __LINE__, #a, _a, #b, _b, (double)(tol)); } } while (0)

/* Max |a-b| over n floats, for array comparisons. */
static inline double unit_max_abs_diff(const float *a, const float *b, size_t n)
{
    double m = 0;
    for (size_t i = 0; i < n; i++) {
        double d = fabs((double)a[i] - (double)b[i]);
        if (d > m || d != d)
            m = d != d ? INFINITY : d;
    }
    return m;
}

#define UNIT_END() do { \
    fprintf(stderr, "%s: %d checks, %d failed\n", __FILE__, unit_checks, unit_failures); \
    return unit_failures ? 1 : 0; } while (0)

#endif
