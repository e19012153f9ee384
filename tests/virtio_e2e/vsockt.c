/* vsockt: a tiny AF_VSOCK test tool for segvmm's end-to-end tests.
 *   vsockt listen PORT      accept one connection, echo what arrives until EOF
 *   vsockt send PORT BYTES  connect to the host (CID 2) at PORT, send BYTES zero bytes,
 *                           close, print what the host answered */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>
#include <sys/socket.h>
#include <linux/vm_sockets.h>

int main(int argc, char **argv) {
	if (argc < 3) return 2;
	struct sockaddr_vm a = { .svm_family = AF_VSOCK, .svm_port = atoi(argv[2]) };
	int s = socket(AF_VSOCK, SOCK_STREAM, 0);
	if (s < 0) { perror("socket"); return 1; }
	static char buf[65536];
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
	long left = argc > 3 ? atol(argv[3]) : 0;
	memset(buf, 'x', sizeof buf);
	while (left > 0) { ssize_t w = write(s, buf, left < (long)sizeof buf ? left : (long)sizeof buf); if (w <= 0) { perror("write"); return 1; } left -= w; }
	shutdown(s, SHUT_WR);
	ssize_t n = read(s, buf, sizeof buf - 1);
	if (n < 0) n = 0;
	buf[n] = 0;
	printf("VSOCKT_SENT reply=%s\n", buf);
	return 0;
}
