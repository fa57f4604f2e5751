#!/usr/bin/env node
// An example cloud for tetherd: the gateway side of docs/protocol.md ("Cloud protocol v1")
// in one file, on Node.js's built-in HTTP/2 server and SQLite.
//
//   node cloud.js --listen 127.0.0.1:8443 --cert server.pem --key server-key.pem \
//                 --db cloud.db [--token TOKEN] [--test-fixtures]
//
// Read it top to bottom: command line, storage (SQLite), the protocol operations
// (store results, resend, take, enqueue), the held poll, HTTP plumbing, startup.
// It speaks JSON only (a protobuf request gets 415, and the gateway falls back to JSON).
'use strict';

const crypto = require('node:crypto');
const fs = require('node:fs');
const http2 = require('node:http2');
const sqlite3 = require('sqlite3');

// ---------------------------------------------------------------------------------------
// Command line
// ---------------------------------------------------------------------------------------

const USAGE = `usage: node cloud.js --listen HOST:PORT --cert FILE --key FILE --db FILE
                     [--token TOKEN] [--test-fixtures] [--wait-s N] [--max-wait-s N]
                     [--max-body-bytes N]`;

function parseArgs(argv) {
  const opts = { token: null, testFixtures: false, waitS: 30, maxWaitS: 60, maxBodyBytes: 1048576 };
  const valued = {
    '--listen': 'listen', '--cert': 'cert', '--key': 'key', '--db': 'db', '--token': 'token',
    '--wait-s': 'waitS', '--max-wait-s': 'maxWaitS', '--max-body-bytes': 'maxBodyBytes',
  };
  for (let i = 0; i < argv.length; i++) {
    const arg = argv[i];
    if (arg === '--test-fixtures') { opts.testFixtures = true; continue; }
    if (arg === '--help' || arg === '-h') { console.log(USAGE); process.exit(0); }
    const name = valued[arg];
    if (!name || i + 1 >= argv.length) usageError(`unexpected argument ${arg}`);
    opts[name] = argv[++i];
  }
  for (const required of ['listen', 'cert', 'key', 'db']) {
    if (!opts[required]) usageError(`--${required} is required`);
  }
  for (const name of ['waitS', 'maxWaitS', 'maxBodyBytes']) {
    const n = Number(opts[name]);
    if (!Number.isSafeInteger(n) || n < 0) usageError(`${name}: not a non-negative integer`);
    opts[name] = n;
  }
  if (opts.waitS > 3600) usageError('--wait-s: at most 3600 (protocol.md, poll.wait_s)');
  // HOST:PORT, or [IPv6]:PORT.
  const m = /^\[?([^\]]*)\]?:(\d+)$/.exec(opts.listen);
  if (!m) usageError('--listen takes HOST:PORT');
  opts.host = m[1];
  opts.port = Number(m[2]);
  return opts;
}

function usageError(message) {
  console.error(`cloud.js: ${message}\n${USAGE}`);
  process.exit(2);
}

const opts = parseArgs(process.argv.slice(2));

function log(...parts) {
  console.error(new Date().toISOString(), ...parts);
}

// ---------------------------------------------------------------------------------------
// Storage: SQLite, every change committed (fsynced) before the answer that reports it
// ---------------------------------------------------------------------------------------

// commands: what the application queued for each gateway. `seq` is the queue order;
// `state` is 'queued' (to send), 'delivered' (sent, no result yet) or 'done' (result
// stored). `body` is the Command object's JSON text, sent exactly as stored.
// results:  the first copy of each result a gateway sent, as received.
// events:   appliance events and gateway notices, as received.
const SCHEMA = `
CREATE TABLE IF NOT EXISTS commands (
  seq     INTEGER PRIMARY KEY AUTOINCREMENT,
  gateway TEXT NOT NULL,
  id      TEXT NOT NULL,
  body    TEXT NOT NULL,
  state   TEXT NOT NULL,
  UNIQUE (gateway, id)
);
CREATE INDEX IF NOT EXISTS commands_by_state ON commands (gateway, state, seq);
CREATE TABLE IF NOT EXISTS results (
  gateway    TEXT NOT NULL,
  command_id TEXT NOT NULL,
  body       TEXT NOT NULL,
  stored_at  TEXT NOT NULL,
  PRIMARY KEY (gateway, command_id)
);
CREATE TABLE IF NOT EXISTS events (
  seq         INTEGER PRIMARY KEY AUTOINCREMENT,
  gateway     TEXT NOT NULL,
  body        TEXT NOT NULL,
  received_at TEXT NOT NULL
);`;

