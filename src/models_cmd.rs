//! `sdplane models`: the offline listing of a models folder (what `deploy_sd.sh --list` shows).
//! Bad files are listed with their error; the command still exits 0.

use std::io::Write;

use sdplane_wire::admin::{ModelFileEntry, ModelFileList};
use sdplane_wire::checkpoint::scan::scan_models_dir;

/// `sdplane models` configuration.
#[derive(Debug, clap::Args)]
pub struct ModelsArgs {
    /// Folder of `.safetensors` model files.
    #[arg(long, env = "SDPLANE_MODELS", default_value = "models")]
    pub models: std::path::PathBuf,
    /// Print the listing as JSON (the controller's `GET /v1/models` body) instead of a table.
    #[arg(long, env = "SDPLANE_MODELS_JSON")]
    pub json: bool,
}

pub fn run(args: ModelsArgs) -> anyhow::Result<()> {
    let models = scan_models_dir(&args.models)?;
    let text = if args.json {
        let list = ModelFileList {
            models_dir: args.models.display().to_string(),
            models,
        };
        serde_json::to_string_pretty(&list)? + "\n"
    } else if models.is_empty() {
        format!("no .safetensors files under {}\n", args.models.display())
    } else {
        render_table(&models)
    };
    let mut out = std::io::stdout().lock();
    match out.write_all(text.as_bytes()).and_then(|()| out.flush()) {
        // The reader left early (`sdplane models | head`): not an error of the listing.
        Err(e) if e.kind() == std::io::ErrorKind::BrokenPipe => Ok(()),
        other => Ok(other?),
    }
}

/// Aligned columns FILE, FAMILY, DTYPE, SIZE, PARAMS, APP, and ERROR when any row has one.
fn render_table(models: &[ModelFileEntry]) -> String {
    let dash = || "-".to_string();
    let mut rows: Vec<Vec<String>> = vec![
        ["FILE", "FAMILY", "DTYPE", "SIZE", "PARAMS", "APP"]
            .iter()
            .map(|s| s.to_string())
            .collect(),
    ];
    let any_error = models.iter().any(|m| m.error.is_some());
    if any_error {
        rows[0].push("ERROR".into());
    }
    for m in models {
        let mut row = vec![
            m.file.clone(),
            m.family_label.clone().unwrap_or_else(dash),
            m.dtype.clone().unwrap_or_else(dash),
            human_bytes(m.size_bytes),
            m.parameters.map(human_count).unwrap_or_else(dash),
            m.app_name.clone(),
        ];
        if any_error {
            row.push(m.error.clone().unwrap_or_default());
        }
        rows.push(row);
    }
    let columns = rows[0].len();
    let widths: Vec<usize> = (0..columns)
        .map(|c| rows.iter().map(|r| r[c].chars().count()).max().unwrap_or(0))
        .collect();
    let mut out = String::new();
    for row in rows {
        let cells: Vec<String> = row
            .iter()
            .zip(&widths)
            .map(|(cell, &w)| format!("{cell:<w$}"))
            .collect();
        out.push_str(cells.join("  ").trim_end());
        out.push('\n');
    }
    out
}

/// `4.0 GiB`, `12.3 MiB`, `512 B`.
fn human_bytes(bytes: u64) -> String {
    const UNITS: [&str; 5] = ["B", "KiB", "MiB", "GiB", "TiB"];
    let mut value = bytes as f64;
    let mut unit = 0;
    while value >= 1024.0 && unit + 1 < UNITS.len() {
        value /= 1024.0;
        unit += 1;
    }
    if unit == 0 {
        format!("{bytes} B")
    } else {
        format!("{value:.1} {}", UNITS[unit])
    }
}

/// `1.07B`, `12.3M`, `860.0K`, `77`.
fn human_count(n: u64) -> String {
    match n {
        0..1_000 => n.to_string(),
        1_000..1_000_000 => format!("{:.1}K", n as f64 / 1e3),
        1_000_000..1_000_000_000 => format!("{:.1}M", n as f64 / 1e6),
        _ => format!("{:.2}B", n as f64 / 1e9),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn entry(file: &str, label: Option<&str>, error: Option<&str>) -> ModelFileEntry {
        ModelFileEntry {
            file: file.into(),
            size_bytes: 6_938_078_334,
            app_name: sdplane_wire::app_name_for_file(std::path::Path::new(file)),
            family: label.map(|_| "sdxl".into()),
            family_label: label.map(Into::into),
            dtype: label.map(|_| "F16".into()),
            parameters: label.map(|_| 3_468_000_000),
            error: error.map(Into::into),
            deployed_app: None,
            app_state: None,
        }
    }

    #[test]
    fn table_aligns_columns_and_lists_errors_last() {
        let table = render_table(&[
            entry("sd_xl_base_1.0.safetensors", Some("SDXL base"), None),
            entry(
                "bad.safetensors",
                None,
                Some("bad.safetensors: file is truncated"),
            ),
        ]);
        let lines: Vec<&str> = table.lines().collect();
        assert_eq!(lines.len(), 3);
        assert!(
            lines[0].starts_with("FILE ") && lines[0].ends_with("ERROR"),
            "{table}"
        );
        assert!(lines[1].contains("SDXL base") && lines[1].contains("6.5 GiB") && lines[1].contains("3.47B"));
        assert!(lines[1].contains("sd-sd-xl-base-1-0"));
        assert!(
            lines[2].ends_with("bad.safetensors: file is truncated"),
            "{table}"
        );
        // Every column starts at the same offset on every line.
        let col = lines[0].find("FAMILY").unwrap_or(usize::MAX);
        assert_eq!(lines[1].find("SDXL base"), Some(col));
        assert_eq!(&lines[2][col..col + 2], "- ");
    }

    #[test]
    fn table_without_errors_has_no_error_column() {
        let table = render_table(&[entry("a.safetensors", Some("SD 1.x"), None)]);
        assert!(!table.contains("ERROR"), "{table}");
    }

    #[test]
    fn sizes_and_counts_are_human_readable() {
        assert_eq!(human_bytes(512), "512 B");
        assert_eq!(human_bytes(4_265_146_304), "4.0 GiB");
        assert_eq!(human_bytes(12_900_000), "12.3 MiB");
        assert_eq!(human_count(77), "77");
        assert_eq!(human_count(859_520_964), "859.5M");
        assert_eq!(human_count(1_066_235_307), "1.07B");
    }
}
