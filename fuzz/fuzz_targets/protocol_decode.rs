//! Feeds arbitrary bytes to the frame decoder, as a hostile guest or host would.
#![no_main]

use libfuzzer_sys::fuzz_target;
use moat_protocol::{decode_frame, read_frame, RequestEnvelope, ResponseEnvelope, MAX_FRAME_LEN};

fuzz_target!(|data: &[u8]| {
    // The streaming reader and the buffer decoder must agree and never panic.
    let streamed = read_frame::<_, ResponseEnvelope>(&mut &data[..]);
    let buffered = decode_frame::<ResponseEnvelope>(data);
    if let Ok(Some((msg, used))) = &buffered {
        assert!(*used <= data.len() && *used <= MAX_FRAME_LEN + 4);
        assert_eq!(streamed.as_ref().ok(), Some(msg));
    }
    let _ = decode_frame::<RequestEnvelope>(data);
});
