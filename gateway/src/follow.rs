//! Following the shared database: several gateways on one PostgreSQL each
//! keep the egress policy and the reference in force in memory (every
//! request reads them), and an admin changes them through one gateway. This
//! task looks at what the database holds every few seconds and puts a
//! change in force here too, so a change made through any gateway reaches
//! all of them within that time.
//!
//! It only ever moves forward: a reference older than the one in force is
//! ignored (as the admin route refuses it), one that does not verify with
//! the reference key is ignored, and a policy that does not parse is left
//! out of force. Each is logged; none stops the gateway.

use std::sync::Arc;
use std::time::Duration;

use crate::app::AppState;
use crate::routes::admin::REFERENCE_SETTING;

/// What the database held when last looked at.
#[derive(Debug, Default)]
struct Seen {
    policy: Option<String>,
    reference: Option<String>,
}

/// The policy rows as one text (what the follower compares).
async fn stored_policy(state: &AppState) -> Option<String> {
    match state.policy_store.rows().await {
        Ok(rows) => Some(rows.iter().map(|r| r.join(", ") + "\n").collect()),
        Err(e) => {
            tracing::warn!(error = %e, "follow: cannot read the stored policy");
            None
        }
    }
}

async fn stored_reference(state: &AppState) -> Option<String> {
    match state.db.setting(REFERENCE_SETTING).await {
        Ok(r) => r,
        Err(e) => {
            tracing::warn!(error = %e, "follow: cannot read the stored reference");
            None
        }
    }
}

/// Follow the database every `every`, from what it holds now.
pub(crate) fn spawn(state: Arc<AppState>, every: Duration) -> tokio::task::JoinHandle<()> {
    tokio::spawn(async move {
        let mut seen = Seen {
            policy: stored_policy(&state).await,
            reference: stored_reference(&state).await,
        };
        let mut tick = tokio::time::interval(every);
        tick.tick().await;
        loop {
            tick.tick().await;
            follow_once(&state, &mut seen).await;
        }
    })
}

/// One look: put in force what changed since the last.
async fn follow_once(state: &AppState, seen: &mut Seen) {
    if let Some(text) = stored_policy(state).await {
        if seen.policy.as_ref() != Some(&text) {
            match policy::PolicyText::parse(&text) {
                Ok(parsed) => {
                    state.set_policy(&parsed, text.clone());
                    tracing::info!("follow: the stored policy changed; now in force here");
                }
                Err(e) => tracing::warn!(error = %e, "follow: the stored policy does not parse"),
            }
            seen.policy = Some(text);
        }
    }
    if let Some(text) = stored_reference(state).await {
        if seen.reference.as_ref() != Some(&text) {
            take_reference(state, &text);
            seen.reference = Some(text);
        }
    }
}

/// Put a stored reference in force if it verifies and is not older.
fn take_reference(state: &AppState, text: &str) {
    let Some(key) = &state.reference_key else {
        return;
    };
    let reference = match attest::Reference::verify_signed(text.as_bytes(), key) {
        Ok(r) => r,
        Err(e) => {
            tracing::warn!(error = %e, "follow: the stored reference does not verify; the one in force stays");
            return;
        }
    };
    let held = state.reference().map_or(0, |r| r.version);
    if reference.version < held {
        tracing::warn!(
            version = reference.version,
            held,
            "follow: the stored reference is older than the one in force; ignored"
        );
        return;
    }
    tracing::info!(
        version = reference.version,
        "follow: the stored reference changed; now in force here"
    );
    if let Ok(mut slot) = state.reference.write() {
        *slot = Some(Arc::new(reference));
    }
}
