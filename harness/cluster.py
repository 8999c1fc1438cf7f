"""`varlen bench --cluster ADDRESS`: the sweep on Dask's distributed scheduler (optional extra `varlen[cluster]`).

One Dask task per (framework, device) group of cases. Placement is Dask's own worker resources: every node runs ONE
Dask worker that advertises `node=1` plus one unit of each device it has, e.g.

    dask worker tcp://scheduler:8786 --nworkers 1 --nthreads 1 --resources "node=1,cpu=1,gpu=1"

and every task asks for `{"node": 1, device: 1}`: a task lands only where its device is, and two timed tasks never
share a node (each holds the node's one `node` unit). Every node needs varlen installed (same commit and extras).

On its node a task runs the usual worker subprocess (`bench._run_worker`, so crashes and timeouts of single cases
are handled there, as locally) into a local temporary results file, and sends each record to the driver as a Dask
event (`Worker.log_event` / `Client.subscribe_topic`) as soon as it is written; the driver appends it to its
`--out` file. The task also returns its records, so one that was in flight when the task ended is not lost.

Failures become failed records (so `--resume` retries them), never a hang:
- a device that no worker advertises: its cases are recorded failed at submission (not left pending forever);
- a lost worker (Dask's "remove-worker" event): the cases of its task that sent no record are recorded failed,
  naming the worker; Dask would rerun the task elsewhere, which is refused (a rerun would repeat finished cases);
- a task that errs or is cancelled: its remaining cases are recorded failed with the reason.

Dask is imported inside the functions only: `import harness` stays light, and varlen works without the extra.
Ctrl-C cancels the tasks not yet started; one already running on a node finishes there unrecorded.
"""
from __future__ import annotations

import os
import platform
import queue
import tempfile
import threading
import uuid
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

from harness import records, results
from harness.axes import case_key

#: the resource every node advertises once and every task holds: one timed task per node
NODE = "node"


class Unreachable(Exception):
    """The scheduler could not be reached (the CLI turns this into a usage error, before any work)."""


class Lost(Exception):
    """Raised by a rerun of a task whose first worker was lost: its finished cases must not be measured twice."""


def available() -> bool:
    """Whether the `cluster` extra (Dask's distributed) is installed, without importing it."""
    import importlib.util

    return importlib.util.find_spec("distributed") is not None


#: seconds to wait for the scheduler before `connect` gives up (see `connect` for the bound as a whole)
CONNECT_TIMEOUT = 10.0

#: what an address that is not a Dask scheduler usually is
SUSPECTS = ("give the scheduler's own address, e.g. tcp://scheduler:8786 (its default port; 8787 is its dashboard, "
            "an http:// URL is the dashboard's)")


def connect(address):
    """A `distributed.Client` for the scheduler at `address` (a Client is passed through), or `Unreachable`.

    Dask alone does not bound this: `Client(address, timeout=...)` bounds the TCP connect, not Dask's handshake,
    so a port that accepts and then stays silent (Dask's dashboard, any HTTP server) hangs it forever, and one that
    answers junk can make it raise anything (a MemoryError for a junk frame length). Hence, in a daemon thread:
    1. `_probe`: a bare Dask comm to `address` asks for the scheduler's identity, in its own event loop under
       `asyncio.wait_for(CONNECT_TIMEOUT)`: what is not a Dask scheduler fails here, and no Client is built;
    2. only then the Client (its own connect bounded by CONNECT_TIMEOUT, its handshake by the answer just seen).
    The caller waits for the thread at most 2 x CONNECT_TIMEOUT + 2 s whatever blocks in it (even outside the
    event loop), then gives up; every exception becomes `Unreachable`. A Client built but not handed over (it
    failed while starting, or came after the caller gave up) is closed, so none is left for `Client.__del__`."""
    from distributed import Client

    if isinstance(address, Client):
        return address
    address = getattr(address, "scheduler_address", address)  # a Cluster object: its scheduler's address
    timeout = CONNECT_TIMEOUT
    lock, box = threading.Lock(), {}

    def attempt() -> None:
        client = None
        try:
            _probe(address, timeout)
            client = Client.__new__(Client)  # so that one whose __init__ fails can still be closed
            client.__init__(address, timeout=timeout, set_as_default=False)
        except BaseException as e:  # noqa: BLE001 - whatever it is, the caller reports it as Unreachable
            _close(client, timeout)
            with lock:
                box.setdefault("error", e)
            return
        with lock:
            if "error" not in box:  # the caller has not given up: hand it over
                box["client"] = client
                return
        _close(client, timeout)

    thread = threading.Thread(target=attempt, name=f"varlen-connect {address}", daemon=True)
    thread.start()
    interrupted = True
    try:
        thread.join(2 * timeout + 2)
        interrupted = False
    finally:  # given up (or interrupted: Ctrl-C): a Client that comes later is the thread's to close
        with lock:
            client = box.get("client")
            error = box.setdefault("error", TimeoutError(f"no answer within {2 * timeout + 2:g} s"))
        if interrupted:
            _close(client, timeout)
    if client is not None:
        return client
    raise Unreachable(f"cannot reach the Dask scheduler at {address!r}: {_why(error)}; {SUSPECTS}") from None


