//! docs/CLI.md is the `--help` of every subcommand, so the documented flags and environment
//! variables are the ones the binary has. This test fails when the file is stale; regenerate
//! it with `scripts/cli-reference.sh` (or `SDPLANE_UPDATE_DOCS=1 cargo test --test cli_reference`).

use std::path::Path;
use std::process::Command;

const SUBCOMMANDS: [&str; 7] = [
    "up",
    "router",
    "controller",
    "replica",
    "models",
    "generate",
    "make-test-model",
];

fn help(args: &[&str]) -> String {
    let out = Command::new(env!("CARGO_BIN_EXE_sdplane"))
        .args(args)
        .arg("--help")
        // Help text shows `[env: X=value]` for variables set in the environment; keep it neutral.
        .env_clear()
        .env("COLUMNS", "100")
        .output()
        .expect("run sdplane --help");
    assert!(out.status.success(), "sdplane {args:?} --help failed");
    String::from_utf8(out.stdout).expect("utf-8 help")
}

fn reference() -> String {
    let mut doc = String::from(
        "# sdplane command line\n\nGenerated from the binary by `scripts/cli-reference.sh`; a test fails when it is stale.\n\
         Every flag's environment variable is shown as `[env: NAME=]`.\n\n## sdplane\n\n```text\n",
    );
    doc.push_str(&help(&[]));
    doc.push_str("```\n");
    for sub in SUBCOMMANDS {
        doc.push_str(&format!("\n## sdplane {sub}\n\n```text\n{}```\n", help(&[sub])));
    }
    doc
}

#[test]
fn docs_cli_reference_matches_the_binary_help() {
    let path = Path::new(env!("CARGO_MANIFEST_DIR")).join("docs/CLI.md");
    let expected = reference();
    if std::env::var_os("SDPLANE_UPDATE_DOCS").is_some() {
        std::fs::write(&path, &expected).expect("write docs/CLI.md");
        return;
    }
    let current = std::fs::read_to_string(&path).unwrap_or_default();
    assert!(
        current == expected,
        "docs/CLI.md is stale: run scripts/cli-reference.sh and commit the result"
    );
}

#[test]
fn every_flag_in_the_readme_configuration_table_exists() {
    let readme =
        std::fs::read_to_string(Path::new(env!("CARGO_MANIFEST_DIR")).join("README.md")).expect("README");
    let all_help: String = SUBCOMMANDS.iter().map(|s| help(&[s])).collect();
    let table = readme
        .split("## Configuration")
        .nth(1)
        .expect("README has a Configuration section");
    let table = table.split("\n## ").next().unwrap_or(table);
    for line in table.lines().filter(|l| l.starts_with("| `--")) {
        for flag in line.split('`').filter(|t| t.starts_with("--")) {
            assert!(
                all_help.contains(&format!("{flag} ")),
                "README documents {flag}, which no subcommand has"
            );
        }
    }
}
