// Write edge-replicator plugins in JavaScript: per-record views in, outcomes out.
//
// The contract (wit/plugin.wit, world edge-replicator:plugin@0.1.0) hands a plugin its batch as
// columns of integers plus one flat byte buffer; this module turns that into Record views and
// encodes the answers back, so a plugin is a class with a constructor(config) and process(rec):
//
//   import { KEEP, DROP, exportPlugin } from '../er-plugin.js';
//
//   class SiteFilter {
//     constructor(config) {
//       config.checkKnown(['site']);
//       this.site = config.require('site');
//     }
//     process(rec) {
//       return rec.headerStr('site') === this.site ? KEEP : DROP;
//     }
//   }
//
//   export const guest = exportPlugin(SiteFilter);   // componentize-js exports `guest`
//
// Unchanged key, value, header and topic bytes of a rec.toNew() copy go back to the host as
// references into the input, not copies (the same as the Rust SDK). JSON written by withJson and
// toJsonBytes is compact with object keys sorted, like the Rust SDK's output (numbers are
// JavaScript numbers: see the limits in plugins/README.md).

import { log as hostLog, counterAdd as hostCounterAdd } from 'edge-replicator:plugin/host@0.1.0';

/** Length marking a null byte range in the contract's batch columns. */
export const NULL_LEN = 0xffffffff;
const TOMBSTONE_NOT_JSON = 'value is null (a tombstone), not JSON';

const utf8 = new TextDecoder('utf-8', { fatal: true });
const encoder = new TextEncoder();

/** A setting is missing, unknown or malformed; thrown from a constructor it rejects the config. */
export class ConfigError extends Error {
  name = 'ConfigError';
}

/** The value is null (a tombstone) or not JSON; the message says which, like the Rust SDK. */
export class JsonError extends Error {
  name = 'JsonError';
}

/** The plugin's settings from the route config, in config order (a key may repeat). */
export class Config {
  constructor(entries) {
    this.entries = entries.map(([k, v]) => [String(k), String(v)]);
  }

  /** The last value given for `key`, or `fallback`. */
  get(key, fallback = undefined) {
    for (let i = this.entries.length - 1; i >= 0; i--) {
      if (this.entries[i][0] === key) return this.entries[i][1];
    }
    return fallback;
  }

  /** Every value given for `key`, in config order (repeatable settings). */
  getAll(key) {
    return this.entries.filter(([k]) => k === key).map(([, v]) => v);
  }

  /** The value of `key`; a ConfigError naming the key when it is missing. */
  require(key) {
    const v = this.get(key);
    if (v === undefined) throw new ConfigError(`missing required setting "${key}"`);
    return v;
  }

  /** Entries whose key starts with `prefix`, with the prefix removed, in config order. */
  withPrefix(prefix) {
    return this.entries
      .filter(([k]) => k.startsWith(prefix))
      .map(([k, v]) => [k.slice(prefix.length), v]);
  }

  /** Rejects keys that are neither in `known` nor start with a `known` entry ending in `.`
   * (so `rename.` accepts `rename.temp`). Catches typos in route configs. */
  checkKnown(known) {
    for (const [k] of this.entries) {
      if (!known.some((n) => k === n || (n.endsWith('.') && k.startsWith(n)))) {
        throw new ConfigError(`unknown setting "${k}" (known: ${known.join(', ')})`);
      }
    }
  }
}

function text(bytes) {
  if (bytes === null) return null;
  try {
    return utf8.decode(bytes);
  } catch {
    return null;
  }
}

/** Bytes of the input batch, sent back as a span instead of a copy. */
class In {
  constructor(offset, len) {
    this.offset = offset;
    this.len = len;
  }
}

/** A view of one input record. Bytes are Uint8Array views into the batch (no copy), or null for
 * a null key, value or header value. Offsets and timestamps are Numbers (exact below 2^53). */
export class Record {
  constructor(batch, index) {
    this.batch = batch;
    this.index = index;
    this.f = index * 6;
  }

  span(offset, len) {
    if (len === NULL_LEN) return null;
    return this.batch.data.subarray(offset, offset + len);
  }

