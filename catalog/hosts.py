"""The hosts of a fleet: each state directory taking part in a catalog is one, by name, proven by
the token its config.json keeps. The embedded SQLite catalog has exactly one."""

from __future__ import annotations

from datetime import datetime, timedelta, timezone

from sqlalchemy import func, select, update
from sqlalchemy.orm import Session

from zapckpt.common.errors import NotFound, UsageError, ZapError

from . import queries
from .models import FLEET, Checkpoint, Host, Pod

# A host's last_seen is written at most this often (every command and the supervisor touch it).
TOUCH_EVERY = timedelta(seconds=10)


def now() -> datetime:
    return datetime.now(timezone.utc)


def by_name(s: Session, name: str) -> Host | None:
    return s.scalars(select(Host).where(Host.name == name)).one_or_none()


def get(s: Session, name: str) -> Host:
    host = by_name(s, name)
    if host is None:
        raise NotFound(f"no host named {name!r} in this catalog (see `zap host ls`)")
    return host


def fleet_id(s: Session, new_id: str) -> str:
    """The fleet's id (made once): a store names the fleet it belongs to."""
    have = queries.get_setting(s, FLEET, "fleet.id")
    if have is None:
        queries.set_setting(s, FLEET, "fleet.id", new_id)
        s.flush()
        have = new_id
    return have


def register(s: Session, name: str | None, token: str | None, state_dir: str, embedded: bool,
             default_name: str, new_token: str) -> Host:  # fmt: skip
    """This state directory's host row, made on first use. name/token: what its config.json
    says (None for a state directory that has none yet). A name another state directory holds
    (another token) is refused; the embedded catalog's one host is this state directory's
    whatever it is called."""
    if embedded:
        hosts = list(s.scalars(select(Host).order_by(Host.id)))
        if hosts:
            host = hosts[0]
            if name and host.name != name:
                host.name = name  # `zap init --host` renames the one host of an embedded catalog
            host.token = token or host.token
            host.state_dir = state_dir
            return host
    elif token:
        host = s.scalars(select(Host).where(Host.token == token)).one_or_none()
        if host is not None:
            if name and host.name != name:
                rename(s, host, name)
            return host
    wanted = name or default_name
    taken = by_name(s, wanted)
    if taken is not None:
        raise UsageError(f"host name {wanted!r} is taken in this catalog by the state directory {taken.state_dir} "
                         f"(another host): `zap init --host OTHER` names this one")  # fmt: skip
    if not embedded and queries.get_setting(s, FLEET, "store.url") is None:
        other = s.scalars(select(Host).order_by(Host.id).limit(1)).first()
        if other is not None:
            raise UsageError(f"this catalog's images are kept on the disk of host {other.name!r}, where no other host "
                             f"can read them: give the fleet a shared store first (`zap init --store s3://BUCKET/PREFIX` "
                             f"on {other.name!r})")  # fmt: skip
    host = Host(name=wanted, token=token or new_token, state_dir=state_dir, last_seen=now())
    s.add(host)
    s.flush()
    if embedded:  # rows of a catalog from before hosts existed belong to its one host
        for model in (Pod, Checkpoint):
            s.execute(update(model).where(model.host_id.is_(None)).values(host_id=host.id))
    return host


def rename(s: Session, host: Host, name: str) -> None:
    other = by_name(s, name)
    if other is not None and other.id != host.id:
        raise UsageError(f"host name {name!r} is taken in this catalog by the state directory {other.state_dir}")
    host.name = name


def forget(s: Session, host: Host) -> None:
    """A host leaves the catalog (`zap deinit --purge`): its row and settings; its pods are gone already."""
    from .models import Setting

    s.execute(Setting.__table__.delete().where(Setting.host_id == host.id))
    row = s.get(Host, host.id)
    if row is not None:
        s.delete(row)


def touch(s: Session, host: Host, address: str | None = None) -> None:
    """Seen now (written at most every TOUCH_EVERY: `zap ps` must not write the catalog each time)."""
    t = now()
    seen = host.last_seen if host.last_seen is None or host.last_seen.tzinfo else host.last_seen.replace(tzinfo=timezone.utc)
    if seen is None or t - seen >= TOUCH_EVERY:
        host.last_seen = t
    if address and host.address != address:
        host.address = address


def seen(s: Session, host_id: int) -> None:
    """touch() by id (the watch supervisor, between its passes)."""
    s.execute(update(Host).where(Host.id == host_id, (Host.last_seen.is_(None)) | (Host.last_seen < now() - TOUCH_EVERY))
              .values(last_seen=now()))  # fmt: skip


def listing(s: Session) -> list[tuple[Host, int]]:
    """Every host by name, with how many pods it runs."""
    counts = dict(s.execute(select(Pod.host_id, func.count()).group_by(Pod.host_id)).all())
    return [(h, counts.get(h.id, 0)) for h in s.scalars(select(Host).order_by(Host.name))]


def names(s: Session) -> dict[int, str]:
    return dict(s.execute(select(Host.id, Host.name)).all())


def name_of(s: Session, host_id: int | None) -> str | None:
    return s.scalar(select(Host.name).where(Host.id == host_id)) if host_id is not None else None


def fenced(s: Session, pod: Pod, me: Host) -> ZapError | None:
    """Why this host must not act on the pod's processes or volume (another host runs it), or None."""
    if pod.host_id is None or pod.host_id == me.id:
        return None
    owner = name_of(s, pod.host_id) or f"#{pod.host_id}"
    if pod.adopted_from == me.name:
        when = pod.adopted_at.isoformat(timespec="seconds") if pod.adopted_at else "?"
        return ZapError(f"pod {pod.name!r} was adopted by host {owner!r} at {when}: this host ({me.name}) no longer "
                        f"runs it and will not start it again (its copy here was retired)")  # fmt: skip
    return ZapError(f"pod {pod.name!r} runs on host {owner!r}, not on this one ({me.name}): run the command there, "
                    f"or `zap branch {pod.name}@latest NEW` for a copy here")  # fmt: skip
