//! The console's pages and the changes its forms make. Every value shown
//! goes through maud, which escapes it; changes go through the same
//! functions as the admin API (`crate::routes::admin`), so both validate
//! and audit alike.

use http_body_util::Full;
use hyper::body::Bytes;
use hyper::Response;
use maud::{html, Markup, PreEscaped, DOCTYPE};
use serde_json::{json, Value};

use super::sessions::Session;
use super::{field, html as page, raw_field, redirect, COOKIE, PREFIX};
use crate::app::AppState;
use crate::reply::Reply;

type Fields = [(String, String)];

/// A time (ms since the epoch) as `YYYY-MM-DD HH:MM:SS UTC`.
fn when(ms: i64) -> String {
    let secs = u64::try_from(ms / 1000).unwrap_or(0);
    let t = std::time::UNIX_EPOCH + std::time::Duration::from_secs(secs);
    humantime::format_rfc3339_seconds(t)
        .to_string()
        .replace('T', " ")
        .replace('Z', " UTC")
}

fn layout(title: &str, here: &str, s: Option<&Session>, body: Markup) -> Markup {
    let nav = [
        ("/console/", "Fleet"),
        ("/console/tokens", "Enrollment"),
        ("/console/images", "Images"),
        ("/console/policy", "Policy"),
        ("/console/audit", "Audit"),
    ];
    html! {
        (DOCTYPE)
        html lang="en" {
            head {
                meta charset="utf-8";
                meta name="viewport" content="width=device-width, initial-scale=1";
                title { (title) " · Satchel console" }
                link rel="stylesheet" href="/console/style.css";
            }
            body {
                header {
                    span.brand { "Satchel" }
                    @if let Some(s) = s {
                        nav {
                            @for (href, name) in nav {
                                @if href == here { a.here href=(href) { (name) } } @else { a href=(href) { (name) } }
                            }
                        }
                        div.who {
                            span { "admin " (s.admin) }
                            form.inline method="post" action="/console/logout" {
                                input type="hidden" name="csrf" value=(s.csrf);
                                button type="submit" { "Sign out" }
                            }
                        }
                    }
                }
                main {
                    h1 { (title) }
                    (body)
                }
            }
        }
    }
}

fn csrf(s: &Session) -> Markup {
    html! { input type="hidden" name="csrf" value=(s.csrf); }
}

fn notice(ok: bool, text: &str) -> Markup {
    html! {
        @if ok { div.notice { (text) } } @else { div.notice.error { (text) } }
    }
}

/// The sign-in page, with why sign-in is needed again (if known).
pub(super) fn sign_in(why: Option<&str>) -> Markup {
    layout(
        "Sign in",
        "",
        None,
        html! {
            @if let Some(w) = why { (notice(false, w)) }
            div.card {
                p { "Sign in with a one-time link made on the gateway host:" }
                pre { "sudo -u satchel satchel gateway console-link --gateway-config /etc/satchel/gateway.toml --name YOUR-NAME" }
                p { "Open the link it prints within 15 minutes; it works once." }
                p { "Or, from a browser holding an admin certificate (" code { "satchel gateway admin-cert" } "), "
                    a href="/console/login" { "sign in with the certificate" } "." }
            }
        },
    )
}

/// A refused change.
pub(super) fn refused(s: &Session, why: &str) -> Markup {
    layout(
        "Refused",
        "",
        Some(s),
        html! { (notice(false, why)) p { a href="/console/" { "Back to the fleet" } } },
    )
}

/// A 500's page: the cause is in the gateway's log only.
pub(super) fn failed() -> Markup {
    layout(
        "Something failed",
        "",
        None,
        html! { (notice(false, "The gateway could not complete this; its log says why.")) },
    )
}

fn not_found(s: &Session) -> Markup {
    layout(
        "Not found",
        "",
        Some(s),
        html! { p { "No such page. " a href="/console/" { "Back to the fleet" } } },
    )
}

/// A GET page.
pub(super) async fn get(
    state: &AppState,
    s: &Session,
    path: &str,
    query: &Fields,
) -> Response<Full<Bytes>> {
    let r = match path {
        "/console/" => fleet(state, s, None).await,
        "/console/tokens" => Ok((200, tokens(s, None))),
        "/console/images" => images(state, s, None).await,
        "/console/policy" => Ok((200, policy(state, s, None, None, None))),
        "/console/audit" => audit_list(state, s, query).await,
        p => match p
            .strip_prefix("/console/audit/")
            .and_then(|n| n.parse::<u64>().ok())
        {
            Some(seq) => audit_entry(state, s, seq).await,
            None => Ok((404, not_found(s))),
        },
    };
    match r {
        Ok((status, m)) => page(status, m),
        Err(e) => super::internal(&e),
    }
}

