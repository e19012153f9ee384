// SPDX-License-Identifier: MIT
/*
 * segvmm guest /init: print "SEGVMM_INIT_OK uptime=<seconds>" and power off.
 *
 * Freestanding, static, no libc: every guest system call is expensive on the
 * kvm_pvm host (milliseconds each), so this does the minimum:
 *   mount("proc", "/proc", "proc")  open("/proc/uptime")  read()
 *   write(1, line)  ioctl(1, TCSBRK, 1) (tcdrain)  reboot(POWER_OFF)
 * i.e. 6 system calls on the happy path.  If /proc cannot be mounted or read
 * it falls back to clock_gettime(CLOCK_BOOTTIME), which is the same clock
 * /proc/uptime reports.  If the power-off call returns, it exits, which makes
 * the kernel panic ("Attempted to kill init"); with panic=-1 that reboots.
 *
 * Wait mode (for snapshots, issue #15): with the word "wait" among init's
 * arguments (kernel command line "... -- wait"; words after "--" are passed to
 * init), /init prints "SEGVMM_INIT_WAIT", blocks reading one line from the
 * console (fd 0, the tty in canonical mode), then prints
 * "SEGVMM_INIT_NEXT <the line>" and powers off:
 *   write(1)  tcdrain  read(0)...  write(1)  tcdrain  reboot(POWER_OFF)
 * A snapshot taken while it waits, restored with the line on the VMM's stdin,
 * shows the guest going on where it stopped.
 *
 * Build: gcc -O2 -static -nostdlib -ffreestanding -fno-stack-protector
 *            -fno-pie -no-pie -o init init.c
 *
 * Test variant (guest-kernels/test-pvm-fixup.sh): with
 * -DFAKE_SYSCALL_ENTRY=<address of entry_SYSCALL_64> -mno-red-zone, every
 * system call is made the way the kvm_pvm host botches SYSCALL: RCX = return
 * address, R11 = RFLAGS, then a user-mode jump to entry_SYSCALL_64.  On a
 * normal CPU that faults exactly like on kvm_pvm, so it exercises the
 * kernel's pvm syscall fixup under QEMU/TCG; without the fixup /init dies
 * with SIGSEGV and the kernel panics.
 */

#define SYS_read 0
#define SYS_write 1
#define SYS_open 2
#define SYS_ioctl 16
#define SYS_exit 60
#define SYS_mount 165
#define SYS_reboot 169
#define SYS_clock_gettime 228

#define O_RDONLY 0
#define TCSBRK 0x5409 /* with a non-zero argument: tcdrain() */
#define CLOCK_BOOTTIME 7
#define LINUX_REBOOT_MAGIC1 0xfee1deadL
#define LINUX_REBOOT_MAGIC2 672274793L
#define LINUX_REBOOT_CMD_POWER_OFF 0x4321fedcL

typedef unsigned long u64;

#ifdef FAKE_SYSCALL_ENTRY
#define STR_(x) #x
#define STR(x) STR_(x)
/* r9 is free: no call here passes a 6th argument. Needs -mno-red-zone. */
#define SYSCALL_INSN				\
	"lea 1f(%%rip), %%rcx\n\t"		\
	"pushfq\n\t"				\
	"popq %%r11\n\t"			\
	"movabsq $" STR(FAKE_SYSCALL_ENTRY) ", %%r9\n\t" \
	"jmp *%%r9\n"				\
	"1:"
#else
#define SYSCALL_INSN "syscall"
#endif

static inline long sys3(long n, long a, long b, long c)
{
	long ret;

	__asm__ volatile(SYSCALL_INSN
			 : "=a"(ret)
			 : "a"(n), "D"(a), "S"(b), "d"(c)
			 : "rcx", "r11", "r9", "memory", "cc");
	return ret;
}

static inline long sys5(long n, long a, long b, long c, long d, long e)
{
	long ret;
	register long r10 __asm__("r10") = d;
	register long r8 __asm__("r8") = e;

	__asm__ volatile(SYSCALL_INSN
			 : "=a"(ret)
			 : "a"(n), "D"(a), "S"(b), "d"(c), "r"(r10), "r"(r8)
			 : "rcx", "r11", "r9", "memory", "cc");
	return ret;
}

struct kts {
	long tv_sec;
	long tv_nsec;
};