let db;

// Promise wrappers around the sqlite3 callbacks.
const run = (sql, params = []) =>
  new Promise((resolve, reject) => db.run(sql, params, function done(err) {
    if (err) reject(err); else resolve(this);
  }));
const all = (sql, params = []) =>
  new Promise((resolve, reject) => db.all(sql, params, (err, rows) => (err ? reject(err) : resolve(rows))));
const exec = (sql) => new Promise((resolve, reject) => db.exec(sql, (err) => (err ? reject(err) : resolve())));

function openDatabase(file) {
  return new Promise((resolve, reject) => {
    db = new sqlite3.Database(file, (err) => (err ? reject(err) : resolve()));
  }).then(() => exec(`PRAGMA journal_mode = WAL; PRAGMA synchronous = FULL; ${SCHEMA}`));
}

// All database work runs one job at a time, in arrival order, on this promise chain. So
// two requests of one gateway (a poll and a flush, or an old and a new poll) can never
// interleave a read-modify-write, and each job can be one transaction on one connection.
let chain = Promise.resolve();
function exclusive(job) {
  const result = chain.then(job);
  chain = result.catch(() => {});
  return result;
}

// Runs `job` in a transaction; its changes are durable (WAL + synchronous=FULL) once the
// returned promise resolves, which is when the caller may acknowledge them.
function transaction(job) {
  return exclusive(async () => {
    await run('BEGIN IMMEDIATE');
    try {
      const value = await job();
      await run('COMMIT');
      return value;
    } catch (err) {
      await run('ROLLBACK').catch(() => {});
      throw err;
    }
  });
}

// ---------------------------------------------------------------------------------------
// The protocol's operations
// ---------------------------------------------------------------------------------------

// Stores results and events (inside a transaction) and returns the ids to acknowledge.
// protocol.md: "A result is sent again until acked, so the server must deduplicate by
// command_id". INSERT OR IGNORE keeps the FIRST copy; a later copy changes nothing but
// is acked again, since it is stored.
async function storeResultsAndEvents(gateway, results, events) {
  const now = new Date().toISOString();
  const acked = [];
  for (const r of results) {
    await run('INSERT OR IGNORE INTO results (gateway, command_id, body, stored_at) VALUES (?, ?, ?, ?)',
      [gateway, r.id, r.raw, now]);
    await run("UPDATE commands SET state = 'done' WHERE gateway = ? AND id = ?", [gateway, r.id]);
    if (!acked.includes(r.id)) acked.push(r.id);
  }
  for (const raw of events) {
    await run('INSERT INTO events (gateway, body, received_at) VALUES (?, ?, ?)', [gateway, raw, now]);
  }
  return acked;
}

// protocol.md "Resending": a command delivered earlier that is neither in this poll's
// `pending` nor answered (its result is stored by now, even one from this very request)
// was lost on the way; queue it again. It keeps its `seq`, so it goes back to the front
// of the queue (everything never delivered was queued after it) in its original order.
// Commands in `pending` (the gateway has them) are never resent.
async function requeueLost(gateway, pending) {
  const delivered = await all(
    "SELECT id FROM commands WHERE gateway = ? AND state = 'delivered' ORDER BY seq", [gateway]);
  const lost = delivered.map((row) => row.id).filter((id) => !pending.has(id));
  for (const id of lost) {
    await run("UPDATE commands SET state = 'queued' WHERE gateway = ? AND id = ?", [gateway, id]);
  }
  return lost;
}

// The gateway refuses a response over `cloud.max_response_bytes` (4 MiB by default), so
// one answer carries at most this much command JSON; the rest goes in the next poll.
const MAX_ANSWER_BYTES = 3 * 1024 * 1024;

