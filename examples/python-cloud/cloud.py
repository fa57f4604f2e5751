#!/usr/bin/env python3
"""An example cloud for tetherd: protocol v1 (docs/protocol.md) in one file.

It serves the two requests a gateway makes,

    POST /v1/gateways/{gateway_id}/poll      the long poll: results up, commands down
    POST /v1/gateways/{gateway_id}/results   an early flush of results while a poll is held

over HTTPS with HTTP/2 (Hypercorn), stores everything in SQLite, and, with
--test-fixtures, two more endpoints a test kit uses to queue commands and read results
(docs/conformance.md). Bodies are JSON only: a Protocol Buffers request gets 415 and the
gateway switches to JSON by itself.

Run:  python3 cloud.py --listen 127.0.0.1:8443 --cert server.pem --key server-key.pem \
          --db cloud.sqlite3 --token SECRET
"""

import argparse
import asyncio
import contextlib
import hmac
import json
import logging
import math
import signal
import socket
import sqlite3
import ssl
import sys
from importlib.metadata import version

from hypercorn.asyncio import serve
from hypercorn.config import Config
from starlette.applications import Starlette
from starlette.requests import ClientDisconnect, Request
from starlette.responses import JSONResponse
from starlette.routing import Route

log = logging.getLogger("cloud")

# protocol.md "Result": the statuses a result (and each of its items) may carry.
STATUSES = {"ok", "error", "timeout", "unreachable", "expired", "rejected",
            "interrupted", "partial"}
# protocol.md "Protocol Buffers": both names of the protobuf media type. This example
# answers them with 415, which makes the gateway resend the request in JSON.
PROTOBUF_TYPES = {"application/protobuf", "application/x-protobuf"}
# protocol.md "Command": an id is a string of 1 to 128 bytes (UTF-8).
MAX_ID_BYTES = 128
# Largest `capacity` used as is (as good as unlimited; it fits SQL's LIMIT). tetherd always
# sends `capacity`; a poll without one is read as 0, as protocol.md says: keep commands.
MAX_CAPACITY = 1_000_000
# How much of an oversized body is still read (and dropped) before answering 413; see
# read_object.
DRAIN_BYTES = 64 << 20
# Largest sum of command JSON in one poll answer: a gateway refuses an answer over
# `cloud.max_response_bytes` (4 MiB by default); the rest goes with the next poll.
MAX_ANSWER_BYTES = 3 << 20


async def drain(request):
    """Reads and drops what is left of a request body, up to DRAIN_BYTES."""
    received = 0
    try:
        async for chunk in request.stream():
            received += len(chunk)
            if received > DRAIN_BYTES:
                break
    except ClientDisconnect:
        pass


class Refused(Exception):
    """Ends a request with an HTTP error status and a JSON body {"error": message}."""

    def __init__(self, status, message, headers=None, unread=False):
        super().__init__(message)
        self.status, self.message, self.headers = status, message, headers
        # Refused before its body was read: the handler reads it first (see refused).
        self.unread = unread


class DuplicateId(ValueError):
    """A command id already used for this gateway (ids are unique per gateway)."""


# ---------------------------------------------------------------------------------------
# Storage
#
# One SQLite connection, used only from the event loop's thread. Every query here is tiny
# (a few rows, by index), so running it inline costs less than handing it to a thread, and
# with a single connection on a single thread there are no locks to get wrong: each
# transaction below runs to its COMMIT without another request interleaving, because
# nothing in it awaits. WAL mode with synchronous=FULL makes each COMMIT durable on disk
# (fsync) before it returns, so anything acked survives a crash or power cut.
#
# The queue lives here too, not in memory: a command is 'queued', then 'delivered' (sent
# in a poll response, not answered yet), then 'answered' (its result is stored). A restart
# of this process loses nothing.
# ---------------------------------------------------------------------------------------