/// A POST: a change (CSRF and origin already checked).
pub(super) async fn post(
    state: &AppState,
    s: &Session,
    actor: &str,
    id: &str,
    path: &str,
    form: &Fields,
) -> Response<Full<Bytes>> {
    let r = match path {
        "/console/logout" => {
            if let Err(e) = state.db.end_session(id).await {
                return super::internal(&e);
            }
            state
                .record(
                    "console",
                    actor,
                    "sign-out",
                    "allowed",
                    json!({"via": "console"}),
                )
                .await;
            let gone =
                format!("{COOKIE}=; Path={PREFIX}/; HttpOnly; Secure; SameSite=Strict; Max-Age=0");
            return redirect("/console/login", Some(gone));
        }
        "/console/tokens" => make_token(state, s, actor, form).await,
        "/console/revoke" => revoke(state, s, actor, form).await,
        "/console/images/pin" => image_action(state, s, actor, "pin", form).await,
        "/console/images/unpin" => image_action(state, s, actor, "unpin", form).await,
        "/console/images/rollback" => image_action(state, s, actor, "rollback", form).await,
        "/console/policy" => publish(state, s, actor, form).await,
        "/console/policy/test" => Ok((200, test(state, s, form).await)),
        _ => Ok((404, not_found(s))),
    };
    match r {
        Ok((status, m)) => page(status, m),
        Err(e) => super::internal(&e),
    }
}

type Page = Result<(u16, Markup), Box<dyn std::error::Error + Send + Sync>>;

/// What an admin-API reply says: its JSON on success, its detail if not.
fn outcome(r: Reply) -> Result<Value, String> {
    match r {
        Reply::Json { status, body } if (200..300).contains(&status) => Ok(body),
        Reply::Json { body, .. } => Err(body["detail"].as_str().unwrap_or("refused").to_owned()),
        _ => Err("unexpected answer".to_owned()),
    }
}

async fn fleet(state: &AppState, s: &Session, said: Option<(bool, String)>) -> Page {
    let devices = state.db.devices().await?;
    let last = state.audit.latest_per_actor("attestation", None).await?;
    let trusted = state
        .audit
        .latest_per_actor("attestation", Some("trusted"))
        .await?;
    let lifetime = i64::try_from(state.cert_lifetime.as_millis()).unwrap_or(i64::MAX / 2);
    let now = audit::batch::now_ms();
    let body = html! {
        @if let Some((ok, text)) = &said { (notice(*ok, text)) }
        p.muted { (devices.len()) @if devices.len() == 1 { " device" } @else { " devices" } " enrolled. Attestations come from the audit trail; a certificate lives "
            (humantime::format_duration(state.cert_lifetime)) " after a trusted one." }
        table {
            thead { tr { th { "Device" } th { "Groups" } th { "Enrolled" } th { "Last attestation" } th { "Certificate" } th {} } }
            tbody {
                @for d in &devices {
                    @let att = last.iter().rev().find(|e| e.entry.actor == d.device_id);
                    tr {
                        td { code { (d.device_id) } }
                        td { (d.groups.join(", ")) }
                        td { (when(d.enrolled_ms)) }
                        td {
                            @match att {
                                Some(e) => {
                                    @if e.entry.decision == "trusted" { span.ok { "trusted" } } @else { span.bad { (e.entry.decision) } }
                                    " " span.muted { (when(e.entry.ts_ms)) }
                                    @if let Some(fs) = e.entry.details["failures"].as_array() {
                                        ul { @for f in fs { li {
                                            @if let Some(c) = f["check"].as_str() { strong { (c) } ": " }
                                            (f["message"].as_str().unwrap_or(""))
                                        } } }
                                    }
                                }
                                None => { span.muted { "none yet" } }
                            }
                        }
                        td {
                            @if let Some(at) = d.revoked_ms { span.bad { "revoked " (when(at)) } }
                            @else {
                                // From the last trusted attestation: a refused
                                // one (anyone may send junk in a device's name)
                                // takes no certificate away.
                                @match trusted.iter().rev().find(|e| e.entry.actor == d.device_id) {
                                    Some(e) if e.entry.ts_ms + lifetime > now => { "valid until " (when(e.entry.ts_ms + lifetime)) }
                                    Some(_) => { span.bad { "expired" } }
                                    None => { span.muted { "none" } }
                                }
                            }
                        }
                        td {
                            @if d.revoked_ms.is_none() {
                                form.inline method="post" action="/console/revoke" {
                                    (csrf(s))
                                    input type="hidden" name="device_id" value=(d.device_id);
                                    button.danger type="submit" { "Revoke" }
                                }
                            }
                        }
                    }
                }
            }
        }
    };
    Ok((200, layout("Fleet", "/console/", Some(s), body)))
}

