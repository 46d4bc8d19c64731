//! The body of every refusal (RFC 9457 problem details): a status, a short
//! title, a detail for people, and route-specific members beside them. The
//! detail never carries the gateway's internals; a 500 says only that the
//! gateway's log has the cause.

use serde::{Deserialize, Serialize};
use serde_json::{Map, Value};

/// A problem body.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Problem {
    /// Always `about:blank`.
    #[serde(rename = "type", default = "about_blank")]
    pub kind: String,
    /// A short, fixed summary (`"enrollment refused"`).
    pub title: String,
    /// The HTTP status.
    pub status: u16,
    /// What happened, for a person.
    #[serde(default)]
    pub detail: String,
    /// Route-specific members (`failures` of an attestation, say).
    #[serde(flatten)]
    pub extra: Map<String, Value>,
}

fn about_blank() -> String {
    "about:blank".to_owned()
}

/// One reason an attestation was refused (the `failures` member).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Failure {
    /// What failed.
    #[serde(default)]
    pub message: String,
    /// What the reference expected, when it says.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub expected: Option<String>,
    /// What the evidence held, when it says.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub found: Option<String>,
}

impl Problem {
    /// A problem with no extra members.
    pub fn new(status: u16, title: &str, detail: impl Into<String>) -> Problem {
        Problem {
            kind: about_blank(),
            title: title.to_owned(),
            status,
            detail: detail.into(),
            extra: Map::new(),
        }
    }

    /// Add the members of `extra` (a JSON object; anything else adds nothing).
    pub fn with(mut self, extra: Value) -> Problem {
        if let Value::Object(x) = extra {
            self.extra.extend(x);
        }
        self
    }

    /// The problem an answer with `status` and `body` carries (a body that
    /// is no problem gives one with an empty detail).
    pub fn from_answer(status: u16, body: &Value) -> Problem {
        serde_json::from_value(body.clone()).unwrap_or_else(|_| Problem::new(status, "", ""))
    }

    /// The attestation failures it lists (none when it lists none).
    pub fn failures(&self) -> Vec<Failure> {
        self.extra
            .get("failures")
            .and_then(|f| serde_json::from_value(f.clone()).ok())
            .unwrap_or_default()
    }

    /// The problem as one line per reason: `"{what} refused ({status}):
    /// {detail}"`, then each distinct failure.
    pub fn explain(&self, what: &str) -> String {
        let detail = if self.detail.is_empty() {
            "no detail"
        } else {
            &self.detail
        };
        let mut msg = format!("{what} refused ({}): {detail}", self.status);
        let mut seen = std::collections::BTreeSet::new();
        for f in self.failures() {
            let mut line = format!("\n  {}", f.message);
            if let (Some(e), Some(g)) = (&f.expected, &f.found) {
                line.push_str(&format!("; expected {e}, found {g}"));
            }
            // The verifier may name one difference from two checks.
            if seen.insert(line.clone()) {
                msg.push_str(&line);
            }
        }
        msg
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn round_trips_with_its_extra_members() {
        let p = Problem::new(403, "attestation refused", "quote did not verify")
            .with(serde_json::json!({"failures": [{"message": "PCR 4", "expected": "aa", "found": "bb"}, {"message": "PCR 4", "expected": "aa", "found": "bb"}]}));
        let v = serde_json::to_value(&p).unwrap();
        assert_eq!(v["type"], "about:blank");
        assert_eq!(v["status"], 403);
        let back = Problem::from_answer(403, &v);
        assert_eq!(back, p);
        assert_eq!(
            back.explain("attestation"),
            "attestation refused (403): quote did not verify\n  PCR 4; expected aa, found bb"
        );
    }
}
