//! The epoch counter: a TPM NV counter that revokes older signed PCR
//! policies. Every signed policy carries an epoch and holds only while the
//! counter is at most that epoch (`TPM2_PolicyNV`, `TPM_EO_UNSIGNED_LE`);
//! once a device has unsealed with a newer epoch it raises the counter to
//! it, and every policy signed for a lower epoch stops working on it.
//!
//! A counter only counts up, and a counter defined again starts at the
//! highest value any counter on that TPM ever held (TPM 2.0 Part 1,
//! "NV Counters"), so neither `TPM2_NV_UndefineSpace` nor a restart brings
//! an old policy back. Its name, which the signed digest covers, is fixed
//! by its public area alone; the signer computes it without the device.
//!
//! This module never lowers anything and never decides trust: it defines,
//! reads and raises the counter.

use sha2::{Digest as _, Sha256};
use tss_esapi::attributes::NvIndexAttributesBuilder;
use tss_esapi::constants::NvIndexType;
use tss_esapi::handles::{NvIndexHandle, NvIndexTpmHandle, TpmHandle};
use tss_esapi::interface_types::algorithm::HashingAlgorithm;
use tss_esapi::interface_types::resource_handles::{NvAuth, Provision};
use tss_esapi::structures::NvPublicBuilder;

use super::{command, malformed, Tpm, TpmError};

/// The NV index of the epoch counter (in the range TCG reserves for the
/// owner, 0x01000000-0x013FFFFF).
pub const EPOCH_COUNTER: u32 = 0x0100_5A7C;

/// The counter's attributes once written: `TPM_NT_COUNTER`, written by the
/// owner, read by the owner or with its own (empty) auth value, no
/// dictionary-attack lockout, `TPMA_NV_WRITTEN`.
const ATTRIBUTES: u32 = (1 << 1) // OWNERWRITE
    | (1 << 4) // TPM_NT_COUNTER
    | (1 << 17) // OWNERREAD
    | (1 << 18) // AUTHREAD
    | (1 << 25) // NO_DA
    | (1 << 29); // WRITTEN

/// `TPM_CC_PolicyNV`.
const CC_POLICY_NV: u32 = 0x0000_0149;

/// `TPM_EO_UNSIGNED_LE`: the counter is at most the operand.
const EO_UNSIGNED_LE: u16 = 0x0009;

/// At most this many increments in one raise: an epoch far above the
/// counter is a mistake (or a hostile policy), not an update.
pub const MAX_RAISE: u64 = 1024;

/// The TPM name of the written counter at `index`: `TPM_ALG_SHA256 ‖
/// SHA-256(TPMS_NV_PUBLIC)`.
pub fn counter_name(index: u32) -> [u8; 34] {
    let mut public = Vec::with_capacity(14);
    public.extend_from_slice(&index.to_be_bytes());
    public.extend_from_slice(&0x000Bu16.to_be_bytes()); // nameAlg SHA-256
    public.extend_from_slice(&ATTRIBUTES.to_be_bytes());
    public.extend_from_slice(&0u16.to_be_bytes()); // authPolicy: empty
    public.extend_from_slice(&8u16.to_be_bytes()); // dataSize
    let mut name = [0u8; 34];
    name[..2].copy_from_slice(&0x000Bu16.to_be_bytes());
    name[2..].copy_from_slice(&Sha256::digest(&public));
    name
}

/// `TPM2_PolicyNV(counter ≤ epoch)` applied to policy digest `old`.
pub fn policy_nv(old: [u8; 32], index: u32, epoch: u64) -> [u8; 32] {
    let mut args = Sha256::new();
    args.update(epoch.to_be_bytes());
    args.update(0u16.to_be_bytes()); // offset
    args.update(EO_UNSIGNED_LE.to_be_bytes());
    let mut d = Sha256::new();
    d.update(old);
    d.update(CC_POLICY_NV.to_be_bytes());
    d.update(args.finalize());
    d.update(counter_name(index));
    d.finalize().into()
}

impl Tpm {
    /// The counter's handle, if it is defined; refused if something else
    /// (another type, other attributes) sits at its index.
    fn counter_handle(&mut self, index: u32) -> Result<Option<NvIndexHandle>, TpmError> {
        const WHAT: &str = "TPM2_NV_ReadPublic (epoch counter)";
        let tpm_handle = NvIndexTpmHandle::new(index).map_err(command(WHAT))?;
        let Ok(object) = self.ctx.tr_from_tpm_public(TpmHandle::NvIndex(tpm_handle)) else {
            return Ok(None);
        };
        let handle = NvIndexHandle::from(object);
        let (public, name) = self.ctx.nv_read_public(handle).map_err(command(WHAT))?;
        if public.attributes().index_type().ok() != Some(NvIndexType::Counter) {
            return Err(malformed(
                WHAT,
                "the epoch counter's index is not a counter",
            ));
        }
        // Unwritten, its name lacks TPMA_NV_WRITTEN; the first increment
        // makes it the one every signed policy names (checked then).
        if public.attributes().written() && name.value() != counter_name(index) {
            return Err(malformed(
                WHAT,
                "another counter sits where the epoch counter belongs (other attributes): policies name a different one",
            ));
        }
        Ok(Some(handle))
    }

