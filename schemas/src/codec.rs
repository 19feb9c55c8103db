//! MessagePack encoding with named fields, the on-disk and on-wire format.

use serde::de::DeserializeOwned;
use serde::Serialize;

/// A value could not be encoded or decoded.
#[derive(Debug, thiserror::Error)]
pub enum CodecError {
    #[error("encode MessagePack: {0}")]
    Encode(#[from] rmp_serde::encode::Error),
    #[error("decode MessagePack: {0}")]
    Decode(#[from] rmp_serde::decode::Error),
}

/// Encodes as MessagePack with field names, so readers tolerate new fields.
pub fn to_msgpack<T: Serialize + ?Sized>(value: &T) -> Result<Vec<u8>, CodecError> {
    Ok(rmp_serde::to_vec_named(value)?)
}

/// Appends the MessagePack encoding of `value` to `buf`.
pub fn write_msgpack<T: Serialize + ?Sized>(
    buf: &mut Vec<u8>,
    value: &T,
) -> Result<(), CodecError> {
    let mut ser = rmp_serde::Serializer::new(buf).with_struct_map();
    value.serialize(&mut ser)?;
    Ok(())
}

pub fn from_msgpack<T: DeserializeOwned>(bytes: &[u8]) -> Result<T, CodecError> {
    Ok(rmp_serde::from_slice(bytes)?)
}
