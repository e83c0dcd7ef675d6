//! Tidy tests (as rust-analyzer's `xtask/src/tidy.rs`): the docs say what the code does. README's
//! config tables against the serde config structs, documented metric names against the ones the
//! binaries register, a `//!` line on every module, docs that need nothing outside the
//! repository, and short functions in the agent and the hub. Plain
//! `#[test]`s over the source files: no Kafka, no build of the crates checked.

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Component, Path, PathBuf};

use proc_macro2::{TokenStream, TokenTree};
use quote::ToTokens;
use syn::{Attribute, Fields, GenericArgument, Item, ItemStruct, LitStr, PathArguments, Type};

/// The workspace root (xtask lives one level below it).
fn root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .expect("xtask has a parent directory")
        .to_owned()
}

fn read(rel: &str) -> String {
    std::fs::read_to_string(root().join(rel)).unwrap_or_else(|e| panic!("reading {rel}: {e}"))
}

fn parse_rust(rel: &str) -> syn::File {
    syn::parse_file(&read(rel)).unwrap_or_else(|e| panic!("parsing {rel}: {e}"))
}

/// Panics with every problem, one per line, so one run names all of them.
fn report(what: &str, problems: &[String]) {
    assert!(
        problems.is_empty(),
        "{what}: {} problem(s)\n  {}",
        problems.len(),
        problems.join("\n  ")
    );
}

/// Every file under `dir` (recursively) whose name ends in `ext`, skipping build outputs
/// (`target`) and hidden directories.
fn files_with_ext(dir: &Path, ext: &str, out: &mut Vec<PathBuf>) {
    let mut entries: Vec<_> = std::fs::read_dir(dir)
        .unwrap_or_else(|e| panic!("listing {}: {e}", dir.display()))
        .map(|e| e.expect("directory entry").path())
        .collect();
    entries.sort();
    for path in entries {
        let name = path.file_name().and_then(|n| n.to_str()).unwrap_or("");
        if path.is_dir() {
            if name != "target" && !name.starts_with('.') {
                files_with_ext(&path, ext, out);
            }
        } else if name.ends_with(ext) {
            out.push(path);
        }
    }
}

fn relative(path: &Path) -> String {
    path.strip_prefix(root())
        .unwrap_or(path)
        .display()
        .to_string()
}

// ---------------------------------------------------------------------------------------------
// Config tables

/// What the `#[serde(...)]` attributes of a struct or field say, as far as accepted keys go.
#[derive(Debug, Default)]
struct SerdeAttrs {
    deny_unknown_fields: bool,
    rename_all: Option<String>,
    rename: Option<String>,
    aliases: Vec<String>,
    flatten: bool,
    skip: bool,
}

fn serde_attrs(attrs: &[Attribute]) -> SerdeAttrs {
    fn skip_value(meta: &syn::meta::ParseNestedMeta<'_>) -> syn::Result<()> {
        if meta.input.peek(syn::Token![=]) {
            meta.value()?.parse::<syn::Expr>()?;
        } else if meta.input.peek(syn::token::Paren) {
            meta.parse_nested_meta(|m| skip_value(&m))?;
        }
        Ok(())
    }
    let mut out = SerdeAttrs::default();
    for attr in attrs.iter().filter(|a| a.path().is_ident("serde")) {
        attr.parse_nested_meta(|meta| {
            let p = &meta.path;
            if p.is_ident("deny_unknown_fields") {
                out.deny_unknown_fields = true;
            } else if p.is_ident("flatten") {
                out.flatten = true;
            } else if p.is_ident("skip") || p.is_ident("skip_deserializing") {
                out.skip = true;
            } else if p.is_ident("alias") {
                out.aliases.push(meta.value()?.parse::<LitStr>()?.value());
            } else if p.is_ident("rename") || p.is_ident("rename_all") {
                let is_all = p.is_ident("rename_all");
                let mut value = None;
                if meta.input.peek(syn::Token![=]) {
                    value = Some(meta.value()?.parse::<LitStr>()?.value());
                } else {
                    // rename(serialize = "..", deserialize = "..")
                    meta.parse_nested_meta(|m| {
                        if m.path.is_ident("deserialize") {
                            value = Some(m.value()?.parse::<LitStr>()?.value());
                        } else {
                            skip_value(&m)?;
                        }
                        Ok(())
                    })?;
                }
                if is_all {
                    out.rename_all = value;
                } else {
                    out.rename = value;
                }
            } else {
                skip_value(&meta)?;
            }
            Ok(())
        })
        .unwrap_or_else(|e| panic!("unreadable #[serde] attribute: {e}"));
    }
    out
}

