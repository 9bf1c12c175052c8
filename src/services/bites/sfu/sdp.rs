//! The little SDP reading and rewriting the SFU does itself: the audio-level extension id of
//! an offer, the candidates to trickle, and the public address behind a 1:1 NAT.

use std::net::IpAddr;

use webrtc::peer_connection::RTCIceCandidateInit;

/// The id an SDP gives an RTP header extension (`a=extmap:<id>[/<direction>] <uri>`), or 0.
pub fn extmap_id(sdp: &str, uri: &str) -> u8 {
    sdp.lines()
        .filter_map(|line| line.strip_prefix("a=extmap:"))
        .find_map(|rest| {
            let (id, rest) = rest.split_once(' ')?;
            let id = id.split('/').next()?;
            (rest.split_whitespace().next()? == uri).then(|| id.parse().ok())?
        })
        .unwrap_or(0)
}

/// The candidates of an SDP as `RTCIceCandidateInit` JSON, for the `ice::` messages.
pub fn candidates(sdp: &str) -> Vec<String> {
    let mid = sdp
        .lines()
        .find_map(|line| line.strip_prefix("a=mid:"))
        .unwrap_or("0");
    sdp.lines()
        .filter_map(|line| line.strip_prefix("a="))
        .filter(|line| line.starts_with("candidate:"))
        .filter_map(|candidate| {
            serde_json::to_string(&RTCIceCandidateInit {
                candidate: candidate.trim_end().to_owned(),
                sdp_mid: Some(mid.to_owned()),
                sdp_mline_index: Some(0),
                username_fragment: None,
                url: None,
            })
            .ok()
        })
        .collect()
}

/// Replaces the bound address by the public one in candidate and connection lines.
pub fn advertise(sdp: &str, bound: IpAddr, public: IpAddr) -> String {
    let (bound, public) = (bound.to_string(), public.to_string());
    sdp.split_inclusive('\n')
        .map(|line| {
            if line.starts_with("a=candidate:") || line.starts_with("c=") {
                line.split(' ')
                    .map(|token| {
                        if token.trim_end() == bound {
                            token.replacen(&bound, &public, 1)
                        } else {
                            token.to_owned()
                        }
                    })
                    .collect::<Vec<_>>()
                    .join(" ")
            } else {
                line.to_owned()
            }
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use rtc::sdp::extmap::AUDIO_LEVEL_URI;

    use super::*;

    const SDP: &str = "v=0\r\nc=IN IP4 10.0.0.5\r\na=mid:0\r\na=extmap:1 urn:ietf:params:rtp-hdrext:ssrc-audio-level\r\na=extmap:3/sendrecv http://www.ietf.org/id/draft-holmer-rmcat-transport-wide-cc-extensions-01\r\na=candidate:1 1 udp 2130706431 10.0.0.5 50000 typ host\r\n";

    #[test]
    fn reads_extension_ids() {
        assert_eq!(extmap_id(SDP, AUDIO_LEVEL_URI), 1);
        assert_eq!(
            extmap_id(
                SDP,
                "http://www.ietf.org/id/draft-holmer-rmcat-transport-wide-cc-extensions-01"
            ),
            3
        );
        assert_eq!(extmap_id(SDP, "urn:nothing"), 0);
    }

    #[test]
    fn advertises_the_public_address() {
        let rewritten = advertise(
            SDP,
            "10.0.0.5".parse().unwrap(),
            "203.0.113.7".parse().unwrap(),
        );
        assert!(
            rewritten.contains("c=IN IP4 203.0.113.7\r\n"),
            "{rewritten}"
        );
        assert!(
            rewritten.contains("udp 2130706431 203.0.113.7 50000 typ host\r\n"),
            "{rewritten}"
        );
        assert!(!rewritten.contains("10.0.0.5"));
    }

    #[test]
    fn candidates_become_json() {
        let json = candidates(SDP);
        assert_eq!(json.len(), 1);
        let init: RTCIceCandidateInit = serde_json::from_str(&json[0]).unwrap();
        assert_eq!(
            init.candidate,
            "candidate:1 1 udp 2130706431 10.0.0.5 50000 typ host"
        );
        assert_eq!(init.sdp_mid.as_deref(), Some("0"));
    }
}