async fn revoke(state: &AppState, s: &Session, actor: &str, form: &Fields) -> Page {
    // As sent, untrimmed: the id names exactly one device.
    let device = raw_field(form, "device_id");
    let body = serde_json::to_vec(&json!({"device_id": device}))?;
    let said = match outcome(crate::routes::admin::revoke(state, actor, &body).await) {
        Ok(_) => (
            true,
            format!("{device} is revoked: its certificates stop working on its next request."),
        ),
        Err(e) => (false, format!("{device}: {e}")),
    };
    let status = if said.0 { 200 } else { 400 };
    fleet(state, s, Some(said)).await.map(|(_, m)| (status, m))
}

/// The enrollment page; after a token is made, the token with its QR code.
fn tokens(s: &Session, made: Option<Result<(String, String, u64), String>>) -> Markup {
    let body = html! {
        @match &made {
            Some(Ok((device, token, ttl))) => {
                div.card {
                    p { "Token for " code { (device) } ", valid " (humantime::format_duration(std::time::Duration::from_secs(*ttl))) ", once:" }
                    p.token { code { (token) } }
                    div.qr { (PreEscaped(qr(token))) }
                    p { "On the device:" }
                    pre { "satchel client enroll --gateway https://GATEWAY:8443 --ca ca.crt --data /var/lib/satchel \\\n    --device-id " (shell_quoted(device)) " --token " (token) }
                }
            }
            Some(Err(e)) => { (notice(false, e)) }
            None => {}
        }
        form.stack.card method="post" action="/console/tokens" {
            (csrf(s))
            label for="device_id" { "Device id" }
            input type="text" id="device_id" name="device_id" required placeholder="laptop-17";
            label for="groups" { "Policy groups (comma-separated)" }
            input type="text" id="groups" name="groups" placeholder="group:class-7a";
            label for="ttl_h" { "Valid for (hours, at most 720)" }
            input type="number" id="ttl_h" name="ttl_h" value="24" min="1" max="720";
            p { button type="submit" { "Make a token" } }
        }
    };
    layout("Enrollment tokens", "/console/tokens", Some(s), body)
}

/// `s` as one shell word: single-quoted unless it is plain.
fn shell_quoted(s: &str) -> String {
    if !s.is_empty()
        && s.chars()
            .all(|c| c.is_ascii_alphanumeric() || "-_.:@+=".contains(c))
    {
        s.to_owned()
    } else {
        format!("'{}'", s.replace('\'', "'\\''"))
    }
}

/// At most `n` characters of `s`, marked when cut (an entry's fields come
/// from whoever made it, and may be long).
fn cut(s: &str, n: usize) -> String {
    match s.char_indices().nth(n) {
        Some((i, _)) => format!("{}…", &s[..i]),
        None => s.to_owned(),
    }
}

/// `text` as a QR code (SVG).
fn qr(text: &str) -> String {
    match qrcode::QrCode::new(text.as_bytes()) {
        Ok(code) => code
            .render::<qrcode::render::svg::Color<'_>>()
            .min_dimensions(200, 200)
            .build(),
        Err(_) => String::new(),
    }
}

