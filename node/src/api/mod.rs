//! Client interfaces: HTTP/JSON ([`http`]) and the Redis protocol ([`resp`]).

pub mod http;
//TMP pub mod resp;
