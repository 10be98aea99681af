//! A hand-written HTTP/2 client that ignores the server's limits: it opens
//! as many streams on one connection as it is told, whatever the server's
//! SETTINGS_MAX_CONCURRENT_STREAMS says (a well-behaved client, h2's
//! included, queues them instead), and counts how the server answers each.

use std::collections::BTreeSet;
use std::net::SocketAddr;
use std::sync::Arc;
use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _, BufWriter};

const PREFACE: &[u8] = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n";
const DATA: u8 = 0x0;
const HEADERS: u8 = 0x1;
const RST_STREAM: u8 = 0x3;
const SETTINGS: u8 = 0x4;
const GOAWAY: u8 = 0x7;
const WINDOW_UPDATE: u8 = 0x8;
/// The connection's send window before any WINDOW_UPDATE (RFC 9113 6.9.2).
const INITIAL_WINDOW: i64 = 65_535;
const END_STREAM: u8 = 0x1;
const END_HEADERS: u8 = 0x4;
const ACK: u8 = 0x1;
/// RST_STREAM's REFUSED_STREAM: the server did not process the stream.
pub const REFUSED_STREAM: u32 = 0x7;

/// How the server answered the streams of one connection.
#[derive(Debug, Default)]
pub struct Answers {
    /// Streams written before the server closed the connection.
    pub written: u32,
    /// Streams the server answered with response headers (served).
    pub served: BTreeSet<u32>,
    /// Streams reset, by error code.
    pub reset: std::collections::BTreeMap<u32, u32>,
    /// The GOAWAY's last stream id and error code, if one came.
    pub goaway: Option<(u32, u32)>,
}

impl Answers {
    /// Written streams neither served nor reset: those above a GOAWAY's
    /// last stream id, which the server says it never processed.
    pub fn unprocessed(&self) -> u32 {
        let resets: u32 = self.reset.values().sum();
        self.written
            .saturating_sub(self.served.len() as u32)
            .saturating_sub(resets)
    }
}

fn frame(kind: u8, flags: u8, stream: u32, payload: &[u8]) -> Vec<u8> {
    let len = payload.len() as u32;
    let mut f = Vec::with_capacity(9 + payload.len());
    f.extend_from_slice(&len.to_be_bytes()[1..]);
    f.extend([kind, flags]);
    f.extend_from_slice(&stream.to_be_bytes());
    f.extend_from_slice(payload);
    f
}

/// The HPACK block of a gRPC POST to `path` (literals, no Huffman, no
/// dynamic table: each block stands alone).
fn request_headers(path: &str) -> Vec<u8> {
    let literal = |block: &mut Vec<u8>, value: &str| {
        block.push(value.len() as u8);
        block.extend_from_slice(value.as_bytes());
    };
    let mut block = vec![0x83, 0x87]; // :method POST, :scheme https
    block.push(0x04); // :path, literal value
    literal(&mut block, path);
    block.push(0x01); // :authority
    literal(&mut block, "localhost");
    block.extend([0x0f, 0x10]); // content-type (static index 31)
    literal(&mut block, "application/grpc");
    block.push(0x00); // te, a literal name
    literal(&mut block, "te");
    literal(&mut block, "trailers");
    block
}

