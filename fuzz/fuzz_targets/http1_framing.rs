//! HTTP/1.1 framing: request and response heads, and the chunked decoder.
//! Beyond "never panics": a body decoded from the whole input and the same
//! body decoded as it trickles in (pieces of one to seven bytes, as a
//! socket may hand them over) must agree, byte for byte and in outcome.

#![no_main]

use libfuzzer_sys::fuzz_target;
use rauta_dataplane::http1::{parse_request, parse_response, Chunk, ChunkedDecoder, Limits};

const LIMITS: Limits = Limits {
    max_head_bytes: 4096,
    max_headers: 32,
    max_body: 64 * 1024,
    max_trailer_bytes: 256,
};

/// What decoding `input` in pieces of at most `piece` bytes gave: the
/// body, the trailer lines, and whether it ended (Ok) or failed (Err).
fn decode(input: &[u8], piece: usize) -> (Vec<u8>, Vec<Vec<u8>>, Result<bool, ()>) {
    let mut decoder = ChunkedDecoder::new(LIMITS);
    let (mut body, mut trailers) = (Vec::new(), Vec::new());
    let mut buffered: Vec<u8> = Vec::new();
    let mut fed = 0;
    loop {
        match decoder.decode(&buffered) {
            Err(_) => return (body, trailers, Err(())),
            Ok((used, chunk)) => {
                assert!(used <= buffered.len(), "consumed past its input");
                match chunk {
                    Some(Chunk::Data(data)) => body.extend_from_slice(data),
                    Some(Chunk::Trailer(line)) => trailers.push(line.to_vec()),
                    Some(Chunk::End) => return (body, trailers, Ok(true)),
                    None => {}
                }
                buffered.drain(..used);
                if used == 0 {
                    if fed == input.len() {
                        return (body, trailers, Ok(false));
                    }
                    let next = (fed + piece).min(input.len());
                    buffered.extend_from_slice(&input[fed..next]);
                    fed = next;
                }
            }
        }
    }
}

fuzz_target!(|data: &[u8]| {
    let Some((&mode, input)) = data.split_first() else {
        return;
    };
    match mode % 3 {
        0 => {
            if let Ok(Some(head)) = parse_request(input, &LIMITS) {
                assert!(head.head_len <= input.len());
                assert!(head.head_len <= LIMITS.max_head_bytes);
            }
        }
        1 => {
            let _ = parse_response(input, "GET", &LIMITS);
        }
        _ => {
            let whole = decode(input, input.len().max(1));
            let trickled = decode(input, 1 + (mode as usize >> 2) % 7);
            assert!(whole.0.len() as u64 <= LIMITS.max_body);
            // Where the whole input decodes, trickling it in must too.
            if whole.2.is_ok() {
                assert_eq!(whole, trickled);
            }
        }
    }
});
