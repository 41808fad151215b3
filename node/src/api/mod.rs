//! Client interfaces: HTTP/JSON ([`http`]) and the Redis protocol ([`resp`]).

pub mod http;
pub mod resp;
