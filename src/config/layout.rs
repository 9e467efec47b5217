//! `edge fmt`: the canonical layout of an Edgefile, keeping every comment and
//! every value exactly as written.
//!
//! The canonical form: four spaces per `{` level, one space between tokens,
//! one space before a trailing comment, no trailing whitespace, at most one
//! blank line in a row, none at the start or end, a final newline. Strings,
//! raw strings and comments are copied byte for byte. The text must already
//! parse as KDL 2.0 (checked before this runs).

#[derive(Clone, Copy, PartialEq, Eq)]
enum State {
    Code,
    /// Inside `"..."`.
    Str,
    /// Inside `"""` ... `"""`.
    MultiStr,
    /// Inside a raw string with this many `#`, multi-line if the bool is set.
    Raw(usize, bool),
    /// Inside `/* */`, nested this deep.
    Block(usize),
}

/// The canonical layout of `text`.
pub fn canonical(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    let mut state = State::Code;
    let mut depth: usize = 0;
    let mut blank_run = 0;
    for raw_line in text.lines() {
        let starts_in_code = state == State::Code;
        let line = if starts_in_code { raw_line.trim() } else { raw_line.trim_end() };
        if line.is_empty() && starts_in_code {
            blank_run += 1;
            continue;
        }
        let (body, next_state, opens, closes_first) = scan_line(line, state);
        if starts_in_code {
            if blank_run > 0 && !out.is_empty() {
                out.push('\n');
            }
            blank_run = 0;
            let d = depth.saturating_sub(closes_first);
            for _ in 0..d {
                out.push_str("    ");
            }
        }
        out.push_str(if starts_in_code { &body } else { line });
        out.push('\n');
        depth = (depth as isize + opens).max(0) as usize;
        state = next_state;
    }
    out
}

/// Normalises the spacing of the code parts of one line; returns the new
/// line, the state at its end, the net change in brace depth, and how many
/// `}` lead the line (they dedent it).
fn scan_line(line: &str, mut state: State) -> (String, State, isize, usize) {
    let chars: Vec<char> = line.chars().collect();
    let mut out = String::with_capacity(line.len());
    let mut opens: isize = 0;
    let mut leading_closes = 0;
    let mut seen_other = false;
    let mut i = 0;
    let mut pending_space = false;
    while i < chars.len() {
        let c = chars[i];
        let next = chars.get(i + 1).copied();
        match state {
            State::Code => {
                if c.is_whitespace() {
                    pending_space = !out.is_empty();
                    i += 1;
                    continue;
                }
                if pending_space {
                    out.push(' ');
                    pending_space = false;
                }
                if c == '/' && next == Some('/') {
                    let rest: String = chars[i..].iter().collect();
                    out.push_str(rest.trim_end());
                    break;
                }
                if c == '/' && next == Some('*') {
                    state = State::Block(1);
                    out.push_str("/*");
                    i += 2;
                    seen_other = true;
                    continue;
                }
                if c == '"' {
                    if next == Some('"') && chars.get(i + 2) == Some(&'"') {
                        state = State::MultiStr;
                        out.push_str("\"\"\"");
                        i += 3;
                    } else {
                        state = State::Str;
                        out.push('"');
                        i += 1;
                    }
                    seen_other = true;
                    continue;
                }
                if c == '#' {
                    let mut j = i;
                    while chars.get(j) == Some(&'#') {
                        j += 1;
                    }
                    if chars.get(j) == Some(&'"') {
                        let hashes = j - i;
                        let multi = chars.get(j + 1) == Some(&'"') && chars.get(j + 2) == Some(&'"');
                        let open_len = if multi { 3 } else { 1 };
                        out.extend(&chars[i..j + open_len]);
                        i = j + open_len;
                        state = State::Raw(hashes, multi);
                        seen_other = true;
                        continue;
                    }
                }
                match c {
                    '{' => opens += 1,
                    '}' => {
                        opens -= 1;
                        if !seen_other {
                            leading_closes += 1;
                        }
                    }
                    _ => {}
                }
                if c != '}' {
                    seen_other = true;
                }
                out.push(c);
                i += 1;
            }
            State::Str => {
                out.push(c);
                if c == '\\' {
                    if let Some(n) = next {
                        out.push(n);
                    }
                    i += 2;
                    continue;
                }
                if c == '"' {
                    state = State::Code;
                }
                i += 1;
            }
            State::MultiStr => {
                out.push(c);
                if c == '\\' {
                    if let Some(n) = next {
                        out.push(n);
                    }
                    i += 2;
                    continue;
                }
                if c == '"' && next == Some('"') && chars.get(i + 2) == Some(&'"') {
                    out.push_str("\"\"");
                    i += 3;
                    state = State::Code;
                    continue;
                }
                i += 1;
            }
            State::Raw(hashes, multi) => {
                let quote_len = if multi { 3 } else { 1 };
                let closes = (0..quote_len).all(|k| chars.get(i + k) == Some(&'"'))
                    && (0..hashes).all(|k| chars.get(i + quote_len + k) == Some(&'#'));
                if closes {
                    out.extend(&chars[i..i + quote_len + hashes]);
                    i += quote_len + hashes;
                    state = State::Code;
                    continue;
                }
                out.push(c);
                i += 1;
            }
            State::Block(n) => {
                if c == '*' && next == Some('/') {
                    out.push_str("*/");
                    i += 2;
                    state = if n == 1 { State::Code } else { State::Block(n - 1) };
                    continue;
                }
                if c == '/' && next == Some('*') {
                    out.push_str("/*");
                    i += 2;
                    state = State::Block(n + 1);
                    continue;
                }
                out.push(c);
                i += 1;
            }
        }
    }
    // A line ending inside "..." continues (an escaped newline); keep the state.
    (out, state, opens, leading_closes)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn indents_and_spaces() {
        let messy = "\n\n// top\nsite   \"a\"   {\nlisten \"x  y\"    // keep   this\n\n\n   route \"/*\" {\n respond \"{a}  }\" status=200\n}\n      }\n\n";
        let want = "// top\nsite \"a\" {\n    listen \"x  y\" // keep   this\n\n    route \"/*\" {\n        respond \"{a}  }\" status=200\n    }\n}\n";
        assert_eq!(canonical(messy), want);
        assert_eq!(canonical(want), want);
    }

    #[test]
    fn raw_and_multiline_strings_and_block_comments_are_kept() {
        let text = "a #\"raw { \"# {\n    b \"\"\"\n  multi {\n   line\n  \"\"\"\n    /* block {\n   still */ c\n}\n";
        let out = canonical(text);
        assert!(out.contains("#\"raw { \"#"), "{out}");
        assert!(out.contains("  multi {\n   line\n"), "{out}");
        assert!(out.contains("   still */ c\n"), "{out}");
        assert!(out.ends_with("}\n"), "{out}");
        assert_eq!(canonical(&out), out);
    }

    #[test]
    fn closing_braces_dedent() {
        assert_eq!(canonical("a {\nb {\nc\n} }\n"), "a {\n    b {\n        c\n} }\n");
        assert_eq!(canonical("a { b; }\n"), "a { b; }\n");
    }
}
