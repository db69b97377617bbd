//! Checks an encoded pprof message against the [`ReadLimits`] before prost decodes it.
//!
//! prost allocates whatever a message declares: one sample of 30 million location ids is 30
//! MB on disk (29 KB gzipped) and 240 MB decoded, and everything built from it is larger
//! still. So the message is first walked at the wire level, without decoding anything: the
//! entries of every table, the location ids, values and labels of every sample, and the
//! lines of every location are counted against [`ReadLimits::max_locations`], and each
//! sample's location ids and each location's lines against
//! [`ReadLimits::max_stack_depth`]. Decoding then allocates at most a few dozen bytes per
//! counted entry.
//!
//! The walk reads only the protobuf wire format (a varint key of field number and wire type,
//! then a varint, a fixed 4 or 8 bytes, or a length and that many bytes); what the fields
//! mean is left to prost and [`super::pprof`].

use super::limits::{Budget, LimitError, ReadLimits};

/// Why a message does not pass.
#[derive(Debug)]
pub enum ScanError {
    /// A limit.
    Limit(LimitError),
    /// The bytes are not a protobuf message.
    Malformed,
}

impl From<LimitError> for ScanError {
    fn from(err: LimitError) -> ScanError {
        ScanError::Limit(err)
    }
}

// Field numbers of `profile.proto`.
const PROFILE_SAMPLE: u32 = 2;
const PROFILE_LOCATION: u32 = 4;
const PROFILE_COMMENT: u32 = 13;
const SAMPLE_LOCATION_ID: u32 = 1;
const SAMPLE_VALUE: u32 = 2;
const LOCATION_LINE: u32 = 4;

/// One field's payload.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Payload<'a> {
    /// A varint (wire type 0).
    Varint,
    /// A length-delimited payload (wire type 2): a string, a message or packed scalars.
    Bytes(&'a [u8]),
    /// A fixed 32- or 64-bit value (wire types 5 and 1).
    Fixed,
}

/// Reads a varint off the front of `bytes`.
fn varint(bytes: &mut &[u8]) -> Result<u64, ScanError> {
    let mut value = 0u64;
    for shift in (0..64).step_by(7) {
        let (&byte, rest) = bytes.split_first().ok_or(ScanError::Malformed)?;
        *bytes = rest;
        value |= u64::from(byte & 0x7f) << shift;
        if byte < 0x80 {
            return Ok(value);
        }
    }
    Err(ScanError::Malformed)
}

/// Takes `n` bytes off the front of `bytes`.
fn take<'a>(bytes: &mut &'a [u8], n: u64) -> Result<&'a [u8], ScanError> {
    let n = usize::try_from(n)
        .ok()
        .filter(|&n| n <= bytes.len())
        .ok_or(ScanError::Malformed)?;
    let (head, rest) = bytes.split_at(n);
    *bytes = rest;
    Ok(head)
}

/// Takes one field off the front of `bytes`: its number and payload.
fn field<'a>(bytes: &mut &'a [u8]) -> Result<(u32, Payload<'a>), ScanError> {
    let key = varint(bytes)?;
    // Field 0 does not exist: a run of zero bytes is not a message.
    let field = u32::try_from(key >> 3)
        .ok()
        .filter(|&field| field > 0)
        .ok_or(ScanError::Malformed)?;
    let payload = match key & 7 {
        0 => {
            varint(bytes)?;
            Payload::Varint
        }
        1 => {
            take(bytes, 8)?;
            Payload::Fixed
        }
        2 => {
            let len = varint(bytes)?;
            Payload::Bytes(take(bytes, len)?)
        }
        5 => {
            take(bytes, 4)?;
            Payload::Fixed
        }
        // Groups (3, 4) are not used by pprof; 6 and 7 do not exist.
        _ => return Err(ScanError::Malformed),
    };
    Ok((field, payload))
}

/// Calls `visit` with each field of the message in `bytes`, in order.
fn walk<'a>(
    mut bytes: &'a [u8],
    mut visit: impl FnMut(u32, Payload<'a>) -> Result<(), ScanError>,
) -> Result<(), ScanError> {
    while !bytes.is_empty() {
        let (field, payload) = field(&mut bytes)?;
        visit(field, payload)?;
    }
    Ok(())
}

