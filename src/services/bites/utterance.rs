//! Cutting one speaker's packet stream into utterances: a bite runs from the first packet of
//! speech to the last, and ends after a stretch of silence or at a maximum length.
//!
//! Speech is read from the RFC 6464 audio level that browsers put on every packet; a stream
//! without it falls back on payload size, since an Opus encoder spends only a few bytes on
//! silence (and sends none at all under DTX, which the caller's timer catches).
//!
//! Times come from the RTP timestamps (48 kHz for Opus), anchored to the wall clock at the
//! stream's first packet, so starts and durations do not jitter with arrival times.

use std::collections::VecDeque;

use bytes::Bytes;

use super::ogg::{SAMPLES_PER_MS, TimedPacket, packet_samples};
use crate::config::BitesConfig;

/// Packets kept from before speech so the decoder has settled when speech begins; they are
/// in the file as pre-skip and are not played (RFC 7845 recommends 80 ms).
const PREROLL_PACKETS: usize = 4;
/// A stream whose timestamps stray this far from the wall clock is re-anchored.
const REANCHOR_AFTER_MS: i64 = 2_000;

/// The rules, from `[bites]`.
#[derive(Debug, Clone, Copy)]
pub struct SpeechRules {
    pub silence_samples: u64,
    pub max_samples: u64,
    /// Highest RFC 6464 level (−dBov; 127 is silence) that counts as speech.
    pub speech_level: u8,
    /// Without audio levels: the smallest payload that counts as speech.
    pub min_speech_bytes: usize,
}

impl From<&BitesConfig> for SpeechRules {
    fn from(config: &BitesConfig) -> Self {
        Self {
            silence_samples: config.silence_ms * SAMPLES_PER_MS,
            max_samples: config.max_bite_ms * SAMPLES_PER_MS,
            speech_level: config.speech_level,
            min_speech_bytes: config.min_speech_bytes,
        }
    }
}

/// One received packet, as the segmenter needs it.
#[derive(Debug, Clone)]
pub struct Incoming {
    pub timestamp: u32,
    /// Unix milliseconds at arrival.
    pub arrived_ms: i64,
    /// The RFC 6464 level, when the packet carries one.
    pub level: Option<u8>,
    pub payload: Bytes,
}

/// A finished utterance, ready to be written as a file.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Utterance {
    /// Unix milliseconds of the first packet of speech.
    pub start_ms: i64,
    pub duration_ms: u64,
    /// Samples of pre-roll before the speech.
    pub pre_skip: u16,
    pub channels: u8,
    /// Offsets from the first pre-roll packet.
    pub packets: Vec<TimedPacket>,
}

#[derive(Debug)]
pub struct Segmenter {
    rules: SpeechRules,
    clock: Option<Clock>,
    recent: VecDeque<(u64, Bytes)>,
    current: Option<Building>,
}

#[derive(Debug, Clone, Copy)]
struct Clock {
    anchor_ts: u64,
    anchor_ms: i64,
    last_raw: u32,
    last_ext: u64,
}

#[derive(Debug)]
struct Building {
    first_ts: u64,
    speech_ts: u64,
    /// End (timestamp + duration) of the last packet of speech.
    speech_end: u64,
    last_speech_arrival_ms: i64,
    packets: Vec<(u64, Bytes)>,
    /// Packets up to and including the last one of speech; trailing silence is dropped.
    kept: usize,
}

impl Segmenter {
    pub fn new(rules: SpeechRules) -> Self {
        Self {
            rules,
            clock: None,
            recent: VecDeque::with_capacity(PREROLL_PACKETS + 1),
            current: None,
        }
    }

    fn is_speech(&self, packet: &Incoming) -> bool {
        match packet.level {
            Some(level) => level <= self.rules.speech_level,
            None => packet.payload.len() >= self.rules.min_speech_bytes,
        }
    }