  /** Topic name. */
  get topic() {
    return this.batch.topics[this.batch.recordTopics[this.index]];
  }

  /** Source partition. */
  get partition() {
    return this.batch.partitions[this.index];
  }

  /** Source offset. */
  get offset() {
    return Number(this.batch.offsets[this.index]);
  }

  /** Timestamp, milliseconds since the Unix epoch. */
  get timestamp() {
    return Number(this.batch.timestamps[this.index]);
  }

  /** Key bytes; null for a null key. */
  get key() {
    const rf = this.batch.recordFields;
    return this.span(rf[this.f], rf[this.f + 1]);
  }

  /** Value bytes; null for a null value (a tombstone). */
  get value() {
    const rf = this.batch.recordFields;
    return this.span(rf[this.f + 2], rf[this.f + 3]);
  }

  /** Key as text; null when null or not UTF-8. */
  keyStr() {
    return text(this.key);
  }

  /** Value as text; null when null or not UTF-8. */
  valueStr() {
    return text(this.value);
  }

  /** Whether the value is null: a tombstone, which deletes its key on a compacted topic.
   * Tombstones have no JSON: decide about them before calling json(). */
  isTombstone() {
    return this.batch.recordFields[this.f + 3] === NULL_LEN;
  }

  * headerFields() {
    const rf = this.batch.recordFields;
    const hf = this.batch.headerFields;
    const start = rf[this.f + 4];
    const end = start + rf[this.f + 5];
    for (let h = start; h < end; h++) {
      yield [hf[h * 4], hf[h * 4 + 1], hf[h * 4 + 2], hf[h * 4 + 3]];
    }
  }

  /** All headers in order as [name, value]; names may repeat, a value may be null. A name that
   * is not UTF-8 reads as "" (as in the Rust SDK). */
  headers() {
    const out = [];
    for (const [n, nl, v, vl] of this.headerFields()) {
      out.push([text(this.span(n, nl)) ?? '', this.span(v, vl)]);
    }
    return out;
  }

  /** Value of the last header called `name` (Kafka's lastHeader); null when there is none or
   * its value is null. */
  header(name) {
    const want = encoder.encode(name);
    const data = this.batch.data;
    let found = null;
    for (const [n, nl, v, vl] of this.headerFields()) {
      if (name === '') {
        if ((text(this.span(n, nl)) ?? '') === '') found = [v, vl];
        continue;
      }
      if (nl !== want.length) continue;
      let same = true;
      for (let i = 0; i < nl && same; i++) same = data[n + i] === want[i];
      if (same) found = [v, vl];
    }
    return found === null ? null : this.span(found[0], found[1]);
  }

  /** header(name) as text; null when absent, null or not UTF-8. */
  headerStr(name) {
    return text(this.header(name));
  }

  /** The value parsed as JSON. Throws JsonError for a tombstone ("value is null (a tombstone),
   * not JSON") and for a value that is not JSON. */
  json() {
    return parseJson(this.value);
  }

  /** A replacement that starts as an unchanged copy of this record. Its unchanged key, value
   * and headers go back to the host as references into the input. */
  toNew() {
    const rf = this.batch.recordFields;
    const f = this.f;
    const r = new NewRecord();
    r.key = rf[f + 1] === NULL_LEN ? null : new In(rf[f], rf[f + 1]);
    r.value = rf[f + 3] === NULL_LEN ? null : new In(rf[f + 2], rf[f + 3]);
    for (const [n, nl, v, vl] of this.headerFields()) {
      const name = text(this.span(n, nl)) ?? '';
      r.headerList.push([name, new In(n, nl), vl === NULL_LEN ? null : new In(v, vl)]);
    }
    return r;
  }
}

function bytes(v) {
  if (typeof v === 'string') return encoder.encode(v);
  if (v instanceof Uint8Array) return v.slice();
  if (ArrayBuffer.isView(v)) return new Uint8Array(v.buffer.slice(v.byteOffset, v.byteOffset + v.byteLength));
  throw new TypeError(`expected a string or bytes, got ${typeof v}`);
}

/** A record produced by replace(). Start from rec.toNew() and chain with* calls; each returns
 * the record. `new NewRecord()` alone is an empty record (null key and value, no headers) on the
 * input's topic, partition and timestamp. */
