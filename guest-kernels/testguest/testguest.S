/*
 * segvmm's bare-metal test guest: about 3 KiB of code that boots through the PVH
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
 *
 * 'm' followed by a decimal device ID ("m2" virtio-blk, "m1" virtio-net, "m19"
 * virtio-vsock) drives the first virtio-mmio device, which must have that ID, through
 * five malformed-queue cases on its request queue (0 for a disk, the TX queue 1 for net
 * and vsock), each followed by a reset, the queue set up again and a good request that
 * must still be served (step n + 1): a read of sector 0 ("SEGV") on a disk, a 72-byte
 * packet otherwise (a vsock RST for no connection, dropped quietly; a zero frame for a
 * NIC). Steps: 2 identification, 3 set-up and a good request, 4 (a) a buffer at
 * 0xfff0_0000_0000, far outside guest RAM (disk: used with VIRTIO_BLK_S_IOERR, used
 * length 1, the bytes beside the status and the data buffer unchanged; net, vsock: the
 * packet used, i.e. dropped; the device still running), 6 (b) a chain looping on itself
 * (DEVICE_NEEDS_RESET, not used), 8 (c) more data than the request allows (disk: two
 * sectors read from the last one, IOERR as in (a); net, vsock: a 128 KiB packet, dropped),
 * 10 (d) QueueNum 5, not a power of two (DEVICE_NEEDS_RESET), 12 (e) a good chain
 * notified before DRIVER_OK (DEVICE_NEEDS_RESET, not used). It reports 0, else 40 + the
 * failed step (42-53).
 *
 * Every "was it used / did it fail" check is a bounded poll, since a device may serve a
 * notify after the write returns (on the VMM's event loop): each round reads Status (an
 * MMIO exit) and runs `pause`, at most POLL_MAX rounds (50,000 timed out in 1.1 s of guest
 * time on kvm_pvm), after which the step fails.
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
#define STATUS 0x70             /* the Status register */
#define NEEDS_RESET 0x40        /* DEVICE_NEEDS_RESET in Status */
#define POLL_MAX 100000         /* rounds of a bounded poll: ~2 s of MMIO exits on kvm_pvm */
#define FAR_AWAY 0xfff000000000 /* a guest-physical address far outside guest RAM */
#define TX_LEN 72               /* the good packet of 'm' on net and vsock */

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
    cmp $'m', %al
    je malformed
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
    xor %esi, %esi
    jmp finish
bad:
    lea msg_bad(%rip), %rdi
    mov $1, %esi
/* finish: prints the string at %rdi, reports %esi on the signal port, hangs. */
finish:
    call puts
    mov $SIGNAL_PORT, %dx
    mov %esi, %eax
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
    call voffer
    call mfailed                   /* DEVICE_NEEDS_RESET, the bad chain not used */
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
    xor %esi, %esi
    jmp finish
vfail:
    lea msg_virtio_bad(%rip), %rdi
    lea 20(%r15), %esi
    jmp finish

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
    call bpost
    call mfailed                   /* DEVICE_NEEDS_RESET, not used */
    jne bfail
    cmpq $0x5e6e5e6e, MARK_PAGE    /* not released */
    jne bfail
    lea msg_balloon_ok(%rip), %rdi
    xor %esi, %esi
    jmp finish
bfail:
    lea msg_balloon_bad(%rip), %rdi
    lea 30(%r15), %esi
    jmp finish

/* The malformed-queue check ('m' + device ID); %r13d is the expected device ID, %r11d
 * the queue, %r15d the step. */
.macro mstep n, fn
    mov $\n, %r15d
    call \fn
    jne mfail
.endm
malformed:
    xor %r13d, %r13d               /* the decimal number after 'm' */
    lea 1(%rbx), %rdi
1:  movzbl (%rdi), %eax
    sub $'0', %eax
    cmp $9, %eax
    ja 2f
    imul $10, %r13d, %r13d
    add %eax, %r13d
    inc %rdi
    jmp 1b
2:  lea msg_malformed(%rip), %rdi
    call puts
    mov $VIO, %rbp
    xor %r11d, %r11d               /* queue 0 on a disk, TX (1) on net and vsock */
    cmp $2, %r13d
    je 3f
    mov $1, %r11d