SCHEMA = """
CREATE TABLE IF NOT EXISTS commands (
    seq     INTEGER PRIMARY KEY AUTOINCREMENT,   -- queue order: the order enqueued
    gateway TEXT NOT NULL,
    id      TEXT NOT NULL,
    body    TEXT NOT NULL,                       -- the Command object, sent as it is
    state   TEXT NOT NULL CHECK (state IN ('queued', 'delivered', 'answered')),
    UNIQUE (gateway, id)
);
CREATE INDEX IF NOT EXISTS commands_by_state ON commands (gateway, state, seq);

-- One row per (gateway, command_id): the first copy of a result stays (INSERT OR IGNORE),
-- a retransmission changes nothing. `seq` keeps the order stored (an explicit INTEGER
-- PRIMARY KEY, since VACUUM may renumber implicit rowids).
CREATE TABLE IF NOT EXISTS results (
    seq        INTEGER PRIMARY KEY AUTOINCREMENT,
    gateway    TEXT NOT NULL,
    command_id TEXT NOT NULL,
    body       TEXT NOT NULL,                    -- the Result object as received
    UNIQUE (gateway, command_id)
);

CREATE TABLE IF NOT EXISTS events (
    seq     INTEGER PRIMARY KEY AUTOINCREMENT,
    gateway TEXT NOT NULL,
    body    TEXT NOT NULL                        -- the Event object as received
);
"""


class Store:
    def __init__(self, path):
        # isolation_level=None: no implicit transactions; `transaction()` says where each
        # one begins and commits.
        self.db = sqlite3.connect(path, isolation_level=None)
        self.db.execute("PRAGMA journal_mode=WAL")
        self.db.execute("PRAGMA synchronous=FULL")
        self.db.executescript(SCHEMA)

    @contextlib.contextmanager
    def transaction(self):
        """BEGIN ... COMMIT (durable when it returns), or ROLLBACK on an exception."""
        self.db.execute("BEGIN IMMEDIATE")
        try:
            yield self.db
        except BaseException:
            self.db.execute("ROLLBACK")
            raise
        self.db.execute("COMMIT")

    def save_uploads(self, gw, results, events):
        """Stores results (first copy wins) and events; returns the ids to ack.

        Call inside a transaction. Every result of the request is acked, new or a
        duplicate: after the COMMIT each one is stored (protocol.md: "Ack only what you
        have stored").
        """
        acked = []
        for result in results:
            cid = result["command_id"]
            self.db.execute(
                "INSERT OR IGNORE INTO results (gateway, command_id, body) VALUES (?, ?, ?)",
                (gw, cid, json.dumps(result)))
            self.db.execute(
                "UPDATE commands SET state = 'answered' WHERE gateway = ? AND id = ?",
                (gw, cid))
            if cid not in acked:
                acked.append(cid)
        for event in events:
            self.db.execute("INSERT INTO events (gateway, body) VALUES (?, ?)",
                            (gw, json.dumps(event)))
        return acked

    def requeue_lost(self, gw, pending):
        """protocol.md "Resending": put back what the gateway no longer knows about.

        A delivered command that is neither in `pending` nor answered (its result was
        stored by save_uploads just before) was lost on the way: it goes back to the
        queue. The queue is ordered by enqueue order, so it lands ahead of everything
        queued after it, in its original order. Call inside a transaction.
        """
        pending = set(pending)
        rows = self.db.execute(
            "SELECT seq, id FROM commands WHERE gateway = ? AND state = 'delivered'",
            (gw,)).fetchall()
        lost = [seq for seq, cid in rows if cid not in pending]
        for seq in lost:
            self.db.execute("UPDATE commands SET state = 'queued' WHERE seq = ?", (seq,))
        # The other way round: a command the gateway lists as pending is with it, even if
        # this side had it queued (say, a poll from a dead connection requeued it). It
        # must not be sent again: count it as delivered.
        for cid in pending:
            self.db.execute(
                "UPDATE commands SET state = 'delivered'"
                " WHERE gateway = ? AND id = ? AND state = 'queued'", (gw, cid))
        return len(lost)

    def take(self, gw, capacity):
        """Marks up to `capacity` queued commands delivered (committed); returns them.
        At most MAX_ANSWER_BYTES of them: a gateway refuses an answer over 4 MiB, and the
        commands in a refused answer would be resent, refused again, forever."""
        if capacity <= 0:
            return []
        with self.transaction():
            rows = self.db.execute(
                "SELECT seq, body FROM commands c"
                " WHERE gateway = ? AND state = 'queued'"
                # A result can arrive for a command before it is (re)sent.
                "   AND NOT EXISTS (SELECT 1 FROM results r"
                "                   WHERE r.gateway = c.gateway AND r.command_id = c.id)"
                " ORDER BY seq LIMIT ?", (gw, capacity)).fetchall()
            taken, size = [], 0
            for seq, body in rows:
                size += len(body)
                if taken and size > MAX_ANSWER_BYTES:
                    break
                self.db.execute("UPDATE commands SET state = 'delivered' WHERE seq = ?",
                                (seq,))
                taken.append(body)
        return [json.loads(body) for body in taken]

    def add_command(self, gw, command):
        """Queues one command (committed). Raises DuplicateId if the id was used."""
        try:
            with self.transaction():
                self.db.execute(
                    "INSERT INTO commands (gateway, id, body, state)"
                    " VALUES (?, ?, ?, 'queued')", (gw, command["id"], json.dumps(command)))
        except sqlite3.IntegrityError:
            raise DuplicateId(f"command id {command['id']!r} was already used for {gw!r}")

    def results(self, gw):
        rows = self.db.execute(
            "SELECT body FROM results WHERE gateway = ? ORDER BY seq", (gw,)).fetchall()
        return [json.loads(body) for (body,) in rows]

    def close(self):
        self.db.close()


