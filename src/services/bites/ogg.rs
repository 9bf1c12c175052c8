//! Ogg Opus files (RFC 7845) from the Opus packets of one bite, so a stored bite plays in a
//! browser's `<audio>` as is.
//!
//! Hand-written rather than a crate: the muxer is a page writer and a CRC, and packing many
//! packets per page (the crates in reach write one page per packet) keeps the per-packet
//! overhead at one or two lacing bytes instead of a 27-byte page header.

/// Opus always counts samples at 48 kHz, whatever the encoder's input rate.
pub const SAMPLES_PER_MS: u64 = 48;

/// Samples one Opus packet decodes to, from its TOC byte (RFC 6716 §3.1); 0 for an empty or
/// malformed packet.
pub fn packet_samples(packet: &[u8]) -> u64 {
    let Some(&toc) = packet.first() else {
        return 0;
    };
    let config = toc >> 3;
    // Frame sizes in units of 2.5 ms (120 samples).
    let frame_units: u64 = match config {
        0..=11 => [4, 8, 16, 24][usize::from(config % 4)],
        12..=15 => [4, 8][usize::from(config % 2)],
        _ => [1, 2, 4, 8][usize::from(config % 4)],
    };
    let frames = match toc & 0x03 {
        0 => 1,
        1 | 2 => 2,
        _ => packet.get(1).map_or(0, |count| u64::from(count & 0x3f)),
    };
    frames * frame_units * 120
}

/// One packet placed on the bite's timeline.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TimedPacket {
    /// Samples from the first packet of the file (the start of the pre-roll).
    pub offset: u64,
    pub payload: bytes::Bytes,
}

/// What the file holds besides its packets.
#[derive(Debug, Clone, Copy)]
pub struct Header {
    pub serial: u32,
    pub channels: u8,
    /// Samples at the start that prime the decoder and are not played.
    pub pre_skip: u16,
}

/// Writes an Ogg Opus file: the two header pages, then the packets with gaps in their
/// timeline (a sender's discontinuous transmission) filled by empty frames, so the file plays
/// for as long as the speech lasted.
pub fn write(header: Header, packets: &[TimedPacket]) -> Vec<u8> {
    let payload: usize = packets.iter().map(|p| p.payload.len() + 2).sum();
    let mut pages = PageWriter {
        out: Vec::with_capacity(payload + 160),
        serial: header.serial,
        sequence: 0,
        body: Vec::with_capacity(MAX_PAGE_BODY),
        lacing: Vec::with_capacity(MAX_SEGMENTS),
        finished_packets: 0,
    };
    pages.packet(&opus_head(header));
    pages.flush(0, BEGINNING_OF_STREAM);
    pages.packet(&opus_tags());
    pages.flush(0, 0);

    let mut granule: u64 = 0;
    for packet in packets {
        let gap = packet.offset.saturating_sub(granule);
        if let Some(&toc) = packet.payload.first()
            && gap > 0
        {
            // A TOC byte alone (code 0, frame of length 0) decodes as one frame of concealment.
            let filler = [toc & !0x03];
            let step = packet_samples(&filler).max(1);
            for _ in 0..gap / step {
                pages.packet_at(&filler, &mut granule, step);
            }
        }
        let samples = packet_samples(&packet.payload);
        pages.packet_at(&packet.payload, &mut granule, samples);
    }
    pages.flush(granule, END_OF_STREAM);
    pages.out
}

const BEGINNING_OF_STREAM: u8 = 0x02;
const END_OF_STREAM: u8 = 0x04;
const CONTINUED: u8 = 0x01;
const MAX_SEGMENTS: usize = 255;
const MAX_PAGE_BODY: usize = MAX_SEGMENTS * 255;

struct PageWriter {
    out: Vec<u8>,
    serial: u32,
    sequence: u32,
    body: Vec<u8>,
    lacing: Vec<u8>,
    /// Packets that end on the page being built; a page where none ends has granule -1.
    finished_packets: usize,
}

impl PageWriter {
    fn packet_at(&mut self, packet: &[u8], granule: &mut u64, samples: u64) {
        // Room for the whole packet keeps its granule on the page it ends on.
        if self.lacing.len() + packet.len() / 255 + 1 > MAX_SEGMENTS {
            self.flush(*granule, 0);
        }
        *granule += samples;
        self.packet(packet);
        if self.lacing.len() == MAX_SEGMENTS {
            self.flush(*granule, 0);
        }
    }

