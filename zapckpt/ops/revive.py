"""Bringing a checkpoint's processes back (restore, branch, adopt, recovery): its image set
prepared for CRIU, CRIU's restore in the pod's namespaces, and, for a lazy restore, the pages
that come after.

Lazy (criu/lazy.py; the default where userfaultfd works, ZAP_LAZY=0 to turn it off): only the
images that are not anonymous memory are written out (a few MiB whatever the pod holds); CRIU
restores the processes without that memory and they run at once; CRIU's lazy-pages daemon gets
each page from zap's page server (criu/pageserver.py), which reads it from the store's packs
(store/pages.py), those a process faults on first, then all the others. The restore is done
when every page is in (Running.wait): until then the pod is `restoring`, the operation holds
the pod's lock, and a failure (a damaged frame, the daemon or zap killed) kills the pod rather
than leave it running on memory that never came. Eager: the whole set reassembled in tmpfs
first, as before."""

from __future__ import annotations

import os
import signal
import threading
import time
import zlib
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Iterator

from sqlalchemy.orm import Session

from catalog import Checkpoint, Pod
from zapckpt import settings
from zapckpt.common.errors import ZapError
from zapckpt.common.progress import step
from zapckpt.context import Context
from zapckpt.criu import lazy, locks
from zapckpt.criu import runner as criu
from zapckpt.criu.images import ImageFormatError, bound_unix_sockets
from zapckpt.criu.pageserver import PageMaps, PageServer
from zapckpt.net import netns, podnet
from zapckpt.pod import console
from zapckpt.pod.mounts import pod_root, restore_argv
from zapckpt.store import StoreError
from zapckpt.store import imagesets as image_sets
from zapckpt.system import cgroups, faults, procinfo, staging


@dataclass
class Prepared:
    """An image set ready for CRIU: images (None for a files-only checkpoint); for a lazy
    restore also where the other pages come from."""

    images: Path | None
    pages: object | None = None  # store.pages.PageImages
    maps: PageMaps | None = None
    coming: "LazyPages | None" = None  # the page server and CRIU's daemon, started early

    @property
    def lazy(self) -> bool:
        return self.coming is not None


@contextmanager
def prepared(ctx: Context, s: Session, ck: Checkpoint, pod: str, allow_lazy: bool = True) -> Iterator[Prepared]:
    """ck's image set in a staging directory for CRIU, removed afterwards; damaged or missing
    images fail here, before anything has been changed (lazily: every chunk indexed, every frame
    inside a pack that is here; a frame's checksum is checked as its pages are served). For a
    lazy restore, the page server and CRIU's daemon start here too (the daemon takes ~30 ms to
    start: meanwhile the caller saves the state it replaces and swaps the volumes)."""
    if not ck.has_images:
        yield Prepared(None)
        return
    with staging.stage(ctx.state, f"restore-{ck.id}") as stage:
        images = stage / "images"
        on_demand = allow_lazy and lazy.mode(ctx.state.root / "cache")[0]
        pages = image_sets.page_images(ctx, s, ck) if on_demand else None
        if pages is None:
            step(f"assembling the images of {ck.ref}")
            image_sets.materialize(ctx, s, ck, images)
            yield Prepared(images)
            return
        prep = Prepared(images)
        try:
            step(f"preparing the images of {ck.ref} (its memory comes on demand)")
            try:
                pages.write_whole(images)
                maps = PageMaps(images)
                # Eager where zap must write into the restored processes before they run (the
                # POSIX locks CRIU drops, taken again through ptrace: criu/locks.py): their pages
                # must be there, and the kernel gives no access to a missing one from outside.
                on_demand = (maps.lazy_pages > 0 and {t.pages for t in maps.tasks.values()} <= pages.files.keys()
                             and maps.premap_refused(images) is None and not locks.posix_locks(images))  # fmt: skip
                for name, pf in pages.files.items():
                    pages.write_pages(images, name, maps.eager.get(name, []) if on_demand else [(0, pf.pages)])
            except (ImageFormatError, StoreError) as e:
                raise image_sets.DamagedImages(f"checkpoint {ck.ref} cannot be restored: {e}") from None
            if on_demand:
                prep = Prepared(images, pages, maps)
                prep.coming = LazyPages.start(ctx, prep, pod, ck.working_set)
            yield prep
        finally:
            if prep.coming is not None and not prep.coming.finished:
                prep.coming.abandon()  # never restored, or failed: the keeper ends the daemon
            pages.close()


@dataclass
class Running:
    """A restored tree: its init, and for a lazy restore what still brings its pages in."""

    pid: int
    start: int
    pages: "LazyPages | None" = None

    def wait(self) -> None:
        if self.pages is not None:
            self.pages.wait()


