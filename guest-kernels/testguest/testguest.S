/*
 * segvmm's bare-metal test guest: a few hundred bytes of code that boots through the PVH
 * entry (32-bit protected mode, paging off, %ebx = hvm_start_info), enters long mode with
 * its own identity page tables (4 GiB in 2 MiB pages), writes to the serial port, touches
 * one word in every 2 MiB of RAM that the memory map reports and reads it back, and reports
 * the outcome on the signal port (0xf4): 0 = all good, 1 = memory mismatch.
 *
 * The first byte of the command line selects a failure mode for the VMM's tests:
 * 't' triple-faults (no IDT, then int3), 'h' hangs (cli; hlt). 'v' drives the first
 * virtio-mmio device (a virtio-blk disk whose sector 0 starts with "SEGV") through its
 * registers instead of the memory check: identification, feature negotiation, one queue,
 * a read of sector 0, the interrupt status, a looping chain (DEVICE_NEEDS_RESET expected,
 * nothing used), a reset, the same read again, then a write of it to sector 1 and a
 * flush. It reports 0 when every step went as expected, else 20 + the number of the step
 * that did not (22-28).
 *
 * 'b' drives the first virtio-mmio device as a virtio-balloon (VERSION_1 only: inflate
 * is queue 0): it reads the target `num_pages` from the configuration space, writes a
 * marker into that many pages from 16 MiB on, inflates them in buffers of 1024 PFNs,
 * checks that they read back as zero (the host gave them back), writes `actual`, then
 * offers a buffer with a PFN outside guest RAM (DEVICE_NEEDS_RESET expected, the valid
 * PFN beside it not released). It reports 0, else 30 + the failed step (32-37).
 */
#define COM1 0x3f8
#define SIGNAL_PORT 0xf4
#define VIO 0xd0001000          /* the first virtio-mmio window */
#define VQ_DESC 0x380000        /* rings and buffers, in RAM above the image */
#define VQ_AVAIL 0x380100
#define VQ_USED 0x380200
#define VQ_HDR 0x381000
#define VQ_DATA 0x382000
#define VQ_STATUS 0x383000
#define BALLOON_BASE 0x1000000  /* the first page the balloon check inflates (16 MiB) */
#define MARK_PAGE 0x800000      /* a page whose PFN rides with a bad one (8 MiB) */

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
    cmp $'v', %al
    je virtio
    cmp $'b', %al
    je balloon
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

/* The virtio-blk check ('v'); %r15d is the step being checked. */
virtio:
    lea msg_virtio(%rip), %rdi
    call puts
    mov $VIO, %rbp
    mov $2, %r15d
    cmpl $0x74726976, 0x00(%rbp)   /* magic "virt" */
    jne vfail
    cmpl $2, 0x04(%rbp)            /* version 2 */
    jne vfail
    cmpl $2, 0x08(%rbp)            /* device: block */
    jne vfail
    mov $3, %r15d
    call vsetup
    jne vfail
    mov $4, %r15d
    call vread
    jne vfail
    mov $5, %r15d
    cmpl $1, 0x60(%rbp)            /* InterruptStatus: used buffer */
    jne vfail
    movl $1, 0x64(%rbp)            /* InterruptACK */
    cmpl $0, 0x60(%rbp)
    jne vfail
    mov $6, %r15d                  /* descriptor 0 chained to itself */
    movw $0, VQ_DESC+14
    movw $0, VQ_AVAIL+6
    movw $2, VQ_AVAIL+2
    movl $0, 0x50(%rbp)            /* QueueNotify */
    call vwaitnr                   /* DEVICE_NEEDS_RESET */
    jz vfail
    cmpw $1, VQ_USED+2             /* the bad chain was not used */
    jne vfail
    mov $7, %r15d
    call vsetup
    jne vfail
    call vread
    jne vfail
    mov $8, %r15d
    call vwrite
    jne vfail
    lea msg_virtio_ok(%rip), %rdi
    call puts
    mov $SIGNAL_PORT, %dx
    xor %eax, %eax
    out %eax, %dx
    jmp hang
vfail:
    lea msg_virtio_bad(%rip), %rdi
    call puts
    mov $SIGNAL_PORT, %dx
    lea 20(%r15), %eax
    out %eax, %dx
    jmp hang