3:  mov $2, %r15d
    cmpl $0x74726976, 0x00(%rbp)   /* magic "virt" */
    jne mfail
    cmpl $2, 0x04(%rbp)            /* version 2 */
    jne mfail
    cmp 0x08(%rbp), %r13d          /* the device asked for */
    jne mfail
    mstep 3, mgood
    mstep 4, mfar                  /* (a) */
    mstep 5, mgood
    mstep 6, mloop                 /* (b) */
    mstep 7, mgood
    mstep 8, mlong                 /* (c) */
    mstep 9, mgood
    mstep 10, msize                /* (d) */
    mstep 11, mgood
    mstep 12, mearly               /* (e) */
    mstep 13, mgood
    lea msg_malformed_ok(%rip), %rdi
    xor %esi, %esi
    jmp finish
mfail:
    lea msg_malformed_bad(%rip), %rdi
    lea 40(%r15), %esi
    jmp finish

/* mgood: reset, set-up, and a good request served; ZF set when all went well. */
mgood:
    call vsetupq
    jne 1f
    cmp $2, %r13d
    je vread
    call mtxchain
    call voffer
    jmp vwait_used
1:  ret

/* mtxchain: descriptor 0, TX_LEN device-readable bytes at VQ_DATA, zero but for op 3 at
 * byte 30: a vsock RST for no connection (dropped quietly), a zero frame for a NIC. */
mtxchain:
    mov $VQ_DATA, %rdi
    xor %eax, %eax
    mov $TX_LEN / 8, %ecx
    rep stosq
    movw $3, VQ_DATA+30
    movq $VQ_DATA, VQ_DESC
    movl $TX_LEN, VQ_DESC+8
    movl $0, VQ_DESC+12            /* flags 0, next 0 */
    ret

/* (a) a buffer far outside guest RAM: a disk answers IOERR (mioerr), net and vsock drop
 * the packet (mdrop). */
mfar:
    cmp $2, %r13d
    jne 1f
    call vreadchain
    mov $FAR_AWAY, %rax
    mov %rax, VQ_DESC+16           /* the data buffer */
    jmp mioerr
1:  mov $FAR_AWAY, %rax
    mov $TX_LEN, %ecx
    jmp mdrop

/* (b) descriptor 0 chained to itself: DEVICE_NEEDS_RESET, not used. */
mloop:
    movq $VQ_DATA, VQ_DESC
    movl $TX_LEN, VQ_DESC+8
    movw $1, VQ_DESC+12            /* NEXT */
    movw $0, VQ_DESC+14            /* to itself */
    call voffer
    jmp mfailed

/* (c) more data than the request allows: a disk read of two sectors from the last one
 * (IOERR), a 128 KiB packet on net and vsock (dropped). */
mlong:
    cmp $2, %r13d
    jne 1f
    call vreadchain
    mov 0x100(%rbp), %eax          /* capacity in sectors (low half) */
    dec %rax
    mov %rax, VQ_HDR+8
    movl $1024, VQ_DESC+24
    jmp mioerr
1:  mov $VQ_DATA, %eax
    mov $0x20000, %ecx
    jmp mdrop

/* (d) QueueNum 5, not a power of two, during set-up: DEVICE_NEEDS_RESET. */
msize:
    call vinit
    jne 1f
    mov %r11d, 0x30(%rbp)          /* QueueSel */
    movl $5, 0x38(%rbp)            /* QueueNum */
    call vwait_reset
1:  ret

/* (e) a good chain offered and notified before DRIVER_OK: DEVICE_NEEDS_RESET, not used. */
mearly:
    call vinit
    jne 1f
    call vqueue
    cmp $2, %r13d
    jne 2f
    call vreadchain
    jmp 3f
2:  call mtxchain
3:  call voffer
    jmp mfailed
1:  ret

/* mioerr: offers the disk chain at descriptor 0; ZF set when it was used with
 * VIRTIO_BLK_S_IOERR and used length 1 (the status byte only), the bytes beside the
 * status and the start of the data buffer unchanged, the device still running. */
mioerr:
    movq $-1, VQ_STATUS
    movq $0x5e6e5e6e, VQ_DATA
    call voffer
    call vwait_used
    jne 1f
    cmpq $-255, VQ_STATUS          /* 0x...ffff01: IOERR, then untouched 0xff bytes */
    jne 1f
    cmpq $0x5e6e5e6e, VQ_DATA
    jne 1f
    movzwl VQ_USED+2, %eax
    dec %eax
    and $7, %eax
    cmpl $1, VQ_USED+8(,%rax,8)    /* used[idx - 1].len */
    jne 1f
    testl $NEEDS_RESET, STATUS(%rbp)
1:  ret

/* mdrop: one TX buffer at %rax of %ecx bytes that the device must drop: ZF set when it
 * was used and the device still runs. */
