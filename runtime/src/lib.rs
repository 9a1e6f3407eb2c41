//! shoal-runtime