/// Opens `streams` streams calling `path` with an empty message on one TLS
/// connection to `addr` (trusting `ca_pem`), as fast as the socket takes
/// them, then reads what the server says until it goes quiet for a second
/// or closes the connection.
pub async fn flood(addr: SocketAddr, ca_pem: &str, path: &str, streams: u32) -> Answers {
    use rustls::pki_types::CertificateDer;
    use rustls::pki_types::pem::PemObject;
    let mut roots = rustls::RootCertStore::empty();
    for cert in CertificateDer::pem_slice_iter(ca_pem.as_bytes()) {
        roots.add(cert.unwrap()).unwrap();
    }
    let mut config = rustls::ClientConfig::builder_with_provider(Arc::new(
        rustls::crypto::ring::default_provider(),
    ))
    .with_safe_default_protocol_versions()
    .unwrap()
    .with_root_certificates(roots)
    .with_no_client_auth();
    config.alpn_protocols = vec![b"h2".to_vec()];
    let tcp = tokio::net::TcpStream::connect(addr).await.unwrap();
    let tls = tokio_rustls::TlsConnector::from(Arc::new(config))
        .connect(
            rustls::pki_types::ServerName::try_from("localhost").unwrap(),
            tcp,
        )
        .await
        .unwrap();
    let (mut reader, writer) = tokio::io::split(tls);

    // Reads frames while the writer writes: the server's answers must be
    // drained or its writes (and then its reads) stall.
    let (acks_tx, mut acks_rx) = tokio::sync::mpsc::unbounded_channel::<()>();
    let done = Arc::new(tokio::sync::Notify::new());
    let finished = done.clone();
    // What the server lets us send on the connection: DATA on a refused
    // stream counts against it too, and overrunning it is a
    // FLOW_CONTROL_ERROR that closes the connection.
    let window = Arc::new(std::sync::atomic::AtomicI64::new(INITIAL_WINDOW));
    let granted = window.clone();
    let read = tokio::spawn(async move {
        let mut answers = Answers::default();
        let mut buffer = Vec::new();
        let mut chunk = vec![0u8; 64 * 1024];
        let mut writing = true;
        let give_up = tokio::time::Instant::now() + std::time::Duration::from_secs(120);
        loop {
            // While the writer writes, wait for frames as long as it takes
            // (bounded); once it is done, until a second of quiet. `read`
            // is cancel-safe: nothing is lost when the writer's signal wins.
            let until = if writing {
                give_up
            } else {
                tokio::time::Instant::now() + std::time::Duration::from_secs(1)
            };
            let read = tokio::select! {
                read = tokio::time::timeout_at(until, reader.read(&mut chunk)) => read,
                () = finished.notified(), if writing => {
                    writing = false;
                    continue;
                }
            };
            match read {
                Ok(Ok(n)) if n > 0 => buffer.extend_from_slice(&chunk[..n]),
                // Closed, or quiet.
                _ => return answers,
            }
            while buffer.len() >= 9 {
                let len = u32::from_be_bytes([0, buffer[0], buffer[1], buffer[2]]) as usize;
                if buffer.len() < 9 + len {
                    break;
                }
                let frame: Vec<u8> = buffer.drain(..9 + len).collect();
                let (kind, flags) = (frame[3], frame[4]);
                let stream =
                    u32::from_be_bytes([frame[5], frame[6], frame[7], frame[8]]) & 0x7fff_ffff;
                let payload = &frame[9..];
                match kind {
                    HEADERS => {
                        answers.served.insert(stream);
                    }
                    RST_STREAM if payload.len() == 4 => {
                        let code = u32::from_be_bytes(payload[..4].try_into().unwrap());
                        *answers.reset.entry(code).or_default() += 1;
                    }
                    GOAWAY if payload.len() >= 8 => {
                        let last =
                            u32::from_be_bytes(payload[..4].try_into().unwrap()) & 0x7fff_ffff;
                        let code = u32::from_be_bytes(payload[4..8].try_into().unwrap());
                        answers.goaway = Some((last, code));
                    }
                    SETTINGS if flags & ACK == 0 => {
                        let _ = acks_tx.send(());
                    }
                    WINDOW_UPDATE if stream == 0 && payload.len() == 4 => {
                        let more =
                            u32::from_be_bytes(payload[..4].try_into().unwrap()) & 0x7fff_ffff;
                        granted.fetch_add(i64::from(more), std::sync::atomic::Ordering::Relaxed);
                    }
                    _ => {}
                }
            }
        }
    });

    let mut writer = BufWriter::with_capacity(64 * 1024, writer);
    let headers = request_headers(path);
    // An empty gRPC message: uncompressed, zero bytes.
    let message = [0u8; 5];
    let mut written = 0;
    let wrote: std::io::Result<()> = async {
        writer.write_all(PREFACE).await?;
        writer.write_all(&frame(SETTINGS, 0, 0, &[])).await?;
        for i in 0..streams {
            if acks_rx.try_recv().is_ok() {
                writer.write_all(&frame(SETTINGS, ACK, 0, &[])).await?;
            }
            let id = 2 * i + 1;
            writer
                .write_all(&frame(HEADERS, END_HEADERS, id, &headers))
                .await?;
            // The request message when the window has room for it; else
            // the stream is left open, waiting for it (and still counts
            // against the server's limit).
            let size = message.len() as i64;
            if window.load(std::sync::atomic::Ordering::Relaxed) >= size {
                window.fetch_sub(size, std::sync::atomic::Ordering::Relaxed);
                writer
                    .write_all(&frame(DATA, END_STREAM, id, &message))
                    .await?;
            }
            written += 1;
        }
        writer.flush().await
    }
    .await;
    if let Err(error) = wrote {
        println!("the server closed the connection after {written} streams: {error}");
    }
    done.notify_one();
    let mut answers = read.await.unwrap();
    answers.written = written;
    drop(writer);
    answers
}
