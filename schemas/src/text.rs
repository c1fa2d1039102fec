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

/// Checks a name: at most `max_chars` characters, something besides white space, no
/// [`is_hidden`] character. Returns it trimmed, or what is wrong (for a 400 naming the
/// field). The OpenAPI document states the same rule as a pattern ([`name_pattern`]).
pub fn check_name(value: &str, max_chars: usize) -> Result<&str, String> {
    if value.chars().count() > max_chars {
        return Err(format!("must be at most {max_chars} characters"));
    }
    let v = value.trim();
    if v.is_empty() {
        return Err("must not be empty or only white space".into());
    }
    if let Some(c) = v.chars().find(|c| is_hidden(*c)) {
        return Err(format!(
            "must not contain control, invisible or bidirectional-formatting characters (found U+{:04X})",
            u32::from(c)
        ));
    }
    Ok(v)
}

/// A regular-expression character class (`[...]`, the characters themselves, in runs)
/// of every character `pick` takes.
fn class_of(pick: impl Fn(char) -> bool) -> String {
    let mut out = String::from("[");
    let mut run: Option<(char, char)> = None;
    let push = |(a, b): (char, char), out: &mut String| {
        let lit = |c: char, out: &mut String| {
            if matches!(c, '\\' | ']' | '[' | '^' | '-') {
                out.push('\\');
            }
            out.push(c);
        };
        lit(a, out);
        if b != a {
            out.push('-');
            lit(b, out);
        }
    };
    for c in (0..=u32::from(char::MAX)).filter_map(char::from_u32) {
        run = match run {
            _ if !pick(c) => {
                if let Some(r) = run {
                    push(r, &mut out);
                }
                None
            }
            Some((a, b)) if u32::from(b) + 1 == u32::from(c) => Some((a, c)),
            Some(r) => {
                push(r, &mut out);
                Some((c, c))
            }
            None => Some((c, c)),
        };
    }
    if let Some(r) = run {
        push(r, &mut out);
    }
    out.push(']');
    out
}

/// [`check_name`] as an anchored regular expression (for the OpenAPI document's
/// `pattern`, with `maxLength`): no [`is_hidden`] character, and one that is not white
/// space. The characters are written as themselves, so every regex dialect reads it alike.
pub fn name_pattern() -> String {
    let hidden = class_of(is_hidden);
    let inner = &hidden[1..hidden.len() - 1];
    let visible = class_of(|c| is_hidden(c) || c.is_whitespace());
    let visible_inner = &visible[1..visible.len() - 1];
    format!("^[^{inner}]*[^{visible_inner}][^{inner}]*$")
}

/// Text without [`is_hidden`] characters, possibly empty, as an anchored pattern.
pub fn visible_text_pattern() -> String {
    let hidden = class_of(is_hidden);
    format!("^[^{}]*$", &hidden[1..hidden.len() - 1])
}

/// A whole number people wrote (a JSON body, a TOML file), also when written with a zero
/// fraction (`60.0`): JSON Schema's `integer` (and so the OpenAPI document) allows that
/// form. `null` is absent. For `#[serde(deserialize_with)]`.
pub fn whole_number<'de, D: serde::Deserializer<'de>>(d: D) -> Result<Option<i64>, D::Error> {
    use serde::de::Error as _;
    use serde::Deserialize as _;
    let Some(n) = Option::<serde_json::Number>::deserialize(d)? else {
        return Ok(None);
    };
    if let Some(i) = n.as_i64() {
        return Ok(Some(i));
    }
    match n.as_f64() {
        #[allow(clippy::cast_possible_truncation)] // whole and within ±2^53 checked first
        Some(f) if f.fract() == 0.0 && f.abs() <= 9_007_199_254_740_992.0 => Ok(Some(f as i64)),
        _ => Err(D::Error::custom(format!("{n} is not a whole number"))),
    }
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
        // Characters, not bytes.
        assert!(check_name(&"é".repeat(200), 200).is_ok());
        assert!(check_name(&format!("{} ", "x".repeat(200)), 200).is_err());
    }

    #[test]
    fn the_pattern_classes_hold_exactly_the_hidden_characters() {
        let p = name_pattern();
        assert!(p.starts_with("^[^") && p.ends_with("]*$"), "{p}");
        for c in ['\u{0}', '\u{202E}', '\u{200B}', '\u{FEFF}', '\u{E0001}'] {
            assert!(p.contains(c), "U+{:04X} in the class", u32::from(c));
        }
        let hidden = class_of(is_hidden);
        let inner = &hidden[1..hidden.len() - 1];
        for c in ['a', 'é', '東', ' ', '\u{A0}', ']'] {
            assert!(!inner.contains(c), "{c:?} is not hidden: {hidden:?}");
        }
        assert!(hidden.contains("\u{0}-\u{1F}"), "runs: {hidden:?}");
    }
}
