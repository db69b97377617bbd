//! How much of a saved profile the readers take before refusing it, so that a hostile or
//! broken file (a gzip bomb, `/dev/zero`, a stack of millions of frames) ends in one clear
//! error instead of exhausting memory.
//!
//! Three limits, each raised by a flag of `prof report` and `prof diff`:
//! - the input's size, once decompressed ([`ReadLimits::max_input_bytes`]);
//! - the frames of one stack, each inlined function counting as a frame
//!   ([`ReadLimits::max_stack_depth`]);
//! - the locations in all: every entry of the profile's tables (locations and their lines,
//!   functions, mappings, strings, labels) and every frame of every distinct stack
//!   ([`ReadLimits::max_locations`]). This is what bounds the memory a profile takes once
//!   read, whatever its shape.

use std::io::{self, Read};

use thiserror::Error;

use crate::text::thousands;

/// The default [`ReadLimits::max_input_bytes`]: 256 MiB, about sixty times a 60,000-stack
/// recording of prof's.
pub const DEFAULT_MAX_INPUT_BYTES: u64 = 256 << 20;
/// [`DEFAULT_MAX_INPUT_BYTES`] as the flag writes it.
pub const DEFAULT_MAX_INPUT_TEXT: &str = "256M";
/// The default [`ReadLimits::max_stack_depth`]: far deeper than the kernel's 127 frames a
/// side, or Go's and the JVM profilers' default depths.
pub const DEFAULT_MAX_STACK_DEPTH: usize = 4096;
/// The default [`ReadLimits::max_locations`]: 16 Mi, four times what a recording of 155k
/// unique stacks of 28 frames holds (4.3 million frame ids), which `prof report` reads in
/// about 140 MB.
pub const DEFAULT_MAX_LOCATIONS: usize = 16 << 20;

/// What the readers accept.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct ReadLimits {
    /// Bytes of input, after decompression.
    pub max_input_bytes: u64,
    /// Frames of one stack.
    pub max_stack_depth: usize,
    /// Table entries and distinct-stack frames, in all.
    pub max_locations: usize,
}

impl Default for ReadLimits {
    fn default() -> Self {
        ReadLimits {
            max_input_bytes: DEFAULT_MAX_INPUT_BYTES,
            max_stack_depth: DEFAULT_MAX_STACK_DEPTH,
            max_locations: DEFAULT_MAX_LOCATIONS,
        }
    }
}

/// A limit the input went past.
#[derive(Clone, Debug, Error, PartialEq, Eq)]
pub enum LimitError {
    /// Too many bytes.
    #[error("it is larger than {} bytes{} (prof's limit; raise it with --max-input-size)", thousands(*.0), if *.1 { " once decompressed" } else { "" })]
    InputSize(u64, bool),
    /// A stack too deep.
    #[error("a stack has more than {} frames (prof's limit; raise it with --max-stack-depth)", thousands(*.0 as u64))]
    StackDepth(usize),
    /// Too many locations.
    #[error("it holds more than {} locations, table entries and stack frames (prof's limit; raise it with --max-locations)", thousands(*.0 as u64))]
    Locations(usize),
}

/// Reads `input` to its end, or fails once it has given more than `max` bytes; `inflated`
/// says whether the bytes come out of a decompressor, for the message. The buffer never
/// grows past what was read plus one read's worth, so memory stays near `max`.
pub fn read_capped(input: impl Read, max: u64, inflated: bool) -> io::Result<Vec<u8>> {
    let mut bytes = Vec::new();
    input.take(max.saturating_add(1)).read_to_end(&mut bytes)?;
    if bytes.len() as u64 > max {
        return Err(io::Error::new(
            io::ErrorKind::InvalidData,
            LimitError::InputSize(max, inflated),
        ));
    }
    bytes.shrink_to_fit();
    Ok(bytes)
}

/// The limit error inside an I/O error made by [`read_capped`].
pub fn limit_error(err: &io::Error) -> Option<&LimitError> {
    err.get_ref()?.downcast_ref::<LimitError>()
}

/// What is left of [`ReadLimits::max_locations`] while a profile is read.
#[derive(Clone, Copy, Debug)]
pub struct Budget {
    limits: ReadLimits,
    spent: usize,
}

impl Budget {
    /// A full budget.
    pub fn new(limits: ReadLimits) -> Budget {
        Budget { limits, spent: 0 }
    }

    /// Spends `n` locations, or fails once more than the limit are spent.
    pub fn spend(&mut self, n: usize) -> Result<(), LimitError> {
        self.spent = self.spent.saturating_add(n);
        if self.spent > self.limits.max_locations {
            return Err(LimitError::Locations(self.limits.max_locations));
        }
        Ok(())
    }

    /// Fails if a stack of `frames` frames is too deep.
    pub fn check_depth(&self, frames: usize) -> Result<(), LimitError> {
        if frames > self.limits.max_stack_depth {
            return Err(LimitError::StackDepth(self.limits.max_stack_depth));
        }
        Ok(())
    }

    /// The limits.
    pub fn limits(&self) -> &ReadLimits {
        &self.limits
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Reading stops one byte past the limit, however long the input goes on, and says so.
    #[test]
    fn reading_stops_at_the_limit() {
        let endless = io::repeat(0);
        let err = read_capped(endless, 1000, true).unwrap_err();
        assert_eq!(limit_error(&err), Some(&LimitError::InputSize(1000, true)));
        assert_eq!(
            err.to_string(),
            "it is larger than 1,000 bytes once decompressed (prof's limit; raise it with \
             --max-input-size)"
        );
        assert_eq!(
            read_capped(&[1u8; 1000][..], 1000, false).unwrap().len(),
            1000
        );
    }

    /// The budget fails once spent past its limit, and depth is checked on its own.
    #[test]
    fn budget() {
        let mut budget = Budget::new(ReadLimits {
            max_input_bytes: 10,
            max_stack_depth: 3,
            max_locations: 5,
        });
        budget.spend(5).unwrap();
        assert_eq!(budget.spend(1), Err(LimitError::Locations(5)));
        assert!(budget.check_depth(3).is_ok());
        assert_eq!(budget.check_depth(4), Err(LimitError::StackDepth(3)));
    }
}
