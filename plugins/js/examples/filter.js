// Keeps records where a header or JSON field matches every configured condition.
//
// The JavaScript twin of plugins/examples/filter (same settings, same outcomes):
// - `condition` (repeatable; all must hold): `<field> <op> <literal>`, e.g. `temperature > 30`,
//   `header:site == "berlin"`, `status != idle`, `sensor.kind == "thermo"`.
//   - field: `header:<name>` (last header of that name), `key`, or a dotted JSON path into the
//     value (`json:` prefix optional).
//   - op: `>`, `>=`, `<`, `<=`, `==`, `!=`.
//   - literal: a number (numeric comparison; a string field must parse as a number), `true`,
//     `false`, or a string (quoted or bare; `==` and `!=` only).
// - `on_missing` = `drop` (default) | `keep`: what happens when the field is absent, null, or
//   the value is not JSON.

import { ConfigError, DROP, JsonError, KEEP, exportPlugin, getPath, toJsonBytes } from '../er-plugin.js';

// Longer operators first at the same position: `>=` is not `>` followed by `=`.
const OPS = ['>=', '<=', '==', '!=', '>', '<'];
// What Rust's `str::parse::<f64>` accepts, so the literals and fields that count as numbers are
// the same as in the Rust filter.
const NUMBER = /^[+-]?(?:inf|infinity|nan|(?:[0-9]+\.?[0-9]*|\.[0-9]+)(?:e[+-]?[0-9]+)?)$/i;

function parseNumber(s) {
  if (!NUMBER.test(s)) return null;
  const sign = s.startsWith('-') ? -1 : 1;
  const bare = s.replace(/^[+-]/, '').toLowerCase();
  if (bare === 'inf' || bare === 'infinity') return sign * Infinity;
  if (bare === 'nan') return NaN;
  return Number(s);
}

/** -1, 0 or 1; null when unordered (NaN, or nothing to compare). */
function compare(a, b) {
  if (a === null || b === null || Number.isNaN(a) || Number.isNaN(b)) return null;
  return a > b ? 1 : a < b ? -1 : 0;
}

class Condition {
  constructor(s) {
    let best = null;
    for (const op of OPS) {
      const pos = s.indexOf(op);
      if (pos >= 0 && (best === null || pos < best.pos)) best = { pos, op };
    }
    if (best === null) throw new ConfigError(`condition "${s}": no operator (use > >= < <= == !=)`);
    const field = s.slice(0, best.pos).trim();
    const lit = s.slice(best.pos + best.op.length).trim();
    if (!field || !lit) throw new ConfigError(`condition "${s}": expected <field> <op> <literal>`);
    if (field.startsWith('header:')) {
      this.kind = 'header';
      this.name = field.slice('header:'.length);
    } else if (field === 'key') {
      this.kind = 'key';
    } else {
      this.kind = 'json';
      this.name = field.startsWith('json:') ? field.slice('json:'.length) : field;
    }
    if (lit.length >= 2 && lit.startsWith('"') && lit.endsWith('"')) {
      this.literal = ['str', lit.slice(1, -1)];
    } else if (parseNumber(lit) !== null) {
      this.literal = ['num', parseNumber(lit)];
    } else if (lit === 'true' || lit === 'false') {
      this.literal = ['bool', lit === 'true'];
    } else {
      this.literal = ['str', lit];
    }
    if (this.literal[0] !== 'num' && best.op !== '==' && best.op !== '!=') {
      throw new ConfigError(`condition "${s}": only == and != compare strings and booleans`);
    }
    this.op = best.op;
  }

  holds(ord) {
    if (ord === null) return this.op === '!=';
    switch (this.op) {
      case '>': return ord > 0;
      case '>=': return ord >= 0;
      case '<': return ord < 0;
      case '<=': return ord <= 0;
      case '==': return ord === 0;
      default: return ord !== 0;
    }
  }

  /** On a header or key; null when absent. */
  evalText(text) {
    if (text === null) return null;
    const [kind, lit] = this.literal;
    if (kind === 'num') return this.holds(compare(parseNumber(text.trim()), lit));
    if (kind === 'bool') {
      const b = text === 'true' ? true : text === 'false' ? false : null;
      return this.holds(b === null ? null : compare(b, lit));
    }
    return this.holds(compare(text, lit));
  }

  /** On a JSON value; null when absent or null. */
  evalJson(v) {
    if (v === undefined || v === null) return null;
    if (typeof v === 'string') return this.evalText(v);
    const [kind, lit] = this.literal;
    if (kind === 'num') return this.holds(typeof v === 'number' ? compare(v, lit) : null);
    if (kind === 'bool') return this.holds(typeof v === 'boolean' ? compare(v, lit) : null);
    return this.holds(compare(new TextDecoder().decode(toJsonBytes(v)), lit));
  }
}

class Filter {
  constructor(config) {
    config.checkKnown(['condition', 'on_missing']);
    this.conditions = config.getAll('condition').map((c) => new Condition(c));
    if (this.conditions.length === 0) {
      throw new ConfigError('missing required setting "condition" (e.g. "temperature > 30")');
    }
    const onMissing = config.get('on_missing', 'drop');
    if (onMissing !== 'drop' && onMissing !== 'keep') {
      throw new ConfigError(`on_missing = "${onMissing}": expected drop or keep`);
    }
    this.keepMissing = onMissing === 'keep';
    this.readsJson = this.conditions.some((c) => c.kind === 'json');
  }

  matches(rec) {
    let doc;
    let isJson = false;
    if (this.readsJson) {
      try {
        doc = rec.json();
        isJson = true;
      } catch (e) {
        // Not JSON (or a tombstone): every JSON field is missing.
        if (!(e instanceof JsonError)) throw e;
      }
    }
    for (const c of this.conditions) {
      let r;
      if (c.kind === 'header') r = c.evalText(rec.headerStr(c.name));
      else if (c.kind === 'key') r = c.evalText(rec.keyStr());
      else r = c.evalJson(isJson ? getPath(doc, c.name) : undefined);
      if (!(r === null ? this.keepMissing : r)) return false;
    }
    return true;
  }

  process(rec) {
    return this.matches(rec) ? KEEP : DROP;
  }
}

export const guest = exportPlugin(Filter);
