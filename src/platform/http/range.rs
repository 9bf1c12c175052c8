//! One `Range: bytes=…` of RFC 9110 §14.1.2, as the routes that serve files (bites' audio,
//! pictures) answer it: one range or the whole body; several ranges are answered whole, as
//! the RFC allows.

use std::ops::Range;

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ByteRange {
    /// No usable single range (several ranges, another unit, garbage): the whole body.
    Whole,
    /// The bytes to send, end exclusive, within the body.
    Part(Range<u64>),
    /// It starts past the end: 416 with `Content-Range: bytes */<total>`.
    Unsatisfiable,
}

/// The answer to the header value `header` over a body of `total` bytes.
pub fn byte_range(header: &str, total: u64) -> ByteRange {
    let Some(spec) = header.trim().strip_prefix("bytes=") else {
        return ByteRange::Whole;
    };
    if spec.contains(',') {
        return ByteRange::Whole;
    }
    let Some((first, last)) = spec.split_once('-') else {
        return ByteRange::Whole;
    };
    let (first, last) = (first.trim(), last.trim());
    let range = match (first.parse::<u64>(), last.parse::<u64>()) {
        // `-N`: the last N bytes.
        (Err(_), Ok(suffix)) if first.is_empty() => {
            if suffix == 0 {
                return ByteRange::Unsatisfiable;
            }
            total.saturating_sub(suffix)..total
        }
        // `N-`: from N to the end.
        (Ok(start), Err(_)) if last.is_empty() => start..total,
        (Ok(start), Ok(end)) if start <= end => start..end.saturating_add(1).min(total),
        // Not a range this grammar allows: ignored.
        _ => return ByteRange::Whole,
    };
    if range.start >= total {
        return ByteRange::Unsatisfiable;
    }
    ByteRange::Part(range)
}

#[cfg(test)]
mod tests {
    use super::*;
    use ByteRange::*;

    #[test]
    fn ranges_follow_rfc_9110() {
        assert_eq!(byte_range("bytes=0-9", 100), Part(0..10));
        assert_eq!(byte_range("bytes=90-", 100), Part(90..100));
        assert_eq!(byte_range("bytes=-10", 100), Part(90..100));
        assert_eq!(byte_range("bytes=-500", 100), Part(0..100));
        assert_eq!(byte_range("bytes=50-500", 100), Part(50..100));
        assert_eq!(byte_range("bytes=100-", 100), Unsatisfiable);
        assert_eq!(byte_range("bytes=-0", 100), Unsatisfiable);
        // Ignored: reversed, several ranges, another unit, garbage.
        assert_eq!(byte_range("bytes=5-1", 100), Whole);
        assert_eq!(byte_range("bytes=0-1,5-6", 100), Whole);
        assert_eq!(byte_range("items=0-1", 100), Whole);
        assert_eq!(byte_range("bytes=x-1", 100), Whole);
        assert_eq!(byte_range("bytes=abc", 100), Whole);
    }
}
