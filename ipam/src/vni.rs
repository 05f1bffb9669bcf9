//! VXLAN network identifiers of overlay networks.

use serde::{Deserialize, Serialize};

use crate::error::{Error, Result};
use crate::runs::RunSet;

/// Lowest VNI given to overlay networks (as Docker: lower ones are left to
/// other users of VXLAN on the hosts).
pub const VNI_MIN: u32 = 4096;

/// Highest VNI: VXLAN ids are 24 bits.
pub const VNI_MAX: u32 = (1 << 24) - 1;

/// The allocated VNIs, kept as runs (memory follows the number of gaps,
/// not the 16 million possible ids).
#[derive(Clone, Debug, Default, PartialEq, Eq, Deserialize)]
#[serde(try_from = "VnisRepr")]
pub struct Vnis {
    used: RunSet,
}

fn check_range(vni: u32) -> Result<u128> {
    if (VNI_MIN..=VNI_MAX).contains(&vni) {
        Ok(u128::from(vni))
    } else {
        Err(Error::VniOutOfRange { vni })
    }
}

impl Vnis {
    /// No VNI allocated.
    pub fn new() -> Self {
        Vnis::default()
    }

    /// Allocate the lowest free VNI.
    pub fn allocate(&mut self) -> Result<u32> {
        let vni = self
            .used
            .next_clear(u128::from(VNI_MIN), u128::from(VNI_MAX))
            .ok_or(Error::VnisExhausted)?;
        self.used.insert(vni);
        // In range, so it fits.
        Ok(vni as u32)
    }

    /// Allocate a given VNI; refused if out of range or taken.
    pub fn request(&mut self, vni: u32) -> Result<()> {
        let v = check_range(vni)?;
        if !self.used.insert(v) {
            return Err(Error::VniInUse { vni });
        }
        Ok(())
    }

    /// Release a VNI so it can be allocated again.
    pub fn release(&mut self, vni: u32) -> Result<()> {
        let v = check_range(vni)?;
        if !self.used.remove(v) {
            return Err(Error::VniNotAllocated { vni });
        }
        Ok(())
    }

    /// Whether `vni` is allocated.
    pub fn is_allocated(&self, vni: u32) -> bool {
        self.used.contains(u128::from(vni))
    }

    /// Number of allocated VNIs.
    pub fn len(&self) -> usize {
        usize::try_from(self.used.count()).unwrap_or(usize::MAX)
    }

    /// Whether no VNI is allocated.
    pub fn is_empty(&self) -> bool {
        self.used.is_empty()
    }

    /// An estimate of the heap bytes held.
    pub fn heap_bytes(&self) -> usize {
        self.used.heap_bytes()
    }
}

/// Serialized form: runs of allocated VNIs.
#[derive(Serialize, Deserialize)]
struct VnisRepr {
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    allocated: Vec<(u32, u32)>,
}

impl TryFrom<VnisRepr> for Vnis {
    type Error = Error;

    fn try_from(repr: VnisRepr) -> Result<Self> {
        let mut vnis = Vnis::new();
        for (a, z) in repr.allocated {
            let (lo, hi) = (check_range(a)?, check_range(z)?);
            if lo > hi {
                return Err(Error::InvalidState(format!("VNI run {a}..{z} is reversed")));
            }
            vnis.used
                .insert_range(lo, hi)
                .map_err(|v| Error::VniInUse { vni: v as u32 })?;
        }
        Ok(vnis)
    }
}

impl Serialize for Vnis {
    fn serialize<S: serde::Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        VnisRepr {
            allocated: self
                .used
                .runs()
                .map(|(a, z)| (a as u32, z as u32))
                .collect(),
        }
        .serialize(serializer)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn lowest_free_first() {
        let mut v = Vnis::new();
        assert_eq!(v.allocate().unwrap(), 4096);
        assert_eq!(v.allocate().unwrap(), 4097);
        assert_eq!(v.allocate().unwrap(), 4098);
        v.release(4097).unwrap();
        assert_eq!(v.allocate().unwrap(), 4097);
        assert_eq!(v.allocate().unwrap(), 4099);
        assert_eq!(v.len(), 4);
    }

    #[test]
    fn bounds() {
        let mut v = Vnis::new();
        for bad in [0, 1, 4095, VNI_MAX + 1, u32::MAX] {
            let e = v.request(bad).unwrap_err();
            assert_eq!(e, Error::VniOutOfRange { vni: bad });
            assert!(e.to_string().contains("4096..=16777215"), "{e}");
            assert_eq!(
                v.release(bad).unwrap_err(),
                Error::VniOutOfRange { vni: bad }
            );
        }
        v.request(VNI_MIN).unwrap();
        v.request(VNI_MAX).unwrap();
        assert_eq!(v.allocate().unwrap(), VNI_MIN + 1);
    }

    #[test]
    fn explicit_and_release() {
        let mut v = Vnis::new();
        v.request(4096).unwrap();
        assert_eq!(v.request(4096).unwrap_err(), Error::VniInUse { vni: 4096 });
        assert!(v.is_allocated(4096));
        v.release(4096).unwrap();
        assert!(!v.is_allocated(4096));
        assert_eq!(
            v.release(4096).unwrap_err(),
            Error::VniNotAllocated { vni: 4096 }
        );
        v.request(5000).unwrap();
        assert_eq!(v.allocate().unwrap(), 4096);
    }

    #[test]
    fn exhaustion() {
        let mut v: Vnis = serde_json::from_str(r#"{"allocated":[[4096,16777214]]}"#).unwrap();
        assert_eq!(v.allocate().unwrap(), VNI_MAX);
        assert_eq!(v.allocate().unwrap_err(), Error::VnisExhausted);
        v.release(10_000).unwrap();
        assert_eq!(v.allocate().unwrap(), 10_000);
        assert_eq!(v.len(), (VNI_MAX - VNI_MIN + 1) as usize);
    }

    #[test]
    fn serde() {
        let mut v = Vnis::new();
        for _ in 0..3 {
            v.allocate().unwrap();
        }
        v.request(9000).unwrap();
        let json = serde_json::to_string(&v).unwrap();
        assert_eq!(json, r#"{"allocated":[[4096,4098],[9000,9000]]}"#);
        assert_eq!(serde_json::from_str::<Vnis>(&json).unwrap(), v);
        for bad in [
            r#"{"allocated":[[1,5000]]}"#,
            r#"{"allocated":[[5000,4999]]}"#,
            r#"{"allocated":[[5000,5010],[5005,5006]]}"#,
        ] {
            assert!(serde_json::from_str::<Vnis>(bad).is_err(), "{bad}");
        }
    }
}
