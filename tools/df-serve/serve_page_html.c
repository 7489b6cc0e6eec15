/* serve_page_html.c - the bytes of tools/df-serve/page.html in the binary.
 * The assembler's .incbin embeds the file at build time (the path is from
 * the repository root, where make runs); the Makefile makes df-serve depend
 * on it. Served by serve_page.c as GET /. */
__asm__(".section .rodata\n"
        ".balign 16\n"
        ".globl serve_page_html\n"
        ".globl serve_page_html_end\n"
        ".hidden serve_page_html\n"
        ".hidden serve_page_html_end\n"
        "serve_page_html:\n"
        ".incbin \"tools/df-serve/page.html\"\n"
        "serve_page_html_end:\n"
        ".byte 0\n"
        ".previous\n");
