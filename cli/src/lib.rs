//! The `thaw` command: flags and configuration ([`config`]), one module per subcommand
//! ([`commands`]). Policy lives here (which addresses, which token, which defaults); the
//! runtime library only serves what it is given.

#![deny(missing_docs)]

pub mod commands;
pub mod config;
pub mod registry;
