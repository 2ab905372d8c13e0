//! lem-model
