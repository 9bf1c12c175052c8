//! The little SDP reading the SFU does itself: the audio-level extension id of an offer and
//! the candidates to trickle.

use rtc::peer_connection::transport::RTCIceCandidateInit;

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
