//! The one-way data flow, checked (ARCHITECTURE.md, "Data flow"): a module in a stage folder
//! (`config`, `kernel`, `collect`, `analyse`, `serve`) of agent-core or agent-user names nothing
//! of a later stage, nor the commands on top. Paths are read with `syn` from every `use` and
//! every path in the code (comments do not count).
use std::path::{Path, PathBuf};

use anyhow::{Context as _, Result, bail};
use syn::visit::Visit;

/// The stages in data-flow order; what is not a stage (`cli`, `cmd`) comes after all of them.
const STAGES: [&str; 5] = ["config", "kernel", "collect", "analyse", "serve"];
/// Crates whose `src/<stage>/` folders are checked, and the name other crates use for them.
const CRATES: [(&str, &str); 2] = [("agent-core", "agent_core"), ("agent-user", "crate")];

fn rank(module: &str) -> usize {
    STAGES.iter().position(|s| *s == module).unwrap_or(STAGES.len())
}

/// Every path of `source` that starts at a crate root the check knows: `crate::x` (the file's
/// own crate, `own`) or `agent_core::x`, as (crate, first module).
fn roots(source: &str, own: &str) -> Result<Vec<(String, String)>> {
    struct Paths<'a> {
        own: &'a str,
        found: Vec<(String, String)>,
    }
    impl Paths<'_> {
        fn add(&mut self, first: &str, second: &str) {
            let krate = match first {
                "crate" => self.own,
                "agent_core" => "agent_core",
                _ => return,
            };
            self.found.push((krate.to_string(), second.to_string()));
        }

        fn tree(&mut self, prefix: &[String], tree: &syn::UseTree) {
            let at = |name: String| {
                let mut p = prefix.to_vec();
                p.push(name);
                p
            };
            match tree {
                syn::UseTree::Path(p) => self.tree(&at(p.ident.to_string()), &p.tree),
                syn::UseTree::Name(n) => self.leaf(&at(n.ident.to_string())),
                syn::UseTree::Rename(r) => self.leaf(&at(r.ident.to_string())),
                syn::UseTree::Glob(_) => self.leaf(prefix),
                syn::UseTree::Group(g) => g.items.iter().for_each(|t| self.tree(prefix, t)),
            }
        }

        fn leaf(&mut self, path: &[String]) {
            if let [first, second, ..] = path {
                self.add(first, second);
            }
        }
    }
    impl<'ast> Visit<'ast> for Paths<'_> {
        fn visit_item_use(&mut self, u: &'ast syn::ItemUse) {
            self.tree(&[], &u.tree);
        }

        fn visit_path(&mut self, p: &'ast syn::Path) {
            let mut segments = p.segments.iter().map(|s| s.ident.to_string());
            if let (Some(first), Some(second)) = (segments.next(), segments.next()) {
                self.add(&first, &second);
            }
            syn::visit::visit_path(self, p);
        }
    }
    let file = syn::parse_file(source)?;
    let mut paths = Paths { own, found: Vec::new() };
    paths.visit_file(&file);
    Ok(paths.found)
}

/// The violations in one file of stage `stage` of a crate known as `own` inside itself.
fn violations(source: &str, stage: &str, own: &str) -> Result<Vec<String>> {
    let checked = |krate: &str| krate == "agent_core" || krate == own;
    Ok(roots(source, own)?
        .into_iter()
        .filter(|(krate, module)| checked(krate) && rank(module) > rank(stage))
        .map(|(krate, module)| format!("{stage} uses {krate}::{module}, a later stage"))
        .collect())
}

fn rust_files(dir: &Path, out: &mut Vec<PathBuf>) -> Result<()> {
    for entry in std::fs::read_dir(dir).with_context(|| format!("reading {}", dir.display()))? {
        let path = entry?.path();
        if path.is_dir() {
            rust_files(&path, out)?;
        } else if path.extension().is_some_and(|e| e == "rs") {
            out.push(path);
        }
    }
    Ok(())
}

/// Fails naming every module that imports from a later stage.
pub fn check(root: &Path) -> Result<()> {
    let mut bad = Vec::new();
    let mut files = 0;
    for (dir, own) in CRATES {
        let own = if own == "crate" { dir } else { own };
        for stage in STAGES {
            let folder = root.join(dir).join("src").join(stage);
            if !folder.is_dir() {
                continue;
            }
            let mut paths = Vec::new();
            rust_files(&folder, &mut paths)?;
            for path in paths {
                let source = std::fs::read_to_string(&path)?;
                let found = violations(&source, stage, own).with_context(|| format!("parsing {}", path.display()))?;
                let rel = path.strip_prefix(root).unwrap_or(&path).display().to_string();
                bad.extend(found.into_iter().map(|v| format!("{rel}: {v}")));
                files += 1;
            }
        }
    }
    if !bad.is_empty() {
        bail!("imports against the data flow (ARCHITECTURE.md):\n{}", bad.join("\n"));
    }
    println!("stages: {files} modules, every import from the same or an earlier stage");
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn later_stages_and_commands_are_refused_earlier_ones_allowed() {
        let src = r#"
            use crate::{collect::{clock, collector::Collector}, kernel};
            use agent_core::serve::views;
            fn f() { crate::cmd::run::main(); let _ = agent_core::config::Config::default(); }
            // crate::serve::nothing (a comment)
        "#;
        let v = violations(src, "analyse", "agent-user").unwrap();
        assert_eq!(
            v,
            [
                "analyse uses agent_core::serve, a later stage",
                "analyse uses agent-user::cmd, a later stage"
            ]
        );
        assert_eq!(
            violations(src, "serve", "agent-user").unwrap(),
            ["serve uses agent-user::cmd, a later stage"]
        );
    }

    #[test]
    fn the_tree_keeps_the_data_flow() {
        check(&crate::root()).unwrap();
    }
}
