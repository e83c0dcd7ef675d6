"""Write edge-replicator plugins in Python: per-record views in, outcomes out.

The contract (`wit/plugin.wit`, world `edge-replicator:plugin@0.1.0`) hands a plugin its batch as
columns of integers plus one flat byte buffer; this module turns that into `Record` views and
encodes the answers back, so a plugin is a class with `__init__(config)` and `process(rec)`::

    from er_plugin import DROP, KEEP, Plugin, export

    class SiteFilter(Plugin):
        def __init__(self, config):
            config.check_known(["site"])
            self.site = config.require("site")

        def process(self, rec):
            return KEEP if rec.header_str("site") == self.site else DROP

    Guest = export(SiteFilter)   # componentize-py looks for `Guest` in the app module

Unchanged key, value, header and topic bytes of a `rec.to_new()` copy go back to the host as
references into the input, not copies (the same as the Rust SDK). JSON written by `with_json`
and `to_json_bytes` is compact with object keys sorted, byte for byte what the Rust SDK writes.
"""

import json as _json
import re as _re
import traceback as _traceback

from componentize_py_types import Err as _Err
from wit_world import exports as _exports
from wit_world.imports import host as _host
from wit_world.imports import types as _t

__all__ = [
    "DROP",
    "KEEP",
    "Config",
    "ConfigError",
    "JsonError",
    "NewRecord",
    "Plugin",
    "Record",
    "counter_add",
    "export",
    "fail",
    "get_path",
    "log",
    "remove_path",
    "rename_path",
    "replace",
    "set_path",
    "to_json_bytes",
]

#: Length marking a null byte range in the contract's batch columns.
NULL_LEN = 0xFFFFFFFF
_TOMBSTONE_NOT_JSON = "value is null (a tombstone), not JSON"


class ConfigError(Exception):
    """A setting is missing, unknown or malformed; raised from `__init__` it rejects the config."""


class JsonError(ValueError):
    """The value is null (a tombstone) or not JSON; `str(e)` says which, like the Rust SDK."""


class Config:
    """The plugin's settings from the route config, in config order (a key may repeat)."""

    def __init__(self, entries):
        self._entries = [(str(k), str(v)) for k, v in entries]

    def get(self, key, default=None):
        """The last value given for `key`, or `default`."""
        for k, v in reversed(self._entries):
            if k == key:
                return v
        return default

    def get_all(self, key):
        """Every value given for `key`, in config order (repeatable settings)."""
        return [v for k, v in self._entries if k == key]

    def require(self, key):
        """The value of `key`; a `ConfigError` naming the key when it is missing."""
        v = self.get(key)
        if v is None:
            raise ConfigError(f'missing required setting "{key}"')
        return v

    def items(self):
        """All entries, in config order."""
        return list(self._entries)

    def with_prefix(self, prefix):
        """Entries whose key starts with `prefix`, with the prefix removed, in config order."""
        return [(k[len(prefix) :], v) for k, v in self._entries if k.startswith(prefix)]

    def check_known(self, known):
        """Rejects keys that are neither in `known` nor start with a `known` entry ending in
        `.` (so `"rename."` accepts `rename.temp`). Catches typos in route configs."""
        for k, _ in self._entries:
            if not any(k == n or (n.endswith(".") and k.startswith(n)) for n in known):
                raise ConfigError(f'unknown setting "{k}" (known: {", ".join(known)})')

    def __len__(self):
        return len(self._entries)


def _span(data, offset, length):
    if length == NULL_LEN:
        return None
    return data[offset : offset + length]


