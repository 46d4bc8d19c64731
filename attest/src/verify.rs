//! The verifier: evidence + reference manifest + nonce -> verdict.
//!
//! Needs no TPM. Every check runs and every failure is reported (not just
//! the first), each naming what it can: the PCR, the bank, the stage, and
//! the expected and found digests. A verdict is trusted only when there are
//! no failures at all.
//!
//! Checks, in order:
//! 1. the attestation key: a usable P-256 or RSA key; if its `TPM2B_PUBLIC`
//!    is given, a restricted signing key that never leaves the TPM and the
//!    same key as the PEM; if the caller pins a key, that key (the quote's
//!    `qualifiedSigner` is the AK's *qualified* name, which depends on its
//!    parent EK: the signature check is what binds the quote to the AK);
//! 2. the quote parses (`TPMS_ATTEST`, magic and type) and its signature
//!    verifies with the AK;
//! 3. the quote's qualifying data is the nonce;
//! 4. the reported PCR values are exactly the quoted selection, and their
//!    hash is the quote's PCR digest;
//! 5. the event logs parse and replay to the quoted values;
//! 6. every PCR the reference names is quoted and holds the reference value;
//!    where it does not, the events are compared stage by stage.

use std::collections::{HashMap, VecDeque};
use std::fmt;
use std::time::{Duration, Instant};

use serde::Serialize;

use crate::alg::HashAlg;
use crate::eventlog::{self, BorrowedLog, LogEvent as _};
use crate::evidence::Evidence;
use crate::pcr::PcrBanks;
use crate::reference::Reference;
use crate::tpm2::{AkPublic, PublicKey, Quote, Signature};

/// Which check failed.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
#[non_exhaustive]
pub enum Check {
    /// The attestation key cannot be used, or is not the expected one.
    AttestationKey,
    /// The quote structure.
    Quote,
    /// The quote's signature.
    Signature,
    /// The nonce.
    Nonce,
    /// The PCR selection against the reported values or the reference.
    PcrSelection,
    /// The PCR digest in the quote against the reported values.
    PcrDigest,
    /// An event log that does not parse.
    EventLog,
    /// The event logs' replay against the quoted (or read) PCR values.
    Replay,
    /// The PCR values and events against the reference manifest.
    Reference,
    /// An event's data against its digest, for events whose digest is the
    /// hash of their data: the log shows data that was never measured.
    EventData,
}

/// One failed check.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Failure {
    /// The check.
    pub check: Check,
    /// The PCR concerned.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub pcr: Option<u32>,
    /// The bank concerned.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub bank: Option<HashAlg>,
    /// The boot stage concerned (from the reference manifest).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub stage: Option<String>,
    /// What was expected (hex for digests).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub expected: Option<String>,
    /// What was found.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub found: Option<String>,
    /// A sentence saying what is wrong.
    pub message: String,
}

impl Failure {
    fn new(check: Check, message: impl Into<String>) -> Failure {
        Failure {
            check,
            pcr: None,
            bank: None,
            stage: None,
            expected: None,
            found: None,
            message: message.into(),
        }
    }

    fn at(mut self, pcr: u32, bank: HashAlg) -> Failure {
        self.pcr = Some(pcr);
        self.bank = Some(bank);
        self
    }

    fn stage(mut self, stage: &str) -> Failure {
        self.stage = Some(stage.to_owned());
        self
    }

    fn values(mut self, expected: Option<&[u8]>, found: Option<&[u8]>) -> Failure {
        self.expected = expected.map(hex::encode);
        self.found = found.map(hex::encode);
        self
    }
}

impl fmt::Display for Failure {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}", self.message)?;
        if let Some(e) = &self.expected {
            write!(f, "; expected {e}")?;
        }
        if let Some(x) = &self.found {
            write!(f, ", found {x}")?;
        }
        Ok(())
    }
}

/// The outcome.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Verdict {
    /// True only when `failures` is empty.
    pub trusted: bool,
    /// Every failed check.
    pub failures: Vec<Failure>,
    /// The quote's contents, when it parsed.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub quote: Option<Quote>,
}

