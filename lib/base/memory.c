/* memory.c - see memory.h. Measured by tools/bench-sd (page faults and
 * sys time of a UNet step) and exercised by every tool test that samples. */
#include "memory.h"

#include <malloc.h>

void df_memory_keep_freed(void)
{
    // every block from the heap (no mmap), and the heap's free top given
    // back only past 1 GiB, which no single activation reaches
    mallopt(M_MMAP_MAX, 0);
    mallopt(M_TRIM_THRESHOLD, 1 << 30);
}
