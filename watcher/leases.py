"""Which daemon replica watches which kubeconfig context: one Kubernetes Lease per context.

``k8s-watcher serve --replicas-lease-namespace NS`` runs several replicas of the daemon
against the same kubeconfig. Each replica holds a ``coordination.k8s.io/v1`` Lease per
context it watches, in NS, and a member Lease saying it is alive. Every replica computes
the same desired assignment from the live members and the contexts (:func:`assign`), hands
over what the assignment gives to someone else, and takes what it gives to itself once that
lease is free or expired. A replica that stops renewing (killed, partitioned) loses its
contexts to the others once its leases expire: the lease duration after they last saw them
change, plus up to a round.

The live members are the holders of member leases that are held and not expired, plus
this replica. A replica's first round only writes its member lease, so replicas starting
together see each other before any takes contexts. Member leases left by replicas gone
(unchanged for ``gc_after``) are deleted, with the resourceVersion as a precondition.

The lease protocol is client-go's ``tools/leaderelection`` on a ``resourcelock.LeaseLock``:

- a lease is *free* when ``holderIdentity`` is empty, and *expired* when the record has not
  changed for ``leaseDurationSeconds`` as observed here: the time is when this process
  first saw the current version of the object, on its own monotonic clock, never the
  holder's ``renewTime``. Replicas' wall clocks may disagree; each only trusts its own
  stopwatch (tolerant to clock skew, not to clock rate skew);
- acquiring and renewing are optimistic writes: a PUT carrying the resourceVersion that was
  read, so of two replicas racing for a lease one gets 409 Conflict and simply reads again
  next round; a missing lease is created (409 AlreadyExists: lost the race);
- ``leaseTransitions`` counts changes of holder; ``acquireTime`` and ``renewTime`` are
  MicroTime strings;
- a voluntary release (client-go's ``ReleaseOnCancel``) clears ``holderIdentity`` (and sets
  ``leaseDurationSeconds`` to 1, as client-go does), so the next owner need not wait;
- a holder that could not renew for its renew deadline (less than the lease duration, as
  client-go's ``RenewDeadline``) gives up by itself, before anyone else may take the lease,
  so two replicas do not write the same context for long. Leases are not fencing tokens:
  the overlap is bounded by timing, not excluded.

The ``kubernetes`` package's leaderelection has a ConfigMap lock and a single-leader loop
only, hence this small module. The Kubernetes calls sit behind :class:`LeaseApi`
(:class:`KubeLeaseApi` on a :class:`~watcher.kube.KubeClient`), so :class:`LeaseCoordinator`
is tested with an in-memory API and a fake clock.
"""

from __future__ import annotations

import copy
import hashlib
import logging
import math
import os
import re
import secrets
import socket
import threading
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any, Protocol, cast

from watcher.kube import ApiError, KubeClient, is_conflict, is_not_found

log = logging.getLogger(__name__)

LEASES_PATH = "/apis/coordination.k8s.io/v1/namespaces/{namespace}/leases"
MANAGED_BY_LABEL = "app.kubernetes.io/managed-by"
MANAGED_BY = "k8s-watcher"
GROUP_LABEL = "k8s-watcher.io/group"
ROLE_LABEL = "k8s-watcher.io/role"
CONTEXT_ANNOTATION = "k8s-watcher.io/context"
ROLE_CONTEXT = "context"
ROLE_MEMBER = "member"
DEFAULT_GROUP = "default"

_DNS_LABEL = re.compile(r"^[a-z0-9]([-a-z0-9]*[a-z0-9])?$")
_HASH_CHARS = 16
#: The longest group whose lease names stay within 63 characters.
MAX_GROUP_LENGTH = 63 - len(f"k8s-watcher--{ROLE_MEMBER}-") - _HASH_CHARS


class LeaseConflict(Exception):
    """A lease write lost a race (409): the lease changed since it was read, or a lease
    being created exists already. Not a failure: read again and decide again."""


class LeaseApi(Protocol):
    """The lease calls the coordinator makes, in one namespace."""

    def list(self, label_selector: str) -> list[dict[str, Any]]: ...

    def get(self, name: str) -> dict[str, Any] | None: ...

    def create(self, body: dict[str, Any]) -> dict[str, Any]:
        """Raises :class:`LeaseConflict` when the name exists."""
        ...

    def replace(self, name: str, body: dict[str, Any]) -> dict[str, Any]:
        """PUT with ``body``'s resourceVersion; :class:`LeaseConflict` when it is stale."""
        ...

    def delete(self, name: str, resource_version: str) -> None:
        """Delete only that version (:class:`LeaseConflict` if it changed); gone is fine."""
        ...


