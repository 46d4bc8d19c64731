//! PCR values grouped by bank, as replay, prediction and the TPM all report
//! them, with the JSON shape the CLI prints: bank name -> PCR index (as a
//! string) -> lowercase hex.

use std::collections::BTreeMap;

use serde::ser::SerializeMap;
use serde::{Deserialize, Deserializer, Serialize, Serializer};

use crate::alg::HashAlg;

/// PCR index -> value for every bank that has values.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct PcrBanks {
    banks: BTreeMap<HashAlg, BTreeMap<u32, Vec<u8>>>,
}

impl PcrBanks {
    /// No banks, no values.
    pub fn new() -> Self {
        Self::default()
    }

    /// Set the value of PCR `index` in `bank`.
    pub fn set(&mut self, bank: HashAlg, index: u32, value: Vec<u8>) {
        self.banks.entry(bank).or_default().insert(index, value);
    }

    /// The value of PCR `index` in `bank`, if known.
    pub fn get(&self, bank: HashAlg, index: u32) -> Option<&[u8]> {
        self.banks.get(&bank)?.get(&index).map(Vec::as_slice)
    }

    /// The value of PCR `index` in `bank`, for changing in place.
    pub fn get_mut(&mut self, bank: HashAlg, index: u32) -> Option<&mut Vec<u8>> {
        self.banks.get_mut(&bank)?.get_mut(&index)
    }

    /// The banks that hold at least one value, in registry order.
    pub fn banks(&self) -> impl Iterator<Item = HashAlg> + '_ {
        self.banks.keys().copied()
    }

    /// The values of one bank, by PCR index.
    pub fn bank(&self, bank: HashAlg) -> Option<&BTreeMap<u32, Vec<u8>>> {
        self.banks.get(&bank)
    }

    /// Every (bank, index, value), banks in registry order, indices ascending.
    pub fn iter(&self) -> impl Iterator<Item = (HashAlg, u32, &[u8])> + '_ {
        self.banks
            .iter()
            .flat_map(|(b, m)| m.iter().map(move |(i, v)| (*b, *i, v.as_slice())))
    }

    /// Keep only the given PCR indices.
    pub fn retain_pcrs(&mut self, keep: impl Fn(u32) -> bool) {
        for m in self.banks.values_mut() {
            m.retain(|i, _| keep(*i));
        }
        self.banks.retain(|_, m| !m.is_empty());
    }

    /// True when no bank holds a value.
    pub fn is_empty(&self) -> bool {
        self.banks.is_empty()
    }
}

impl Serialize for PcrBanks {
    fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        let mut outer = serializer.serialize_map(Some(self.banks.len()))?;
        for (bank, values) in &self.banks {
            outer.serialize_entry(bank.name(), &HexPcrs(values))?;
        }
        outer.end()
    }
}

/// One bank's values, indices ascending (numerically, as the map keeps them).
struct HexPcrs<'a>(&'a BTreeMap<u32, Vec<u8>>);

impl Serialize for HexPcrs<'_> {
    fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        let mut m = serializer.serialize_map(Some(self.0.len()))?;
        for (i, v) in self.0 {
            m.serialize_entry(&i.to_string(), &hex::encode(v))?;
        }
        m.end()
    }
}

impl<'de> Deserialize<'de> for PcrBanks {
    /// The shape [`Serialize`] writes; every bank known, every index a PCR
    /// (0-23), every value lowercase or uppercase hex of the bank's size.
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        use serde::de::Error;
        let raw = BTreeMap::<HashAlg, BTreeMap<String, String>>::deserialize(d)?;
        let mut out = PcrBanks::new();
        for (bank, values) in raw {
            for (index, value) in values {
                let i: u32 = index.parse().ok().filter(|i| *i <= 23).ok_or_else(|| {
                    D::Error::custom(format!("{index:?} is not a PCR index (0-23)"))
                })?;
                let v = hex::decode(&value).map_err(|_| {
                    D::Error::custom(format!("PCR {i} in bank {bank}: {value:?} is not hex"))
                })?;
                if v.len() != bank.digest_size() {
                    return Err(D::Error::custom(format!(
                        "PCR {i} in bank {bank}: {} bytes, expected {}",
                        v.len(),
                        bank.digest_size()
                    )));
                }
                out.set(bank, i, v);
            }
        }
        Ok(out)
    }
}
