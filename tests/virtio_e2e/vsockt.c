/* vsockt: a tiny AF_VSOCK (and TCP) test tool for segvmm's end-to-end tests.
 *   vsockt listen PORT           accept one connection, echo what arrives until EOF
 *   vsockt send PORT BYTES       connect to the host (CID 2) at PORT, send BYTES bytes,
 *                                half-close, print what the host answered
 *   vsockt tcp IPV4 PORT BYTES   the same over TCP (64 KiB writes, unlike busybox nc) */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>
#include <sys/socket.h>
#include <linux/vm_sockets.h>
#include <netinet/in.h>
#include <arpa/inet.h>

static int send_all(int s, long left, char *buf, size_t size) {
	memset(buf, 'x', size);
	while (left > 0) {
		ssize_t w = write(s, buf, left < (long)size ? left : (long)size);
		if (w <= 0) { perror("write"); return 1; }
		left -= w;
	}
	shutdown(s, SHUT_WR);
	ssize_t n = read(s, buf, size - 1);
	if (n < 0) n = 0;
	buf[n] = 0;
	printf("VSOCKT_SENT reply=%s\n", buf);
	return 0;
}

int main(int argc, char **argv) {
	if (argc < 3) return 2;
	static char buf[65536];
	if (!strcmp(argv[1], "tcp") && argc > 4) {
		struct sockaddr_in t = { .sin_family = AF_INET, .sin_port = htons(atoi(argv[3])) };
		inet_pton(AF_INET, argv[2], &t.sin_addr);
		int s = socket(AF_INET, SOCK_STREAM, 0);
		if (s < 0 || connect(s, (void *)&t, sizeof t)) { perror("tcp connect"); return 1; }
		return send_all(s, atol(argv[4]), buf, sizeof buf);
	}
	struct sockaddr_vm a = { .svm_family = AF_VSOCK, .svm_port = atoi(argv[2]) };
	int s = socket(AF_VSOCK, SOCK_STREAM, 0);
	if (s < 0) { perror("socket"); return 1; }
	if (!strcmp(argv[1], "listen")) {
		a.svm_cid = VMADDR_CID_ANY;
		if (bind(s, (void *)&a, sizeof a) || listen(s, 1)) { perror("bind/listen"); return 1; }
		printf("VSOCKT_LISTENING %s\n", argv[2]); fflush(stdout);
		int c = accept(s, 0, 0);
		if (c < 0) { perror("accept"); return 1; }
		long total = 0; ssize_t n;
		while ((n = read(c, buf, sizeof buf)) > 0) {
			total += n;
			for (ssize_t o = 0; o < n;) { ssize_t w = write(c, buf + o, n - o); if (w <= 0) return 1; o += w; }
		}
		printf("VSOCKT_ECHOED %ld\n", total);
		return 0;
	}
	a.svm_cid = 2;
	if (connect(s, (void *)&a, sizeof a)) { perror("connect"); return 1; }
	return send_all(s, argc > 3 ? atol(argv[3]) : 0, buf, sizeof buf);
}