/// Verify `evidence` against `reference` for the `nonce` the verifier
/// issued. `pinned_ak`, when given, is the only key accepted (the key the
/// device enrolled).
pub fn verify(
    evidence: &Evidence,
    reference: &Reference,
    nonce: &[u8],
    pinned_ak: Option<&PublicKey>,
) -> Verdict {
    let mut failures = Vec::new();

    // 1. The attestation key.
    let ak = check_attestation_key(evidence, pinned_ak, &mut failures);

    // 2. The quote and its signature.
    let quote = check_quote(evidence, ak.as_ref(), &mut failures);
    // 3. The nonce.
    check_nonce(evidence, quote.as_ref(), nonce, &mut failures);

    // 4. Reported values against the selection and the digest.
    let mut quoted = PcrBanks::new();
    if let Some(q) = &quote {
        quoted = check_selection(q, evidence, &mut failures);
    }

    // 5. The event logs.
    let log = check_logs(evidence, &quoted, &mut failures);

    // 6. The reference.
    if quote.is_some() {
        failures.extend(compare_reference(reference, &quoted, log.as_ref()));
    }

    Verdict {
        trusted: failures.is_empty(),
        failures,
        quote,
    }
}

/// Check 1: the key in `ak_pem` is usable, is `pinned_ak` if given, and agrees with `ak_public`; return it.
fn check_attestation_key(
    evidence: &Evidence,
    pinned_ak: Option<&PublicKey>,
    failures: &mut Vec<Failure>,
) -> Option<PublicKey> {
    let ak = match PublicKey::from_pem(&evidence.ak_pem) {
        Ok(k) => Some(k),
        Err(e) => {
            failures.push(Failure::new(Check::AttestationKey, format!("ak_pem: {e}")));
            None
        }
    };
    if let (Some(ak), Some(pinned)) = (&ak, pinned_ak) {
        if ak != pinned {
            failures.push(Failure::new(
                Check::AttestationKey,
                "the quote's attestation key is not the one this device enrolled",
            ));
        }
    }
    check_ak_public(evidence, ak.as_ref(), failures);
    ak
}

/// Check 1, continued: `ak_public`, if given, parses, is an attestation key, and is `ak`.
fn check_ak_public(evidence: &Evidence, ak: Option<&PublicKey>, failures: &mut Vec<Failure>) {
    let Some(bytes) = evidence.ak_public.as_deref() else {
        return;
    };
    let p = match AkPublic::parse_tpm2b(bytes) {
        Ok(p) => p,
        Err(e) => {
            failures.push(Failure::new(
                Check::AttestationKey,
                format!("ak_public: {e}"),
            ));
            return;
        }
    };
    if let Some(problem) = p.attestation_problem() {
        failures.push(Failure::new(Check::AttestationKey, problem));
    }
    if ak.is_some_and(|k| *k != p.key) {
        failures.push(Failure::new(
            Check::AttestationKey,
            "ak_pem and ak_public are different keys",
        ));
    }
}

/// Check 2: the quote parses and its signature verifies with `ak`; return the quote.
fn check_quote(
    evidence: &Evidence,
    ak: Option<&PublicKey>,
    failures: &mut Vec<Failure>,
) -> Option<Quote> {
    let quote = match Quote::parse(&evidence.quote) {
        Ok(q) => Some(q),
        Err(e) => {
            failures.push(Failure::new(Check::Quote, e.to_string()));
            None
        }
    };
    match Signature::parse(&evidence.signature) {
        Ok(sig) => {
            if let Some(ak) = ak {
                if let Err(e) = sig.verify(ak, &evidence.quote) {
                    failures.push(Failure::new(Check::Signature, e.to_string()));
                }
            }
        }
        Err(e) => failures.push(Failure::new(Check::Signature, e.to_string())),
    }
    quote
}

/// Check 3: the quote and the evidence are both over `nonce`.
fn check_nonce(
    evidence: &Evidence,
    quote: Option<&Quote>,
    nonce: &[u8],
    failures: &mut Vec<Failure>,
) {
    if let Some(q) = quote {
        if q.extra_data != nonce {
            failures.push(
                Failure::new(
                    Check::Nonce,
                    "the quote is not over this nonce (stale or replayed)",
                )
                .values(Some(nonce), Some(&q.extra_data)),
            );
        }
    }
    if evidence.nonce != nonce {
        failures.push(
            Failure::new(Check::Nonce, "the evidence names another nonce")
                .values(Some(nonce), Some(&evidence.nonce)),
        );
    }
}

