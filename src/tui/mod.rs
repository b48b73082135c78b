//! The `prof top` screen: [`app`] holds its state and handles keys, [`view`] computes
//! what to show from a [`crate::profile::Profile`], [`render`] draws it, [`input`] turns
//! the terminal's bytes into keys. The terminal, the event loop and the sampler thread
//! are in [`crate::commands::top`].

pub mod app;
pub mod input;
pub mod render;
pub mod view;