# ---------------------------------------------------------------------------------------
# Reading and checking request bodies
# ---------------------------------------------------------------------------------------

def _no_constants(name):
    raise ValueError(f"{name} is not JSON")


def _finite(text):
    value = float(text)
    if not math.isfinite(value):  # 1e999 would become Infinity, which JSON cannot carry
        raise ValueError(f"number {text} is out of range")
    return value


def parse_json(data):
    try:
        return json.loads(data, parse_constant=_no_constants, parse_float=_finite)
    except (ValueError, RecursionError) as e:  # RecursionError: absurdly deep nesting
        raise Refused(400, f"body is not valid JSON: {e}")


def bad(where, what):
    return Refused(400, f"{where} {what}")


def is_count(v):
    return isinstance(v, int) and not isinstance(v, bool) and v >= 0


def list_field(obj, name, where, check):
    """obj[name] as a list whose items pass `check`; absent or null is the empty list."""
    value = obj.get(name)
    if value is None:
        return []
    if not isinstance(value, list):
        raise bad(f"{where}.{name}", "must be a list")
    for i, item in enumerate(value):
        check(item, f"{where}.{name}[{i}]")
    return value


def check_string(v, where):
    if not isinstance(v, str):
        raise bad(where, "must be a string")


def check_outcome(obj, where, key):
    """The fields a Result and an Item share. Unknown fields are left alone."""
    if not isinstance(obj, dict):
        raise bad(where, "must be an object")
    check_string(obj.get(key), f"{where}.{key}")
    if obj.get("status") not in STATUSES:
        raise bad(f"{where}.status", f"must be one of {', '.join(sorted(STATUSES))}")
    if obj.get("error") is not None:
        check_string(obj["error"], f"{where}.error")
    if obj.get("duration_ms") is not None and not is_count(obj["duration_ms"]):
        raise bad(f"{where}.duration_ms", "must be a non-negative integer")


def check_result(r, where):
    check_outcome(r, where, "command_id")
    list_field(r, "items", where, lambda item, w: check_outcome(item, w, "target"))


def check_event(e, where):
    if not isinstance(e, dict):
        raise bad(where, "must be an object")
    check_string(e.get("kind"), f"{where}.kind")
    if e.get("appliance") is not None:
        check_string(e["appliance"], f"{where}.appliance")


def prefer_wait(request):
    """`wait=N` from the Prefer header(s) (RFC 7240); 0 when absent or unparsable."""
    for header in request.headers.getlist("prefer"):
        for preference in header.split(","):
            head = preference.split(";")[0]  # parameters follow ';', wait takes none
            key, _, value = head.partition("=")
            value = value.strip().strip('"')
            if key.strip().lower() == "wait" and value.isdigit():
                return int(value)
    return 0


# ---------------------------------------------------------------------------------------
# The application
# ---------------------------------------------------------------------------------------

class HeldPoll:
    """A poll waiting for commands. `wake` is set by an enqueue, by a newer poll of the
    same gateway (which also sets `superseded`) and by shutdown."""

    def __init__(self):
        self.wake = asyncio.Event()
        self.superseded = False


