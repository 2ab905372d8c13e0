//! lem-engine