    /// Appends a packet's lacing values and bytes, spilling over pages when it is longer than
    /// one page can hold.
    fn packet(&mut self, packet: &[u8]) {
        let mut rest = packet;
        let mut continued = false;
        loop {
            if self.lacing.len() == MAX_SEGMENTS {
                self.flush_partial(continued);
                continued = true;
            }
            let take = rest.len().min(255);
            self.lacing.push(take as u8);
            self.body.extend_from_slice(&rest[..take]);
            rest = &rest[take..];
            if take < 255 {
                self.finished_packets += 1;
                return;
            }
        }
    }

    /// Writes a page that no packet ends on (granule -1).
    fn flush_partial(&mut self, continued: bool) {
        let flags = if continued { CONTINUED } else { 0 };
        self.emit(u64::MAX, flags);
    }

    fn flush(&mut self, granule: u64, flags: u8) {
        if self.lacing.is_empty() && flags & END_OF_STREAM == 0 {
            return;
        }
        let granule = if self.finished_packets == 0 && flags & END_OF_STREAM == 0 {
            u64::MAX
        } else {
            granule
        };
        self.emit(granule, flags);
    }

    fn emit(&mut self, granule: u64, flags: u8) {
        let start = self.out.len();
        self.out.extend_from_slice(b"OggS");
        self.out.push(0); // version
        self.out.push(flags);
        self.out.extend_from_slice(&granule.to_le_bytes());
        self.out.extend_from_slice(&self.serial.to_le_bytes());
        self.out.extend_from_slice(&self.sequence.to_le_bytes());
        let crc_at = self.out.len();
        self.out.extend_from_slice(&[0; 4]);
        self.out.push(self.lacing.len() as u8);
        self.out.extend_from_slice(&self.lacing);
        self.out.extend_from_slice(&self.body);
        let crc = crc32(&self.out[start..]);
        self.out[crc_at..crc_at + 4].copy_from_slice(&crc.to_le_bytes());
        self.sequence += 1;
        self.lacing.clear();
        self.body.clear();
        self.finished_packets = 0;
    }
}

fn opus_head(header: Header) -> Vec<u8> {
    let mut head = Vec::with_capacity(19);
    head.extend_from_slice(b"OpusHead");
    head.push(1); // version
    head.push(header.channels);
    head.extend_from_slice(&header.pre_skip.to_le_bytes());
    head.extend_from_slice(&48_000u32.to_le_bytes()); // input sample rate, informational
    head.extend_from_slice(&0i16.to_le_bytes()); // output gain
    head.push(0); // channel mapping family: mono or stereo
    head
}

fn opus_tags() -> Vec<u8> {
    const VENDOR: &[u8] = b"beep";
    let mut tags = Vec::with_capacity(16 + VENDOR.len());
    tags.extend_from_slice(b"OpusTags");
    tags.extend_from_slice(&(VENDOR.len() as u32).to_le_bytes());
    tags.extend_from_slice(VENDOR);
    tags.extend_from_slice(&0u32.to_le_bytes()); // no comments
    tags
}

/// Ogg's CRC-32: polynomial 0x04c11db7, not reflected, no initial or final xor.
fn crc32(data: &[u8]) -> u32 {
    data.iter().fold(0u32, |crc, &byte| {
        (crc << 8) ^ CRC_TABLE[usize::from((crc >> 24) as u8 ^ byte)]
    })
}

const CRC_TABLE: [u32; 256] = {
    let mut table = [0u32; 256];
    let mut i = 0;
    while i < 256 {
        let mut crc = (i as u32) << 24;
        let mut bit = 0;
        while bit < 8 {
            crc = if crc & 0x8000_0000 != 0 {
                (crc << 1) ^ 0x04c1_1db7
            } else {
                crc << 1
            };
            bit += 1;
        }
        table[i] = crc;
        i += 1;
    }
    table
};

/// What an engine needs to know of a stored Ogg Opus file without decoding it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct OpusInfo {
    /// The input sample rate OpusHead records (informational: Opus decodes at any rate).
    pub input_rate: u32,
    pub channels: u8,
    /// Samples at 48 kHz to skip at the start.
    pub pre_skip: u16,
    /// Playing time, from the last page's granule position less the pre-skip.
    pub duration_ms: u64,
}

