//! The app-name rule of the design: `sd-` + file stem, lower-cased, every run of characters
//! outside `[a-z0-9]` turned into one `-`, trimmed, at most 63 characters (a DNS label, so the
//! same name is valid as a Kubernetes object name).

use std::path::Path;

/// Longest DNS label (RFC 1123), and so the longest app name.
pub const MAX_APP_NAME_LEN: usize = 63;

/// The app name for a model file: `sd_xl_base_1.0.safetensors` → `sd-sd-xl-base-1-0`.
pub fn app_name_for_file(path: &Path) -> String {
    app_name_for_stem(path.file_stem().and_then(|s| s.to_str()).unwrap_or_default())
}

/// The rule itself, for a name with nothing left to strip (a file stem, a folder's whole name).
pub fn app_name_for_stem(stem: &str) -> String {
    let mut name = String::from("sd-");
    let mut pending_dash = false;
    for c in stem.chars().flat_map(char::to_lowercase) {
        if c.is_ascii_lowercase() || c.is_ascii_digit() {
            if pending_dash && !name.ends_with('-') {
                name.push('-');
            }
            pending_dash = false;
            name.push(c);
        } else {
            pending_dash = true;
        }
    }
    name.truncate(MAX_APP_NAME_LEN);
    name.trim_end_matches('-').to_string()
}

/// Whether `name` is a valid app name (what `app_name_for_file` can produce).
pub fn is_valid_app_name(name: &str) -> bool {
    !name.is_empty()
        && name.len() <= MAX_APP_NAME_LEN
        && name.starts_with("sd-")
        && !name.ends_with('-')
        && !name.contains("--")
        && name
            .bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-')
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn design_example_maps_to_documented_name() {
        assert_eq!(
            app_name_for_file(Path::new("sd_xl_base_1.0.safetensors")),
            "sd-sd-xl-base-1-0"
        );
    }

    #[test]
    fn runs_of_odd_characters_become_one_dash_and_ends_are_trimmed() {
        assert_eq!(
            app_name_for_file(Path::new("models/__My  Model!!v2__.safetensors")),
            "sd-my-model-v2"
        );
        assert_eq!(
            app_name_for_file(Path::new("v1-5-pruned-emaonly.safetensors")),
            "sd-v1-5-pruned-emaonly"
        );
    }

    #[test]
    fn long_names_are_cut_to_a_dns_label_without_trailing_dash() {
        let long = format!("{}-{}.safetensors", "a".repeat(58), "b".repeat(30));
        let name = app_name_for_file(Path::new(&long));
        assert!(name.len() <= MAX_APP_NAME_LEN);
        assert!(is_valid_app_name(&name), "{name}");
    }

    #[test]
    fn validity_check_rejects_what_the_rule_cannot_produce() {
        assert!(is_valid_app_name("sd-sd-xl-base-1-0"));
        for bad in ["", "sd-", "SD-x", "sd--x", "x-sd", "sd-x/y", &"sd-".repeat(30)] {
            assert!(!is_valid_app_name(bad), "{bad}");
        }
    }
}
