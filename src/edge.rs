//! The edge: accept loops, TLS, PROXY protocol, the HTTP/1.1 and HTTP/2
//! guards, connection pressure and deadlines. It serves an [`server::App`]
//! that `launch` hands it, and knows no proxy.

pub mod activity;
pub mod descriptors;
pub mod h2_guard;
pub mod head_guard;
pub mod http_conn;
pub mod io_delegate;
pub mod pressure;
pub mod proxy_protocol;
pub mod server;