def restore_processes(ctx: Context, prep: Prepared, pod: Pod, limit: float | None = None) -> Running:
    """Let CRIU bring the tree back in the pod's own network namespace, with the pod's mounts
    (its volume at the pod's path, private /dev/shm and /dev/pts, declared volumes), and the
    console pipe its processes held replaced by a new one to the pod's console log. It runs
    when this returns; a lazy one's pages still come in (Running.wait)."""
    images = prep.images
    os.makedirs(pod.mount_path, exist_ok=True)
    mounts = {"volume": pod.volume, "mount_path": pod.mount_path, "system": bool(pod.rootfs),
              "volumes": pod.volumes or [], "private_tmp": pod.private_tmp, "state_root": str(ctx.state.root),
              "host_readonly": not pod.rootfs and not pod.host_writable,
              "socket_dirs": [],
              "proc": os.path.join(pod.mount_path if pod.rootfs else pod_root(pod.mount_path), "proc")}  # fmt: skip
    if pod.rootfs:
        # CRIU binds a system pod's unix sockets at the names the daemons gave, from the host's
        # root: their directories are redirected into the pod's root for the restore.
        inside = pod.mount_path.rstrip("/") + "/"
        mounts["socket_dirs"] = sorted({os.path.dirname(n) for n in bound_unix_sockets(images)
                                        if not n.startswith(inside)})  # fmt: skip
    step("restoring the processes")
    if pod.net != "host":  # a branch's namespace is new, a restored one may be (after a reboot)
        netns.apply_settings(podnet.netns_path(ctx.net, pod), netns.load(images))
    held = console.held_pipe(images)
    inherit, pipe = {}, None
    if held is not None:
        w, pipe = console.start_logger(ctx.state.console_log(pod.name), settings.log_max(ctx))
        inherit = {w: held}
    # CRIU drops the POSIX locks of files the processes map (criu/locks.py): such a tree stays
    # stopped until they are taken again; a lazy one stays stopped until the keeper holds its
    # userfaultfds.
    relock = bool(locks.posix_locks(images))
    pages = prep.coming
    pid = 0
    try:
        if pages is not None:
            pages.wait_ready()
        try:
            join = cgroups.prepare(ctx.state.root, pod.name, cgroups.of_pod(pod))
            pid = criu.restore(images, images.parent / "pid", restore_argv(mounts), mounts["proc"],
                               podnet.netns_path(ctx.net, pod), ctx.log_path(pod.name, "restore"), limit, inherit=inherit,
                               join_cgroups=join, leave_stopped=relock or pages is not None,
                               extra=("--lazy-pages",) if pages is not None else (),
                               watch=pages.watchdog if pages is not None else None)  # fmt: skip
        except criu.CriuError:
            if pages is not None and pages.server.error and not pages.server.lost:  # what stopped CRIU: say that
                raise ZapError(f"its memory could not be served: {pages.server.error}") from None
            raise
        finally:
            for w in inherit:
                os.close(w)  # the restored processes hold it now (or CRIU failed: the logger ends)
            if pages is not None:
                pages.watchdog(None)
        if pages is not None:
            pages.restored(pid)
        if relock:
            faults.point("restore:stopped")  # recovery undoes a restore whose tasks are still stopped
            locks.give_back(images, pid)
        if relock or pages is not None:
            faults.point("restore:lazy-stopped" if pages is not None else "restore:relocked")
            locks.resume(images, pid)
    except BaseException:
        if pid:
            procinfo.kill_pod_tree(pid)
        if pages is not None:
            pages.abandon()
        raise
    pod.console_pipe = pipe
    pod.exit_code = pod.exited_at = None  # of the run it replaces
    return Running(pid, procinfo.starttime(pid) or 0, pages)


