//! The commands: wiring of the library's stages, in order. No stage logic lives here.
pub mod agent;
pub mod list;
pub mod record;
