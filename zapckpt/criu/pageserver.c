/*
 * zap-pages: zap's page server for a lazy restore (zapckpt/criu/pageserver.py starts it).
 *
 * CRIU's lazy-pages daemon (`criu lazy-pages --page-server --ps-socket FD`) asks, over the
 * socket SOCKFD, for the pages of the restored processes: first the pages they fault on, then
 * all the others. This answers each request from the image store's packs: a page is a slice of
 * a zstd frame (64 pages each), found through the index zap wrote in INDEXDIR; frames are
 * decompressed (their checksums checked by zstd) into a cache, and between two requests the
 * next frames of the memory the daemon goes through are decompressed ahead. One thread, no lock.
 *
 *   zap-pages INDEXDIR SOCKFD
 *
 * INDEXDIR (written by pageserver.py, little-endian):
 *   packs        the pack files' paths, one a line (a frame names its pack by line number)
 *   frames       per frame: u32 pack, u32 compressed length, u64 offset in the pack
 *   files        per pages image: its name and page count, one a line ("pages-2.img 1234")
 *   file-N       per page of pages image N: u32 frame, u32 start of the page in the frame
 *   tasks        per process: u64 pagemap id, u32 pages image, u32 runs; then per lazy run:
 *                u64 address, u64 first page in the image, u64 pages
 *   ahead        optional: u32 pages image, u32 page: frames to decompress before anything
 * It keeps there live (u64 requests, u64 faults, as it goes) and writes, on its way out, stats
 * ("requests pages faults busy_us") and faults (per fault: u32 pagemap id, u64 address, the
 * first 65536); what went wrong it says on stderr.
 * Exit status: 0 the daemon said it was done; 1 a page could not be given (a damaged frame, a
 * request for a page the set does not have); 2 bad arguments or index; 3 the daemon went away.
 */
#define _GNU_SOURCE
#include <errno.h>
#include <fcntl.h>
#include <inttypes.h>
#include <limits.h>
#include <poll.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <sys/stat.h>
#include <sys/uio.h>
#include <time.h>
#include <unistd.h>
#include <zstd.h>

#define PAGE 4096u
#define PS_IOV_ADD_F 6u
#define PS_IOV_GET 7u
#define PS_IOV_CLOSE 0x1023u
#define PS_IOV_FORCE_CLOSE 0x1024u
#define PE_PRESENT (1u << 2)
#define CMD_BITS 16
#define MAX_FRAME (1ull << 30)
#define CACHE_BYTES (128ull << 20)
#define AHEAD_PAGES 8192u
#define MAX_IOV 1000
#define MAX_FAULTS 65536

struct psi { uint32_t cmd; uint32_t pad; uint64_t nr_pages, vaddr, dst_id; };
struct frame { uint32_t pack, length; uint64_t offset; };
struct spot { uint32_t frame, start; };
struct run { uint64_t vaddr, first, count; };
struct task { uint64_t id; uint32_t file, nruns; struct run *runs; };
struct pages { char name[256]; uint64_t n; struct spot *spot; };

static const char *dir;
static int sock;
static uint8_t **pack_map; static size_t *pack_len; static char **pack_name; static uint32_t npacks;
static struct frame *frames; static uint64_t nframes;
static struct pages *files; static uint32_t nfiles;
static struct task *tasks; static uint32_t ntasks;
/* the cache: a frame's decompressed bytes, evicted oldest first */
static uint8_t **cbuf; static size_t *clen; static uint64_t cached;
static uint64_t *fifo; static uint64_t fifo_head, fifo_n;
static ZSTD_DCtx *dctx;
static uint64_t n_requests, n_pages, n_faults, busy_ns;
static struct { uint32_t task; uint64_t vaddr; } __attribute__((packed)) *faults;
static uint64_t nfault_rec;
static uint32_t ahead_file = UINT32_MAX; static uint64_t ahead_page, ahead_end;
static volatile uint64_t *live;  /* INDEXDIR/live, mapped: requests and faults so far, read by zap as they go */

static void die(int code, const char *fmt, ...) {
    va_list ap; va_start(ap, fmt); vfprintf(stderr, fmt, ap); va_end(ap); fputc('\n', stderr);
    exit(code);
}

static uint64_t now_ns(void) {
    struct timespec t; clock_gettime(CLOCK_MONOTONIC, &t); return (uint64_t)t.tv_sec * 1000000000ull + t.tv_nsec;
}

