//! The guest's side of the serial console, as the host reads it.
//!
//! The guest's init writes lines that begin `satchel-guest: ` (see
//! `examples/guest/satchel-guest-init` and docs/guest.md); the host answers
//! with lines that begin `satchel-host: `. Everything else on the console
//! (firmware, kernel, programs) is only shown. Every line comes from the
//! guest and is parsed as hostile: a malformed protocol line is an error,
//! never a panic.

use base64::Engine as _;

/// The prefix of the guest's protocol lines.
pub const GUEST: &str = "satchel-guest: ";
/// The prefix of the host's answers.
pub const HOST: &str = "satchel-host: ";
/// The longest console line read (an event log in base64 fits many times).
pub const MAX_LINE: usize = 4 << 20;

/// One line of the guest's console.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum GuestLine {
    /// The guest's init runs and waits for a nonce.
    Hello,
    /// The vTPM's quote: `TPMS_ATTEST` and `TPMT_SIGNATURE`.
    Quote {
        /// The attestation structure exactly as signed.
        attest: Vec<u8>,
        /// The signature.
        signature: Vec<u8>,
    },
    /// The firmware's event log.
    EventLog(Vec<u8>),
    /// All evidence is sent; the guest waits for the verdict.
    EvidenceEnd,
    /// The guest was trusted and runs: its kernel release.
    Ready {
        /// `uname -r` inside the guest.
        kernel: String,
    },
    /// Any other protocol line (a message of the guest's init).
    Said(String),
    /// Not a protocol line: firmware, kernel or program output.
    Other,
}

/// A protocol line that cannot be read.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("the guest's console line {what} is malformed: {why}")]
pub struct ConsoleError {
    /// Which line.
    pub what: &'static str,
    /// What is wrong.
    pub why: &'static str,
}

fn b64(what: &'static str, s: &str) -> Result<Vec<u8>, ConsoleError> {
    base64::engine::general_purpose::STANDARD
        .decode(s.trim())
        .map_err(|_| ConsoleError {
            what,
            why: "not base64",
        })
}

/// The line with carriage returns and terminal escapes removed, as the
/// protocol compares it.
pub fn clean(raw: &[u8]) -> String {
    let text = String::from_utf8_lossy(raw);
    let mut out = String::with_capacity(text.len());
    let mut chars = text.chars().peekable();
    while let Some(c) = chars.next() {
        match c {
            '\r' => {}
            '\u{1b}' => {
                // CSI: ESC [ params final-byte; other escapes: ESC and one char.
                if chars.peek() == Some(&'[') {
                    chars.next();
                    for c in chars.by_ref() {
                        if ('@'..='~').contains(&c) {
                            break;
                        }
                    }
                } else {
                    chars.next();
                }
            }
            c if c.is_control() && c != '\t' => {}
            c => out.push(c),
        }
    }
    out
}

/// Parse one cleaned console line.
pub fn parse(line: &str) -> Result<GuestLine, ConsoleError> {
    let Some(rest) = line.strip_prefix(GUEST) else {
        return Ok(GuestLine::Other);
    };
    let (word, args) = rest.split_once(' ').unwrap_or((rest, ""));
    Ok(match word {
        "hello" => GuestLine::Hello,
        "evidence-end" => GuestLine::EvidenceEnd,
        "eventlog" => GuestLine::EventLog(b64("eventlog", args)?),
        "quote" => {
            let mut parts = args.split_whitespace();
            let (Some(a), Some(s), None) = (parts.next(), parts.next(), parts.next()) else {
                return Err(ConsoleError {
                    what: "quote",
                    why: "expected two base64 fields (the attestation and its signature)",
                });
            };
            GuestLine::Quote {
                attest: b64("quote", a)?,
                signature: b64("quote", s)?,
            }
        }
        "ready" => {
            let kernel = args.strip_prefix("kernel=").ok_or(ConsoleError {
                what: "ready",
                why: "expected kernel=RELEASE",
            })?;
            if kernel.is_empty() || kernel.len() > 256 || kernel.contains(char::is_whitespace) {
                return Err(ConsoleError {
                    what: "ready",
                    why: "the kernel release is empty, too long or has spaces",
                });
            }
            GuestLine::Ready {
                kernel: kernel.to_owned(),
            }
        }
        _ => GuestLine::Said(rest.to_owned()),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn protocol_lines_parse_and_the_rest_is_shown_only() {
        assert_eq!(parse("satchel-guest: hello"), Ok(GuestLine::Hello));
        assert_eq!(
            parse("satchel-guest: evidence-end"),
            Ok(GuestLine::EvidenceEnd)
        );
        assert_eq!(
            parse("satchel-guest: quote AQI= AwQ="),
            Ok(GuestLine::Quote {
                attest: vec![1, 2],
                signature: vec![3, 4]
            })
        );
        assert_eq!(
            parse("satchel-guest: eventlog AAE="),
            Ok(GuestLine::EventLog(vec![0, 1]))
        );
        assert_eq!(
            parse("satchel-guest: ready kernel=6.1.0-50-cloud-amd64"),
            Ok(GuestLine::Ready {
                kernel: "6.1.0-50-cloud-amd64".into()
            })
        );
        assert_eq!(
            parse("satchel-guest: no user disk"),
            Ok(GuestLine::Said("no user disk".into()))
        );
        assert_eq!(parse("[    2.897080] Run /init"), Ok(GuestLine::Other));
        // The host's answers, echoed by a terminal, are not the guest's.
        assert_eq!(parse("satchel-host: trusted"), Ok(GuestLine::Other));
    }

    #[test]
    fn malformed_protocol_lines_are_errors() {
        assert!(parse("satchel-guest: quote AQI=").is_err());
        assert!(parse("satchel-guest: quote AQI= AwQ= more").is_err());
        assert!(parse("satchel-guest: quote !! AwQ=").is_err());
        assert!(parse("satchel-guest: eventlog ***").is_err());
        assert!(parse("satchel-guest: ready").is_err());
        assert!(parse("satchel-guest: ready kernel=").is_err());
        assert!(parse("satchel-guest: ready kernel=a b").is_err());
    }

    #[test]
    fn escapes_and_carriage_returns_are_removed() {
        assert_eq!(
            clean(b"\x1b[2J\x1b[01;01Hsatchel-guest: hello\r"),
            "satchel-guest: hello"
        );
        assert_eq!(clean(b"a\x1bcb\x07"), "ab");
        assert_eq!(clean(b"\xff\xfeok"), "\u{fffd}\u{fffd}ok");
    }
}
