//! Test support: a real router on 127.0.0.1 port 0, simulated regions, clients,
//! and certificates made on the spot. No fixed ports, no sleeps.

#![allow(dead_code)]

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use georouter::config::Config;
use georouter::control::{Control, Options};
use georouter::edge::server::{self, ConnLimits};
use georouter::tools::sim::SimRegion;
use georouter::State;
use http_body_util::{BodyExt, Empty, Full};
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::client::legacy::Client;
use hyper_util::rt::TokioExecutor;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio::sync::watch;

pub mod browser;
pub mod etcd;
pub mod h3;
pub mod link;
pub mod nginx;

mod admin;
mod client;
mod files;
mod load;
mod metrics;
mod mmdb;
mod pki;
mod policy;
mod router;
mod tools;
mod wait;

#[allow(unused_imports)]
pub use admin::*;
#[allow(unused_imports)]
pub use client::*;
#[allow(unused_imports)]
pub use files::*;
#[allow(unused_imports)]
pub use load::*;
#[allow(unused_imports)]
pub use metrics::*;
#[allow(unused_imports)]
pub use mmdb::*;
#[allow(unused_imports)]
pub use pki::*;
#[allow(unused_imports)]
pub use policy::*;
#[allow(unused_imports)]
pub use router::*;
#[allow(unused_imports)]
pub use tools::*;
#[allow(unused_imports)]
pub use wait::*;
