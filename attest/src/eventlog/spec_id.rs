//! The Spec ID Event03 header (TCG_EfiSpecIDEventStruct, PC Client Platform
//! Firmware Profile section 10.4.5.1): the first event of a crypto-agile log,
//! declaring which digest algorithms every later event carries and their sizes.

use serde::Serialize;

use super::error::ParseError;
use super::reader::Reader;
use crate::alg::HashAlg;

/// The signature that marks a crypto-agile log's first event.
pub const SIGNATURE: &[u8; 16] = b"Spec ID Event03\0";

/// Most algorithms a header may declare; real firmware declares at most five.
const MAX_ALGORITHMS: u32 = 16;
/// Largest digest a header may declare (SHA-512 is 64 bytes).
const MAX_DIGEST_SIZE: u16 = 128;

/// One (algorithm, digest size) pair of the header.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
pub struct AlgorithmSize {
    /// TPM_ALG_ID.
    pub alg_id: u16,
    /// Size in bytes of this algorithm's digests in every event.
    pub digest_size: u16,
}

impl AlgorithmSize {
    /// The algorithm, if Satchel knows it.
    pub fn alg(&self) -> Option<HashAlg> {
        HashAlg::from_id(self.alg_id)
    }
}

/// The decoded Spec ID Event03 structure.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct SpecId {
    /// 0 = client platform, 1 = server platform.
    pub platform_class: u32,
    /// Specification version, minor part.
    pub spec_version_minor: u8,
    /// Specification version, major part (2 for crypto-agile logs).
    pub spec_version_major: u8,
    /// Specification errata.
    pub spec_errata: u8,
    /// UINTN size: 1 = 32-bit, 2 = 64-bit.
    pub uintn_size: u8,
    /// Declared algorithms, in header order.
    pub algorithms: Vec<AlgorithmSize>,
    /// Vendor-specific bytes.
    #[serde(with = "hex_bytes")]
    pub vendor_info: Vec<u8>,
}

impl SpecId {
    /// A header for the given banks, as Satchel's measurer writes it
    /// (client platform, version 2.0 errata 0, 64-bit UINTN).
    pub fn for_banks(banks: &[HashAlg]) -> SpecId {
        SpecId {
            platform_class: 0,
            spec_version_minor: 0,
            spec_version_major: 2,
            spec_errata: 0,
            uintn_size: 2,
            algorithms: banks
                .iter()
                .map(|a| AlgorithmSize {
                    alg_id: a.id(),
                    digest_size: a.digest_size() as u16,
                })
                .collect(),
            vendor_info: Vec::new(),
        }
    }

    /// Does `data` (an event's data) start with the Spec ID Event03 signature?
    pub fn is_spec_id(data: &[u8]) -> bool {
        data.starts_with(SIGNATURE)
    }

    /// Decode the header from an event's data, which starts at absolute `offset`.
    pub fn parse(data: &[u8], offset: usize) -> Result<SpecId, ParseError> {
        let mut r = Reader::new(data, offset);
        let sig: [u8; 16] = r.array("Spec ID signature")?;
        if &sig != SIGNATURE {
            return Err(spec_err(offset, "signature is not \"Spec ID Event03\""));
        }
        let platform_class = r.u32("platform class")?;
        let spec_version_minor = r.u8("spec version minor")?;
        let spec_version_major = r.u8("spec version major")?;
        let spec_errata = r.u8("spec errata")?;
        let uintn_size = r.u8("UINTN size")?;
        let algorithms = parse_algorithms(&mut r)?;
        let vendor_size = r.u8("vendor info size")?;
        let vendor_info = r.take(usize::from(vendor_size), "vendor info")?.to_vec();
        if r.remaining() != 0 {
            return Err(spec_err(r.offset(), "trailing bytes after the vendor info"));
        }
        Ok(SpecId {
            platform_class,
            spec_version_minor,
            spec_version_major,
            spec_errata,
            uintn_size,
            algorithms,
            vendor_info,
        })
    }

    /// The declared digest size of algorithm `alg_id`, if declared.
    pub fn digest_size(&self, alg_id: u16) -> Option<usize> {
        self.algorithms
            .iter()
            .find(|a| a.alg_id == alg_id)
            .map(|a| usize::from(a.digest_size))
    }

    /// Encode the structure (the data of the log's first event).
    pub fn encode(&self) -> Vec<u8> {
        let mut out = Vec::with_capacity(32 + 4 * self.algorithms.len() + self.vendor_info.len());
        out.extend_from_slice(SIGNATURE);
        out.extend_from_slice(&self.platform_class.to_le_bytes());
        out.extend_from_slice(&[
            self.spec_version_minor,
            self.spec_version_major,
            self.spec_errata,
            self.uintn_size,
        ]);
        out.extend_from_slice(&(self.algorithms.len() as u32).to_le_bytes());
        for a in &self.algorithms {
            out.extend_from_slice(&a.alg_id.to_le_bytes());
            out.extend_from_slice(&a.digest_size.to_le_bytes());
        }
        out.push(self.vendor_info.len().min(255) as u8);
        out.extend_from_slice(&self.vendor_info[..self.vendor_info.len().min(255)]);
        out
    }
}

fn parse_algorithms(r: &mut Reader<'_>) -> Result<Vec<AlgorithmSize>, ParseError> {
    let count_at = r.offset();
    let count = r.u32("number of algorithms")?;
    if count == 0 || count > MAX_ALGORITHMS {
        return Err(spec_err(
            count_at,
            "number of algorithms is 0 or more than 16",
        ));
    }
    let mut algorithms: Vec<AlgorithmSize> = Vec::with_capacity(count as usize);
    for _ in 0..count {
        let at = r.offset();
        let alg_id = r.u16("algorithm id")?;
        let digest_size = r.u16("digest size")?;
        if digest_size == 0 || digest_size > MAX_DIGEST_SIZE {
            return Err(spec_err(at, "digest size is 0 or larger than 128"));
        }
        if HashAlg::from_id(alg_id).is_some_and(|a| a.digest_size() != usize::from(digest_size)) {
            return Err(spec_err(at, "digest size does not match the algorithm"));
        }
        if algorithms.iter().any(|a| a.alg_id == alg_id) {
            return Err(spec_err(at, "algorithm declared twice"));
        }
        algorithms.push(AlgorithmSize {
            alg_id,
            digest_size,
        });
    }
    Ok(algorithms)
}

fn spec_err(offset: usize, reason: &'static str) -> ParseError {
    ParseError::SpecId { offset, reason }
}

pub(crate) mod hex_bytes {
    use serde::Serializer;

    pub(crate) fn serialize<S: Serializer>(v: &[u8], s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(&hex::encode(v))
    }
}