class NotAScheduler(Exception):
    """Something answered at the address, but not a Dask scheduler."""


class BadAddress(Exception):
    """The address is none Dask can connect to (a wrong scheme, no port, ...)."""


def _probe(address, timeout: float) -> None:
    """Ask the server at `address` for its identity over a bare Dask comm, all of it within `timeout` seconds (in
    a fresh event loop: call it from a thread of its own). Raises unless a Dask scheduler answers."""
    import asyncio

    from distributed.comm import connect as comm_connect
    from distributed.comm import parse_address, parse_host_port, registry
    from distributed.security import Security

    try:  # what Dask's connect parses, up front: a ValueError later is not the address's
        scheme, location = parse_address(address)
        registry.get_backend(scheme)
        if scheme != "inproc":
            parse_host_port(location)
    except ValueError as e:
        raise BadAddress(f"not a Dask address ({e})") from None

    async def ask() -> object:
        # the comm's own connect retries a refused connection until `timeout`, then raises OSError; its handshake
        # (reading the peer's) has no bound but ours
        comm = await comm_connect(address, timeout=timeout, deserialize=False,
                                  **Security().get_connection_args("client"))
        try:
            await comm.write({"op": "identity", "reply": True})  # no arguments: a worker answers it too
            return await comm.read()
        finally:
            comm.abort()

    async def bounded() -> object:
        try:  # a little past `timeout`: a refused connection ends in the comm's own error, which says so
            return await asyncio.wait_for(ask(), timeout + 0.5)
        except TimeoutError:
            raise NotAScheduler(f"no Dask scheduler answered there within {timeout:g} s: something accepted the "
                                "connection, then said nothing Dask understands") from None

    answer = asyncio.run(bounded())
    kind = answer.get("type") if isinstance(answer, dict) else None
    if kind in ("Worker", "Nanny"):
        raise NotAScheduler(f"a Dask {kind.lower()} answered there, not the scheduler")
    if not (isinstance(kind, str) and "Scheduler" in kind):
        raise NotAScheduler(f"no Dask scheduler answered there (the answer was {str(answer)[:80]!r})")


def _why(error: BaseException) -> str:
    """The reason a connect failed, for the usage error."""
    if isinstance(error, (NotAScheduler, BadAddress)):
        return str(error)
    if isinstance(error, OSError):  # refused or timed out, retried until `timeout` (CommClosedError is one too)
        return f"no Dask scheduler answered there: {error}"
    # e.g. junk back (a MemoryError for a junk frame length, a msgpack error), or TLS without its configuration
    return f"no Dask scheduler answered there ({type(error).__name__}: {str(error)[:160]})"