class Record:
    """A view of one input record. Bytes are `bytes` (or `None` for a null key, value or
    header value); reading them copies only the bytes asked for."""

    __slots__ = ("_batch", "_index")

    def __init__(self, batch, index):
        self._batch = batch
        self._index = index

    def _field(self, k):
        return self._batch.record_fields[self._index * 6 + k]

    @property
    def index(self):
        """Position of this record in its batch."""
        return self._index

    @property
    def topic(self):
        """Topic name."""
        b = self._batch
        return b.topics[b.record_topics[self._index]]

    @property
    def partition(self):
        """Source partition."""
        return self._batch.partitions[self._index]

    @property
    def offset(self):
        """Source offset."""
        return self._batch.offsets[self._index]

    @property
    def timestamp(self):
        """Timestamp, milliseconds since the Unix epoch."""
        return self._batch.timestamps[self._index]

    @property
    def key(self):
        """Key bytes; `None` for a null key."""
        return _span(self._batch.data, self._field(0), self._field(1))

    @property
    def value(self):
        """Value bytes; `None` for a null value (a tombstone)."""
        return _span(self._batch.data, self._field(2), self._field(3))

    def key_str(self):
        """Key as text; `None` when null or not UTF-8."""
        return _text(self.key)

    def value_str(self):
        """Value as text; `None` when null or not UTF-8."""
        return _text(self.value)

    def is_tombstone(self):
        """Whether the value is null: a tombstone, which deletes its key on a compacted topic.
        Tombstones have no JSON: decide about them before calling `json()`."""
        return self._field(3) == NULL_LEN

    def _header_fields(self):
        f = self._batch.header_fields
        start, count = self._field(4), self._field(5)
        return (f[h * 4 : h * 4 + 4] for h in range(start, start + count))

    def headers(self):
        """All headers in order as `(name, value)`; names may repeat, a value may be `None`."""
        data = self._batch.data
        return [
            (_name(data[n : n + nl]), _span(data, v, vl))
            for n, nl, v, vl in self._header_fields()
        ]

    def header(self, name):
        """Value of the last header called `name` (Kafka's `lastHeader`); `None` when there
        is none or its value is null."""
        want = name.encode()
        data = self._batch.data
        found = None
        for n, nl, v, vl in self._header_fields():
            if nl == len(want) and data[n : n + nl] == want:
                found = (v, vl)
        return None if found is None else _span(data, *found)

    def header_str(self, name):
        """`header(name)` as text; `None` when absent, null or not UTF-8."""
        return _text(self.header(name))

    def json(self):
        """The value parsed as JSON. Raises `JsonError` for a tombstone ("value is null (a
        tombstone), not JSON") and for a value that is not JSON (also `NaN`/`Infinity`, which
        are not JSON)."""
        return parse_json(self.value)

    def to_new(self):
        """A replacement that starts as an unchanged copy of this record. Its unchanged key,
        value and headers go back to the host as references into the input."""
        data = self._batch.data
        k, kl, v, vl = self._field(0), self._field(1), self._field(2), self._field(3)
        headers = [
            [_name(data[n : n + nl]), _In(n, nl), None if hl == NULL_LEN else _In(h, hl)]
            for n, nl, h, hl in self._header_fields()
        ]
        return NewRecord(
            key=None if kl == NULL_LEN else _In(k, kl),
            value=None if vl == NULL_LEN else _In(v, vl),
            _headers=headers,
        )

    def __repr__(self):
        return (
            f"Record(topic={self.topic!r}, partition={self.partition}, offset={self.offset}, "
            f"key={self.key!r}, value_len={len(self.value or b'')}, headers={len(self.headers())})"
        )


def _text(b):
    if b is None:
        return None
    try:
        return b.decode()
    except UnicodeDecodeError:
        return None


def _name(b):
    # Header names are UTF-8 in the contract; a broken one reads as "" (as in the Rust SDK).
    return _text(b) or ""


class _In:
    """Bytes of the input batch, sent back as a span instead of a copy."""

    __slots__ = ("offset", "length")

    def __init__(self, offset, length):
        self.offset = offset
        self.length = length


def _bytes(v):
    if isinstance(v, str):
        return v.encode()
    if isinstance(v, (bytes, bytearray, memoryview)):
        return bytes(v)
    raise TypeError(f"expected str or bytes, got {type(v).__name__}")


class NewRecord:
    """A record produced by `replace`. Start from `rec.to_new()` and chain `with_*` calls; each
    returns the record. `NewRecord()` alone is an empty record (null key and value, no headers)
    on the input's topic, partition and timestamp."""

    __slots__ = ("topic", "partition", "key", "value", "timestamp", "_headers")

    def __init__(self, key=None, value=None, _headers=None):
        self.topic = None
        self.partition = None
        self.key = key
        self.value = value
        self.timestamp = None
        # [name, name span or None, value (_In, bytes or None)]
        self._headers = _headers if _headers is not None else []

    def with_topic(self, topic):
        """Sets the destination topic."""
        self.topic = str(topic)
        return self

    def with_partition(self, partition):
        """Sets the destination partition."""
        self.partition = int(partition)
        return self

    def with_key(self, key):
        """Sets the key: text, bytes, or `None` for a null key."""
        self.key = None if key is None else _bytes(key)
        return self

    def with_value(self, value):
        """Sets the value: text or bytes."""
        self.value = _bytes(value)
        return self

    def with_json(self, value):
        """Sets the value to the compact JSON text of `value` (see `to_json_bytes`)."""
        self.value = to_json_bytes(value)
        return self

    def with_null_value(self):
        """Makes the value null (a tombstone)."""
        self.value = None
        return self

    def with_header(self, name, value):
        """Sets header `name` to `value` (text or bytes), replacing every header of that name."""
        self.without_header(name)
        self._headers.append([str(name), None, _bytes(value)])
        return self

    def with_null_header(self, name):
        """Sets header `name` to a null value, replacing every header of that name."""
        self.without_header(name)
        self._headers.append([str(name), None, None])
        return self

    def without_header(self, name):
        """Removes every header called `name`."""
        self._headers = [h for h in self._headers if h[0] != name]
        return self

    def with_timestamp(self, timestamp):
        """Sets the timestamp (ms since the Unix epoch)."""
        self.timestamp = int(timestamp)
        return self