export class NewRecord {
  constructor() {
    this.topic = null;
    this.partition = null;
    this.key = null;
    this.value = null;
    this.timestamp = null;
    /** [name, name span or null, value (In, Uint8Array or null)] */
    this.headerList = [];
  }

  /** Sets the destination topic. */
  withTopic(topic) {
    this.topic = String(topic);
    return this;
  }

  /** Sets the destination partition. */
  withPartition(partition) {
    this.partition = partition;
    return this;
  }

  /** Sets the key: text, bytes, or null for a null key. */
  withKey(key) {
    this.key = key === null ? null : bytes(key);
    return this;
  }

  /** Sets the value: text or bytes. */
  withValue(value) {
    this.value = bytes(value);
    return this;
  }

  /** Sets the value to the compact JSON text of `value` (see toJsonBytes). */
  withJson(value) {
    this.value = toJsonBytes(value);
    return this;
  }

  /** Makes the value null (a tombstone). */
  withNullValue() {
    this.value = null;
    return this;
  }

  /** Sets header `name` to `value` (text or bytes), replacing every header of that name. */
  withHeader(name, value) {
    this.withoutHeader(name);
    this.headerList.push([String(name), null, bytes(value)]);
    return this;
  }

  /** Sets header `name` to a null value, replacing every header of that name. */
  withNullHeader(name) {
    this.withoutHeader(name);
    this.headerList.push([String(name), null, null]);
    return this;
  }

  /** Removes every header called `name`. */
  withoutHeader(name) {
    this.headerList = this.headerList.filter(([n]) => n !== name);
    return this;
  }

  /** Sets the timestamp (ms since the Unix epoch). */
  withTimestamp(timestamp) {
    this.timestamp = timestamp;
    return this;
  }
}

class Outcome {
  constructor(wit, records = null) {
    this.wit = wit;
    this.records = records;
  }
}

/** Pass the record on unchanged (the cheapest outcome: nothing is sent back). */
export const KEEP = new Outcome({ tag: 'keep' });
/** Drop the record. */
export const DROP = new Outcome({ tag: 'drop' });

/** Replaces the record with these NewRecords (zero or more, in order; none drops it). */
export function replace(...records) {
  for (const r of records) {
    if (!(r instanceof NewRecord)) throw new TypeError('replace() takes NewRecord values');
  }
  return new Outcome(null, records);
}

/** The record cannot be processed; the route's error policy applies to it alone. */
export function fail(message) {
  return new Outcome({ tag: 'fail', val: String(message instanceof Error ? message.message : message) });
}

/** `TypeError: msg (filter.js:12)`: an exception and, when the engine says, where. */
function describe(e) {
  if (!(e instanceof Error)) return String(e);
  // The innermost frame of the plugin's own code, not this module's.
  const at = [...(e.stack ?? '').matchAll(/([^/\s()@]+\.js):(\d+)/g)]
    .find((m) => m[1] !== 'er-plugin.js');
  return `${e.name}: ${e.message}${at ? ` (${at[1]}:${at[2]})` : ''}`;
}

/** Encodes outcomes into the contract's flat batch-result. */
class Output {
  constructor(n) {
    this.n = n;
    this.outcomes = [];
    this.records = [];
    this.headers = [];
    this.chunks = [];
    this.len = 0;
  }

  out(b) {
    const span = { offset: this.len, len: b.length };
    this.chunks.push(b);
    this.len += b.length;
    return span;
  }

  bytesRef(v) {
    if (v === null || v === undefined) return { tag: 'null' };
    if (v instanceof In) return { tag: 'input', val: { offset: v.offset, len: v.len } };
    return { tag: 'output', val: this.out(v) };
  }

