//! The template crate of `edge-agent plugin new` (`plugins/sdk/template`), compiled and unit
//! tested against this SDK, and the guide's copy of it kept identical.

#[path = "../template/src/lib.rs"]
mod template;

/// The plugin code of the template (without its tests), as the guide shows it.
fn template_plugin_code() -> &'static str {
    let code = include_str!("../template/src/lib.rs");
    let end = code.find("#[cfg(test)]").expect("template has tests");
    code[..end].trim_end()
}

#[test]
fn guide_shows_the_template_verbatim() {
    let guide = include_str!("../../README.md");
    assert!(
        guide.contains(template_plugin_code()),
        "plugins/README.md must contain plugins/sdk/template/src/lib.rs (up to its tests) verbatim"
    );
}