class _Outcome:
    __slots__ = ("wit", "records")

    def __init__(self, wit, records=None):
        self.wit = wit
        self.records = records

    def __repr__(self):
        if self.records is not None:
            return f"replace({len(self.records)} records)"
        return repr(self.wit)


#: Pass the record on unchanged (the cheapest outcome: nothing is sent back).
KEEP = _Outcome(_t.Outcome_Keep())
#: Drop the record.
DROP = _Outcome(_t.Outcome_Drop())


def replace(*records):
    """Replaces the record with these `NewRecord`s (zero or more, in order; none drops it)."""
    for r in records:
        if not isinstance(r, NewRecord):
            raise TypeError(f"replace() takes NewRecord values, got {type(r).__name__}")
    return _Outcome(None, list(records))


def fail(message):
    """The record cannot be processed; the route's error policy applies to it alone."""
    return _Outcome(_t.Outcome_Fail(str(message)))


class Plugin:
    """Base class of a plugin: override `__init__(self, config)` to read settings (raise
    `ConfigError` or any exception to reject them) and `process(self, rec)` to return `KEEP`,
    `DROP`, `replace(...)` or `fail(msg)`. Override `process_batch(self, records)` instead to
    see a whole batch (return one outcome per record, in order)."""

    def __init__(self, config):
        pass

    def process(self, rec):
        raise NotImplementedError("a plugin overrides process(rec) or process_batch(records)")

    def process_batch(self, records):
        """One outcome per record. An exception raised for one record fails that record only
        (with the exception's type, message and line), like `fail`."""
        out = []
        for rec in records:
            try:
                out.append(self.process(rec))
            except Exception as e:  # noqa: BLE001 - every error becomes that record's failure
                out.append(fail(_describe(e)))
        return out


def _describe(e):
    """`TypeError: msg (filter.py line 12)`: the exception and where the plugin raised it."""
    where = ""
    frames = _traceback.extract_tb(e.__traceback__)
    # The plugin's own line, not this module's (json() raising JsonError, say).
    own = [f for f in frames if not f.filename.endswith("er_plugin.py")] or frames
    if own:
        where = f" ({own[-1].filename.rsplit('/', 1)[-1]} line {own[-1].lineno})"
    return f"{type(e).__name__}: {e}{where}"


class _Output:
    """Encodes outcomes into the contract's flat `batch-result`."""

    def __init__(self, n):
        self.n = n
        self.outcomes = []
        self.records = []
        self.headers = []
        self.data = bytearray()

    def _out(self, b):
        offset = len(self.data)
        self.data += b
        return _t.Span(offset, len(b))

    def _bytes(self, v):
        if v is None:
            return _t.BytesRef_Null()
        if isinstance(v, _In):
            return _t.BytesRef_Input(_t.Span(v.offset, v.length))
        return _t.BytesRef_Output(self._out(v))

    def _record(self, r):
        start = len(self.headers)
        for name, name_ref, value in r._headers:
            if name_ref is not None:
                text = _t.TextRef_Input(_t.Span(name_ref.offset, name_ref.length))
            else:
                text = _t.TextRef_Output(self._out(name.encode()))
            self.headers.append(_t.OutHeader(text, self._bytes(value)))
        topic = None if r.topic is None else _t.TextRef_Output(self._out(r.topic.encode()))
        return _t.OutRecord(
            topic,
            r.partition,
            self._bytes(r.key),
            self._bytes(r.value),
            _t.Range(start, len(r._headers)),
            r.timestamp,
        )

    def push(self, outcome):
        if not isinstance(outcome, _Outcome):
            raise TypeError(
                "process() must return KEEP, DROP, replace(...) or fail(...), "
                f"got {type(outcome).__name__}"
            )
        if outcome.records is None:
            self.outcomes.append(outcome.wit)
            return
        start = len(self.records)
        for r in outcome.records:
            self.records.append(self._record(r))
        self.outcomes.append(_t.Outcome_Replace(_t.Range(start, len(outcome.records))))

    def finish(self):
        if len(self.outcomes) != self.n:
            raise _Err(
                f"plugin returned {len(self.outcomes)} outcomes for a batch of {self.n} records"
            )
        return _t.BatchResult(self.outcomes, self.records, self.headers, bytes(self.data))