/* Append the decimal representation of v to p; returns the new end. */
static char *put_u(char *p, u64 v, int min_digits)
{
	char tmp[24];
	int n = 0;

	do {
		tmp[n++] = (char)('0' + v % 10);
		v /= 10;
	} while (v || n < min_digits);
	while (n)
		*p++ = tmp[--n];
	return p;
}

/* Copies the first whitespace-delimited token of /proc/uptime ("12.34"). */
static char *uptime_from_proc(char *p)
{
	char buf[64];
	long fd, n, i;

	if (sys5(SYS_mount, (long)"proc", (long)"/proc", (long)"proc", 0, 0) < 0)
		return 0;
	fd = sys3(SYS_open, (long)"/proc/uptime", O_RDONLY, 0);
	if (fd < 0)
		return 0;
	n = sys3(SYS_read, fd, (long)buf, sizeof(buf));
	if (n <= 0)
		return 0;
	for (i = 0; i < n && buf[i] != ' ' && buf[i] != '\n'; i++)
		*p++ = buf[i];
	return i ? p : 0;
}

static char *uptime_from_clock(char *p)
{
	struct kts ts = { 0, 0 };

	sys3(SYS_clock_gettime, CLOCK_BOOTTIME, (long)&ts, 0);
	p = put_u(p, (u64)ts.tv_sec, 1);
	*p++ = '.';
	return put_u(p, (u64)ts.tv_nsec / 10000000, 2); /* centiseconds, like /proc/uptime */
}

static const char marker[] = "SEGVMM_INIT_OK uptime=";
static const char wait_marker[] = "SEGVMM_INIT_WAIT\n";
static const char next_marker[] = "SEGVMM_INIT_NEXT ";

static char *put_s(char *p, const char *s, unsigned long n)
{
	while (n--)
		*p++ = *s++;
	return p;
}

/*
 * Writes line[0..n) to the console and waits until the UART has sent it: the
 * tty layer transmits it interrupt by interrupt, and the power-off prints
 * straight to the console, so without tcdrain a slow host can lose the line.
 */
static void say(const char *line, long n)
{
	sys3(SYS_write, 1, (long)line, n);
	sys3(SYS_ioctl, 1, TCSBRK, 1);
}

static __attribute__((noreturn)) void power_off(void)
{
	sys5(SYS_reboot, LINUX_REBOOT_MAGIC1, LINUX_REBOOT_MAGIC2,
	     LINUX_REBOOT_CMD_POWER_OFF, 0, 0);
	for (;;)
		sys3(SYS_exit, 1, 0, 0);
}

/* Whether "wait" is one of init's arguments. */
static int wait_mode(long argc, char **argv)
{
	long i;

	for (i = 1; i < argc && argv[i]; i++) {
		const char *a = argv[i];

		if (a[0] == 'w' && a[1] == 'a' && a[2] == 'i' && a[3] == 't' && !a[4])
			return 1;
	}
	return 0;
}

/* Waits for one console line, then prints "SEGVMM_INIT_NEXT <line>". */
static __attribute__((noreturn)) void wait_then_next(void)
{
	char line[160];
	char *p = put_s(line, next_marker, sizeof(next_marker) - 1);
	char *end = line + sizeof(line) - 1;
	long n;

	say(wait_marker, sizeof(wait_marker) - 1);
	/* Canonical mode: each read returns at most one line. */
	while (p < end) {
		n = sys3(SYS_read, 0, (long)p, end - p);
		if (n <= 0)
			break;
		p += n;
		if (p[-1] == '\n')
			break;
	}
	while (p > line + sizeof(next_marker) - 1 && (p[-1] == '\n' || p[-1] == '\r'))
		p--;
	*p++ = '\n';
	say(line, p - line);
	power_off();
}

/* sp: the kernel's initial stack (argc, argv[], NULL, envp[], NULL). */
__attribute__((noreturn, used)) void init_main(long *sp)
{
	char line[96];
	char *p = line, *q;

	if (wait_mode(sp[0], (char **)(sp + 1)))
		wait_then_next();
	p = put_s(p, marker, sizeof(marker) - 1);
	q = uptime_from_proc(p);
	p = q ? q : uptime_from_clock(p);
	*p++ = '\n';
	say(line, p - line);
	power_off();
}

/* The kernel enters at _start with a 16-byte aligned %rsp; keep the ABI happy. */
__asm__(".text\n"
	".global _start\n"
	"_start:\n"
	"	xorl %ebp, %ebp\n"
	"	movq %rsp, %rdi\n"
	"	andq $-16, %rsp\n"
	"	call init_main\n"
	"	hlt\n");