/// The pprof message in `bytes` split in two: the encoded samples, one slice each, and a
/// message of every other field, so that the samples can be decoded one at a time.
pub fn split_samples(mut bytes: &[u8]) -> Result<(Vec<&[u8]>, Vec<u8>), ScanError> {
    let mut samples = Vec::new();
    let mut rest = Vec::new();
    while !bytes.is_empty() {
        let start = bytes;
        match field(&mut bytes)? {
            (PROFILE_SAMPLE, Payload::Bytes(sample)) => samples.push(sample),
            _ => rest.extend_from_slice(&start[..start.len() - bytes.len()]),
        }
    }
    Ok((samples, rest))
}

/// How many values a repeated scalar field holds in one occurrence: one unpacked, or as many
/// varints as a packed payload has final bytes.
fn scalars(payload: Payload<'_>) -> usize {
    match payload {
        Payload::Bytes(packed) => packed.iter().filter(|&&b| b < 0x80).count(),
        Payload::Varint | Payload::Fixed => 1,
    }
}

/// Counts the entries of the pprof message in `bytes` against `limits`.
pub fn check(bytes: &[u8], limits: &ReadLimits) -> Result<(), ScanError> {
    let mut budget = Budget::new(*limits);
    walk(bytes, |field, payload| {
        let mut entries = 1;
        match (field, payload) {
            (PROFILE_SAMPLE, Payload::Bytes(sample)) => {
                let mut frames = 0;
                walk(sample, |field, payload| {
                    // Values and labels count too: they are decoded with the sample.
                    let n = match field {
                        SAMPLE_LOCATION_ID | SAMPLE_VALUE => scalars(payload),
                        _ => 1,
                    };
                    if field == SAMPLE_LOCATION_ID {
                        frames += n;
                    }
                    entries += n;
                    Ok(())
                })?;
                budget.check_depth(frames)?;
            }
            (PROFILE_LOCATION, Payload::Bytes(location)) => {
                let mut lines = 0;
                walk(location, |field, _| {
                    if field == LOCATION_LINE {
                        lines += 1;
                    }
                    Ok(())
                })?;
                budget.check_depth(lines)?;
                entries += lines;
            }
            (PROFILE_COMMENT, payload) => entries = scalars(payload),
            // One table entry or setting each.
            _ => {}
        }
        budget.spend(entries)?;
        Ok(())
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::export::pprof::proto;
    use prost::Message;

    fn limits(depth: usize, locations: usize) -> ReadLimits {
        ReadLimits {
            max_input_bytes: u64::MAX,
            max_stack_depth: depth,
            max_locations: locations,
        }
    }

    /// A sample's location ids, packed or not, count as frames; a location's lines too;
    /// every entry counts toward the total.
    #[test]
    fn counts_frames_and_entries() {
        let message = proto::Profile {
            sample: vec![proto::Sample {
                location_id: vec![1, 2, 300],
                value: vec![5],
                label: Vec::new(),
            }],
            location: vec![proto::Location {
                id: 1,
                line: vec![proto::Line::default(); 2],
                ..proto::Location::default()
            }],
            string_table: vec![String::new(), "x".into()],
            ..proto::Profile::default()
        };
        let bytes = message.encode_to_vec();
        // 1 sample + 3 ids + 1 value, 1 location + 2 lines, 2 strings: 10.
        assert!(check(&bytes, &limits(3, 10)).is_ok());
        assert!(matches!(
            check(&bytes, &limits(3, 9)),
            Err(ScanError::Limit(LimitError::Locations(9)))
        ));
        assert!(matches!(
            check(&bytes, &limits(2, 100)),
            Err(ScanError::Limit(LimitError::StackDepth(2)))
        ));
    }

    /// Truncated and garbage input is malformed, not a panic.
    #[test]
    fn malformed_input() {
        let message = proto::Profile {
            string_table: vec![String::new(), "a string".into()],
            ..proto::Profile::default()
        };
        let bytes = message.encode_to_vec();
        assert!(matches!(
            check(&bytes[..bytes.len() - 1], &ReadLimits::default()),
            Err(ScanError::Malformed)
        ));
        assert!(matches!(
            check(&[0xff; 11], &ReadLimits::default()),
            Err(ScanError::Malformed)
        ));
        assert!(matches!(
            check(&[0x0b], &ReadLimits::default()),
            Err(ScanError::Malformed)
        ));
        assert!(matches!(
            check(&[0; 64], &ReadLimits::default()),
            Err(ScanError::Malformed)
        ));
    }
}