async fn make_token(state: &AppState, s: &Session, actor: &str, form: &Fields) -> Page {
    let device = field(form, "device_id").to_owned();
    let groups: Vec<&str> = field(form, "groups")
        .split(',')
        .map(str::trim)
        .filter(|g| !g.is_empty())
        .collect();
    let hours: u64 = match field(form, "ttl_h") {
        "" => 24,
        h => match h.parse() {
            Ok(v) if (1..=720).contains(&v) => v,
            _ => {
                return Ok((
                    400,
                    tokens(s, Some(Err(format!("{h:?} hours: give 1 to 720")))),
                ))
            }
        },
    };
    let body =
        serde_json::to_vec(&json!({"device_id": device, "groups": groups, "ttl_s": hours * 3600}))?;
    match outcome(crate::routes::admin::enroll_token(state, actor, &body).await) {
        Ok(v) => {
            let token = v["token"].as_str().unwrap_or("").to_owned();
            let ttl = v["expires_in_s"].as_u64().unwrap_or(0);
            Ok((200, tokens(s, Some(Ok((device, token, ttl))))))
        }
        Err(e) => Ok((400, tokens(s, Some(Err(e))))),
    }
}

async fn images(state: &AppState, s: &Session, said: Option<(bool, String)>) -> Page {
    let list = state.images.list().await?;
    let mut shown = Vec::new();
    for name in list.keys() {
        let history = state.images.history(name).await?;
        let marks = state.images.marks(name).await?;
        let pins = state.images.pins(name).await?;
        shown.push((name.clone(), history, marks, pins));
    }
    let body = html! {
        @if let Some((ok, text)) = &said { (notice(*ok, text)) }
        @if list.is_empty() { p.muted { "No image yet: " code { "satchel image build" } " makes one." } }
        p.muted { "A device never takes a version older than the one it holds: a pin holds back an update not yet taken; " strong { "Roll back" } " publishes an older version's files again as a new version, which every device takes." }
        @for (name, layers, marks, pins) in &shown {
            h2 { (name) }
            table {
                thead { tr { th { "Layer" } th { "Owner" } th { "Version" } th { "Digest" } th { "Made" } th { "Devices" } th {} } }
                tbody {
                    @for l in layers.iter().rev() {
                        @let held: Vec<&str> = marks.iter().filter(|m| m.role == "held" && m.digest == l.digest).map(|m| m.device_id.as_str()).collect();
                        @let offered: Vec<&str> = marks.iter().filter(|m| m.role == "offered" && m.digest == l.digest && !held.contains(&m.device_id.as_str())).map(|m| m.device_id.as_str()).collect();
                        tr {
                            td { (l.layer.as_str()) }
                            td { @if l.owner.is_empty() { "the image" } @else { "device " code { (l.owner) } } }
                            td.num { (l.version) }
                            td { code { (l.digest.get(..16).unwrap_or(&l.digest)) } }
                            td { (when(l.created_ms)) }
                            td {
                                @if !held.is_empty() { "runs: " @for d in &held { code { (d) } " " } }
                                @if !offered.is_empty() { span.muted { "offered: " @for d in &offered { code { (d) } " " } } }
                            }
                            td {
                                @if l.owner.is_empty() && l.layer.is_system() {
                                    form.inline method="post" action="/console/images/pin" {
                                        (csrf(s))
                                        input type="hidden" name="image" value=(name);
                                        input type="hidden" name="layer" value=(l.layer.as_str());
                                        input type="hidden" name="version" value=(l.version);
                                        input type="text" name="device_id" placeholder="device (empty: all)" size="14";
                                        button type="submit" { "Pin" }
                                    }
                                    @if layers.iter().any(|n| n.owner.is_empty() && n.layer == l.layer && n.version > l.version) {
                                        form.inline method="post" action="/console/images/rollback" {
                                            (csrf(s))
                                            input type="hidden" name="image" value=(name);
                                            input type="hidden" name="layer" value=(l.layer.as_str());
                                            input type="hidden" name="version" value=(l.version);
                                            button.danger type="submit" { "Roll back to this" }
                                        }
                                    }
                                }
                            }
                        }
                    }
                }
            }
            @if !pins.is_empty() {
                h3 { "Pins" }
                table {
                    thead { tr { th { "Layer" } th { "For" } th { "Version" } th { "Set by" } th {} } }
                    tbody {
                        @for p in pins {
                            tr {
                                td { (p.layer.as_str()) }
                                td { @if p.device_id.is_empty() { "every device" } @else { code { (p.device_id) } } }
                                td.num { (p.version) }
                                td { (p.admin) " " span.muted { (when(p.set_ms)) } }
                                td {
                                    form.inline method="post" action="/console/images/unpin" {
                                        (csrf(s))
                                        input type="hidden" name="image" value=(name);
                                        input type="hidden" name="layer" value=(p.layer.as_str());
                                        input type="hidden" name="device_id" value=(p.device_id);
                                        button type="submit" { "Unpin" }
                                    }
                                }
                            }
                        }
                    }
                }
            }
        }
    };
    Ok((200, layout("Images", "/console/images", Some(s), body)))
}

