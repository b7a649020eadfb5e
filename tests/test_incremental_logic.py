"""Unit tests of criu/incremental.flatten on image sets built here (the real incremental dumps run
in the VM guest, tests/vm/test_incremental.py: this kernel has no soft-dirty tracking)."""

import os
import struct

import pytest

from helpers import varint
from zapckpt.criu import images as criu_images
from zapckpt.criu.images import PAGE_SIZE, PE_PARENT, PE_PRESENT, ImageFormatError, read_pagemap
from zapckpt.criu.incremental import flatten



def _pagemap(path, pages_id, ents, wide=False):
    """ents: (vaddr, pages, flags); wide: CRIU >= 4.2's layout (count in field 5, 0 in 2)."""
    head = b"\x08" + varint(pages_id)
    body = struct.pack("<II", criu_images.IMG_COMMON_MAGIC, criu_images.PAGEMAP_MAGIC)
    body += struct.pack("<I", len(head)) + head
    for vaddr, n, flags in ents:
        e = b"\x08" + varint(vaddr) + b"\x10" + varint(0 if wide else n) + b"\x20" + varint(flags)
        if wide:
            e += b"\x28" + varint(n)
        body += struct.pack("<I", len(e)) + e
    path.write_bytes(body)


def _page(tag: str, i: int) -> bytes:
    return (f"{tag}{i:06d}".encode() * PAGE_SIZE)[:PAGE_SIZE]


A = 0x7F0000000000  # a region of 8 pages
B = 0x7F0000100000  # and one of 3


@pytest.mark.parametrize("wide", [False, True])
def test_flatten_copies_the_parents_pages_in_and_marks_every_page_present(tmp_path, wide):
    pre, dump = tmp_path / "pre", tmp_path / "images"
    pre.mkdir()
    dump.mkdir()
    # The pre-dump holds every page, in two entries for region A (split at page 5).
    _pagemap(pre / "pagemap-1.img", 1, [(A, 5, PE_PRESENT), (A + 5 * PAGE_SIZE, 3, PE_PRESENT), (B, 3, PE_PRESENT)], wide)
    (pre / "pages-1.img").write_bytes(b"".join(_page("old", i) for i in range(11)))
    # The dump: pages 2 and 3 of A were written since; the range 4..7 spans both parent entries;
    # region B is untouched.
    _pagemap(dump / "pagemap-1.img", 7, [(A, 2, PE_PARENT), (A + 2 * PAGE_SIZE, 2, PE_PRESENT),
                                         (A + 4 * PAGE_SIZE, 4, PE_PARENT), (B, 3, PE_PARENT)], wide)  # fmt: skip
    (dump / "pages-7.img").write_bytes(_page("new", 2) + _page("new", 3))
    os.symlink("../pre", dump / "parent")
    # A pagemap with nothing in its parent (another process's) is left as it is.
    _pagemap(dump / "pagemap-2.img", 8, [(A, 1, PE_PRESENT)], wide)
    (dump / "pages-8.img").write_bytes(_page("other", 0))
    untouched = (dump / "pagemap-2.img").read_bytes()

    assert flatten(dump, pre) == 9

    want = [_page("old", 0), _page("old", 1), _page("new", 2), _page("new", 3),
            *(_page("old", i) for i in range(4, 11))]  # fmt: skip
    assert (dump / "pages-7.img").read_bytes() == b"".join(want)
    pm = read_pagemap(dump / "pagemap-1.img")
    assert pm.pages_id == 7
    assert [(e.vaddr, e.nr_pages, e.flags) for e in pm.entries] == [
        (A, 2, PE_PRESENT), (A + 2 * PAGE_SIZE, 2, PE_PRESENT), (A + 4 * PAGE_SIZE, 4, PE_PRESENT), (B, 3, PE_PRESENT)]
    assert sum(n for _o, n, _v in pm.page_runs()) == 11 * PAGE_SIZE
    assert (dump / "pagemap-2.img").read_bytes() == untouched
    assert not (dump / "parent").exists() and not list(dump.glob("*.flat"))
    assert all((dump / f).stat().st_mode & 0o077 == 0 for f in ("pages-7.img", "pagemap-1.img"))


def test_a_page_in_neither_set_is_an_error_and_nothing_is_replaced(tmp_path):
    pre, dump = tmp_path / "pre", tmp_path / "images"
    pre.mkdir()
    dump.mkdir()
    _pagemap(pre / "pagemap-1.img", 1, [(A, 2, PE_PRESENT)])
    (pre / "pages-1.img").write_bytes(_page("old", 0) + _page("old", 1))
    _pagemap(dump / "pagemap-1.img", 2, [(A, 3, PE_PARENT)])  # page 2 is in no set
    (dump / "pages-2.img").write_bytes(b"")
    before = (dump / "pagemap-1.img").read_bytes()
    with pytest.raises(ImageFormatError, match="neither the dump nor its parent"):
        flatten(dump, pre)
    assert (dump / "pagemap-1.img").read_bytes() == before
    assert (dump / "pages-2.img").read_bytes() == b"" and not list(dump.glob("*.flat"))


def test_pages_in_a_parent_that_lacks_the_pagemap_is_an_error(tmp_path):
    pre, dump = tmp_path / "pre", tmp_path / "images"
    pre.mkdir()
    dump.mkdir()
    _pagemap(dump / "pagemap-3.img", 2, [(A, 1, PE_PARENT)])
    with pytest.raises(ImageFormatError, match="the parent has no pagemap-3.img"):
        flatten(dump, pre)


def test_dirty_tracking_answer_is_kept_per_boot_and_binary(tmp_path, monkeypatch):
    """`criu check --feature mem_dirty_track` runs once per CRIU binary and boot, not per `zap
    checkpoint` (the answer is kept in the state directory's cache)."""
    from zapckpt.criu import incremental

    calls = tmp_path / "calls"
    fake = tmp_path / "criu"
    fake.write_text(f"#!/bin/sh\necho run >> {calls}\necho 'Dirty tracking is OFF'\n")
    fake.chmod(0o755)
    monkeypatch.delenv("ZAP_PREDUMP", raising=False)
    cache = tmp_path / "cache"
    for _ in range(3):
        incremental.dirty_tracking.cache_clear()  # a new zap process each time
        assert incremental.wanted(str(fake), cache) is False
    assert calls.read_text().count("run") == 1
    fake.write_text(fake.read_text() + "# a new build\n")  # another binary: asked again
    incremental.dirty_tracking.cache_clear()
    assert incremental.wanted(str(fake), cache) is False and calls.read_text().count("run") == 2
    monkeypatch.setenv("ZAP_PREDUMP", "off")
    assert incremental.wanted(str(fake), cache) is False and calls.read_text().count("run") == 2
