/* tokdata.S - the embedded Qwen3 tokenizer files (a tar.xz; see tokdata.h).
 * .incbin finds the file through -Wa,-I$(srcdir)/data (Makefile.am). */
    .section .rodata
    .global tokdata_blob
    .global tokdata_blob_end
    .balign 16
tokdata_blob:
    .incbin "qwen3-tokenizer.tar.xz"
tokdata_blob_end:
    .byte 0
#if defined(__linux__) && defined(__ELF__)
    .section .note.GNU-stack,"",@progbits
#endif