// Takes up to `capacity` queued commands, in queue order, and marks them delivered
// (inside a transaction). Returns their JSON texts.
async function takeCommands(gateway, capacity) {
  const rows = await all(
    "SELECT id, body FROM commands WHERE gateway = ? AND state = 'queued' ORDER BY seq LIMIT ?",
    [gateway, capacity]);
  const taken = [];
  let bytes = 0;
  for (const row of rows) {
    bytes += Buffer.byteLength(row.body);
    if (taken.length > 0 && bytes > MAX_ANSWER_BYTES) break;
    await run("UPDATE commands SET state = 'delivered' WHERE gateway = ? AND id = ?", [gateway, row.id]);
    taken.push(row.body);
  }
  return taken;
}

// Queues a command for a gateway, durably, and wakes that gateway's held poll so the
// command leaves at once. THIS is what your application calls; the test fixture
// `POST /test/gateways/{gw}/commands` is a thin HTTP wrapper around it.
//
// `command` is a Command object (protocol.md "Objects") with a string `id`, unique per
// gateway, or that object's JSON text (kept byte for byte, so large integers stay exact).
// Resolves to the id; rejects with err.status 400 (no string id) or 409 (id already used).
async function enqueueCommand(gateway, command) {
  const text = typeof command === 'string' ? command : JSON.stringify(command);
  let object = command;
  if (typeof command === 'string') {
    try { object = JSON.parse(command); } catch (err) { throw httpError(400, `command is not JSON: ${err.message}`); }
  }
  if (!isObject(object) || typeof object.id !== 'string') {
    throw httpError(400, 'a command is an object with a string "id"');
  }
  await transaction(async () => {
    const existing = await all('SELECT 1 FROM commands WHERE gateway = ? AND id = ?', [gateway, object.id]);
    if (existing.length > 0) throw httpError(409, `command id ${object.id} is already used for this gateway`);
    await run("INSERT INTO commands (gateway, id, body, state) VALUES (?, ?, ?, 'queued')",
      [gateway, object.id, text.trim()]);
  });
  log(`enqueue gw=${gateway} id=${object.id}`);
  wake(gateway);
  return object.id;
}

// ---------------------------------------------------------------------------------------
// Held polls
// ---------------------------------------------------------------------------------------

// At most one poll per gateway is held. `generation` counts a gateway's polls: a held poll
// whose generation is no longer current was replaced by a newer poll (typically the
// gateway reconnected) and answers empty at once. `held` maps a gateway to the signal its
// held poll sleeps on; enqueueCommand() fires it.
const generation = new Map();
const held = new Map();

class Signal {
  constructor() {
    this.fired = false;
    this.promise = new Promise((resolve) => { this.resolve = resolve; });
  }
  fire() { this.fired = true; this.resolve(); }
}

function wake(gateway) {
  const waiter = held.get(gateway);
  if (waiter) waiter.signal.fire();
}

// A new poll: it becomes the current one and ends any older poll still held.
function beginPoll(gateway) {
  const gen = (generation.get(gateway) || 0) + 1;
  generation.set(gateway, gen);
  wake(gateway);
  held.delete(gateway);
  return gen;
}

// `Prefer: wait=N` (RFC 7240, whole seconds); 0 when absent or unparsable.
function preferWait(header) {
  for (const pref of String(header || '').split(',')) {
    const [key, value] = pref.split(';')[0].split('=');
    if (value !== undefined && key.trim().toLowerCase() === 'wait') {
      const n = value.trim().replace(/^"|"$/g, '');
      return /^\d+$/.test(n) ? Number(n) : 0;
    }
  }
  return 0;
}

// POST /v1/gateways/{gw}/poll
async function handlePoll(req, res, gateway, body) {
  const waitS = Math.min(preferWait(req.headers.prefer), opts.maxWaitS, 24 * 3600);
  const deadline = Date.now() + waitS * 1000;
  const gen = beginPoll(gateway);

  // (1) Store results and events, (2) requeue lost deliveries: one durable transaction,
  // before anything is acked.
  const { acked, lost } = await transaction(async () => {
    const ackedIds = await storeResultsAndEvents(gateway, body.results, body.events);
    return { acked: ackedIds, lost: await requeueLost(gateway, body.pending) };
  });
  if (lost.length) log(`poll gw=${gateway} resending ${lost.join(',')}`);

  // (3) Take commands; (4) none? Hold the request (see takeOrWait).
  const commands = await takeOrWait(gateway, gen, body.capacity, deadline, res);
  if (res.gone.fired) {
    // Commands taken for it, if any, are 'delivered' and come back by the resend rule.
    log(`poll gw=${gateway} client went away during the hold`);
    return;
  }

  log(`poll gw=${gateway} results=${body.results.length} acked=${acked.length} ` +
      `pending=${body.pending.size} capacity=${body.capacity} wait=${waitS}s commands=${commands.length}`);
  // Commands go out exactly as stored, so the response is assembled as text.
  sendJson(res, 200, `{"commands":[${commands.join(',')}],"acked":${JSON.stringify(acked)},` +
    `"poll":{"wait_s":${opts.waitS}}}`);
}