mdrop:
    mov %rax, VQ_DESC
    mov %ecx, VQ_DESC+8
    movl $0, VQ_DESC+12            /* flags 0, next 0 */
    call voffer
    call vwait_used
    jne 1f
    testl $NEEDS_RESET, STATUS(%rbp)
1:  ret

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
    jmp vwait_used

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
 * when the device accepted it all. vsetupq: the same with queue %r11d (which voffer
 * notifies). */
vsetup:
    xor %r11d, %r11d
vsetupq:
    call vinit
    jne 1f
    call vqueue
    movl $0xf, 0x70(%rbp)          /* DRIVER_OK */
    cmpl $0xf, 0x70(%rbp)
1:  ret

/* vinit: reset, zeroed rings, ACKNOWLEDGE, DRIVER, VERSION_1 only, FEATURES_OK; ZF set
 * when the device accepted the features. */
vinit:
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
    ret

/* vqueue: queue %r11d of 8 entries on the rings at VQ_DESC, VQ_AVAIL, VQ_USED, ready. */
vqueue:
    mov %r11d, 0x30(%rbp)          /* QueueSel */
    movl $8, 0x38(%rbp)            /* QueueNum */
    movl $VQ_DESC, 0x80(%rbp)
    movl $0, 0x84(%rbp)
    movl $VQ_AVAIL, 0x90(%rbp)
    movl $0, 0x94(%rbp)
    movl $VQ_USED, 0xa0(%rbp)
    movl $0, 0xa4(%rbp)
    movl $1, 0x44(%rbp)            /* QueueReady */
    ret

/* vread: sector 0 into VQ_DATA (header, data, status: descriptors 0-2); ZF set when the
 * chain was used with status OK and the data starts with "SEGV". */
vread:
    call vreadchain
    movl $0, VQ_DATA
    call vsubmit
    jne 1f
    cmpl $0x56474553, VQ_DATA      /* "SEGV" */
1:  ret

/* vreadchain: the chain of a read of sector 0 into VQ_DATA (512 bytes). */
vreadchain:
    movl $0, VQ_HDR                /* VIRTIO_BLK_T_IN */
    movq $0, VQ_HDR+8              /* sector 0 */
    mov $3, %eax                   /* data: NEXT | WRITE */
    jmp vchain

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

/* vsubmit: offers the chain at descriptor 0 and notifies; ZF set when it was used (polled)
 * with status OK. */
vsubmit:
    movb $0xff, VQ_STATUS
    call voffer
    call vwait_used
    jne 1f
    cmpb $0, VQ_STATUS
1:  ret

/* voffer: offers the chain at descriptor 0 on queue %r11d and notifies; %eax = the new
 * available index. */
voffer:
    movzwl VQ_AVAIL+2, %eax
    mov %eax, %ecx
    and $7, %ecx
    movw $0, VQ_AVAIL+4(,%rcx,2)
    inc %eax
    movw %ax, VQ_AVAIL+2
    mov %r11d, 0x50(%rbp)          /* QueueNotify */
    ret

/* vwait_used: ZF set once the used index equals %ax; ZF clear when the device needs a
 * reset first or POLL_MAX rounds passed. */
vwait_used:
    mov $POLL_MAX, %ecx
1:  cmpw %ax, VQ_USED+2
    je 2f
    testl $NEEDS_RESET, STATUS(%rbp)
    jnz 3f
    pause
    dec %ecx
    jnz 1b
3:  or $1, %ecx                    /* ZF clear */
2:  ret

/* vwait_reset: ZF set once Status has DEVICE_NEEDS_RESET; clear after POLL_MAX rounds. */
vwait_reset:
    mov $POLL_MAX, %ecx
1:  testl $NEEDS_RESET, STATUS(%rbp)
    jnz 2f
    pause
    dec %ecx
    jnz 1b
    or $1, %ecx                    /* ZF clear */
    ret
2:  xor %ecx, %ecx                 /* ZF set */
    ret

/* mfailed: ZF set when the device needs a reset (polled) and did not use the chain
 * offered last. */
mfailed:
    call vwait_reset
    jne 1f
    movzwl VQ_AVAIL+2, %eax
    dec %eax
    cmpw %ax, VQ_USED+2
1:  ret

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
msg_malformed:     .asciz "segvmm test guest: malformed-queue check\n"
msg_malformed_ok:  .asciz "segvmm test guest: malformed-queue ok\n"
msg_malformed_bad: .asciz "segvmm test guest: malformed-queue FAILED\n"
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
