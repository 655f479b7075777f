/* dlsym_entry.S - the exported dlsym; see dlsym.c for why it is assembly.
 *   w = fx_dlsym_lookup(handle, name); if (w) return w; else jump to the real dlsym
 * with the original arguments and the caller's return address untouched.
 * fx_dlsym_lookup leaves fx_real_dlsym set (a stand-in when glibc's is not found); should it
 * still be NULL the entry returns NULL rather than jump to address 0. */
#if defined(__x86_64__)
        .text
        .globl  dlsym
        .type   dlsym, @function
dlsym:
        .cfi_startproc
        pushq   %rdi
        .cfi_adjust_cfa_offset 8
        pushq   %rsi
        .cfi_adjust_cfa_offset 8
        subq    $8, %rsp                /* keep the stack 16-byte aligned for the call */
        .cfi_adjust_cfa_offset 8
        call    fx_dlsym_lookup
        addq    $8, %rsp
        .cfi_adjust_cfa_offset -8
        popq    %rsi
        .cfi_adjust_cfa_offset -8
        popq    %rdi
        .cfi_adjust_cfa_offset -8
        testq   %rax, %rax
        jnz     1f
        movq    fx_real_dlsym(%rip), %rax
        testq   %rax, %rax
        jz      1f                      /* no real dlsym: return NULL (%rax) */
        jmp     *%rax
1:      ret
        .cfi_endproc
        .size   dlsym, .-dlsym
#elif defined(__aarch64__)
        .text
        .globl  dlsym
        .type   dlsym, %function
dlsym:
        .cfi_startproc
        stp     x29, x30, [sp, #-32]!
        .cfi_def_cfa_offset 32
        .cfi_offset 29, -32
        .cfi_offset 30, -24
        mov     x29, sp
        stp     x0, x1, [sp, #16]
        bl      fx_dlsym_lookup
        mov     x2, x0
        ldp     x0, x1, [sp, #16]
        ldp     x29, x30, [sp], #32
        .cfi_def_cfa_offset 0
        cbnz    x2, 1f
        adrp    x16, fx_real_dlsym
        ldr     x16, [x16, :lo12:fx_real_dlsym]
        cbz     x16, 1f                 /* no real dlsym: return NULL (x2) */
        br      x16
1:      mov     x0, x2
        ret
        .cfi_endproc
        .size   dlsym, .-dlsym
#endif
        .section .note.GNU-stack,"",%progbits
