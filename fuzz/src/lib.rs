//! Helpers shared by the fuzz targets in `fuzz_targets/`.
//!
//! Targets that need several inputs read them as lines of one UTF-8 text (`pattern\nmethod\npath`)
//! rather than through `arbitrary`: the committed seeds stay readable, meaningful examples
//! (docs/testing.md), and libFuzzer's mutations of text work as well on them.

use time::OffsetDateTime;
use time::macros::datetime;

/// The instant validations run at: time is a parameter in keyward-core, so a fixed one keeps
/// every run reproducible from its input alone.
pub const NOW: OffsetDateTime = datetime!(2026-06-01 12:00 UTC);

/// The input as text split on `\n`, or `None` if it is not UTF-8 (every parser under test takes
/// `&str`; the HTTP and TOML layers reject other bytes before they get there).
pub fn lines(data: &[u8]) -> Option<Vec<&str>> {
    std::str::from_utf8(data)
        .ok()
        .map(|t| t.split('\n').collect())
}

/// A deterministic random generator seeded from the input, for the code that needs one (key
/// generation): SplitMix64, which never fails and never repeats a short cycle.
pub struct InputRng(u64);

impl InputRng {
    /// Seeds from every byte of `data` (FNV-1a), so each input makes its own keys.
    pub fn new(data: &[u8]) -> Self {
        let seed = data.iter().fold(0xcbf2_9ce4_8422_2325_u64, |h, &b| {
            (h ^ u64::from(b)).wrapping_mul(0x0100_0000_01b3)
        });
        Self(seed)
    }

    /// The next 64 random bits.
    pub fn next(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9e37_79b9_7f4a_7c15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
        z ^ (z >> 31)
    }
}

impl rand_core::TryRng for InputRng {
    type Error = core::convert::Infallible;

    fn try_next_u32(&mut self) -> Result<u32, Self::Error> {
        Ok((self.next() >> 32) as u32)
    }

    fn try_next_u64(&mut self) -> Result<u64, Self::Error> {
        Ok(self.next())
    }

    fn try_fill_bytes(&mut self, dst: &mut [u8]) -> Result<(), Self::Error> {
        for chunk in dst.chunks_mut(8) {
            let bytes = self.next().to_le_bytes();
            chunk.copy_from_slice(&bytes[..chunk.len()]);
        }
        Ok(())
    }
}

impl rand_core::TryCryptoRng for InputRng {}
