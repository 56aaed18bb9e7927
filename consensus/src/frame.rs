//! Frames between nodes: a u32 big-endian length, then one bincode 1.3 value, always
//! decoded through `DefaultOptions::new().with_limit(..)` (an unlimited read of a 9-byte
//! input can ask for gigabytes). This is the one place that knows the codec, so it can be
//! swapped.

use bincode::Options;
use serde::de::DeserializeOwned;
use serde::Serialize;
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};

use crate::error::{Error, Result};

/// The largest frame any protocol accepts by default.
pub const MAX_FRAME: u32 = 4 << 20;

fn options(limit: u32) -> impl Options {
    bincode::DefaultOptions::new().with_limit(limit as u64).reject_trailing_bytes()
}

/// Encodes one value as a frame (length prefix included).
pub fn encode<T: Serialize>(msg: &T) -> Result<Vec<u8>> {
    let body = options(MAX_FRAME).serialize(msg).map_err(|e| Error::Frame(format!("cannot encode: {e}")))?;
    let len = u32::try_from(body.len()).map_err(|_| Error::Frame("frame too large".into()))?;
    let mut out = Vec::with_capacity(4 + body.len());
    out.extend_from_slice(&len.to_be_bytes());
    out.extend_from_slice(&body);
    Ok(out)
}

/// Decodes a frame body (without its length prefix), refusing more than `limit` bytes.
pub fn decode<T: DeserializeOwned>(body: &[u8], limit: u32) -> Result<T> {
    if body.len() > limit as usize {
        return Err(Error::Frame(format!("{} bytes exceed the limit of {limit}", body.len())));
    }
    options(limit).deserialize(body).map_err(|e| Error::Frame(e.to_string()))
}

pub async fn write_frame<T: Serialize, W: AsyncWrite + Unpin>(w: &mut W, msg: &T) -> Result<()> {
    w.write_all(&encode(msg)?).await?;
    Ok(())
}

/// Reads one frame; `Ok(None)` at a clean end of stream before a frame starts.
pub async fn read_frame<T: DeserializeOwned, R: AsyncRead + Unpin>(r: &mut R, limit: u32) -> Result<Option<T>> {
    let mut len = [0u8; 4];
    let mut got = 0;
    while got < 4 {
        let n = r.read(&mut len[got..]).await?;
        if n == 0 {
            return if got == 0 { Ok(None) } else { Err(Error::Frame("truncated length prefix".into())) };
        }
        got += n;
    }
    let len = u32::from_be_bytes(len);
    if len > limit {
        return Err(Error::Frame(format!("length prefix {len} exceeds the limit of {limit}")));
    }
    let mut body = vec![0u8; len as usize];
    r.read_exact(&mut body).await.map_err(|e| Error::Frame(format!("truncated frame: {e}")))?;
    decode(&body, limit).map(Some)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[derive(Debug, PartialEq, serde::Serialize, serde::Deserialize)]
    enum Msg {
        A(String),
        B { xs: Vec<u64> },
    }

    #[tokio::test]
    async fn frames_round_trip() -> Result<()> {
        let mut buf = Vec::new();
        write_frame(&mut buf, &Msg::A("hi".into())).await?;
        write_frame(&mut buf, &Msg::B { xs: vec![1, 2, 3] }).await?;
        let mut r = &buf[..];
        assert_eq!(read_frame::<Msg, _>(&mut r, MAX_FRAME).await?, Some(Msg::A("hi".into())));
        assert_eq!(read_frame::<Msg, _>(&mut r, MAX_FRAME).await?, Some(Msg::B { xs: vec![1, 2, 3] }));
        assert_eq!(read_frame::<Msg, _>(&mut r, MAX_FRAME).await?, None);
        Ok(())
    }

    #[tokio::test]
    async fn garbage_truncated_and_oversized_frames_are_refused() {
        // A huge length inside a tiny body: bounded by the limit, not allocated.
        let evil = [0u8, 0, 0, 9, 1, 0xfc, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff];
        let mut r = &evil[..];
        assert!(read_frame::<Msg, _>(&mut r, MAX_FRAME).await.is_err());
        let oversize = [0xffu8, 0xff, 0xff, 0xff, 0];
        let mut r = &oversize[..];
        let err = read_frame::<Msg, _>(&mut r, MAX_FRAME).await.err().map(|e| e.to_string()).unwrap_or_default();
        assert!(err.contains("exceeds"), "{err}");
        let truncated = [0u8, 0, 0, 10, 0, 1];
        let mut r = &truncated[..];
        assert!(read_frame::<Msg, _>(&mut r, MAX_FRAME).await.is_err());
        // Every prefix of a valid frame fails cleanly or is a clean end.
        let good = encode(&Msg::B { xs: vec![7; 20] }).unwrap_or_default();
        for cut in 0..good.len() {
            let mut r = &good[..cut];
            let res = read_frame::<Msg, _>(&mut r, MAX_FRAME).await;
            assert!(cut == 0 && matches!(res, Ok(None)) || res.is_err(), "cut {cut}");
        }
        // Random bytes never panic.
        let mut x = 12345u64;
        for _ in 0..2000 {
            let len = (x % 64) as usize;
            let bytes: Vec<u8> = (0..len)
                .map(|_| {
                    x = x.wrapping_mul(6364136223846793005).wrapping_add(1442695040888963407);
                    (x >> 33) as u8
                })
                .collect();
            let _ = decode::<Msg>(&bytes, 1024);
        }
    }
}
