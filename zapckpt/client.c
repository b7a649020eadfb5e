/*
 * zap: the command, as users run it. It hands the command to the zap server
 * (zapckpt/cli/forkserver.py, which has zap's Python modules imported and forks a process per
 * command) and waits for it, or runs the Python command itself (python -m zapckpt) where there is
 * no server, which starts one for the commands after it. In C, because a Python client alone
 * costs more than half of a small command (its interpreter's start-up, ~30 ms here).
 *
 * The command is the client's in every way that shows: its stdin, stdout and stderr are handed
 * over (SCM_RIGHTS), with the environment, working directory and umask; the signals the client
 * gets are passed on; the client exits with the command's status, or dies of the signal it died
 * of. The wire is zapckpt/common/wire.py's. Built by scripts/install.sh with ZAP_PYTHON (the
 * virtualenv's interpreter), ZAP_ROOT (the checkout) and ZAP_PREFIX (the virtualenv).
 */
#define _GNU_SOURCE
#include <errno.h>
#include <fcntl.h>
#include <signal.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <sys/un.h>
#include <unistd.h>

#ifndef ZAP_PYTHON
#error "build with -DZAP_PYTHON=... -DZAP_ROOT=... -DZAP_PREFIX=... (scripts/install.sh does)"
#endif

extern char **environ;

/* Commands that use the terminal as a terminal, or are servers themselves: never served. */
static const char *const HERE[] = { "exec", "guard", "mount", "watch-serve", "server", NULL };
static int sock = -1;

static void run_here(int argc, char **argv)
{
	char **args = calloc(argc + 3, sizeof(char *));
	int i;

	if (!args) {
		perror("zap");
		exit(1);
	}
	args[0] = ZAP_PYTHON;
	args[1] = "-m";
	args[2] = "zapckpt";
	for (i = 1; i < argc; i++)
		args[i + 2] = argv[i];
	execv(ZAP_PYTHON, args);
	fprintf(stderr, "zap: error: cannot run %s: %s (make install)\n", ZAP_PYTHON, strerror(errno));
	exit(1);
}

static int served(int argc, char **argv)
{
	const char *off = getenv("ZAP_SERVER");
	int i;

	if ((off && strcmp(off, "0") == 0) || geteuid() != 0)
		return 0;
	for (i = 0; i < 3; i++) /* each is handed over: a closed one stays closed, with Python */
		if (fcntl(i, F_GETFD) < 0)
			return 0;
	for (i = 1; i < argc; i++) {
		const char *const *h;
		if (argv[i][0] == '-')
			continue;
		for (h = HERE; *h; h++)
			if (strcmp(argv[i], *h) == 0)
				return 0;
		break;
	}
	return 1;
}

/* wire.namespaces(): "NET:MNT", the inodes of the caller's network and mount namespaces */
static void namespaces(char *out, size_t n)
{
	struct stat st;
	unsigned long long net = 0, mnt = 0;

	if (stat("/proc/self/ns/net", &st) == 0)
		net = (unsigned long long)st.st_ino;
	if (stat("/proc/self/ns/mnt", &st) == 0)
		mnt = (unsigned long long)st.st_ino;
	snprintf(out, n, "%llu:%llu", net, mnt);
}

/* wire.key(): FNV-1a over the checkout, the virtualenv and the namespaces, NUL between them */
static void socket_path(char *out, size_t n)
{
	uint64_t h = 0xcbf29ce484222325ULL;
	char ns[64];
	const char *parts[3] = { ZAP_ROOT, ZAP_PREFIX, ns };
	int p;

	namespaces(ns, sizeof ns);
	for (p = 0; p < 3; p++) {
		const unsigned char *c;
		for (c = (const unsigned char *)parts[p]; *c; c++)
			h = (h ^ *c) * 0x100000001b3ULL;
		if (p < 2)
			h = (h ^ 0) * 0x100000001b3ULL; /* the NUL between them */
	}
	snprintf(out, n, "/run/zapckpt/server-%016llx.sock", (unsigned long long)h);
}

struct buf {
	char *data;
	size_t len, cap;
};

static void put(struct buf *b, const char *s, size_t n)
{
	if (b->len + n + 1 > b->cap) {
		while (b->len + n + 1 > b->cap)
			b->cap = b->cap ? b->cap * 2 : 65536;
		b->data = realloc(b->data, b->cap);
		if (!b->data) {
			perror("zap");
			exit(1);
		}
	}
	memcpy(b->data + b->len, s, n);
	b->data[b->len + n] = '\0';
	b->len += n + 1;
}

