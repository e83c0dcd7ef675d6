"""Keeps records where a header or JSON field matches every configured condition.

The Python twin of plugins/examples/filter (same settings, same outcomes):
- `condition` (repeatable; all must hold): `<field> <op> <literal>`, e.g. `temperature > 30`,
  `header:site == "berlin"`, `status != idle`, `sensor.kind == "thermo"`.
  - field: `header:<name>` (last header of that name), `key`, or a dotted JSON path into the
    value (`json:` prefix optional).
  - op: `>`, `>=`, `<`, `<=`, `==`, `!=`.
  - literal: a number (numeric comparison; a string field must parse as a number), `true`,
    `false`, or a string (quoted or bare; `==` and `!=` only).
- `on_missing` = `drop` (default) | `keep`: what happens when the field is absent, null, or the
  value is not JSON.
"""

import math
import re

from er_plugin import DROP, KEEP, ConfigError, JsonError, Plugin, export, get_path, to_json_bytes

# Longer operators first at the same position: `>=` is not `>` followed by `=`.
OPS = [">=", "<=", "==", "!=", ">", "<"]
# What Rust's `str::parse::<f64>` accepts, so the literals and fields that count as numbers are
# the same as in the Rust filter.
NUMBER = re.compile(
    r"[+-]?(?:(?i:inf|infinity|nan)|(?:[0-9]+\.?[0-9]*|\.[0-9]+)(?:[eE][+-]?[0-9]+)?)"
)
MISSING = object()


def parse_number(s):
    return float(s) if NUMBER.fullmatch(s) else None


def compare(a, b):
    """-1, 0 or 1; None when unordered (NaN)."""
    if a is None or b is None or (isinstance(a, float) and math.isnan(a)):
        return None
    if isinstance(b, float) and math.isnan(b):
        return None
    return (a > b) - (a < b)


class Condition:
    def __init__(self, s):
        found = [(s.find(op), -len(op), op) for op in OPS if op in s]
        if not found:
            raise ConfigError(f'condition "{s}": no operator (use > >= < <= == !=)')
        pos, _, op = min(found)
        field, lit = s[:pos].strip(), s[pos + len(op) :].strip()
        if not field or not lit:
            raise ConfigError(f'condition "{s}": expected <field> <op> <literal>')
        if field.startswith("header:"):
            self.kind, self.name = "header", field[len("header:") :]
        elif field == "key":
            self.kind, self.name = "key", None
        else:
            self.kind = "json"
            self.name = field[len("json:") :] if field.startswith("json:") else field
        if len(lit) >= 2 and lit.startswith('"') and lit.endswith('"'):
            self.literal = ("str", lit[1:-1])
        elif parse_number(lit) is not None:
            self.literal = ("num", parse_number(lit))
        elif lit in ("true", "false"):
            self.literal = ("bool", lit == "true")
        else:
            self.literal = ("str", lit)
        if self.literal[0] != "num" and op not in ("==", "!="):
            raise ConfigError(f'condition "{s}": only == and != compare strings and booleans')
        self.op = op

    def holds(self, ordering):
        if ordering is None:
            return self.op == "!="
        return {
            ">": ordering > 0,
            ">=": ordering >= 0,
            "<": ordering < 0,
            "<=": ordering <= 0,
            "==": ordering == 0,
            "!=": ordering != 0,
        }[self.op]

    def eval_text(self, text):
        """On a header or key; None when absent."""
        if text is None:
            return None
        kind, lit = self.literal
        if kind == "num":
            return self.holds(compare(parse_number(text.strip()), lit))
        if kind == "bool":
            b = {"true": True, "false": False}.get(text)
            return self.holds(None if b is None else compare(b, lit))
        return self.holds(compare(text, lit))

    def eval_json(self, v):
        """On a JSON value; None when absent or null."""
        if v is MISSING or v is None:
            return None
        if isinstance(v, str):
            return self.eval_text(v)
        kind, lit = self.literal
        is_num = isinstance(v, (int, float)) and not isinstance(v, bool)
        if kind == "num":
            return self.holds(compare(float(v), lit) if is_num else None)
        if kind == "bool":
            return self.holds(compare(v, lit) if isinstance(v, bool) else None)
        return self.holds(compare(to_json_bytes(v).decode(), lit))


class Filter(Plugin):
    def __init__(self, config):
        config.check_known(["condition", "on_missing"])
        self.conditions = [Condition(c) for c in config.get_all("condition")]
        if not self.conditions:
            raise ConfigError('missing required setting "condition" (e.g. "temperature > 30")')
        on_missing = config.get("on_missing", "drop")
        if on_missing not in ("drop", "keep"):
            raise ConfigError(f'on_missing = "{on_missing}": expected drop or keep')
        self.keep_missing = on_missing == "keep"
        self.reads_json = any(c.kind == "json" for c in self.conditions)

    def matches(self, rec):
        doc = MISSING
        if self.reads_json:
            try:
                doc = rec.json()
            except JsonError:
                pass  # not JSON (or a tombstone): every JSON field is missing
        for c in self.conditions:
            if c.kind == "header":
                r = c.eval_text(rec.header_str(c.name))
            elif c.kind == "key":
                r = c.eval_text(rec.key_str())
            else:
                r = c.eval_json(MISSING if doc is MISSING else get_path(doc, c.name, MISSING))
            if not (self.keep_missing if r is None else r):
                return False
        return True

    def process(self, rec):
        return KEEP if self.matches(rec) else DROP


Guest = export(Filter)
