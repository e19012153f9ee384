/*
 * segvmm-rio: a small O_DIRECT block I/O benchmark (benches/virtio-blk.sh, issue #16).
 * Built with `gcc -static -O2` by guest-kernels/build.sh --rootfs into rootfs.ext4 as
 * /usr/bin/segvmm-rio; the same binary runs on the host against the image file.
 *
 *   segvmm-rio TEST PATH [MIB] [OPS] [JOBS]
 *
 * TEST is seqread, seqwrite (1 MiB requests, MIB of them in all, default 64) or
 * randread, randwrite (4 KiB requests at random 4 KiB-aligned offsets, OPS of them,
 * default 4096). PATH is a block device or a file (its size bounds the offsets; a
 * sequential test wraps around at its end). Writes are followed by one fdatasync, which
 * is timed. JOBS (1..64, default 1) processes share the requests (request i goes to
 * process i % JOBS, each with its own random sequence), so up to JOBS are in flight.
 * Prints one line:
 *
 *   SEGVMM_RIO test=randread bs=4096 ops=4096 jobs=1 bytes=16777216 seconds=1.234567 mb_s=13.59 iops=3318.0
 *
 * (mb_s in 10^6 bytes per second) and exits 0; on bad arguments or an I/O error one
 * "segvmm-rio: ..." line on stderr and exit 2 (arguments) or 1 (I/O).
 */
#define _GNU_SOURCE
#include <errno.h>
#include <fcntl.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <sys/wait.h>
#include <unistd.h>

#define SEQ_BS (1024 * 1024)
#define RAND_BS 4096
#define MAX_MIB 65536
#define MAX_OPS 10000000
#define MAX_JOBS 64

static int usage(const char *why)
{
	fprintf(stderr, "segvmm-rio: %s\n", why);
	fprintf(stderr, "usage: segvmm-rio seqread|seqwrite|randread|randwrite PATH [MIB (1..%d, default 64)] [OPS (1..%d, default 4096)] [JOBS (1..%d, default 1)]\n",
		MAX_MIB, MAX_OPS, MAX_JOBS);
	return 2;
}

/* A decimal in [1, max], or 0. */
static long parse_count(const char *s, long max)
{
	char *end;
	long v;

	errno = 0;
	v = strtol(s, &end, 10);
	if (errno || end == s || *end || v < 1 || v > max)
		return 0;
	return v;
}

static double now(void)
{
	struct timespec t;

	clock_gettime(CLOCK_MONOTONIC, &t);
	return (double)t.tv_sec + (double)t.tv_nsec / 1e9;
}

/* xorshift64: reproducible offsets, no libc state. */
static uint64_t next_rand(uint64_t *s)
{
	*s ^= *s << 13;
	*s ^= *s >> 7;
	*s ^= *s << 17;
	return *s;
}

/* One request of bs bytes at off; 0, or -1 with a message. */
static int one(int fd, int wr, char *buf, size_t bs, off_t off)
{
	ssize_t n = wr ? pwrite(fd, buf, bs, off) : pread(fd, buf, bs, off);

	if (n == (ssize_t)bs)
		return 0;
	fprintf(stderr, "segvmm-rio: %s of %zu bytes at %lld: %s\n", wr ? "pwrite" : "pread",
		bs, (long long)off, n < 0 ? strerror(errno) : "short transfer");
	return -1;
}

/* Process `job` of `jobs`: requests job, job + jobs, ...; 0, or 1 after an error. */
static int run_job(int fd, int seq, int wr, size_t bs, off_t blocks, long ops, long job,
		   long jobs)
{
	uint64_t seed = 0x5e9a3c0016ULL + 0x9e3779b97f4a7c15ULL * (uint64_t)job;
	char *buf;
	long i;

	if (posix_memalign((void **)&buf, 4096, bs)) {
		fprintf(stderr, "segvmm-rio: cannot allocate %zu bytes\n", bs);
		return 1;
	}
	memset(buf, 0x5a, bs);
	for (i = job; i < ops; i += jobs) {
		off_t blk = seq ? i % blocks : (off_t)(next_rand(&seed) % (uint64_t)blocks);

		if (one(fd, wr, buf, bs, blk * (off_t)bs))
			return 1;
	}
	free(buf);
	return 0;
}

/* Runs the jobs (job 0 here, the others in child processes); 0 when all succeeded. */
static int run_jobs(int fd, int seq, int wr, size_t bs, off_t blocks, long ops, long jobs)
{
	long j, started = 0;
	int failed = 0, status;

	for (j = 1; j < jobs; j++) {
		pid_t pid = fork();

		if (pid < 0) {
			fprintf(stderr, "segvmm-rio: fork: %s\n", strerror(errno));
			failed = 1;
			break;
		}
		if (pid == 0)
			_exit(run_job(fd, seq, wr, bs, blocks, ops, j, jobs));
		started++;
	}
	if (!failed)
		failed = run_job(fd, seq, wr, bs, blocks, ops, 0, jobs);
	for (; started > 0; started--)
		if (wait(&status) < 0 || !WIFEXITED(status) || WEXITSTATUS(status))
			failed = 1;
	return failed;
}

int main(int argc, char **argv)
{
	const char *test, *path;
	long mib = 64, ops = 4096, jobs = 1;
	int seq, wr, fd;
	size_t bs;
	off_t size, blocks;
	double t0, secs;

	if (argc < 3 || argc > 6)
		return usage("expected TEST PATH [MIB] [OPS] [JOBS]");
	test = argv[1];
	path = argv[2];
	if (argc > 3 && !(mib = parse_count(argv[3], MAX_MIB)))
		return usage("MIB out of range");
	if (argc > 4 && !(ops = parse_count(argv[4], MAX_OPS)))
		return usage("OPS out of range");
	if (argc > 5 && !(jobs = parse_count(argv[5], MAX_JOBS)))
		return usage("JOBS out of range");
	if (!strcmp(test, "seqread") || !strcmp(test, "seqwrite"))
		seq = 1;
	else if (!strcmp(test, "randread") || !strcmp(test, "randwrite"))
		seq = 0;
	else
		return usage("unknown TEST");
	wr = strstr(test, "write") != NULL;
	bs = seq ? SEQ_BS : RAND_BS;
	if (seq)
		ops = mib;

	fd = open(path, (wr ? O_RDWR : O_RDONLY) | O_DIRECT);
	if (fd < 0) {
		fprintf(stderr, "segvmm-rio: open %s (O_DIRECT): %s\n", path, strerror(errno));
		return 2;
	}
	size = lseek(fd, 0, SEEK_END);
	blocks = size < 0 ? 0 : size / (off_t)bs;
	if (blocks < 1) {
		fprintf(stderr, "segvmm-rio: %s is smaller than one %zu-byte request\n", path, bs);
		return 2;
	}
	t0 = now();
	if (run_jobs(fd, seq, wr, bs, blocks, ops, jobs))
		return 1;
	if (wr && fdatasync(fd)) {
		fprintf(stderr, "segvmm-rio: fdatasync: %s\n", strerror(errno));
		return 1;
	}
	secs = now() - t0;
	if (secs <= 0)
		secs = 1e-9;
	printf("SEGVMM_RIO test=%s bs=%zu ops=%ld jobs=%ld bytes=%lld seconds=%.6f mb_s=%.2f iops=%.1f\n",
	       test, bs, ops, jobs, (long long)ops * (long long)bs, secs, (double)ops * (double)bs / secs / 1e6,
	       (double)ops / secs);
	fflush(stdout);
	close(fd);
	return 0;
}