static void put_str(struct buf *b, const char *s)
{
	put(b, s, strlen(s));
}

static void forward(int sig)
{
	unsigned char m[4] = { 0, 0, 0, (unsigned char)sig };
	int saved = errno;
	if (write(sock, m, 4) < 0) {
		/* nothing to do: the reply (or its absence) says how the command ended */
	}
	errno = saved;
}

static int read_all(int fd, unsigned char *p, size_t n)
{
	size_t got = 0;
	while (got < n) {
		ssize_t r = read(fd, p + got, n - got);
		if (r < 0 && errno == EINTR)
			continue;
		if (r <= 0)
			return -1;
		got += r;
	}
	return 0;
}

int main(int argc, char **argv)
{
	static const int forwarded[] = { SIGINT, SIGTERM, SIGHUP, SIGQUIT, SIGUSR1, SIGUSR2, SIGWINCH };
	struct sockaddr_un addr = { .sun_family = AF_UNIX };
	struct buf b = { 0 };
	char num[32], cwd[8192];
	unsigned char reply[8];
	char cbuf[CMSG_SPACE(3 * sizeof(int))];
	struct msghdr msg = { 0 };
	struct iovec iov;
	struct cmsghdr *cm;
	uint32_t len, kind, value;
	mode_t mask;
	char **e;
	size_t i;

	if (!served(argc, argv))
		run_here(argc, argv);
	socket_path(addr.sun_path, sizeof(addr.sun_path));
	sock = socket(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0);
	if (sock < 0 || connect(sock, (struct sockaddr *)&addr, sizeof(addr)) != 0)
		run_here(argc, argv); /* no server: Python runs it, and starts one */

	mask = umask(0);
	umask(mask);
	if (!getcwd(cwd, sizeof(cwd)))
		strcpy(cwd, "/");
	put(&b, "\0\0\0\0", 3); /* room for the length (4 bytes, with put's NUL) */
	b.len = 4;
	put_str(&b, "ZAP1");
	put_str(&b, cwd);
	snprintf(num, sizeof(num), "%o", (unsigned)mask);
	put_str(&b, num);
	snprintf(num, sizeof(num), "%d", argc - 1);
	put_str(&b, num);
	for (i = 1; i < (size_t)argc; i++)
		put_str(&b, argv[i]);
	for (e = environ; *e; e++)
		put_str(&b, *e);
	len = (uint32_t)(b.len - 4);
	b.data[0] = len >> 24;
	b.data[1] = len >> 16;
	b.data[2] = len >> 8;
	b.data[3] = len;

	iov.iov_base = b.data;
	iov.iov_len = b.len;
	msg.msg_iov = &iov;
	msg.msg_iovlen = 1;
	msg.msg_control = cbuf;
	msg.msg_controllen = sizeof(cbuf);
	cm = CMSG_FIRSTHDR(&msg);
	cm->cmsg_level = SOL_SOCKET;
	cm->cmsg_type = SCM_RIGHTS;
	cm->cmsg_len = CMSG_LEN(3 * sizeof(int));
	((int *)CMSG_DATA(cm))[0] = 0;
	((int *)CMSG_DATA(cm))[1] = 1;
	((int *)CMSG_DATA(cm))[2] = 2;
	{
		ssize_t sent = sendmsg(sock, &msg, 0);
		size_t done;
		if (sent < 0)
			run_here(argc, argv); /* the server went away in between */
		for (done = sent; done < b.len;) {
			ssize_t w = write(sock, b.data + done, b.len - done);
			if (w < 0 && errno == EINTR)
				continue;
			if (w <= 0)
				break;
			done += w;
		}
	}
	for (i = 0; i < sizeof(forwarded) / sizeof(forwarded[0]); i++) {
		struct sigaction sa = { .sa_handler = forward, .sa_flags = SA_RESTART };
		sigemptyset(&sa.sa_mask);
		sigaction(forwarded[i], &sa, NULL);
	}
	if (read_all(sock, reply, 8) != 0) {
		fprintf(stderr, "zap: error: the zap server ended before the command did "
				"(`ZAP_SERVER=0 zap ...` runs it without one)\n");
		return 1;
	}
	kind = (uint32_t)reply[0] << 24 | reply[1] << 16 | reply[2] << 8 | reply[3];
	value = (uint32_t)reply[4] << 24 | reply[5] << 16 | reply[6] << 8 | reply[7];
	if (kind == 1) { /* it was killed: so are we, by the same signal */
		signal((int)value, SIG_DFL);
		kill(getpid(), (int)value);
		return 128 + (int)value;
	}
	return (int)value;
}
