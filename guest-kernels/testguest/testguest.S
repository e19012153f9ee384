/*
 * segvmm's bare-metal test guest: a few hundred bytes of code that boots through the PVH
 * entry (32-bit protected mode, paging off, %ebx = hvm_start_info), enters long mode with
 * its own identity page tables (4 GiB in 2 MiB pages), writes to the serial port, touches
 * one word in every 2 MiB of RAM that the memory map reports and reads it back, and reports
 * the outcome on the signal port (0xf4): 0 = all good, 1 = memory mismatch.
 *
 * The first byte of the command line selects a failure mode for the VMM's tests:
 * 't' triple-faults (no IDT, then int3), 'h' hangs (cli; hlt).
 */
#define COM1 0x3f8
#define SIGNAL_PORT 0xf4

    .section .note.Xen, "a"
    .p2align 2
    .long 4, 4, 18          /* namesz, descsz, XEN_ELFNOTE_PHYS32_ENTRY */
    .asciz "Xen"
    .long pvh_start

    .section .text, "ax"
    .code32
    .globl pvh_start
pvh_start:
    cli
    mov $stack_top, %esp
    mov %ebx, %esi                 /* start_info */

    /* pml4[0] -> pdpt, pdpt[0..3] -> pd[0..3], pd = 2048 entries of 2 MiB identity. */
    lea pdpt, %eax
    or $3, %eax
    mov %eax, pml4
    movl $0, pml4+4
    xor %ecx, %ecx
1:  shl $9, %ecx                   /* pd + i*4096 == pd + (i*512)*8 */
    lea pd(,%ecx,8), %eax
    shr $9, %ecx
    or $3, %eax
    mov %eax, pdpt(,%ecx,8)
    movl $0, pdpt+4(,%ecx,8)
    inc %ecx
    cmp $4, %ecx
    jne 1b
    xor %ecx, %ecx
2:  mov %ecx, %eax
    shl $21, %eax
    or $0x83, %eax
    mov %eax, pd(,%ecx,8)
    mov %ecx, %edx
    shr $11, %edx                  /* high bits of i<<21 */
    mov %edx, pd+4(,%ecx,8)
    inc %ecx
    cmp $2048, %ecx
    jne 2b

    lea pml4, %eax
    mov %eax, %cr3
    mov %cr4, %eax
    or $0x20, %eax                 /* PAE */
    mov %eax, %cr4
    mov $0xc0000080, %ecx          /* EFER */
    rdmsr
    or $0x100, %eax                /* LME */
    wrmsr
    mov %cr0, %eax
    or $0x80000001, %eax           /* PG | PE */
    mov %eax, %cr0
    lgdt gdt_desc
    ljmp $0x08, $long_mode

    .code64
long_mode:
    mov $0x10, %ax
    mov %ax, %ds
    mov %ax, %es
    mov %ax, %ss
    mov %esi, %esi                 /* zero-extend start_info */

    /* Failure modes chosen by the first command-line byte. */
    mov 24(%rsi), %rbx             /* cmdline_paddr */
    test %rbx, %rbx
    jz 3f
    movzbl (%rbx), %eax
    cmp $'t', %al
    je triple
    cmp $'h', %al
    je hang
3:
    lea msg_hello(%rip), %rdi
    call puts

    /* Touch and verify one quadword per 2 MiB of every RAM entry below 4 GiB. */
    mov 40(%rsi), %r8              /* memmap_paddr */
    mov 48(%rsi), %r9d             /* memmap_entries */
    xor %r12, %r12                 /* pages touched */
    xor %r13, %r13                 /* failures */
4:  test %r9d, %r9d
    jz 7f
    cmpl $1, 16(%r8)               /* type RAM */
    jne 6f
    mov (%r8), %r10                /* addr */
    mov 8(%r8), %r11
    add %r10, %r11                 /* end */
    add $0x1fffff, %r10
    and $~0x1fffff, %r10
    mov $0x100000000, %rax
    cmp %rax, %r11
    cmova %rax, %r11
    cmp $0x200000, %r10            /* keep clear of our own image and tables */
    jae 5f
    mov $0x400000, %r10
5:  lea 8(%r10), %rax
    cmp %r11, %rax
    ja 6f
    mov %r10, %rax
    xor $0x5e6e5e6e, %rax
    mov %rax, (%r10)
    cmp (%r10), %rax
    je 55f
    inc %r13
55: inc %r12
    add $0x200000, %r10
    jmp 5b
6:  add $24, %r8
    dec %r9d
    jmp 4b
7:
    test %r13, %r13
    jnz bad
    test %r12, %r12                /* nothing touched: the memory map was empty */
    jz bad
    lea msg_ok(%rip), %rdi
    call puts
    mov $SIGNAL_PORT, %dx
    xor %eax, %eax
    out %eax, %dx
    jmp hang
bad:
    lea msg_bad(%rip), %rdi
    call puts
    mov $SIGNAL_PORT, %dx
    mov $1, %eax
    out %eax, %dx
hang:
    cli
    hlt
    jmp hang

triple:
    lidt null_idt(%rip)
    int3

/* puts(%rdi): NUL-terminated string to COM1. */
puts:
    mov $COM1, %dx
1:  movzbl (%rdi), %eax
    test %al, %al
    jz 2f
    out %al, %dx
    inc %rdi
    jmp 1b
2:  ret

    .section .rodata
msg_hello: .asciz "segvmm test guest: long mode on, paging on\n"
msg_ok:    .asciz "segvmm test guest: memory check ok\n"
msg_bad:   .asciz "segvmm test guest: memory check FAILED\n"
    .p2align 3
gdt:
    .quad 0
    .quad 0x00af9b000000ffff      /* 0x08: 64-bit code */
    .quad 0x00cf93000000ffff      /* 0x10: data */
gdt_end:
gdt_desc:
    .word gdt_end - gdt - 1
    .long gdt
null_idt:
    .word 0
    .quad 0

    .section .bss
    .p2align 12
pml4:  .skip 4096
pdpt:  .skip 4096
pd:    .skip 4 * 4096
stack: .skip 4096
stack_top:
