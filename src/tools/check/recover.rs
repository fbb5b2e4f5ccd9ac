//! After a TOML syntax error, the rest of the policy is still checked: the
//! broken lines are left out one at a time until the text parses, and the
//! validation errors of every section those lines were not in are reported
//! after the syntax error (errors inside a broken section would only echo it).

use crate::config::{Config, FromTomlError, Invalid};

/// How many broken lines are left out before giving up.
const TRIES: usize = 8;

/// The validation errors of the sections untouched by syntax errors, and the
/// lines left out (1-based), when leaving out broken lines makes the text parse.
pub fn rest_of(text: &str, first: &toml::de::Error) -> Option<(Vec<usize>, Invalid)> {
    let mut lines: Vec<&str> = text.lines().collect();
    let mut left_out = Vec::new();
    let mut error = first.clone();
    for _ in 0..TRIES {
        let line = line_of(&lines, error.span()?.start);
        if left_out.contains(&line) || line >= lines.len() {
            return None;
        }
        left_out.push(line);
        lines[line] = "";
        let joined = lines.join("\n");
        match Config::from_toml(&joined) {
            Err(FromTomlError::Parse(next)) => error = next,
            Ok(_) => return Some((numbers(&left_out), Invalid::default())),
            Err(FromTomlError::Invalid(all)) => {
                let broken: Vec<String> = left_out.iter().map(|&l| section_at(&lines, l)).collect();
                let kept = all
                    .0
                    .into_iter()
                    .filter(|e| !broken.iter().any(|s| in_section(&e.path, s)))
                    .collect();
                return Some((numbers(&left_out), Invalid(kept)));
            }
        }
    }
    None
}

fn numbers(lines: &[usize]) -> Vec<usize> {
    let mut n: Vec<usize> = lines.iter().map(|l| l + 1).collect();
    n.sort_unstable();
    n
}

/// The 0-based line holding byte `offset` of the text `lines` make.
fn line_of(lines: &[&str], offset: usize) -> usize {
    let mut at = 0;
    for (i, l) in lines.iter().enumerate() {
        at += l.len() + 1;
        if offset < at {
            return i;
        }
    }
    lines.len().saturating_sub(1)
}

/// The top-level section a line belongs to: the key of the nearest table
/// header above it (`[server]`, `[[regions]]`, `[admin.tokens]` -> admin);
/// "" for the root table, or the line's own key there.
fn section_at(lines: &[&str], line: usize) -> String {
    for l in lines[..=line].iter().rev() {
        let t = l.trim();
        if let Some(header) = t.strip_prefix('[') {
            let name = header.trim_start_matches('[').trim_end_matches(']');
            return name.split('.').next().unwrap_or("").trim().to_owned();
        }
    }
    // A root-level key: its own name is its section.
    lines[line]
        .split(['=', '.'])
        .next()
        .unwrap_or("")
        .trim()
        .to_owned()
}

fn in_section(path: &str, section: &str) -> bool {
    section.is_empty()
        || path == section
        || path.starts_with(&format!("{section}."))
        || path.starts_with(&format!("{section}["))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn first_error(text: &str) -> toml::de::Error {
        match Config::from_toml(text) {
            Err(FromTomlError::Parse(e)) => e,
            other => panic!("not a syntax error: {other:?}"),
        }
    }

    #[test]
    fn the_sections_the_broken_line_is_not_in_are_still_checked() {
        let text = "[[listeners]]\naddress = \"127.0.0.1:0\n\
                    [[regions]]\nname = \"a\"\nendpoints = [{ url = \"http://127.0.0.1:1\" }]\nweigth = 2\n\
                    [server]\nworkers = \"two\"\n";
        let (lines, rest) = rest_of(text, &first_error(text)).expect("recovers");
        assert_eq!(lines, [2]);
        let paths: Vec<&str> = rest.0.iter().map(|e| e.path.as_str()).collect();
        // Not "listeners[0].address: missing": the broken line's section is left out.
        assert_eq!(paths, ["regions[0].weigth", "server.workers"], "{rest}");
    }

    proptest::proptest! {
        /// Whatever the broken text, recovery ends without a panic, and only
        /// ever names lines the text has.
        #[test]
        fn recovery_never_panics(text in "(\\[\\[?[a-z]{0,6}\\]?\\]?\n|[a-z]{1,6} = (\"[a-z0-9:.]{0,8}\"?|[0-9]{1,3}|\\[)\n|\n){0,12}") {
            if let Err(FromTomlError::Parse(e)) = Config::from_toml(&text) {
                if let Some((lines, _)) = rest_of(&text, &e) {
                    let count = text.lines().count().max(1);
                    proptest::prop_assert!(lines.iter().all(|&l| l >= 1 && l <= count));
                }
            }
        }
    }

    #[test]
    fn a_text_that_does_not_recover_says_nothing_more() {
        let text = "[[listeners]\n".repeat(20);
        assert!(rest_of(&text, &first_error(&text)).is_none());
    }
}
