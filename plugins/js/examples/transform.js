// Reshapes JSON values: drops, redacts and renames fields, and stamps a site header.
//
// The JavaScript twin of plugins/examples/transform (same settings, same output bytes for the
// same JSON, see the number limits in plugins/README.md):
// - `drop` = `a, b.c`: fields removed.
// - `redact` = `password, user.email`: fields replaced by `redact_with` (default `"***"`) when
//   present.
// - `rename.<from>` = `<to>`: field moved (e.g. `rename.temp = temperature`).
// - `site` = `berlin-01`: adds header `site_header` (default `site`) with this value.
// - `on_invalid` = `fail` (default) | `keep` | `drop`: records whose value is not JSON.

import {
  ConfigError, DROP, JsonError, counterAdd, exportPlugin, fail, hasPath, removePath, renamePath,
  replace, setPath,
} from '../er-plugin.js';

const paths = (s) => (s ?? '').split(',').map((p) => p.trim()).filter((p) => p !== '');

class Transform {
  constructor(config) {
    config.checkKnown(['drop', 'redact', 'redact_with', 'rename.', 'site', 'site_header', 'on_invalid']);
    this.onInvalid = config.get('on_invalid', 'fail');
    if (!['fail', 'keep', 'drop'].includes(this.onInvalid)) {
      throw new ConfigError(`on_invalid = "${this.onInvalid}": expected fail, keep or drop`);
    }
    const site = config.get('site');
    this.site = site === undefined ? null : [config.get('site_header', 'site'), site];
    this.drop = paths(config.get('drop'));
    this.redact = paths(config.get('redact'));
    this.redactWith = config.get('redact_with', '***');
    this.rename = config.withPrefix('rename.');
    this.edits = this.drop.length + this.redact.length + this.rename.length > 0;
  }

  edit(v) {
    for (const p of this.drop) removePath(v, p);
    for (const p of this.redact) if (hasPath(v, p)) setPath(v, p, this.redactWith);
    for (const [from, to] of this.rename) renamePath(v, from, to);
  }

  process(rec) {
    const out = rec.toNew();
    if (this.site !== null) out.withHeader(...this.site);
    if (this.edits && !rec.isTombstone()) {
      let v;
      try {
        v = rec.json();
      } catch (e) {
        if (!(e instanceof JsonError)) throw e;
        counterAdd('invalid_json');
        if (this.onInvalid === 'fail') return fail(e);
        if (this.onInvalid === 'drop') return DROP;
        return replace(out);
      }
      this.edit(v);
      out.withJson(v);
    }
    return replace(out);
  }
}

export const guest = exportPlugin(Transform);
