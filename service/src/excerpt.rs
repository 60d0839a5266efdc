//! Error messages stay short whatever the client sent: parsers and our own
//! checks quote client input (`invalid type: string "…"`, a header value,
//! an unknown field), and a 100 KB string must not come back 100 KB long.

/// Longest quoted excerpt of client input a message keeps, in characters.
pub const EXCERPT_CHARS: usize = 64;

/// Longest message, in characters, once excerpts are cut.
pub const MESSAGE_CHARS: usize = 320;

/// What a cut excerpt or message ends with.
const ELLIPSIS: char = '…';

/// `message` with every quoted run (between `"`, `` ` `` or `'`) longer than
/// [`EXCERPT_CHARS`] cut to that length, and the whole cut to
/// [`MESSAGE_CHARS`]. The quotes stay, so the message still reads as one.
pub fn bounded(message: &str) -> String {
    let mut out = String::with_capacity(message.len().min(MESSAGE_CHARS * 4));
    // The quote character of the run we are inside, and its length so far.
    let mut quote: Option<char> = None;
    let mut quoted = 0usize;
    let mut escaped = false;
    for c in message.chars() {
        match quote {
            None => {
                out.push(c);
                if matches!(c, '"' | '`' | '\'') {
                    quote = Some(c);
                    quoted = 0;
                    escaped = false;
                }
            }
            Some(open) => {
                let closes = c == open && !escaped;
                escaped = !escaped && c == '\\';
                if closes {
                    quote = None;
                    out.push(c);
                    continue;
                }
                quoted += 1;
                if quoted <= EXCERPT_CHARS {
                    out.push(c);
                } else if quoted == EXCERPT_CHARS + 1 {
                    out.push(ELLIPSIS);
                }
            }
        }
    }
    if out.chars().count() > MESSAGE_CHARS {
        out = out.chars().take(MESSAGE_CHARS - 1).collect();
        out.push(ELLIPSIS);
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn long_quoted_input_is_cut_to_an_excerpt_and_short_messages_are_untouched() {
        let short = "invalid type: string \"abc\", expected i64 at line 1 column 5";
        assert_eq!(bounded(short), short);

        let long = "x".repeat(100_000);
        let message = bounded(&format!(
            "invalid type: string \"{long}\", expected i64 at line 1 column 100012"
        ));
        assert!(message.starts_with(&format!("invalid type: string \"{}…\"", "x".repeat(64))));
        assert!(
            message.ends_with("expected i64 at line 1 column 100012"),
            "{message}"
        );

        let backticks = bounded(&format!("unknown field `{long}`, expected one of `a`"));
        assert!(
            backticks.ends_with("…`, expected one of `a`"),
            "{backticks}"
        );

        // An escaped quote does not end the run; an unclosed one is still cut.
        let escaped = bounded(&format!("\"{}\\\"{long}", "y".repeat(10)));
        assert!(escaped.chars().count() <= EXCERPT_CHARS + 2, "{escaped}");

        // Many short quotes still add up to a bounded message.
        let many = bounded(&"`ab` ".repeat(10_000));
        assert_eq!(many.chars().count(), MESSAGE_CHARS);
    }
}