// Takes up to `capacity` commands for the poll `gen`; while there are none, sleeps until
// an enqueue, a newer poll, the client leaving, shutdown or the deadline, then looks again.
// The signal is armed BEFORE looking, so an enqueue committed while we look still wakes us.
// With capacity 0 it only sleeps (an enqueue wakes it to find it still may take nothing).
async function takeOrWait(gateway, gen, capacity, deadline, res) {
  // Still the current poll, its client still there (HTTP/2: the stream is open)?
  const current = () => generation.get(gateway) === gen && !res.gone.fired && !stopping;
  try {
    for (;;) {
      const signal = new Signal();
      if (current()) held.set(gateway, { gen, signal });
      const commands = capacity === 0 || !current() ? []
        : await transaction(() => (current() ? takeCommands(gateway, capacity) : []));
      if (commands.length > 0 || !current() || Date.now() >= deadline) return commands;
      let timer;
      const timeout = new Promise((resolve) => { timer = setTimeout(resolve, deadline - Date.now()); });
      await Promise.race([signal.promise, res.gone.promise, timeout]);
      clearTimeout(timer);
    }
  } finally {
    if (held.get(gateway)?.gen === gen) held.delete(gateway);
  }
}

// POST /v1/gateways/{gw}/results (early flush): store durably, ack, answer at once.
async function handleResults(req, res, gateway, body) {
  const acked = await transaction(() => storeResultsAndEvents(gateway, body.results, body.events));
  log(`results gw=${gateway} results=${body.results.length} events=${body.events.length} acked=${acked.length}`);
  sendJson(res, 200, JSON.stringify({ acked }));
}

// ---------------------------------------------------------------------------------------
// Request bodies: validation, and the raw text of each result and event
// ---------------------------------------------------------------------------------------

const STATUSES = new Set(['ok', 'error', 'timeout', 'unreachable', 'expired', 'rejected', 'interrupted', 'partial']);
const isObject = (v) => v !== null && typeof v === 'object' && !Array.isArray(v);
const isCount = (v) => Number.isSafeInteger(v) && v >= 0;
const absent = (v) => v === undefined || v === null;
// Largest `capacity` used as is (as good as unlimited).
const MAX_CAPACITY = 1000000;

// Checks a poll or flush body against protocol.md's types (unknown fields are ignored;
// absent or null fields take their defaults) and returns what the handlers use. Throws a
// 400 error naming the first problem.
function readGatewayBody(text, isPoll) {
  let body;
  try { body = JSON.parse(text); } catch (err) { throw httpError(400, `body is not JSON: ${err.message}`); }
  if (!isObject(body)) throw httpError(400, 'body is not a JSON object');
  const fields = rawMembers(text);
  const listOf = (name) => {
    if (absent(body[name])) return [];
    if (!Array.isArray(body[name])) throw httpError(400, `${name} is not an array`);
    return body[name];
  };

  const results = listOf('results');
  results.forEach((r, i) => checkResult(r, `results[${i}]`));
  const events = listOf('events');
  events.forEach((e, i) => {
    if (!isObject(e) || typeof e.kind !== 'string') throw httpError(400, `events[${i}] needs a string kind`);
    if (!absent(e.appliance) && typeof e.appliance !== 'string') throw httpError(400, `events[${i}].appliance is not a string`);
  });
  // Each result and event is stored as the gateway sent it, byte for byte: JSON.parse
  // would round integers past 2^53 in payloads.
  const rawResults = rawElements(fields.get('results'), results.length);
  const rawEvents = rawElements(fields.get('events'), events.length);
  const out = {
    results: results.map((r, i) => ({ id: r.command_id, raw: rawResults ? rawResults[i] : JSON.stringify(r) })),
    events: events.map((e, i) => (rawEvents ? rawEvents[i] : JSON.stringify(e))),
  };
  if (!isPoll) return out;

  for (const name of ['pending', 'waiting']) {
    if (!listOf(name).every((id) => typeof id === 'string')) throw httpError(400, `${name} is not an array of strings`);
  }
  out.pending = new Set(listOf('pending'));
  // The gateway always sends capacity; without it, 0 (protocol.md): keep commands queued.
  if (!absent(body.capacity) && !isCount(body.capacity)) throw httpError(400, 'capacity is not a non-negative integer');
  out.capacity = absent(body.capacity) ? 0 : Math.min(body.capacity, MAX_CAPACITY);
  return out;
}

