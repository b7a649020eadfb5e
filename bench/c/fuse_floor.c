/* The cheapest FUSE file system libfuse3 allows: a root directory answering getattr and
 * listxattr. bench/fuse_view.py measures one request's round trip through it, so the view's
 * per-request cost can be read against what the kernel and this machine charge anyway. */
#define FUSE_USE_VERSION 34
#include <fuse_lowlevel.h>
#include <stdio.h>
#include <string.h>
#include <sys/stat.h>

static void getattr(fuse_req_t req, fuse_ino_t ino, struct fuse_file_info *fi) {
    struct stat st;
    (void)fi;
    memset(&st, 0, sizeof st);
    st.st_ino = ino;
    st.st_mode = S_IFDIR | 0755;
    st.st_nlink = 2;
    fuse_reply_attr(req, &st, 1.0);
}

static void listxattr(fuse_req_t req, fuse_ino_t ino, size_t size) {
    (void)ino;
    if (size == 0)
        fuse_reply_xattr(req, 0);
    else
        fuse_reply_buf(req, NULL, 0);
}

static const struct fuse_lowlevel_ops ops = {.getattr = getattr, .listxattr = listxattr};

int main(int argc, char **argv) {
    if (argc != 2) {
        fprintf(stderr, "usage: %s MOUNTPOINT\n", argv[0]);
        return 2;
    }
    struct fuse_args args = FUSE_ARGS_INIT(1, argv);
    struct fuse_session *se = fuse_session_new(&args, &ops, sizeof ops, NULL);
    if (se == NULL || fuse_session_mount(se, argv[1]) != 0)
        return 1;
    fuse_session_loop(se);
    fuse_session_unmount(se);
    fuse_session_destroy(se);
    return 0;
}