def export(plugin_class):
    """The `Guest` class componentize-py exports: builds one `plugin_class(Config)` per
    instance in `init`, then runs its `process_batch` on every batch."""
    state = {}

    class Guest(_exports.Guest):
        def init(self, config):
            try:
                state["plugin"] = plugin_class(Config(config))
            except ConfigError as e:
                raise _Err(str(e)) from None
            except Exception as e:  # noqa: BLE001 - the host shows it with the file name
                raise _Err(_describe(e)) from None

        def process_batch(self, batch):
            plugin = state.get("plugin")
            if plugin is None:
                raise _Err("process-batch called before init")
            n = len(batch.record_topics)
            records = [Record(batch, i) for i in range(n)]
            try:
                outcomes = plugin.process_batch(records)
            except Exception as e:  # noqa: BLE001 - fails the batch; the policy applies
                raise _Err(_describe(e)) from None
            out = _Output(n)
            try:
                for o in outcomes:
                    out.push(o)
            except (TypeError, UnicodeError) as e:
                raise _Err(_describe(e)) from None
            return out.finish()

    Guest.__name__ = Guest.__qualname__ = "Guest"
    return Guest


_LEVELS = {
    "trace": _t.Level.TRACE,
    "debug": _t.Level.DEBUG,
    "info": _t.Level.INFO,
    "warn": _t.Level.WARN,
    "error": _t.Level.ERROR,
}


def log(level, message, **fields):
    """Emits a log event through the host, attributed to this plugin: `log("warn", "odd
    value", sensor="s-1")`. Levels: trace, debug, info, warn, error. The host rate-limits."""
    lvl = _LEVELS.get(level)
    if lvl is None:
        raise ValueError(f"log level {level!r}: expected one of {', '.join(_LEVELS)}")
    _host.log(lvl, str(message), [(str(k), str(v)) for k, v in fields.items()])


def counter_add(name, delta=1):
    """Adds `delta` to this plugin's counter `name` (reported with the host's plugin stats)."""
    _host.counter_add(str(name), int(delta))


# --- JSON -------------------------------------------------------------------------------------


def _no_constant(name):
    raise ValueError(f"{name} is not JSON")


def parse_json(value):
    """Parses bytes as JSON like the Rust SDK: UTF-8 only, no `NaN`/`Infinity`; `JsonError`
    otherwise (also for `None`, a tombstone)."""
    if value is None:
        raise JsonError(_TOMBSTONE_NOT_JSON)
    try:
        return _json.loads(value.decode(), parse_constant=_no_constant)
    except (UnicodeDecodeError, ValueError) as e:
        raise JsonError(f"value is not JSON: {e}") from None


def to_json_bytes(value):
    """Compact JSON text of `value` as UTF-8, object keys sorted: the bytes the Rust SDK writes
    for the same value (non-ASCII text stays as is; NaN and infinities are refused)."""
    return _json.dumps(
        value, separators=(",", ":"), ensure_ascii=False, sort_keys=True, allow_nan=False
    ).encode()


def _step(v, key):
    if isinstance(v, dict):
        return key in v, v.get(key)
    if isinstance(v, list) and _INDEX.fullmatch(key):
        i = int(key)
        if i < len(v):
            return True, v[i]
    return False, None


_INDEX = _re.compile(r"[0-9]+")
_MISSING = object()


def get_path(v, path, default=None):
    """The value at a dotted `path` (`a.b.0.c`: object keys, or array indices as numbers);
    `default` when it does not exist (a JSON `null` that exists is returned as `None`)."""
    for key in path.split("."):
        ok, v = _step(v, key)
        if not ok:
            return default
    return v


def has_path(v, path):
    """Whether the dotted `path` exists (also when its value is `null`)."""
    return get_path(v, path, _MISSING) is not _MISSING


def remove_path(v, path, default=None):
    """Removes and returns the value at `path`; `default` when it does not exist."""
    parent_path, _, last = path.rpartition(".")
    parent = get_path(v, parent_path, _MISSING) if parent_path else v
    if isinstance(parent, dict) and last in parent:
        return parent.pop(last)
    if isinstance(parent, list) and _INDEX.fullmatch(last) and int(last) < len(parent):
        return parent.pop(int(last))
    return default


def set_path(v, path, new):
    """Sets the value at `path`, creating missing objects on the way. Returns `False` when the
    path goes through a value that is neither an object nor an in-range array index."""
    parts = path.split(".")
    cur = v
    for i, part in enumerate(parts):
        last = i == len(parts) - 1
        if isinstance(cur, dict):
            if last:
                cur[part] = new
                return True
            cur = cur.setdefault(part, {})
        elif isinstance(cur, list):
            if not (_INDEX.fullmatch(part) and int(part) < len(cur)):
                return False
            if last:
                cur[int(part)] = new
                return True
            cur = cur[int(part)]
        else:
            return False
    return False


def rename_path(v, from_path, to_path):
    """Moves the value at `from_path` to `to_path`. Returns whether `from_path` existed."""
    x = remove_path(v, from_path, _MISSING)
    if x is _MISSING:
        return False
    return set_path(v, to_path, x)
