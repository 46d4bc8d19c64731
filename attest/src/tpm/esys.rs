//! The one policy sequence tss-esapi 7 cannot run: `TPM2_PolicyPCR`,
//! `TPM2_PolicyNV`, `TPM2_PolicyAuthorize` and `TPM2_Unseal` in one
//! session. tss-esapi 7.7 wraps every command Satchel uses except
//! `TPM2_PolicyNV` (its source marks it missing) and gives no access to its
//! ESYS context, so this module opens an ESYS context of its own through
//! tpm2-tss's C API (the bindings tss-esapi re-exports) and runs exactly
//! that sequence on it.
//!
//! It is the only module of the workspace allowed `unsafe`: each block is
//! one C call whose pointers are locals that outlive it, and every
//! resource it opens (TCTI, ESYS context, session, loaded object) is closed
//! on every path by a guard. It must never hold a second connection while
//! tss-esapi holds one (a raw swtpm or `/dev/tpm0` serves one client), so
//! the caller closes its own first.
#![allow(unsafe_code)]

use std::ffi::CString;
use std::ptr::{null, null_mut};

use tss_esapi::constants::response_code::Tss2ResponseCode;
use tss_esapi::constants::tss::{
    TPM2_ALG_NULL, TPM2_ALG_SHA256, TPM2_EO_UNSIGNED_LE, TPM2_SE_POLICY,
};
use tss_esapi::tss2_esys as sys;