def _close(client, timeout: float) -> None:
    """Close a Client, however far it got; a failure to close is not worth more than the connect's own error."""
    if client is None:
        return
    try:
        client.close(timeout=timeout)
    except Exception:  # noqa: BLE001, S110 - it may be half-built: nothing more to do
        pass


def devices(client) -> set[str]:
    """Devices advertised by at least one worker that also advertises a `node` (the workers we may use)."""
    workers = client.scheduler_info(n_workers=-1)["workers"].values()
    return {r for w in workers if w.get("resources", {}).get(NODE) for r, n in w["resources"].items()
            if n and r != NODE}


def groups(cases: list[dict]) -> list[tuple[str, str, list[dict]]]:
    """The local sweep's worker groups (`bench._groups`), split further per device: one task needs one device."""
    from harness import bench

    out = []
    for fw, group in bench._groups(cases):
        for device in dict.fromkeys(c["device"] for c in group):
            out.append((fw, device, [c for c in group if c["device"] == device]))
    return out


# -- on the node ---------------------------------------------------------------------------------------------------
def run_group(framework: str, cases: list[dict], *, run: str, topic: str, tid: int, timeout: float) -> list[dict]:
    """The task: measure `cases` with the usual worker subprocess, sending each record to the driver as it lands.
    Returns every record it wrote (the driver appends those that no event brought)."""
    from distributed import get_client, get_worker

    from harness import bench

    worker = get_worker()
    guard = f"{topic}/{tid}"
    first = get_client().get_metadata(guard, None)
    if first:
        raise Lost(f"worker {first} was lost while running this group; its cases are not rerun on {worker.address}")
    get_client().set_metadata(guard, worker.address)
    worker.log_event(topic, {"task": tid, "worker": worker.address, "host": platform.node()})
    os.environ[records.RUN_ENV] = run  # the subprocess stamps the driver's run id (one task per node at a time)
    fd, path = tempfile.mkstemp(prefix="varlen-cluster-", suffix=".jsonl")
    os.close(fd)
    sent: list[dict] = []

    def flush(_case=None) -> None:
        for rec in results.read([path])[len(sent):]:
            worker.log_event(topic, {"task": tid, "seq": len(sent), "record": rec})
            sent.append(rec)

    try:
        bench._run_worker(framework, cases, path, {}, timeout, flush)
        flush()
    finally:
        Path(path).unlink(missing_ok=True)
    return sent


# -- on the driver -------------------------------------------------------------------------------------------------
@dataclass
class Task:
    tid: int
    framework: str
    device: str
    cases: list[dict]
    future: object = None
    worker: str = ""
    host: str = ""
    seqs: set = field(default_factory=set)
    done: set = field(default_factory=set)  # case keys with a bench record
    closed: bool = False