function checkResult(r, where) {
  const fail = (what) => { throw httpError(400, `${where}: ${what}`); };
  if (!isObject(r)) fail('not an object');
  if (typeof r.command_id !== 'string') fail('command_id is not a string');
  if (!STATUSES.has(r.status)) fail('status is not one of protocol.md\'s statuses');
  if (!absent(r.error) && typeof r.error !== 'string') fail('error is not a string');
  if (!absent(r.duration_ms) && !isCount(r.duration_ms)) fail('duration_ms is not a non-negative integer');
  if (!absent(r.items)) {
    if (!Array.isArray(r.items)) fail('items is not an array');
    r.items.forEach((item, i) => {
      if (!isObject(item) || typeof item.target !== 'string' || !STATUSES.has(item.status)) {
        fail(`items[${i}] needs a string target and a status`);
      }
    });
  }
}

// A tiny scanner over JSON text that JSON.parse has already accepted (so it can be
// simple): the raw text of each member of the top-level object, and of each element of
// an array. Where a key repeats, the last one wins, as in JSON.parse.
function skipSpace(s, i) {
  while (i < s.length && ' \t\r\n'.includes(s[i])) i++;
  return i;
}
function skipValue(s, i) {
  if (s[i] === '"') {
    for (i++; s[i] !== '"'; i++) if (s[i] === '\\') i++;
    return i + 1;
  }
  if (s[i] === '{' || s[i] === '[') {
    for (let depth = 0; ; i++) {
      if (s[i] === '"') i = skipValue(s, i) - 1;
      else if (s[i] === '{' || s[i] === '[') depth++;
      else if ((s[i] === '}' || s[i] === ']') && --depth === 0) return i + 1;
    }
  }
  while (i < s.length && !',:}] \t\r\n'.includes(s[i])) i++; // number, true, false, null
  return i;
}
function rawMembers(s) {
  const members = new Map();
  let i = skipSpace(s, skipSpace(s, 0) + 1); // past '{'
  while (s[i] === '"') {
    const end = skipValue(s, i);
    const key = JSON.parse(s.slice(i, end));
    const start = skipSpace(s, skipSpace(s, end) + 1); // past ':'
    const stop = skipValue(s, start);
    members.set(key, s.slice(start, stop));
    i = skipSpace(s, stop);
    if (s[i] === ',') i = skipSpace(s, i + 1);
  }
  return members;
}
// The raw elements of an array's text, or null when they do not number `expected`.
function rawElements(s, expected) {
  if (s === undefined || s[0] !== '[') return expected === 0 ? [] : null;
  const elements = [];
  let i = skipSpace(s, 1);
  while (s[i] !== ']') {
    const end = skipValue(s, i);
    elements.push(s.slice(i, end));
    i = skipSpace(s, end);
    if (s[i] === ',') i = skipSpace(s, i + 1);
  }
  return elements.length === expected ? elements : null;
}

// ---------------------------------------------------------------------------------------
// HTTP plumbing
// ---------------------------------------------------------------------------------------

function httpError(status, message) {
  return Object.assign(new Error(message), { status });
}

function sendJson(res, status, text, headers = {}) {
  if (res.writableEnded || res.gone.fired) return; // answered already, or client gone
  res.writeHead(status, {
    'content-type': 'application/json',
    'content-length': Buffer.byteLength(text),
    ...headers,
  });
  res.end(text);
}

function sendError(res, status, message, headers) {
  sendJson(res, status, JSON.stringify({ error: message }), headers);
}

