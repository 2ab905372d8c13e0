//! One module per subcommand.

pub mod bench;
pub mod chat;
pub mod draft_args;
pub mod eval;
pub mod generate;
pub mod inspect;
pub mod kv;
pub mod kv_args;
pub mod models;
pub mod models_inspect;
pub mod niah;
pub mod score;
pub mod serve;
pub mod session;
pub mod tokenize;