class KubeLeaseApi:
    """:class:`LeaseApi` on ``/apis/coordination.k8s.io/v1/namespaces/{namespace}/leases``."""

    def __init__(self, client: KubeClient, namespace: str, *, timeout: float = 10) -> None:
        self.client = client
        self.namespace = namespace
        self.path = LEASES_PATH.format(namespace=namespace)
        self.timeout = timeout

    def list(self, label_selector: str) -> list[dict[str, Any]]:
        page = self.client.get(self.path, {"labelSelector": label_selector}, timeout=self.timeout)
        return list(page.get("items") or [])

    def get(self, name: str) -> dict[str, Any] | None:
        try:
            return cast(dict[str, Any], self.client.get(f"{self.path}/{name}", timeout=self.timeout))
        except ApiError as exc:
            if is_not_found(exc):
                return None
            raise

    def create(self, body: dict[str, Any]) -> dict[str, Any]:
        return self._write("POST", self.path, body)

    def replace(self, name: str, body: dict[str, Any]) -> dict[str, Any]:
        return self._write("PUT", f"{self.path}/{name}", body)

    def delete(self, name: str, resource_version: str) -> None:
        options = {
            "apiVersion": "v1",
            "kind": "DeleteOptions",
            "preconditions": {"resourceVersion": resource_version},
        }
        try:
            self._write("DELETE", f"{self.path}/{name}", options)
        except ApiError as exc:
            if not is_not_found(exc):
                raise

    def _write(self, method: str, path: str, body: dict[str, Any]) -> dict[str, Any]:
        try:
            return self.client.send(method, path, body, timeout=self.timeout)
        except ApiError as exc:
            if is_conflict(exc):
                raise LeaseConflict(str(exc)) from exc
            raise


# --------------------------------------------------------------------------- names


def _hash(text: str) -> str:
    return hashlib.sha256(text.encode()).hexdigest()[:_HASH_CHARS]


def check_group(group: str) -> str:
    """A group names one deployment's leases; several share a namespace by using several."""
    if len(group) > MAX_GROUP_LENGTH or not _DNS_LABEL.match(group):
        raise ValueError(
            f"lease group {group!r} must be lower-case letters, digits and '-' "
            f"(a DNS-1123 label) of at most {MAX_GROUP_LENGTH} characters"
        )
    return group


def context_lease_name(group: str, context: str) -> str:
    """Context names are arbitrary text and lease names DNS-1123 labels: a hash, with the
    context itself in the ``k8s-watcher.io/context`` annotation."""
    return f"k8s-watcher-{group}-ctx-{_hash(context)}"


def member_lease_name(group: str, identity: str) -> str:
    return f"k8s-watcher-{group}-{ROLE_MEMBER}-{_hash(identity)}"


def default_identity() -> str:
    """``$POD_NAME`` (the downward API), else ``<hostname>-<pid>-<random>``: unique per live
    replica. A process outside a pod gets a new one at each start, so it never mistakes its
    predecessor's leases for its own; a container restarted in its pod keeps the pod's name
    and takes back what its (dead) predecessor held under it."""
    pod = os.environ.get("POD_NAME", "").strip()
    if pod:
        return pod
    return f"{socket.gethostname()}-{os.getpid()}-{secrets.token_hex(3)}"


def micro_time(timestamp: float) -> str:
    """A Kubernetes MicroTime: RFC 3339, UTC, microseconds (2026-11-27T18:00:00.123456Z)."""
    return datetime.fromtimestamp(timestamp, UTC).strftime("%Y-%m-%dT%H:%M:%S.%fZ")


# --------------------------------------------------------------------------- assignment


def _score(member: str, context: str) -> int:
    # A stable hash (not Python's salted hash()): every replica must compute the same.
    digest = hashlib.sha256(f"{member}\0{context}".encode()).digest()
    return int.from_bytes(digest[:8], "big")


