//! Shop domain