fn derives_deserialize(attrs: &[Attribute]) -> bool {
    attrs
        .iter()
        .filter(|a| a.path().is_ident("derive"))
        .any(|a| {
            let mut found = false;
            let _ = a.parse_nested_meta(|m| {
                found |= m
                    .path
                    .segments
                    .last()
                    .is_some_and(|s| s.ident == "Deserialize");
                Ok(())
            });
            found
        })
}

/// Types that deserialize from one TOML value: a key of their own, never a table of documented
/// keys. `BTreeMap`/`HashMap`/`Table` are free-form tables (`kafka.properties`, a plugin's
/// `config`), documented as one key.
const LEAF_TYPES: &[&str] = &[
    "String", "PathBuf", "bool", "u8", "u16", "u32", "u64", "usize", "i8", "i16", "i32", "i64",
    "isize", "f32", "f64", "BTreeMap", "HashMap", "Table",
];

/// How a field's type maps to TOML.
#[derive(Debug)]
enum Shape {
    /// A single value.
    Leaf,
    /// A table (`list`: an array of tables, documented as `field[].key`).
    Struct { name: String, list: bool },
    /// Neither a config struct of this file nor a known leaf: the test cannot tell.
    Unknown(String),
}

fn shape(ty: &Type, structs: &BTreeMap<String, &ItemStruct>, enums: &BTreeSet<String>) -> Shape {
    let Type::Path(tp) = ty else {
        return Shape::Unknown(ty.to_token_stream().to_string());
    };
    let Some(last) = tp.path.segments.last() else {
        return Shape::Unknown(ty.to_token_stream().to_string());
    };
    let ident = last.ident.to_string();
    let inner = || match &last.arguments {
        PathArguments::AngleBracketed(args) => args.args.iter().find_map(|a| match a {
            GenericArgument::Type(t) => Some(t),
            _ => None,
        }),
        _ => None,
    };
    match ident.as_str() {
        "Option" | "Box" => match inner() {
            Some(t) => shape(t, structs, enums),
            None => Shape::Unknown(ident),
        },
        "Vec" => match inner().map(|t| shape(t, structs, enums)) {
            Some(Shape::Struct { name, .. }) => Shape::Struct { name, list: true },
            Some(other) => other,
            None => Shape::Unknown(ident),
        },
        _ if structs.contains_key(&ident) => Shape::Struct {
            name: ident,
            list: false,
        },
        _ if enums.contains(&ident) || LEAF_TYPES.contains(&ident.as_str()) => Shape::Leaf,
        _ => Shape::Unknown(ty.to_token_stream().to_string()),
    }
}

/// What a serde config accepts, in README's notation (`hub.address`, `routes[].plugins[].path`).
#[derive(Debug, Default)]
struct Accepted {
    /// Keys holding a value: each must be documented.
    keys: BTreeSet<String>,
    /// Keys holding a table or an array of tables (`hub`, `routes[].plugins`): a row of their
    /// own is allowed (say what the array is), not required.
    tables: BTreeSet<String>,
    /// What makes the answer unreliable: a table without `deny_unknown_fields` (it would accept
    /// anything), a field of a type the test does not know.
    problems: Vec<String>,
}

/// What the config accepts, read from the `Deserialize` structs of one file, starting at
/// `root_struct`.
fn accepted_keys(rel: &str, root_struct: &str) -> Accepted {
    accepted_keys_in(rel, &read(rel), root_struct)
}

fn accepted_keys_in(rel: &str, src: &str, root_struct: &str) -> Accepted {
    let file = syn::parse_file(src).unwrap_or_else(|e| panic!("parsing {rel}: {e}"));
    let mut structs = BTreeMap::new();
    let mut enums = BTreeSet::new();
    for item in &file.items {
        match item {
            Item::Struct(s) if derives_deserialize(&s.attrs) => {
                structs.insert(s.ident.to_string(), s);
            }
            Item::Enum(e) if derives_deserialize(&e.attrs) => {
                enums.insert(e.ident.to_string());
            }
            _ => {}
        }
    }
    let mut accepted = Accepted::default();
    if !structs.contains_key(root_struct) {
        accepted
            .problems
            .push(format!("{rel}: no Deserialize struct {root_struct}"));
        return accepted;
    }
    let mut walk = Walk {
        rel,
        structs: &structs,
        enums: &enums,
        out: &mut accepted,
        stack: Vec::new(),
    };
    walk.table(root_struct, "");
    accepted
}