/// Pin, unpin or roll back, from the images page; audited with the admin's
/// name.
async fn image_action(
    state: &AppState,
    s: &Session,
    actor: &str,
    action: &str,
    form: &Fields,
) -> Page {
    let image = raw_field(form, "image").to_owned();
    let layer: Result<sync::Layer, String> = raw_field(form, "layer")
        .parse()
        .map_err(|e: sync::manifest::BadLayer| e.to_string());
    let version = raw_field(form, "version").parse::<u64>();
    let device = raw_field(form, "device_id").trim().to_owned();
    let done: Result<(String, Value), String> = async {
        let layer = layer?;
        if !device.is_empty() && !protocol::admin::valid_device_id(&device) {
            return Err(format!("{device:?} is not a device id"));
        }
        let whom = if device.is_empty() { "every device".to_owned() } else { device.clone() };
        match action {
            "pin" => {
                let v = version.map_err(|_| "no version".to_owned())?;
                state.images.pin(&image, layer, &device, v, actor).await.map_err(|e| e.to_string())?;
                Ok((
                    format!("{image}/{layer} pinned at version {v} for {whom}."),
                    json!({"layer": layer, "version": v, "device_id": device}),
                ))
            }
            "unpin" => {
                if !state.images.unpin(&image, layer, &device).await.map_err(|e| e.to_string())? {
                    return Err(format!("{image}/{layer} has no pin for {whom}"));
                }
                Ok((
                    format!("{image}/{layer}: the pin for {whom} is removed."),
                    json!({"layer": layer, "device_id": device}),
                ))
            }
            _ => {
                let v = version.map_err(|_| "no version".to_owned())?;
                let stored = state
                    .images
                    .roll_back(&image, layer, v, &state.manifest_key)
                    .await
                    .map_err(|e| e.to_string())?;
                Ok((
                    format!("{image}/{layer}: version {v}'s files are published again as version {}.", stored.version),
                    json!({"layer": layer, "from_version": v, "version": stored.version, "digest": stored.digest}),
                ))
            }
        }
    }
    .await;
    let decision = match action {
        "pin" => "pinned",
        "unpin" => "unpinned",
        _ => "rolled-back",
    };
    let said = match done {
        Ok((text, mut details)) => {
            details["via"] = json!("console");
            // What every device is offered decides the image's boot stages.
            if let Err(e) = crate::images::write_stages(&state.images, &state.data, &image).await {
                tracing::warn!(image, error = %e, "writing the boot stages");
            }
            state
                .record("admin", actor, &image, decision, details)
                .await;
            (true, text)
        }
        Err(e) => (false, e),
    };
    let status = if said.0 { 200 } else { 400 };
    images(state, s, Some(said)).await.map(|(_, m)| (status, m))
}

/// The policy page: the text in force (editable), a test form, and what
/// the last action said.
fn policy(
    state: &AppState,
    s: &Session,
    said: Option<(bool, String)>,
    text: Option<&str>,
    tested: Option<Markup>,
) -> Markup {
    let current = state.policy_text();
    let body = html! {
        @if let Some((ok, t)) = &said { (notice(*ok, t)) }
        div.card {
            h2 { "Test a request" }
            form.filters method="post" action="/console/policy/test" {
                (csrf(s))
                label { "Device id " input type="text" name="device" required placeholder="laptop-17"; }
                label { "URL or program (sha256:HEX or a path) " input type="text" name="object" required placeholder="https://en.wikipedia.org/wiki/Rust"; }
                label { "Method " input type="text" name="method" value="GET"; }
                button type="submit" { "Decide" }
            }
            @if let Some(t) = tested { (t) }
        }
        form.stack.card method="post" action="/console/policy" {
            (csrf(s))
            label for="text" { "The policy in force (one rule per line; see docs/policy.md)" }
            textarea id="text" name="text" spellcheck="false" { (text.unwrap_or(&current)) }
            p { button type="submit" { "Check and put in force" } }
        }
    };
    layout("Policy", "/console/policy", Some(s), body)
}