/// Reads OpusHead and the last granule position, walking the pages by their lengths; `None`
/// when the bytes are not an Ogg Opus file.
pub fn opus_info(file: &[u8]) -> Option<OpusInfo> {
    let mut rest = file;
    let mut head: Option<&[u8]> = None;
    let mut last_granule = 0u64;
    while rest.len() >= 27 {
        if &rest[..4] != b"OggS" {
            return None;
        }
        let granule = u64::from_le_bytes(rest[6..14].try_into().ok()?);
        let segments = usize::from(rest[26]);
        let lacing = rest.get(27..27 + segments)?;
        let body_len: usize = lacing.iter().map(|&l| usize::from(l)).sum();
        let body = rest.get(27 + segments..27 + segments + body_len)?;
        if head.is_none() {
            head = Some(body);
        }
        // -1 marks a page on which no packet ends.
        if granule != u64::MAX {
            last_granule = granule;
        }
        rest = &rest[27 + segments + body_len..];
    }
    let head = head.filter(|head| head.len() >= 19 && head.starts_with(b"OpusHead"))?;
    let pre_skip = u16::from_le_bytes([head[10], head[11]]);
    Some(OpusInfo {
        input_rate: u32::from_le_bytes(head[12..16].try_into().ok()?),
        channels: head[9],
        pre_skip,
        duration_ms: last_granule.saturating_sub(u64::from(pre_skip)) / 48,
    })
}

/// The file's packets in order (OpusHead, OpusTags, then audio), a packet continued across
/// pages joined; `None` when the bytes are not Ogg pages.
#[cfg(any(test, feature = "whisper"))]
pub fn packets(file: &[u8]) -> Option<Vec<Vec<u8>>> {
    let mut rest = file;
    let mut packets = Vec::new();
    let mut current = Vec::new();
    while !rest.is_empty() {
        if rest.len() < 27 || &rest[..4] != b"OggS" {
            return None;
        }
        let segments = usize::from(rest[26]);
        let lacing = rest.get(27..27 + segments)?;
        let mut body = &rest[27 + segments..];
        for &len in lacing {
            let (segment, after) = body.split_at_checked(usize::from(len))?;
            current.extend_from_slice(segment);
            body = after;
            // A lacing value under 255 ends a packet; 255 continues it.
            if len < 255 {
                packets.push(std::mem::take(&mut current));
            }
        }
        rest = body;
    }
    Some(packets)
}