struct Walk<'a> {
    rel: &'a str,
    structs: &'a BTreeMap<String, &'a ItemStruct>,
    enums: &'a BTreeSet<String>,
    out: &'a mut Accepted,
    stack: Vec<String>,
}

impl Walk<'_> {
    fn table(&mut self, name: &str, prefix: &str) {
        if self.stack.iter().any(|s| s == name) {
            self.out
                .problems
                .push(format!("{}: {name} contains itself", self.rel));
            return;
        }
        let s = self.structs[name];
        let attrs = serde_attrs(&s.attrs);
        let at = if prefix.is_empty() {
            "the top level".to_owned()
        } else {
            format!("`{}`", prefix.trim_end_matches('.'))
        };
        if !attrs.deny_unknown_fields {
            self.out.problems.push(format!(
                "{}: struct {name} ({at}) lacks #[serde(deny_unknown_fields)]: a misspelt key \
                 would be ignored",
                self.rel
            ));
        }
        if let Some(r) = attrs.rename_all.as_deref().filter(|r| *r != "snake_case") {
            self.out.problems.push(format!(
                "{}: struct {name}: rename_all = \"{r}\" is not understood by this test",
                self.rel
            ));
        }
        let Fields::Named(fields) = &s.fields else {
            self.out
                .problems
                .push(format!("{}: struct {name} has no named fields", self.rel));
            return;
        };
        self.stack.push(name.to_owned());
        for field in &fields.named {
            let f = serde_attrs(&field.attrs);
            if f.skip {
                continue;
            }
            let ident = field.ident.as_ref().expect("named field").to_string();
            let ident = ident.trim_start_matches("r#").to_owned();
            let shape = shape(&field.ty, self.structs, self.enums);
            if f.flatten {
                match shape {
                    Shape::Struct { name, list: false } => self.table(&name, prefix),
                    other => self.out.problems.push(format!(
                        "{}: {name}.{ident}: flatten of {other:?} is not understood by this test",
                        self.rel
                    )),
                }
                continue;
            }
            for key in std::iter::once(f.rename.clone().unwrap_or(ident.clone())).chain(f.aliases) {
                let full = format!("{prefix}{key}");
                match &shape {
                    Shape::Leaf => {
                        self.out.keys.insert(full);
                    }
                    Shape::Struct { name, list } => {
                        let brackets = if *list { "[]" } else { "" };
                        self.table(name, &format!("{full}{brackets}."));
                        self.out.tables.insert(full);
                    }
                    Shape::Unknown(ty) => self.out.problems.push(format!(
                        "{}: {name}.{ident}: type `{ty}` is neither a config struct of this file \
                         nor a known single value; teach tidy.rs about it",
                        self.rel
                    )),
                }
            }
        }
        self.stack.pop();
    }
}

/// The keys the first table under `heading` documents (every backticked name in its first
/// column), each with its line number. `problems` gets rows that split off the table (a
/// paragraph or blank line in the middle ends a Markdown table: the rows after it render as
/// text) and cells that are not plain key names.
fn documented_keys(
    doc_name: &str,
    doc: &str,
    heading: &str,
) -> (BTreeMap<String, usize>, Vec<String>) {
    let lines: Vec<&str> = doc.lines().collect();
    let mut keys = BTreeMap::new();
    let mut problems = Vec::new();
    let Some(start) = lines.iter().position(|l| l.trim() == heading) else {
        problems.push(format!("{doc_name}: no heading {heading:?}"));
        return (keys, problems);
    };
    let section_end = lines[start + 1..]
        .iter()
        .position(|l| l.starts_with('#'))
        .map_or(lines.len(), |i| start + 1 + i);
    let section = start + 1..section_end;
    let Some(table_start) = section.clone().find(|&i| lines[i].starts_with('|')) else {
        problems.push(format!("{doc_name}: no table under {heading:?}"));
        return (keys, problems);
    };
    let table_end = (table_start..section_end)
        .find(|&i| !lines[i].starts_with('|'))
        .unwrap_or(section_end);
    let split_off: Vec<usize> = (table_end..section_end)
        .filter(|&i| lines[i].starts_with('|'))
        .collect();
    if let (Some(first), Some(last)) = (split_off.first(), split_off.last()) {
        problems.push(format!(
            "{doc_name}:{}: the {heading:?} table ends here (a paragraph or blank line splits \
             it), but {} more row(s) follow on lines {}-{}, which render as text; move the text \
             below the table",
            table_end + 1,
            split_off.len(),
            first + 1,
            last + 1
        ));
    }
    // Rows after the header and separator rows, including any split off (their keys count, so
    // a split table is reported once, not also as missing keys).
    for (i, line) in (table_start + 2..section_end)
        .map(|i| (i, lines[i]))
        .filter(|(_, l)| l.starts_with('|'))
    {
        let first = line.trim_start_matches('|').split('|').next().unwrap_or("");
        let mut spans = first.split('`').skip(1).step_by(2).peekable();
        if spans.peek().is_none() {
            problems.push(format!("{doc_name}:{}: row names no `key`", i + 1));
        }
        for key in spans {
            let plain = key
                .chars()
                .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || "_.[]".contains(c));
            if !plain {
                problems.push(format!(
                    "{doc_name}:{}: `{key}` is not a key name (write each key out in full)",
                    i + 1
                ));
            } else if let Some(prev) = keys.insert(key.to_owned(), i + 1) {
                problems.push(format!(
                    "{doc_name}:{}: `{key}` documented twice (also line {prev})",
                    i + 1
                ));
            }
        }
    }
    (keys, problems)
}