  record(r) {
    const start = this.headers.length;
    for (const [name, nameRef, value] of r.headerList) {
      const t = nameRef !== null
        ? { tag: 'input', val: { offset: nameRef.offset, len: nameRef.len } }
        : { tag: 'output', val: this.out(encoder.encode(name)) };
      this.headers.push({ name: t, value: this.bytesRef(value) });
    }
    return {
      topic: r.topic === null ? undefined : { tag: 'output', val: this.out(encoder.encode(r.topic)) },
      partition: r.partition === null ? undefined : r.partition,
      key: this.bytesRef(r.key),
      value: this.bytesRef(r.value),
      headers: { start, count: r.headerList.length },
      timestamp: r.timestamp === null ? undefined : BigInt(r.timestamp),
    };
  }

  push(outcome) {
    if (!(outcome instanceof Outcome)) {
      throw new TypeError(`process() must return KEEP, DROP, replace(...) or fail(...), got ${typeof outcome}`);
    }
    if (outcome.records === null) {
      this.outcomes.push(outcome.wit);
      return;
    }
    const start = this.records.length;
    for (const r of outcome.records) this.records.push(this.record(r));
    this.outcomes.push({ tag: 'replace', val: { start, count: outcome.records.length } });
  }

  finish() {
    if (this.outcomes.length !== this.n) {
      throw `plugin returned ${this.outcomes.length} outcomes for a batch of ${this.n} records`;
    }
    const data = new Uint8Array(this.len);
    let at = 0;
    for (const c of this.chunks) {
      data.set(c, at);
      at += c.length;
    }
    return { outcomes: this.outcomes, records: this.records, headers: this.headers, data };
  }
}

/**
 * The `guest` export componentize-js expects: builds one `new PluginClass(config)` per instance
 * in init, then runs its process (or processBatch, when the class has one) on every batch.
 *
 * A string thrown by init or processBatch is the contract's error result (componentize-js maps
 * a thrown value of a `result` function to its `err`); anything else thrown would trap.
 */
export function exportPlugin(PluginClass) {
  let plugin = null;
  return {
    init(config) {
      try {
        plugin = new PluginClass(new Config(config));
      } catch (e) {
        throw e instanceof ConfigError ? e.message : describe(e);
      }
    },
    processBatch(batch) {
      if (plugin === null) throw 'process-batch called before init';
      const n = batch.recordTopics.length;
      const records = new Array(n);
      for (let i = 0; i < n; i++) records[i] = new Record(batch, i);
      const out = new Output(n);
      try {
        if (typeof plugin.processBatch === 'function') {
          for (const o of plugin.processBatch(records)) out.push(o);
        } else {
          for (const rec of records) {
            let o;
            try {
              o = plugin.process(rec);
            } catch (e) {
              // One record's exception fails that record only, like fail().
              o = fail(describe(e));
            }
            out.push(o);
          }
        }
      } catch (e) {
        throw describe(e);
      }
      return out.finish();
    },
  };
}

const LEVELS = ['trace', 'debug', 'info', 'warn', 'error'];

/** Emits a log event through the host, attributed to this plugin:
 * log('warn', 'odd value', { sensor: 's-1' }). The host rate-limits. */
export function log(level, message, fields = {}) {
  if (!LEVELS.includes(level)) throw new TypeError(`log level "${level}": expected one of ${LEVELS.join(', ')}`);
  hostLog(level, String(message), Object.entries(fields).map(([k, v]) => [String(k), String(v)]));
}

/** Adds `delta` to this plugin's counter `name` (reported with the host's plugin stats). */
export function counterAdd(name, delta = 1) {
  hostCounterAdd(String(name), BigInt(delta));
}

// --- JSON ---------------------------------------------------------------------------------------

/** Parses bytes (UTF-8) as JSON; JsonError otherwise, also for null (a tombstone). */
export function parseJson(value) {
  if (value === null) throw new JsonError(TOMBSTONE_NOT_JSON);
  let s;
  try {
    s = utf8.decode(value);
  } catch {
    throw new JsonError('value is not JSON: not UTF-8');
  }
  try {
    return JSON.parse(s);
  } catch (e) {
    throw new JsonError(`value is not JSON: ${e.message}`);
  }
}