/// Check 5: the event logs parse and replay to the `quoted` values; return the combined log.
fn check_logs<'e>(
    evidence: &'e Evidence,
    quoted: &PcrBanks,
    failures: &mut Vec<Failure>,
) -> Option<BorrowedLog<'e>> {
    match combine_logs(&evidence.event_logs) {
        Ok(log) => {
            failures.extend(compare_replay(&log, quoted, "quoted"));
            Some(log)
        }
        Err(f) => {
            failures.push(f);
            None
        }
    }
}

/// Check that the reported values are exactly the quoted selection and
/// hash to the quote's PCR digest; return the quoted values.
fn check_selection(q: &Quote, evidence: &Evidence, failures: &mut Vec<Failure>) -> PcrBanks {
    let mut quoted = PcrBanks::new();
    let mut complete = true;
    for sel in &q.pcr_select {
        for &pcr in &sel.pcrs {
            match evidence.pcrs.get(sel.bank, pcr) {
                Some(v) => quoted.set(sel.bank, pcr, v.to_vec()),
                None => {
                    complete = false;
                    failures.push(
                        Failure::new(
                            Check::PcrSelection,
                            format!(
                                "PCR {pcr} ({}) is quoted but its value is not reported",
                                sel.bank
                            ),
                        )
                        .at(pcr, sel.bank),
                    );
                }
            }
        }
    }
    for (bank, pcr, _) in evidence.pcrs.iter() {
        if quoted.get(bank, pcr).is_none() && complete {
            failures.push(
                Failure::new(
                    Check::PcrSelection,
                    format!("PCR {pcr} ({bank}) is reported but not quoted"),
                )
                .at(pcr, bank),
            );
        }
    }
    if complete && !q.pcr_digest_matches(&quoted) {
        failures.push(Failure::new(
            Check::PcrDigest,
            "the reported PCR values do not hash to the quote's PCR digest",
        ));
    }
    quoted
}

/// One log made of several (firmware's, then Satchel's own): the events of
/// the later logs appended, in order, to the first.
pub fn combine_logs(logs: &[Vec<u8>]) -> Result<BorrowedLog<'_>, Failure> {
    let mut parsed = logs.iter().enumerate().map(|(i, b)| {
        eventlog::parse_borrowed(b)
            .map_err(|e| Failure::new(Check::EventLog, format!("event log {i}: {e}")))
    });
    let mut out = match parsed.next() {
        Some(first) => first?,
        None => return Err(Failure::new(Check::EventLog, "no event log")),
    };
    for (i, next) in parsed.enumerate() {
        let next = next?;
        if next.banks() != out.banks() {
            return Err(Failure::new(
                Check::EventLog,
                format!("event log {} has other banks than event log 0", i + 1),
            ));
        }
        out.events.extend(
            next.events
                .into_iter()
                .filter(|e| e.event_type != eventlog::EventType::EV_NO_ACTION),
        );
    }
    Ok(out)
}

/// Compare a log's replay with PCR values read from the TPM or quoted
/// (`source` says which, for messages): every value must be explained.
pub fn compare_replay(log: &BorrowedLog<'_>, values: &PcrBanks, source: &str) -> Vec<Failure> {
    let log_banks = log.banks();
    let wanted: Vec<HashAlg> = values.banks().filter(|b| log_banks.contains(b)).collect();
    let replayed = eventlog::replay_events(
        &log.events,
        log.spec_id.as_ref(),
        &wanted,
        Default::default(),
        false,
    )
    .pcrs;
    let mut out = Vec::new();
    for (bank, pcr, value) in values.iter() {
        if !log_banks.contains(&bank) {
            out.push(
                Failure::new(
                    Check::Replay,
                    format!("the event log has no {bank} bank to explain PCR {pcr}"),
                )
                .at(pcr, bank),
            );
            continue;
        }
        let reset;
        let found = match replayed.get(bank, pcr) {
            Some(v) => v,
            None => {
                reset = bank.reset_value(if (17..=22).contains(&pcr) { 0xff } else { 0 });
                &reset
            }
        };
        if found != value {
            out.push(
                Failure::new(
                    Check::Replay,
                    format!(
                        "the event log does not replay to the {source} PCR {pcr} ({bank}): \
                         the log was edited, or something was extended without being logged"
                    ),
                )
                .at(pcr, bank)
                .values(Some(value), Some(found)),
            );
        }
    }
    out
}

