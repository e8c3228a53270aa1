//! Philox4x32-10, the counter-based generator of Salmon, Moraes, Dror and Shaw, "Parallel random
//! numbers: as easy as 1, 2, 3" (SC 2011), with the constants of Random123 and cuRAND.
//!
//! A counter-based generator is a pure function `(counter, key) -> 128 random bits`: any draw can
//! be computed on its own, in any order, on any device. The host (this module) and the kernels
//! (`kernels/philox.cuh`) implement the same function, so a draw keyed by, say, (seed, epoch,
//! example) is the same bits on cpu, emu and cuda. Checked against Random123's known-answer
//! vectors (`kat_vectors`, `philox4x32 10` lines) in the tests below.

/// Multiplier of the first counter pair.
pub const PHILOX_M0: u32 = 0xD251_1F53;
/// Multiplier of the second counter pair.
pub const PHILOX_M1: u32 = 0xCD9E_8D57;
/// Weyl increment of the first key word (golden ratio).
pub const PHILOX_W0: u32 = 0x9E37_79B9;
/// Weyl increment of the second key word (sqrt(3) - 1).
pub const PHILOX_W1: u32 = 0xBB67_AE85;
/// Rounds of the standard Philox4x32-10.
pub const PHILOX_ROUNDS: usize = 10;

/// High and low 32 bits of the 64-bit product `a * b`.
fn mul_hi_lo(a: u32, b: u32) -> (u32, u32) {
    let p = u64::from(a) * u64::from(b);
    ((p >> 32) as u32, p as u32)
}

/// One Philox round (Random123's `_philox4x32round`).
fn round(ctr: [u32; 4], key: [u32; 2]) -> [u32; 4] {
    let (hi0, lo0) = mul_hi_lo(PHILOX_M0, ctr[0]);
    let (hi1, lo1) = mul_hi_lo(PHILOX_M1, ctr[2]);
    [hi1 ^ ctr[1] ^ key[0], lo1, hi0 ^ ctr[3] ^ key[1], lo0]
}

/// Philox4x32-10: four random words for `counter` under `key`. The key is bumped by the Weyl
/// constants before every round but the first.
pub fn philox4x32_10(counter: [u32; 4], key: [u32; 2]) -> [u32; 4] {
    let (mut ctr, mut key) = (counter, key);
    for r in 0..PHILOX_ROUNDS {
        if r > 0 {
            key = [
                key[0].wrapping_add(PHILOX_W0),
                key[1].wrapping_add(PHILOX_W1),
            ];
        }
        ctr = round(ctr, key);
    }
    ctr
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Random123 `kat_vectors`, the `philox4x32 10` lines: (counter, key, expected).
    const KNOWN_ANSWERS: [([u32; 4], [u32; 2], [u32; 4]); 3] = [
        (
            [0, 0, 0, 0],
            [0, 0],
            [0x6627_e8d5, 0xe169_c58d, 0xbc57_ac4c, 0x9b00_dbd8],
        ),
        (
            [u32::MAX; 4],
            [u32::MAX; 2],
            [0x408f_276d, 0x41c8_3b0e, 0xa20b_c7c6, 0x6d54_51fd],
        ),
        (
            [0x243f_6a88, 0x85a3_08d3, 0x1319_8a2e, 0x0370_7344],
            [0xa409_3822, 0x299f_31d0],
            [0xd16c_fe09, 0x94fd_cceb, 0x5001_e420, 0x2412_6ea1],
        ),
    ];

    #[test]
    fn random123_known_answers() {
        for (ctr, key, want) in KNOWN_ANSWERS {
            assert_eq!(
                philox4x32_10(ctr, key),
                want,
                "ctr {ctr:08x?} key {key:08x?}"
            );
        }
    }

    #[test]
    fn every_counter_and_key_word_changes_the_output() {
        let base = philox4x32_10([1, 2, 3, 4], [5, 6]);
        for i in 0..4 {
            let mut ctr = [1, 2, 3, 4];
            ctr[i] ^= 1;
            assert_ne!(philox4x32_10(ctr, [5, 6]), base, "counter word {i}");
        }
        assert_ne!(philox4x32_10([1, 2, 3, 4], [4, 6]), base);
        assert_ne!(philox4x32_10([1, 2, 3, 4], [5, 7]), base);
    }
}