    /// Feeds one packet; returns an utterance when this packet ends one.
    pub fn push(&mut self, packet: Incoming) -> Option<Utterance> {
        let ts = self.extend(&packet)?;
        let speech = self.is_speech(&packet);
        let end = ts + packet_samples(&packet.payload);
        let mut finished = None;

        if let Some(building) = &self.current {
            let silent_too_long =
                ts.saturating_sub(building.speech_end) >= self.rules.silence_samples;
            let too_long = end.saturating_sub(building.speech_ts) > self.rules.max_samples;
            if silent_too_long || too_long {
                finished = self.finish();
            }
        }
        match &mut self.current {
            Some(building) => {
                building.packets.push((ts, packet.payload.clone()));
                if speech {
                    building.kept = building.packets.len();
                    building.speech_end = end;
                    building.last_speech_arrival_ms = packet.arrived_ms;
                }
            }
            None if speech => {
                let mut packets: Vec<(u64, Bytes)> = Vec::with_capacity(256);
                // Pre-roll: the packets just before, if they are contiguous with this one.
                let mut expected = ts;
                let mut preroll = Vec::new();
                for (recent_ts, payload) in self.recent.iter().rev() {
                    let recent_end = recent_ts + packet_samples(payload);
                    if recent_end != expected {
                        break;
                    }
                    expected = *recent_ts;
                    preroll.push((*recent_ts, payload.clone()));
                }
                if preroll.is_empty()
                    && let Some(&toc) = packet.payload.first()
                {
                    // Nothing before speech (its first packet): one empty frame, which the
                    // decoder conceals, so players still get a pre-skip to settle on.
                    let filler = Bytes::from(vec![toc & !0x03]);
                    let samples = packet_samples(&filler);
                    if let Some(filler_ts) = ts.checked_sub(samples) {
                        preroll.push((filler_ts, filler));
                    }
                }
                packets.extend(preroll.into_iter().rev());
                packets.push((ts, packet.payload.clone()));
                self.current = Some(Building {
                    first_ts: packets.first().map_or(ts, |first| first.0),
                    speech_ts: ts,
                    speech_end: end,
                    last_speech_arrival_ms: packet.arrived_ms,
                    kept: packets.len(),
                    packets,
                });
            }
            None => {}
        }
        if self.recent.len() == PREROLL_PACKETS {
            self.recent.pop_front();
        }
        self.recent.push_back((ts, packet.payload));
        finished
    }

    /// When the caller should call [`Self::expire`] if no packet arrives before then: a
    /// sender under DTX stops sending in silence, so silence must also be timed.
    pub fn deadline_ms(&self) -> Option<i64> {
        self.current.as_ref().map(|building| {
            building.last_speech_arrival_ms
                + i64::try_from(self.rules.silence_samples / SAMPLES_PER_MS).unwrap_or(i64::MAX)
        })
    }

    /// Ends the utterance if no speech arrived for the silence period before `now_ms`.
    pub fn expire(&mut self, now_ms: i64) -> Option<Utterance> {
        match self.deadline_ms() {
            Some(deadline) if now_ms >= deadline => self.finish(),
            _ => None,
        }
    }

    /// Ends the utterance in progress (the speaker left).
    pub fn finish(&mut self) -> Option<Utterance> {
        let mut building = self.current.take()?;
        let clock = self.clock?;
        building.packets.truncate(building.kept);
        let first_payload = &building.packets.first()?.1;
        let channels = if first_payload.first().is_some_and(|toc| toc & 0x04 != 0) {
            2
        } else {
            1
        };
        let since_anchor_ms =
            (building.speech_ts as i64 - clock.anchor_ts as i64) / SAMPLES_PER_MS as i64;
        Some(Utterance {
            start_ms: clock.anchor_ms + since_anchor_ms,
            duration_ms: (building.speech_end - building.speech_ts) / SAMPLES_PER_MS,
            pre_skip: u16::try_from(building.speech_ts - building.first_ts).unwrap_or(u16::MAX),
            channels,
            packets: building
                .packets
                .into_iter()
                .map(|(ts, payload)| TimedPacket {
                    offset: ts - building.first_ts,
                    payload,
                })
                .collect(),
        })
    }