/// Reads the pages back, checking each CRC, for the tests.
#[cfg(test)]
pub(crate) mod read {
    /// (granule, flags, packets completed or continued on the page)
    pub fn pages(mut file: &[u8]) -> Vec<(u64, u8, Vec<Vec<u8>>)> {
        let mut pages = Vec::new();
        while file.len() >= 27 {
            assert_eq!(&file[..4], b"OggS");
            let flags = file[5];
            let granule = u64::from_le_bytes(file[6..14].try_into().unwrap_or_default());
            let crc = u32::from_le_bytes(file[22..26].try_into().unwrap_or_default());
            let segments = usize::from(file[26]);
            let lacing = &file[27..27 + segments];
            let body_len: usize = lacing.iter().map(|&l| usize::from(l)).sum();
            let page_len = 27 + segments + body_len;
            let mut copy = file[..page_len].to_vec();
            copy[22..26].fill(0);
            assert_eq!(super::crc32(&copy), crc, "page CRC");
            let mut body = &file[27 + segments..page_len];
            let mut packets = Vec::new();
            let mut current = Vec::new();
            for &l in lacing {
                current.extend_from_slice(&body[..usize::from(l)]);
                body = &body[usize::from(l)..];
                if l < 255 {
                    packets.push(std::mem::take(&mut current));
                }
            }
            if !current.is_empty() {
                packets.push(current);
            }
            pages.push((granule, flags, packets));
            file = &file[page_len..];
        }
        assert!(file.is_empty(), "trailing bytes");
        pages
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use bytes::Bytes;

    /// CELT, 20 ms, mono, one frame.
    const TOC_20MS: u8 = 0xf8;

    fn packet(offset_ms: u64, len: usize) -> TimedPacket {
        let mut payload = vec![0x55; len];
        payload[0] = TOC_20MS;
        TimedPacket {
            offset: offset_ms * SAMPLES_PER_MS,
            payload: Bytes::from(payload),
        }
    }

    fn mono(packets: &[TimedPacket]) -> Vec<u8> {
        let header = Header {
            serial: 7,
            channels: 1,
            pre_skip: 312,
        };
        write(header, packets)
    }

    #[test]
    fn the_header_and_duration_are_read_back() {
        let packets: Vec<TimedPacket> = (0..50u64).map(|i| packet(i * 20, 4)).collect();
        let file = mono(&packets);
        let info = opus_info(&file).expect("an Ogg Opus file");
        assert_eq!(
            (info.input_rate, info.channels, info.pre_skip),
            (48_000, 1, 312)
        );
        assert_eq!(info.duration_ms, (1000 * 48 - 312) / 48);
        assert_eq!(opus_info(b"not ogg at all, not at all"), None);
    }

    #[test]
    fn packets_are_read_back_across_pages() {
        let packets: Vec<TimedPacket> = (0..300u64).map(|i| packet(i * 20, 300)).collect();
        let file = mono(&packets);
        let read = super::packets(&file).expect("Ogg pages");
        assert!(read[0].starts_with(b"OpusHead") && read[1].starts_with(b"OpusTags"));
        let audio = &read[2..];
        assert_eq!(audio.len(), packets.len());
        assert!(
            audio
                .iter()
                .zip(&packets)
                .all(|(a, b)| a[..] == b.payload[..])
        );
        assert_eq!(super::packets(&file[..file.len() - 1]), None);
        assert_eq!(super::packets(b"RIFF...."), None);
    }

    #[test]
    fn frame_durations_follow_the_toc() {
        assert_eq!(packet_samples(&[0xf8]), 960); // CELT 20 ms
        assert_eq!(packet_samples(&[0x78]), 960); // hybrid... config 15: 20 ms
        assert_eq!(packet_samples(&[0x08]), 960); // SILK 20 ms
        assert_eq!(packet_samples(&[0x18]), 2880); // SILK 60 ms
        assert_eq!(packet_samples(&[0xf9]), 1920); // two 20 ms frames
        assert_eq!(packet_samples(&[0xfb, 0x03]), 2880); // code 3, three frames
        assert_eq!(packet_samples(&[0xe0]), 120); // CELT 2.5 ms
        assert_eq!(packet_samples(&[]), 0);
    }

    #[test]
    fn crc_matches_the_ogg_reference_value() {
        // The CRC of the ASCII digits "123456789" with Ogg's parameters (CRC-32/MPEG-2 without
        // its initial value and final xor): cross-checked against libogg's table.
        assert_eq!(crc32(b"123456789"), 0x89a1_897f);
    }

    #[test]
    fn headers_then_packets_with_granules_and_gaps_filled() {
        let packets: Vec<_> = [0, 20, 40, 100]
            .into_iter()
            .map(|ms| packet(ms, 60))
            .collect();
        let file = write(
            Header {
                serial: 7,
                channels: 1,
                pre_skip: 0,
            },
            &packets,
        );
        let pages = read::pages(&file);
        assert_eq!(pages[0].1, BEGINNING_OF_STREAM);
        assert_eq!(&pages[0].2[0][..8], b"OpusHead");
        assert_eq!(&pages[1].2[0][..8], b"OpusTags");
        let last = pages.last().map(|p| (p.0, p.1));
        // 100 ms + 20 ms of the last packet, in samples; the 40 ms gap is two empty frames.
        assert_eq!(last, Some((120 * SAMPLES_PER_MS, END_OF_STREAM)));
        let audio: Vec<_> = pages[2..].iter().flat_map(|p| p.2.clone()).collect();
        assert_eq!(audio.len(), 6);
        assert_eq!(audio[3], vec![TOC_20MS]);
        assert_eq!(audio[4], vec![TOC_20MS]);
        assert_eq!(audio[5].len(), 60);
    }

    #[test]
    fn long_bites_span_pages_and_every_packet_survives() {
        let packets: Vec<_> = (0..1000)
            .map(|i| packet(i * 20, 1 + (i as usize % 300)))
            .collect();
        let file = write(
            Header {
                serial: 1,
                channels: 2,
                pre_skip: 312,
            },
            &packets,
        );
        let pages = read::pages(&file);
        assert!(pages.len() > 4);
        let audio: Vec<_> = pages[2..].iter().flat_map(|p| p.2.clone()).collect();
        assert_eq!(audio.len(), packets.len());
        for (read, written) in audio.iter().zip(&packets) {
            assert_eq!(read.as_slice(), &written.payload[..]);
        }
        // Granules never decrease across pages that complete a packet.
        let granules: Vec<u64> = pages[2..].iter().map(|p| p.0).collect();
        assert!(granules.windows(2).all(|w| w[0] <= w[1]), "{granules:?}");
        assert_eq!(granules.last(), Some(&(1000 * 20 * SAMPLES_PER_MS)));
    }
}