fn check_config_table(config_rs: &str, root_struct: &str, heading: &str) {
    let accepted = accepted_keys(config_rs, root_struct);
    let (documented, doc_problems) = documented_keys("README.md", &read("README.md"), heading);
    let mut problems = accepted.problems;
    problems.extend(doc_problems);
    for key in accepted
        .keys
        .iter()
        .filter(|k| !documented.contains_key(*k))
    {
        problems.push(format!(
            "`{key}` is accepted by {config_rs} ({root_struct}) but missing from README.md's \
             {heading} table"
        ));
    }
    for (key, line) in documented
        .iter()
        .filter(|(k, _)| !accepted.keys.contains(*k) && !accepted.tables.contains(*k))
    {
        problems.push(format!(
            "README.md:{line}: `{key}` is documented under {heading} but {config_rs} \
             ({root_struct}) does not accept it"
        ));
    }
    report(&format!("README.md {heading} vs {config_rs}"), &problems);
}

#[test]
fn readme_agent_config_table_lists_exactly_the_accepted_keys() {
    check_config_table(
        "edge-agent/src/config/schema.rs",
        "AgentConfig",
        "### `agent.toml`",
    );
}

#[test]
fn readme_hub_config_table_lists_exactly_the_accepted_keys() {
    check_config_table("hub/src/config.rs", "HubConfig", "### `hub.toml`");
}