/* The virtio-balloon check ('b'); %r15d is the step, %r14 the pages asked for. */
balloon:
    lea msg_balloon(%rip), %rdi
    call puts
    mov $VIO, %rbp
    mov $2, %r15d
    cmpl $0x74726976, 0x00(%rbp)   /* magic "virt" */
    jne bfail
    cmpl $5, 0x08(%rbp)            /* device: balloon */
    jne bfail
    mov $3, %r15d
    call vsetup
    jne bfail
    mov $4, %r15d
    mov 0x100(%rbp), %r14d         /* num_pages */
    test %r14d, %r14d
    jz bfail
    mov $BALLOON_BASE, %rdi        /* mark every page to inflate */
    mov %r14, %rcx
1:  movq $0x5e6e5e6e, (%rdi)
    add $4096, %rdi
    dec %rcx
    jnz 1b
    mov $5, %r15d
    mov $BALLOON_BASE >> 12, %ebx  /* next PFN */
    mov %r14, %r12                 /* pages left */
2:  mov $1024, %ecx
    cmp %rcx, %r12
    cmovb %r12, %rcx
    sub %rcx, %r12
    call binflate
    jne bfail
    test %r12, %r12
    jnz 2b
    mov $6, %r15d                  /* the first and the last page read zero */
    cmpq $0, BALLOON_BASE
    jne bfail
    lea -1(%r14), %rax
    shl $12, %rax
    cmpq $0, BALLOON_BASE(%rax)
    jne bfail
    mov %r14d, 0x104(%rbp)         /* actual */
    cmp 0x104(%rbp), %r14d
    jne bfail
    mov $7, %r15d                  /* a PFN outside guest RAM beside a good one */
    movq $0x5e6e5e6e, MARK_PAGE
    movl $MARK_PAGE >> 12, VQ_DATA
    movl $0xfffff0, VQ_DATA+4
    movq $VQ_DATA, VQ_DESC
    movl $8, VQ_DESC+8
    movl $0, VQ_DESC+12            /* flags 0, next 0 */
    movzwl VQ_USED+2, %r13d
    call bpost
    call vwaitnr                   /* DEVICE_NEEDS_RESET */
    jz bfail
    cmpw %r13w, VQ_USED+2          /* not used */
    jne bfail
    cmpq $0x5e6e5e6e, MARK_PAGE    /* not released */
    jne bfail
    lea msg_balloon_ok(%rip), %rdi
    call puts
    mov $SIGNAL_PORT, %dx
    xor %eax, %eax
    out %eax, %dx
    jmp hang
bfail:
    lea msg_balloon_bad(%rip), %rdi
    call puts
    mov $SIGNAL_PORT, %dx
    lea 30(%r15), %eax
    out %eax, %dx
    jmp hang

/* binflate: %ecx PFNs from %ebx on (advanced) in one buffer at VQ_DATA; ZF set when the
 * device used it. */
binflate:
    lea (,%rcx,4), %eax
    movq $VQ_DATA, VQ_DESC
    mov %eax, VQ_DESC+8
    movl $0, VQ_DESC+12            /* flags 0, next 0 */
    mov $VQ_DATA, %rdi
1:  mov %ebx, (%rdi)
    inc %ebx
    add $4, %rdi
    dec %ecx
    jnz 1b
    call bpost
    movzwl VQ_AVAIL+2, %eax
    jmp vwait

/* bpost: offers descriptor 0 on queue 0 and notifies. */
bpost:
    movzwl VQ_AVAIL+2, %eax
    mov %eax, %ecx
    and $7, %ecx
    movw $0, VQ_AVAIL+4(,%rcx,2)
    inc %eax
    movw %ax, VQ_AVAIL+2
    movl $0, 0x50(%rbp)            /* QueueNotify */
    ret

/* vsetup: reset, zeroed rings, VERSION_1 only, queue 0 of 8 entries, DRIVER_OK; ZF set
 * when the device accepted it all. */
