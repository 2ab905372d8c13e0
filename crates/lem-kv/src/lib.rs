//! lem-kv