#[test]
fn the_key_walker_sees_renames_aliases_flatten_skip_and_lists() {
    let src = r#"
        #[derive(Deserialize)]
        #[serde(deny_unknown_fields)]
        pub struct Root {
            #[serde(rename = "the-name")]
            pub name: String,
            #[serde(default, alias = "old_port")]
            pub port: Option<u16>,
            pub items: Vec<Item>,
            #[serde(flatten)]
            pub extra: Extra,
            #[serde(skip)]
            pub cache: u64,
            pub map: BTreeMap<String, String>,
        }
        #[derive(Deserialize)]
        #[serde(deny_unknown_fields)]
        pub struct Item { pub path: PathBuf, pub inner: Option<Inner> }
        #[derive(Deserialize)]
        pub struct Inner { pub level: i32 }
        #[derive(Deserialize)]
        #[serde(deny_unknown_fields)]
        pub struct Extra { #[serde(rename(serialize = "x", deserialize = "y"))] pub z: bool }
    "#;
    let Accepted {
        keys,
        tables,
        problems,
    } = accepted_keys_in("fixture.rs", src, "Root");
    let keys: Vec<&str> = keys.iter().map(String::as_str).collect();
    let tables: Vec<&str> = tables.iter().map(String::as_str).collect();
    assert_eq!(tables, ["items", "items[].inner"]);
    assert_eq!(
        keys,
        [
            "items[].inner.level",
            "items[].path",
            "map",
            "old_port",
            "port",
            "the-name",
            "y"
        ]
    );
    assert_eq!(problems.len(), 1, "{problems:?}");
    assert!(problems[0].contains("Inner") && problems[0].contains("deny_unknown_fields"));
}

#[test]
fn a_paragraph_inside_a_table_is_found() {
    let doc = "### `x.toml`\n\n| field | default |\n|---|---|\n| `a` | 1 |\n\nSome text.\n\n| `b` | 2 |\n\n## Next\n";
    let (keys, problems) = documented_keys("X.md", doc, "### `x.toml`");
    // The split-off row still counts (reported once, as split, not also as missing).
    assert_eq!(keys.keys().collect::<Vec<_>>(), ["a", "b"]);
    assert_eq!(problems.len(), 1, "{problems:?}");
    assert!(
        problems[0].starts_with("X.md:6:") && problems[0].contains("lines 9-9"),
        "{problems:?}"
    );
}

// ---------------------------------------------------------------------------------------------
// Metrics

/// The source directories of the crates the binaries are built from that register metrics.
const METRIC_CRATES: &[&str] = &["edge-agent/src", "hub/src", "net/src"];

/// Where metrics are documented: every name the binaries register is listed there.
const METRICS_DOC: &str = "ARCHITECTURE.md";
const METRICS_HEADING: &str = "## Metrics";

/// Docs that may mention metric names in passing; each mention must exist.
const DOCS_MENTIONING_METRICS: &[&str] = &[
    "README.md",
    "ARCHITECTURE.md",
    "SECURITY.md",
    "BENCHMARKS.md",
    "bench/README.md",
    "plugins/README.md",
    "protocol/README.md",
];

fn is_cfg_test(attrs: &[Attribute]) -> bool {
    attrs.iter().any(|a| {
        a.path().is_ident("test")
            || (a.path().is_ident("cfg") && a.parse_args::<syn::Ident>().is_ok_and(|i| i == "test"))
    })
}

fn item_attrs(item: &Item) -> &[Attribute] {
    match item {
        Item::Const(i) => &i.attrs,
        Item::Enum(i) => &i.attrs,
        Item::Fn(i) => &i.attrs,
        Item::Impl(i) => &i.attrs,
        Item::Macro(i) => &i.attrs,
        Item::Mod(i) => &i.attrs,
        Item::Static(i) => &i.attrs,
        Item::Struct(i) => &i.attrs,
        Item::Trait(i) => &i.attrs,
        Item::Use(i) => &i.attrs,
        _ => &[],
    }
}

/// The string literals of a token stream, macro bodies included.
fn string_literals(tokens: TokenStream, out: &mut Vec<String>) {
    for tt in tokens {
        match tt {
            TokenTree::Group(g) => string_literals(g.stream(), out),
            TokenTree::Literal(l) => {
                if let syn::Lit::Str(s) = syn::Lit::new(l) {
                    out.push(s.value());
                }
            }
            _ => {}
        }
    }
}

/// Walks a crate's module tree from `file` (a module in `dir`'s namespace), leaving out
/// `#[cfg(test)]` and `#[test]` items and the files of test modules, and collects the string
/// literals of what is left.
fn crate_literals(file: &Path, children_dir: &Path, out: &mut Vec<(String, String)>) {
    let rel = relative(file);
    let parsed = parse_rust(&rel);
    module_literals(&rel, &parsed.items, children_dir, out);
}

fn module_literals(
    rel: &str,
    items: &[Item],
    children_dir: &Path,
    out: &mut Vec<(String, String)>,
) {
    for item in items {
        if is_cfg_test(item_attrs(item)) {
            continue;
        }
        match item {
            Item::Mod(m) => {
                let name = m.ident.to_string();
                assert!(
                    !m.attrs.iter().any(|a| a.path().is_ident("path")),
                    "{rel}: mod {name} has #[path]: teach tidy.rs about it"
                );
                match &m.content {
                    Some((_, inner)) => {
                        module_literals(rel, inner, &children_dir.join(&name), out);
                    }
                    None => {
                        let flat = children_dir.join(format!("{name}.rs"));
                        let nested = children_dir.join(&name).join("mod.rs");
                        let file = if flat.exists() { flat } else { nested };
                        assert!(file.exists(), "{rel}: no file for mod {name}");
                        crate_literals(&file, &children_dir.join(&name), out);
                    }
                }
            }
            other => {
                let mut lits = Vec::new();
                string_literals(other.to_token_stream(), &mut lits);
                out.extend(lits.into_iter().map(|l| (l, rel.to_owned())));
            }
        }
    }
}

/// A metric name: the project's `er_` namespace, Prometheus characters.
fn is_metric_name(s: &str) -> bool {
    s.strip_prefix("er_").is_some_and(|rest| {
        rest.starts_with(|c: char| c.is_ascii_lowercase())
            && rest
                .chars()
                .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '_')
            && !rest.ends_with('_')
    })
}