/// Compare trusted PCR values (quoted or read from the TPM) with the
/// reference; where a value differs, walk the log's events for that PCR
/// against the reference's stages and name each that differs.
pub fn compare_reference(
    reference: &Reference,
    values: &PcrBanks,
    log: Option<&BorrowedLog<'_>>,
) -> Vec<Failure> {
    let mut out = Vec::new();
    let banks: Vec<HashAlg> = values
        .banks()
        .filter(|b| reference.banks.contains(b))
        .collect();
    if banks.is_empty() {
        out.push(Failure::new(
            Check::Reference,
            format!(
                "no PCR bank in common with the reference (it has {})",
                reference
                    .banks
                    .iter()
                    .map(|b| b.name())
                    .collect::<Vec<_>>()
                    .join(", ")
            ),
        ));
        return out;
    }
    for (&pcr, want) in &reference.pcrs {
        for &bank in &banks {
            let Some(expected) = want.value.get(&bank) else {
                continue;
            };
            let Some(found) = values.get(bank, pcr) else {
                out.push(
                    Failure::new(
                        Check::PcrSelection,
                        format!("PCR {pcr} ({bank}) is required by the reference but not quoted"),
                    )
                    .at(pcr, bank),
                );
                continue;
            };
            if found == expected.0 {
                continue;
            }
            let stages = log
                .map(|l| stage_failures(reference, l, pcr, bank))
                .unwrap_or_default();
            if stages.is_empty() {
                out.push(
                    Failure::new(
                        Check::Reference,
                        format!(
                            "PCR {pcr} ({bank}) differs from the reference{}",
                            if log.is_some() {
                                " although the logged events match it: an extend that is not in the log"
                            } else {
                                ""
                            }
                        ),
                    )
                    .at(pcr, bank)
                    .values(Some(&expected.0), Some(found)),
                );
            }
            out.extend(stages);
        }
    }
    if let Some(log) = log {
        out.extend(data_failures(reference, log, &banks));
    }
    out
}

/// Events of the reference's PCRs whose digest is the hash of their data
/// (by the reference, or by their TCG type) but whose logged data no longer
/// hashes to it: the data was edited after it was measured.
fn data_failures(reference: &Reference, log: &BorrowedLog<'_>, banks: &[HashAlg]) -> Vec<Failure> {
    let mut out = Vec::new();
    for (&pcr, want) in &reference.pcrs {
        let logged = log.measured_events().filter(|e| e.pcr == pcr);
        for (i, e) in logged.enumerate() {
            let Some(bank) = banks.iter().copied().find(|b| e.digest_of(*b).is_some()) else {
                continue;
            };
            let digest = e.digest_of(bank).unwrap_or_default();
            // The reference's event at this place, if this is it (a moved or
            // changed event is named by the reference check instead).
            let r = want
                .events
                .get(i)
                .filter(|r| r.digests.get(&bank).is_some_and(|d| d.0 == digest));
            let of_data = r.is_some_and(|r| r.of_data) || digest_is_of_data(e.event_type);
            if !of_data || data_hashes_to(e.event_type, e.data, bank, digest) {
                continue;
            }
            let stage = r.map_or_else(|| format!("event #{}", e.index), |r| r.stage.clone());
            out.push(
                Failure::new(
                    Check::EventData,
                    format!(
                        "event {} (PCR {pcr}, {}, stage {stage:?}): its data is not what was measured (the {bank} digest is not the hash of the logged data)",
                        e.index, e.event_type
                    ),
                )
                .at(pcr, bank)
                .stage(&stage),
            );
        }
    }
    out
}

/// TCG event types whose digest is defined as the hash of their data.
fn digest_is_of_data(t: eventlog::EventType) -> bool {
    use eventlog::EventType as T;
    t.is_efi_variable()
        || matches!(
            t,
            T::EV_SEPARATOR | T::EV_ACTION | T::EV_EFI_ACTION | T::EV_S_CRTM_VERSION
        )
}

/// Whether `data` hashes to `digest` (for EFI variables, edk2's hash of the
/// variable's data alone counts too).
fn data_hashes_to(t: eventlog::EventType, data: &[u8], bank: HashAlg, digest: &[u8]) -> bool {
    bank.hash(data) == digest
        || (t.is_efi_variable()
            && eventlog::efi_variable_data(data).is_some_and(|v| bank.hash(v) == digest))
}