vsetup:
    movl $0, 0x70(%rbp)
    mov $VQ_DESC, %rdi
    xor %eax, %eax
    mov $0x4000 / 8, %ecx
    rep stosq
    movl $1, 0x70(%rbp)            /* ACKNOWLEDGE */
    movl $3, 0x70(%rbp)            /* DRIVER */
    movl $1, 0x24(%rbp)            /* DriverFeaturesSel 1 */
    movl $1, 0x20(%rbp)            /* VIRTIO_F_VERSION_1 */
    movl $0, 0x24(%rbp)
    movl $0, 0x20(%rbp)
    movl $0xb, 0x70(%rbp)          /* FEATURES_OK */
    cmpl $0xb, 0x70(%rbp)
    jne 1f
    movl $0, 0x30(%rbp)            /* QueueSel */
    movl $8, 0x38(%rbp)            /* QueueNum */
    movl $VQ_DESC, 0x80(%rbp)
    movl $0, 0x84(%rbp)
    movl $VQ_AVAIL, 0x90(%rbp)
    movl $0, 0x94(%rbp)
    movl $VQ_USED, 0xa0(%rbp)
    movl $0, 0xa4(%rbp)
    movl $1, 0x44(%rbp)            /* QueueReady */
    movl $0xf, 0x70(%rbp)          /* DRIVER_OK */
    cmpl $0xf, 0x70(%rbp)
1:  ret

/* vread: sector 0 into VQ_DATA (header, data, status: descriptors 0-2); ZF set when the
 * chain was used with status OK and the data starts with "SEGV". */
vread:
    movl $0, VQ_HDR                /* VIRTIO_BLK_T_IN */
    movq $0, VQ_HDR+8              /* sector 0 */
    movl $0, VQ_DATA
    mov $3, %eax                   /* data: NEXT | WRITE */
    call vchain
    call vsubmit
    jne 1f
    cmpl $0x56474553, VQ_DATA      /* "SEGV" */
1:  ret

/* vwrite: VQ_DATA to sector 1, then FLUSH; ZF set when both answered OK. */
vwrite:
    movl $1, VQ_HDR                /* VIRTIO_BLK_T_OUT */
    movq $1, VQ_HDR+8
    mov $1, %eax                   /* data: NEXT (device-readable) */
    call vchain
    call vsubmit
    jne 1f
    movl $4, VQ_HDR                /* VIRTIO_BLK_T_FLUSH: header, status */
    movq $0, VQ_HDR+8
    movw $2, VQ_DESC+14
    call vsubmit
1:  ret

/* vchain: descriptors 0 (header) -> 1 (512 bytes at VQ_DATA, flags %ax) -> 2 (status). */
vchain:
    movq $VQ_HDR, VQ_DESC
    movl $16, VQ_DESC+8
    movw $1, VQ_DESC+12            /* NEXT */
    movw $1, VQ_DESC+14
    movq $VQ_DATA, VQ_DESC+16
    movl $512, VQ_DESC+24
    movw %ax, VQ_DESC+28
    movw $2, VQ_DESC+30
    movq $VQ_STATUS, VQ_DESC+32
    movl $1, VQ_DESC+40
    movw $2, VQ_DESC+44            /* WRITE */
    ret

/* vsubmit: offers the chain at descriptor 0 and notifies; ZF set when it was used with
 * status OK. */
vsubmit:
    movb $0xff, VQ_STATUS
    movzwl VQ_AVAIL+2, %eax
    mov %eax, %ecx
    and $7, %ecx
    movw $0, VQ_AVAIL+4(,%rcx,2)
    inc %eax
    movw %ax, VQ_AVAIL+2
    movl $0, 0x50(%rbp)            /* QueueNotify */
    call vwait
    jne 1f
    cmpb $0, VQ_STATUS
1:  ret

/* A device may serve a notify after the write returned (ioeventfd: on the VMM's event
 * loop), so its effects are polled for, bounded: a broken device fails the step.
 * vwait: ZF set when the used index reached %ax. */
vwait:
    mov $0x400000, %ecx
1:  cmpw %ax, VQ_USED+2
    je 2f
    pause
    dec %ecx
    jnz 1b
    cmpw %ax, VQ_USED+2
2:  ret

/* vwaitnr: ZF clear when the device set DEVICE_NEEDS_RESET. */
vwaitnr:
    mov $0x100000, %ecx
1:  testl $0x40, 0x70(%rbp)
    jnz 2f
    pause
    dec %ecx
    jnz 1b
    testl $0x40, 0x70(%rbp)
2:  ret

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
msg_virtio:     .asciz "segvmm test guest: virtio-blk check\n"
msg_virtio_ok:  .asciz "segvmm test guest: virtio-blk ok\n"
msg_virtio_bad: .asciz "segvmm test guest: virtio-blk FAILED\n"
msg_balloon:     .asciz "segvmm test guest: virtio-balloon check\n"
msg_balloon_ok:  .asciz "segvmm test guest: virtio-balloon ok\n"
msg_balloon_bad: .asciz "segvmm test guest: virtio-balloon FAILED\n"
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