/// Every metric name the binaries' crates register, with the file that names it: the string
/// literals of non-test code that are metric names (the names are `&str` constants in each
/// binary's `metrics.rs`, but a literal given to `counter!` directly counts too).
fn code_metric_names() -> BTreeMap<String, String> {
    let mut names = BTreeMap::new();
    for dir in METRIC_CRATES {
        let dir = root().join(dir);
        for top in ["lib.rs", "main.rs"] {
            let file = dir.join(top);
            if !file.exists() {
                continue;
            }
            let mut lits = Vec::new();
            crate_literals(&file, &dir, &mut lits);
            for (lit, rel) in lits {
                if is_metric_name(&lit) {
                    names.entry(lit).or_insert(rel);
                }
            }
        }
    }
    names
}

/// Metric names mentioned in a text, with their line numbers. Prometheus labels after a name
/// (`er_x_total{site}`, `{reason="expired"}`) are not part of it; a brace group followed by more
/// of the name is an alternation (`er_agent_plugin_records_{in,out,dropped}_total`). Mentions
/// ending in `_` are prefixes (`er_agent_*`), not names.
fn metric_mentions(text: &str) -> Vec<(String, usize)> {
    let name_char = |c: char| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '_';
    let mut out = Vec::new();
    for (n, line) in text.lines().enumerate() {
        let mut from = 0;
        while let Some(at) = line[from..].find("er_").map(|i| from + i) {
            from = at + 3;
            let boundary = line[..at]
                .chars()
                .next_back()
                .is_none_or(|c| !(c.is_ascii_alphanumeric() || c == '_'));
            if !boundary {
                continue;
            }
            let rest = &line[at..];
            let mut names = vec![String::new()];
            let mut i = 0;
            while i < rest.len() {
                let c = rest[i..].chars().next().expect("in bounds");
                if name_char(c) {
                    names.iter_mut().for_each(|n| n.push(c));
                    i += 1;
                } else if c == '{' {
                    let Some(close) = rest[i..].find('}').map(|j| i + j) else {
                        break;
                    };
                    let after = rest[close + 1..].chars().next();
                    if !after.is_some_and(name_char) {
                        break; // labels
                    }
                    let alternatives: Vec<&str> = rest[i + 1..close].split(',').collect();
                    names = names
                        .iter()
                        .flat_map(|n| alternatives.iter().map(move |a| format!("{n}{a}")))
                        .collect();
                    i = close + 1;
                } else {
                    break;
                }
            }
            from = at + i.max(3);
            out.extend(
                names
                    .into_iter()
                    .filter(|n| is_metric_name(n))
                    .map(|name| (name, n + 1)),
            );
        }
    }
    out
}

/// The lines of `doc` from `heading` to the next heading of the same or a higher level, with
/// the number of the first.
fn section<'a>(doc: &'a str, heading: &str) -> Option<(usize, Vec<&'a str>)> {
    let lines: Vec<&str> = doc.lines().collect();
    let start = lines.iter().position(|l| l.trim() == heading)?;
    let level = heading.chars().take_while(|&c| c == '#').count();
    let end = lines[start + 1..]
        .iter()
        .position(|l| {
            let hashes = l.chars().take_while(|&c| c == '#').count();
            hashes > 0 && hashes <= level && l[hashes..].starts_with(' ')
        })
        .map_or(lines.len(), |i| start + 1 + i);
    Some((start, lines[start..end].to_vec()))
}

/// Histogram series carry suffixes in PromQL and the exposition format.
fn base_metric<'a>(name: &'a str, code: &BTreeMap<String, String>) -> &'a str {
    ["_bucket", "_sum", "_count"]
        .iter()
        .find_map(|s| name.strip_suffix(s).filter(|b| code.contains_key(*b)))
        .unwrap_or(name)
}

