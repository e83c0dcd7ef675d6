"""Reshapes JSON values: drops, redacts and renames fields, and stamps a site header.

The Python twin of plugins/examples/transform (same settings, same output bytes):
- `drop` = `a, b.c`: fields removed.
- `redact` = `password, user.email`: fields replaced by `redact_with` (default `"***"`) when
  present.
- `rename.<from>` = `<to>`: field moved (e.g. `rename.temp = temperature`).
- `site` = `berlin-01`: adds header `site_header` (default `site`) with this value.
- `on_invalid` = `fail` (default) | `keep` | `drop`: records whose value is not JSON.
"""

from er_plugin import (
    DROP,
    ConfigError,
    JsonError,
    Plugin,
    counter_add,
    export,
    fail,
    has_path,
    remove_path,
    rename_path,
    replace,
    set_path,
)


def paths(s):
    return [p.strip() for p in (s or "").split(",") if p.strip()]


class Transform(Plugin):
    def __init__(self, config):
        config.check_known(
            ["drop", "redact", "redact_with", "rename.", "site", "site_header", "on_invalid"]
        )
        self.on_invalid = config.get("on_invalid", "fail")
        if self.on_invalid not in ("fail", "keep", "drop"):
            raise ConfigError(f'on_invalid = "{self.on_invalid}": expected fail, keep or drop')
        site = config.get("site")
        self.site = None if site is None else (config.get("site_header", "site"), site)
        self.drop = paths(config.get("drop"))
        self.redact = paths(config.get("redact"))
        self.redact_with = config.get("redact_with", "***")
        self.rename = config.with_prefix("rename.")
        self.edits = bool(self.drop or self.redact or self.rename)

    def edit(self, v):
        for p in self.drop:
            remove_path(v, p)
        for p in self.redact:
            if has_path(v, p):
                set_path(v, p, self.redact_with)
        for src, dst in self.rename:
            rename_path(v, src, dst)

    def process(self, rec):
        out = rec.to_new()
        if self.site is not None:
            out.with_header(*self.site)
        if self.edits and not rec.is_tombstone():
            try:
                v = rec.json()
            except JsonError as e:
                counter_add("invalid_json")
                if self.on_invalid == "fail":
                    return fail(e)
                if self.on_invalid == "drop":
                    return DROP
            else:
                self.edit(v)
                out.with_json(v)
        return replace(out)


Guest = export(Transform)
