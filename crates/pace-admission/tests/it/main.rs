//! Integration tests of pace-admission: the tower layer in front of a tiny
//! service, with keys from a real JWKS served over HTTP on 127.0.0.1:0 (and
//! a scripted source where time must be controlled).

#![allow(clippy::unwrap_used)]

mod layer;
mod support;