// `Authorization: Bearer <token>`, compared in constant time (both sides hashed first, so
// even the length is not revealed).
function authorized(req) {
  if (opts.token === null) return true;
  const m = /^\s*bearer\s+(\S+)\s*$/i.exec(req.headers.authorization || '');
  if (!m) return false;
  const digest = (s) => crypto.createHash('sha256').update(s).digest();
  return crypto.timingSafeEqual(digest(m[1]), digest(opts.token));
}

// Reads a request body of at most `limit` bytes. Over it: a 413 error, as soon as the
// Content-Length says so or the streamed bytes pass it. The rest is read and discarded,
// so the client sees a clean answer rather than a reset.
function readBody(req, limit) {
  return new Promise((resolve, reject) => {
    const declared = req.headers['content-length'];
    let tooLarge = declared !== undefined && Number(declared) > limit;
    if (tooLarge) reject(httpError(413, `body over ${limit} bytes`));
    const chunks = [];
    let size = 0;
    req.on('data', (chunk) => {
      if (tooLarge) return;
      size += chunk.length;
      if (size > limit) {
        tooLarge = true;
        chunks.length = 0;
        reject(httpError(413, `body over ${limit} bytes`));
      } else chunks.push(chunk);
    });
    req.on('end', () => resolve(Buffer.concat(chunks).toString('utf8')));
    req.on('error', reject);
    req.on('close', () => reject(httpError(400, 'request ended early'))); // no-op once resolved
  });
}

// The only routes. {gw} is one path segment, percent-decoded.
const ROUTES = [
  { method: 'POST', re: /^\/v1\/gateways\/([^/]+)\/poll$/, handler: gatewayRequest(handlePoll, true) },
  { method: 'POST', re: /^\/v1\/gateways\/([^/]+)\/results$/, handler: gatewayRequest(handleResults, false) },
  { method: 'POST', re: /^\/test\/gateways\/([^/]+)\/commands$/, handler: fixtureEnqueue, fixture: true },
  { method: 'GET', re: /^\/test\/gateways\/([^/]+)\/results$/, handler: fixtureResults, fixture: true },
];

function gatewayRequest(handler, isPoll) {
  return async (req, res, gateway) => {
    const body = readGatewayBody(await readBody(req, opts.maxBodyBytes), isPoll);
    await handler(req, res, gateway, body);
  };
}

// Test fixture (docs/conformance.md): queue one Command, as the application would.
async function fixtureEnqueue(req, res, gateway) {
  const id = await enqueueCommand(gateway, await readBody(req, opts.maxBodyBytes));
  sendJson(res, 200, JSON.stringify({ id }));
}

// Test fixture: every stored result of a gateway, in the order stored, as received.
async function fixtureResults(req, res, gateway) {
  const rows = await exclusive(() =>
    all('SELECT body FROM results WHERE gateway = ? ORDER BY rowid', [gateway]));
  sendJson(res, 200, `{"results":[${rows.map((row) => row.body).join(',')}]}`);
}

let inflight = 0;

async function onRequest(req, res) {
  inflight++;
  // Fired when the response is done or the client went away (connection or stream closed).
  res.gone = new Signal();
  res.once('close', () => {
    res.gone.fire();
    if (--inflight === 0 && stopping) finishShutdown();
  });
  req.on('error', (err) => log(`request error: ${err.message}`));
  res.on('error', (err) => log(`response error: ${err.message}`));
  try {
    if (stopping) throw httpError(503, 'shutting down');
    if (!authorized(req)) {
      return sendError(res, 401, 'missing or wrong bearer token', { 'www-authenticate': 'Bearer' });
    }
    const path = req.url.split('?')[0];
    const matching = ROUTES.filter((r) => r.re.test(path) && (opts.testFixtures || !r.fixture));
    const route = matching.find((r) => r.method === req.method);
    if (!route) {
      if (matching.length) return sendError(res, 405, 'method not allowed', { allow: matching[0].method });
      return sendError(res, 404, 'not found');
    }
    // This example speaks JSON only; protocol.md "Protocol Buffers": a JSON-only server
    // answers 415, and the gateway resends the request in JSON. Other types read as JSON.
    const type = String(req.headers['content-type'] || '').split(';')[0].trim().toLowerCase();
    if (type === 'application/protobuf' || type === 'application/x-protobuf') {
      return sendError(res, 415, 'this cloud speaks application/json only');
    }
    let gateway;
    try { gateway = decodeURIComponent(route.re.exec(path)[1]); } catch { throw httpError(400, 'bad gateway id'); }
    await route.handler(req, res, gateway);
  } catch (err) {
    if (err.status) {
      log(`${req.method} ${req.url}: ${err.status} ${err.message}`);
      sendError(res, err.status, err.message);
    } else {
      // A database failure: nothing was acked, so the gateway keeps its results and retries.
      log(`${req.method} ${req.url}: ${err.stack || err}`);
      sendError(res, 500, 'internal error');
    }
  }
}

