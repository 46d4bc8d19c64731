//! Talking to the sync routes: typed calls, refusals, and the image as the
//! gateway offers it (each manifest checked against the key pinned at the
//! first pull; a manifest delta rebuilt only against a version held).

use serde::Serialize;
use serde_json::Value;
use sync::manifest::Signed;

use crate::client::{GatewayClient, Meter};
use protocol::paths::{self, SyncAction};
use protocol::sync::{Offer, OfferRequest, OfferedLayer};

use super::state::SyncState;
use super::{local, SyncError};

/// The gateway's refusal: its status and the problem body's detail.
pub(super) fn refused(status: u16, body: &[u8]) -> SyncError {
    let v: Value = serde_json::from_slice(body).unwrap_or(Value::Null);
    let problem = protocol::Problem::from_answer(status, &v);
    SyncError::Refused {
        status,
        detail: if problem.detail.is_empty() {
            "no detail".to_owned()
        } else {
            problem.detail
        },
    }
}

/// `POST` the typed `body` to `image`'s sync `action`; the typed answer.
pub(super) async fn json_call<Q: Serialize, A: serde::de::DeserializeOwned>(
    c: &GatewayClient,
    image: &str,
    action: SyncAction,
    body: &Q,
    meter: &Meter,
) -> Result<A, SyncError> {
    let (status, bytes) = c
        .send(
            hyper::Method::POST,
            &paths::sync(image, action),
            "application/json",
            serde_json::to_vec(body).map_err(local)?,
            Some(meter),
        )
        .await?;
    if status != 200 {
        return Err(refused(status, &bytes));
    }
    serde_json::from_slice(&bytes).map_err(|e| {
        SyncError::Untrusted(format!(
            "an answer to {} that is not the protocol's: {e}",
            action.segment()
        ))
    })
}

/// The image's layers as the gateway offers them, checked against the
/// pinned manifest key (pinned on first use).
pub(super) async fn offered(
    c: &GatewayClient,
    image: &str,
    state: &mut SyncState,
    meter: &Meter,
) -> Result<Vec<Signed>, SyncError> {
    // The versions held: the gateway sends each manifest as a delta against them.
    let have = state.layers.values().map(|l| l.digest.clone()).collect();
    let v: Offer = json_call(c, image, SyncAction::Offer, &OfferRequest { have }, meter).await?;
    let pem = v.manifest_key.as_str();
    match &state.manifest_key {
        Some(p) if p != pem => {
            return Err(SyncError::Untrusted(
                "a manifest key other than the one pinned at the first pull".to_owned(),
            ))
        }
        _ => state.manifest_key = Some(pem.to_owned()),
    }
    let key = ed25519_dalek::pkcs8::DecodePublicKey::from_public_key_pem(pem)
        .map_err(|e| SyncError::Untrusted(format!("a bad manifest key: {e}")))?;
    let mut out = Vec::new();
    for l in &v.layers {
        let text = offered_text(l, state)?;
        let s = Signed::verify(&text, &key)
            .map_err(|e| SyncError::Untrusted(format!("a layer manifest that fails: {e}")))?;
        refuse_rollback(state, image, &s)?;
        if s.manifest.image != image || l.digest != s.digest {
            return Err(SyncError::Untrusted(format!(
                "a manifest for {}/{} under {image}",
                s.manifest.image, s.manifest.layer
            )));
        }
        out.push(s);
    }
    Ok(out)
}

/// A verified offer older than the version of its layer this device holds
/// is refused: a signed manifest stays valid forever, so without this a
/// gateway (or whoever holds its key) could push back a version with known
/// flaws.
fn refuse_rollback(state: &SyncState, image: &str, s: &Signed) -> Result<(), SyncError> {
    match state.layers.get(&s.manifest.layer) {
        Some(held) if s.manifest.version < held.version => Err(SyncError::Rollback {
            image: image.to_owned(),
            layer: s.manifest.layer.to_string(),
            offered: s.manifest.version,
            held: held.version,
        }),
        _ => Ok(()),
    }
}