static void *slurp(const char *name, size_t *len, int optional) {
    char path[PATH_MAX]; snprintf(path, sizeof path, "%s/%s", dir, name);
    int fd = open(path, O_RDONLY | O_CLOEXEC);
    if (fd < 0) { if (optional && errno == ENOENT) { *len = 0; return NULL; } die(2, "cannot open %s: %s", path, strerror(errno)); }
    struct stat st; if (fstat(fd, &st) < 0) die(2, "cannot stat %s", path);
    uint8_t *buf = malloc(st.st_size + 1); if (!buf) die(2, "out of memory");
    size_t got = 0;
    while (got < (size_t)st.st_size) { ssize_t r = read(fd, buf + got, st.st_size - got); if (r <= 0) die(2, "cannot read %s", path); got += r; }
    buf[got] = 0; close(fd); *len = got; return buf;
}

static void load(void) {
    size_t len;
    char *text = slurp("packs", &len, 0);
    for (char *p = text; *p; p++) if (*p == '\n') npacks++;
    pack_map = calloc(npacks, sizeof *pack_map); pack_len = calloc(npacks, sizeof *pack_len); pack_name = calloc(npacks, sizeof *pack_name);
    char *line = text;
    for (uint32_t i = 0; i < npacks; i++) {
        char *nl = strchr(line, '\n'); *nl = 0;
        int fd = open(line, O_RDONLY | O_CLOEXEC);
        if (fd < 0) die(1, "pack %s is missing (%s)", line, strerror(errno));
        struct stat st; fstat(fd, &st);
        pack_len[i] = st.st_size; pack_name[i] = line;
        pack_map[i] = st.st_size ? mmap(NULL, st.st_size, PROT_READ, MAP_PRIVATE, fd, 0) : NULL;
        if (pack_map[i] == MAP_FAILED) die(1, "cannot map pack %s: %s", line, strerror(errno));
        close(fd); line = nl + 1;
    }
    frames = slurp("frames", &len, 0); nframes = len / sizeof *frames;
    for (uint64_t f = 0; f < nframes; f++)
        if (frames[f].pack >= npacks || frames[f].offset + frames[f].length > pack_len[frames[f].pack])
            die(1, "frame %" PRIu64 " lies outside its pack (truncated?)", f);
    text = slurp("files", &len, 0);
    for (char *p = text; *p; p++) if (*p == '\n') nfiles++;
    files = calloc(nfiles ? nfiles : 1, sizeof *files);
    line = text;
    for (uint32_t i = 0; i < nfiles; i++) {
        char *nl = strchr(line, '\n'); *nl = 0;
        unsigned long long n;
        if (sscanf(line, "%255s %llu", files[i].name, &n) != 2) die(2, "bad files line %u", i);
        char name[32]; snprintf(name, sizeof name, "file-%u", i);
        files[i].spot = slurp(name, &len, 0); files[i].n = n;
        if (len != n * sizeof(struct spot)) die(2, "%s: %zu bytes for %llu pages", name, len, n);
        for (uint64_t k = 0; k < n; k++) if (files[i].spot[k].frame >= nframes) die(2, "%s: page %" PRIu64 " names no frame", name, k);
        line = nl + 1;
    }
    uint8_t *t = slurp("tasks", &len, 0), *end = t + len;
    for (uint8_t *p = t; p + 16 <= end; ntasks++) { uint32_t nr; memcpy(&nr, p + 12, 4); p += 16 + (size_t)nr * sizeof(struct run); }
    tasks = calloc(ntasks ? ntasks : 1, sizeof *tasks);
    for (uint32_t i = 0; i < ntasks; i++) {
        memcpy(&tasks[i].id, t, 8); memcpy(&tasks[i].file, t + 8, 4); memcpy(&tasks[i].nruns, t + 12, 4);
        tasks[i].runs = (struct run *)(t + 16); t += 16 + (size_t)tasks[i].nruns * sizeof(struct run);
        if (t > end || tasks[i].file >= nfiles) die(2, "bad tasks index");
        for (uint32_t r = 0; r < tasks[i].nruns; r++)
            if (tasks[i].runs[r].first + tasks[i].runs[r].count > files[tasks[i].file].n) die(2, "bad run of task %" PRIu64, tasks[i].id);
    }
    cbuf = calloc(nframes ? nframes : 1, sizeof *cbuf); clen = calloc(nframes ? nframes : 1, sizeof *clen);
    fifo = calloc(nframes ? nframes : 1, sizeof *fifo);
    faults = calloc(MAX_FAULTS, sizeof *faults);
    dctx = ZSTD_createDCtx();
}

