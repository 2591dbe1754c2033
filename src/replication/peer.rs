//! A Kafka-protocol connection from this broker to another one (a follower to its leader):
//! one request at a time, length-prefixed frames, a bounded response size.

use std::net::ToSocketAddrs;
use std::time::Duration;

use bytes::{BufMut, Bytes, BytesMut};
use futures_lite::{AsyncReadExt, AsyncWriteExt};
use glommio::net::TcpStream;
use kafka_protocol::messages::{ApiKey, RequestHeader, ResponseHeader};
use kafka_protocol::protocol::{Decodable, Encodable, StrBytes};

/// Why a request to a peer failed. Every failure drops the connection: the next request
/// reconnects.
#[derive(Debug)]
pub enum PeerError {
    Io(std::io::Error),
    Timeout,
    /// The peer answered with something this broker cannot read.
    Protocol(String),
}

impl std::fmt::Display for PeerError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            PeerError::Io(e) => write!(f, "{e}"),
            PeerError::Timeout => f.write_str("no response in time"),
            PeerError::Protocol(m) => write!(f, "unreadable response: {m}"),
        }
    }
}

impl From<std::io::Error> for PeerError {
    fn from(e: std::io::Error) -> Self {
        PeerError::Io(e)
    }
}

/// One connection to one broker, used by one task.
pub struct PeerConnection {
    stream: TcpStream,
    address: String,
    client_id: StrBytes,
    next_correlation_id: i32,
    /// Largest response frame accepted; a larger length prefix closes the connection.
    max_response_bytes: usize,
}

impl PeerConnection {
    pub async fn connect(
        address: &str,
        client_id: String,
        max_response_bytes: usize,
        timeout: Duration,
    ) -> Result<PeerConnection, PeerError> {
        let resolved = address
            .to_socket_addrs()?
            .next()
            .ok_or_else(|| PeerError::Protocol(format!("{address} resolves to nothing")))?;
        let connect = TcpStream::connect_timeout(resolved, timeout);
        let stream = connect.await.map_err(|e| PeerError::Io(e.into()))?;
        stream
            .set_nodelay(true)
            .map_err(|e| PeerError::Io(e.into()))?;
        Ok(PeerConnection {
            stream,
            address: address.to_string(),
            client_id: StrBytes::from_string(client_id),
            next_correlation_id: 0,
            max_response_bytes,
        })
    }

    pub fn address(&self) -> &str {
        &self.address
    }

    /// Sends `request` at `version` and returns the response body, undecoded, for the caller
    /// to decode at the same version. Fails after `timeout`.
    pub async fn call<R: Encodable>(
        &mut self,
        api_key: ApiKey,
        version: i16,
        request: &R,
        timeout: Duration,
    ) -> Result<Bytes, PeerError> {
        let correlation_id = self.next_correlation_id;
        self.next_correlation_id = self.next_correlation_id.wrapping_add(1);
        let mut header = RequestHeader::default();
        header.request_api_key = api_key as i16;
        header.request_api_version = version;
        header.correlation_id = correlation_id;
        header.client_id = Some(self.client_id.clone());
        let mut buf = BytesMut::with_capacity(256);
        buf.put_i32(0);
        header
            .encode(&mut buf, api_key.request_header_version(version))
            .map_err(|e| PeerError::Protocol(format!("encoding the request header: {e}")))?;
        request
            .encode(&mut buf, version)
            .map_err(|e| PeerError::Protocol(format!("encoding the request: {e}")))?;
        let size = (buf.len() - 4) as i32;
        buf[0..4].copy_from_slice(&size.to_be_bytes());
        let exchange = async {
            self.stream.write_all(&buf).await?;
            let mut size = [0u8; 4];
            self.stream.read_exact(&mut size).await?;
            let size = i32::from_be_bytes(size);
            if size < 4 || size as usize > self.max_response_bytes {
                return Err(PeerError::Protocol(format!(
                    "response of {size} bytes (limit {})",
                    self.max_response_bytes
                )));
            }
            let mut body = vec![0u8; size as usize];
            self.stream.read_exact(&mut body).await?;
            Ok(Bytes::from(body))
        };
        let timer = glommio::timer::sleep(timeout);
        futures::pin_mut!(exchange, timer);
        let mut frame = match futures::future::select(exchange, timer).await {
            futures::future::Either::Left((result, _)) => result?,
            futures::future::Either::Right(_) => return Err(PeerError::Timeout),
        };
        let header = ResponseHeader::decode(&mut frame, api_key.response_header_version(version))
            .map_err(|e| PeerError::Protocol(format!("response header: {e}")))?;
        if header.correlation_id != correlation_id {
            return Err(PeerError::Protocol(format!(
                "correlation id {} where {correlation_id} was expected",
                header.correlation_id
            )));
        }
        Ok(frame)
    }
}

/// Decodes a response body at `version`, without panicking on bad input.
pub fn decode<T: Decodable>(mut body: Bytes, version: i16) -> Result<T, PeerError> {
    match std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
        T::decode(&mut body, version)
    })) {
        Ok(Ok(value)) => Ok(value),
        Ok(Err(e)) => Err(PeerError::Protocol(e.to_string())),
        Err(_) => Err(PeerError::Protocol("the decoder panicked".into())),
    }
}
