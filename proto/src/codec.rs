//! Prost encoding with small starting buffers. A control plane holds one long-lived stream per
//! data plane, and tonic's default codec gives each stream an 8 KiB buffer each way for messages
//! (reports, ACKs) that are mostly well under 1 KiB. The buffers still grow to fit a large
//! message (a bundle push).

use tonic::codec::{BufferSettings, Codec};
use tonic_prost::{ProstCodec, ProstDecoder, ProstEncoder};

/// Starting size of each stream's encode and decode buffers.
pub const BUFFER_BYTES: usize = 1024;
/// Encoded messages batched before a write: tonic's default.
const YIELD_THRESHOLD: usize = 32 * 1024;

/// [`ProstCodec`] with [`BUFFER_BYTES`] buffers.
#[derive(Debug, Clone, Default)]
pub struct LeanCodec<T, U>(ProstCodec<T, U>);

fn settings() -> BufferSettings {
    BufferSettings::new(BUFFER_BYTES, YIELD_THRESHOLD)
}

impl<T, U> Codec for LeanCodec<T, U>
where
    T: prost::Message + Send + 'static,
    U: prost::Message + Default + Send + 'static,
{
    type Encode = T;
    type Decode = U;
    type Encoder = ProstEncoder<T>;
    type Decoder = ProstDecoder<U>;

    fn encoder(&mut self) -> Self::Encoder {
        ProstCodec::<T, U>::raw_encoder(settings())
    }

    fn decoder(&mut self) -> Self::Decoder {
        ProstCodec::<T, U>::raw_decoder(settings())
    }
}