// UTF-16 order differs from code point (and so UTF-8 byte) order only between surrogates and
// U+E000..U+FFFF; keys are compared by code point so the order is the Rust SDK's.
function byCodePoint(a, b) {
  if (a === b) return 0;
  const n = Math.min(a.length, b.length);
  for (let i = 0; i < n; i++) {
    const x = a.charCodeAt(i);
    const y = b.charCodeAt(i);
    if (x !== y) {
      const hx = x >= 0xd800 && x <= 0xdfff;
      const hy = y >= 0xd800 && y <= 0xdfff;
      if (hx !== hy) return hx ? 1 : -1;
      return x - y;
    }
  }
  return a.length - b.length;
}

function stringify(v) {
  if (v === null || typeof v !== 'object') {
    const s = JSON.stringify(v);
    if (s === undefined) throw new TypeError(`${typeof v} is not JSON`);
    if (typeof v === 'number' && !Number.isFinite(v)) throw new TypeError(`${v} is not JSON`);
    return s;
  }
  if (Array.isArray(v)) return `[${v.map(stringify).join(',')}]`;
  const keys = Object.keys(v).filter((k) => v[k] !== undefined).sort(byCodePoint);
  return `{${keys.map((k) => `${JSON.stringify(k)}:${stringify(v[k])}`).join(',')}}`;
}

/** Compact JSON text of `value` as UTF-8, object keys sorted by code point (the Rust SDK's
 * order). Numbers are written as JavaScript writes them (31.0 becomes 31). */
export function toJsonBytes(value) {
  return encoder.encode(stringify(value));
}

const INDEX = /^[0-9]+$/;
const has = (o, k) => Object.prototype.hasOwnProperty.call(o, k);
const isObject = (v) => v !== null && typeof v === 'object' && !Array.isArray(v);
// An own property even for keys like "__proto__", which plain assignment would not create.
const put = (o, k, v) => Object.defineProperty(o, k, { value: v, writable: true, enumerable: true, configurable: true });

function step(v, key) {
  if (isObject(v)) return has(v, key) ? [true, v[key]] : [false, undefined];
  if (Array.isArray(v) && INDEX.test(key) && Number(key) < v.length) return [true, v[Number(key)]];
  return [false, undefined];
}

/** The value at a dotted `path` (`a.b.0.c`: object keys, or array indices as numbers);
 * undefined when it does not exist (a JSON null that exists is returned as null). */
export function getPath(v, path) {
  for (const key of path.split('.')) {
    const [ok, next] = step(v, key);
    if (!ok) return undefined;
    v = next;
  }
  return v;
}

/** Whether the dotted `path` exists (also when its value is null). */
export function hasPath(v, path) {
  const dot = path.lastIndexOf('.');
  const parent = dot < 0 ? v : getPath(v, path.slice(0, dot));
  return step(parent, path.slice(dot + 1))[0];
}

/** Removes and returns the value at `path`; undefined when it does not exist. */
export function removePath(v, path) {
  const dot = path.lastIndexOf('.');
  const parent = dot < 0 ? v : getPath(v, path.slice(0, dot));
  const last = path.slice(dot + 1);
  if (isObject(parent) && has(parent, last)) {
    const x = parent[last];
    delete parent[last];
    return x;
  }
  if (Array.isArray(parent) && INDEX.test(last) && Number(last) < parent.length) {
    return parent.splice(Number(last), 1)[0];
  }
  return undefined;
}

/** Sets the value at `path`, creating missing objects on the way. Returns false when the path
 * goes through a value that is neither an object nor an in-range array index. */
export function setPath(v, path, value) {
  const parts = path.split('.');
  let cur = v;
  for (let i = 0; i < parts.length; i++) {
    const part = parts[i];
    const last = i === parts.length - 1;
    if (isObject(cur)) {
      if (last) {
        put(cur, part, value);
        return true;
      }
      if (!has(cur, part)) put(cur, part, {});
      cur = cur[part];
    } else if (Array.isArray(cur)) {
      if (!(INDEX.test(part) && Number(part) < cur.length)) return false;
      if (last) {
        cur[Number(part)] = value;
        return true;
      }
      cur = cur[Number(part)];
    } else {
      return false;
    }
  }
  return false;
}

/** Moves the value at `from` to `to`. Returns whether `from` existed. */
export function renamePath(v, from, to) {
  if (!hasPath(v, from)) return false;
  return setPath(v, to, removePath(v, from));
}
