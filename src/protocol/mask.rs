//! Payload masking (RFC 6455 §5.3): XOR with a 4-byte key, a word at a time.
//!
//! Masking is the only per-byte work on the receive path, so it runs eight bytes per step
//! (the compiler vectorises the loop further). A payload often arrives split over several
//! reads; `offset` says how many payload bytes were already unmasked, so the key keeps its
//! phase across the split. Safe Rust only: `chunks_exact_mut` gives the compiler everything it
//! needs, and the benches show it within reach of `memcpy`.

/// Unmasks (or masks: the operation is its own inverse) `buf` in place.
///
/// `offset` is the position of `buf[0]` within the frame's payload (§5.3: octet *i* is XORed
/// with key octet *i* mod 4), so a payload may be processed in pieces.
pub fn apply_mask(buf: &mut [u8], key: [u8; 4], offset: usize) {
    let mut k = key;
    k.rotate_left(offset % 4);
    let word = u64::from_ne_bytes([k[0], k[1], k[2], k[3], k[0], k[1], k[2], k[3]]);
    let mut chunks = buf.chunks_exact_mut(8);
    for chunk in &mut chunks {
        if let Ok(bytes) = <[u8; 8]>::try_from(&*chunk) {
            chunk.copy_from_slice(&(u64::from_ne_bytes(bytes) ^ word).to_ne_bytes());
        }
    }
    // The chunks covered a multiple of 8 bytes, so the key's phase is unchanged here.
    for (i, byte) in chunks.into_remainder().iter_mut().enumerate() {
        *byte ^= k[i % 4];
    }
}

/// The byte-by-byte definition from §5.3, kept as the reference the fast path is tested
/// against (and benchmarked beside).
pub fn apply_mask_bytewise(buf: &mut [u8], key: [u8; 4], offset: usize) {
    for (i, byte) in buf.iter_mut().enumerate() {
        *byte ^= key[(offset + i) % 4];
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn matches_bytewise_for_every_length_and_offset() {
        let key = [0x37, 0xfa, 0x21, 0x3d];
        let source: Vec<u8> = (0..=256u32).map(|i| (i * 31 + 7) as u8).collect();
        for len in 0..=256 {
            for offset in 0..8 {
                let mut fast = source[..len].to_vec();
                let mut slow = fast.clone();
                apply_mask(&mut fast, key, offset);
                apply_mask_bytewise(&mut slow, key, offset);
                assert_eq!(fast, slow, "len {len} offset {offset}");
            }
        }
    }

    #[test]
    fn split_payload_keeps_key_phase() {
        let key = [1, 2, 3, 4];
        let payload: Vec<u8> = (0..100u8).collect();
        let mut whole = payload.clone();
        apply_mask(&mut whole, key, 0);
        for cut in 0..=payload.len() {
            let mut parts = payload.clone();
            let (a, b) = parts.split_at_mut(cut);
            apply_mask(a, key, 0);
            apply_mask(b, key, cut);
            assert_eq!(parts, whole, "cut at {cut}");
        }
    }

    #[test]
    fn rfc_example_hello() {
        // §5.7: "Hello" masked with 37 fa 21 3d.
        let mut data = *b"Hello";
        apply_mask(&mut data, [0x37, 0xfa, 0x21, 0x3d], 0);
        assert_eq!(data, [0x7f, 0x9f, 0x4d, 0x51, 0x58]);
    }
}