/// A failed call: which one, and what tpm2-tss or the TPM answered.
pub(super) type Failure = (&'static str, tss_esapi::Error);

/// `Ok` for `TPM2_RC_SUCCESS`, else the call and its response code.
fn check(what: &'static str, rc: sys::TSS2_RC) -> Result<(), Failure> {
    if rc == 0 {
        Ok(())
    } else {
        Err((
            what,
            tss_esapi::Error::Tss2Error(Tss2ResponseCode::from(rc)),
        ))
    }
}

/// What the sequence needs, every part already in tpm2-tss's own layout.
pub(super) struct NvAuthorizedUnseal {
    /// The sealed object, loaded and saved (`TPM2_ContextSave`) on the
    /// caller's connection: an object's saved context loads on any.
    pub(super) object: sys::TPMS_CONTEXT,
    /// The PCRs `TPM2_PolicyPCR` reads.
    pub(super) pcrs: sys::TPML_PCR_SELECTION,
    /// The counter `TPM2_PolicyNV` compares.
    pub(super) counter: u32,
    /// The counter must be at most this (`TPM_EO_UNSIGNED_LE`).
    pub(super) epoch: u64,
    /// The signed policy digest.
    pub(super) approved: sys::TPM2B_DIGEST,
    /// The reference the signature covers beside it.
    pub(super) policy_ref: sys::TPM2B_NONCE,
    /// The policy key's TPM name.
    pub(super) key_name: sys::TPM2B_NAME,
    /// The TPM's ticket for the key's signature over the two.
    pub(super) ticket: sys::TPMT_TK_VERIFIED,
}

/// A TCTI and an ESYS context on it, both closed on drop.
struct Esys {
    ctx: *mut sys::ESYS_CONTEXT,
    tcti: *mut sys::TSS2_TCTI_CONTEXT,
}

impl Esys {
    /// Connect through the TCTI loader (`device:/dev/tpmrm0`,
    /// `swtpm:host=127.0.0.1,port=2321`).
    fn open(tcti: &str) -> Result<Esys, Failure> {
        const WHAT: &str = "Tss2_TctiLdr_Initialize";
        let conf = CString::new(tcti).map_err(|_| {
            (
                WHAT,
                tss_esapi::Error::WrapperError(tss_esapi::WrapperErrorKind::InvalidParam),
            )
        })?;
        let mut t = null_mut();
        // SAFETY: `conf` is NUL-terminated and outlives the call; `t` is a
        // valid out-pointer.
        check(WHAT, unsafe {
            sys::Tss2_TctiLdr_Initialize(conf.as_ptr(), &mut t)
        })?;
        let mut c = null_mut();
        // SAFETY: `t` is the TCTI just initialised; a null ABI version
        // asks for the library's own.
        let rc = unsafe { sys::Esys_Initialize(&mut c, t, null_mut()) };
        if let Err(e) = check("Esys_Initialize", rc) {
            // SAFETY: `t` came from Tss2_TctiLdr_Initialize and is freed once.
            unsafe { sys::Tss2_TctiLdr_Finalize(&mut t) };
            return Err(e);
        }
        Ok(Esys { ctx: c, tcti: t })
    }

    /// Flush a loaded object or session, ignoring failure (the connection
    /// closes next, and a raw TPM frees sessions at its next reset).
    fn flush(&mut self, handle: sys::ESYS_TR) {
        // SAFETY: `self.ctx` is live; `handle` was returned by it.
        let _ = unsafe { sys::Esys_FlushContext(self.ctx, handle) };
    }
}

impl Drop for Esys {
    fn drop(&mut self) {
        // SAFETY: both came from their initialisers and are freed once,
        // the ESYS context before the TCTI it uses.
        unsafe {
            sys::Esys_Finalize(&mut self.ctx);
            sys::Tss2_TctiLdr_Finalize(&mut self.tcti);
        }
    }
}

/// Run the sequence on a connection of its own to `tcti`: the secret.
pub(super) fn unseal(tcti: &str, u: &NvAuthorizedUnseal) -> Result<Vec<u8>, Failure> {
    let mut esys = Esys::open(tcti)?;
    let mut object = sys::ESYS_TR_NONE;
    // SAFETY: `u.object` is a saved context in tpm2-tss's layout; `object`
    // is a valid out-pointer.
    let rc = unsafe { sys::Esys_ContextLoad(esys.ctx, &u.object, &mut object) };
    check("TPM2_ContextLoad (sealed object)", rc)?;
    let result = session(&mut esys).and_then(|s| {
        let r = run(&mut esys, s, object, u);
        esys.flush(s);
        r
    });
    esys.flush(object);
    result
}

/// A SHA-256 policy session, unsalted and unbound, no parameter
/// encryption (nothing secret crosses the bus before the unseal, and the
/// unseal's answer is the caller's to protect).
fn session(esys: &mut Esys) -> Result<sys::ESYS_TR, Failure> {
    let symmetric = sys::TPMT_SYM_DEF {
        algorithm: TPM2_ALG_NULL,
        keyBits: sys::TPMU_SYM_KEY_BITS { sym: 0 },
        mode: sys::TPMU_SYM_MODE { sym: TPM2_ALG_NULL },
    };
    let mut s = sys::ESYS_TR_NONE;
    // SAFETY: every pointer is to a local that outlives the call; a null
    // caller nonce lets ESYS make one.
    let rc = unsafe {
        sys::Esys_StartAuthSession(
            esys.ctx,
            sys::ESYS_TR_NONE,
            sys::ESYS_TR_NONE,
            sys::ESYS_TR_NONE,
            sys::ESYS_TR_NONE,
            sys::ESYS_TR_NONE,
            null(),
            TPM2_SE_POLICY,
            &symmetric,
            TPM2_ALG_SHA256,
            &mut s,
        )
    };
    check("TPM2_StartAuthSession (policy)", rc)?;
    Ok(s)
}

/// PolicyPCR, PolicyNV, PolicyAuthorize, Unseal, in session `s`.
fn run(
    esys: &mut Esys,
    s: sys::ESYS_TR,
    object: sys::ESYS_TR,
    u: &NvAuthorizedUnseal,
) -> Result<Vec<u8>, Failure> {
    const NONE: sys::ESYS_TR = sys::ESYS_TR_NONE;
    // SAFETY: an empty TPM2B_DIGEST (size 0) asks the TPM to use the live
    // values; both pointers are to locals.
    let empty: sys::TPM2B_DIGEST = tss_esapi::structures::Digest::default().into();
    check("TPM2_PolicyPCR", unsafe {
        sys::Esys_PolicyPCR(esys.ctx, s, NONE, NONE, NONE, &empty, &u.pcrs)
    })?;
    let mut nv = NONE;
    // SAFETY: `nv` is a valid out-pointer; the handle is a plain number.
    check("Esys_TR_FromTPMPublic (epoch counter)", unsafe {
        sys::Esys_TR_FromTPMPublic(esys.ctx, u.counter, NONE, NONE, NONE, &mut nv)
    })?;
    let operand: sys::TPM2B_OPERAND = {
        let mut o: sys::TPM2B_OPERAND = empty;
        o.size = 8;
        o.buffer[..8].copy_from_slice(&u.epoch.to_be_bytes());
        o
    };
    // SAFETY: the counter authorises its own read with its empty auth
    // value (TPMA_NV_AUTHREAD) through the password session.
    let rc = unsafe {
        sys::Esys_PolicyNV(
            esys.ctx,
            nv,
            nv,
            s,
            sys::ESYS_TR_PASSWORD,
            NONE,
            NONE,
            &operand,
            0,
            TPM2_EO_UNSIGNED_LE,
        )
    };
    // SAFETY: `nv` came from Esys_TR_FromTPMPublic; closing only frees
    // ESYS's record of it.
    let _ = unsafe { sys::Esys_TR_Close(esys.ctx, &mut nv) };
    check("TPM2_PolicyNV", rc)?;
    // SAFETY: every pointer is to a field of `u`, which outlives the call.
    check("TPM2_PolicyAuthorize", unsafe {
        sys::Esys_PolicyAuthorize(
            esys.ctx,
            s,
            NONE,
            NONE,
            NONE,
            &u.approved,
            &u.policy_ref,
            &u.key_name,
            &u.ticket,
        )
    })?;
    let mut out: *mut sys::TPM2B_SENSITIVE_DATA = null_mut();
    // SAFETY: `object` and `s` are live in this context; `out` is a valid
    // out-pointer that ESYS fills with memory the caller frees.
    check("TPM2_Unseal (authorized)", unsafe {
        sys::Esys_Unseal(esys.ctx, object, s, NONE, NONE, &mut out)
    })?;
    // SAFETY: on success ESYS set `out` to one TPM2B_SENSITIVE_DATA.
    let secret = match unsafe { out.as_mut() } {
        Some(d) => {
            let n = usize::from(d.size).min(d.buffer.len());
            let v = d.buffer[..n].to_vec();
            d.buffer.fill(0);
            v
        }
        None => Vec::new(),
    };
    // SAFETY: `out` was allocated by ESYS and is freed once.
    unsafe { sys::Esys_Free(out.cast()) };
    Ok(secret)
}