#[test]
fn every_registered_metric_is_documented_and_every_documented_one_exists() {
    let code = code_metric_names();
    assert!(
        code.len() > 20,
        "found only {} metric names in {METRIC_CRATES:?}: {code:?}",
        code.len()
    );
    let mut problems = Vec::new();
    let doc = read(METRICS_DOC);
    let Some((start, lines)) = section(&doc, METRICS_HEADING) else {
        panic!("{METRICS_DOC}: no heading {METRICS_HEADING:?}");
    };
    let documented: Vec<(String, usize)> = metric_mentions(&lines.join("\n"))
        .into_iter()
        .map(|(name, line)| (name, start + line))
        .collect();
    for (name, file) in &code {
        if !documented.iter().any(|(d, _)| d == name) {
            problems.push(format!(
                "`{name}` ({file}) is not documented in {METRICS_DOC}'s {METRICS_HEADING:?}"
            ));
        }
    }
    for (name, line) in &documented {
        if !code.contains_key(base_metric(name, &code)) {
            problems.push(format!(
                "{METRICS_DOC}:{line}: `{name}` is documented but no binary registers it"
            ));
        }
    }
    // Mentions elsewhere, in the namespaces the binaries use (`er_agent_`, `er_hub_`, ...; so
    // crate names such as `er_net` are left alone).
    let namespaces: BTreeSet<&str> = code
        .keys()
        .filter_map(|n| n.match_indices('_').nth(1).map(|(i, _)| &n[..=i]))
        .collect();
    for rel in DOCS_MENTIONING_METRICS {
        for (name, line) in metric_mentions(&read(rel)) {
            let in_namespace = namespaces.iter().any(|ns| name.starts_with(ns));
            let reported_above = *rel == METRICS_DOC && documented.contains(&(name.clone(), line));
            if in_namespace && !reported_above && !code.contains_key(base_metric(&name, &code)) {
                problems.push(format!(
                    "{rel}:{line}: `{name}` names a metric no binary registers"
                ));
            }
        }
    }
    problems.dedup();
    report("metric names", &problems);
}

#[test]
fn metric_mentions_strip_labels_and_expand_alternations() {
    let text = "`er_a_b_{in,out}_total{route,plugin}` and er_c_total{reason=\"x\"}, \
                not er_agent_* nor filter_er_x; er_hub_transaction_seconds_bucket";
    let got: Vec<String> = metric_mentions(text).into_iter().map(|(n, _)| n).collect();
    assert_eq!(
        got,
        [
            "er_a_b_in_total",
            "er_a_b_out_total",
            "er_c_total",
            "er_hub_transaction_seconds_bucket"
        ]
    );
}

// ---------------------------------------------------------------------------------------------
// Module docs and self-contained docs

#[test]
fn every_rust_file_starts_with_a_module_doc() {
    let mut files = Vec::new();
    files_with_ext(&root(), ".rs", &mut files);
    assert!(files.len() > 50, "found only {} .rs files", files.len());
    let problems: Vec<String> = files
        .iter()
        .filter_map(|path| {
            let text = std::fs::read_to_string(path).expect("readable source file");
            let first = text.lines().find(|l| !l.trim().is_empty()).unwrap_or("");
            let doc = first.strip_prefix("//!").map(str::trim);
            (doc.is_none_or(str::is_empty)).then(|| {
                format!(
                    "{}: does not start with a `//!` line saying what the module is for",
                    relative(path)
                )
            })
        })
        .collect();
    report("module docs", &problems);
}

/// Resolves `target` relative to the directory `from_dir` (both inside the repository)
/// lexically; `None` when it leaves the repository.
fn resolve_in_repo(from_dir: &Path, target: &str) -> Option<PathBuf> {
    let mut parts: Vec<Component<'_>> = from_dir.components().collect();
    for c in Path::new(target).components() {
        match c {
            Component::ParentDir => {
                parts.pop()?;
            }
            Component::CurDir => {}
            Component::Normal(_) => parts.push(c),
            Component::RootDir | Component::Prefix(_) => return None,
        }
    }
    Some(parts.iter().collect())
}

#[test]
fn docs_point_only_into_the_repository() {
    let mut files = Vec::new();
    files_with_ext(&root(), ".md", &mut files);
    let mut problems = Vec::new();
    for path in &files {
        let rel = relative(path);
        let rel_dir = Path::new(&rel).parent().unwrap_or(Path::new("")).to_owned();
        let text = std::fs::read_to_string(path).expect("readable doc");
        for (n, line) in text.lines().enumerate() {
            // Markdown link targets, and backticked paths that climb out of their directory.
            let links = line
                .match_indices("](")
                .filter_map(|(i, _)| line[i + 2..].split(')').next());
            let climbing = line
                .split('`')
                .skip(1)
                .step_by(2)
                .filter(|s| s.starts_with("../"));
            for target in links.chain(climbing) {
                let target = target.split('#').next().unwrap_or("");
                if target.is_empty() || target.contains("://") || target.starts_with("mailto:") {
                    continue;
                }
                match resolve_in_repo(&rel_dir, target) {
                    None => problems.push(format!(
                        "{rel}:{}: `{target}` is outside the repository; say what is needed in \
                         place",
                        n + 1
                    )),
                    Some(p) if !root().join(&p).exists() => problems.push(format!(
                        "{rel}:{}: `{target}` does not exist ({})",
                        n + 1,
                        p.display()
                    )),
                    Some(_) => {}
                }
            }
        }
    }
    report("doc links", &problems);
}