class Cloud:
    def __init__(self, args):
        self.args = args
        self.store = Store(args.db)
        self.held = {}          # gateway id -> its HeldPoll (at most one per gateway)
        self.stopping = False
        routes = [
            Route("/v1/gateways/{gw}/poll", self.poll, methods=["POST"]),
            Route("/v1/gateways/{gw}/results", self.flush, methods=["POST"]),
        ]
        if args.test_fixtures:  # never in production: anyone with the token could queue
            routes += [
                Route("/test/gateways/{gw}/commands", self.fixture_enqueue, methods=["POST"]),
                Route("/test/gateways/{gw}/results", self.fixture_results, methods=["GET"]),
            ]
        self.app = Starlette(routes=routes, exception_handlers={Refused: self.refused})

    async def refused(self, request, exc):
        # A refusal can come before the body was read (401, 415). Hypercorn 0.13.2 tears
        # down an HTTP/2 connection whose client is still sending a body the app has
        # already answered (see read_object), so read it first.
        if exc.unread:
            await drain(request)
        return JSONResponse({"error": exc.message}, exc.status, headers=exc.headers)

    # -- every request ------------------------------------------------------------------

    def authorize(self, request):
        """protocol.md "Authentication": the bearer token, compared in constant time."""
        if self.args.token is None:
            return
        scheme, _, presented = request.headers.get("authorization", "").strip().partition(" ")
        if not (scheme.lower() == "bearer" and hmac.compare_digest(
                presented.strip().encode(), self.args.token.encode())):
            raise Refused(401, "missing or wrong bearer token",
                          headers={"WWW-Authenticate": "Bearer"}, unread=True)

    async def read_object(self, request):
        """The request body as a JSON object: 415 for protobuf, 413 when over
        --max-body-bytes (by Content-Length, or counted as it streams in, since a body
        need not announce its length), 400 when not a JSON object."""
        media_type = request.headers.get("content-type", "").split(";")[0].strip().lower()
        if media_type in PROTOBUF_TYPES:
            raise Refused(415, "this cloud speaks application/json only", unread=True)
        limit = self.args.max_body_bytes
        length = request.headers.get("content-length", "").strip()
        too_large = length.isdigit() and int(length) > limit
        # Past the limit the rest is read and dropped, so that the 413 answers a complete
        # request and the connection stays usable (Hypercorn 0.13.2 tears down an HTTP/2
        # connection whose client is still sending a body the app has already answered;
        # an HTTP/1.1 connection would have to close). Only a body more than DRAIN_BYTES
        # over the limit is answered before its end.
        body, received = bytearray(), 0
        async for chunk in request.stream():
            received += len(chunk)
            too_large = too_large or received > limit
            if not too_large:
                body += chunk
            elif received > limit + DRAIN_BYTES:
                break
        if too_large:
            raise Refused(413, f"body over {limit} bytes")
        value = parse_json(bytes(body))
        if not isinstance(value, dict):
            raise Refused(400, "body must be a JSON object")
        return value

    def uploads(self, body):
        """`results` and `events`, checked (a poll and a flush carry both)."""
        results = list_field(body, "results", "body", check_result)
        events = list_field(body, "events", "body", check_event)
        return results, events

    # -- POST /v1/gateways/{gw}/poll ----------------------------------------------------

    async def poll(self, request: Request):
        self.authorize(request)
        gw = request.path_params["gw"]
        body = await self.read_object(request)
        results, events = self.uploads(body)
        pending = list_field(body, "pending", "body", check_string)
        list_field(body, "waiting", "body", check_string)  # informational: only checked
        capacity = body.get("capacity")
        if capacity is None:
            capacity = 0
        elif not is_count(capacity):
            raise bad("body.capacity", "must be a non-negative integer")
        capacity = min(capacity, MAX_CAPACITY)
        wait_s = min(prefer_wait(request), self.args.max_wait_s)

        # The gateway holds one poll at a time, so an older poll still held for it came
        # on a connection that is gone: end it (empty) so it cannot take commands.
        older = self.held.get(gw)
        if older is not None:
            older.superseded = True
            older.wake.set()
        me = self.held[gw] = HeldPoll()
        try:
            # 1. Store results and events, 2. requeue lost deliveries; durable at COMMIT,
            # before anything is acked.
            with self.store.transaction():
                acked = self.store.save_uploads(gw, results, events)
                requeued = self.store.requeue_lost(gw, pending)
            # 3. Hand out queued commands; 4. with none, hold until one is queued or the
            # wait expires. With capacity 0 take() returns nothing, so only the deadline
            # (or a newer poll) ends the hold: no spinning.
            loop = asyncio.get_running_loop()
            deadline = loop.time() + wait_s
            while True:
                me.wake.clear()
                if me.superseded or self.stopping:
                    commands = []
                    break
                commands = self.store.take(gw, capacity)
                left = deadline - loop.time()
                if commands or left <= 0:
                    break
                try:
                    await asyncio.wait_for(me.wake.wait(), left)
                except asyncio.TimeoutError:
                    pass  # one more take, then answer
        finally:
            if self.held.get(gw) is me:
                del self.held[gw]
        log.info("%s poll: %d result(s), %d event(s), %d pending, capacity %d,"
                 " %d requeued -> %d command(s)%s", gw, len(results), len(events),
                 len(pending), capacity, requeued, len(commands),
                 " (superseded)" if me.superseded else "")
        return JSONResponse({"commands": commands, "acked": acked,
                             "poll": {"wait_s": self.args.wait_s}})

    # -- POST /v1/gateways/{gw}/results (early flush) -----------------------------------

    async def flush(self, request: Request):
        # Answered at once, even while a poll of the same gateway is held: it arrives as
        # another HTTP/2 stream and is handled by its own task.
        self.authorize(request)
        gw = request.path_params["gw"]
        results, events = self.uploads(await self.read_object(request))
        with self.store.transaction():
            acked = self.store.save_uploads(gw, results, events)
        log.info("%s flush: %d result(s), %d event(s)", gw, len(results), len(events))
        return JSONResponse({"acked": acked})

    # -- queueing a command: what an application calls ----------------------------------

    def enqueue(self, gw, command):
        """Queues `command` (a Command object, protocol.md "Objects") for gateway `gw`.

        Durable when it returns; wakes the gateway's held poll, which sends it at once.
        Raises ValueError for a command without a usable id, DuplicateId for an id already
        used for this gateway. Call it on the event loop's thread (from another thread:
        loop.call_soon_threadsafe).
        """
        cid = command.get("id") if isinstance(command, dict) else None
        if not isinstance(cid, str) or not 1 <= len(cid.encode()) <= MAX_ID_BYTES:
            raise ValueError(f"a command needs an `id`: a string of 1 to {MAX_ID_BYTES} bytes")
        self.store.add_command(gw, command)
        waiting = self.held.get(gw)
        if waiting is not None:
            waiting.wake.set()
        log.info("%s queued %s", gw, cid)
        return cid

    # -- test fixtures (--test-fixtures; docs/conformance.md) ---------------------------

    async def fixture_enqueue(self, request: Request):
        self.authorize(request)
        command = await self.read_object(request)
        try:
            cid = self.enqueue(request.path_params["gw"], command)
        except DuplicateId as e:
            raise Refused(409, str(e))
        except ValueError as e:
            raise Refused(400, str(e))
        return JSONResponse({"id": cid})

    async def fixture_results(self, request: Request):
        self.authorize(request)
        return JSONResponse({"results": self.store.results(request.path_params["gw"])})

    # -- shutdown -----------------------------------------------------------------------

    def stop(self):
        """Ends every held poll now (empty), so connections can close promptly."""
        self.stopping = True
        for held in self.held.values():
            held.wake.set()