def assign(members: Iterable[str], contexts: Iterable[str]) -> dict[str, str]:
    """The desired owner of each context: an even spread that moves few contexts when a
    member joins or leaves.

    Every replica computes this from the same inputs (deduplicated and sorted, so their
    order does not matter) and gets the same answer, with no coordination beyond the leases.

    Rendezvous (highest random weight) hashing alone keeps every context in place that the
    member who came or went does not win, but is uneven for a handful of contexts (4 over 3
    members can be 3/1/0). So loads are capped: ``N // R`` each, and ``N % R`` members may
    take one more. Pairs (context, member) are considered by descending score, and a
    context goes to the first member of its pairs that still has room; the spare
    capacities go where the scores put them, not to fixed members. 4 contexts over 3
    members are 2/1/1, and a change of members moves about the share of the member that
    came or went, plus a little (25% more in all, over up to 10 contexts and 6 members;
    spare capacities given to the first members in sorted order moved 42% more).
    """
    ms = sorted(set(members))
    cs = sorted(set(contexts))
    if not ms:
        return {}
    base, spare = divmod(len(cs), len(ms))
    load = dict.fromkeys(ms, 0)
    owners: dict[str, str] = {}
    pairs = sorted(((_score(m, c), m, c) for m in ms for c in cs), reverse=True)
    for _, m, c in pairs:
        if c in owners or load[m] > base or (load[m] == base and not spare):
            continue
        if load[m] == base:
            spare -= 1
        load[m] += 1
        owners[c] = m
    return dict(sorted(owners.items()))


# --------------------------------------------------------------------------- coordinator


@dataclass
class _Held:
    name: str
    #: The lease as last written (its resourceVersion is what a release sends).
    lease: dict[str, Any]
    #: Clock time taken *before* the last successful write: the server committed it later
    #: and others observed it later still, so this is a safe start for our deadline.
    renewed: float


def _holder(lease: dict[str, Any] | None) -> str:
    return str(((lease or {}).get("spec") or {}).get("holderIdentity") or "")


def _version(lease: dict[str, Any]) -> str:
    return str(lease.get("metadata", {}).get("resourceVersion") or "")


