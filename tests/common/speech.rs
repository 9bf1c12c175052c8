//! Real speech made on this machine: Debian's espeak-ng speaks a sentence, sox resamples it to
//! 48 kHz (what a WebRTC client sends), opusenc encodes it in 20 ms frames, as a browser would.

use std::path::Path;
use std::process::Command;

/// The Ogg Opus file of `text` spoken, or `None` when espeak-ng, sox or opusenc is missing.
pub fn spoken_ogg(text: &str, dir: &Path) -> Option<Vec<u8>> {
    let voice = dir.join("voice.wav");
    let wide = dir.join("voice48k.wav");
    let ogg = dir.join("voice.opus");
    let run = |command: &mut Command| command.status().is_ok_and(|status| status.success());
    let spoken = run(Command::new("espeak-ng")
        .args(["-v", "en-us", "-s", "150", "-w"])
        .arg(&voice)
        .arg(text))
        && run(Command::new("sox")
            .arg(&voice)
            .args(["-r", "48000", "-c", "1"])
            .arg(&wide))
        && run(Command::new("opusenc")
            .args(["--quiet", "--framesize", "20", "--bitrate", "32"])
            .arg(&wide)
            .arg(&ogg));
    spoken.then(|| std::fs::read(&ogg).ok()).flatten()
}