class LazyPages:
    """The pages of a lazily restored tree on their way: zap's page server (zap-pages, a
    process), the keeper and CRIU's daemon (its child)."""

    def __init__(self, prep: Prepared, keeper: lazy.Keeper, server: PageServer, log: Path):
        self.prep, self.keeper, self.server, self.log = prep, keeper, server, log
        self.init_fd = -1
        self.started = time.monotonic()
        self.took: float | None = None
        self.finished = False
        self._watch: threading.Event | None = None

    @classmethod
    def start(cls, ctx: Context, prep: Prepared, pod: str, working_set: bytes | None = None) -> "LazyPages":
        server = PageServer(prep.images.parent / "pages-index", prep.maps, prep.pages, _pairs(working_set))
        ours, theirs = lazy.socket_pair()
        try:
            keeper = lazy.start_keeper(prep.images, theirs)
            server.start(ours)
        finally:
            ours.close()  # the server's now: if it dies, the daemon sees the connection end
        return cls(prep, keeper, server, ctx.log_path(pod, "lazy-pages"))

    def watchdog(self, criu_pid: int | None) -> None:
        """While CRIU restores (criu_pid; None: it is over): if the page server dies, a page CRIU
        waits for will never come, so CRIU's group is killed rather than left waiting."""
        if criu_pid is None:
            if self._watch is not None:
                self._watch.set()
            return
        self._watch = stop = threading.Event()

        def run() -> None:
            while not stop.wait(0.05):
                if self.server.gone:
                    try:
                        os.killpg(criu_pid, signal.SIGKILL)
                    except (ProcessLookupError, PermissionError):
                        pass
                    return

        threading.Thread(target=run, name="zap-restore-watchdog", daemon=True).start()

    def wait_ready(self) -> None:
        """Until the daemon listens for the restore."""
        self.keeper.wait_ready()
        faults.point("restore:lazy-daemon")

    def restored(self, init_pid: int) -> None:
        """CRIU is done: the keeper holds the tree's userfaultfds before it may run."""
        self.init_fd = os.pidfd_open(init_pid)
        if self.server.error:
            raise ZapError(f"its memory could not be served: {self.server.error}")
        # None held: the daemon already brought every page in (a small tree) and let them go.
        if self.keeper.restored(init_pid) < 0:
            raise ZapError("the lazy restore's keeper could not take hold of the tree's userfaultfds")

    def _kill(self) -> None:
        """No process may run on after a page could not come (a damaged frame, say)."""
        if self.init_fd >= 0:
            try:
                signal.pidfd_send_signal(self.init_fd, signal.SIGKILL)
            except ProcessLookupError:
                pass

    def settle(self, quiet: float = 0.005, most: float = 0.05) -> None:
        """Give the processes their first moments before the restore is reported (until none
        faulted for `quiet` seconds, at most `most`): one that dies of what it finds restored
        has then died, and the report says so."""
        deadline = time.monotonic() + most
        while time.monotonic() < deadline:
            n = self.server.faults
            time.sleep(quiet)
            if self.server.faults == n:
                return

    def wait(self, timeout: float | None = None) -> None:
        """Until every page is in; raises ZapError (the pod killed) if one cannot come."""
        deadline = time.monotonic() + (timeout or criu.timeout())
        try:
            while True:
                kind, value = self.keeper.poll(0.05)
                err = self.server.error
                if err and not self.server.lost:  # a page it could not give (a damaged frame)
                    raise ZapError(f"a page of its memory could not be brought in: {err}")
                if err and kind != b"D":  # the daemon died: its exit status says more
                    kind, value = self.keeper.poll(2.0)
                    if kind != b"D":
                        raise ZapError(f"a page of its memory could not be brought in: {err}")
                if kind == b"D":
                    if value != 0:
                        raise ZapError(f"CRIU's lazy-pages daemon failed (exit status {value}; "
                                       f"log: {self._keep_log()})")  # fmt: skip
                    break
                if kind == b"":
                    raise ZapError("the lazy restore's keeper died")
                if time.monotonic() > deadline:
                    raise ZapError(f"its memory did not all come in within {timeout or criu.timeout():g}s")
            faults.point("restore:pages-in")
            self.keeper.done()
            self.finished = True
            self.took = time.monotonic() - self.started
        except BaseException:
            self._kill()
            self.abandon()
            raise
        finally:
            self.close()

    @property
    def working_set(self) -> bytes | None:
        ws = self.server.working_set
        return zlib.compress(b"".join(p.to_bytes(4, "little") + a.to_bytes(8, "little") for p, a in ws)) if ws else None

    def _keep_log(self) -> Path:
        try:
            self.log.parent.mkdir(parents=True, exist_ok=True)
            self.log.write_bytes((self.prep.images / "lazy-pages.log").read_bytes())
        except OSError:
            pass
        return self.log

    def abandon(self) -> None:
        """Stop everything (the keeper kills the daemon, and the pod if it was told of it)."""
        self.finished = True
        self.server.kill()
        for fd in (self.keeper.life, self.keeper.ctl):
            if fd >= 0:
                try:
                    os.close(fd)
                except OSError:
                    pass
        self.keeper.life = self.keeper.ctl = -1
        self.close()

    def close(self) -> None:
        self.server.close()
        try:
            os.waitpid(self.keeper.pid, os.WNOHANG)
        except ChildProcessError:
            pass
        for fd in (self.init_fd, self.keeper.status):
            if fd >= 0:
                try:
                    os.close(fd)
                except OSError:
                    pass
        self.init_fd = self.keeper.status = -1


def _pairs(working_set: bytes | None) -> list[tuple[int, int]]:
    """A checkpoint's recorded working set: (pagemap id, address) of each page faulted first."""
    if not working_set:
        return []
    try:
        raw = zlib.decompress(working_set)
    except zlib.error:
        return []
    return [(int.from_bytes(raw[i : i + 4], "little"), int.from_bytes(raw[i + 4 : i + 12], "little"))
            for i in range(0, len(raw) - 11, 12)]  # fmt: skip