static void evict(void) {
    while (cached > CACHE_BYTES && fifo_n > 1) {
        uint64_t f = fifo[fifo_head]; fifo_head = (fifo_head + 1) % nframes; fifo_n--;
        if (cbuf[f]) { cached -= clen[f]; free(cbuf[f]); cbuf[f] = NULL; }
    }
}

static uint8_t *frame_of(uint64_t f, size_t *len) {
    if (cbuf[f]) { *len = clen[f]; return cbuf[f]; }
    const struct frame *fr = &frames[f];
    const uint8_t *src = pack_map[fr->pack] + fr->offset;
    unsigned long long raw = ZSTD_getFrameContentSize(src, fr->length);
    if (raw == ZSTD_CONTENTSIZE_ERROR || raw == ZSTD_CONTENTSIZE_UNKNOWN || raw > MAX_FRAME)
        die(1, "the frame at %" PRIu64 " in pack %s is damaged (no valid zstd frame header)", fr->offset, pack_name[fr->pack]);
    uint8_t *buf = malloc(raw ? raw : 1); if (!buf) die(1, "out of memory");
    size_t got = ZSTD_decompressDCtx(dctx, buf, raw, src, fr->length);
    if (ZSTD_isError(got) || got != raw)
        die(1, "the frame at %" PRIu64 " in pack %s is damaged (%s)", fr->offset, pack_name[fr->pack],
            ZSTD_isError(got) ? ZSTD_getErrorName(got) : "short");
    cbuf[f] = buf; clen[f] = raw; cached += raw;
    fifo[(fifo_head + fifo_n) % nframes] = f; fifo_n++;
    *len = raw; return buf;
}

static void send_all(struct iovec *iov, int n) {
    while (n > 0) {
        int batch = n > MAX_IOV ? MAX_IOV : n;
        ssize_t w = writev(sock, iov, batch);
        if (w < 0) { if (errno == EINTR) continue; die(3, "the lazy-pages daemon went away (%s)", strerror(errno)); }
        while (batch > 0 && (size_t)w >= iov->iov_len) { w -= iov->iov_len; iov++; n--; batch--; }
        if (batch > 0 && w) { iov->iov_base = (uint8_t *)iov->iov_base + w; iov->iov_len -= w; }
    }
}

static struct iovec iovs[AHEAD_PAGES + 2];

static void answer(struct psi *h) {
    uint32_t op = h->cmd & ((1u << CMD_BITS) - 1);
    if (op != PS_IOV_GET) die(1, "unexpected page-server command %#x from the lazy-pages daemon", h->cmd);
    struct task *t = NULL;
    for (uint32_t i = 0; i < ntasks; i++) if (tasks[i].id == h->dst_id) { t = &tasks[i]; break; }
    if (!t) die(1, "pages asked for process %" PRIu64 ", which the image set does not have", h->dst_id);
    uint32_t lo = 0, hi = t->nruns;
    while (lo < hi) { uint32_t mid = (lo + hi) / 2; if (t->runs[mid].vaddr <= h->vaddr) lo = mid + 1; else hi = mid; }
    if (lo == 0) die(1, "no lazy page of process %" PRIu64 " at %#" PRIx64, h->dst_id, h->vaddr);
    struct run *r = &t->runs[lo - 1];
    uint64_t off = h->vaddr - r->vaddr;
    if (off % PAGE || off / PAGE >= r->count) die(1, "no lazy page of process %" PRIu64 " at %#" PRIx64, h->dst_id, h->vaddr);
    uint64_t n = h->nr_pages, left = r->count - off / PAGE;
    if (n > left) n = left;
    if (n > AHEAD_PAGES) n = AHEAD_PAGES;
    uint64_t page = r->first + off / PAGE;
    struct pages *pf = &files[t->file];
    struct psi reply = { PS_IOV_ADD_F | (PE_PRESENT << CMD_BITS), 0, n, h->vaddr, h->dst_id };
    int niov = 0;
    iovs[niov++] = (struct iovec){ &reply, sizeof reply };
    for (uint64_t k = page; k < page + n; k++) {
        size_t len; uint8_t *buf = frame_of(pf->spot[k].frame, &len);
        uint32_t st = pf->spot[k].start;
        if ((size_t)st + PAGE > len) die(1, "%s: page %" PRIu64 " lies outside its frame", pf->name, k);
        struct iovec *last = &iovs[niov - 1];
        if (niov > 1 && (uint8_t *)last->iov_base + last->iov_len == buf + st) last->iov_len += PAGE;
        else iovs[niov++] = (struct iovec){ buf + st, PAGE };
    }
    send_all(iovs, niov);
    n_requests++; n_pages += n;
    if (live) live[0] = n_requests;
    if (h->nr_pages == 1) {
        n_faults++;
        if (live) live[1] = n_faults;
        if (nfault_rec < MAX_FAULTS) { faults[nfault_rec].task = (uint32_t)h->dst_id; faults[nfault_rec].vaddr = h->vaddr; nfault_rec++; }
    }
    /* decompress on past what the daemon will ask for next (it goes through memory in order) */
    if (ahead_file != t->file || page + n > ahead_page || page + n + AHEAD_PAGES < ahead_page) {
        ahead_file = t->file; ahead_page = page + n;
    }
    ahead_end = page + n + AHEAD_PAGES;
    evict();
}