// ---------------------------------------------------------------------------------------
// Startup and shutdown
// ---------------------------------------------------------------------------------------

let server;
let stopping = false;
const sessions = new Set(); // HTTP/2 sessions
const sockets = new Set(); // every TLS connection (HTTP/2 and HTTP/1.1)

async function main() {
  await openDatabase(opts.db);
  server = http2.createSecureServer({
    cert: fs.readFileSync(opts.cert),
    key: fs.readFileSync(opts.key),
    allowHTTP1: true, // HTTP/1.1 works too; the gateway then uses a second connection
  });
  server.on('request', onRequest);
  server.on('secureConnection', (socket) => {
    sockets.add(socket);
    socket.on('close', () => sockets.delete(socket));
  });
  server.on('session', (session) => {
    sessions.add(session);
    session.on('close', () => sessions.delete(session));
  });
  // A client that drops its connection (ECONNRESET) is routine, not worth a log line.
  const connectionError = (err) => { if (err.code !== 'ECONNRESET') log(`connection error: ${err.message}`); };
  server.on('sessionError', connectionError);
  server.on('clientError', connectionError);
  server.on('tlsClientError', (err) => log(`TLS error: ${err.message}`));
  // Node answers the gateway's HTTP/2 PINGs itself, and puts no timeout on idle streams,
  // so a poll can be held as long as --max-wait-s.
  server.setTimeout(0);
  await new Promise((resolve, reject) => {
    server.once('error', reject);
    server.listen(opts.port, opts.host, resolve);
  });
  const host = opts.host.includes(':') ? `[${opts.host}]` : opts.host;
  log(`listening on ${host}:${server.address().port}, database ${opts.db}` +
      `${opts.testFixtures ? ', test fixtures on' : ''}${opts.token === null ? ', no token' : ''}`);
  process.stdout.write(`READY https=${host}:${server.address().port}\n`);
}

// SIGTERM/SIGINT: stop accepting, answer held polls (empty), let running requests finish,
// let the connections deliver those answers and close, then close the database.
function shutdown(signal) {
  if (stopping) return;
  stopping = true;
  log(`${signal}: stopping`);
  server.close();
  for (const waiter of held.values()) waiter.signal.fire();
  // HTTP/2 GOAWAY: the gateway opens no new request on this connection and closes it once
  // its open requests are answered, then reconnects. (session.close() would also end the
  // connection from this side as soon as the last answer is queued, racing that answer.)
  for (const session of sessions) session.goaway();
  setTimeout(() => { log('requests did not finish in time'); finishShutdown(); }, 5000).unref();
  if (inflight === 0) finishShutdown();
}

let finishing = false;
function finishShutdown() {
  if (finishing) return;
  finishing = true;
  // Every request is answered. HTTP/2 clients close their connections after the GOAWAY;
  // HTTP/1.1 connections are idle now and are ended from here (after buffered answers go
  // out). Exit once all are closed, or after 2 s.
  for (const socket of sockets) if (socket.alpnProtocol !== 'h2') socket.end();
  const closed = [...sockets].map((socket) => new Promise((resolve) => socket.once('close', resolve)));
  const enough = new Promise((resolve) => setTimeout(resolve, 2000).unref());
  Promise.race([Promise.all(closed), enough]).then(() => chain).then(() => db.close((err) => {
    if (err) log(`closing the database: ${err.message}`);
    process.exit(err ? 1 : 0);
  }));
}

process.on('SIGTERM', () => shutdown('SIGTERM'));
process.on('SIGINT', () => shutdown('SIGINT'));

main().catch((err) => {
  log(`cannot start: ${err.message}`);
  process.exit(1);
});
