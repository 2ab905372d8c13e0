//! lem-hub