# ---------------------------------------------------------------------------------------
# Start-up
# ---------------------------------------------------------------------------------------

def patch_hypercorn_0_13():
    """Two fixes to Hypercorn 0.13.2's connection handling (TCPServer):

    - It does not tell the protocol when a client closes its connection cleanly, so each
      closed HTTP/2 connection left a task waiting forever, garbage-collected later with
      "Task was destroyed but it is pending!" on stderr (pgjones/hypercorn#50). Feed it
      Closed() when the read loop ends, as later releases do; a second one is harmless.
    - Closing a TLS connection whose client was still sending (a gateway's next poll
      racing our shutdown) raises ssl.SSLError out of the connection task, which makes
      a SIGTERM exit with a traceback. The connection is going away: ignore it.
    """
    from hypercorn.asyncio.tcp_server import TCPServer
    from hypercorn.events import Closed

    read_data, close = TCPServer._read_data, TCPServer._close

    async def _read_data(self):
        await read_data(self)
        await self.protocol.handle(Closed())

    async def _close(self):
        try:
            await close(self)
        except ssl.SSLError:
            await self._stop_keep_alive_timeout()  # what close() would have done next

    TCPServer._read_data, TCPServer._close = _read_data, _close


def listening_socket(listen):
    """Binds HOST:PORT (IPv6 as [::1]:PORT; port 0 picks a free one). Binding here, not
    in Hypercorn, tells us the real port for the READY line."""
    host, sep, port = listen.rpartition(":")
    if not sep or not port.isdigit():
        raise SystemExit(f"--listen {listen!r}: expected HOST:PORT")
    host = host.strip("[]")
    family, kind, proto, _, address = socket.getaddrinfo(
        host, int(port), type=socket.SOCK_STREAM, flags=socket.AI_PASSIVE)[0]
    sock = socket.socket(family, kind, proto)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    sock.bind(address)
    return sock