async fn publish(state: &AppState, s: &Session, actor: &str, form: &Fields) -> Page {
    let text = raw_field(form, "text").replace("\r\n", "\n");
    match outcome(crate::routes::admin::put_policy(state, actor, text.as_bytes()).await) {
        Ok(v) => Ok((
            200,
            policy(
                state,
                s,
                Some((
                    true,
                    format!(
                        "In force now: {} rules, {} memberships (audited).",
                        v["rules"], v["memberships"]
                    ),
                )),
                None,
                None,
            ),
        )),
        Err(e) => Ok((
            400,
            policy(
                state,
                s,
                Some((false, format!("Not put in force: {e}"))),
                Some(&text),
                None,
            ),
        )),
    }
}

/// Decide a URL or a program for a device as the gateway would, naming the
/// deciding rule.
async fn test(state: &AppState, s: &Session, form: &Fields) -> Markup {
    let device = field(form, "device");
    let object = field(form, "object");
    let method = match field(form, "method") {
        "" => "GET".to_owned(),
        m => m.to_ascii_uppercase(),
    };
    let groups = match state.db.device(device).await {
        Ok(Some(d)) => d.groups,
        Ok(None) => Vec::new(),
        Err(e) => {
            tracing::error!(error = %e, "reading a device");
            Vec::new()
        }
    };
    let request = if let Some(h) = object.strip_prefix("sha256:") {
        Ok(policy::Request::App {
            sha256: Some(h.to_ascii_lowercase()),
            path: None,
        })
    } else if object.starts_with('/') {
        Ok(policy::Request::App {
            sha256: None,
            path: Some(object.to_owned()),
        })
    } else {
        policy::url::CanonicalUrl::parse(object)
            .map(|url| policy::Request::Url {
                url,
                method: method.clone(),
            })
            .map_err(|e| e.to_string())
    };
    let subject = format!("device:{device}");
    let tested = match request {
        Err(e) => html! { (notice(false, &e)) },
        Ok(req) => {
            let d = state.policy().decide_with_groups(&subject, &groups, &req);
            let what = match &req {
                policy::Request::Url { url, .. } => format!("{method} {url}"),
                _ => object.to_owned(),
            };
            html! {
                p {
                    @if d.allow { span.ok { "allowed" } } @else { span.bad { "denied" } }
                    " for " code { (subject) }
                    @if !groups.is_empty() { " (groups " (groups.join(", ")) ")" }
                    ": " code { (what) }
                }
                p {
                    @match &d.rule {
                        Some(r) => { "Line " (r.line) " decides: " code { (r.to_string()) } }
                        None => { "No rule matches: the default is deny." }
                    }
                }
            }
        }
    };
    policy(state, s, None, None, Some(tested))
}

async fn audit_list(state: &AppState, s: &Session, query: &Fields) -> Page {
    const PAGE: u64 = 100;
    let kind = field(query, "kind");
    let text = field(query, "q");
    let before = field(query, "before").parse::<u64>().ok();
    let entries = state
        .audit
        .recent(
            (!kind.is_empty()).then_some(kind),
            (!text.is_empty()).then_some(text),
            before,
            PAGE,
        )
        .await?;
    let checkpoints = state.audit.checkpoints_newest(Some(20)).await?;
    let kinds = [
        "attestation",
        "enrollment",
        "admin",
        "console",
        "proxy",
        "sync",
        "exec",
        "agent",
        "gateway",
    ];
    let older = entries
        .last()
        .filter(|_| entries.len() as u64 == PAGE)
        .map(|e| {
            form_urlencoded::Serializer::new(String::new())
                .append_pair("kind", kind)
                .append_pair("q", text)
                .append_pair("before", &e.entry.seq.to_string())
                .finish()
        });
    let body = html! {
        form.filters method="get" action="/console/audit" {
            label { "Kind " select name="kind" {
                option value="" { "any" }
                @for k in kinds { @if k == kind { option value=(k) selected { (k) } } @else { option value=(k) { (k) } } }
            } }
            label { "Actor, subject or decision contains " input type="text" name="q" value=(text); }
            button type="submit" { "Filter" }
        }
        table {
            thead { tr { th { "#" } th { "When" } th { "Kind" } th { "Actor" } th { "Subject" } th { "Decision" } } }
            tbody {
                @for e in &entries {
                    tr {
                        td.num { a href=(format!("/console/audit/{}", e.entry.seq)) { (e.entry.seq) } }
                        td { (when(e.entry.ts_ms)) }
                        td { (e.entry.kind) }
                        td { code { (cut(&e.entry.actor, 80)) } }
                        td { code { (cut(&e.entry.subject, 120)) } }
                        td { (cut(&e.entry.decision, 40)) }
                    }
                }
            }
        }
        @if entries.is_empty() { p.muted { "No entry matches." } }
        @if let Some(q) = older { p { a href=(format!("/console/audit?{q}")) { "Older entries" } } }
        h2 { "Signed checkpoints" }
        table {
            thead { tr { th { "Entries" } th { "Signed" } th { "Root" } } }
            tbody {
                @for c in checkpoints.iter().rev() {
                    tr { td.num { (c.size) } td { (when(c.created_ms)) } td { code { (hex::encode(c.root)) } } }
                }
            }
        }
    };
    Ok((200, layout("Audit trail", "/console/audit", Some(s), body)))
}

