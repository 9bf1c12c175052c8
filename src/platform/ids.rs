//! Unguessable identifiers: 128 bits from the thread-local CSPRNG, as lowercase hex.

use rand::RngExt as _;

/// 32 lowercase hex characters carrying 128 random bits.
pub fn random_hex128() -> String {
    let bytes: [u8; 16] = rand::rng().random();
    let mut out = String::with_capacity(32);
    for byte in bytes {
        out.push(char::from(HEX[usize::from(byte >> 4)]));
        out.push(char::from(HEX[usize::from(byte & 0x0f)]));
    }
    out
}

const HEX: &[u8; 16] = b"0123456789abcdef";

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn is_32_hex_and_distinct() {
        let a = random_hex128();
        assert_eq!(a.len(), 32);
        assert!(
            a.bytes()
                .all(|b| b.is_ascii_hexdigit() && !b.is_ascii_uppercase())
        );
        assert_ne!(a, random_hex128());
    }
}