/* one frame of the read-ahead, between two requests; 0 when there is nothing left to do */
static int read_ahead(void) {
    if (ahead_file >= nfiles) return 0;
    struct pages *pf = &files[ahead_file];
    while (ahead_page < ahead_end && ahead_page < pf->n) {
        uint32_t f = pf->spot[ahead_page++].frame;
        if (!cbuf[f]) { size_t len; frame_of(f, &len); evict(); return 1; }
    }
    return 0;
}

static void leave(void) {
    char path[PATH_MAX];
    snprintf(path, sizeof path, "%s/stats", dir);
    FILE *f = fopen(path, "w");
    if (f) { fprintf(f, "%" PRIu64 " %" PRIu64 " %" PRIu64 " %" PRIu64 "\n", n_requests, n_pages, n_faults, busy_ns / 1000); fclose(f); }
    snprintf(path, sizeof path, "%s/faults", dir);
    f = fopen(path, "w");
    if (f) { fwrite(faults, sizeof *faults, nfault_rec, f); fclose(f); }
}

int main(int argc, char **argv) {
    if (argc != 3) die(2, "usage: zap-pages INDEXDIR SOCKFD");
    dir = argv[1]; sock = atoi(argv[2]);
    load();
    char path[PATH_MAX]; snprintf(path, sizeof path, "%s/live", dir);
    int lfd = open(path, O_RDWR | O_CREAT | O_TRUNC | O_CLOEXEC, 0600);
    if (lfd >= 0 && ftruncate(lfd, 16) == 0) {
        void *m = mmap(NULL, 16, PROT_READ | PROT_WRITE, MAP_SHARED, lfd, 0);
        if (m != MAP_FAILED) live = m;
    }
    if (lfd >= 0) close(lfd);
    size_t len, flen;
    struct { uint32_t file, page; } *ahead = slurp("ahead", &len, 1);
    for (size_t i = 0; ahead && i < len / sizeof *ahead; i++)  /* the pages faulted first last time */
        if (ahead[i].file < nfiles && ahead[i].page < files[ahead[i].file].n) { frame_of(files[ahead[i].file].spot[ahead[i].page].frame, &flen); evict(); }
    for (uint32_t i = 0; i < ntasks; i++)  /* the start of each process's memory, decompressed first */
        if (tasks[i].nruns) { ahead_file = tasks[i].file; ahead_page = tasks[i].runs[0].first; ahead_end = ahead_page + 64 * 16; while (read_ahead()) ; }
    ahead_file = UINT32_MAX;
    struct pollfd p = { sock, POLLIN, 0 };
    for (;;) {
        int ready = poll(&p, 1, 0);
        if (ready == 0 && read_ahead()) continue;
        if (ready == 0) ready = poll(&p, 1, -1);
        if (ready < 0) { if (errno == EINTR) continue; die(3, "poll: %s", strerror(errno)); }
        struct psi h; size_t got = 0;
        while (got < sizeof h) {
            ssize_t r = read(sock, (uint8_t *)&h + got, sizeof h - got);
            if (r == 0) { leave(); die(3, "the lazy-pages daemon went away before it was done"); }
            if (r < 0) { if (errno == EINTR) continue; leave(); die(3, "the lazy-pages daemon went away (%s)", strerror(errno)); }
            got += r;
        }
        uint32_t op = h.cmd & ((1u << CMD_BITS) - 1);
        if (op == PS_IOV_CLOSE || op == PS_IOV_FORCE_CLOSE) {
            int32_t status = 0;
            struct iovec iv = { &status, sizeof status };
            send_all(&iv, 1);
            leave();
            return 0;
        }
        uint64_t t0 = now_ns();
        answer(&h);
        busy_ns += now_ns() - t0;
    }
}
