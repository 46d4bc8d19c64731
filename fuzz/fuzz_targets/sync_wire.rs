//! Fuzz what a sync peer sends: chunk frames (whole and streamed in pieces,
//! which must agree), delta records, offline bundles, signed layer manifests
//! and delta application. Each is refused or parsed; none panics.
#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let whole = sync::wire::read_frames(data);
    let mut fb = sync::wire::FrameBuffer::default();
    let mut streamed = Vec::new();
    let mut ok = true;
    for piece in data.chunks(7) {
        match fb.push(piece) {
            Ok(v) => streamed.extend(v),
            Err(_) => {
                ok = false;
                break;
            }
        }
    }
    if ok && fb.finish().is_ok() {
        let whole = whole.expect("streamed frames parsed, whole ones must too");
        assert_eq!(whole.len(), streamed.len());
    }
    let _ = sync::wire::read_records(data);
    let _ = protocol::bundle::parse(data);
    if let Ok(text) = std::str::from_utf8(data) {
        let key = ed25519_dalek::SigningKey::from_bytes(&[7; 32]);
        let _ = sync::Signed::verify(text, &key.verifying_key());
    }
    if data.len() > 8 {
        let (old, delta) = data.split_at(data.len() / 2);
        let _ = sync::delta::apply(old, delta, 1 << 20);
    }
});
