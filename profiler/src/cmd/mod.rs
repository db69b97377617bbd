//! The commands: wiring of the library's stages, in order. No stage logic lives here.
pub mod agent;
pub mod diff;
pub mod list;
pub mod record;
pub mod report;
