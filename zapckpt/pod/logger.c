/*
 * zap-console LOG FD MAX: a pod's console logger (see pod/console.py, which starts it and reads
 * what it writes). It drains the pipe FD (the pod's stdout and stderr) into LOG, one record per
 * line: "<UTC time, ISO 8601 with microseconds> <F|P> <text>\n", P marking a partial line (not
 * ended within half a second, or longer than 16 KiB) continued by the next record. It ends when
 * every writer has closed the pipe, and not before: SIGTERM, SIGINT, SIGHUP and SIGPIPE are
 * ignored (a pod whose logger is gone gets EPIPE, or dies of SIGPIPE, at its next line). Once LOG
 * is MAX bytes or more (0: never) it is renamed LOG.1 and a new LOG begins; two loggers of one
 * pod (the old one draining while a restore's new one starts) rotate under a lock on the file.
 *
 * C, not Python: it runs for every running pod, and costs well under a MiB where a Python
 * process costs 12 (bench/pod_memory.py).
 */
#define _GNU_SOURCE
#include <errno.h>
#include <fcntl.h>
#include <poll.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/file.h>
#include <sys/stat.h>
#include <time.h>
#include <unistd.h>

#define PARTIAL_AFTER_MS 500
#define MAX_RECORD 16384
#define CHUNK 65536

static const char *log_path;
static char rotated_path[4096];
static long long max_bytes;
static int out = -1;

static char *batch;
static size_t batch_len, batch_cap;

static char pending[MAX_RECORD + CHUNK];
static size_t pending_len;

static void die(const char *what)
{
	fprintf(stderr, "zap-console: %s: %s\n", what, strerror(errno));
	exit(1);
}

static int open_log(void)
{
	/* The state directory is root's (0700); the log is too, and never reached through a link. */
	int fd = open(log_path, O_WRONLY | O_APPEND | O_CREAT | O_NOFOLLOW | O_CLOEXEC, 0600);
	if (fd < 0)
		die(log_path);
	return fd;
}

static void reserve(size_t more)
{
	if (batch_len + more <= batch_cap)
		return;
	while (batch_len + more > batch_cap)
		batch_cap = batch_cap ? batch_cap * 2 : CHUNK * 2;
	batch = realloc(batch, batch_cap);
	if (!batch)
		die("memory");
}

static void record(const char *text, size_t len, int partial)
{
	struct timespec ts;
	struct tm tm;
	char stamp[64];
	int n;

	clock_gettime(CLOCK_REALTIME, &ts);
	gmtime_r(&ts.tv_sec, &tm);
	n = (int)strftime(stamp, sizeof(stamp), "%Y-%m-%dT%H:%M:%S", &tm);
	n += snprintf(stamp + n, sizeof(stamp) - n, ".%06ldZ %c ", ts.tv_nsec / 1000, partial ? 'P' : 'F');
	reserve(n + len + 1);
	memcpy(batch + batch_len, stamp, n);
	memcpy(batch + batch_len + n, text, len);
	batch[batch_len + n + len] = '\n';
	batch_len += n + len + 1;
}

static void flush_batch(void)
{
	size_t done = 0;
	while (done < batch_len) {
		ssize_t w = write(out, batch + done, batch_len - done);
		if (w < 0) {
			if (errno == EINTR)
				continue;
			die("write");
		}
		done += w;
	}
	batch_len = 0;
}

static void rotate(void)
{
	struct stat st, now;

	if (!max_bytes || fstat(out, &st) != 0 || st.st_size < max_bytes)
		return;
	flock(out, LOCK_EX); /* the other logger of the pod, if any, waits here */
	if (lstat(log_path, &now) == 0 && now.st_ino == st.st_ino)
		rename(log_path, rotated_path); /* nobody rotated it before us */
	flock(out, LOCK_UN);
	close(out);
	out = open_log();
}

static long long now_ms(void)
{
	struct timespec ts;
	clock_gettime(CLOCK_MONOTONIC, &ts);
	return ts.tv_sec * 1000LL + ts.tv_nsec / 1000000;
}

int main(int argc, char **argv)
{
	static char chunk[CHUNK];
	long long since = 0;
	int fd;

	if (argc < 3) {
		fprintf(stderr, "usage: zap-console LOG FD [MAX]\n");
		return 2;
	}
	log_path = argv[1];
	fd = atoi(argv[2]);
	max_bytes = argc > 3 ? atoll(argv[3]) : 0;
	snprintf(rotated_path, sizeof(rotated_path), "%s.1", log_path);
	signal(SIGINT, SIG_IGN);
	signal(SIGHUP, SIG_IGN);
	signal(SIGPIPE, SIG_IGN);
	signal(SIGTERM, SIG_IGN);
	out = open_log();

	for (;;) {
		struct pollfd p = { .fd = fd, .events = POLLIN };
		int wait = -1, r;
		ssize_t n;
		size_t start, i;
		int had = pending_len > 0;

		if (pending_len) {
			long long left = since + PARTIAL_AFTER_MS - now_ms();
			wait = left > 0 ? (int)left : 0;
		}
		r = poll(&p, 1, wait);
		if (r < 0) {
			if (errno == EINTR)
				continue;
			die("poll");
		}
		if (r == 0) { /* a line left open: shown now, continued later */
			record(pending, pending_len, 1);
			pending_len = 0;
			flush_batch();
			continue;
		}
		n = read(fd, chunk, sizeof(chunk));
		if (n < 0) {
			if (errno == EINTR || errno == EAGAIN)
				continue;
			die("read");
		}
		if (n == 0)
			break;
		start = 0;
		int done_any = 0;
		for (i = 0; i < (size_t)n; i++) {
			if (chunk[i] != '\n')
				continue;
			if (pending_len) {
				memcpy(pending + pending_len, chunk + start, i - start);
				record(pending, pending_len + (i - start), 0);
				pending_len = 0;
			} else {
				record(chunk + start, i - start, 0);
			}
			start = i + 1;
			done_any = 1;
		}
		if (start < (size_t)n) {
			memcpy(pending + pending_len, chunk + start, n - start);
			pending_len += n - start;
			if (done_any || !had)
				since = now_ms(); /* a new unfinished line */
		}
		while (pending_len > MAX_RECORD) {
			record(pending, MAX_RECORD, 1);
			memmove(pending, pending + MAX_RECORD, pending_len - MAX_RECORD);
			pending_len -= MAX_RECORD;
		}
		if (batch_len) {
			flush_batch();
			rotate();
		}
	}
	if (pending_len)
		record(pending, pending_len, 0);
	flush_batch();
	close(out);
	return 0;
}