/// One offered layer's signed manifest: as sent, or rebuilt from its delta
/// against the held version it names. Trusted no more than a manifest sent
/// whole: the caller verifies it.
pub(super) fn offered_text(l: &OfferedLayer, state: &SyncState) -> Result<String, SyncError> {
    if let Some(text) = &l.manifest {
        return Ok(text.clone());
    }
    let untrusted = |what: &str| SyncError::Untrusted(format!("a manifest delta {what}"));
    let d = l
        .manifest_delta
        .as_ref()
        .ok_or_else(|| untrusted("missing (no manifest either)"))?;
    let base = match d.base.as_deref() {
        None => "",
        Some(digest) => state
            .layers
            .values()
            .find(|h| h.digest == digest)
            .map(|h| h.manifest.as_str())
            .ok_or_else(|| untrusted("against a version this device does not hold"))?,
    };
    let zstd = base64::Engine::decode(&base64::engine::general_purpose::STANDARD, &d.zstd)
        .map_err(|_| untrusted("that is not base64"))?;
    let text = sync::delta::apply(base.as_bytes(), &zstd, sync::manifest::MAX_MANIFEST)
        .map_err(|e| untrusted(&e.to_string()))?;
    String::from_utf8(text).map_err(|_| untrusted("that is not UTF-8"))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::sync::state::LayerState;
    use serde_json::Value;
    use sync::manifest::Layer;

    /// An offered layer from the JSON of its manifest members.
    fn as_layer(v: &Value) -> OfferedLayer {
        let mut v = v.clone();
        v["layer"] = serde_json::json!("user-data");
        v["version"] = serde_json::json!(1);
        v["digest"] = serde_json::json!("d");
        serde_json::from_value(v).unwrap()
    }
    use base64::Engine as _;

    fn b64(d: &[u8]) -> String {
        base64::engine::general_purpose::STANDARD.encode(d)
    }

    #[test]
    fn a_manifest_delta_rebuilds_only_against_a_held_version() {
        let old = r#"{"manifest": {"entries": ["a", "b"]}, "signature": "s1"}"#;
        let new = r#"{"manifest": {"entries": ["a", "b", "c"]}, "signature": "s2"}"#;
        let mut state = SyncState::default();
        state.layers.insert(
            Layer::BaseOs,
            LayerState {
                version: 1,
                digest: "d1".into(),
                manifest: old.into(),
            },
        );
        let delta = sync::delta::make(old.as_bytes(), new.as_bytes())
            .unwrap()
            .unwrap();
        let l = serde_json::json!({"manifest_delta": {"base": "d1", "zstd": b64(&delta)}});
        assert_eq!(offered_text(&as_layer(&l), &state).unwrap(), new);
        // Whole, against no base.
        let whole = sync::delta::make(b"", new.as_bytes()).unwrap().unwrap();
        let l = serde_json::json!({"manifest_delta": {"base": null, "zstd": b64(&whole)}});
        assert_eq!(offered_text(&as_layer(&l), &state).unwrap(), new);
        // Against a version not held, garbage, bad base64, or the wrong base:
        // refused, never a manifest made up of the wrong bytes.
        for l in [
            serde_json::json!({"manifest_delta": {"base": "d2", "zstd": b64(&delta)}}),
            serde_json::json!({"manifest_delta": {"base": "d1", "zstd": b64(b"garbage")}}),
            serde_json::json!({"manifest_delta": {"base": "d1", "zstd": "%%%"}}),
            serde_json::json!({"manifest_delta": {"base": null, "zstd": b64(&delta)}}),
            serde_json::json!({}),
        ] {
            match offered_text(&as_layer(&l), &state) {
                Err(SyncError::Untrusted(_)) => {}
                Ok(t) => assert_ne!(t, new, "{l}"),
                Err(e) => panic!("{l}: {e}"),
            }
        }
    }
}