// ---------------------------------------------------------------------------------------------
// Function length

/// Longest function, in lines, in the agent and the hub (the binaries' I/O edges): loops there
/// stay small dispatchers calling named handlers (issue 17). Tests are exempt; the protocol
/// crate's frame codec and state machines are one `match` per frame type and are not held to it.
const MAX_FN_LINES: usize = 80;

/// Files, and directories of files, held to [`MAX_FN_LINES`].
const SHORT_FN_PATHS: &[&str] = &["edge-agent/src", "hub/src"];

/// Name, first line (1-based) and length in lines of every function in rustfmt-formatted `src`
/// before its `#[cfg(test)] mod tests`: from the `fn` line to the `}` at the same indentation
/// (a nested function counts as part of the one around it).
fn function_lengths(src: &str) -> Vec<(String, usize, usize)> {
    let lines: Vec<&str> = src.lines().collect();
    let mut out = Vec::new();
    let mut i = 0;
    while i < lines.len() {
        let line = lines[i];
        if line.trim() == "#[cfg(test)]"
            && lines
                .get(i + 1)
                .is_some_and(|l| l.trim_start().starts_with("mod tests"))
        {
            break;
        }
        let body = line.trim_start();
        let indent = &line[..line.len() - body.len()];
        let mut rest = body;
        for prefix in [
            "pub(crate) ",
            "pub(super) ",
            "pub ",
            "const ",
            "async ",
            "unsafe ",
        ] {
            rest = rest.strip_prefix(prefix).unwrap_or(rest);
        }
        let Some(name) = rest.strip_prefix("fn ").map(|r| {
            r.split(|c: char| !(c.is_alphanumeric() || c == '_'))
                .next()
                .unwrap_or_default()
                .to_owned()
        }) else {
            i += 1;
            continue;
        };
        let mut end = i;
        if !(body.ends_with('}') || body.ends_with(';')) {
            end += 1;
            while end < lines.len() {
                let l = lines[end];
                let at_indent = l
                    .strip_prefix(indent)
                    .is_some_and(|r| !r.starts_with(char::is_whitespace));
                if l == format!("{indent}}}") || (at_indent && l.ends_with(';')) {
                    break;
                }
                end += 1;
            }
        }
        out.push((name, i + 1, end - i + 1));
        i = end + 1;
    }
    out
}

#[test]
fn functions_in_the_agent_and_the_hub_stay_short() {
    let mut files = Vec::new();
    for rel in SHORT_FN_PATHS {
        let path = root().join(rel);
        if path.is_dir() {
            files_with_ext(&path, ".rs", &mut files);
        } else {
            assert!(path.is_file(), "{rel} is gone: update SHORT_FN_PATHS");
            files.push(path);
        }
    }
    let mut problems = Vec::new();
    for path in &files {
        let text = std::fs::read_to_string(path).expect("readable source file");
        for (name, line, len) in function_lengths(&text) {
            if len > MAX_FN_LINES {
                problems.push(format!(
                    "{}:{line}: fn {name} is {len} lines, more than {MAX_FN_LINES}: split it into named steps",
                    relative(path)
                ));
            }
        }
    }
    report("function length", &problems);
}

#[test]
fn function_lengths_follow_rustfmt_layout() {
    let src = "\
fn one() -> u32 { 1 }

pub(crate) async fn two(
    a: u32,
) -> u32 {
    let f = |x| {
        x
    };
    f(a)
}

trait T {
    fn declared(
        &self,
    ) -> u32;
    fn provided(&self) -> u32 {
        fn nested() {}
        0
    }
}

#[cfg(test)]
mod tests {
    fn long() {}
}
";
    assert_eq!(
        function_lengths(src),
        [
            ("one".to_owned(), 1, 1),
            ("two".to_owned(), 3, 8),
            ("declared".to_owned(), 13, 3),
            ("provided".to_owned(), 16, 4),
        ]
    );
}
