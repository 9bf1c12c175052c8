//! The byte layout of keys. They keep the original store's shape and order,
//! `bite+<conversation>@<start>`, with the start in milliseconds (8 bytes, big-endian) and the
//! speaker appended, so two speakers who start in the same millisecond never overwrite each
//! other.

pub fn prefix(conversation: &str) -> Vec<u8> {
    let mut prefix = Vec::with_capacity(6 + conversation.len() + 8 + 80);
    prefix.extend_from_slice(b"bite+");
    prefix.extend_from_slice(conversation.as_bytes());
    prefix.push(b'@');
    prefix
}

/// The first possible key at `start`.
pub fn at(prefix: &[u8], start: u64) -> Vec<u8> {
    let mut key = prefix.to_vec();
    key.extend_from_slice(&start.to_be_bytes());
    key
}

/// Just past every key of the prefix (`@` + 1 is `A`).
pub fn end(prefix: &[u8]) -> Vec<u8> {
    let mut end = prefix.to_vec();
    if let Some(last) = end.last_mut() {
        *last += 1;
    }
    end
}

pub fn bite(conversation: &str, start: u64, user: &str, client: &str) -> Vec<u8> {
    let mut key = at(&prefix(conversation), start);
    key.extend_from_slice(user.as_bytes());
    key.push(b'/');
    key.extend_from_slice(client.as_bytes());
    key
}

/// The start of a bite key: the 8 bytes after the first `@` (conversation ids have none).
pub fn start_of(key: &[u8]) -> Option<u64> {
    let at = key.iter().position(|&b| b == b'@')?;
    let bytes = key.get(at + 1..at + 9)?;
    Some(u64::from_be_bytes(bytes.try_into().ok()?))
}

/// A bite's key under another prefix: its transcript is `transcription+<conversation>@<start>…`,
/// the original store's shape.
pub fn transcript_of(bite_key: &[u8]) -> Vec<u8> {
    let rest = bite_key
        .strip_prefix(b"bite+".as_slice())
        .unwrap_or(bite_key);
    let mut key = Vec::with_capacity(14 + rest.len());
    key.extend_from_slice(b"transcription+");
    key.extend_from_slice(rest);
    key
}

/// A job's place in the queue: due first, then the bite.
pub fn queued(due: u64, bite_key: &[u8]) -> Vec<u8> {
    let mut key = Vec::with_capacity(8 + bite_key.len());
    key.extend_from_slice(&due.to_be_bytes());
    key.extend_from_slice(bite_key);
    key
}

/// Where the index keeps bites in order of age (bite keys start with `bite+`).
pub const EXPIRY: &[u8] = b"expiry+";

pub fn expiry(start: u64, key: &[u8]) -> Vec<u8> {
    let mut expiry = Vec::with_capacity(EXPIRY.len() + 8 + key.len());
    expiry.extend_from_slice(EXPIRY);
    expiry.extend_from_slice(&start.to_be_bytes());
    expiry.extend_from_slice(key);
    expiry
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn keys_keep_the_original_shape_and_order() {
        let key = bite("c-1", 0x0102, "u-a", "phone");
        assert_eq!(&key[..9], b"bite+c-1@");
        assert_eq!(&key[9..17], &[0, 0, 0, 0, 0, 0, 1, 2]);
        assert_eq!(&key[17..], b"u-a/phone");
        assert_eq!(start_of(&key), Some(0x0102));
        assert!(bite("c-1", 255, "u-z", "z") < bite("c-1", 256, "u-a", "a"));
    }
}
