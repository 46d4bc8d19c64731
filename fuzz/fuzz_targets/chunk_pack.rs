//! Fuzz a device's chunk pack as found on disk after a crash or an edit: the
//! store opens it, indexes what it can, and every read of an indexed chunk
//! is checked against its id. Nothing panics, nothing reads past the file.
#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let dir = tempfile::tempdir().expect("a temporary directory");
    std::fs::create_dir(dir.path().join("packs")).expect("the packs directory");
    std::fs::write(dir.path().join("packs/0.pack"), data).expect("the pack");
    let Ok(store) = sync::ChunkStore::open_packed(dir.path()) else {
        return;
    };
    let count = store.count().unwrap_or(0);
    assert!(count as usize <= data.len() / 40, "{count} records in {} bytes", data.len());
    // Every id named at a record boundary the scan could have used.
    for w in data.windows(36).step_by(40).take(64) {
        if &w[..4] == b"SCK1" {
            let mut id = [0u8; 32];
            id.copy_from_slice(&w[4..36]);
            let _ = store.get(sync::ChunkId(id));
        }
    }
});