class LeaseCoordinator:
    """Holds this replica's share of the context leases.

    Drive it with :meth:`step` (one round, for tests) or :meth:`start` (a thread stepping
    every ``renew_period``). ``on_acquired(context)`` runs after the lease is taken and
    before the context counts as held: start its informers there. ``on_released(context)``
    runs before the lease is released, or when it is lost: stop its informers and flush its
    cache writes there. Both run on the coordinator's thread (or the thread calling
    :meth:`stop`), one at a time; an exception is logged, and then the lease is given back
    (on_acquired) or released anyway (on_released). A callback must not call :meth:`stop`.
    """

    def __init__(
        self,
        api: LeaseApi,
        *,
        identity: str,
        group: str = DEFAULT_GROUP,
        lease_duration: float = 15.0,
        renew_period: float | None = None,
        renew_deadline: float | None = None,
        on_acquired: Callable[[str], None],
        on_released: Callable[[str], None],
        clock: Callable[[], float] = time.monotonic,
        wall_clock: Callable[[], float] = time.time,
        gc_after: float | None = None,
    ) -> None:
        if not identity:
            raise ValueError("a lease identity must not be empty")
        self.api = api
        self.identity = identity
        self.group = check_group(group)
        self.lease_duration = float(lease_duration)
        self.renew_period = lease_duration / 3 if renew_period is None else float(renew_period)
        if not 0 < self.renew_period < self.lease_duration:
            raise ValueError(
                f"renew period {self.renew_period}s must be shorter than the lease duration "
                f"{self.lease_duration}s"
            )
        # client-go's RenewDeadline: a holder gives up before anyone may take its lease.
        # Losses are noticed at the next round, so the deadline leaves one period spare.
        self.renew_deadline = (
            self.lease_duration - self.renew_period if renew_deadline is None else float(renew_deadline)
        )
        if not 0 < self.renew_deadline < self.lease_duration:
            raise ValueError(
                f"renew deadline {self.renew_deadline}s must be shorter than the lease duration "
                f"{self.lease_duration}s: a holder gives up before others may take its leases"
            )
        #: Member leases of replicas gone (free, or expired and unchanged this long) are
        #: deleted, so rollouts do not pile up leases named after old pods.
        self.gc_after = 4 * self.lease_duration if gc_after is None else float(gc_after)
        self.on_acquired = on_acquired
        self.on_released = on_released
        self.clock = clock
        self.wall_clock = wall_clock
        self.selector = f"{MANAGED_BY_LABEL}={MANAGED_BY},{GROUP_LABEL}={self.group}"
        self.member_name = member_lease_name(self.group, identity)
        self._seconds = max(1, math.ceil(self.lease_duration))  # leaseDurationSeconds is an int
        self._contexts: frozenset[str] = frozenset()
        self._held: dict[str, _Held] = {}
        self._member: dict[str, Any] | None = None  # my member lease as last written
        #: lease name -> (resourceVersion, clock time it was first seen): the observed
        #: record of client-go, which expiry is measured from.
        self._observed: dict[str, tuple[str, float]] = {}
        self._announced = False
        self._stopped = False
        self._lock = threading.Lock()  # _contexts and _held, for other threads' reads
        self._step_lock = threading.Lock()  # one round (or stop) at a time
        self._wake = threading.Event()
        self._stopping = threading.Event()
        self._thread: threading.Thread | None = None

    # ------------------------------------------------------------------ public

    @property
    def held(self) -> frozenset[str]:
        """The contexts this replica holds (on_acquired done, on_released not yet)."""
        with self._lock:
            return frozenset(self._held)

    def set_contexts(self, contexts: Iterable[str]) -> None:
        """The contexts of the kubeconfig (at start, and after a reload). Takes effect at the
        next round, which a running coordinator starts at once."""
        with self._lock:
            self._contexts = frozenset(contexts)
        self._wake.set()

    def start(self) -> None:
        if self._thread is not None:
            return
        self._thread = threading.Thread(target=self._loop, name=f"leases-{self.group}", daemon=True)
        self._thread.start()

    def stop(self, release: bool = True) -> None:
        """Stop the rounds and give up every context (on_released for each). With
        ``release``, clear the context leases and the member lease so the other replicas
        take over at their next round; without, they take over when the leases expire."""
        self._stopping.set()
        self._wake.set()
        if self._thread is not None and self._thread is not threading.current_thread():
            self._thread.join()
        with self._step_lock:
            if self._stopped:
                return
            self._stopped = True
            for ctx in sorted(self.held):
                held = self._drop(ctx)
                self._release_callback(ctx, "stopping")
                log.info(
                    "context %s: %s %s lease %s (stopping)",
                    ctx,
                    self.identity,
                    "releases" if release else "leaves to expire",
                    held.name,
                )
                if release:
                    self._clear(ctx, held.name, held.lease)
            if release and self._member is not None:
                self._clear(None, self.member_name, self._member)
                self._member = None

    def step(self) -> None:
        """One round: renew the member lease; renew, hand over or give up context leases;
        take the free or expired ones the assignment gives to this replica."""
        with self._step_lock:
            if self._stopped:
                return
            self._round()

    # ------------------------------------------------------------------ a round

    def _loop(self) -> None:
        while not self._stopping.is_set():
            began = time.monotonic()
            try:
                self.step()
            except ApiError as exc:
                log.warning("leases: round failed (retrying in %.1fs): %s", self.renew_period, exc)
            except Exception:
                log.exception("leases: round failed (retrying in %.1fs)", self.renew_period)
            # Rounds start every renew_period, however long one took (slow callbacks).
            self._wake.wait(max(0.0, self.renew_period - (time.monotonic() - began)))
            self._wake.clear()

    def _round(self) -> None:
        may_acquire = self._announced
        try:
            leases = {lease["metadata"]["name"]: lease for lease in self.api.list(self.selector)}
        except Exception:
            self._give_up_unrenewed()
            raise
        now = self.clock()
        self._observe(leases, now)
        self._renew_member(leases.get(self.member_name))
        members = self._live_members(leases, now)
        with self._lock:
            contexts = self._contexts
        desired = assign(members, contexts)

        for ctx in sorted(self.held):
            if self._stopping.is_set():
                return
            held = self._held[ctx]
            current = leases.get(held.name)
            if ctx not in contexts:
                self._release(ctx, current, "no longer in the kubeconfig")
            elif current is not None and _holder(current) != self.identity:
                self._lose(ctx, f"the lease is now held by {_holder(current) or 'nobody'}")
            elif desired.get(ctx) != self.identity:
                self._release(ctx, current, f"handed over to {desired.get(ctx)}")
            else:
                self._renew(ctx, held, current)

        # The first round only announces this replica: starting replicas see each other
        # before any takes contexts, instead of one taking all and handing most back.
        if may_acquire:
            for ctx in sorted(contexts):
                if self._stopping.is_set():
                    return
                if desired.get(ctx) == self.identity and ctx not in self._held:
                    self._acquire(ctx, leases.get(context_lease_name(self.group, ctx)), now)

        self._give_up_unrenewed()
        self._collect_garbage(leases, now)

    def _observe(self, leases: dict[str, dict[str, Any]], now: float) -> None:
        # Any write changes the resourceVersion; a version seen before keeps the time it
        # was first seen (client-go compares the raw record for the same purpose).
        observed = {}
        for name, lease in leases.items():
            version = _version(lease)
            seen = self._observed.get(name)
            observed[name] = seen if seen is not None and seen[0] == version else (version, now)
        self._observed = observed

    def _expired(self, name: str, lease: dict[str, Any], now: float, *, after: float | None = None) -> bool:
        seen = self._observed.get(name)
        if seen is None or seen[0] != _version(lease):
            return False  # not observed long enough to say
        duration = (lease.get("spec") or {}).get("leaseDurationSeconds") or self._seconds
        return seen[1] + (duration if after is None else after) <= now

    def _live_members(self, leases: dict[str, dict[str, Any]], now: float) -> list[str]:
        members = {self.identity}
        for name, lease in leases.items():
            holder = _holder(lease)
            if self._role(lease) == ROLE_MEMBER and holder and not self._expired(name, lease, now):
                members.add(holder)
        return sorted(members)

    @staticmethod
    def _role(lease: dict[str, Any]) -> str:
        return str((lease.get("metadata", {}).get("labels") or {}).get(ROLE_LABEL) or "")

    # ------------------------------------------------------------------ writes

    def _body(self, name: str, context: str | None, current: dict[str, Any] | None) -> dict[str, Any]:
        """``current`` with our labels (other metadata kept), or a new lease."""
        body: dict[str, Any] = copy.deepcopy(current) if current is not None else {"metadata": {"name": name}}
        body["apiVersion"] = "coordination.k8s.io/v1"
        body["kind"] = "Lease"
        meta = body["metadata"]
        meta["labels"] = {
            **(meta.get("labels") or {}),
            MANAGED_BY_LABEL: MANAGED_BY,
            GROUP_LABEL: self.group,
            ROLE_LABEL: ROLE_MEMBER if context is None else ROLE_CONTEXT,
        }
        if context is not None:
            meta["annotations"] = {**(meta.get("annotations") or {}), CONTEXT_ANNOTATION: context}
        body["spec"] = dict(body.get("spec") or {})
        return body

    def _hold_body(self, name: str, context: str | None, current: dict[str, Any] | None) -> dict[str, Any]:
        """The lease held by this replica: renewed if it was ours, acquired if not."""
        body = self._body(name, context, current)
        spec = body["spec"]
        stamp = micro_time(self.wall_clock())
        if current is None:
            spec["leaseTransitions"] = 0
            spec["acquireTime"] = stamp
        elif _holder(current) != self.identity:
            spec["leaseTransitions"] = int(spec.get("leaseTransitions") or 0) + 1
            spec["acquireTime"] = stamp
        spec["holderIdentity"] = self.identity
        spec["leaseDurationSeconds"] = self._seconds
        spec["renewTime"] = stamp
        return body

    def _write(self, name: str, body: dict[str, Any], current: dict[str, Any] | None) -> dict[str, Any]:
        return self.api.create(body) if current is None else self.api.replace(name, body)

    def _renew_member(self, current: dict[str, Any] | None) -> None:
        body = self._hold_body(self.member_name, None, current)
        try:
            self._member = self._write(self.member_name, body, current)
        except LeaseConflict:
            log.debug("leases: member lease %s changed meanwhile; next round", self.member_name)
            return
        except Exception as exc:  # noqa: BLE001 - an unreachable API is reported, not fatal
            log.warning("leases: member lease %s not renewed: %s", self.member_name, exc)
            return
        if not self._announced:
            log.info(
                "leases: %s joined group %s (member lease %s)", self.identity, self.group, self.member_name
            )
        self._announced = True

    def _renew(self, ctx: str, held: _Held, current: dict[str, Any] | None) -> None:
        started = self.clock()
        try:
            written = self._write(held.name, self._hold_body(held.name, ctx, current), current)
        except LeaseConflict:
            log.debug("context %s: lease %s changed meanwhile; next round", ctx, held.name)
            return
        except Exception as exc:  # noqa: BLE001 - the renew deadline decides when it is lost
            log.warning(
                "context %s: lease %s not renewed (%.1fs since the last renewal): %s",
                ctx,
                held.name,
                started - held.renewed,
                exc,
            )
            return
        held.lease = written
        held.renewed = started

    def _acquire(self, ctx: str, current: dict[str, Any] | None, now: float) -> None:
        name = context_lease_name(self.group, ctx)
        previous = _holder(current)
        if current is None:
            why = "new lease"
        elif not previous:
            why = "free"
        elif previous == self.identity:
            why = "held by this identity before (a restart)"
        elif self._expired(name, current, now):
            why = f"expired: unchanged for {now - self._observed[name][1]:.1f}s"
        else:
            # Never steal a live lease, even one the assignment gives us: its holder hands
            # it over at its next round, or stops renewing and it expires.
            log.debug("context %s: lease %s is held by %s; waiting", ctx, name, previous)
            return
        started = self.clock()
        try:
            written = self._write(name, self._hold_body(name, ctx, current), current)
        except LeaseConflict:
            log.info("context %s: another replica took lease %s first", ctx, name)
            return
        except Exception as exc:  # noqa: BLE001 - tried again next round
            log.warning("context %s: lease %s not acquired: %s", ctx, name, exc)
            return
        log.info(
            "context %s: %s acquired lease %s (previous holder %s; %s)",
            ctx,
            self.identity,
            name,
            previous or "none",
            why,
        )
        try:
            self.on_acquired(ctx)
        except Exception:
            log.exception("context %s: starting it failed; giving lease %s back", ctx, name)
            self._clear(ctx, name, written)
            return
        with self._lock:
            self._held[ctx] = _Held(name, written, started)

    def _drop(self, ctx: str) -> _Held:
        with self._lock:
            return self._held.pop(ctx)

    def _release_callback(self, ctx: str, why: str) -> None:
        try:
            self.on_released(ctx)
        except Exception:
            log.exception("context %s: stopping it failed (%s); its lease goes anyway", ctx, why)

    def _release(self, ctx: str, current: dict[str, Any] | None, why: str) -> None:
        """Hand a context over: stop using it first, then clear the lease."""
        held = self._drop(ctx)
        self._release_callback(ctx, why)
        log.info("context %s: %s releases lease %s (%s)", ctx, self.identity, held.name, why)
        if current is not None and _holder(current) == self.identity:
            self._clear(ctx, held.name, current)

    def _lose(self, ctx: str, why: str) -> None:
        """The lease is not ours any more (or may not be): stop using the context, write nothing."""
        held = self._drop(ctx)
        log.warning("context %s: %s lost lease %s: %s", ctx, self.identity, held.name, why)
        self._release_callback(ctx, why)

    def _give_up_unrenewed(self) -> None:
        now = self.clock()
        for ctx in sorted(self.held):
            silent = now - self._held[ctx].renewed
            if silent >= self.renew_deadline:
                self._lose(
                    ctx,
                    f"not renewed for {silent:.1f}s (renew deadline {self.renew_deadline:.1f}s, "
                    f"lease duration {self.lease_duration:.1f}s)",
                )

    def _clear(self, ctx: str | None, name: str, lease: dict[str, Any]) -> None:
        """client-go's release: holderIdentity cleared, leaseDurationSeconds 1. Best
        effort: a lease not cleared expires by itself."""
        what = f"context {ctx}" if ctx is not None else "leases"
        for attempt in range(2):
            body = self._body(name, ctx, lease)
            stamp = micro_time(self.wall_clock())
            body["spec"].update(holderIdentity="", leaseDurationSeconds=1, acquireTime=stamp, renewTime=stamp)
            try:
                self.api.replace(name, body)
                return
            except LeaseConflict:
                # Our last renewal may have been committed with its answer lost: read the
                # lease again and clear it if it is still ours.
                fresh = None
                if attempt == 0:
                    try:
                        fresh = self.api.get(name)
                    except Exception as exc:  # noqa: BLE001
                        log.warning("%s: lease %s not released: %s", what, name, exc)
                        return
                if fresh is None or _holder(fresh) != self.identity:
                    return  # someone else has it now, or it is gone: nothing to release
                lease = fresh
            except Exception as exc:  # noqa: BLE001
                log.warning("%s: lease %s not released (it will expire): %s", what, name, exc)
                return

    def _collect_garbage(self, leases: dict[str, dict[str, Any]], now: float) -> None:
        for name, lease in leases.items():
            if name == self.member_name or self._role(lease) != ROLE_MEMBER:
                continue
            if not self._expired(name, lease, now, after=self.gc_after):
                continue
            try:
                self.api.delete(name, _version(lease))
                log.info("leases: deleted member lease %s of %s (gone)", name, _holder(lease) or "nobody")
            except LeaseConflict:
                pass  # renewed meanwhile: its member is back
            except Exception as exc:  # noqa: BLE001 - tried again next round
                log.debug("leases: member lease %s not deleted: %s", name, exc)
