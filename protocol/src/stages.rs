//! The measured-boot stages of an image's system layers: the TOML the
//! gateway writes at `satchel image build` (for `satchel predict`) and the
//! device writes at `satchel client sync stages` (for `satchel measure`).
//! Both must be byte for byte the same, or the device's PCR 13 never
//! matches the reference.

use sync::manifest::Layer;

/// The stages TOML for `(layer, digest)` pairs (system layers only, PCR 13).
pub fn stages_toml(image: &str, digests: &[(Layer, String)]) -> String {
    let mut out = format!(
        "# The system layers of image {image:?} as measured boot stages (PCR 13).\n\
         # Append to the boot chain: before `satchel predict` on the gateway side,\n\
         # before `satchel measure` on the client (`satchel client sync stages`).\n"
    );
    for (layer, digest) in digests.iter().filter(|(l, _)| l.is_system()) {
        out.push_str(&format!(
            "\n[[stage]]\nname = \"layer-{layer}\"\npcr = 13\ndata = \"{}\"\n",
            stage_data(*layer, digest)
        ));
    }
    out
}

/// The bytes a layer's stage measures.
pub fn stage_data(layer: Layer, digest: &str) -> String {
    format!("satchel.layer {layer} sha256:{digest}")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_system_layers_are_stages() {
        let text = stages_toml(
            "classroom",
            &[(Layer::BaseOs, "aa".into()), (Layer::UserData, "bb".into())],
        );
        assert!(text.contains(
            "name = \"layer-base-os\"\npcr = 13\ndata = \"satchel.layer base-os sha256:aa\""
        ));
        assert!(!text.contains("user-data"));
    }
}
