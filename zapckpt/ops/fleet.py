"""Making a state directory a host of a fleet (`zap init --catalog URL --host NAME --store
s3://...`), and `zap host ls`. The catalog and the store are the operator's to create (a
PostgreSQL database, a bucket); zap makes its tables and objects in them, and says in one line
what is missing."""

from __future__ import annotations

import json
import uuid

from catalog import FLEET, Catalog, hosts, queries
from catalog.chunks import ChunkIndex
from catalog.errors import explain, is_catalog_error
from catalog.fastread import iso
from catalog.urls import parse
from zapckpt.common import proc
from zapckpt.common.errors import UsageError, ZapError
from zapckpt.common.progress import step
from zapckpt.context import Context
from zapckpt.names import check_host_name
from zapckpt.state import StateDir
from zapckpt.store.objects import ObjectStore, pack_key, parse_url


def join(state: StateDir, catalog: str | None, host: str | None, address: str | None) -> None:
    """Before the state directory is opened: the catalog it uses from now on (its tables made
    there), and the name it goes by. A state directory keeps the catalog it has."""
    cfg = state.config()
    changed = dict(cfg)
    if catalog is not None:
        url = parse(catalog)
        have = cfg.get("catalog")
        if have is not None and have != catalog:
            raise UsageError(f"this state directory's catalog is {parse(have).redacted()}: `zap deinit --purge` first "
                             f"to use another")  # fmt: skip
        if have is None and not url.embedded and state.catalog_db.exists():
            raise UsageError(f"this state directory keeps its catalog in {state.catalog_db}: a shared catalog is for a "
                             f"new state directory (`zap export` and `zap import` move pods into it)")  # fmt: skip
        if url.embedded:
            if url.path != state.catalog_db:
                raise UsageError(f"a SQLite catalog is the state directory's own ({state.catalog_db}); share a "
                                 f"catalog through PostgreSQL (postgresql://USER@HOST/DB)")  # fmt: skip
        else:
            step(f"opening the catalog at {url.redacted()}")
            cat = Catalog(url)
            try:
                cat.migrate()  # the tables, made (or brought up to date) once for every host
            except Exception as e:  # noqa: BLE001 - the database's words, explained for this URL
                if not is_catalog_error(e):
                    raise
                raise ZapError(explain(e, url.redacted(), embedded=False)) from None
            finally:
                cat.dispose()
            changed["catalog"] = catalog
    if host is not None:
        changed["host"] = check_host_name(host)
    if address is not None:
        changed["address"] = address
    if changed != cfg:
        state.write_config(changed)


def configure_store(ctx: Context, store: str | None, endpoint: str | None, cache_max: int | None) -> str | None:
    """The fleet's image store (kept in the catalog for every host), this host's cache size;
    returns the store's URL (None: this host's own directory). A host that had a local store
    uploads its packs first, so its checkpoints stay whole."""
    with ctx.catalog.session() as s:
        fleet = hosts.fleet_id(s, uuid.uuid4().hex)
        have = queries.get_setting(s, FLEET, "store.url")
        have_endpoint = queries.get_setting(s, FLEET, "store.endpoint")
    if store is None and endpoint is not None and have is None:
        raise UsageError("--s3-endpoint goes with --store s3://BUCKET/PREFIX")
    if store is not None:
        url = parse_url(store, endpoint if endpoint is not None else have_endpoint if have == store else None)
        if have is not None and have != url.text:
            raise UsageError(f"this fleet's image store is {have}: it cannot be changed (hosts and checkpoints "
                             f"refer to it)")  # fmt: skip
        if have is not None and endpoint is not None and have_endpoint not in (None, endpoint):
            raise UsageError(f"this fleet's image store answers at {have_endpoint}: it cannot be changed")
        step(f"checking the image store {url.text}")
        remote = ObjectStore(url)
        remote.check(fleet, create=True)
        if have is None:
            _upload_local_packs(ctx, remote)
            with ctx.catalog.session() as s:
                queries.set_setting(s, FLEET, "store.url", url.text)
                if url.endpoint:
                    queries.set_setting(s, FLEET, "store.endpoint", url.endpoint)
        ctx.__dict__.pop("store", None)
        have = url.text
    if cache_max is not None:
        with ctx.catalog.session() as s:
            queries.set_setting(s, ctx.host_id, "store.cache_max", str(cache_max))
    return have


def _upload_local_packs(ctx: Context, remote: ObjectStore) -> None:
    local = ctx.store
    with ctx.catalog.session() as s:
        names = sorted(ChunkIndex(s).pack_names())
    for i, name in enumerate(names):
        step(f"uploading the packs this host has ({i + 1}/{len(names)})")
        remote.put_file(pack_key(name), local.pack_path(name))


def detect_address() -> str | None:
    """This machine's first global IPv4 address (for `zap host ls`; nothing is sent anywhere)."""
    out = proc.run(["ip", "-j", "-4", "addr", "show", "scope", "global"], check=False).stdout
    try:
        for link in json.loads(out or "[]"):
            for a in link.get("addr_info", []):
                if a.get("local"):
                    return a["local"]
    except ValueError:
        return None
    return None


def host_list(ctx: Context) -> list[dict]:
    me = ctx.host
    with ctx.catalog.session() as s:
        out = []
        for h, pods in hosts.listing(s):
            out.append({"name": h.name, "address": h.address, "last_seen": h.last_seen and iso(h.last_seen),
                        "pods": pods, "state_dir": h.state_dir, "this": h.id == me.id})  # fmt: skip
    return out
