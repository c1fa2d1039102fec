//! Names people give things (tenants, locations, users, devices, rules, scripts, services):
//! one check, used by every API that stores such a name, so that what an operator reads is
//! what was stored.
//!
//! Refused: control characters (Unicode category Cc), format characters (Cf: the bidi
//! embeddings, overrides and isolates U+202A–U+202E and U+2066–U+2069, the zero-width
//! characters U+200B–U+200F, U+2060–U+2064, the byte order mark U+FEFF, the soft hyphen and
//! the rest of Cf), and the line and paragraph separators U+2028, U+2029 (Zl, Zp). Such
//! characters reorder or hide text on screen ("Trojan Source"): `admin\u{202E}txt.exe`
//! shows as `adminexe.txt`. Categories come from `unicode-properties` (unicode-rs).

use unicode_properties::{GeneralCategory, UnicodeGeneralCategory as _};

/// Whether `c` is invisible or changes how the text around it is shown: a control, format
/// or line/paragraph separator character.
pub fn is_hidden(c: char) -> bool {
    matches!(
        c.general_category(),
        GeneralCategory::Control
            | GeneralCategory::Format
            | GeneralCategory::LineSeparator
            | GeneralCategory::ParagraphSeparator
    )
}

/// Checks a name: 1 to `max_bytes` bytes after trimming, no [`is_hidden`] character.
/// Returns the trimmed name, or what is wrong (for a 400 naming the field).
pub fn check_name(value: &str, max_bytes: usize) -> Result<&str, String> {
    let v = value.trim();
    if v.is_empty() {
        return Err("must not be empty".into());
    }
    if v.len() > max_bytes {
        return Err(format!("must be at most {max_bytes} bytes"));
    }
    if let Some(c) = v.chars().find(|c| is_hidden(*c)) {
        return Err(format!(
            "must not contain control, invisible or bidirectional-formatting characters (found U+{:04X})",
            u32::from(c)
        ));
    }
    Ok(v)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn hidden_characters_are_refused_and_named() {
        for c in [
            '\u{0}',
            '\n',
            '\u{7f}',
            '\u{85}',
            '\u{AD}',
            '\u{200B}',
            '\u{200C}',
            '\u{200D}',
            '\u{200E}',
            '\u{200F}',
            '\u{202A}',
            '\u{202B}',
            '\u{202C}',
            '\u{202D}',
            '\u{202E}',
            '\u{2028}',
            '\u{2029}',
            '\u{2060}',
            '\u{2066}',
            '\u{2067}',
            '\u{2068}',
            '\u{2069}',
            '\u{FEFF}',
            '\u{E0001}',
        ] {
            assert!(is_hidden(c), "U+{:04X}", u32::from(c));
            let e = check_name(&format!("web{c}01"), 200).expect_err("refused");
            assert!(e.contains(&format!("U+{:04X}", u32::from(c))), "{e}");
        }
    }

    #[test]
    fn ordinary_names_pass_trimmed() {
        for ok in [
            "Acme GmbH",
            "Zürich – HQ",
            "東京オフィス",
            "web-01.example",
            "café ☕",
            "a b",
        ] {
            assert_eq!(check_name(&format!("  {ok} "), 200), Ok(ok));
        }
        assert!(check_name("   ", 200).is_err());
        assert!(check_name(&"x".repeat(201), 200).is_err());
        assert_eq!(check_name(&"x".repeat(200), 200).map(str::len), Ok(200));
    }
}
