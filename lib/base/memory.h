/* memory.h - process-wide malloc settings for the tools that run the models. */
#ifndef DF_MEMORY_H
#define DF_MEMORY_H

/* Keep freed memory in the process for the next allocation instead of
 * handing it back to the kernel. A model's forward allocates and frees
 * gigabytes of activations (a 768 px UNet step: buffers of 20-200 MB, each
 * used for a layer or two); by default glibc serves blocks over 32 MB with
 * mmap and unmaps them on free, so every step met them again as fresh pages,
 * each one a page fault and a page zeroed by the kernel (about 2 us a 4 KiB
 * page on this VM). Call once at the start of main, before any thread. */
void df_memory_keep_freed(void);

#endif