    /// The packet's timestamp on a 64-bit timeline, or `None` for a packet from the past
    /// (reordered or duplicated), which a file cannot take.
    fn extend(&mut self, packet: &Incoming) -> Option<u64> {
        // Starts high so the arithmetic below never goes below zero.
        const ORIGIN: u64 = 1 << 40;
        let first = self.clock.is_none();
        let clock = self.clock.get_or_insert(Clock {
            anchor_ts: ORIGIN,
            anchor_ms: packet.arrived_ms,
            last_raw: packet.timestamp,
            last_ext: ORIGIN,
        });
        let step = i64::from(packet.timestamp.wrapping_sub(clock.last_raw) as i32);
        if step <= 0 && !first {
            return None;
        }
        let ext = clock.last_ext.checked_add_signed(step)?;
        clock.last_raw = packet.timestamp;
        clock.last_ext = ext;
        let expected_ms =
            clock.anchor_ms + (ext as i64 - clock.anchor_ts as i64) / SAMPLES_PER_MS as i64;
        if (packet.arrived_ms - expected_ms).abs() > REANCHOR_AFTER_MS && self.current.is_none() {
            clock.anchor_ts = ext;
            clock.anchor_ms = packet.arrived_ms;
        }
        Some(ext)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const FRAME: u32 = 960; // 20 ms
    const SPEECH: u8 = 30;
    const SILENCE: u8 = 127;

    fn rules() -> SpeechRules {
        SpeechRules {
            silence_samples: 500 * SAMPLES_PER_MS,
            max_samples: 30_000 * SAMPLES_PER_MS,
            speech_level: 50,
            min_speech_bytes: 16,
        }
    }

    /// 20 ms CELT packets from `from_ms` for `ms`, at `level`, starting at wall time 1_000_000.
    fn run(
        seg: &mut Segmenter,
        from_ms: u32,
        ms: u32,
        level: Option<u8>,
        len: usize,
    ) -> Vec<Utterance> {
        let mut out = Vec::new();
        for i in 0..ms / 20 {
            let t = from_ms + i * 20;
            let mut payload = vec![1u8; len];
            payload[0] = 0xf8;
            let packet = Incoming {
                timestamp: 123_456u32.wrapping_add(t / 20 * FRAME),
                arrived_ms: 1_000_000 + i64::from(t),
                level,
                payload: Bytes::from(payload),
            };
            out.extend(seg.push(packet));
        }
        out
    }

    #[test]
    fn speech_silence_speech_is_two_bites() {
        let mut seg = Segmenter::new(rules());
        let mut bites = run(&mut seg, 0, 400, Some(SILENCE), 60);
        bites.extend(run(&mut seg, 400, 1000, Some(SPEECH), 60));
        bites.extend(run(&mut seg, 1400, 1000, Some(SILENCE), 60));
        bites.extend(run(&mut seg, 2400, 600, Some(SPEECH), 60));
        bites.extend(seg.finish());
        assert_eq!(bites.len(), 2, "{bites:?}");
        assert_eq!(bites[0].start_ms, 1_000_400);
        assert_eq!(bites[0].duration_ms, 1000);
        assert_eq!(bites[0].pre_skip, 4 * 960);
        assert_eq!(bites[0].packets.len(), 4 + 50);
        assert_eq!(bites[1].start_ms, 1_002_400);
        assert_eq!(bites[1].duration_ms, 600);
    }

    #[test]
    fn short_pauses_stay_inside_one_bite() {
        let mut seg = Segmenter::new(rules());
        let mut bites = run(&mut seg, 0, 1000, Some(SPEECH), 60);
        bites.extend(run(&mut seg, 1000, 300, Some(SILENCE), 60));
        bites.extend(run(&mut seg, 1300, 500, Some(SPEECH), 60));
        bites.extend(seg.finish());
        assert_eq!(bites.len(), 1);
        assert_eq!(bites[0].duration_ms, 1800);
    }

    #[test]
    fn long_speech_is_cut_at_the_maximum() {
        let mut seg = Segmenter::new(SpeechRules {
            max_samples: 1000 * SAMPLES_PER_MS,
            ..rules()
        });
        let mut bites = run(&mut seg, 0, 2500, Some(SPEECH), 60);
        bites.extend(seg.finish());
        let durations: Vec<u64> = bites.iter().map(|b| b.duration_ms).collect();
        assert_eq!(durations, vec![1000, 1000, 500]);
        assert_eq!(bites[1].start_ms, 1_001_000);
    }

    #[test]
    fn without_levels_packet_size_decides_and_dtx_silence_is_timed() {
        let mut seg = Segmenter::new(rules());
        let mut bites = run(&mut seg, 0, 200, None, 3);
        bites.extend(run(&mut seg, 200, 800, None, 80));
        assert!(bites.is_empty());
        // DTX: nothing arrives; the caller's timer fires.
        assert_eq!(seg.deadline_ms(), Some(1_000_980 + 500));
        assert!(seg.expire(1_001_400).is_none());
        let bite = seg.expire(1_001_480);
        assert_eq!(
            bite.map(|b| (b.start_ms, b.duration_ms)),
            Some((1_000_200, 800))
        );
    }

    #[test]
    fn a_dtx_gap_inside_speech_keeps_the_timeline() {
        let mut seg = Segmenter::new(rules());
        let mut bites = run(&mut seg, 0, 400, Some(SPEECH), 60);
        // 200 ms with no packets at all, then speech again.
        bites.extend(run(&mut seg, 600, 400, Some(SPEECH), 60));
        bites.extend(seg.finish());
        assert_eq!(bites.len(), 1);
        assert_eq!(bites[0].duration_ms, 1000);
        // Speech came first, so one empty frame stands in for the pre-roll.
        assert_eq!(bites[0].pre_skip, 960);
        assert_eq!(bites[0].packets[0].payload, Bytes::from_static(&[0xf8]));
        let last = bites[0].packets.last().map(|p| p.offset);
        assert_eq!(last, Some((20 + 980) * SAMPLES_PER_MS));
    }

    #[test]
    fn reordered_packets_are_left_out() {
        let mut seg = Segmenter::new(rules());
        run(&mut seg, 0, 100, Some(SPEECH), 60);
        let late = Incoming {
            timestamp: 123_456,
            arrived_ms: 1_000_100,
            level: Some(SPEECH),
            payload: Bytes::from_static(&[0xf8, 1, 2]),
        };
        assert!(seg.push(late).is_none());
        let bite = seg.finish();
        assert_eq!(bite.map(|b| b.packets.len()), Some(1 + 5));
    }
}