async def run(args):
    sock = listening_socket(args.listen)
    host = args.listen.rpartition(":")[0]
    port = sock.getsockname()[1]
    cloud = Cloud(args)

    config = Config()
    config.bind = [f"fd://{sock.detach()}"]   # Hypercorn owns the socket from here
    config.certfile, config.keyfile = args.cert, args.key
    config.alpn_protocols = ["h2", "http/1.1"]
    # Hypercorn closes a connection idle (no request in flight) this long; the gateway's
    # own client closes one after 90 s, so let it decide.
    config.keep_alive_timeout = 120
    config.graceful_timeout = 5
    config.accesslog = logging.getLogger("access")   # stderr, like every log here
    config.errorlog = logging.getLogger("hypercorn")

    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for signum in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(signum, stop.set)

    async def until_stopped():
        # Hypercorn calls this once its listener accepts connections; when it returns,
        # Hypercorn stops accepting and lets open requests finish.
        print(f"READY https={host}:{port}", flush=True)
        await stop.wait()
        log.info("stopping")
        cloud.stop()

    try:
        await serve(cloud.app, config, shutdown_trigger=until_stopped)
    finally:
        cloud.store.close()


def main():
    def count(text):
        value = int(text)
        if value < 0:
            raise argparse.ArgumentTypeError("must be 0 or more")
        return value

    p = argparse.ArgumentParser(description="Example tetherd cloud (protocol v1, JSON).")
    p.add_argument("--listen", required=True, help="HOST:PORT for HTTPS (HTTP/2 and 1.1)")
    p.add_argument("--cert", required=True, help="server certificate chain, PEM")
    p.add_argument("--key", required=True, help="its private key, PEM")
    p.add_argument("--db", required=True, help="SQLite database file (created if absent)")
    p.add_argument("--token", help="bearer token every request must carry")
    p.add_argument("--test-fixtures", action="store_true",
                   help="serve /test/gateways/{gw}/commands and /results (tests only)")
    p.add_argument("--wait-s", type=count, default=30,
                   help="poll.wait_s sent to gateways (default 30)")
    p.add_argument("--max-wait-s", type=count, default=60,
                   help="longest a poll is held, whatever Prefer asks (default 60)")
    p.add_argument("--max-body-bytes", type=count, default=1 << 20,
                   help="largest request body; larger gets 413 (default 1048576)")
    args = p.parse_args()
    if args.wait_s > 3600:
        p.error("--wait-s: at most 3600 (protocol.md, poll.wait_s)")

    logging.basicConfig(stream=sys.stderr, level=logging.INFO,
                        format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    try:  # fail here, with one line, rather than inside Hypercorn
        ssl.create_default_context(ssl.Purpose.CLIENT_AUTH).load_cert_chain(args.cert, args.key)
    except (OSError, ssl.SSLError) as e:
        raise SystemExit(f"--cert {args.cert} / --key {args.key}: {e}")
    if version("hypercorn").startswith("0.13."):
        patch_hypercorn_0_13()
    asyncio.run(run(args))


if __name__ == "__main__":
    main()
