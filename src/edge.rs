//! The edge: accept loops, TLS, PROXY protocol, the HTTP/1.1 and HTTP/2
//! guards, connection pressure and deadlines. It serves an [`server::App`]
//! that `launch` hands it, and knows no proxy.

pub(crate) mod activity;
pub(crate) mod descriptors;
pub(crate) mod h2_guard;
pub(crate) mod h3;
pub(crate) mod head_guard;
pub(crate) mod http_conn;
pub(crate) mod io_delegate;
pub(crate) mod pressure;
pub(crate) mod proxy_protocol;
pub mod server;