async fn audit_entry(state: &AppState, s: &Session, seq: u64) -> Page {
    let Some(e) = state
        .audit
        .entries(seq, None, Some(1))
        .await?
        .into_iter()
        .next()
    else {
        return Ok((404, not_found(s)));
    };
    if e.entry.seq != seq {
        return Ok((404, not_found(s)));
    }
    let proof = inclusion(state, &e).await;
    let details = serde_json::to_string_pretty(&e.entry.details).unwrap_or_default();
    let body = html! {
        table {
            tbody {
                tr { th { "When" } td { (when(e.entry.ts_ms)) } }
                tr { th { "Kind" } td { (e.entry.kind) } }
                tr { th { "Actor" } td { code { (e.entry.actor) } } }
                tr { th { "Subject" } td { code { (e.entry.subject) } } }
                tr { th { "Decision" } td { (e.entry.decision) } }
                tr { th { "Leaf hash" } td { code { (hex::encode(e.leaf_hash)) } } }
            }
        }
        h2 { "Details" }
        pre { (details) }
        h2 { "Inclusion proof" }
        @match &proof {
            Ok(text) => { p.ok { (text) } }
            Err(text) => { p.bad { (text) } }
        }
        p { a href="/console/audit" { "Back to the trail" } }
    };
    Ok((
        200,
        layout(
            &format!("Audit entry {seq}"),
            "/console/audit",
            Some(s),
            body,
        ),
    ))
}

/// Check that `e` is in the tree of the gateway's latest signed checkpoint:
/// the signature, the entry's own leaf hash, and the proof to the root.
async fn inclusion(state: &AppState, e: &audit::store::StoredEntry) -> Result<String, String> {
    let note = state
        .audit_view
        .latest()
        .ok_or("no signed checkpoint yet: the next one (within a minute) will cover it")?;
    let verifier =
        audit::checkpoint::Verifier::from_vkey(&state.audit_vkey).map_err(|x| x.to_string())?;
    let cp = audit::checkpoint::parse_and_verify(&note, &verifier)
        .map_err(|x| format!("the latest checkpoint does not verify: {x}"))?;
    if e.entry.seq >= cp.size {
        return Err(format!(
            "not yet covered: the latest signed checkpoint holds {} entries",
            cp.size
        ));
    }
    if e.entry.leaf_hash() != e.leaf_hash {
        return Err("the entry's content does not match its leaf hash: it was changed".to_owned());
    }
    let p = audit::log::prove_inclusion(&state.audit, e.entry.seq, Some(cp.size))
        .await
        .map_err(|x| format!("no proof: {x}"))?;
    let path: Result<Vec<audit::merkle::Hash>, _> = p
        .path
        .iter()
        .map(|h| {
            hex::decode(h)
                .ok()
                .and_then(|b| <[u8; 32]>::try_from(b).ok())
                .ok_or(())
        })
        .collect();
    let path = path.map_err(|()| "a proof hash is not 32 bytes".to_owned())?;
    audit::merkle::verify_inclusion(&e.leaf_hash, e.entry.seq, cp.size, &path, &cp.root)
        .map_err(|x| format!("the proof does not lead to the signed root: {x}"))?;
    Ok(format!(
        "verified: entry {} is in the signed checkpoint of {} entries ({} proof hashes to root {})",
        e.entry.seq,
        cp.size,
        path.len(),
        hex::encode(cp.root)
    ))
}
