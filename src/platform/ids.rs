//! Unguessable identifiers: 128 bits from the thread-local CSPRNG, as lowercase hex.

use rand::RngExt as _;

/// 32 lowercase hex characters carrying 128 random bits.
pub fn random_hex128() -> String {
    let bytes: [u8; 16] = rand::rng().random();
    hex(&bytes)
}

/// Lowercase hex of `bytes`.
pub fn hex(bytes: &[u8]) -> String {
    let mut out = String::with_capacity(bytes.len() * 2);
    for byte in bytes {
        out.push(char::from(HEX[usize::from(byte >> 4)]));
        out.push(char::from(HEX[usize::from(byte & 0x0f)]));
    }
    out
}

/// Whether `text` looks like [`random_hex128`] output.
pub fn is_hex128(text: &str) -> bool {
    text.len() == 32
        && text
            .bytes()
            .all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b))
}

/// Whether `id` is `prefix` followed by [`random_hex128`] output: the shape of user (`u-`) and
/// conversation (`c-`) ids, checked before any lookup.
pub fn is_prefixed_id(id: &str, prefix: &str) -> bool {
    id.strip_prefix(prefix).is_some_and(is_hex128)
}

const HEX: &[u8; 16] = b"0123456789abcdef";

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn is_32_hex_and_distinct() {
        let a = random_hex128();
        assert!(is_hex128(&a), "{a}");
        assert_ne!(a, random_hex128());
        assert!(!is_hex128("0123456789ABCDEF0123456789abcdef"));
        assert_eq!(hex(&[0, 0xab, 0x10]), "00ab10");
    }
}