    /// Define the counter at `index` if it is not there and write it once
    /// (a counter is unreadable until its first increment). Its value.
    pub fn ensure_epoch_counter(&mut self, index: u32) -> Result<u64, TpmError> {
        const WHAT: &str = "TPM2_NV_DefineSpace (epoch counter)";
        let handle = match self.counter_handle(index)? {
            Some(h) => h,
            None => {
                let attrs = NvIndexAttributesBuilder::new()
                    .with_nv_index_type(NvIndexType::Counter)
                    .with_owner_write(true)
                    .with_owner_read(true)
                    .with_auth_read(true)
                    .with_no_da(true)
                    .build()
                    .map_err(command(WHAT))?;
                let public = NvPublicBuilder::new()
                    .with_nv_index(NvIndexTpmHandle::new(index).map_err(command(WHAT))?)
                    .with_index_name_algorithm(HashingAlgorithm::Sha256)
                    .with_index_attributes(attrs)
                    .with_data_area_size(8)
                    .build()
                    .map_err(command(WHAT))?;
                self.ctx
                    .execute_with_nullauth_session(|c| {
                        c.nv_define_space(Provision::Owner, None, public)
                    })
                    .map_err(command(WHAT))?
            }
        };
        let (public, _) = self
            .ctx
            .nv_read_public(handle)
            .map_err(command("TPM2_NV_ReadPublic (epoch counter)"))?;
        if !public.attributes().written() {
            self.increment(handle)?;
            // Checks the name now that it is written.
            self.counter_handle(index)?;
        }
        self.read_counter(handle)
    }

    /// The counter's value, or `None` if it is not defined (or never
    /// written).
    pub fn epoch_counter(&mut self, index: u32) -> Result<Option<u64>, TpmError> {
        let Some(handle) = self.counter_handle(index)? else {
            return Ok(None);
        };
        let (public, _) = self
            .ctx
            .nv_read_public(handle)
            .map_err(command("TPM2_NV_ReadPublic (epoch counter)"))?;
        if !public.attributes().written() {
            return Ok(None);
        }
        self.read_counter(handle).map(Some)
    }

    /// Raise the counter to `epoch` (nothing if it is there already):
    /// every policy signed for a lower epoch stops unsealing. The value
    /// before and after.
    pub fn raise_epoch_counter(&mut self, index: u32, epoch: u64) -> Result<(u64, u64), TpmError> {
        const WHAT: &str = "TPM2_NV_Increment (epoch counter)";
        let handle = self
            .counter_handle(index)?
            .ok_or_else(|| malformed(WHAT, "the epoch counter is not defined (seal first)"))?;
        let before = self.read_counter(handle)?;
        if epoch > before.saturating_add(MAX_RAISE) {
            return Err(TpmError::EpochJump {
                counter: before,
                epoch,
            });
        }
        let mut now = before;
        while now < epoch {
            self.increment(handle)?;
            let next = self.read_counter(handle)?;
            if next <= now {
                return Err(malformed(WHAT, "the counter did not move"));
            }
            now = next;
        }
        Ok((before, now))
    }

    fn increment(&mut self, handle: NvIndexHandle) -> Result<(), TpmError> {
        self.ctx
            .execute_with_nullauth_session(|c| c.nv_increment(NvAuth::Owner, handle))
            .map_err(command("TPM2_NV_Increment (epoch counter)"))
    }

    fn read_counter(&mut self, handle: NvIndexHandle) -> Result<u64, TpmError> {
        const WHAT: &str = "TPM2_NV_Read (epoch counter)";
        let data = self
            .ctx
            .execute_with_nullauth_session(|c| c.nv_read(NvAuth::NvIndex(handle), handle, 8, 0))
            .map_err(command(WHAT))?;
        let bytes: [u8; 8] = data
            .value()
            .try_into()
            .map_err(|_| malformed(WHAT, "not 8 bytes"))?;
        Ok(u64::from_be_bytes(bytes))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_policy_digest_covers_the_epoch_and_the_counter() {
        let base = [1u8; 32];
        assert_ne!(
            policy_nv(base, EPOCH_COUNTER, 1),
            policy_nv(base, EPOCH_COUNTER, 2)
        );
        assert_ne!(
            policy_nv(base, EPOCH_COUNTER, 1),
            policy_nv(base, EPOCH_COUNTER + 1, 1)
        );
        assert_ne!(
            policy_nv(base, EPOCH_COUNTER, 1),
            policy_nv([2u8; 32], EPOCH_COUNTER, 1)
        );
        assert_eq!(counter_name(EPOCH_COUNTER)[..2], [0x00, 0x0B]);
    }
}
