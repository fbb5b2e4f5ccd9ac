//! An answer streamed back on its HTTP/3 request stream: the head without the
//! fields HTTP/3 forbids, each data frame as it comes, the trailers, the end.

use bytes::{Buf, Bytes};
use h3::server::RequestStream;
use http_body_util::BodyExt;

/// Why an answer did not go out whole.
#[derive(Debug, thiserror::Error)]
pub enum SendError {
    #[error("{0}")]
    Stream(#[from] h3::error::StreamError),
    #[error("the response body failed while streaming")]
    Body,
}

/// Fields that describe one HTTP/1.1 connection: never sent over HTTP/3, and
/// a request that carries one is malformed (RFC 9114 4.2).
pub(super) const CONNECTION_SPECIFIC: [&str; 5] = [
    "connection",
    "keep-alive",
    "proxy-connection",
    "transfer-encoding",
    "upgrade",
];

/// Sends `response` on `stream` and finishes it; a body that fails midway
/// resets the stream (the client must not take a cut body for a whole one).
pub async fn send<B>(
    mut stream: RequestStream<h3_quinn::SendStream<Bytes>, Bytes>,
    response: http::Response<B>,
) -> Result<(), SendError>
where
    B: http_body::Body,
{
    let (mut parts, body) = response.into_parts();
    for name in CONNECTION_SPECIFIC {
        parts.headers.remove(name);
    }
    stream
        .send_response(http::Response::from_parts(parts, ()))
        .await?;
    let mut body = std::pin::pin!(body);
    while let Some(frame) = body.frame().await {
        let Ok(frame) = frame else {
            stream.stop_stream(h3::error::Code::H3_INTERNAL_ERROR);
            return Err(SendError::Body);
        };
        match frame.into_data() {
            Ok(mut data) => {
                let bytes = data.copy_to_bytes(data.remaining());
                if !bytes.is_empty() {
                    stream.send_data(bytes).await?;
                }
            }
            Err(frame) => {
                if let Ok(trailers) = frame.into_trailers() {
                    stream.send_trailers(trailers).await?;
                    break;
                }
            }
        }
    }
    stream.finish().await?;
    Ok(())
}