class Driver:
    """Submits the tasks and turns everything that comes back (records, task ends, lost workers) into appends to
    `out`, from one thread: Dask's callbacks only put messages into `inbox`."""

    def __init__(self, client, out: str, progress: Callable[[dict], None]) -> None:
        self.client, self.out, self.progress = client, out, progress
        self.topic = f"varlen-{records.run_id()}-{uuid.uuid4().hex[:8]}"
        self.inbox: queue.SimpleQueue = queue.SimpleQueue()
        self.tasks: dict[int, Task] = {}

    def run(self, cases: list[dict], timeout: float) -> None:
        self.client.subscribe_topic(self.topic, lambda ev: self.inbox.put(("event", ev[1])))
        self.client.subscribe_topic("all", lambda ev: self.inbox.put(("all", ev[1])))
        try:
            self.submit(cases, timeout)
            while any(not t.closed for t in self.tasks.values()):
                try:
                    kind, msg = self.inbox.get(timeout=1)
                except queue.Empty:
                    continue
                {"event": self.on_event, "all": self.on_scheduler, "done": self.on_done}[kind](msg)
        finally:
            for t in self.tasks.values():
                if not t.closed and t.future is not None:
                    t.future.cancel()
            for topic in (self.topic, "all"):
                self.client.unsubscribe_topic(topic)

    def submit(self, cases: list[dict], timeout: float) -> None:
        """One task per (framework, device) group, each asking for its device and the node; a device that no
        worker advertises fails its cases now rather than leaving them pending forever."""
        have = devices(self.client)
        for tid, (fw, device, group) in enumerate(groups(cases)):
            t = self.tasks[tid] = Task(tid, fw, device, group)
            if device not in have:
                self.close(t, f"no worker of the Dask cluster advertises the resource {device!r} (with {NODE!r}); "
                              f"advertised: {sorted(have)}")
                continue
            t.future = self.client.submit(run_group, fw, group, run=records.run_id(), topic=self.topic, tid=tid,
                                          timeout=timeout, key=f"{self.topic}-{tid}-{fw}-{device}",
                                          resources={NODE: 1, device: 1}, retries=0)
            t.future.add_done_callback(lambda f, t=t: self.inbox.put(("done", t)))

    def record(self, t: Task, seq: int, rec: dict) -> None:
        """Append one record of task `t` once (an event and the task's return value may both bring it)."""
        if t.closed or seq in t.seqs:
            return
        t.seqs.add(seq)
        results.append(self.out, rec)
        if rec.get("source") == "bench":
            t.done.add(rec["key"])
            self.progress(rec)

    def on_event(self, msg: dict) -> None:
        t = self.tasks.get(msg.get("task"))
        if t is None:
            return
        if "record" in msg:
            self.record(t, msg["seq"], msg["record"])
        else:
            t.worker, t.host = msg["worker"], msg["host"]

    def on_scheduler(self, msg: dict) -> None:
        """A removed worker fails the open tasks it was running, and those whose device no worker has left."""
        if msg.get("action") != "remove-worker":
            return
        gone, processing = msg.get("worker"), {str(k) for k in msg.get("processing-tasks", ())}
        have = devices(self.client)
        for t in self.tasks.values():
            if t.closed:
                continue
            if t.worker == gone or str(t.future.key) in processing:
                self.close(t, f"Dask worker {gone} ({t.host or 'host unknown'}) was lost during this group")
            elif t.device not in have:
                self.close(t, f"the last Dask worker advertising {t.device!r} ({gone}) was lost")

    def on_done(self, t: Task) -> None:
        """A finished task's records that no event brought are appended; an erred or cancelled task (the reason
        is Dask's exception: `Lost`, a lost scheduler, ...) fails its remaining cases."""
        if t.closed:
            return
        try:
            got = t.future.result()
        except Exception as e:  # noqa: BLE001 - whatever ended the task is the reason its cases failed
            self.close(t, f"Dask task on worker {t.worker or '(not started)'}: {type(e).__name__}: {e}")
            return
        for seq, rec in enumerate(got):
            self.record(t, seq, rec)
        self.close(t, "the task ended without a record for this case")

    def close(self, t: Task, why: str) -> None:
        """Record every case of `t` that has no record yet as failed (`why`), and stop listening to `t`."""
        from harness import bench

        for case in t.cases:
            if case_key(case) not in t.done:
                rec = bench._failed(case, why[:500])
                results.append(self.out, {**rec, "host": t.host or rec["host"]})
                self.progress(case)
        t.closed = True
        if t.future is not None and not t.future.done():
            t.future.cancel()


def runner(address):
    """`bench.sweep`'s `cluster_sweep` hook for the cluster at `address` (a scheduler address or a Client)."""
    return lambda cases, out, *, timeout, progress: sweep(cases, out, address, timeout=timeout, progress=progress)


def sweep(cases: list[dict], out: str, address, *, timeout: float = 600,
          progress: Callable[[dict], None] = lambda case: None) -> None:
    """Run `cases` on the Dask cluster at `address` (or a Client), appending every record to `out` as it arrives."""
    from distributed import Client

    client = connect(address)
    try:
        Driver(client, out, progress).run(cases, timeout)
    finally:
        if not isinstance(address, Client):
            client.close()