/// The stages of `pcr` whose logged digest differs from the reference's.
fn stage_failures(
    reference: &Reference,
    log: &BorrowedLog<'_>,
    pcr: u32,
    bank: HashAlg,
) -> Vec<Failure> {
    let Some(want) = reference.pcrs.get(&pcr) else {
        return Vec::new();
    };
    let logged: Vec<&[u8]> = log
        .measured_events()
        .filter(|e| e.pcr == pcr)
        .map(|e| e.digest_of(bank).unwrap_or_default())
        .collect();
    let mut out = Vec::new();
    for (i, r) in want.events.iter().enumerate() {
        let expected = r.digests.get(&bank).map(|h| h.0.as_slice());
        match logged.get(i) {
            Some(found) if Some(*found) == expected => {}
            Some(found) => out.push(
                Failure::new(
                    Check::Reference,
                    format!(
                        "PCR {pcr} ({bank}): stage {:?} measured something else",
                        r.stage
                    ),
                )
                .at(pcr, bank)
                .stage(&r.stage)
                .values(expected, Some(found)),
            ),
            None => out.push(
                Failure::new(
                    Check::Reference,
                    format!(
                        "PCR {pcr} ({bank}): stage {:?} is missing from the log",
                        r.stage
                    ),
                )
                .at(pcr, bank)
                .stage(&r.stage)
                .values(expected, None),
            ),
        }
    }
    for (i, found) in logged.iter().enumerate().skip(want.events.len()) {
        out.push(
            Failure::new(
                Check::Reference,
                format!(
                    "PCR {pcr} ({bank}): event {} is not in the reference",
                    i + 1
                ),
            )
            .at(pcr, bank)
            .values(None, Some(found)),
        );
    }
    out
}

/// Why a nonce is refused.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum NonceError {
    /// Never issued here (or forgotten: issued too long ago).
    #[error("the nonce was not issued by this verifier")]
    Unknown,
    /// Issued, but older than the window.
    #[error("the nonce has expired")]
    Expired,
    /// Already used by an earlier quote: a replay.
    #[error("the nonce was already used: a replayed quote")]
    Used,
}

/// The verifier's nonces: each issued once, accepted once, and only within
/// `ttl` of issue. Remembers at most `capacity` outstanding nonces (the
/// oldest are forgotten first) and the used ones until they would have
/// expired, so a replay inside the window is named as one.
#[derive(Debug)]
pub struct Nonces {
    ttl: Duration,
    capacity: usize,
    issued: HashMap<[u8; 32], Instant>,
    used: HashMap<[u8; 32], Instant>,
    order: VecDeque<([u8; 32], Instant)>,
}

impl Nonces {
    /// A window of `ttl`, holding at most `capacity` outstanding nonces.
    pub fn new(ttl: Duration, capacity: usize) -> Nonces {
        Nonces {
            ttl,
            capacity: capacity.max(1),
            issued: HashMap::new(),
            used: HashMap::new(),
            order: VecDeque::new(),
        }
    }

    /// A fresh random 32-byte nonce.
    pub fn issue(&mut self) -> [u8; 32] {
        let mut n = [0u8; 32];
        rand_core::RngCore::fill_bytes(&mut rand_core::OsRng, &mut n);
        let now = Instant::now();
        self.expire(now);
        while self.issued.len() >= self.capacity {
            match self.order.pop_front() {
                Some((old, _)) => {
                    self.issued.remove(&old);
                }
                None => break,
            }
        }
        self.issued.insert(n, now);
        self.order.push_back((n, now));
        n
    }

    /// Accept `nonce` once.
    pub fn consume(&mut self, nonce: &[u8]) -> Result<(), NonceError> {
        let now = Instant::now();
        let n: [u8; 32] = nonce.try_into().map_err(|_| NonceError::Unknown)?;
        if self.used.contains_key(&n) {
            return Err(NonceError::Used);
        }
        let at = self.issued.remove(&n).ok_or(NonceError::Unknown)?;
        self.used.insert(n, at);
        if now.duration_since(at) > self.ttl {
            return Err(NonceError::Expired);
        }
        Ok(())
    }

    fn expire(&mut self, now: Instant) {
        let ttl = self.ttl;
        self.used.retain(|_, at| now.duration_since(*at) <= ttl);
        while let Some((n, at)) = self.order.front().copied() {
            if now.duration_since(at) <= ttl {
                break;
            }
            self.order.pop_front();
            self.issued.remove(&n);
        }
    }
}
